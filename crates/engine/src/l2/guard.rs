//! Fail-open around the remote tier: every operation runs under a deadline, and a circuit
//! breaker stops paying that deadline while the store keeps failing. No operation waits for
//! a connection: the store makes them in the background, and one that finds none is skipped
//! (not counted as a failure). After the cool-down, one probe is let through, but only once
//! a connection is up, so the probe tests a command and never pays for a connect; its success
//! closes the breaker. A connect attempt that fails while the breaker is open starts the
//! cool-down again. An error reply to one command (OOM under `noeviction`, a script error)
//! comes from a server that is up: it never opens the breaker; a refused write or lease is
//! counted, and one WARN per cause and [`REFUSAL_WARN_EVERY`] names it. Callers only ever see
//! hit or miss.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::RedisResult;

use super::store::Store;
use super::{Connection, L2Error, Link};
use crate::stats::{BreakerState, Counters};

/// One WARN per cause of refusal (OOM, NOPERM...) this often at most.
const REFUSAL_WARN_EVERY: Duration = Duration::from_secs(60);

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// The outcome of a lookup that takes the lease when the entry is missing.
#[derive(Debug)]
pub(crate) enum LeaseRead {
    /// The key holds this (an entry, or another flight's lease marker); nothing was set.
    Found(Vec<u8>),
    /// The key was empty: this call's marker is there now (the lease is held).
    Leased,
    /// The server refused the command (it is up): read with a plain `GET` instead.
    Refused,
    /// Failed, timed out, or skipped by the breaker.
    Unavailable,
}

/// The outcome of a guarded read.
#[derive(Debug)]
pub(crate) enum L2Read {
    Hit(Vec<u8>),
    Miss,
    /// Failed, timed out, or skipped by the breaker: treat as a miss, do not trust L2 now.
    Unavailable,
}

/// One tier's handle on the cache's Redis, fail-open: every command goes through the
/// circuit breaker and a deadline, and is counted. A layer on the engine runs its own
/// commands with [`run`](Self::run) (see [`TieredCache::l2_parts`](crate::TieredCache::l2_parts)).
///
/// Tiers built beside each other on one connection (answers, vectors, a layer's bodies)
/// share the store, the breaker and the reachability, and each counts its own operations'
/// errors, timeouts, skips and the breaker openings they cause in its own counters. The
/// breaker gauge and the last error (for `health()`) describe the link, not one tier's
/// traffic: they stay in the counters of the tier that opened the store.
pub struct Guarded {
    link: Arc<Shared>,
    /// Where this tier's operations are counted.
    pub(super) counters: Arc<Counters>,
}

/// What every tier's [`Guarded`] shares: one store, one breaker.
#[doc(hidden)]
pub struct Shared {
    store: Store,
    /// False after an operation found Redis unreachable or too slow, true again after one
    /// got an answer (a value or an error reply) from some node.
    reachable: std::sync::atomic::AtomicBool,
    pub(super) deadline: Duration,
    breaker: Breaker,
    /// The counters of the tier that opened the store: the breaker gauge and the last
    /// error, which describe the link rather than one tier's traffic.
    owner: Arc<Counters>,
    /// When each cause of refusal was last logged at WARN.
    refusals_warned: Mutex<HashMap<String, Instant>>,
}

// The methods below were written against one struct: reaching the shared fields through
// `Deref` keeps them unchanged.
impl std::ops::Deref for Guarded {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.link
    }
}

/// Whose time an operation spends (see [`Guarded::attempt`]).
#[derive(Clone, Copy)]
pub(super) enum Path {
    /// A request waits for it: the L2 deadline, and its timeouts open the breaker.
    Request,
    /// Nobody waits for it (writes behind, lease renewals and releases): this deadline.
    Background(Duration),
}

/// Why a guarded operation has no answer.
pub(super) enum NoAnswer {
    /// Not sent: the breaker is open or no connection is up.
    Skipped,
    /// The server answered with an error reply (it is up).
    Refused,
    /// It failed or missed its deadline.
    Failed,
}

struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: AtomicU8,
    consecutive_failures: AtomicU32,
    open_until: Mutex<Instant>,
}

/// Leave to run one operation. A probe dropped without an outcome hands the breaker back
/// open (its cool-down over, so the next operation probes), so a cancelled probe can never
/// leave the breaker half-open forever.
struct Permit<'a> {
    breaker: &'a Breaker,
    probe: bool,
    settled: bool,
}

/// Why an operation was not let through.
enum Skip {
    /// Open (cool-down, a probe out, or no connection to probe on yet).
    Open,
    /// Open, and the connect attempt it was waiting for failed: the cool-down starts again.
    ConnectFailed(String),
}

impl Breaker {
    /// Leave to run, or why not. Open with its cool-down over, the probe goes out only when
    /// `store` has a connection; without one, `store` starts making it in the background.
    fn acquire(&self, store: &Store) -> Result<Permit<'_>, Skip> {
        match self.state.load(Ordering::Acquire) {
            CLOSED => Ok(Permit {
                breaker: self,
                probe: false,
                settled: false,
            }),
            OPEN => {
                let until = *crate::sync::lock(&self.open_until);
                if Instant::now() < until {
                    return Err(Skip::Open);
                }
                match store.link() {
                    Link::Up => {}
                    Link::Connecting => return Err(Skip::Open),
                    Link::Failed(why) => {
                        self.open_for_cooldown();
                        return Err(Skip::ConnectFailed(why));
                    }
                }
                if self
                    .state
                    .compare_exchange(OPEN, HALF_OPEN, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
                {
                    Ok(Permit {
                        breaker: self,
                        probe: true,
                        settled: false,
                    })
                } else {
                    Err(Skip::Open)
                }
            }
            _ => Err(Skip::Open),
        }
    }

    /// A probe that tested nothing (its connection went away, or it was cancelled): open
    /// again, cool-down over, not counted as an opening.
    fn abandon_probe(&self) {
        let _ = self
            .state
            .compare_exchange(HALF_OPEN, OPEN, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Returns true when this success closed an open breaker.
    fn on_success(&self, probe: bool) -> bool {
        // Read first: every operation succeeds here, and a store on every one would move
        // this cache line between cores for nothing.
        if self.consecutive_failures.load(Ordering::Relaxed) != 0 {
            self.consecutive_failures.store(0, Ordering::Relaxed);
        }
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
        *crate::sync::lock(&self.open_until) = Instant::now() + self.cooldown;
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
            self.breaker.abandon_probe();
        }
    }
}

impl Guarded {
    pub(crate) fn new(
        store: Store,
        deadline: Duration,
        breaker_threshold: u32,
        breaker_cooldown: Duration,
        counters: Arc<Counters>,
    ) -> Self {
        Guarded {
            link: Arc::new(Shared {
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
                owner: Arc::clone(&counters),
                refusals_warned: Mutex::new(HashMap::new()),
            }),
            counters,
        }
    }

    /// The same store and breaker, counting into `counters` (another tier's). Itself when
    /// it already counts there.
    pub(crate) fn for_tier(self: &Arc<Self>, counters: &Arc<Counters>) -> Arc<Guarded> {
        if Arc::ptr_eq(&self.counters, counters) {
            return Arc::clone(self);
        }
        Arc::new(Guarded {
            link: Arc::clone(&self.link),
            counters: Arc::clone(counters),
        })
    }

    /// Run a layer's command on the cache's connection, the way the cache runs its own:
    /// not sent while the breaker is open or no connection is up, bounded by the L2
    /// deadline, counted in this tier's counters (`op` names it in the latency metric), its
    /// failures classified like the cache's (an error reply never opens the breaker; in a
    /// Cluster, a node down is a miss for its keys only). `f` gets the connection and runs
    /// a [`redis::Cmd`], a [`redis::Pipeline`] or a [`redis::Script`] on it (no retries:
    /// it may run at most once). `key` is a key it touches: in a Cluster, every key of one
    /// call must share its slot (a hash tag), and nothing is sent while that slot's node is
    /// marked down. Name keys with [`Keyspace::layer_key`](crate::keyspace::Keyspace::layer_key).
    ///
    /// `None` when it was skipped, failed, timed out or refused: treat it as a miss. A
    /// cancelled call sends nothing more and leaves the breaker as it was.
    pub async fn run<T, F, Fut>(&self, op: &'static str, key: &str, f: F) -> Option<T>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        self.attempt(op, Some(key), Path::Request, f).await.ok()
    }

    /// Note an answer from Redis (read first: a store on every operation would move the
    /// cache line between cores).
    pub(super) fn mark_reachable(&self) {
        if !self.reachable.load(Ordering::Relaxed) {
            self.reachable.store(true, Ordering::Relaxed);
        }
    }

    /// Whether Redis answered the last operation (a value, an error reply, or one Cluster
    /// node down while others answer); false while the breaker is open, without a
    /// connection, or after a timeout or a broken connection.
    pub fn reachable(&self) -> bool {
        self.breaker.state() == BreakerState::Closed && self.reachable.load(Ordering::Relaxed)
    }

    /// The circuit breaker's state now.
    pub fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// The Redis address (or sentinels, or cluster seeds), passwords redacted.
    pub fn describe(&self) -> &str {
        self.store.describe()
    }

    /// The store itself, for what must not go through the breaker nor count as cache
    /// traffic (`redis_stats()`, the start-up configuration check, subscriptions).
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// The deadline of the work on no request's path (writes behind, lease renewals and
    /// releases): ten times the L2 deadline, at least 500 ms. The L2 deadline bounds what
    /// Redis adds to a request; background work queues behind other commands in the
    /// connection, so under a burst it would pass the request deadline (and trip the
    /// breaker) while Redis is healthy.
    pub(crate) fn background_deadline(&self) -> Duration {
        (self.deadline * 10).max(Duration::from_millis(500))
    }

    /// Run `f` on the store (for `key`'s node) under the breaker and `path`'s deadline,
    /// counting and classifying the outcome; why not, when there is no answer. On
    /// [`Path::Background`] a timeout is counted but does not count towards opening the
    /// breaker: a write that waited behind a burst says nothing about what a reader will
    /// wait (the readers' own timeouts, and connection errors on any path, still open it).
    pub(super) async fn attempt<T, F, Fut>(
        &self,
        op: &'static str,
        key: Option<&str>,
        path: Path,
        f: F,
    ) -> Result<T, NoAnswer>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let mut permit = match self.breaker.acquire(&self.store) {
            Ok(permit) => permit,
            Err(skip) => {
                Counters::incr(&self.counters.l2_skipped);
                if let Skip::ConnectFailed(why) = skip {
                    self.reachable.store(false, Ordering::Relaxed);
                    let e = L2Error::Connection(why);
                    self.counters.l2_error(&e);
                    self.owner.note_l2_error("connect", &e.to_string());
                    tracing::debug!(redis = %self.describe(), error = %e, "redis connect failed: breaker stays open");
                }
                return Err(NoAnswer::Skipped);
            }
        };
        let deadline = match path {
            Path::Request => self.deadline,
            Path::Background(deadline) => deadline,
        };
        let timer = self.counters.exported.l2_timer(op);
        let outcome = tokio::time::timeout(deadline, self.store.run(key, f)).await;
        drop(timer);
        permit.settled = true;
        match outcome {
            Ok(Ok(v)) => {
                self.mark_reachable();
                self.closed_by(permit.probe);
                Ok(v)
            }
            Ok(Err(L2Error::NotConnected)) => {
                // Nothing was sent (the connection is being made in the background): no
                // evidence either way, and no deadline paid.
                Counters::incr(&self.counters.l2_skipped);
                // Unreachable for now: with no connection nobody here can hear or invalidate.
                self.reachable.store(false, Ordering::Relaxed);
                self.note_not_connected(op);
                if permit.probe {
                    self.breaker.abandon_probe();
                }
                Err(NoAnswer::Skipped)
            }
            Ok(Err(e @ L2Error::Command(_))) => {
                // The server answered: it is up. Not a failure for the breaker (a probe that
                // gets an answer closes it), whatever the command it refused.
                self.reachable.store(true, Ordering::Relaxed);
                let why = e.to_string();
                self.counters.l2_error(&e);
                self.owner.note_l2_error(op, &why);
                tracing::debug!(redis = %self.describe(), op, error = %why, "redis refused a command");
                self.warn_refused(op, &why);
                self.closed_by(permit.probe);
                Err(NoAnswer::Refused)
            }
            Ok(Err(e)) => {
                self.counters.l2_error(&e);
                self.owner.note_l2_error(op, &e.to_string());
                tracing::debug!(redis = %self.describe(), op, error = %e, "redis operation failed");
                // One Cluster node down: the others answer (partly reachable), its keys
                // miss, and the others keep working.
                let node_down = matches!(e, L2Error::NodeDown(_));
                self.reachable.store(node_down, Ordering::Relaxed);
                if !node_down {
                    self.failed(permit.probe, &e.to_string());
                } else if permit.probe {
                    self.breaker.on_success(true);
                }
                Err(NoAnswer::Failed)
            }
            Err(_) => {
                Counters::incr(&self.counters.l2_timeouts);
                self.owner.note_l2_error(op, "deadline exceeded");
                tracing::debug!(redis = %self.describe(), op, ?deadline, "redis operation timed out");
                if let Path::Background(_) = path {
                    Counters::incr(&self.counters.l2_background_timeouts);
                    if permit.probe {
                        self.breaker.abandon_probe();
                    }
                } else {
                    self.reachable.store(false, Ordering::Relaxed);
                    self.failed(permit.probe, "deadline exceeded");
                }
                Err(NoAnswer::Failed)
            }
        }
    }

    /// An answer came: a probe's closes the breaker.
    fn closed_by(&self, probe: bool) {
        if self.breaker.on_success(probe) {
            self.owner.exported.publish_breaker(self.breaker_state());
            tracing::info!(redis = %self.describe(), "redis is back: circuit breaker closed");
        }
    }

    /// Give `health()` something to say while the first connection is still being made
    /// (a connect that hangs reports no error for a while); never hides an error seen.
    fn note_not_connected(&self, op: &'static str) {
        let none_yet = crate::sync::lock(&self.owner.last_l2_error).is_none();
        if none_yet {
            self.owner
                .note_l2_error(op, "not connected: connecting in the background");
        }
    }

    /// One WARN per cause (the reply's code: OOM, NOPERM, ERR...) and [`REFUSAL_WARN_EVERY`].
    pub(super) fn warn_refused(&self, op: &'static str, why: &str) {
        let cause = why.split_whitespace().next().unwrap_or("ERR");
        {
            let mut warned = crate::sync::lock(&self.refusals_warned);
            let now = Instant::now();
            if warned
                .get(cause)
                .is_some_and(|at| now.duration_since(*at) < REFUSAL_WARN_EVERY)
            {
                return;
            }
            if warned.len() >= 64 {
                warned.retain(|_, at| now.duration_since(*at) < REFUSAL_WARN_EVERY);
            }
            warned.insert(cause.to_owned(), now);
        }
        if cause == "OOM" {
            tracing::warn!(
                redis = %self.describe(), op, cause, error = why,
                "redis is full and refuses writes (maxmemory reached under noeviction): new entries stay in L1 only and leases are not taken (single-flight per instance); reads go on and the breaker stays closed. Set maxmemory-policy volatile-lru"
            );
        } else {
            tracing::warn!(
                redis = %self.describe(), op, cause, error = why,
                "redis refused a command: it is up, so the breaker stays closed; what it refuses is skipped and counted"
            );
        }
    }

    fn failed(&self, probe: bool, why: &str) {
        if self.breaker.on_failure(probe) {
            Counters::incr(&self.counters.breaker_openings);
            self.owner.exported.publish_breaker(self.breaker_state());
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
}
