//! The checks behind each cargo-fuzz target, in one place: the targets in `fuzz/` call
//! them on libFuzzer's inputs and `tests/engine/fuzz_regressions.rs` replays saved crashes through
//! them, so the two can never drift apart.
//!
//! **Not a public API, and not covered by semver**: `#[doc(hidden)]`, public only so that
//! the fuzz crate and the tests can reach it. Anything here may change or go in any
//! release.

use crate::ChatRequest;
use crate::chat::key::{KeyOptions, canonical_json, canonical_value, derive};
use crate::stream::{Assembler, ReplayOptions, SseEvent, SseParser, parse_chunk, replay};
use crate::tiered::envelope::{self, Binding, MacKeys};
use serde_json::Value;
use xxhash_rust::xxh3::xxh3_64;

/// The checks of the `envelope_decode` fuzz target: panics on a violated property.
pub fn envelope_decode(data: &[u8]) {
    fn check(bytes: &[u8]) {
        // The key the bytes claim, so the fuzzer can reach past the key check; and a
        // key they do not claim, which must never decode.
        let Some(claimed) = bytes.get(22..54) else {
            let name = String::from_utf8_lossy(bytes);
            assert!(envelope::decode(bytes, &Binding::of_key(&name), &MacKeys::none()).is_err());
            return;
        };
        let claimed = Binding::from_bytes(claimed.try_into().expect("32 bytes"));
        let mut other = *claimed.as_bytes();
        other[0] ^= 1;
        let other = Binding::from_bytes(other);
        let none = MacKeys::none();
        assert!(envelope::decode(bytes, &other, &none).is_err());
        let Ok(env) = envelope::decode(bytes, &claimed, &none) else {
            return;
        };
        let threshold = if env.flags.is_compressed() {
            0
        } else {
            usize::MAX
        };
        let again = envelope::encode(
            &env.payload,
            &claimed,
            env.created_at_ms,
            env.ttl_ms,
            threshold,
            &none,
        );
        if env.flags.is_compressed() {
            let back =
                envelope::decode(&again, &claimed, &none).expect("re-encoded envelope must decode");
            assert_eq!(back.payload, env.payload);
            assert_eq!(
                (back.created_at_ms, back.ttl_ms),
                (env.created_at_ms, env.ttl_ms)
            );
        } else {
            assert_eq!(
                again, bytes,
                "raw envelope did not re-encode to the same bytes"
            );
        }
        // The same entry signed: its secret verifies it, another secret and none do not.
        let keys = MacKeys::new([b"fuzz secret, 16+ bytes"]).expect("long enough");
        let signed = envelope::encode(&env.payload, &claimed, 1, 2, threshold, &keys);
        assert!(envelope::decode(&signed, &claimed, &keys).is_ok());
        assert!(envelope::decode(&signed, &claimed, &none).is_err());
        assert!(envelope::decode(bytes, &claimed, &keys).is_err());
    }
    check(data);
    let mut sealed = data.to_vec();
    sealed.extend_from_slice(&xxh3_64(data).to_le_bytes());
    check(&sealed);
}

/// The checks of the `sse_parse` fuzz target: panics on a violated property.
pub fn sse_parse(data: &[u8]) {
    type Outcome = (Vec<SseEvent>, Result<Option<SseEvent>, String>);
    fn run(limit: usize, pieces: &[&[u8]]) -> Outcome {
        let mut parser = SseParser::with_limit(limit);
        let mut events = Vec::new();
        for piece in pieces {
            if let Err(e) = parser.push_into(piece, &mut events) {
                return (events, Err(e.to_string()));
            }
        }
        (events, Ok(parser.finish()))
    }
    let (control, stream) = data.split_at(data.len().min(3));
    let cut = match control {
        [a, b, ..] => usize::from(u16::from_le_bytes([*a, *b])) % (stream.len() + 1),
        _ => 0,
    };
    let limit = match control.get(2) {
        Some(&b) if b < 128 => usize::from(b) + 1,
        _ => usize::MAX,
    };
    let whole = run(limit, &[stream]);
    let (head, tail) = stream.split_at(cut);
    assert_eq!(run(limit, &[head, tail]), whole, "cut at {cut}");
    let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(run(limit, &bytewise), whole, "byte by byte");
}

/// The checks of the `stream_assemble` fuzz target: panics on a violated property.
pub fn stream_assemble(data: &[u8]) {
    let mut parser = SseParser::new();
    let Ok(events) = parser.push(data) else {
        return;
    };
    let mut assembler = Assembler::new();
    for event in &events {
        if let Ok(Some(chunk)) = parse_chunk(&event.data) {
            let _ = assembler.push(&chunk);
        }
    }
    let Ok(response) = assembler.finish() else {
        return;
    };
    let options = ReplayOptions {
        chunk_chars: data.first().map_or(1, |&b| usize::from(b % 32)),
        include_usage: true,
    };
    let mut again = Assembler::new();
    for chunk in replay(&response, &options) {
        again.push(&chunk).expect("a replayed chunk must assemble");
    }
    let again = again.finish().expect("a replayed stream must finish");
    assert_eq!(
        again, response,
        "replay did not assemble back into the response"
    );
}

/// The checks of the `key_canonical` fuzz target: panics on a violated property.
pub fn key_canonical(data: &[u8]) {
    // One byte picks the key options; the rest is the body.
    let Some((&control, body)) = data.split_first() else {
        return;
    };
    let options = KeyOptions::default()
        .trim(control & 1 != 0)
        .collapse_whitespace(control & 2 != 0)
        .lowercase(control & 4 != 0);
    let options = if control & 8 != 0 {
        options.clear_ignored_fields()
    } else {
        options.ignore_field("seed")
    };
    let mut spell = Speller::new(xxh3_64(data));

    // A request the typed parser rejects must be rejected, never panic.
    let typed = ChatRequest::from_json(body);
    let Ok(value) = serde_json::from_slice::<Value>(body) else {
        return;
    };

    let canon = canonical_value(&value, &options);
    let back: Value = serde_json::from_slice(&canon).expect("canonical output is JSON");
    assert_eq!(
        canonical_value(&back, &options),
        canon,
        "canonicalizing the canonical output changed it"
    );
    let respelled = spell.json(&value);
    let same: Value = serde_json::from_slice(&respelled).expect("a respelled value parses");
    assert_eq!(
        canonical_value(&same, &options),
        canon,
        "the same value spelled differently canonicalized differently: {}",
        String::from_utf8_lossy(&respelled)
    );

    let Ok(request) = typed else {
        return;
    };
    let key = derive(&request, "tenant", &options);
    let as_value = serde_json::to_value(&request).expect("a request serializes");
    assert_eq!(
        canonical_json(&request, &options),
        canonical_value(&as_value, &options),
        "the typed and the JSON canonicalizers disagree"
    );
    // What a client would send for this request, spelled another way, is the same key.
    let respelled = spell.json(&as_value);
    let again = ChatRequest::from_json(&respelled).expect("a respelled request parses");
    assert_eq!(
        derive(&again, "tenant", &options),
        key,
        "the same request spelled differently got another key: {}",
        String::from_utf8_lossy(&respelled)
    );
}

/// Writes a JSON value in one of its many equivalent spellings, chosen by a seeded
/// xorshift: shuffled object keys, whitespace between tokens, integers as `n`, `n.0` or
/// `ne0`, floats in either notation, strings with or without `\u` escapes.
struct Speller {
    state: u64,
    out: Vec<u8>,
}

impl Speller {
    fn new(seed: u64) -> Self {
        Speller {
            state: seed | 1,
            out: Vec::new(),
        }
    }

    fn next(&mut self) -> u64 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        self.state
    }

    fn pick(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn json(&mut self, v: &Value) -> Vec<u8> {
        self.out.clear();
        self.value(v);
        std::mem::take(&mut self.out)
    }

    fn space(&mut self) {
        for _ in 0..self.pick(3) {
            let ws = [b' ', b'\t', b'\n', b'\r'][self.pick(4) as usize];
            self.out.push(ws);
        }
    }

    fn value(&mut self, v: &Value) {
        self.space();
        match v {
            Value::Null | Value::Bool(_) => self.out.extend_from_slice(v.to_string().as_bytes()),
            Value::Number(n) => self.number(n),
            Value::String(s) => self.string(s),
            Value::Array(items) => {
                self.out.push(b'[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        self.out.push(b',');
                    }
                    self.value(item);
                }
                self.space();
                self.out.push(b']');
            }
            Value::Object(map) => {
                let mut entries: Vec<_> = map.iter().collect();
                for i in (1..entries.len()).rev() {
                    let j = self.pick(i as u64 + 1) as usize;
                    entries.swap(i, j);
                }
                self.out.push(b'{');
                for (i, (key, value)) in entries.into_iter().enumerate() {
                    if i > 0 {
                        self.out.push(b',');
                    }
                    self.space();
                    self.string(key);
                    self.space();
                    self.out.push(b':');
                    self.value(value);
                }
                self.space();
                self.out.push(b'}');
            }
        }
        self.space();
    }

    fn number(&mut self, n: &serde_json::Number) {
        const EXACT: u64 = 1 << 53;
        let text = if let Some(u) = n.as_u64() {
            match self.pick(3) {
                1 if u <= EXACT => format!("{u}.0"),
                2 if u <= EXACT => format!("{u}e0"),
                _ => u.to_string(),
            }
        } else if let Some(i) = n.as_i64() {
            match self.pick(3) {
                1 if i.unsigned_abs() <= EXACT => format!("{i}.0"),
                2 if i.unsigned_abs() <= EXACT => format!("{i}e0"),
                _ => i.to_string(),
            }
        } else {
            let x = n.as_f64().unwrap_or(0.0);
            match self.pick(3) {
                0 => format!("{x:e}"),
                1 => format!("{x:E}"),
                _ => format!("{x:?}"),
            }
        };
        self.out.extend_from_slice(text.as_bytes());
    }

    fn string(&mut self, s: &str) {
        if self.pick(2) == 0 {
            let text = serde_json::to_string(s).expect("a string serializes");
            self.out.extend_from_slice(text.as_bytes());
            return;
        }
        // Every character outside printable ASCII as `\uXXXX` (surrogate pairs above the
        // BMP), and `/` as `\/`: all the same string to a JSON reader.
        self.out.push(b'"');
        for c in s.chars() {
            match c {
                '"' => self.out.extend_from_slice(b"\\\""),
                '\\' => self.out.extend_from_slice(b"\\\\"),
                '/' => self.out.extend_from_slice(b"\\/"),
                ' '..='~' => self.out.push(c as u8),
                _ => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        self.out
                            .extend_from_slice(format!("\\u{unit:04X}").as_bytes());
                    }
                }
            }
        }
        self.out.push(b'"');
    }
}

/// The checks of the `embeddings_decode` fuzz target: panics on a violated property. The
/// first byte picks the decoder, the rest is its input:
///
/// - even: a stored vector's payload (from Redis): decoding never panics, and an accepted
///   payload encodes back to the same bytes;
/// - odd: an `/embeddings` request body and, read as a response to it, an upstream's
///   answer: neither panics, an accepted request serialises and reads back equal, and an
///   accepted answer's ordered vectors are exactly one per input, at their own index.
pub fn embeddings_decode(data: &[u8]) {
    use crate::Codec;
    use crate::embeddings::EmbeddingCodec;
    use crate::request::{EmbeddingRequest, EmbeddingResponse};
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    if selector % 2 == 0 {
        if let Ok(entry) = EmbeddingCodec.decode(rest) {
            let again = EmbeddingCodec
                .encode(&entry)
                .expect("a decoded entry encodes");
            assert_eq!(again, rest, "payload did not re-encode to the same bytes");
        }
        return;
    }
    if let Ok(request) = EmbeddingRequest::from_json(rest) {
        let text = serde_json::to_vec(&request).expect("an accepted request serialises");
        let back = EmbeddingRequest::from_json(&text).expect("and reads back");
        assert_eq!(back, request);
        if let Ok(response) = serde_json::from_slice::<EmbeddingResponse>(rest) {
            let n = request.input.len();
            if let Ok(ordered) = response.into_ordered(n) {
                assert_eq!(ordered.data.len(), n);
                for (i, e) in ordered.data.iter().enumerate() {
                    assert_eq!(e.index, i);
                    assert!(!e.embedding.is_empty());
                }
            }
        }
    }
    if let Ok(response) = serde_json::from_slice::<EmbeddingResponse>(rest) {
        let _ = response.clone().into_ordered(response.data.len());
        let _ = serde_json::to_vec(&response).expect("a read response serialises");
    }
}
