//! Real components for llm-cache's integration tests, benches and demo: redis-server
//! processes (standalone, Sentinel, Cluster, TLS) on free loopback ports, killed on drop; a
//! mock OpenAI-compatible upstream over real HTTP (with a realistic mode, the demo's
//! upstream); a TCP proxy that injects faults; an HTTP server for any axum router. It must
//! never depend on `llm-cache` itself (as llm-cache's dev-dependency that would build a
//! second copy of its types): requests are read as JSON.

pub mod bow;
pub mod embeddings;
pub mod examples;
pub mod proxy;
pub mod realistic;
pub mod redis;
pub mod served;
pub mod tls;
pub mod topology;
pub mod upstream;

use std::time::{Duration, Instant};

/// Poll `cond` until it holds, failing the test with `what` after `limit`. For conditions
/// that have no signal of their own (another process's state, a background write).
pub async fn eventually(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// FNV-1a: a hash stable across runs and Rust versions (the realistic mode's prompt hash,
/// the bag-of-words embedder's word hash, the demo's texts).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}
