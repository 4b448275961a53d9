//! Streaming chat completions, without I/O: the `text/event-stream` parser, the typed
//! `chat.completion.chunk`, the [`Assembler`] that turns a stream into the one
//! [`ChatResponse`] the cache stores, [`replay`], which streams a cached response back, and
//! the fan-out log that lets every consumer of one upstream stream read it from the start.
//! Nothing here may buffer without bound or panic on what an upstream sends.
//!
//! What survives `Assembler` over [`replay`] is stated on [`replay`] and tested in
//! `tests/stream_props.rs`.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};
use crate::request::{
    ChatMessage, ChatRequest, ChatResponse, Choice, Content, Extra, FunctionCall, ToolCall, Usage,
};

/// The `object` of every streamed chunk.
pub const CHUNK_OBJECT: &str = "chat.completion.chunk";
/// The `object` of an assembled response.
pub const RESPONSE_OBJECT: &str = "chat.completion";
/// The default bound of [`SseParser`]: the longest line, and the most data one event may
/// carry (8 MiB).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 8 << 20;
/// The default bound of [`Assembler`]: the most text (content, refusal, reasoning, tool
/// names and arguments) one streamed answer may add up to (64 MiB).
pub const DEFAULT_MAX_TEXT_BYTES: usize = 64 << 20;

// ---------------------------------------------------------------------------------------
// Chunk types
// ---------------------------------------------------------------------------------------

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
    #[serde(default, skip_serializing_if = "is_zero")]
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

fn is_zero(n: &u64) -> bool {
    *n == 0
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

// ---------------------------------------------------------------------------------------
// SSE
// ---------------------------------------------------------------------------------------

/// One dispatched server-sent event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `event:` field; `None` when absent or empty (the spec's default, `message`).
    pub event: Option<String>,
    /// The `data:` lines, joined with `\n`. Never empty.
    pub data: String,
    /// The last event id seen on the stream, as the spec defines it: an `id:` field sets
    /// it for this and every later event; an empty `id:` clears it (`None`).
    pub id: Option<String>,
}

/// An incremental `text/event-stream` parser (WHATWG HTML, "Server-sent events").
///
/// Feed it bytes as they arrive, split anywhere (even inside a UTF-8 character or between
/// the CR and LF of one line ending): the events are the same as for the whole stream at
/// once. Where it departs from or narrows the spec:
///
/// - An event whose data is empty (no `data:` field, or only empty ones) is not dispatched:
///   a chat stream has nothing to say with it. (The spec dispatches the latter.)
/// - `retry:` and unknown fields are ignored.
/// - Invalid UTF-8 becomes U+FFFD, as the spec's decoder does; it is not an error.
/// - Memory is bounded: a line, or the data of one event, longer than the limit
///   ([`DEFAULT_MAX_EVENT_BYTES`] unless [`SseParser::with_limit`]) is an error, after which
///   the parser only returns that error.
#[derive(Debug, Clone)]
pub struct SseParser {
    /// The bytes of the line not yet terminated.
    line: Vec<u8>,
    /// The last byte seen was a CR: an LF right after it ends nothing.
    after_cr: bool,
    /// No line has been processed yet (the one that may start with a BOM).
    at_start: bool,
    data: String,
    event: String,
    last_id: String,
    limit: usize,
    failed: Option<Error>,
}

impl Default for SseParser {
    fn default() -> Self {
        Self::new()
    }
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

impl SseParser {
    /// A parser bounded by [`DEFAULT_MAX_EVENT_BYTES`].
    pub fn new() -> Self {
        Self::with_limit(DEFAULT_MAX_EVENT_BYTES)
    }

    /// A parser whose longest line, and most data per event, is `max_bytes`.
    pub fn with_limit(max_bytes: usize) -> Self {
        SseParser {
            line: Vec::new(),
            after_cr: false,
            at_start: true,
            data: String::new(),
            event: String::new(),
            last_id: String::new(),
            limit: max_bytes,
            failed: None,
        }
    }

    /// Parse the next bytes of the stream and return the events they complete.
    ///
    /// On error the events completed by `bytes` before the offending line are lost; use
    /// [`SseParser::push_into`] to keep them.
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<SseEvent>> {
        let mut out = Vec::new();
        self.push_into(bytes, &mut out)?;
        Ok(out)
    }

    /// Parse the next bytes of the stream and append the events they complete to `out`.
    /// On error, `out` holds every event that came before the offending line.
    pub fn push_into(&mut self, bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<()> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let result = self.consume(bytes, out);
        if let Err(e) = &result {
            self.failed = Some(e.clone());
            self.line = Vec::new();
            self.data = String::new();
        }
        result
    }

    fn consume(&mut self, mut bytes: &[u8], out: &mut Vec<SseEvent>) -> Result<()> {
        while let Some((&first, rest)) = bytes.split_first() {
            if std::mem::take(&mut self.after_cr) && first == b'\n' {
                bytes = rest;
                continue;
            }
            let Some(end) = bytes.iter().position(|&b| b == b'\n' || b == b'\r') else {
                if self.line.len() + bytes.len() > self.limit {
                    return Err(self.too_long("line"));
                }
                self.line.extend_from_slice(bytes);
                return Ok(());
            };
            self.after_cr = bytes[end] == b'\r';
            if self.line.is_empty() {
                self.process_line(&bytes[..end], out)?;
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(&bytes[..end]);
                self.process_line(&line, out)?;
                // Keep the buffer for the next line, unless one long line inflated it.
                if line.capacity() <= 64 << 10 {
                    line.clear();
                    self.line = line;
                }
            }
            bytes = &bytes[end + 1..];
        }
        Ok(())
    }

    fn process_line(&mut self, line: &[u8], out: &mut Vec<SseEvent>) -> Result<()> {
        if line.len() > self.limit {
            return Err(self.too_long("line"));
        }
        let line = if std::mem::take(&mut self.at_start) {
            line.strip_prefix(BOM).unwrap_or(line)
        } else {
            line
        };
        if line.is_empty() {
            out.extend(self.take_event());
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(()); // a comment: keep-alives
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match name {
            b"data" => {
                let value = String::from_utf8_lossy(value);
                if self.data.len() + value.len() + 1 > self.limit {
                    return Err(self.too_long("event's data"));
                }
                self.data.push_str(&value);
                self.data.push('\n');
            }
            b"event" => self.event = String::from_utf8_lossy(value).into_owned(),
            b"id" if !value.contains(&0) => {
                self.last_id = String::from_utf8_lossy(value).into_owned();
            }
            _ => {}
        }
        Ok(())
    }

    /// The event buffered so far, resetting the buffers as dispatch does.
    fn take_event(&mut self) -> Option<SseEvent> {
        let event = std::mem::take(&mut self.event);
        self.data.pop(); // the `\n` after the last data line, when there is one
        if self.data.is_empty() {
            return None;
        }
        Some(SseEvent {
            event: (!event.is_empty()).then_some(event),
            data: std::mem::take(&mut self.data),
            id: (!self.last_id.is_empty()).then(|| self.last_id.clone()),
        })
    }

    fn too_long(&self, what: &str) -> Error {
        Error::new(
            ErrorKind::Upstream,
            format!("event stream: a {what} is longer than {} bytes", self.limit),
        )
    }

    /// End of stream. Per the spec an event not closed by a blank line is discarded, and
    /// it is never dispatched here either: `Some` is that cut-off event (with an
    /// unterminated last line read as a line), returned only so the caller can tell a
    /// truncated stream from a clean end. `None` after a clean end or an error.
    pub fn finish(mut self) -> Option<SseEvent> {
        if self.failed.is_some() {
            return None;
        }
        let line = std::mem::take(&mut self.line);
        let mut out = Vec::new();
        if !line.is_empty() && self.process_line(&line, &mut out).is_err() {
            return None;
        }
        out.pop().or_else(|| self.take_event())
    }
}

// ---------------------------------------------------------------------------------------
// Chunk parsing
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// Assembling
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// Replay
// ---------------------------------------------------------------------------------------

/// How [`replay`] cuts a response into chunks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayOptions {
    /// Characters (not bytes) of text per chunk; `0` sends each text in one chunk.
    pub chunk_chars: usize,
    /// End with a usage chunk (`choices: []`), as OpenAI does when the request sets
    /// `stream_options.include_usage`.
    pub include_usage: bool,
}

impl Default for ReplayOptions {
    /// 16 characters per chunk, no usage chunk (OpenAI's default).
    fn default() -> Self {
        ReplayOptions {
            chunk_chars: 16,
            include_usage: false,
        }
    }
}

impl ReplayOptions {
    /// The defaults, with `include_usage` as the request's `stream_options` ask.
    pub fn for_request(request: &ChatRequest) -> Self {
        let include_usage = request
            .stream_options
            .as_ref()
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        ReplayOptions {
            include_usage,
            ..Self::default()
        }
    }
}

/// The chunks a stream of `response` would have had.
///
/// Every chunk carries the response's `id`, `model`, `created`, `system_fingerprint` and
/// unknown top-level fields, with `object` `chat.completion.chunk`. Per choice, in order:
/// a first chunk with the role, `content: ""` (when the message has content), the
/// message's non-text unknown fields, `name`, `tool_call_id` and the choice's unknown
/// fields (logprobs...); then each string-valued unknown message field (`refusal`,
/// `reasoning_content`) in pieces; the content in pieces; each tool call as a first delta
/// (`id`, `type`, `function.name`, `arguments: ""`, its unknown fields) and its arguments
/// in pieces; then a chunk with only `finish_reason`. Last, with `include_usage` and a
/// usage, a chunk with `choices: []` and `usage`.
///
/// [`Assembler`] over these chunks gives back `response` exactly (every field, unknown
/// ones included) when: every choice has a `finish_reason`; choice indexes are distinct
/// and ascending; content is text (parts are sent as their joined text); `object` is
/// `chat.completion`; there is no top-level `obfuscation`; and `usage` is `None` unless
/// `include_usage`. Text is cut on `char` boundaries, so multi-byte characters survive.
pub fn replay(response: &ChatResponse, options: &ReplayOptions) -> Vec<ChatChunk> {
    let chunk = |choices: Vec<ChunkChoice>, usage: Option<Usage>| ChatChunk {
        id: response.id.clone(),
        object: CHUNK_OBJECT.to_string(),
        created: response.created,
        model: response.model.clone(),
        system_fingerprint: response.system_fingerprint.clone(),
        choices,
        usage,
        extra: response.extra.clone(),
    };
    let mut out = Vec::new();
    for choice in &response.choices {
        let index = choice.index;
        let send = |out: &mut Vec<ChatChunk>, delta: Delta, finish_reason, extra| {
            out.push(chunk(
                vec![ChunkChoice {
                    index,
                    delta,
                    finish_reason,
                    extra,
                }],
                None,
            ));
        };
        let message = &choice.message;
        let text: Option<Cow<'_, str>> = match &message.content {
            None => None,
            Some(Content::Text(s)) => Some(Cow::Borrowed(s)),
            Some(Content::Parts(_)) => message.text().map(Cow::Owned),
        };

        let mut first = Delta {
            role: Some(message.role.clone()),
            content: text.as_ref().map(|_| String::new()),
            tool_calls: match &message.tool_calls {
                Some(calls) if calls.is_empty() => Some(Vec::new()),
                _ => None,
            },
            extra: Extra::new(),
        };
        let mut streamed = Vec::new();
        for (key, value) in &message.extra {
            match value {
                Value::String(s) if !s.is_empty() => streamed.push((key, s)),
                _ => {
                    first.extra.insert(key.clone(), value.clone());
                }
            }
        }
        if let Some(name) = &message.name {
            first
                .extra
                .insert("name".into(), Value::String(name.clone()));
        }
        if let Some(id) = &message.tool_call_id {
            first
                .extra
                .insert("tool_call_id".into(), Value::String(id.clone()));
        }
        send(&mut out, first, None, choice.extra.clone());

        for (key, s) in streamed {
            for piece in pieces(s, options.chunk_chars) {
                let mut delta = Delta::default();
                delta.extra.insert(key.clone(), Value::String(piece.into()));
                send(&mut out, delta, None, Extra::new());
            }
        }
        for piece in pieces(text.as_deref().unwrap_or(""), options.chunk_chars) {
            let delta = Delta {
                content: Some(piece.to_string()),
                ..Delta::default()
            };
            send(&mut out, delta, None, Extra::new());
        }
        for (i, call) in message.tool_calls.iter().flatten().enumerate() {
            let call_index = u32::try_from(i).unwrap_or(u32::MAX);
            let opening = ToolCallDelta {
                index: call_index,
                id: Some(call.id.clone()),
                kind: Some(call.kind.clone()),
                function: Some(FunctionDelta {
                    name: Some(call.function.name.clone()),
                    arguments: Some(String::new()),
                    extra: call.function.extra.clone(),
                }),
                extra: call.extra.clone(),
            };
            let tool_delta = |piece: ToolCallDelta| Delta {
                tool_calls: Some(vec![piece]),
                ..Delta::default()
            };
            send(&mut out, tool_delta(opening), None, Extra::new());
            for piece in pieces(&call.function.arguments, options.chunk_chars) {
                let piece = ToolCallDelta {
                    index: call_index,
                    function: Some(FunctionDelta {
                        arguments: Some(piece.to_string()),
                        ..FunctionDelta::default()
                    }),
                    ..ToolCallDelta::default()
                };
                send(&mut out, tool_delta(piece), None, Extra::new());
            }
        }
        if choice.finish_reason.is_some() {
            send(
                &mut out,
                Delta::default(),
                choice.finish_reason.clone(),
                Extra::new(),
            );
        }
    }
    if options.include_usage && response.usage.is_some() {
        out.push(chunk(Vec::new(), response.usage.clone()));
    }
    out
}

/// `s` cut into pieces of `chars` characters (the whole of it when `chars` is 0).
fn pieces(s: &str, chars: usize) -> impl Iterator<Item = &str> {
    let chars = if chars == 0 { usize::MAX } else { chars };
    let mut rest = s;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let end = rest
            .char_indices()
            .nth(chars)
            .map_or(rest.len(), |(i, _)| i);
        let (head, tail) = rest.split_at(end);
        rest = tail;
        Some(head)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse_all(bytes: &[u8]) -> Vec<SseEvent> {
        let mut parser = SseParser::new();
        let events = parser.push(bytes).unwrap();
        assert_eq!(parser.finish(), None, "stream should end cleanly");
        events
    }

    fn data(d: &str) -> SseEvent {
        SseEvent {
            data: d.into(),
            ..SseEvent::default()
        }
    }

    /// Every way of cutting `bytes` in two, and byte by byte, gives `parse_all(bytes)`.
    fn assert_split_invariant(bytes: &[u8]) -> Vec<SseEvent> {
        let whole = parse_all(bytes);
        for cut in 0..=bytes.len() {
            let mut parser = SseParser::new();
            let mut events = parser.push(&bytes[..cut]).unwrap();
            events.extend(parser.push(&bytes[cut..]).unwrap());
            assert_eq!(events, whole, "cut at {cut}");
        }
        let mut parser = SseParser::new();
        let mut events = Vec::new();
        for b in bytes {
            parser
                .push_into(std::slice::from_ref(b), &mut events)
                .unwrap();
        }
        assert_eq!(events, whole, "byte by byte");
        whole
    }

    #[test]
    fn sse_line_endings_and_fields() {
        let events = assert_split_invariant(
            b"\xEF\xBB\xBFdata: a\r\n\r\n: keep-alive\n\ndata:b\rdata:  c\r\revent: x\nid: 7\ndata\n\ndata: d\n\n",
        );
        // `data` without a colon is an empty data field: that event has no data, so it is
        // not dispatched and its type does not leak into the next one.
        let d = SseEvent {
            id: Some("7".into()),
            ..data("d")
        };
        assert_eq!(events, [data("a"), data("b\n c"), d]);
    }

    #[test]
    fn sse_event_ids_persist_and_reset() {
        let events = assert_split_invariant(
            b"id: 1\ndata: a\n\ndata: b\n\nid: x\0y\ndata: c\n\nid\ndata: d\n\n",
        );
        let ids: Vec<_> = events.iter().map(|e| e.id.as_deref()).collect();
        assert_eq!(ids, [Some("1"), Some("1"), Some("1"), None]);
    }

    #[test]
    fn sse_empty_data_and_unknown_fields_are_not_events() {
        let events = assert_split_invariant(
            b"event: ping\n\ndata:\n\nretry: 10\nfoo: bar\n\n:comment\n\ndata:\ndata:\n\n",
        );
        // Two empty data lines are one line break of data; a lone one is nothing.
        assert_eq!(events, [data("\n")]);
        // The event type of an undispatched event does not leak into the next.
        assert_eq!(parse_all(b"event: ping\n\ndata: x\n\n"), [data("x")]);
    }

    #[test]
    fn sse_cr_lf_across_pushes_is_one_line_ending() {
        let mut parser = SseParser::new();
        assert_eq!(parser.push(b"data: a\r").unwrap(), []);
        assert_eq!(parser.push(b"\n").unwrap(), []);
        assert_eq!(parser.push(b"\r").unwrap(), [data("a")]);
        assert_eq!(parser.push(b"\ndata: b\r\r").unwrap(), [data("b")]);
    }

    #[test]
    fn sse_utf8_split_anywhere_and_invalid_bytes_replaced() {
        let stream = "data: héllo 世界 🎉\n\ndata: e\u{301}\n\n".as_bytes();
        let events = assert_split_invariant(stream);
        assert_eq!(events, [data("héllo 世界 🎉"), data("e\u{301}")]);
        let events = assert_split_invariant(b"data: a\xFF\xE4\xB8\n\n");
        assert_eq!(events, [data("a\u{FFFD}\u{FFFD}")]);
        // A BOM is skipped only at the very start, even when it arrives byte by byte.
        let mut parser = SseParser::new();
        for b in b"\xEF\xBB\xBFdata: x\n\n\xEF\xBB\xBFdata: y\n\n" {
            let got = parser.push(&[*b]).unwrap();
            assert!(got.is_empty() || got == [data("x")], "{got:?}");
        }
    }

    #[test]
    fn sse_memory_is_bounded() {
        let mut parser = SseParser::with_limit(16);
        assert_eq!(parser.push(b"data: 0123456789").unwrap(), []);
        let e = parser.push(b"abcdef").unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Upstream);
        assert!(e.message().contains("longer than 16"), "{e}");
        // Poisoned: the same error from then on.
        assert!(parser.push(b"\n\n").is_err());
        assert_eq!(parser.finish(), None);

        // Many short data lines still add up to one too-large event.
        let mut parser = SseParser::with_limit(16);
        let mut out = Vec::new();
        let e = parser
            .push_into(
                b"data: ok\n\ndata: 12345\ndata: 12345\ndata: 12345\n",
                &mut out,
            )
            .unwrap_err();
        assert!(e.message().contains("data"), "{e}");
        assert_eq!(out, [data("ok")], "events before the error are kept");
    }

    #[test]
    fn sse_finish_reports_a_cut_off_event_without_dispatching_it() {
        let mut parser = SseParser::new();
        assert_eq!(
            parser.push(b"data: a\n\ndata: b\ndata: c").unwrap(),
            [data("a")]
        );
        assert_eq!(parser.finish(), Some(data("b\nc")));
        let mut parser = SseParser::new();
        parser.push(b"data: a\n\n: bye").unwrap();
        assert_eq!(parser.finish(), None);
    }

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

    fn sample_response() -> ChatResponse {
        serde_json::from_value(json!({
            "id": "r", "object": "chat.completion", "created": 9, "model": "m",
            "system_fingerprint": "fp", "service_tier": "flex",
            "choices": [
                {"index": 0, "finish_reason": "stop", "logprobs": null,
                    "message": {"role": "assistant", "content": "Ça va? 你好 👩‍👩‍👧 e\u{301}!",
                        "refusal": null, "annotations": []}},
                {"index": 1, "finish_reason": "tool_calls",
                    "message": {"role": "assistant", "tool_calls": [
                        {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{\"q\":\"ü\"}"}},
                        {"id": "b", "type": "function", "function": {"name": "g", "arguments": ""}}
                    ]}}
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
        }))
        .unwrap()
    }

    #[test]
    fn replay_layout() {
        let response = sample_response();
        let options = ReplayOptions {
            chunk_chars: 4,
            include_usage: true,
        };
        let chunks = replay(&response, &options);
        for chunk in &chunks {
            assert_eq!(
                (
                    chunk.id.as_str(),
                    chunk.object.as_str(),
                    chunk.created,
                    chunk.model.as_str()
                ),
                ("r", CHUNK_OBJECT, 9, "m")
            );
            assert_eq!(chunk.system_fingerprint.as_deref(), Some("fp"));
            assert_eq!(chunk.extra.get("service_tier"), Some(&json!("flex")));
            for choice in &chunk.choices {
                if let Some(text) = &choice.delta.content {
                    assert!(text.chars().count() <= 4, "{text:?}");
                }
            }
        }
        let first = &chunks[0].choices[0];
        assert_eq!(first.delta.role.as_deref(), Some("assistant"));
        assert_eq!(first.delta.content.as_deref(), Some(""));
        let usage = chunks.last().unwrap();
        assert!(usage.choices.is_empty() && usage.usage.is_some());

        // The second choice: role (no content), two opened calls, arguments in pieces.
        let calls: Vec<_> = chunks
            .iter()
            .flat_map(|c| &c.choices)
            .filter(|c| c.index == 1)
            .filter_map(|c| c.delta.tool_calls.as_ref())
            .flatten()
            .collect();
        assert_eq!(calls[0].id.as_deref(), Some("a"));
        assert_eq!(
            calls[0].function.as_ref().unwrap().arguments.as_deref(),
            Some("")
        );
        assert_eq!(
            calls[1].function.as_ref().unwrap().arguments.as_deref(),
            Some("{\"q\"")
        );
        assert_eq!(calls.last().unwrap().id.as_deref(), Some("b"));
        let finish: Vec<_> = chunks
            .iter()
            .flat_map(|c| &c.choices)
            .filter_map(|c| c.finish_reason.as_deref())
            .collect();
        assert_eq!(finish, ["stop", "tool_calls"]);

        // Without include_usage there is no usage chunk.
        let chunks = replay(&response, &ReplayOptions::default());
        assert!(
            chunks
                .iter()
                .all(|c| c.usage.is_none() && !c.choices.is_empty())
        );
    }

    #[test]
    fn replay_then_assemble_round_trips() {
        let response = sample_response();
        for chunk_chars in [0, 1, 2, 3, 7, 16, 1000] {
            let options = ReplayOptions {
                chunk_chars,
                include_usage: true,
            };
            let mut assembler = Assembler::new();
            for chunk in replay(&response, &options) {
                assembler.push(&chunk).unwrap();
            }
            assert_eq!(
                assembler.finish().unwrap(),
                response,
                "chunk_chars {chunk_chars}"
            );
        }
    }

    #[test]
    fn replay_options_follow_the_request() {
        let request = ChatRequest {
            stream_options: Some(json!({"include_usage": true})),
            ..ChatRequest::new("m")
        };
        assert!(ReplayOptions::for_request(&request).include_usage);
        assert!(!ReplayOptions::for_request(&ChatRequest::new("m")).include_usage);
    }

    #[test]
    fn pieces_count_chars_not_bytes() {
        let got: Vec<_> = pieces("a日🎉e\u{301}", 2).collect();
        assert_eq!(got, ["a日", "🎉e", "\u{301}"]);
        assert_eq!(pieces("", 3).count(), 0);
        assert_eq!(pieces("abc", 0).collect::<Vec<_>>(), ["abc"]);
    }
}
