//! `POST /v1/chat/completions`, and the answers it gives: a cached answer as JSON, a
//! cached stream as server-sent events (`data: <chunk>` ... `data: [DONE]`), both with the
//! `x-llm-cache` and `age` headers. A request is authenticated before its body is read,
//! and read (bounded) and checked before anything is keyed or sent upstream.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use serde::Serialize;

use super::Front;
use super::access;
use super::errors::ApiError;
use super::provider::Endpoint;
use crate::chat::{CacheControl, CachedStream, Route};
use crate::error::Error;
use crate::integrations::headers::{HEADER_STATUS, status_label};
use crate::request::ChatRequest;
use crate::tiered::{CacheStatus, Cached};

pub(super) async fn completions(State(front): State<Arc<Front>>, request: Request) -> Response {
    match answer(&front, request).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn answer(front: &Front, request: Request) -> Result<Response, ApiError> {
    let (control, route) = admit(front, request.headers(), Endpoint::Chat)?;
    let body = read_body(request, front.body_limit).await?;
    let chat = ChatRequest::from_json(&body).map_err(|e| ApiError::from(&e))?;
    tracing::debug!(model = %chat.model, stream = chat.stream == Some(true), "chat request");
    let cache = &front.cache;
    if chat.stream == Some(true) {
        let live = cache.chat_stream_routed(&chat, &control, &route).await;
        return Ok(live.map_err(|e| ApiError::from(&e))?.into_response());
    }
    let cached = cache.chat_routed(&chat, &control, &route).await;
    Ok(cached.map_err(|e| ApiError::from(&e))?.into_response())
}

/// Who is calling and what they may do: the caller's key checked (or the caller's
/// credentials taken, in pass-through mode), the control headers read inside the caller's
/// namespace, and where a miss goes. Before the body is read.
pub(super) fn admit(
    front: &Front,
    headers: &HeaderMap,
    endpoint: Endpoint,
) -> Result<(CacheControl, Route), ApiError> {
    let caller = match &front.callers {
        Some(callers) => Some(callers.authenticate(headers)?),
        None => None,
    };
    let bound = caller.map_or(front.namespace.as_str(), |c| c.namespace());
    let control = access::control(headers, bound, caller)?;
    let route = match &front.provider {
        Some(provider) => provider.route(endpoint, front.pass_through, headers)?,
        None => Route::OWN,
    };
    Ok((control, route))
}

/// The body, at most `limit` bytes (the router's `DefaultBodyLimit`): a longer one is
/// refused (413) without reading it all.
pub(super) async fn read_body(request: Request, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than this proxy's limit of {limit} bytes"),
        )
        .code("request_too_large")
    };
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    Bytes::from_request(request, &())
        .await
        .map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the request body could not be read: {}",
                        rejection.body_text()
                    ),
                )
            }
        })
}

/// The `x-llm-cache` and `age` headers of an answer from `status`, `age` old.
pub(super) fn cache_headers(headers: &mut HeaderMap, status: CacheStatus, age: Duration) {
    headers.insert(
        HEADER_STATUS,
        HeaderValue::from_static(status_label(status)),
    );
    // A miss is as old as its fetch.
    let age = if status.is_hit() { age } else { Duration::ZERO };
    headers.insert(header::AGE, HeaderValue::from(age.as_secs()));
}

/// `value` as a 200 JSON body, with `x-llm-cache` and `age` from `status` and `age`.
pub(super) fn json_answer(value: &impl Serialize, status: CacheStatus, age: Duration) -> Response {
    let body = match serde_json::to_vec(value) {
        Ok(body) => body,
        Err(e) => return Error::codec(e).into_response(),
    };
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    cache_headers(headers, status, age);
    response
}

/// A cached answer as a 200 JSON body, with `x-llm-cache` and `age`.
impl<V: Serialize> IntoResponse for Cached<V> {
    fn into_response(self) -> Response {
        json_answer(self.value(), self.status(), self.age())
    }
}

/// A cached stream as a 200 `text/event-stream`: one `data: <chunk JSON>` event per chunk,
/// then `data: [DONE]`, with `x-llm-cache` and `age`. An error after the first chunk is
/// sent as a last event `data: {"error": {...}}` (OpenAI-shaped, as [`ApiError`]) with no
/// `[DONE]` after it.
impl IntoResponse for CachedStream {
    fn into_response(self) -> Response {
        let (status, age) = (self.status(), self.age());
        let events = futures_util::stream::unfold(Some(self), |state| async move {
            let mut stream = state?;
            let event = match stream.next().await {
                Some(Ok(chunk)) => match data_event(&chunk) {
                    Ok(event) => {
                        return Some((Ok::<_, std::convert::Infallible>(event), Some(stream)));
                    }
                    Err(e) => error_event(&e),
                },
                Some(Err(e)) => error_event(&e),
                None => Bytes::from_static(b"data: [DONE]\n\n"),
            };
            Some((Ok(event), None))
        });
        let mut response = Response::new(Body::from_stream(events));
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        cache_headers(headers, status, age);
        response
    }
}

fn data_event(chunk: &impl Serialize) -> Result<Bytes, Error> {
    let mut line = Vec::with_capacity(256);
    line.extend_from_slice(b"data: ");
    serde_json::to_writer(&mut line, chunk).map_err(Error::codec)?;
    line.extend_from_slice(b"\n\n");
    Ok(Bytes::from(line))
}

fn error_event(e: &Error) -> Bytes {
    tracing::debug!(error = %e, "a chat stream failed after its first chunk");
    let body = ApiError::from(e).body();
    Bytes::from(format!("data: {body}\n\n"))
}
