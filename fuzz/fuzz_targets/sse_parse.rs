//! Arbitrary bytes must never panic the SSE parser, and where the stream is cut must not
//! change what it says: the events, the error, the cut-off tail. Replayed by
//! `tests/fuzz_regressions.rs`: keep the two in step.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llm_cache::stream::{SseEvent, SseParser};

fuzz_target!(|data: &[u8]| {
    // Two bytes choose the cut, one the limit (tight half of the time); the rest is the stream.
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
});

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
