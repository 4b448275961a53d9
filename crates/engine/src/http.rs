//! Answers as axum responses (feature `axum`, on `axum-core`): errors as OpenAI-shaped
//! JSON, a [`Cached`] value as a 200 JSON body with `x-llm-cache` and `age`.
//!
//! Errors as OpenAI-shaped answers: `{"error": {"message", "type", "param", "code"}}` with
//! the right status, and `Retry-After` when the upstream asked for one. An upstream error
//! keeps the upstream's own status, type, code and param. A message must never carry a
//! caller key or a credential (the crate's errors are masked where they are made; the
//! front's own never quote a header value).

use std::time::Duration;

use axum_core::body::Body;
use axum_core::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Serialize;
use serde_json::{Value, json};

use crate::cached::{AnswerStatus, Cached};
use crate::error::{Error, ErrorKind, ProviderError};

/// An OpenAI-shaped error answer: status, `type`, `code`, `param`, message, and an optional
/// `Retry-After`. What every error of the front turns into; build your own for handlers of
/// your own.
#[derive(Debug, Clone)]
pub struct ApiError(Box<Details>);

#[derive(Debug, Clone)]
struct Details {
    status: StatusCode,
    message: String,
    kind: String,
    code: Value,
    param: Value,
    retry_after: Option<Duration>,
}

impl ApiError {
    /// An error with `status` and `message`; its `type` follows the status
    /// (`invalid_request_error`, `authentication_error`, `permission_error`,
    /// `not_found_error`, `rate_limit_error`, `server_error`) and `code` is null.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError(Box::new(Details {
            status,
            message: message.into(),
            kind: default_type(status).to_string(),
            code: Value::Null,
            param: Value::Null,
            retry_after: None,
        }))
    }

    crate::setters! {
        /// The same error with this `code`.
        #[must_use]
        pub fn code(code: impl Into<String>) { 0.code = Value::String(code.into()) }

        /// The same error with this `type`.
        #[must_use]
        pub fn kind(kind: impl Into<String>) { 0.kind = kind.into() }
    }

    /// The status it answers with.
    pub fn status(&self) -> StatusCode {
        self.0.status
    }

    /// The JSON body.
    pub fn body(&self) -> Value {
        json!({"error": {
            "message": self.0.message,
            "type": self.0.kind,
            "param": self.0.param,
            "code": self.0.code,
        }})
    }
}

fn default_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    }
}

impl From<&Error> for ApiError {
    fn from(e: &Error) -> Self {
        let (status, code) = match (e.kind(), e.status()) {
            (ErrorKind::Upstream, Some(s)) => (
                StatusCode::from_u16(s).unwrap_or(StatusCode::BAD_GATEWAY),
                None,
            ),
            (ErrorKind::InvalidRequest, _) => (StatusCode::BAD_REQUEST, Some("invalid_request")),
            (ErrorKind::Timeout, _) => (StatusCode::GATEWAY_TIMEOUT, Some("upstream_timeout")),
            (ErrorKind::Connect, _) => (StatusCode::BAD_GATEWAY, Some("upstream_unreachable")),
            (ErrorKind::Config, _) => (StatusCode::INTERNAL_SERVER_ERROR, None),
            (ErrorKind::Redis, _) => (StatusCode::SERVICE_UNAVAILABLE, None),
            (ErrorKind::Unsupported, _) => (StatusCode::NOT_IMPLEMENTED, Some("not_implemented")),
            // An upstream answer that is not a completion, a fetch that failed or panicked.
            _ => (StatusCode::BAD_GATEWAY, Some("upstream_error")),
        };
        // The upstream's own message and a bad request's are quoted as they are; the
        // others with their kind.
        let message = match (e.kind(), e.status()) {
            (ErrorKind::Upstream, Some(_)) | (ErrorKind::InvalidRequest, _) => {
                e.message().to_string()
            }
            _ => e.to_string(),
        };
        let mut out = ApiError::new(status, message);
        if let Some(code) = code {
            out = out.code(code);
        }
        let provider = std::error::Error::source(e).and_then(|s| s.downcast_ref::<ProviderError>());
        if let Some(p) = provider {
            if let Some(kind) = &p.kind {
                out.0.kind = kind.clone();
            }
            out.0.code = p.code.clone().unwrap_or(Value::Null);
            out.0.param = p.param.clone().unwrap_or(Value::Null);
        }
        out.0.retry_after = e.retry_after();
        out
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = self.0.status;
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(after) = self.0.retry_after {
            let headers = response.headers_mut();
            // Whole seconds, rounded up (never sooner than asked), and the exact delay in ms.
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
            headers.insert("retry-after-ms", HeaderValue::from(ms));
        }
        response
    }
}

/// The crate's error as an OpenAI-shaped answer (see [`ApiError`]): an upstream error with
/// the upstream's status, `type`, `code` and `Retry-After`; `InvalidRequest` 400 (`code: invalid_request`), `Timeout`
/// 504, `Connect` and other upstream failures 502.
impl IntoResponse for Error {
    fn into_response(self) -> Response {
        ApiError::from(&self).into_response()
    }
}

pub use crate::cached::HEADER_STATUS;

/// The `x-llm-cache` and `age` headers of an answer from `status`, `age` old.
pub fn cache_headers(headers: &mut HeaderMap, status: impl AnswerStatus, age: Duration) {
    headers.insert(
        HEADER_STATUS,
        HeaderValue::from_static(status.header_value()),
    );
    // A miss is as old as its fetch.
    let age = if status.is_hit() { age } else { Duration::ZERO };
    headers.insert(header::AGE, HeaderValue::from(age.as_secs()));
}

/// `value` as a 200 JSON body, with `x-llm-cache` and `age` from `status` and `age`.
pub fn json_answer(value: &impl Serialize, status: impl AnswerStatus, age: Duration) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => json_body(Body::from(body), status, age),
        Err(e) => Error::codec(e).into_response(),
    }
}

/// `body`, JSON already, as a 200 answer with `x-llm-cache` and `age` from `status` and
/// `age` (what [`json_answer`] sends once it has serialised its value).
pub fn json_body(body: Body, status: impl AnswerStatus, age: Duration) -> Response {
    let mut response = Response::new(body);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_errors_keep_status_type_code_and_retry_after() {
        let e = Error::upstream_status(429, "slow down")
            .with_retry_after(Duration::from_millis(1500))
            .with_source(ProviderError {
                kind: Some("requests".into()),
                code: Some(json!("rate_limit_exceeded")),
                param: None,
            });
        let api = ApiError::from(&e);
        assert_eq!(api.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            api.body(),
            json!({"error": {"message": "slow down", "type": "requests", "param": null,
                "code": "rate_limit_exceeded"}})
        );
        let response = api.into_response();
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        assert_eq!(response.headers()["retry-after-ms"], "1500");
    }

    #[test]
    fn the_crates_own_errors_have_statuses() {
        let status = |e: Error| ApiError::from(&e).status().as_u16();
        assert_eq!(status(Error::invalid_request("messages", "missing")), 400);
        assert_eq!(status(Error::new(ErrorKind::Timeout, "late")), 504);
        assert_eq!(status(Error::new(ErrorKind::Connect, "refused")), 502);
        assert_eq!(status(Error::new(ErrorKind::Upstream, "no choices")), 502);
        assert_eq!(status(Error::upstream_status(400, "bad")), 400);
    }
}
