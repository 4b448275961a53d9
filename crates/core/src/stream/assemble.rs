//! The [`Assembler`], which turns a stream of chunks into the one `chat.completion`
//! response the cache stores. Its memory must stay bounded (the text it adds up is capped)
//! and it must never panic on what an upstream sends.

use std::collections::BTreeMap;

use serde_json::Value;

use super::chunk::{ChatChunk, ChunkChoice, RESPONSE_OBJECT, ToolCallDelta};
use crate::error::{Error, ErrorKind, Result};
use crate::request::{
    ChatMessage, ChatResponse, Choice, Content, Extra, FunctionCall, ToolCall, Usage,
};

/// The default bound of [`Assembler`]: the most text (content, refusal, reasoning, tool
/// names and arguments) one streamed answer may add up to (64 MiB).
pub const DEFAULT_MAX_TEXT_BYTES: usize = 64 << 20;

/// Builds the `chat.completion` response a stream adds up to, for the cache.
///
/// - `id`, `model`, `created`: the first non-empty value; `system_fingerprint`: the first
///   present; `usage`: the last present (the usage chunk).
/// - Per choice (by `index`, output in index order): `role` from the first delta that has
///   one (`assistant` if none does); `content` concatenated exactly (`None` if no delta
///   carried any); tool calls by their `index`, in index order: `id` and `type` from the
///   first delta that has them, `name` and `arguments` concatenated; `finish_reason` the
///   last present.
/// - Unknown delta fields go to the message: strings are concatenated (`refusal`,
///   `reasoning_content`), arrays extended, a null never erases a value, anything else is
///   replaced. String `name` and `tool_call_id` become those message fields.
/// - Unknown choice fields: `logprobs` lists are joined; others, last non-null wins.
///   Unknown chunk fields go to the response, last non-null wins, except the stream-only
///   `obfuscation` padding.
#[derive(Debug, Clone)]
pub struct Assembler {
    chunks: usize,
    id: String,
    model: String,
    created: u64,
    system_fingerprint: Option<String>,
    usage: Option<Usage>,
    extra: Extra,
    choices: BTreeMap<u32, ChoiceState>,
    text_bytes: usize,
    max_text_bytes: usize,
    failed: Option<Error>,
}

#[derive(Debug, Clone, Default)]
struct ChoiceState {
    role: Option<String>,
    content: Option<String>,
    tool_calls_seen: bool,
    tool_calls: BTreeMap<u32, ToolCallState>,
    message_extra: Extra,
    finish_reason: Option<String>,
    extra: Extra,
}

#[derive(Debug, Clone, Default)]
struct ToolCallState {
    id: Option<String>,
    kind: Option<String>,
    name: String,
    arguments: String,
    function_extra: Extra,
    extra: Extra,
}

impl Default for Assembler {
    fn default() -> Self {
        Self::new()
    }
}

impl Assembler {
    /// An assembler bounded by [`DEFAULT_MAX_TEXT_BYTES`].
    pub fn new() -> Self {
        Self::with_limit(DEFAULT_MAX_TEXT_BYTES)
    }

    /// An assembler that fails once the streamed text adds up to more than
    /// `max_text_bytes`.
    pub fn with_limit(max_text_bytes: usize) -> Self {
        Assembler {
            chunks: 0,
            id: String::new(),
            model: String::new(),
            created: 0,
            system_fingerprint: None,
            usage: None,
            extra: Extra::new(),
            choices: BTreeMap::new(),
            text_bytes: 0,
            max_text_bytes,
            failed: None,
        }
    }

    /// Add the next chunk. Fails when the text outgrows the limit; after a failure every
    /// call fails the same way.
    pub fn push(&mut self, chunk: &ChatChunk) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let added = text_bytes(chunk);
        if self.text_bytes.saturating_add(added) > self.max_text_bytes {
            let e = Error::new(
                ErrorKind::Upstream,
                format!(
                    "streamed answer is longer than {} bytes",
                    self.max_text_bytes
                ),
            );
            self.failed = Some(e.clone());
            return Err(e);
        }
        self.text_bytes += added;
        self.chunks += 1;

        if self.id.is_empty() {
            self.id.clone_from(&chunk.id);
        }
        if self.model.is_empty() {
            self.model.clone_from(&chunk.model);
        }
        if self.created == 0 {
            self.created = chunk.created;
        }
        if self.system_fingerprint.is_none() {
            self.system_fingerprint
                .clone_from(&chunk.system_fingerprint);
        }
        if chunk.usage.is_some() {
            self.usage.clone_from(&chunk.usage);
        }
        for (key, value) in &chunk.extra {
            // Random padding against length side channels: meaningless once assembled.
            if key != "obfuscation" {
                merge_latest(&mut self.extra, key, value);
            }
        }
        for choice in &chunk.choices {
            self.choices.entry(choice.index).or_default().push(choice);
        }
        Ok(())
    }

    /// The assembled response. Fails when there was no chunk, no choice, or a choice never
    /// got its `finish_reason`: a stream cut off is not an answer.
    pub fn finish(self) -> Result<ChatResponse> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let incomplete = |why: String| Error::new(ErrorKind::Upstream, why);
        if self.chunks == 0 {
            return Err(incomplete("the stream ended before its first chunk".into()));
        }
        if self.choices.is_empty() {
            return Err(incomplete("the stream had no choices".into()));
        }
        let mut choices = Vec::with_capacity(self.choices.len());
        for (index, state) in self.choices {
            if state.finish_reason.is_none() {
                return Err(incomplete(format!(
                    "the stream ended before choice {index} finished (no finish_reason)"
                )));
            }
            choices.push(state.into_choice(index));
        }
        Ok(ChatResponse {
            id: self.id,
            object: RESPONSE_OBJECT.to_string(),
            created: self.created,
            model: self.model,
            choices,
            usage: self.usage,
            system_fingerprint: self.system_fingerprint,
            extra: self.extra,
        })
    }
}

/// The text a chunk adds, counted against [`Assembler`]'s limit.
fn text_bytes(chunk: &ChatChunk) -> usize {
    let mut n = 0usize;
    for choice in &chunk.choices {
        let delta = &choice.delta;
        n = n.saturating_add(delta.content.as_ref().map_or(0, String::len));
        for value in delta.extra.values() {
            if let Value::String(s) = value {
                n = n.saturating_add(s.len());
            }
        }
        for call in delta.tool_calls.iter().flatten() {
            if let Some(f) = &call.function {
                n = n
                    .saturating_add(f.name.as_ref().map_or(0, String::len))
                    .saturating_add(f.arguments.as_ref().map_or(0, String::len));
            }
        }
    }
    n
}

impl ChoiceState {
    fn push(&mut self, choice: &ChunkChoice) {
        let delta = &choice.delta;
        if self.role.is_none() {
            self.role.clone_from(&delta.role);
        }
        if let Some(text) = &delta.content {
            self.content.get_or_insert_with(String::new).push_str(text);
        }
        if let Some(calls) = &delta.tool_calls {
            self.tool_calls_seen = true;
            for piece in calls {
                self.tool_calls.entry(piece.index).or_default().push(piece);
            }
        }
        for (key, value) in &delta.extra {
            merge_streamed(&mut self.message_extra, key, value);
        }
        if choice.finish_reason.is_some() {
            self.finish_reason.clone_from(&choice.finish_reason);
        }
        for (key, value) in &choice.extra {
            if key == "logprobs" {
                merge_logprobs(&mut self.extra, value);
            } else {
                merge_latest(&mut self.extra, key, value);
            }
        }
    }

    fn into_choice(self, index: u32) -> Choice {
        let mut extra = self.message_extra;
        let name = take_string(&mut extra, "name");
        let tool_call_id = take_string(&mut extra, "tool_call_id");
        let tool_calls = self.tool_calls_seen.then(|| {
            self.tool_calls
                .into_values()
                .map(ToolCallState::into_tool_call)
                .collect()
        });
        Choice {
            index,
            message: ChatMessage {
                role: self.role.unwrap_or_else(|| "assistant".to_string()),
                content: self.content.map(Content::Text),
                name,
                tool_calls,
                tool_call_id,
                extra,
            },
            finish_reason: self.finish_reason,
            extra: self.extra,
        }
    }
}

impl ToolCallState {
    fn push(&mut self, piece: &ToolCallDelta) {
        if self.id.as_deref().is_none_or(str::is_empty) && piece.id.is_some() {
            self.id.clone_from(&piece.id);
        }
        if self.kind.is_none() {
            self.kind.clone_from(&piece.kind);
        }
        if let Some(f) = &piece.function {
            if let Some(name) = &f.name {
                self.name.push_str(name);
            }
            if let Some(arguments) = &f.arguments {
                self.arguments.push_str(arguments);
            }
            for (key, value) in &f.extra {
                merge_latest(&mut self.function_extra, key, value);
            }
        }
        for (key, value) in &piece.extra {
            merge_latest(&mut self.extra, key, value);
        }
    }

    fn into_tool_call(self) -> ToolCall {
        ToolCall {
            id: self.id.unwrap_or_default(),
            kind: self.kind.unwrap_or_else(|| "function".to_string()),
            function: FunctionCall {
                name: self.name,
                arguments: self.arguments,
                extra: self.function_extra,
            },
            extra: self.extra,
        }
    }
}

fn take_string(extra: &mut Extra, key: &str) -> Option<String> {
    match extra.get(key) {
        Some(Value::String(_)) => match extra.remove(key) {
            Some(Value::String(s)) => Some(s),
            _ => None,
        },
        _ => None,
    }
}

/// For fields every chunk repeats: the last non-null value wins.
fn merge_latest(into: &mut Extra, key: &str, value: &Value) {
    match into.get_mut(key) {
        None => {
            into.insert(key.to_string(), value.clone());
        }
        Some(_) if value.is_null() => {}
        Some(slot) => *slot = value.clone(),
    }
}

/// For fields streamed in pieces: strings append, arrays extend, null never erases.
fn merge_streamed(into: &mut Extra, key: &str, value: &Value) {
    match (into.get_mut(key), value) {
        (None, _) => {
            into.insert(key.to_string(), value.clone());
        }
        (Some(_), Value::Null) => {}
        (Some(Value::String(have)), Value::String(more)) => have.push_str(more),
        (Some(Value::Array(have)), Value::Array(more)) => have.extend(more.iter().cloned()),
        (Some(slot), _) => *slot = value.clone(),
    }
}

/// Each chunk's `logprobs` covers its own tokens: join the `content`/`refusal` lists.
fn merge_logprobs(into: &mut Extra, value: &Value) {
    match (into.get_mut("logprobs"), value) {
        (Some(Value::Object(have)), Value::Object(more)) => {
            for (key, value) in more {
                merge_streamed(have, key, value);
            }
        }
        _ => merge_latest(into, "logprobs", value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::{ReplayOptions, SseParser, parse_chunk, replay};
    use serde_json::json;

    /// A recorded-style OpenAI stream: two parallel tool calls whose arguments arrive in
    /// pieces, per-chunk `obfuscation`, and a usage chunk.
    const TOOL_STREAM: &str = concat!(
        r#"data: {"id":"chatcmpl-B1","object":"chat.completion.chunk","created":1730000000,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_a7d06e42a7","choices":[{"index":0,"delta":{"role":"assistant","content":null,"refusal":null},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"x1"}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-B1","object":"chat.completion.chunk","created":1730000000,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_a7d06e42a7","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_Wx1","type":"function","function":{"name":"get_weather","arguments":""}}]},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"x2"}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-B1","object":"chat.completion.chunk","created":1730000000,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_a7d06e42a7","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"lo"}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-B1","object":"chat.completion.chunk","created":1730000000,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_a7d06e42a7","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"cation\": \"Par"}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-B1","object":"chat.completion.chunk","created":1730000000,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_a7d06e42a7","choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"is 🗼\"}"}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        "\n\n: keep-alive\n\n",
        r#"data: {"id":"chatcmpl-B1","object":"chat.completion.chunk","created":1730000000,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_a7d06e42a7","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_Tm2","type":"function","function":{"name":"get_time","arguments":""}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        "\r\n\r\n",
        r#"data: {"id":"chatcmpl-B1","object":"chat.completion.chunk","created":1730000000,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_a7d06e42a7","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":"{\"tz\":"}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-B1","object":"chat.completion.chunk","created":1730000000,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_a7d06e42a7","choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"function":{"arguments":" \"Europe/Paris\"}"}}]},"logprobs":null,"finish_reason":null}],"usage":null}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-B1","object":"chat.completion.chunk","created":1730000000,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_a7d06e42a7","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"tool_calls"}],"usage":null}"#,
        "\n\n",
        r#"data: {"id":"chatcmpl-B1","object":"chat.completion.chunk","created":1730000000,"model":"gpt-4o-2024-08-06","service_tier":"default","system_fingerprint":"fp_a7d06e42a7","choices":[],"usage":{"prompt_tokens":84,"completion_tokens":51,"total_tokens":135,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}}}"#,
        "\n\ndata: [DONE]\n\n",
    );

    fn assemble_sse(bytes: &[u8]) -> Result<ChatResponse> {
        let mut parser = SseParser::new();
        let mut assembler = Assembler::new();
        for event in parser.push(bytes)? {
            if let Some(chunk) = parse_chunk(&event.data)? {
                assembler.push(&chunk)?;
            }
        }
        assembler.finish()
    }

    #[test]
    fn assembles_a_recorded_tool_call_stream() {
        let got = assemble_sse(TOOL_STREAM.as_bytes()).unwrap();
        // The same answer as the non-streamed API would have given it.
        let want: ChatResponse = serde_json::from_value(json!({
            "id": "chatcmpl-B1", "object": "chat.completion", "created": 1730000000,
            "model": "gpt-4o-2024-08-06", "service_tier": "default",
            "system_fingerprint": "fp_a7d06e42a7",
            "choices": [{"index": 0, "logprobs": null, "finish_reason": "tool_calls",
                "message": {"role": "assistant", "content": null, "refusal": null,
                    "tool_calls": [
                        {"id": "call_Wx1", "type": "function", "function":
                            {"name": "get_weather", "arguments": "{\"location\": \"Paris 🗼\"}"}},
                        {"id": "call_Tm2", "type": "function", "function":
                            {"name": "get_time", "arguments": "{\"tz\": \"Europe/Paris\"}"}}
                    ]}}],
            "usage": {"prompt_tokens": 84, "completion_tokens": 51, "total_tokens": 135,
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                    "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}}
        }))
        .unwrap();
        assert_eq!(got, want);
        // And it streams back into itself.
        let options = ReplayOptions {
            chunk_chars: 3,
            include_usage: true,
        };
        let mut assembler = Assembler::new();
        for chunk in replay(&got, &options) {
            assembler.push(&chunk).unwrap();
        }
        assert_eq!(assembler.finish().unwrap(), got);
    }

    #[test]
    fn a_cut_off_stream_is_not_an_answer() {
        let cut = TOOL_STREAM
            .find("\"finish_reason\":\"tool_calls\"")
            .unwrap();
        let cut = TOOL_STREAM[..cut].rfind("data:").unwrap();
        let e = assemble_sse(&TOOL_STREAM.as_bytes()[..cut]).unwrap_err();
        assert!(e.message().contains("choice 0"), "{e}");
        let e = Assembler::new().finish().unwrap_err();
        assert!(e.message().contains("first chunk"), "{e}");
        let usage_only = ChatChunk {
            usage: Some(Usage::default()),
            ..ChatChunk::default()
        };
        let mut assembler = Assembler::new();
        assembler.push(&usage_only).unwrap();
        assert!(assembler.finish().is_err());

        // Two choices, one of them cut off.
        let mut assembler = Assembler::new();
        for (index, finish_reason) in [(0, Some("stop".to_string())), (1, None)] {
            let chunk = ChatChunk {
                choices: vec![ChunkChoice {
                    index,
                    finish_reason,
                    ..ChunkChoice::default()
                }],
                ..ChatChunk::default()
            };
            assembler.push(&chunk).unwrap();
        }
        let e = assembler.finish().unwrap_err();
        assert!(e.message().contains("choice 1"), "{e}");
    }

    fn chunk_of(choice: Value) -> ChatChunk {
        serde_json::from_value(json!({"id": "c", "choices": [choice]})).unwrap()
    }

    #[test]
    fn assembles_text_refusal_reasoning_and_logprobs() {
        let mut assembler = Assembler::new();
        for choice in [
            json!({"index": 1, "delta": {"role": "assistant", "content": "", "refusal": null}}),
            json!({"index": 1, "delta": {"reasoning_content": "Let me "}}),
            json!({"index": 1, "delta": {"reasoning_content": "think."}}),
            json!({"index": 0, "delta": {"role": "assistant", "refusal": "I can"},
                "logprobs": {"content": null, "refusal": [{"token": "I"}]}}),
            json!({"index": 1, "delta": {"content": "日本"},
                "logprobs": {"content": [{"token": "日"}], "refusal": null}}),
            json!({"index": 1, "delta": {"content": "語 👍🏽"},
                "logprobs": {"content": [{"token": "本"}], "refusal": null}}),
            json!({"index": 0, "delta": {"refusal": "not help."}, "logprobs": null}),
            json!({"index": 0, "delta": {}, "finish_reason": "stop"}),
            json!({"index": 1, "delta": {}, "finish_reason": "length", "logprobs": null}),
        ] {
            assembler.push(&chunk_of(choice)).unwrap();
        }
        let got = serde_json::to_value(assembler.finish().unwrap()).unwrap();
        assert_eq!(
            got,
            json!({"id": "c", "object": "chat.completion", "choices": [
                {"index": 0, "finish_reason": "stop",
                    "logprobs": {"content": null, "refusal": [{"token": "I"}]},
                    "message": {"role": "assistant", "refusal": "I cannot help."}},
                {"index": 1, "finish_reason": "length",
                    "logprobs": {"content": [{"token": "日"}, {"token": "本"}], "refusal": null},
                    "message": {"role": "assistant", "content": "日本語 👍🏽", "refusal": null,
                        "reasoning_content": "Let me think."}}
            ]})
        );
    }

    #[test]
    fn assembler_text_is_bounded() {
        let mut assembler = Assembler::with_limit(8);
        let piece = chunk_of(json!({"index": 0, "delta": {"content": "12345"}}));
        assembler.push(&piece).unwrap();
        assert!(assembler.push(&piece).is_err());
        assert!(
            assembler
                .push(&chunk_of(json!({"index": 0, "finish_reason": "stop"})))
                .is_err()
        );
        assert!(assembler.finish().is_err());
    }
}
