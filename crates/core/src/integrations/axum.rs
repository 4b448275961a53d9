//! The LLM layer's answers as axum responses (feature `axum`, on `axum-core`): a
//! [`CachedStream`] as server-sent events, [`CachedEmbeddings`] as JSON, both with the
//! `x-llm-cache` and `age` headers, and [`Cached<V>`](crate::Cached) as JSON. The crate's
//! error is an axum response through the engine's own `axum` feature.

use axum_core::body::Body;
use axum_core::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{HeaderValue, header};
use serde::Serialize;

use crate::Cached;
use crate::chat::CachedStream;
use crate::embeddings::CachedEmbeddings;
use crate::error::Error;
use crate::tiered::http::{ApiError, cache_headers, json_answer};

/// A cached stream as a 200 `text/event-stream`: one `data: <chunk JSON>` event per chunk,
/// then `data: [DONE]`, with `x-llm-cache` and `age`. An error after the first chunk is
/// sent as a last event `data: {"error": {...}}` (OpenAI-shaped, as `ApiError`) with no
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

/// An embeddings answer as a 200 JSON body (the OpenAI shape, vectors in the request's
/// `encoding_format`), with `x-llm-cache` (`partial` when only some inputs were cached)
/// and `age`.
impl IntoResponse for CachedEmbeddings {
    fn into_response(self) -> Response {
        json_answer(self.response(), self.status(), self.age())
    }
}

/// A cached answer as a 200 JSON body, with `x-llm-cache` and `age`.
impl<V: Serialize> IntoResponse for Cached<V> {
    fn into_response(self) -> Response {
        json_answer(self.value(), self.status(), self.age())
    }
}
