//! Real components for integration tests: redis-server processes on free loopback ports
//! and a mock OpenAI-compatible upstream over real HTTP. Each test file uses some of it.
#![allow(dead_code, unused_imports)]

pub mod bow;
pub mod embeddings;
#[cfg(feature = "axum")]
pub mod front;
pub mod proxy;
pub mod redis;
#[cfg(feature = "tls")]
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
