//! Fail-open around the remote tier: every operation runs under a deadline, and a circuit
//! breaker stops paying that deadline while the store keeps failing. After the cool-down one
//! probe is let through; its success closes the breaker. Callers only ever see hit or miss.

use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{L2Error, RemoteStore};
use crate::tiered::stats::{BreakerState, Counters};

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
    /// False after an operation found Redis unreachable or too slow, true again after one
    /// got an answer (a value or an error reply) from some node.
    reachable: std::sync::atomic::AtomicBool,
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
            reachable: std::sync::atomic::AtomicBool::new(true),
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

    /// Whether Redis answered the last operation that reached it (a value, an error reply,
    /// or one Cluster node down while others answer); false while the breaker is open.
    pub fn reachable(&self) -> bool {
        self.breaker.state() == BreakerState::Closed && self.reachable.load(Ordering::Relaxed)
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
        let timer = self.counters.exported.l2_timer(op);
        let outcome = tokio::time::timeout(self.deadline, fut).await;
        drop(timer);
        permit.settled = true;
        match outcome {
            Ok(Ok(v)) => {
                self.reachable.store(true, Ordering::Relaxed);
                if self.breaker.on_success(permit.probe) {
                    self.counters.exported.publish_breaker(self.breaker_state());
                    tracing::info!(redis = %self.describe(), "redis is back: circuit breaker closed");
                }
                Some(v)
            }
            Ok(Err(e)) => {
                Counters::incr(&self.counters.l2_errors);
                self.counters.exported.l2_error(&e);
                self.counters.note_l2_error(op, &e.to_string());
                tracing::debug!(redis = %self.describe(), op, error = %e, "redis operation failed");
                self.reachable
                    .store(!matches!(e, L2Error::Connection(_)), Ordering::Relaxed);
                if matches!(e, L2Error::NodeDown(_)) {
                    // One cluster node is down: its keys miss, the others keep working.
                    if permit.probe {
                        self.breaker.on_success(true);
                    }
                } else {
                    self.failed(permit.probe, &e.to_string());
                }
                None
            }
            Err(_) => {
                self.reachable.store(false, Ordering::Relaxed);
                Counters::incr(&self.counters.l2_timeouts);
                self.counters.exported.l2_timeout();
                self.counters.note_l2_error(op, "deadline exceeded");
                tracing::debug!(redis = %self.describe(), op, deadline = ?self.deadline, "redis operation timed out");
                self.failed(permit.probe, "deadline exceeded");
                None
            }
        }
    }

    fn failed(&self, probe: bool, why: &str) {
        if self.breaker.on_failure(probe) {
            self.counters.exported.publish_breaker(self.breaker_state());
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

    /// `PING` under the deadline and the breaker (for `health()`); counted like any operation.
    pub async fn ping(&self) -> bool {
        self.guarded("ping", self.store.ping()).await.is_some()
    }

    /// The store itself, for what must not go through the breaker nor count as cache
    /// traffic (`redis_stats()`, the start-up configuration check).
    pub fn store(&self) -> &dyn RemoteStore {
        &*self.store
    }

    pub async fn unlink(&self, key: &str) -> bool {
        self.guarded("unlink", self.store.unlink(key))
            .await
            .is_some()
    }

    // Leases, invalidation and namespace generations, under the same deadline and breaker.

    /// Take `key` with `token` for `ttl`: `Some(true)` taken, `Some(false)` held by
    /// someone else, `None` when Redis could not say.
    pub async fn set_nx(&self, key: &str, token: &str, ttl: Duration) -> Option<bool> {
        self.guarded("set_nx", self.store.set_nx(key, token, ttl))
            .await
    }

    pub async fn exists(&self, key: &str) -> Option<bool> {
        self.guarded("exists", self.store.exists(key)).await
    }

    pub async fn release(&self, key: &str, token: &str) -> Option<bool> {
        self.guarded("release", self.store.release(key, token))
            .await
    }

    pub async fn renew(&self, key: &str, token: &str, ttl: Duration) -> Option<bool> {
        self.guarded("renew", self.store.renew(key, token, ttl))
            .await
    }

    pub async fn publish(&self, channel: &str, message: &[u8]) -> bool {
        self.guarded("publish", self.store.publish(channel, message))
            .await
            .is_some()
    }

    pub async fn hset_publish(
        &self,
        key: &str,
        field: &[u8],
        value: u64,
        channel: &str,
        message: &[u8],
    ) -> bool {
        let op = self.store.hset_publish(key, field, value, channel, message);
        self.guarded("hset_publish", op).await.is_some()
    }

    pub async fn hgetall(&self, key: &str) -> Option<Vec<(Vec<u8>, u64)>> {
        self.guarded("hgetall", self.store.hgetall(key)).await
    }

    /// Subscribe to `channel`; bounded by `timeout`, outside the breaker (it is one
    /// long-lived connection, retried by its owner with a backoff).
    pub async fn subscribe(
        &self,
        channel: &str,
        timeout: Duration,
    ) -> Result<super::Subscription, L2Error> {
        self.store.subscribe(channel, timeout).await
    }
}
