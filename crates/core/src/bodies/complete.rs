//! When an answer of a [`BodyEndpoint`] is complete enough to store: never a non-2xx (the
//! caller never hands one here), an error body, a Responses answer that is not
//! `completed`, or a stream that did not reach its end.

use serde_json::Value;

use super::BodyEndpoint;
use crate::stream::SseParser;

/// A JSON answer worth storing: an object without `error`, and for the Responses API a
/// `status` of `completed` (not `incomplete`, `failed`, `in_progress`...).
pub fn json_is_complete(endpoint: BodyEndpoint, body: &[u8]) -> bool {
    let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    if map.get("error").is_some_and(|e| !e.is_null()) {
        return false;
    }
    match endpoint {
        BodyEndpoint::Responses => map.get("status").and_then(Value::as_str) == Some("completed"),
        BodyEndpoint::Completions => true,
    }
}

/// An event stream worth storing: it reached its end (`response.completed` for the
/// Responses API, `[DONE]` otherwise) with no error event on the way.
pub fn stream_is_complete(endpoint: BodyEndpoint, body: &[u8]) -> bool {
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
            ended = endpoint != BodyEndpoint::Responses || ended;
            continue;
        }
        let Ok(data) = serde_json::from_str::<Value>(&event.data) else {
            return false;
        };
        let kind = data.get("type").and_then(Value::as_str);
        match (endpoint, kind) {
            (_, Some("error" | "response.failed" | "response.incomplete")) => return false,
            (BodyEndpoint::Responses, Some("response.completed")) => ended = true,
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
        use BodyEndpoint::{Completions, Responses};
        assert!(json_is_complete(Completions, br#"{"choices":[]}"#));
        assert!(!json_is_complete(
            Completions,
            br#"{"error":{"message":"x"}}"#
        ));
        assert!(!json_is_complete(Completions, b"[1]"));
        assert!(json_is_complete(Responses, br#"{"status":"completed"}"#));
        assert!(!json_is_complete(Responses, br#"{"status":"incomplete"}"#));

        let done = b"data: {\"choices\":[]}\n\ndata: [DONE]\n\n";
        assert!(stream_is_complete(Completions, done));
        assert!(!stream_is_complete(
            Completions,
            b"data: {\"choices\":[]}\n\n"
        ));
        let completed = b"event: response.created\ndata: {\"type\":\"response.created\"}\n\n\
            event: response.completed\ndata: {\"type\":\"response.completed\"}\n\n";
        assert!(stream_is_complete(Responses, completed));
        let cut = b"event: response.created\ndata: {\"type\":\"response.created\"}\n\n";
        assert!(!stream_is_complete(Responses, cut));
        let failed = b"data: {\"type\":\"response.failed\"}\n\n";
        assert!(!stream_is_complete(Responses, failed));
    }

    #[test]
    fn older_completions_streams_without_usage_are_fetched_again() {
        use super::super::{StoredBody, fit_for_streaming};
        use BodyEndpoint::{Completions, Responses};
        let stored = |body: &str, asked_usage| StoredBody {
            content_type: "text/event-stream".into(),
            body: body.into(),
            asked_usage,
        };
        let plain = "data: {\"choices\":[{\"text\":\"a\"}]}\n\ndata: [DONE]\n\n";
        let usage = "data: {\"choices\":[],\"usage\":{\"total_tokens\":1}}\n\ndata: [DONE]\n\n";
        assert!(!fit_for_streaming(Completions, &stored(plain, false)));
        assert!(fit_for_streaming(Completions, &stored(plain, true)));
        assert!(fit_for_streaming(Completions, &stored(usage, false)));
        assert!(fit_for_streaming(Responses, &stored(plain, false)));
        // The flag is only written when set: other entries keep their stored form.
        let json = serde_json::to_string(&stored(plain, false)).unwrap();
        assert!(!json.contains("asked_usage"), "{json}");
        let old: StoredBody =
            serde_json::from_str(r#"{"content_type":"text/event-stream","body":""}"#).unwrap();
        assert!(!old.asked_usage);
    }
}
