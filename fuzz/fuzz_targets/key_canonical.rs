//! Arbitrary bytes as a request body, through the key canonicalizer: nothing panics, the
//! canonical output is JSON and a fixed point (canonicalizing it again changes nothing),
//! and the same request spelled differently (key order, whitespace, `1` vs `1.0` vs `1e0`,
//! string escapes) gets one key. The checks live in
//! `llm_cache::fuzzing`, which `tests/engine/fuzz_regressions.rs` also replays saved crashes through.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| llm_cache::fuzzing::key_canonical(data));
