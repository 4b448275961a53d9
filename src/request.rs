//! OpenAI-compatible chat types. Every struct keeps the fields it does not name in
//! `extra` and writes them back, so no provider parameter or response field is lost.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Unknown JSON fields, kept as they came.
pub type Extra = Map<String, Value>;

/// A `/chat/completions` request body.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The model name, e.g. `gpt-4.1`.
    #[serde(default)]
    pub model: String,
    /// The conversation so far.
    #[serde(default)]
    pub messages: Vec<ChatMessage>,
    /// Sampling temperature.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f64>,
    /// Whether the upstream should stream the answer (a transport field: not in the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<bool>,
    /// Stream options such as `include_usage` (a transport field: not in the key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_options: Option<Value>,
    /// Every other parameter (top_p, max_tokens, stop, seed, tools, tool_choice,
    /// response_format, n, penalties, logit_bias, provider-specific fields...).
    #[serde(flatten)]
    pub extra: Extra,
}

impl ChatRequest {
    /// A request for `model` with no messages yet.
    pub fn new(model: impl Into<String>) -> Self {
        ChatRequest {
            model: model.into(),
            ..Default::default()
        }
    }

    /// Append a message.
    #[must_use]
    pub fn message(mut self, message: ChatMessage) -> Self {
        self.messages.push(message);
        self
    }

    /// Set the temperature.
    #[must_use]
    pub fn temperature(mut self, t: f64) -> Self {
        self.temperature = Some(t);
        self
    }

    /// Set any other parameter by name, e.g. `.param("max_tokens", 256)`.
    #[must_use]
    pub fn param(mut self, name: impl Into<String>, value: impl Into<Value>) -> Self {
        self.extra.insert(name.into(), value.into());
        self
    }

    /// Parse a request from JSON bytes; the error names what is wrong.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        let req: ChatRequest = serde_json::from_slice(bytes)
            .map_err(|e| Error::invalid_request("body", format!("not a chat request: {e}")))?;
        req.validate()?;
        Ok(req)
    }

    /// Check what must be present before any network call: `model`, `messages`, and a
    /// `role` on every message.
    pub fn validate(&self) -> Result<()> {
        if self.model.trim().is_empty() {
            return Err(Error::invalid_request("model", "missing or empty"));
        }
        if self.messages.is_empty() {
            return Err(Error::invalid_request("messages", "missing or empty"));
        }
        for (i, m) in self.messages.iter().enumerate() {
            if m.role.trim().is_empty() {
                return Err(Error::invalid_request(
                    &format!("messages[{i}].role"),
                    "missing or empty",
                ));
            }
        }
        Ok(())
    }
}

/// One message of a conversation, or the message of a choice in a response.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChatMessage {
    /// `system`, `developer`, `user`, `assistant`, `tool`...
    #[serde(default)]
    pub role: String,
    /// Text, or a list of content parts; absent on some assistant tool-call messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    /// Optional participant name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Tool calls made by the assistant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ToolCall>>,
    /// For `tool` messages: the call this message answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// Every other field (refusal, audio, annotations...).
    #[serde(flatten)]
    pub extra: Extra,
}

impl ChatMessage {
    /// A message with `role` and text `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        ChatMessage {
            role: role.into(),
            content: Some(Content::Text(content.into())),
            ..Default::default()
        }
    }

    /// A `system` message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::new("system", content)
    }

    /// A `user` message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::new("user", content)
    }

    /// An `assistant` message.
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new("assistant", content)
    }

    /// The text of the content: the string, or the text parts joined. `None` when absent.
    pub fn text(&self) -> Option<String> {
        match self.content.as_ref()? {
            Content::Text(s) => Some(s.clone()),
            Content::Parts(parts) => Some(
                parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect(),
            ),
        }
    }
}

/// Message content: a plain string, or a list of typed parts (text, image_url, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Typed parts, kept as JSON so every part type survives.
    Parts(Vec<Value>),
}

/// A tool call made by the assistant.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call's id, echoed by the `tool` message that answers it.
    #[serde(default)]
    pub id: String,
    /// Usually `function`.
    #[serde(rename = "type", default = "function_type")]
    pub kind: String,
    /// The function called.
    #[serde(default)]
    pub function: FunctionCall,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Extra,
}

fn function_type() -> String {
    "function".to_string()
}

/// The function a tool call names, with its JSON arguments as text.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FunctionCall {
    /// Function name.
    #[serde(default)]
    pub name: String,
    /// Arguments as a JSON string, exactly as the model wrote them.
    #[serde(default)]
    pub arguments: String,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A `/chat/completions` response body.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChatResponse {
    /// Completion id.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    /// `chat.completion`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub object: String,
    /// Unix seconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub created: u64,
    /// The model that answered.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub model: String,
    /// The answers; a response without any is never cached.
    #[serde(default)]
    pub choices: Vec<Choice>,
    /// Token usage, used for cost accounting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usage: Option<Usage>,
    /// Backend fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_fingerprint: Option<String>,
    /// Every other field.
    #[serde(flatten)]
    pub extra: Extra,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl ChatResponse {
    /// The text of the first choice, when there is one.
    pub fn text(&self) -> Option<String> {
        self.choices.first().and_then(|c| c.message.text())
    }
}

/// One answer of a response.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Choice {
    /// Position among the choices.
    #[serde(default)]
    pub index: u32,
    /// The assistant's message.
    #[serde(default)]
    pub message: ChatMessage,
    /// `stop`, `length`, `tool_calls`, `content_filter`...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_reason: Option<String>,
    /// Every other field (logprobs...).
    #[serde(flatten)]
    pub extra: Extra,
}

/// Token counts of one call.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Usage {
    /// Input tokens.
    #[serde(default)]
    pub prompt_tokens: u64,
    /// Output tokens.
    #[serde(default)]
    pub completion_tokens: u64,
    /// Their sum.
    #[serde(default)]
    pub total_tokens: u64,
    /// Every other field (token details...).
    #[serde(flatten)]
    pub extra: Extra,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn unknown_fields_survive_a_round_trip() {
        let body = json!({
            "model": "m", "messages": [{"role": "user", "content": "hi", "x_msg": 1}],
            "top_p": 0.5, "vendor_knob": {"a": [1, 2]}
        });
        let req: ChatRequest = serde_json::from_value(body.clone()).unwrap();
        assert_eq!(serde_json::to_value(&req).unwrap(), body);

        let resp = json!({
            "id": "c1", "object": "chat.completion", "created": 7, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "yo",
                "refusal": null}, "finish_reason": "stop", "logprobs": null}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3,
                "prompt_tokens_details": {"cached_tokens": 0}},
            "service_tier": "default"
        });
        let r: ChatResponse = serde_json::from_value(resp.clone()).unwrap();
        assert_eq!(serde_json::to_value(&r).unwrap(), resp);
    }

    #[test]
    fn validation_names_the_field() {
        let e =
            ChatRequest::from_json(br#"{"messages":[{"role":"user","content":"x"}]}"#).unwrap_err();
        assert!(
            e.is_invalid_request() && e.message().contains("`model`"),
            "{e}"
        );
        let e = ChatRequest::from_json(br#"{"model":"m"}"#).unwrap_err();
        assert!(e.message().contains("`messages`"), "{e}");
        let e = ChatRequest::from_json(
            br#"{"model":"m","messages":[{"role":"user","content":"x"},{"content":"y"}]}"#,
        )
        .unwrap_err();
        assert!(e.message().contains("`messages[1].role`"), "{e}");
    }
}
