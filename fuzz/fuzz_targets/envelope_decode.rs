//! Arbitrary bytes from Redis must never panic the envelope decoder, and whatever it accepts
//! must survive a re-encode. Replayed by `tests/fuzz_regressions.rs`: keep the two in step.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llm_cache::envelope::{self, Envelope};
use xxhash_rust::xxh3::xxh3_64;

fuzz_target!(|data: &[u8]| {
    check(data);
    // The same bytes with a valid checksum appended: without it the fuzzer would have to
    // discover xxh3 before reaching the flag and decompression paths.
    let mut sealed = Vec::with_capacity(data.len() + 8);
    sealed.extend_from_slice(data);
    sealed.extend_from_slice(&xxh3_64(data).to_le_bytes());
    check(&sealed);
});

fn check(bytes: &[u8]) {
    let Ok(env) = envelope::decode(bytes) else {
        return;
    };
    if env.flags.is_compressed() {
        let again = envelope::encode(&env.payload, env.created_at_ms, env.ttl_ms, 0);
        let back = envelope::decode(&again).expect("re-encoded envelope must decode");
        assert_same(&env, &back);
    } else {
        // A raw envelope has exactly one encoding.
        let again = envelope::encode(&env.payload, env.created_at_ms, env.ttl_ms, usize::MAX);
        assert_eq!(
            again, bytes,
            "raw envelope did not re-encode to the same bytes"
        );
    }
}

fn assert_same(a: &Envelope<'_>, b: &Envelope<'_>) {
    assert_eq!(a.payload, b.payload);
    assert_eq!(a.created_at_ms, b.created_at_ms);
    assert_eq!(a.ttl_ms, b.ttl_ms);
}
