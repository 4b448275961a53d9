//! [`replay`]: the chunks a stream of a cached response would have had, so a hit can be
//! served to a streaming caller. Pure: no I/O, and what survives [`Assembler`] over it is
//! stated on [`replay`].
//!
//! [`Assembler`]: super::Assembler

use std::borrow::Cow;

use serde_json::Value;

use super::chunk::{CHUNK_OBJECT, ChatChunk, ChunkChoice, Delta, FunctionDelta, ToolCallDelta};
use crate::request::{ChatRequest, ChatResponse, Content, Extra, Usage};

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
/// [`Assembler`](super::Assembler) over these chunks gives back `response` exactly (every field, unknown
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
    use crate::stream::Assembler;
    use serde_json::json;

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
