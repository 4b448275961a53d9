//! Fail-open around the remote tier: every operation runs under a deadline, and a circuit
//! breaker stops paying that deadline while the store keeps failing. After the cool-down one
//! probe is let through; its success closes the breaker. Callers only ever see hit or miss.

use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{L2Error, RemoteStore};
use crate::metrics::{BreakerState, Counters};

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// The outcome of a guarded read.
#[derive(Debug)]
pub(crate) enum L2Read {
    Hit(Vec<u8>),
    Miss,
    /// Failed, timed out, or skipped by the breaker: treat as a miss, do not trust L2 now.
    Unavailable,
}

pub(crate) struct Guarded {
    store: Box<dyn RemoteStore>,
    deadline: Duration,
    breaker: Breaker,
    counters: Arc<Counters>,
}

struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: AtomicU8,
    consecutive_failures: AtomicU32,
    open_until: Mutex<Instant>,
}

/// Leave to run one operation. A probe dropped without an outcome counts as a failure,
/// so a cancelled probe can never leave the breaker half-open forever.
struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    settled: bool,
}

impl Breaker {
    fn acquire(&self) -> Option<Permit<'_>> {
        match self.state.load(Ordering::Acquire) {
            CLOSED => Some(Permit {
                breaker: self,
                probe: false,
                settled: false,
            }),
            OPEN => {
                let until = *self.open_until.lock().expect("lock poisoned");
                if Instant::now() >= until
                    && self
                        .state
                        .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    Some(Permit {
                        breaker: self,
                        probe: true,
                        settled: false,
                    })
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// Returns true when this success closed an open breaker.
    fn on_success(&self, probe: bool) -> bool {
        self.consecutive_failures.store(0, Ordering::Relaxed);
        probe
            && self
                .state
                .compare_exchange(HALF_OPEN, CLOSED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Returns true when this failure opened the breaker.
    fn on_failure(&self, probe: bool) -> bool {
        if probe {
            self.open_for_cooldown();
            self.state.store(OPEN, Ordering::Release);
            return true;
        }
        let n = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= self.threshold
            && self
                .state
                .compare_exchange(CLOSED, OPEN, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.open_for_cooldown();
            return true;
        }
        false
    }

    fn open_for_cooldown(&self) {
        *self.open_until.lock().expect("lock poisoned") = Instant::now() + self.cooldown;
    }

    fn state(&self) -> BreakerState {
        match self.state.load(Ordering::Acquire) {
            CLOSED => BreakerState::Closed,
            OPEN => BreakerState::Open,
            _ => BreakerState::HalfOpen,
        }
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            self.breaker.on_failure(true);
        }
    }
}

impl Guarded {
    pub fn new(
        store: Box<dyn RemoteStore>,
        deadline: Duration,
        breaker_threshold: u32,
        breaker_cooldown: Duration,
        counters: Arc<Counters>,
    ) -> Self {
        Guarded {
            store,
            deadline,
            breaker: Breaker {
                threshold: breaker_threshold,
                cooldown: breaker_cooldown,
                state: AtomicU8::new(CLOSED),
                consecutive_failures: AtomicU32::new(0),
                open_until: Mutex::new(Instant::now()),
            },
            counters,
        }
    }

    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    pub fn describe(&self) -> &str {
        self.store.describe()
    }

    /// Run `op` under the deadline and the breaker. `None` when skipped or failed.
    async fn guarded<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, L2Error>>,
    ) -> Option<T> {
        let Some(mut permit) = self.breaker.acquire() else {
            Counters::incr(&self.counters.l2_skipped);
            return None;
        };
        let outcome = tokio::time::timeout(self.deadline, fut).await;
        permit.settled = true;
        match outcome {
            Ok(Ok(v)) => {
                if self.breaker.on_success(permit.probe) {
                    tracing::info!(redis = %self.describe(), "redis is back: circuit breaker closed");
                }
                Some(v)
            }
            Ok(Err(e)) => {
                Counters::incr(&self.counters.l2_errors);
                tracing::debug!(redis = %self.describe(), op, error = %e, "redis operation failed");
                self.failed(permit.probe, &e.to_string());
                None
            }
            Err(_) => {
                Counters::incr(&self.counters.l2_timeouts);
                tracing::debug!(redis = %self.describe(), op, deadline = ?self.deadline, "redis operation timed out");
                self.failed(permit.probe, "deadline exceeded");
                None
            }
        }
    }

    fn failed(&self, probe: bool, why: &str) {
        if self.breaker.on_failure(probe) {
            // A stalled or half-open connection must not be reused after the cool-down.
            self.store.reset();
            if !probe {
                tracing::warn!(
                    redis = %self.describe(), error = why, cooldown = ?self.breaker.cooldown,
                    "redis keeps failing: circuit breaker open, serving from L1 and upstream only"
                );
            }
        }
    }

    pub async fn get(&self, key: &str) -> L2Read {
        match self.guarded("get", self.store.get(key)).await {
            Some(Some(bytes)) => L2Read::Hit(bytes),
            Some(None) => L2Read::Miss,
            None => L2Read::Unavailable,
        }
    }

    pub async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> bool {
        self.guarded("set", self.store.set(key, value, ttl))
            .await
            .is_some()
    }

    pub async fn unlink(&self, key: &str) -> bool {
        self.guarded("unlink", self.store.unlink(key))
            .await
            .is_some()
    }
}
