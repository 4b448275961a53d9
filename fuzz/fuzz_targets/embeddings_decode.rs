//! Arbitrary bytes must never panic the embeddings decoders (a stored vector from Redis,
//! a request body, an upstream's answer), and what they accept must round-trip. The
//! checks live in `llm_cache::fuzzing`, which `tests/engine/fuzz_regressions.rs` also replays
//! saved crashes through.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| llm_cache::fuzzing::embeddings_decode(data));
