//! Arbitrary bytes from Redis must never panic the envelope decoder, and whatever it accepts
//! must survive a re-encode. The checks live in
//! `llm_cache::fuzzing`, which `tests/engine/fuzz_regressions.rs` also replays saved crashes through.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| llm_cache::fuzzing::envelope_decode(data));
