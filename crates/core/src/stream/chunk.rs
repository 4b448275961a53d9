//! The typed `chat.completion.chunk` of a streamed answer, and [`parse_chunk`], which
//! reads one SSE event's data into it. Plain data and parsing: it must never panic on what
//! an upstream sends, and an error quotes at most a short, one-line snippet of it.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};
use crate::request::{Extra, Usage};

/// The `object` of every streamed chunk.
pub const CHUNK_OBJECT: &str = "chat.completion.chunk";
/// The `object` of an assembled response.
pub const RESPONSE_OBJECT: &str = "chat.completion";

/// One `chat.completion.chunk` of a streamed answer. Fields it does not name are kept in
/// `extra`; absent fields stay absent when it is written back.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChatChunk {
    /// Completion id, the same on every chunk of a stream.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// `chat.completion.chunk`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub object: String,
    /// Unix seconds.
    #[serde(default, skip_serializing_if = "crate::request::is_zero")]
    pub created: u64,
    /// The model that answers.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model: String,
    /// Backend fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
    /// The choices this chunk adds to; empty on the final usage chunk.
    #[serde(default)]
    pub choices: Vec<ChunkChoice>,
    /// Token usage; only on the last chunk, when the request asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Every other field (`service_tier`, `prompt_filter_results`...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// What one chunk adds to one choice.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChunkChoice {
    /// The choice this delta belongs to.
    #[serde(default)]
    pub index: u32,
    /// The text and tool-call pieces.
    #[serde(default)]
    pub delta: Delta,
    /// Set on the choice's last chunk: `stop`, `length`, `tool_calls`...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    /// Every other field (`logprobs`, `content_filter_results`...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// A piece of the assistant's message.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Delta {
    /// The role, usually only on the first chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The next piece of text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Pieces of tool calls, each naming the call by `index`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCallDelta>>,
    /// Every other field (`refusal`, `reasoning_content`, `annotations`...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// A piece of one tool call.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ToolCallDelta {
    /// The call's position in the message's `tool_calls`.
    #[serde(default)]
    pub index: u32,
    /// The call's id, on its first piece.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Usually `function`, on the first piece.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The function's name and the next piece of its arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<FunctionDelta>,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A piece of a tool call's function.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FunctionDelta {
    /// The function's name, on the call's first piece.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The next piece of the JSON arguments.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arguments: Option<String>,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Extra,
}

/// Parse the data of one SSE event of a chat stream.
///
/// `[DONE]` is `Ok(None)`. A JSON object with a non-null `error` (an upstream failing
/// mid-stream) is an [`ErrorKind::Upstream`] error carrying the provider's message; so is
/// anything that is not a chunk, with the first 200 bytes of it.
pub fn parse_chunk(data: &str) -> Result<Option<ChatChunk>> {
    let trimmed = data.trim();
    if trimmed == "[DONE]" {
        return Ok(None);
    }
    let chunk: ChatChunk = serde_json::from_str(trimmed).map_err(|e| {
        Error::new(
            ErrorKind::Upstream,
            format!(
                "stream event is not a chat.completion.chunk ({e}): {}",
                snippet(trimmed, SNIPPET_BYTES)
            ),
        )
    })?;
    if let Some(error) = chunk.extra.get("error").filter(|e| !e.is_null()) {
        return Err(Error::new(
            ErrorKind::Upstream,
            format!("error in stream: {}", provider_message(error)),
        ));
    }
    let empty = chunk.id.is_empty()
        && chunk.object.is_empty()
        && chunk.choices.is_empty()
        && chunk.usage.is_none();
    if empty {
        return Err(Error::new(
            ErrorKind::Upstream,
            format!(
                "stream event is not a chat.completion.chunk: {}",
                snippet(trimmed, SNIPPET_BYTES)
            ),
        ));
    }
    Ok(Some(chunk))
}

/// How much of a bad event an error quotes.
const SNIPPET_BYTES: usize = 200;
/// How much of a provider's error message an error quotes.
const MESSAGE_BYTES: usize = 1000;

/// At most the first `limit` bytes of `s`, cut on a character boundary, on one line.
fn snippet(s: &str, limit: usize) -> String {
    let mut end = s.len().min(limit);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let mut out: String = s[..end]
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if end < s.len() {
        out.push('…');
    }
    out
}

/// `{"message": "...", "type": "...", "code": ...}` as one line; anything else as JSON.
fn provider_message(error: &Value) -> String {
    let Some(message) = error.get("message").and_then(Value::as_str) else {
        return match error {
            Value::String(s) => snippet(s, MESSAGE_BYTES),
            other => snippet(&other.to_string(), SNIPPET_BYTES),
        };
    };
    let mut out = snippet(message, MESSAGE_BYTES);
    for field in ["type", "code"] {
        match error.get(field) {
            Some(Value::String(s)) => out.push_str(&format!(" ({field}: {})", snippet(s, 100))),
            Some(Value::Number(n)) => out.push_str(&format!(" ({field}: {n})")),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parse_chunk_done_errors_and_garbage() {
        assert_eq!(parse_chunk("[DONE]").unwrap(), None);
        assert_eq!(parse_chunk(" [DONE] ").unwrap(), None);

        let e =
            parse_chunk(r#"{"error":{"message":"overloaded","type":"server_error","code":529}}"#)
                .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Upstream);
        assert!(
            e.message().contains("overloaded") && e.message().contains("529"),
            "{e}"
        );
        // OpenRouter-style: an error riding on a chunk.
        let e = parse_chunk(
            r#"{"id":"x","choices":[{"index":0,"delta":{},"finish_reason":"error"}],"error":"boom"}"#,
        )
        .unwrap_err();
        assert!(e.message().contains("boom"), "{e}");

        let long = format!("{{\"id\": \"{}", "é".repeat(500));
        let e = parse_chunk(&long).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Upstream);
        assert!(e.message().len() < 400, "{}", e.message().len());
        assert!(e.message().contains("\"id\": \"éé"), "{e}");
        for garbage in ["[1,2]", "\"s\"", "{}", r#"{"foo":1}"#, "", "null"] {
            let e = parse_chunk(garbage).unwrap_err();
            assert!(
                e.message().contains("not a chat.completion.chunk"),
                "{garbage}: {e}"
            );
        }
    }

    #[test]
    fn chunks_write_back_what_they_read() {
        let raw = json!({
            "id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
            "service_tier": "default",
            "choices": [{"index": 0, "logprobs": null,
                "delta": {"role": "assistant", "refusal": null, "tool_calls": [{"index": 0,
                    "id": "t", "type": "function", "x": 1,
                    "function": {"name": "f", "arguments": "", "y": 2}}]}}]
        });
        let chunk = parse_chunk(&raw.to_string()).unwrap().unwrap();
        assert_eq!(serde_json::to_value(&chunk).unwrap(), raw);
    }
}
