//! The layer's upstream for one request: the inner tower service (async-openai's
//! `ReqwestService`, a retry layer, whatever the user stacked), called with the caller's own
//! factory. It reads a chat answer or a chat event stream into the crate's types for the
//! cache's flights; anything it cannot use becomes a [`Failure`] that reaches the caller as
//! it came. It must never store, and never quote a body or header in a message.

use std::collections::VecDeque;

use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use reqwest::header::CONTENT_TYPE;

use llm_cache_core::error::{Error, ErrorKind, Result};
use llm_cache_core::request::{ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse};
use llm_cache_core::stream::{ChatChunk, ReplayOptions, SseEvent, SseParser, parse_chunk, replay};
use llm_cache_core::upstream::{BoxFuture, ChunkStream, Upstream};

use super::reply::{Failure, failure};

/// What the inner service must be: async-openai's own bound on `with_http_service`.
pub trait HttpService:
    tower::Service<HttpRequestFactory, Response = reqwest::Response, Future: Send + 'static>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> HttpService for S
where
    S: tower::Service<HttpRequestFactory, Response = reqwest::Response>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
}

/// Call a clone of `service` with `factory`, once it is ready.
pub(super) async fn send<S>(
    mut service: S,
    factory: HttpRequestFactory,
) -> std::result::Result<reqwest::Response, OpenAIError>
where
    S: HttpService,
    S::Error: Into<OpenAIError>,
{
    std::future::poll_fn(|cx| service.poll_ready(cx))
        .await
        .map_err(Into::into)?;
    service.call(factory).await.map_err(Into::into)
}

/// [`send`], for a fetch that stores: a 2xx answer with its headers and its content type
/// (`default_type` when it names none), or the upstream's failure (never stored).
pub(super) async fn send_ok<S>(
    service: S,
    factory: HttpRequestFactory,
    default_type: &str,
) -> Result<(reqwest::Response, reqwest::header::HeaderMap, String)>
where
    S: HttpService,
    S::Error: Into<OpenAIError>,
{
    let response = call_ok(service, factory).await?;
    let headers = response.headers().clone();
    let content_type = headers
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or(default_type)
        .to_string();
    Ok((response, headers, content_type))
}

/// The inner service's error as the crate's, keeping an API error for every waiter.
pub(super) fn inner_error(e: OpenAIError) -> Error {
    match e {
        OpenAIError::ApiError(api) => Failure::Api(api).into_error(),
        OpenAIError::Reqwest(r) => {
            let kind = if r.is_timeout() {
                ErrorKind::Timeout
            } else if r.is_connect() {
                ErrorKind::Connect
            } else {
                ErrorKind::Upstream
            };
            Error::new(
                kind,
                format!(
                    "the inner service failed: {}",
                    llm_cache_core::upstream::error_chain(&r.without_url())
                ),
            )
        }
        other => Error::new(
            ErrorKind::Upstream,
            format!("the inner service failed: {other}"),
        ),
    }
}

/// The 2xx answer of `factory`, or the failure the caller must see.
async fn call_ok<S>(service: S, factory: HttpRequestFactory) -> Result<reqwest::Response>
where
    S: HttpService,
    S::Error: Into<OpenAIError>,
{
    let response = send(service, factory).await.map_err(inner_error)?;
    if !response.status().is_success() {
        return Err(failure(response).await);
    }
    Ok(response)
}

/// A 2xx body that is not what was asked for: handed back as it came, never stored.
fn unusable(response_headers: reqwest::header::HeaderMap, body: Bytes) -> Error {
    Failure::Http {
        status: reqwest::StatusCode::OK,
        headers: response_headers,
        body,
    }
    .into_error()
}

/// One request's upstream: the inner service and the caller's factory (for a streamed
/// request, the factory that asks for usage).
pub(super) struct FactoryUpstream<S> {
    pub(super) service: S,
    pub(super) factory: HttpRequestFactory,
}

impl<S> Upstream for FactoryUpstream<S>
where
    S: HttpService,
    S::Error: Into<OpenAIError>,
{
    fn chat<'a>(&'a self, _request: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse>> {
        Box::pin(async move {
            let response = call_ok(self.service.clone(), self.factory.clone()).await?;
            let headers = response.headers().clone();
            let body = response.bytes().await.map_err(super::reply::cut_off)?;
            match serde_json::from_slice::<ChatResponse>(&body) {
                Ok(answer) if !answer.choices.is_empty() => Ok(answer),
                _ => Err(unusable(headers, body)),
            }
        })
    }

    fn chat_stream<'a>(&'a self, _request: &'a ChatRequest) -> BoxFuture<'a, Result<ChunkStream>> {
        Box::pin(async move {
            let response = call_ok(self.service.clone(), self.factory.clone()).await?;
            let is_json = response
                .headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|ct| ct.contains("json"));
            if is_json {
                // A server that does not stream answered with one completion: replay it.
                let headers = response.headers().clone();
                let body = response.bytes().await.map_err(|e| {
                    Error::new(
                        ErrorKind::Connect,
                        llm_cache_core::upstream::error_chain(&e.without_url()),
                    )
                })?;
                let Ok(answer) = serde_json::from_slice::<ChatResponse>(&body) else {
                    return Err(unusable(headers, body));
                };
                let all = ReplayOptions {
                    include_usage: true,
                    ..ReplayOptions::default()
                };
                let chunks = replay(&answer, &all);
                return Ok(futures_util::stream::iter(chunks.into_iter().map(Ok)).boxed());
            }
            Ok(chunks(response.bytes_stream().boxed()))
        })
    }

    /// The caller's request with `request` (the inputs the cache lacks) as its body.
    fn embeddings<'a>(
        &'a self,
        request: &'a EmbeddingRequest,
    ) -> BoxFuture<'a, Result<EmbeddingResponse>> {
        Box::pin(async move {
            let body = serde_json::to_vec(request).map_err(Error::codec)?;
            let factory = super::request::with_body(self.factory.clone(), body.into());
            let response = call_ok(self.service.clone(), factory).await?;
            let headers = response.headers().clone();
            let body = response.bytes().await.map_err(super::reply::cut_off)?;
            serde_json::from_slice::<EmbeddingResponse>(&body).map_err(|_| unusable(headers, body))
        })
    }
}

struct Reader {
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    parser: SseParser,
    events: VecDeque<SseEvent>,
    done: bool,
    seen: usize,
}

/// The chat chunks of an event-stream body, ending at `[DONE]`; a body that ends before it,
/// breaks, or holds something that is not a chunk ends the stream with an error (so the
/// cache stores nothing).
fn chunks(body: BoxStream<'static, reqwest::Result<Bytes>>) -> ChunkStream {
    let reader = Reader {
        body,
        parser: SseParser::new(),
        events: VecDeque::new(),
        done: false,
        seen: 0,
    };
    futures_util::stream::unfold(reader, |mut r| async move {
        let item = r.next().await?;
        Some((item, r))
    })
    .boxed()
}

impl Reader {
    async fn next(&mut self) -> Option<Result<ChatChunk>> {
        loop {
            if self.done {
                return None;
            }
            if let Some(event) = self.events.pop_front() {
                match parse_chunk(&event.data) {
                    Ok(Some(chunk)) => {
                        self.seen += 1;
                        return Some(Ok(chunk));
                    }
                    Ok(None) => {
                        self.done = true;
                        return None;
                    }
                    Err(e) => return Some(Err(self.fail(e))),
                }
            }
            match self.body.next().await {
                Some(Ok(bytes)) => {
                    let mut events = Vec::new();
                    let pushed = self.parser.push_into(&bytes, &mut events);
                    self.events.extend(events);
                    if let Err(e) = pushed {
                        return Some(Err(self.fail(e)));
                    }
                }
                Some(Err(e)) => {
                    let why = format!(
                        "the stream was cut off after {} chunks: {}",
                        self.seen,
                        llm_cache_core::upstream::error_chain(&e.without_url())
                    );
                    return Some(Err(self.fail(Error::new(ErrorKind::Connect, why))));
                }
                None => {
                    let why = format!(
                        "the stream was cut off after {} chunks: the body ended before [DONE]",
                        self.seen
                    );
                    return Some(Err(self.fail(Error::new(ErrorKind::Upstream, why))));
                }
            }
        }
    }

    fn fail(&mut self, e: Error) -> Error {
        self.done = true;
        self.events.clear();
        e
    }
}
