//! `POST /v1/responses` and `POST /v1/completions`: the whole JSON body is the question and
//! the upstream's answer, JSON or an event stream, is stored as it came and replayed byte
//! for byte, through llm-cache-core's `bodies` (the async-openai layer's path: the same
//! keys, tier and flights). Responses requests that depend on state the server keeps
//! (`conversation`, `background: true`) and `bypass` go upstream uncached. A request is
//! authenticated before its body is read; an answer that is not complete (a Responses
//! answer that is not `completed`, a stream cut before its end) reaches the caller as it
//! came and is never stored.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde_json::Value;

use super::Front;
use super::chat::{control, read_body};
use super::errors::ApiError;
use super::provider::body_tail;
use crate::error::{Error, ErrorKind};
use llm_cache_core::CacheStatus;
use llm_cache_core::bodies::{BodyEndpoint, BodyPlan, BodyRequest, Sent};
use llm_cache_core::tiered::http::cache_headers;

pub(super) async fn responses(State(front): State<Arc<Front>>, request: Request) -> Response {
    answer(&front, request, BodyEndpoint::Responses)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

pub(super) async fn completions(State(front): State<Arc<Front>>, request: Request) -> Response {
    answer(&front, request, BodyEndpoint::Completions)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// A 2xx answer not worth storing, kept as the error's source so that every waiter of the
/// flight gets it as it came.
#[derive(Debug)]
struct Uncached {
    content_type: Option<String>,
    body: Bytes,
}

impl std::fmt::Display for Uncached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the upstream's answer is not complete: not stored")
    }
}

impl std::error::Error for Uncached {}

async fn answer(
    front: &Front,
    request: Request,
    endpoint: BodyEndpoint,
) -> Result<Response, ApiError> {
    let control = control(front, request.headers())?;
    let Some(provider) = &front.provider else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "this front has no upstream URL to send /v1/{} to",
                body_tail(endpoint)
            ),
        )
        .code("unknown_url"));
    };
    let (client, credentials) = provider.body_client(front.pass_through, request.headers())?;
    let body = read_body(request, front.body_limit).await?;
    let tail = body_tail(endpoint);
    let cache = &front.cache;
    let request = match BodyRequest::plan(endpoint, &body) {
        BodyPlan::Cached(request) if !control.bypass => request,
        plan => {
            if matches!(plan, BodyPlan::PassThrough)
                && let Err(e) = serde_json::from_slice::<serde_json::Map<String, Value>>(&body)
            {
                let e = Error::new(
                    ErrorKind::InvalidRequest,
                    format!("the request body is not a JSON object: {e}"),
                );
                return Err(ApiError::from(&e));
            }
            // `conversation`, `background`, or the caller's `bypass`: never stored.
            let stream = matches!(&plan, BodyPlan::Cached(r) if r.stream);
            if control.bypass {
                cache.count_bypassed();
            }
            let sent = client.post_raw(tail, body, stream).await;
            let sent = sent.map_err(|e| ApiError::from(&e))?;
            return Ok(passed(sent.content_type, sent.body));
        }
    };
    tracing::debug!(
        endpoint = tail,
        stream = request.stream,
        "stored-body request"
    );
    let scope = provider.body_scope(endpoint, &credentials, request.shape());
    let digest = request.digest(cache, &control, &scope);
    let stream = request.stream;
    // A completions stream asks for usage whatever the caller asked (the key ignores
    // `stream_options`); a caller who did not ask gets it without the usage chunk.
    let body = match request.upstream_body() {
        Some(sent) => {
            Bytes::from(serde_json::to_vec(&sent).map_err(|e| ApiError::from(&Error::codec(e)))?)
        }
        None => body,
    };
    let send = move || async move {
        let raw = client.post_raw(tail, body, stream).await?;
        let content_type = raw.content_type.clone();
        Ok(Sent {
            content_type: raw.content_type,
            body: raw.body,
            incomplete: Box::new(move |body| {
                Error::new(
                    ErrorKind::Upstream,
                    "the upstream's 2xx answer is not a complete answer",
                )
                .with_source(Uncached { content_type, body })
            }),
        })
    };
    let bodies = cache.bodies();
    if stream {
        let answer = bodies
            .answer_stream(digest, &control, endpoint, request.drops_usage(), send)
            .await
            .map_err(|e| ApiError::from(&e))?;
        return Ok(streamed(answer.events, answer.status, answer.age));
    }
    match bodies.answer_json(digest, &control, endpoint, send).await {
        Ok(json) => Ok(whole(
            Some(json.content_type),
            json.body,
            json.status,
            json.age,
        )),
        Err(e) => match uncached(&e) {
            Some(u) => Ok(whole(
                u.content_type.clone(),
                u.body.clone(),
                CacheStatus::Miss,
                std::time::Duration::ZERO,
            )),
            None => Err(ApiError::from(&e)),
        },
    }
}

fn uncached(e: &Error) -> Option<&Uncached> {
    std::error::Error::source(e).and_then(|s| s.downcast_ref::<Uncached>())
}

/// A whole answer with the cache headers.
fn whole(
    content_type: Option<String>,
    body: impl Into<Body>,
    status: CacheStatus,
    age: std::time::Duration,
) -> Response {
    let mut response = Response::new(body.into());
    set_type(response.headers_mut(), content_type, "application/json");
    cache_headers(response.headers_mut(), status, age);
    response
}

/// A streamed answer with the cache headers; an error after the first byte is sent as one
/// last event, `data: {"error": {...}}` (as on the chat route), and ends it.
fn streamed(
    events: futures_util::stream::BoxStream<'static, llm_cache_core::Result<Bytes>>,
    status: CacheStatus,
    age: Option<std::time::Duration>,
) -> Response {
    let events = futures_util::stream::unfold(Some(events), |state| async move {
        let mut events = state?;
        match events.next().await? {
            Ok(part) => Some((Ok::<_, std::convert::Infallible>(part), Some(events))),
            Err(e) => {
                tracing::debug!(error = %e, "a stored-body stream failed after its first byte");
                let body = ApiError::from(&e).body();
                Some((Ok(Bytes::from(format!("data: {body}\n\n"))), None))
            }
        }
    });
    let mut response = Response::new(Body::from_stream(events));
    let headers = response.headers_mut();
    set_type(headers, None, "text/event-stream");
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    cache_headers(headers, status, age.unwrap_or_default());
    response
}

/// An answer that went past the cache (`x-llm-cache: bypass`), as it arrives.
fn passed(
    content_type: Option<String>,
    body: futures_util::stream::BoxStream<'static, llm_cache_core::Result<Bytes>>,
) -> Response {
    let status = CacheStatus::Bypass;
    let streams = content_type
        .as_deref()
        .is_some_and(|t| t.starts_with("text/event-stream"));
    if streams {
        return streamed(body, status, None);
    }
    let body = body.map(|part| part.map_err(std::io::Error::other));
    whole(
        content_type,
        Body::from_stream(body),
        status,
        Default::default(),
    )
}

fn set_type(headers: &mut HeaderMap, given: Option<String>, default: &'static str) {
    let value = given
        .and_then(|t| HeaderValue::from_str(&t).ok())
        .unwrap_or_else(|| HeaderValue::from_static(default));
    headers.insert(header::CONTENT_TYPE, value);
}
