//! OpenAI-compatible chat types: the vocabulary `stream/`, `upstream/` and `chat/` share.
//! Every struct keeps the fields it does not name in `extra` and writes them back, so no
//! provider parameter or response field is lost. Plain data: no I/O, no keys, no tiers; a
//! request that nests deeper than [`MAX_REQUEST_DEPTH`] must be refused before anything
//! recurses over it.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

pub(crate) mod embeddings;
pub use embeddings::{
    Embedding, EmbeddingInput, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage, EncodingFormat,
    InputItem, Vector,
};

/// Unknown JSON fields, kept as they came.
pub type Extra = Map<String, Value>;

/// The deepest a request may nest arrays and objects, the request body itself counting as
/// one (`{"x": [[1]]}` nests 3 deep). [`ChatRequest::validate`], and so every entry point
/// of [`LlmCache`](crate::LlmCache), rejects a deeper request with an
/// [`InvalidRequest`](crate::ErrorKind::InvalidRequest) error naming this limit and the
/// field, before anything recurses over it: copying, serializing, keying or dropping a
/// `serde_json::Value` recurses once per level, and a few thousand levels overflow a
/// thread's stack, which aborts the process. The limit sits below serde_json's own (128),
/// so every request that passes can also be read back from its JSON text.
pub const MAX_REQUEST_DEPTH: usize = 100;

/// A `/chat/completions` request body.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
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

    crate::tiered::setters! {
        /// Set the temperature.
        #[must_use]
        pub fn temperature(t: f64) { temperature = Some(t) }
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

    /// Check what must hold before the request is copied, keyed or sent: nesting no deeper
    /// than [`MAX_REQUEST_DEPTH`] (checked without recursion, whatever the depth), then
    /// `model`, `messages`, and a `role` on every message.
    pub fn validate(&self) -> Result<()> {
        self.check_depth()?;
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

    /// Every `Value` a caller can put in a request, with the depth it starts at (the
    /// typed levels above it are fixed), walked with an explicit stack.
    fn check_depth(&self) -> Result<()> {
        // The request object is level 1; its members start at level 2.
        check_extra(&self.extra, 2, String::new)?;
        if let Some(options) = &self.stream_options {
            check_value(options, 2, || "stream_options".to_string())?;
        }
        for (i, m) in self.messages.iter().enumerate() {
            // `messages` is level 2, a message 3, its members 4.
            check_extra(&m.extra, 4, || format!("messages[{i}]."))?;
            if let Some(Content::Parts(parts)) = &m.content {
                for (j, part) in parts.iter().enumerate() {
                    check_value(part, 5, || format!("messages[{i}].content[{j}]"))?;
                }
            }
            for (j, call) in m.tool_calls.iter().flatten().enumerate() {
                // `tool_calls` is level 4, a call 5, its `function` 6.
                check_extra(&call.extra, 6, || format!("messages[{i}].tool_calls[{j}]."))?;
                check_extra(&call.function.extra, 7, || {
                    format!("messages[{i}].tool_calls[{j}].function.")
                })?;
            }
        }
        Ok(())
    }
}

/// [`check_value`] for each member of `extra`, whose values sit at level `depth`; `prefix`
/// is the path of the object holding them (with its trailing dot).
pub(crate) fn check_extra(extra: &Extra, depth: usize, prefix: impl Fn() -> String) -> Result<()> {
    for (name, value) in extra {
        check_value(value, depth, || format!("{}{name}", prefix()))?;
    }
    Ok(())
}

/// Fails when `value`, sitting at level `depth` of the request (an array or object there
/// is that level), nests past [`MAX_REQUEST_DEPTH`]. Iterative: a stack of the containers
/// still to look into, so no depth can exhaust the thread's stack.
fn check_value(value: &Value, depth: usize, field: impl FnOnce() -> String) -> Result<()> {
    let mut pending: Vec<(&Value, usize)> = Vec::new();
    let mut next = Some((value, depth));
    while let Some((value, depth)) = next.take().or_else(|| pending.pop()) {
        let children: &mut dyn Iterator<Item = &Value> = match value {
            Value::Array(items) => &mut items.iter(),
            Value::Object(map) => &mut map.values(),
            _ => continue,
        };
        if depth > MAX_REQUEST_DEPTH {
            return Err(Error::invalid_request(
                &field(),
                format!(
                    "nests arrays and objects deeper than MAX_REQUEST_DEPTH ({MAX_REQUEST_DEPTH} \
                     levels, the request body being level 1)"
                ),
            ));
        }
        pending.extend(
            children
                .filter(|v| v.is_array() || v.is_object())
                .map(|v| (v, depth + 1)),
        );
    }
    Ok(())
}

/// One message of a conversation, or the message of a choice in a response.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
#[non_exhaustive]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Typed parts, kept as JSON so every part type survives.
    Parts(Vec<Value>),
}

/// A tool call made by the assistant.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
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

pub(crate) fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl ChatResponse {
    /// The text of the first choice, when there is one.
    pub fn text(&self) -> Option<String> {
        self.choices.first().and_then(|c| c.message.text())
    }
}

/// One answer of a response.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
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
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
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

// Deserialization is written out (by `keeping_extra!`) rather than derived: serde's
// `#[serde(flatten)]` buffers the whole object into an intermediate tree before it fills
// the struct, which doubled the cost of decoding every cached answer (an L2 hit is mostly
// that decode). The visitor below reads each field once, straight into place; what it does
// not name goes to `extra`. A missing field takes its default; a repeated one is an error.

/// An object key, borrowed from the input when it has no escapes.
enum Key<'de> {
    Borrowed(&'de str),
    Owned(String),
}

impl Key<'_> {
    fn as_str(&self) -> &str {
        match self {
            Key::Borrowed(s) => s,
            Key::Owned(s) => s,
        }
    }

    fn into_owned(self) -> String {
        match self {
            Key::Borrowed(s) => s.to_owned(),
            Key::Owned(s) => s,
        }
    }
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E: de::Error>(
                self,
                v: &'de str,
            ) -> std::result::Result<Key<'de>, E> {
                Ok(Key::Borrowed(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Key<'de>, E> {
                Ok(Key::Owned(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> std::result::Result<Key<'de>, E> {
                Ok(Key::Owned(v))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// `impl Deserialize` for a struct of named fields plus `extra: Extra`:
/// `field: "json name" => default`.
macro_rules! keeping_extra {
    ($ty:ident { $($field:ident : $name:literal => $default:expr),+ $(,)? }) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                struct ObjectVisitor;
                impl<'de> Visitor<'de> for ObjectVisitor {
                    type Value = $ty;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str(concat!("a JSON object (", stringify!($ty), ")"))
                    }
                    fn visit_map<A: MapAccess<'de>>(
                        self,
                        mut map: A,
                    ) -> std::result::Result<$ty, A::Error> {
                        $(let mut $field = None;)+
                        let mut extra = Extra::new();
                        while let Some(key) = map.next_key::<Key<'de>>()? {
                            match key.as_str() {
                                $($name => {
                                    if $field.is_some() {
                                        return Err(de::Error::duplicate_field($name));
                                    }
                                    $field = Some(map.next_value()?);
                                })+
                                _ => {
                                    let value = map.next_value()?;
                                    extra.insert(key.into_owned(), value);
                                }
                            }
                        }
                        Ok($ty {
                            $($field: $field.unwrap_or_else(|| $default),)+
                            extra,
                        })
                    }
                }
                d.deserialize_map(ObjectVisitor)
            }
        }
    };
}

keeping_extra!(ChatRequest {
    model: "model" => String::new(),
    messages: "messages" => Vec::new(),
    temperature: "temperature" => None,
    stream: "stream" => None,
    stream_options: "stream_options" => None,
});

keeping_extra!(ChatMessage {
    role: "role" => String::new(),
    content: "content" => None,
    name: "name" => None,
    tool_calls: "tool_calls" => None,
    tool_call_id: "tool_call_id" => None,
});

keeping_extra!(ToolCall {
    id: "id" => String::new(),
    kind: "type" => function_type(),
    function: "function" => FunctionCall::default(),
});

keeping_extra!(FunctionCall {
    name: "name" => String::new(),
    arguments: "arguments" => String::new(),
});

keeping_extra!(ChatResponse {
    id: "id" => String::new(),
    object: "object" => String::new(),
    created: "created" => 0,
    model: "model" => String::new(),
    choices: "choices" => Vec::new(),
    usage: "usage" => None,
    system_fingerprint: "system_fingerprint" => None,
});

keeping_extra!(Choice {
    index: "index" => 0,
    message: "message" => ChatMessage::default(),
    finish_reason: "finish_reason" => None,
});

keeping_extra!(Usage {
    prompt_tokens: "prompt_tokens" => 0,
    completion_tokens: "completion_tokens" => 0,
    total_tokens: "total_tokens" => 0,
});

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct ContentVisitor;
        impl<'de> Visitor<'de> for ContentVisitor {
            type Value = Content;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("message content: a string or an array of content parts")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Content, E> {
                Ok(Content::Text(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> std::result::Result<Content, E> {
                Ok(Content::Text(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> std::result::Result<Content, A::Error> {
                let mut parts = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(part) = seq.next_element()? {
                    parts.push(part);
                }
                Ok(Content::Parts(parts))
            }
        }
        d.deserialize_any(ContentVisitor)
    }
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

    /// `levels` arrays, one inside the other, around `1`; built without recursion.
    fn nested(levels: usize) -> Value {
        (0..levels).fold(Value::from(1), |inner, _| Value::Array(vec![inner]))
    }

    /// Drops `v` one level at a time: the recursive drop would overflow the stack.
    fn dismantle(mut v: Value) {
        while let Value::Array(mut items) = v {
            v = items.pop().unwrap_or(Value::Null);
        }
    }

    #[test]
    fn depth_is_bounded_wherever_json_enters() {
        fn base() -> ChatRequest {
            ChatRequest::new("m").message(ChatMessage::user("x"))
        }
        let with_part = |v: Value| {
            let mut r = base();
            r.messages[0].content = Some(Content::Parts(vec![v]));
            r
        };
        let with_msg_extra = |v: Value| {
            let mut r = base();
            r.messages[0].extra.insert("audio".into(), v);
            r
        };
        fn with_call(v: Value, in_function: bool) -> ChatRequest {
            let mut call = ToolCall::default();
            if in_function {
                call.function.extra.insert("deep".into(), v);
            } else {
                call.extra.insert("deep".into(), v);
            }
            let mut r = base();
            r.messages[0].tool_calls = Some(vec![call]);
            r
        }
        let with_options = |v: Value| ChatRequest {
            stream_options: Some(v),
            ..base()
        };
        // (build, levels of the request above the value, the field named).
        type Build = Box<dyn Fn(Value) -> ChatRequest>;
        let cases: Vec<(Build, usize, &str)> = vec![
            (Box::new(|v| base().param("vendor", v)), 1, "`vendor`"),
            (Box::new(with_options), 1, "`stream_options`"),
            (Box::new(with_msg_extra), 3, "`messages[0].audio`"),
            (Box::new(with_part), 4, "`messages[0].content[0]`"),
            (
                Box::new(|v| with_call(v, false)),
                5,
                "`messages[0].tool_calls[0].deep`",
            ),
            (
                Box::new(|v| with_call(v, true)),
                6,
                "`messages[0].tool_calls[0].function.deep`",
            ),
        ];
        for (build, above, field) in &cases {
            let fits = build(nested(MAX_REQUEST_DEPTH - above));
            assert!(fits.validate().is_ok(), "{field} at the limit");
            // What passes can be read back from its JSON text.
            let text = serde_json::to_vec(&fits).unwrap();
            ChatRequest::from_json(&text).unwrap();
            let deeper = build(nested(MAX_REQUEST_DEPTH - above + 1));
            let e = deeper.validate().unwrap_err();
            assert!(e.is_invalid_request(), "{e}");
            assert!(e.message().contains(field), "{e}");
            assert!(e.message().contains("MAX_REQUEST_DEPTH (100"), "{e}");
        }
        // Far past the limit: an error, not a stack overflow (this thread has 2 MiB).
        let mut deep = base().param("vendor", nested(100_000));
        assert!(deep.validate().unwrap_err().is_invalid_request());
        dismantle(deep.extra.remove("vendor").unwrap());
    }

    #[test]
    fn deep_json_text_is_an_error_not_an_abort() {
        let levels = 100_000;
        let mut text = br#"{"model":"m","messages":[{"role":"user","content":"x"}],"x":"#.to_vec();
        text.extend(std::iter::repeat_n(b'[', levels));
        text.extend(std::iter::repeat_n(b']', levels));
        text.push(b'}');
        let e = ChatRequest::from_json(&text).unwrap_err();
        assert!(e.is_invalid_request(), "{e}");
        assert!(e.message().contains("recursion limit"), "{e}");
        // Between this crate's limit and serde_json's: parsed, then refused by validation.
        let levels = MAX_REQUEST_DEPTH + 10;
        let mut text = br#"{"model":"m","messages":[{"role":"user","content":"x"}],"x":"#.to_vec();
        text.extend(std::iter::repeat_n(b'[', levels));
        text.extend(std::iter::repeat_n(b']', levels));
        text.push(b'}');
        let e = ChatRequest::from_json(&text).unwrap_err();
        assert!(
            e.message().contains("`x`: nests") && e.message().contains("MAX_REQUEST_DEPTH"),
            "{e}"
        );
    }

    #[test]
    fn missing_fields_take_their_defaults() {
        let r: ChatResponse = serde_json::from_str("{}").unwrap();
        assert_eq!(r, ChatResponse::default());
        let c: ToolCall = serde_json::from_str(r#"{"id":"t"}"#).unwrap();
        assert_eq!((c.id.as_str(), c.kind.as_str()), ("t", "function"));
        let m: ChatMessage = serde_json::from_str(r#"{"role":"a","content":null}"#).unwrap();
        assert_eq!((m.role.as_str(), m.content), ("a", None));
    }

    #[test]
    fn escaped_keys_still_name_their_field() {
        let r: ChatRequest =
            serde_json::from_str(r#"{"mo\u0064el":"m","x\ty":1,"messages":[]}"#).unwrap();
        assert_eq!(r.model, "m");
        assert_eq!(r.extra.get("x\ty"), Some(&Value::from(1)));
    }

    #[test]
    fn bad_shapes_are_errors_that_say_what_was_expected() {
        let e = serde_json::from_str::<ChatResponse>(r#"{"id":"a","id":"b"}"#).unwrap_err();
        assert!(e.to_string().contains("duplicate field `id`"), "{e}");
        let e = serde_json::from_str::<ChatMessage>(r#"{"role":"u","content":5}"#).unwrap_err();
        assert!(e.to_string().contains("a string or an array"), "{e}");
        let e = serde_json::from_str::<ChatRequest>(r#"{"model":null}"#).unwrap_err();
        assert!(e.to_string().contains("expected a string"), "{e}");
        let e = serde_json::from_str::<ChatResponse>("[1]").unwrap_err();
        assert!(
            e.to_string().contains("a JSON object (ChatResponse)"),
            "{e}"
        );
        let parts: ChatMessage =
            serde_json::from_str(r#"{"role":"u","content":[{"type":"text","text":"hi"}]}"#)
                .unwrap();
        assert_eq!(parts.text().as_deref(), Some("hi"));
    }
}
