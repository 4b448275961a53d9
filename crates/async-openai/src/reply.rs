//! What the layer hands back: a real `reqwest::Response` (status, headers, body) made from
//! a cached answer, a replayed stream, or the upstream's own failure, so async-openai's own
//! parsing and error handling run unchanged. It must never turn an upstream error into a
//! success, nor lose the upstream's status, body or `Retry-After`.

use std::fmt;
use std::time::Duration;

use async_openai::error::{ApiErrorResponse, OpenAIError};
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};

use llm_cache_core::CacheStatus;
use llm_cache_core::error::{Error, ErrorKind};

use llm_cache_core::integrations::headers::HEADER_STATUS;

/// How an upstream call failed, kept as the source of the crate's [`Error`] so every
/// waiter of a flight can hand its caller the same failure async-openai would have seen.
#[derive(Clone)]
pub(super) enum Failure {
    /// An answer the layer will not store (a non-2xx, or a 2xx that is not a complete
    /// answer): given back as it came.
    Http {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    },
    /// The inner service's own API error (async-openai's retry layer reads a final 429
    /// itself and returns it so).
    Api(ApiErrorResponse),
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the body or headers: either may quote a credential.
        match self {
            Failure::Http { status, .. } => write!(f, "Failure::Http({status})"),
            Failure::Api(e) => write!(f, "Failure::Api({})", e.status_code),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Http { status, .. } => write!(f, "the upstream answered HTTP {status}"),
            Failure::Api(e) => write!(f, "the upstream answered HTTP {}", e.status_code),
        }
    }
}

impl std::error::Error for Failure {}

impl Failure {
    /// The crate's error carrying this failure.
    pub(super) fn into_error(self) -> Error {
        let (status, retry_after) = match &self {
            Failure::Http {
                status, headers, ..
            } => (status.as_u16(), retry_after(headers)),
            Failure::Api(e) => (e.status_code.as_u16(), None),
        };
        let mut e = if (200..300).contains(&status) {
            Error::new(
                ErrorKind::Upstream,
                format!("the upstream's HTTP {status} answer is not a complete answer"),
            )
        } else {
            Error::upstream_status(status, self.to_string())
        };
        if let Some(after) = retry_after {
            e = e.with_retry_after(after);
        }
        e.with_source(self)
    }
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    text.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Read the upstream's non-2xx (or unusable) answer into a [`Failure`].
pub(super) async fn failure(response: reqwest::Response) -> Error {
    let status = response.status();
    let headers = response.headers().clone();
    match response.bytes().await {
        Ok(body) => Failure::Http {
            status,
            headers,
            body,
        }
        .into_error(),
        Err(e) => Error::new(
            ErrorKind::Connect,
            format!(
                "the upstream's HTTP {status} answer was cut off: {}",
                llm_cache_core::upstream::error_chain(&e.without_url())
            ),
        ),
    }
}

/// What the caller gets for a failed request: the upstream's answer as it came, or
/// async-openai's API error, or (for the cache's own errors) the crate's error boxed.
pub(super) fn error_reply(e: Error) -> Result<reqwest::Response, OpenAIError> {
    let failure = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<Failure>());
    match failure {
        Some(Failure::Http {
            status,
            headers,
            body,
        }) => Ok(response(*status, headers.clone(), body.clone().into())),
        Some(Failure::Api(api)) => Err(OpenAIError::ApiError(api.clone())),
        None => Err(OpenAIError::Boxed(Box::new(e))),
    }
}

fn response(status: StatusCode, headers: HeaderMap, body: reqwest::Body) -> reqwest::Response {
    let mut out = http::Response::new(body);
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    reqwest::Response::from(out)
}

/// The cache-status headers of an answer; `age` when it is known.
fn cache_headers(content_type: &str, status: CacheStatus, age: Option<Duration>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(content_type) {
        headers.insert(CONTENT_TYPE, v);
    }
    headers.insert(
        HEADER_STATUS,
        HeaderValue::from_static(status.header_value()),
    );
    if let Some(age) = age {
        headers.insert(reqwest::header::AGE, HeaderValue::from(age.as_secs()));
    }
    headers
}

/// A 200 whose body is `body`, with the cache headers.
pub(super) fn answer(
    content_type: &str,
    body: Bytes,
    status: CacheStatus,
    age: Option<Duration>,
) -> reqwest::Response {
    response(
        StatusCode::OK,
        cache_headers(content_type, status, age),
        body.into(),
    )
}

/// A 200 `text/event-stream` whose body is `events` as they come; an `Err` item cuts the
/// body (async-openai reports it as a stream error).
pub(super) fn event_stream<S>(
    events: S,
    status: CacheStatus,
    age: Option<Duration>,
) -> reqwest::Response
where
    S: Stream<Item = Result<Bytes, Error>> + Send + 'static,
{
    let body = reqwest::Body::wrap_stream(events.map(|item| item.map_err(std::io::Error::other)));
    response(
        StatusCode::OK,
        cache_headers("text/event-stream", status, age),
        body,
    )
}

/// A pass-through answer, marked when the caller asked to bypass the cache.
pub(super) fn mark(mut response: reqwest::Response, status: CacheStatus) -> reqwest::Response {
    response.headers_mut().insert(
        HEADER_STATUS,
        HeaderValue::from_static(status.header_value()),
    );
    response
}

/// A body that broke off while it was read: a `Connect` error with its whole cause.
pub(super) fn cut_off(e: reqwest::Error) -> Error {
    Error::new(
        ErrorKind::Connect,
        format!(
            "the answer was cut off: {}",
            llm_cache_core::upstream::error_chain(&e.without_url())
        ),
    )
}
