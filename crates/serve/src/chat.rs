//! `POST /v1/chat/completions`, and the answers it gives: a cached answer as JSON, a
//! cached stream as server-sent events (`data: <chunk>` ... `data: [DONE]`), both with the
//! `x-llm-cache` and `age` headers. A request is authenticated before its body is read,
//! and read (bounded) and checked before anything is keyed or sent upstream.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::Front;
use super::access;
use super::errors::ApiError;
use super::provider::Endpoint;
use crate::error::Error;
use crate::request::{ChatRequest, ChatResponse};
use llm_cache_core::Cached;
use llm_cache_core::chat::{CacheControl, Route};
use llm_cache_core::tiered::http::json_body;

pub(super) async fn completions(State(front): State<Arc<Front>>, request: Request) -> Response {
    answer(&front, request).await.into_response()
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
    Ok(json_answer(front, cached.map_err(|e| ApiError::from(&e))?))
}

/// What `Cached`'s own `IntoResponse` sends (a 200 JSON body with `x-llm-cache` and `age`),
/// with the JSON kept from the last time this same entry was sent: an L1 hit is served from
/// the entry of the hits before it. A bypass answer has no entry, so its bytes are not kept.
fn json_answer(front: &Front, cached: Cached<ChatResponse>) -> Response {
    let (status, age) = (cached.status(), cached.age());
    match front.answers.json(cached.stored(), cached.value()) {
        Ok(body) => json_body(Body::from(body), status, age),
        Err(e) => Error::codec(e).into_response(),
    }
}

/// Who is calling and what they may do: the caller's key checked (or the caller's
/// credentials taken, in pass-through mode), the control headers read inside the caller's
/// namespace, and where a miss goes. Before the body is read.
pub(super) fn admit(
    front: &Front,
    headers: &HeaderMap,
    endpoint: Endpoint,
) -> Result<(CacheControl, Route), ApiError> {
    let control = control(front, headers)?;
    let route = match &front.provider {
        Some(provider) => provider.route(endpoint, front.pass_through, headers)?,
        None => Route::OWN,
    };
    Ok((control, route))
}

/// The caller's key checked (when the front has caller keys) and the control headers read
/// inside the namespace the caller is bound to.
pub(super) fn control(front: &Front, headers: &HeaderMap) -> Result<CacheControl, ApiError> {
    let caller = match &front.callers {
        Some(callers) => Some(callers.authenticate(headers)?),
        None => None,
    };
    let bound = caller.map_or(front.namespace.as_str(), |c| c.namespace());
    access::control(headers, bound, caller)
}

/// Refuse a body that does not say it is JSON (`application/json`, with any parameters, or
/// any `application/*+json`), and one that says nothing: a browser sends `text/plain`,
/// form-encoded or multipart POSTs across origins without a preflight, so answering them
/// would let any web page spend the provider budget through an `--open` front.
fn json_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let given = headers.get(header::CONTENT_TYPE).map(|v| v.as_bytes());
    let essence = given.map(|t| {
        t.split(|&b| b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii()
    });
    if essence.is_some_and(is_json_type) {
        return Ok(());
    }
    let essence = essence.map(|t| String::from_utf8_lossy(t).to_ascii_lowercase());
    let said = match essence {
        Some(t) => format!("`{}`", t.chars().take(80).collect::<String>()),
        None => "no Content-Type".to_string(),
    };
    Err(ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        format!("this endpoint takes a JSON body (Content-Type: application/json); the request has {said}"),
    )
    .code("unsupported_media_type"))
}

/// `application/json` or any `application/*+json`, in any case (a media type's essence).
fn is_json_type(essence: &[u8]) -> bool {
    const APPLICATION: &[u8] = b"application/";
    let prefix = essence.get(..APPLICATION.len());
    if !prefix.is_some_and(|p| p.eq_ignore_ascii_case(APPLICATION)) {
        return false;
    }
    let subtype = &essence[APPLICATION.len()..];
    subtype.eq_ignore_ascii_case(b"json")
        || subtype.len() >= b"+json".len()
            && subtype[subtype.len() - 5..].eq_ignore_ascii_case(b"+json")
}

/// The body, at most `limit` bytes (the router's `DefaultBodyLimit`): a longer one is
/// refused (413) without reading it all.
pub(super) async fn read_body(request: Request, limit: usize) -> Result<Bytes, ApiError> {
    json_content_type(request.headers())?;
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
            } else if let Some(timeout) = crate::server::body_timed_out(&rejection) {
                ApiError::new(StatusCode::REQUEST_TIMEOUT, timeout.to_string())
                    .code("request_timeout")
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "the request body could not be read: {}",
                        rejection.body_text()
                    ),
                )
                .code("invalid_body")
            }
        })
}

#[cfg(test)]
mod tests {
    use super::is_json_type;

    #[test]
    fn json_types_in_any_case_and_nothing_else() {
        for json in [
            "application/json",
            "APPLICATION/JSON",
            "Application/Json",
            "application/problem+json",
            "application/vnd.api+JSON",
            "application/+json",
        ] {
            assert!(is_json_type(json.as_bytes()), "{json}");
        }
        for other in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data",
            "application/jsonx",
            "application/",
            "application/json5",
            "text/json",
            "json",
            "",
        ] {
            assert!(!is_json_type(other.as_bytes()), "{other}");
        }
    }
}
