//! Properties of streaming: a replayed response assembles back into itself, and the SSE
//! parser does not care where the byte stream was cut.

use llm_cache::stream::{
    Assembler, ChatChunk, ReplayOptions, SseEvent, SseParser, parse_chunk, replay,
};
use llm_cache::{
    ChatMessage, ChatResponse, Choice, Content, Extra, FunctionCall, StoredAnswer, ToolCall, Usage,
};
use proptest::prelude::*;
use proptest::sample::{Index, select};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------
// (a) replay -> assemble
// ---------------------------------------------------------------------------------------

/// Text from pieces that stress char-vs-byte cutting: multi-byte, emoji ZWJ sequences,
/// combining marks, flags, escapes; or any string at all.
fn text() -> impl Strategy<Value = String> {
    let pieces = select(vec![
        "a",
        "Z",
        " ",
        "\n",
        "\t",
        "\"",
        "\\",
        "é",
        "e\u{301}",
        "n\u{303}\u{304}",
        "日本",
        "語",
        "你好",
        "🎉",
        "👩\u{200D}👩\u{200D}👧",
        "🇫🇷",
        "👍🏽",
        "\u{0}",
        "\u{FEFF}",
        "\u{2028}",
        "data: x\n\n",
        "[DONE]",
    ]);
    prop_oneof![
        prop::collection::vec(pieces, 0..40).prop_map(|v| v.concat()),
        any::<String>(),
        Just(String::new()),
    ]
}

/// Arguments as a model writes them: JSON-ish, often not quite JSON.
fn arguments() -> impl Strategy<Value = String> {
    let tokens = select(vec![
        "{",
        "}",
        "[",
        "]",
        "\"",
        ":",
        ",",
        " ",
        "\"city\"",
        "\"Zürich\"",
        "1.5e3",
        "null",
        "true",
        "\\\"",
        "\\n",
        "\\u00e9",
        "🗼",
        "東京",
    ]);
    prop_oneof![
        4 => prop::collection::vec(tokens, 0..30).prop_map(|v| v.concat()),
        1 => any::<String>(),
    ]
}

fn tool_call() -> impl Strategy<Value = ToolCall> {
    (
        "call_[A-Za-z0-9]{0,16}",
        "[a-z_][a-z0-9_]{0,15}",
        arguments(),
    )
        .prop_map(|(id, name, arguments)| ToolCall {
            id,
            kind: "function".into(),
            function: FunctionCall {
                name,
                arguments,
                extra: Extra::new(),
            },
            extra: Extra::new(),
        })
}

/// Unknown message fields as providers send them.
fn message_extra() -> impl Strategy<Value = Extra> {
    (
        prop::option::of(prop_oneof![
            Just(Value::Null),
            text().prop_map(Value::String)
        ]),
        prop::option::of(text()),
        any::<bool>(),
    )
        .prop_map(|(refusal, reasoning, annotations)| {
            let mut extra = Extra::new();
            if let Some(refusal) = refusal {
                extra.insert("refusal".into(), refusal);
            }
            if let Some(reasoning) = reasoning {
                extra.insert("reasoning_content".into(), Value::String(reasoning));
            }
            if annotations {
                extra.insert("annotations".into(), json!([{"type": "url_citation"}]));
            }
            extra
        })
}

fn choice() -> impl Strategy<Value = Choice> {
    (
        prop::option::of(text()),
        prop::collection::vec(tool_call(), 0..=3),
        any::<bool>(),
        message_extra(),
        select(vec!["stop", "length", "tool_calls", "content_filter"]),
        prop::option::of(Just(Value::Null)),
    )
        .prop_map(
            |(content, calls, empty_calls_as_some, extra, finish, logprobs)| {
                let tool_calls = if calls.is_empty() && !empty_calls_as_some {
                    None
                } else {
                    Some(calls)
                };
                let mut choice_extra = Extra::new();
                if let Some(logprobs) = logprobs {
                    choice_extra.insert("logprobs".into(), logprobs);
                }
                Choice {
                    index: 0,
                    message: ChatMessage {
                        role: "assistant".into(),
                        content: content.map(Content::Text),
                        name: None,
                        tool_calls,
                        tool_call_id: None,
                        extra,
                    },
                    finish_reason: Some(finish.to_string()),
                    extra: choice_extra,
                }
            },
        )
}

fn usage() -> impl Strategy<Value = Usage> {
    (0..100_000u64, 0..100_000u64, any::<bool>()).prop_map(|(prompt, completion, details)| {
        let mut extra = Extra::new();
        if details {
            extra.insert(
                "prompt_tokens_details".into(),
                json!({"cached_tokens": prompt / 2}),
            );
        }
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
            extra,
        }
    })
}

fn response() -> impl Strategy<Value = ChatResponse> {
    (
        "(chatcmpl-[A-Za-z0-9]{1,12})?",
        any::<u32>(),
        "[a-z0-9.-]{0,16}",
        prop::option::of("fp_[0-9a-f]{0,10}"),
        prop::collection::vec(choice(), 1..=3),
        prop::option::of(usage()),
        prop::option::of(select(vec!["default", "flex", "priority"])),
    )
        .prop_map(
            |(id, created, model, system_fingerprint, choices, usage, tier)| {
                let mut extra = Extra::new();
                if let Some(tier) = tier {
                    extra.insert("service_tier".into(), Value::String(tier.into()));
                }
                ChatResponse {
                    id,
                    object: "chat.completion".into(),
                    created: created.into(),
                    model,
                    choices: choices
                        .into_iter()
                        .enumerate()
                        .map(|(i, c)| Choice {
                            index: i as u32,
                            ..c
                        })
                        .collect(),
                    usage,
                    system_fingerprint,
                    extra,
                }
            },
        )
}

fn assemble<'a>(chunks: impl IntoIterator<Item = &'a ChatChunk>) -> ChatResponse {
    let mut assembler = Assembler::new();
    for chunk in chunks {
        assembler.push(chunk).expect("push");
    }
    assembler.finish().expect("finish")
}

/// The chunks as an upstream would send them, back through the SSE parser and
/// `parse_chunk`, cut at `cut`.
fn through_the_wire(chunks: &[ChatChunk], cut: Index) -> Vec<ChatChunk> {
    let mut wire = Vec::new();
    for chunk in chunks {
        wire.extend_from_slice(b"data: ");
        wire.extend_from_slice(&serde_json::to_vec(chunk).unwrap());
        wire.extend_from_slice(b"\n\n");
    }
    wire.extend_from_slice(b"data: [DONE]\n\n");
    let cut = cut.index(wire.len() + 1);
    let mut parser = SseParser::new();
    let mut events = parser.push(&wire[..cut]).unwrap();
    events.extend(parser.push(&wire[cut..]).unwrap());
    assert_eq!(parser.finish(), None);
    let mut out = Vec::new();
    let mut done = false;
    for event in events {
        assert!(!done, "event after [DONE]");
        match parse_chunk(&event.data).unwrap() {
            Some(chunk) => out.push(chunk),
            None => done = true,
        }
    }
    assert!(done);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn replay_assembles_back_into_the_response(
        response in response(),
        chunk_chars in 1usize..40,
        include_usage in any::<bool>(),
        cut in any::<Index>(),
    ) {
        let options = ReplayOptions { chunk_chars, include_usage };
        let chunks = replay(&response, &options);
        let mut want = response.clone();
        if !include_usage {
            want.usage = None;
        }

        for chunk in &chunks {
            prop_assert_eq!(chunk.object.as_str(), "chat.completion.chunk");
            prop_assert_eq!(&chunk.id, &response.id);
            prop_assert_eq!(&chunk.model, &response.model);
            prop_assert_eq!(chunk.created, response.created);
            prop_assert_eq!(&chunk.system_fingerprint, &response.system_fingerprint);
            for choice in &chunk.choices {
                let d = &choice.delta;
                for text in d.content.iter().chain(
                    d.tool_calls.iter().flatten()
                        .filter_map(|c| c.function.as_ref()?.arguments.as_ref()),
                ) {
                    prop_assert!(text.chars().count() <= chunk_chars, "{:?}", text);
                }
            }
        }

        // Exact equality, every field; the documented preconditions hold by construction.
        let direct = assemble(&chunks);
        prop_assert_eq!(&direct, &want);
        let wired = through_the_wire(&chunks, cut);
        prop_assert_eq!(&wired, &chunks, "chunks survive JSON and SSE");
        prop_assert_eq!(assemble(&wired), want);
    }
}

// ---------------------------------------------------------------------------------------
// (b) SSE: any split parses the same
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct GenEvent {
    comment: Option<String>,
    event: Option<String>,
    /// `None`: no `id:` field; `Some("")` clears the last id.
    id: Option<String>,
    data: Vec<String>,
    noise: bool,
}

fn line_value() -> impl Strategy<Value = String> {
    prop_oneof![
        "[^\r\n]{0,12}",
        prop::collection::vec(
            select(vec!["a", " ", ":", "é", "日", "🎉", "e\u{301}", "{}"]),
            0..8
        )
        .prop_map(|v| v.concat()),
    ]
}

fn gen_event() -> impl Strategy<Value = GenEvent> {
    (
        prop::option::of(line_value()),
        prop::option::of(line_value()),
        prop::option::of("[^\r\n\u{0}]{0,8}"),
        prop::collection::vec(line_value(), 0..4),
        any::<bool>(),
    )
        .prop_map(|(comment, event, id, data, noise)| GenEvent {
            comment,
            event,
            id,
            data,
            noise,
        })
}

/// A tiny deterministic generator for the serialisation choices, so they shrink with the
/// seed rather than multiplying strategies.
struct Coin(u64);

impl Coin {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

struct Writer {
    out: Vec<u8>,
    after_cr: bool,
    coin: Coin,
}

impl Writer {
    fn line(&mut self, text: &str) {
        self.out.extend_from_slice(text.as_bytes());
        // A blank line right after a CR must not start with LF: that would be one CRLF.
        let choices: &[&str] = if text.is_empty() && self.after_cr {
            &["\r", "\r\n"]
        } else {
            &["\n", "\r\n", "\r"]
        };
        let ending = choices[self.coin.next(choices.len() as u64) as usize];
        self.out.extend_from_slice(ending.as_bytes());
        self.after_cr = ending == "\r";
    }

    fn field(&mut self, name: &str, value: &str) {
        // The one optional space after the colon is only optional when the value does
        // not itself start with a space.
        if value.is_empty() && self.coin.next(3) == 0 {
            self.line(name);
        } else if value.starts_with(' ') || self.coin.next(2) == 0 {
            self.line(&format!("{name}: {value}"));
        } else {
            self.line(&format!("{name}:{value}"));
        }
    }
}

/// The stream for `events`, and the events the spec (as narrowed by `SseParser`) says a
/// reader gets: the dispatched ones, then the cut-off tail.
fn write_stream(
    events: &[GenEvent],
    bom: bool,
    tail: &Option<String>,
    seed: u64,
) -> (Vec<u8>, Vec<SseEvent>, Option<SseEvent>) {
    let mut w = Writer {
        out: Vec::new(),
        after_cr: false,
        coin: Coin(seed | 1),
    };
    if bom {
        w.out.extend_from_slice(b"\xEF\xBB\xBF");
    }
    let mut last_id = String::new();
    let mut want = Vec::new();
    let current = |last_id: &String, event: Option<&String>, data: String| SseEvent {
        event: event.filter(|e| !e.is_empty()).cloned(),
        data,
        id: (!last_id.is_empty()).then(|| last_id.clone()),
    };
    for e in events {
        if let Some(comment) = &e.comment {
            w.line(&format!(":{comment}"));
        }
        if let Some(event) = &e.event {
            w.field("event", event);
        }
        if e.noise {
            w.line("retry: 1000");
            w.line("x-unknown: 1");
        }
        if let Some(id) = &e.id {
            w.field("id", id);
            last_id.clone_from(id);
        }
        for line in &e.data {
            w.field("data", line);
        }
        w.line("");
        let data = e.data.join("\n");
        if !data.is_empty() {
            want.push(current(&last_id, e.event.as_ref(), data));
        }
    }
    let cut_off = tail.as_ref().map(|tail| {
        w.field("data", tail);
        current(&last_id, None, tail.clone())
    });
    (w.out, want, cut_off)
}

/// Everything a parser says about `pieces`: events, then the error or the cut-off tail.
fn run(limit: usize, pieces: &[&[u8]]) -> (Vec<SseEvent>, Result<Option<SseEvent>, String>) {
    let mut parser = SseParser::with_limit(limit);
    let mut events = Vec::new();
    for piece in pieces {
        if let Err(e) = parser.push_into(piece, &mut events) {
            return (events, Err(e.to_string()));
        }
    }
    (events, Ok(parser.finish()))
}

fn cut_at<'a>(bytes: &'a [u8], cuts: &[Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
    at.sort_unstable();
    let mut pieces = Vec::new();
    let mut from = 0;
    for to in at {
        pieces.push(&bytes[from..to]);
        from = to;
    }
    pieces.push(&bytes[from..]);
    pieces
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn sse_any_split_gives_the_generated_events(
        events in prop::collection::vec(gen_event(), 0..8),
        bom in any::<bool>(),
        tail in prop::option::of("[^\r\n]{1,10}"),
        seed in any::<u64>(),
        cuts in prop::collection::vec(any::<Index>(), 0..8),
    ) {
        let (bytes, want, cut_off) = write_stream(&events, bom, &tail, seed);
        let limit = usize::MAX;
        let whole = run(limit, &[&bytes]);
        prop_assert_eq!(&whole, &(want, Ok(cut_off)));
        prop_assert_eq!(&run(limit, &cut_at(&bytes, &cuts)), &whole);
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        prop_assert_eq!(&run(limit, &bytewise), &whole);
    }

    /// Arbitrary bytes, biased towards SSE syntax, broken UTF-8 and tight limits: the split
    /// never changes the events, the error, or the cut-off tail.
    #[test]
    fn sse_any_bytes_any_split_same_outcome(
        tokens in prop::collection::vec(
            prop_oneof![
                3 => select(vec![
                    &b"data:"[..], b"data: ", b"id:", b"event: ", b":", b" ", b"x", b"\r",
                    b"\n", b"\r\n", b"\xEF\xBB\xBF", b"\xE6\x97", b"\xA5", b"\xFF", b"\0",
                ]).prop_map(<[u8]>::to_vec),
                1 => prop::collection::vec(any::<u8>(), 0..6),
            ],
            0..64,
        ),
        limit in prop_oneof![Just(usize::MAX), 1usize..40],
        cuts in prop::collection::vec(any::<Index>(), 0..6),
    ) {
        let bytes = tokens.concat();
        let whole = run(limit, &[&bytes]);
        prop_assert_eq!(&run(limit, &cut_at(&bytes, &cuts)), &whole);
        let bytewise: Vec<&[u8]> = bytes.chunks(1).collect();
        prop_assert_eq!(&run(limit, &bytewise), &whole);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// The form L1 holds an answer in (issue 26, item 5) gives back the same answer, and
    /// writes the same JSON bytes to Redis as the `ChatResponse` itself, whatever its shape
    /// (tool calls, several choices, extras, missing options).
    #[test]
    fn a_stored_answer_is_the_same_answer_and_the_same_json(response in response()) {
        let stored = StoredAnswer::from(response.clone());
        prop_assert_eq!(&*stored.response(), &response);
        let plain = serde_json::to_vec(&response).unwrap();
        let mut written = Vec::new();
        stored.write_json(&mut written).unwrap();
        prop_assert_eq!(&written, &plain);
        prop_assert_eq!(serde_json::to_vec(&stored).unwrap(), plain.clone());
        let back: StoredAnswer = serde_json::from_slice(&plain).unwrap();
        prop_assert_eq!(&*back.response(), &response);
        prop_assert_eq!(back.is_compact(), stored.is_compact());
    }
}
