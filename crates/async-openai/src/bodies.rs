//! The endpoints other than chat and embeddings (`/responses`, `/completions`; embeddings
//! go input by input through `LlmCache::embeddings_with`): their whole JSON body is the
//! question and the upstream's answer, JSON or an event stream, is stored as it came and
//! replayed byte for byte. Same tiers, flights and Redis as chat, through a sibling engine
//! of stored bodies. It must never store an answer that is not complete (a non-2xx, a
//! Responses API answer whose `status` is not `completed`, a stream that did not reach its
//! end).

use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use llm_cache_core::chat::CacheControl;
use llm_cache_core::stream::SseParser;
use llm_cache_core::tiered::{CacheStatus, TieredCache};

use super::reply::{self, Failure, error_reply};
use super::request::Endpoint;
use super::upstream::{HttpService, send_ok};

/// One stored answer: its content type and body text (JSON, or the event stream as the
/// upstream sent it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StoredBody {
    pub(super) content_type: String,
    pub(super) body: String,
    /// A completions stream fetched asking for usage (every one this version stores):
    /// whether it has the usage chunk is then the upstream's answer, not a caller's choice.
    /// Absent in entries stored before; see [`fit_for_streaming`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub(super) asked_usage: bool,
}

/// Whether a stored answer may be replayed as a stream: a completions stream stored by an
/// older version without its usage chunk (its first caller did not ask) is fetched again,
/// once, so callers who ask for usage get it.
pub(super) fn fit_for_streaming(endpoint: Endpoint, stored: &StoredBody) -> bool {
    endpoint != Endpoint::Completions
        || stored.asked_usage
        || llm_cache_core::stream::usage::has_usage_chunk(stored.body.as_bytes())
}

/// Answer a cacheable non-chat request that does not stream from the tiers, or from the
/// inner service on a miss (streamed ones: `body_flight`).
pub(super) async fn answer<S>(
    bodies: &TieredCache<StoredBody>,
    digest: llm_cache_core::Digest,
    control: &CacheControl,
    endpoint: Endpoint,
    service: S,
    factory: HttpRequestFactory,
) -> std::result::Result<reqwest::Response, OpenAIError>
where
    S: HttpService,
    S::Error: Into<OpenAIError>,
{
    let fetch = move || async move {
        let (response, headers, content_type) =
            send_ok(service, factory, "application/json").await?;
        let body = response.bytes().await.map_err(super::reply::cut_off)?;
        let complete = json_is_complete(endpoint, &body);
        match String::from_utf8(body.to_vec()) {
            Ok(text) if complete => Ok(StoredBody {
                content_type,
                body: text,
                asked_usage: false,
            }),
            _ => Err(Failure::Http {
                status: reqwest::StatusCode::OK,
                headers,
                body,
            }
            .into_error()),
        }
    };
    match bodies
        .get_or_fetch_with(digest, &control.fetch, fetch)
        .await
    {
        Ok(cached) => {
            let age = (cached.status() != CacheStatus::Miss).then(|| cached.age());
            let stored = cached.value();
            Ok(reply::answer(
                &stored.content_type,
                Bytes::copy_from_slice(stored.body.as_bytes()),
                cached.status(),
                age.or(Some(std::time::Duration::ZERO)),
            ))
        }
        Err(e) => error_reply(e),
    }
}

/// A JSON answer worth storing: an object without `error`, and for the Responses API a
/// `status` of `completed` (not `incomplete`, `failed`, `in_progress`...).
fn json_is_complete(endpoint: Endpoint, body: &[u8]) -> bool {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    if map.get("error").is_some_and(|e| !e.is_null()) {
        return false;
    }
    match endpoint {
        Endpoint::Responses => map.get("status").and_then(Value::as_str) == Some("completed"),
        _ => true,
    }
}

/// An event stream worth storing: it reached its end (`response.completed` for the
/// Responses API, `[DONE]` otherwise) with no error event on the way.
pub(super) fn stream_is_complete(endpoint: Endpoint, body: &[u8]) -> bool {
    let mut parser = SseParser::new();
    let Ok(mut events) = parser.push(body) else {
        return false;
    };
    events.extend(parser.finish());
    let mut ended = false;
    for event in &events {
        if event.event.as_deref() == Some("error") {
            return false;
        }
        if event.data == "[DONE]" {
            ended = endpoint != Endpoint::Responses || ended;
            continue;
        }
        let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
            return false;
        };
        let kind = data.get("type").and_then(Value::as_str);
        match (endpoint, kind) {
            (_, Some("error" | "response.failed" | "response.incomplete")) => return false,
            (Endpoint::Responses, Some("response.completed")) => ended = true,
            _ if data.get("error").is_some_and(|e| !e.is_null()) => return false,
            _ => {}
        }
    }
    ended
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_complete_answers_are_stored() {
        assert!(json_is_complete(Endpoint::Embeddings, br#"{"data":[]}"#));
        assert!(!json_is_complete(
            Endpoint::Embeddings,
            br#"{"error":{"message":"x"}}"#
        ));
        assert!(!json_is_complete(Endpoint::Embeddings, b"[1]"));
        assert!(json_is_complete(
            Endpoint::Responses,
            br#"{"status":"completed"}"#
        ));
        assert!(!json_is_complete(
            Endpoint::Responses,
            br#"{"status":"incomplete"}"#
        ));

        let done = b"data: {\"choices\":[]}\n\ndata: [DONE]\n\n";
        assert!(stream_is_complete(Endpoint::Completions, done));
        assert!(!stream_is_complete(
            Endpoint::Completions,
            b"data: {\"choices\":[]}\n\n"
        ));
        let completed = b"event: response.created\ndata: {\"type\":\"response.created\"}\n\n\
            event: response.completed\ndata: {\"type\":\"response.completed\"}\n\n";
        assert!(stream_is_complete(Endpoint::Responses, completed));
        let cut = b"event: response.created\ndata: {\"type\":\"response.created\"}\n\n";
        assert!(!stream_is_complete(Endpoint::Responses, cut));
        let failed = b"data: {\"type\":\"response.failed\"}\n\n";
        assert!(!stream_is_complete(Endpoint::Responses, failed));
    }

    #[test]
    fn older_completions_streams_without_usage_are_fetched_again() {
        let stored = |body: &str, asked_usage| StoredBody {
            content_type: "text/event-stream".into(),
            body: body.into(),
            asked_usage,
        };
        let plain = "data: {\"choices\":[{\"text\":\"a\"}]}\n\ndata: [DONE]\n\n";
        let usage = "data: {\"choices\":[],\"usage\":{\"total_tokens\":1}}\n\ndata: [DONE]\n\n";
        assert!(!fit_for_streaming(
            Endpoint::Completions,
            &stored(plain, false)
        ));
        assert!(fit_for_streaming(
            Endpoint::Completions,
            &stored(plain, true)
        ));
        assert!(fit_for_streaming(
            Endpoint::Completions,
            &stored(usage, false)
        ));
        assert!(fit_for_streaming(
            Endpoint::Responses,
            &stored(plain, false)
        ));
        // The flag is only written when set: other entries keep their stored form.
        let json = serde_json::to_string(&stored(plain, false)).unwrap();
        assert!(!json.contains("asked_usage"), "{json}");
        let old: StoredBody =
            serde_json::from_str(r#"{"content_type":"text/event-stream","body":""}"#).unwrap();
        assert!(!old.asked_usage);
    }
}
