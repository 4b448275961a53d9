//! Arbitrary bytes as an upstream's event stream, through the SSE parser, `parse_chunk` and
//! the `Assembler`: nothing panics, and whatever assembles streams back into itself
//! (`replay` then `Assembler` is the identity on assembled responses). Replayed by
//! `tests/fuzz_regressions.rs`: keep the two in step.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llm_cache::stream::{Assembler, ReplayOptions, SseParser, parse_chunk, replay};

fuzz_target!(|data: &[u8]| {
    let mut parser = SseParser::new();
    let Ok(events) = parser.push(data) else {
        return;
    };
    let mut assembler = Assembler::new();
    for event in &events {
        // An error event ends a real stream; carry on here to reach more of the assembler.
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
});
