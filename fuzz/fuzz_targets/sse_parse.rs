//! Arbitrary bytes must never panic the SSE parser, and where the stream is cut must not
//! change what it says: the events, the error, the cut-off tail. The checks live in
//! `llm_cache::fuzzing`, which `tests/engine/fuzz_regressions.rs` also replays saved crashes through.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| llm_cache::fuzzing::sse_parse(data));
