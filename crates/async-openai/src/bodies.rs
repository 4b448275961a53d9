//! The endpoints other than chat and embeddings (`/responses`, `/completions`; embeddings
//! go input by input through `LlmCache::embeddings_with`), on llm-cache-core's `bodies`
//! (shared with the HTTP front: the keys, the stored body, its completeness and the
//! flights): their whole JSON body is the question and the upstream's answer, JSON or an
//! event stream, is stored as it came and replayed byte for byte. This file only sends a
//! miss through the inner service and hands the answer back as a `reqwest::Response`. It
//! must never store an answer that is not complete (a non-2xx, a Responses API answer
//! whose `status` is not `completed`, a stream that did not reach its end): one that is a
//! 2xx reaches the caller as it came.

use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use futures_util::StreamExt;

use llm_cache_core::bodies::{BodyRequest, Sent};
use llm_cache_core::chat::{CacheControl, LlmCache};
use llm_cache_core::error::{Error, ErrorKind};
use llm_cache_core::tiered::Digest;

use super::reply::{self, Failure, error_reply};
use super::upstream::{HttpService, send_ok};

/// Answer a cacheable non-chat request from the tiers, or from the inner service on a
/// miss (concurrent identical requests, streamed or not, share one upstream call).
pub(super) async fn answer<S>(
    cache: &LlmCache,
    request: &BodyRequest,
    digest: Digest,
    control: &CacheControl,
    service: S,
    factory: HttpRequestFactory,
) -> std::result::Result<reqwest::Response, OpenAIError>
where
    S: HttpService,
    S::Error: Into<OpenAIError>,
{
    let stream = request.stream;
    let send = move || send(service, factory, stream);
    let bodies = cache.bodies();
    if stream {
        let drop_usage = request.drops_usage();
        return match bodies
            .answer_stream(digest, control, request.endpoint, drop_usage, send)
            .await
        {
            Ok(answer) => Ok(reply::event_stream(
                answer.events,
                answer.status,
                answer.age,
            )),
            Err(e) => error_reply(e),
        };
    }
    match bodies
        .answer_json(digest, control, request.endpoint, send)
        .await
    {
        Ok(answer) => Ok(reply::answer(
            &answer.content_type,
            answer.body,
            answer.status,
            Some(answer.age),
        )),
        Err(e) => error_reply(e),
    }
}

/// A miss through the inner service: its 2xx answer as it arrives, or the failure every
/// waiter gets (a 2xx that is not complete is handed back as it came).
async fn send<S>(service: S, factory: HttpRequestFactory, stream: bool) -> Result<Sent, Error>
where
    S: HttpService,
    S::Error: Into<OpenAIError>,
{
    let default_type = if stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    let (response, headers, content_type) = send_ok(service, factory, default_type).await?;
    let body = response
        .bytes_stream()
        .map(move |part| {
            part.map_err(|e| {
                if !stream {
                    return reply::cut_off(e);
                }
                let why = llm_cache_core::upstream::error_chain(&e.without_url());
                Error::new(ErrorKind::Connect, format!("the stream was cut off: {why}"))
            })
        })
        .boxed();
    Ok(Sent {
        content_type: Some(content_type),
        body,
        incomplete: Box::new(move |body| {
            Failure::Http {
                status: reqwest::StatusCode::OK,
                headers,
                body,
            }
            .into_error()
        }),
    })
}
