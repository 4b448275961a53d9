//! Arbitrary bytes as an upstream's event stream, through the SSE parser, `parse_chunk` and
//! the `Assembler`: nothing panics, and whatever assembles streams back into itself
//! (`replay` then `Assembler` is the identity on assembled responses). The checks live in
//! `llm_cache::fuzzing`, which `tests/engine/fuzz_regressions.rs` also replays saved crashes through.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| llm_cache::fuzzing::stream_assemble(data));
