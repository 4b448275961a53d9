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

use super::{L2Error, Link, RemoteStore};
use crate::stats::{BreakerState, Counters};

/// One WARN per cause of refusal (OOM, NOPERM...) this often at most.
const REFUSAL_WARN_EVERY: Duration = Duration::from_secs(60);

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// The outcome of a lookup that takes the lease when the entry is missing.
#[derive(Debug)]
pub enum LeaseRead {
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
pub enum L2Read {
    Hit(Vec<u8>),
    Miss,
    /// Failed, timed out, or skipped by the breaker: treat as a miss, do not trust L2 now.
    Unavailable,
}

/// One tier's handle on the guarded store. Tiers built beside each other on one
/// connection (answers, vectors, a layer's bodies) share the store, the breaker and the
/// reachability through [`for_tier`](Self::for_tier), and each counts its own
/// operations' errors, timeouts, skips and the breaker openings they cause in its own
/// [`Counters`]. The breaker gauge and the last error (for `health()`) describe the link,
/// not one tier's traffic: they stay in the counters of the tier that opened the store.
pub struct Guarded {
    link: Arc<Shared>,
    /// Where this tier's operations are counted.
    counters: Arc<Counters>,
}

/// What every tier's [`Guarded`] shares: one store, one breaker.
#[doc(hidden)]
pub struct Shared {
    store: Box<dyn RemoteStore>,
    /// False after an operation found Redis unreachable or too slow, true again after one
    /// got an answer (a value or an error reply) from some node.
    reachable: std::sync::atomic::AtomicBool,
    deadline: Duration,
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

/// Whose time an operation spends (see [`Guarded::attempt_within`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    /// A request waits for it: the L2 deadline, and its timeouts open the breaker.
    Request,
    /// Nobody waits for it (writes behind, lease renewals and releases).
    Background,
}

/// Why a guarded operation has no answer.
enum NoAnswer {
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
    fn acquire(&self, store: &dyn RemoteStore) -> Result<Permit<'_>, Skip> {
        match self.state.load(Ordering::Acquire) {
            CLOSED => Ok(Permit {
                breaker: self,
                probe: false,
                settled: false,
            }),
            OPEN => {
                let until = *self.open_until.lock().expect("lock poisoned");
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
            self.breaker.abandon_probe();
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
    pub fn for_tier(self: &Arc<Self>, counters: &Arc<Counters>) -> Arc<Guarded> {
        if Arc::ptr_eq(&self.counters, counters) {
            return Arc::clone(self);
        }
        Arc::new(Guarded {
            link: Arc::clone(&self.link),
            counters: Arc::clone(counters),
        })
    }

    /// Note an answer from Redis (read first: a store on every operation would move the
    /// cache line between cores).
    fn mark_reachable(&self) {
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
        self.attempt(op, fut).await.ok()
    }

    /// Run `op` under the deadline and the breaker, saying why when there is no answer.
    async fn attempt<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, L2Error>>,
    ) -> Result<T, NoAnswer> {
        self.attempt_within(op, fut, self.deadline, Path::Request)
            .await
    }

    /// The deadline of the work on no request's path (writes behind, lease renewals and
    /// releases): ten times the L2 deadline, at least 500 ms. The L2 deadline bounds what
    /// Redis adds to a request; background work queues behind other commands in the
    /// connection, so under a burst it would pass the request deadline (and trip the
    /// breaker) while Redis is healthy.
    pub fn background_deadline(&self) -> Duration {
        (self.deadline * 10).max(Duration::from_millis(500))
    }

    /// [`attempt`](Self::attempt) with a deadline of its own. On [`Path::Background`] a
    /// timeout is counted but does not count towards opening the breaker: a write that
    /// waited behind a burst says nothing about what a reader will wait (the readers' own
    /// timeouts, and connection errors on any path, still open it).
    async fn attempt_within<T>(
        &self,
        op: &'static str,
        fut: impl Future<Output = Result<T, L2Error>>,
        deadline: Duration,
        path: Path,
    ) -> Result<T, NoAnswer> {
        let mut permit = match self.breaker.acquire(&*self.store) {
            Ok(permit) => permit,
            Err(skip) => {
                Counters::incr(&self.counters.l2_skipped);
                if let Skip::ConnectFailed(why) = skip {
                    self.reachable.store(false, Ordering::Relaxed);
                    let e = L2Error::Connection(why);
                    Counters::incr(&self.counters.l2_errors);
                    self.counters.exported.l2_error(&e);
                    self.owner.note_l2_error("connect", &e.to_string());
                    tracing::debug!(redis = %self.describe(), error = %e, "redis connect failed: breaker stays open");
                }
                return Err(NoAnswer::Skipped);
            }
        };
        let timer = self.counters.exported.l2_timer(op);
        let outcome = tokio::time::timeout(deadline, fut).await;
        drop(timer);
        permit.settled = true;
        match outcome {
            Ok(Ok(v)) => {
                self.mark_reachable();
                if self.breaker.on_success(permit.probe) {
                    self.owner.exported.publish_breaker(self.breaker_state());
                    tracing::info!(redis = %self.describe(), "redis is back: circuit breaker closed");
                }
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
                Counters::incr(&self.counters.l2_errors);
                self.counters.exported.l2_error(&e);
                self.owner.note_l2_error(op, &why);
                tracing::debug!(redis = %self.describe(), op, error = %why, "redis refused a command");
                self.warn_refused(op, &why);
                if self.breaker.on_success(permit.probe) {
                    self.owner.exported.publish_breaker(self.breaker_state());
                    tracing::info!(redis = %self.describe(), "redis is back: circuit breaker closed");
                }
                Err(NoAnswer::Refused)
            }
            Ok(Err(e)) => {
                Counters::incr(&self.counters.l2_errors);
                self.counters.exported.l2_error(&e);
                self.owner.note_l2_error(op, &e.to_string());
                tracing::debug!(redis = %self.describe(), op, error = %e, "redis operation failed");
                // One Cluster node down: the others answer (partly reachable).
                self.reachable
                    .store(matches!(e, L2Error::NodeDown(_)), Ordering::Relaxed);
                if matches!(e, L2Error::NodeDown(_)) {
                    // One cluster node is down: its keys miss, the others keep working.
                    if permit.probe {
                        self.breaker.on_success(true);
                    }
                } else {
                    self.failed(permit.probe, &e.to_string());
                }
                Err(NoAnswer::Failed)
            }
            Err(_) => {
                Counters::incr(&self.counters.l2_timeouts);
                self.counters.exported.l2_timeout();
                self.owner.note_l2_error(op, "deadline exceeded");
                tracing::debug!(redis = %self.describe(), op, ?deadline, "redis operation timed out");
                if path == Path::Background {
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

    /// Give `health()` something to say while the first connection is still being made
    /// (a connect that hangs reports no error for a while); never hides an error seen.
    fn note_not_connected(&self, op: &'static str) {
        let none_yet = self
            .owner
            .last_l2_error
            .lock()
            .expect("lock poisoned")
            .is_none();
        if none_yet {
            self.owner
                .note_l2_error(op, "not connected: connecting in the background");
        }
    }

    /// One WARN per cause (the reply's code: OOM, NOPERM, ERR...) and [`REFUSAL_WARN_EVERY`].
    fn warn_refused(&self, op: &'static str, why: &str) {
        let cause = why.split_whitespace().next().unwrap_or("ERR");
        {
            let mut warned = self.refusals_warned.lock().expect("lock poisoned");
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
            self.counters.exported.breaker_openings.increment(1);
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

    pub async fn get(&self, key: &str) -> L2Read {
        match self.guarded("get", self.store.get(key)).await {
            Some(Some(bytes)) => L2Read::Hit(bytes),
            Some(None) => L2Read::Miss,
            None => L2Read::Unavailable,
        }
    }

    /// [`set`](Self::set) off every request's path: under the
    /// [`background_deadline`](Self::background_deadline), and a timeout does not open the
    /// breaker (the writes behind).
    /// `None` when it was not sent or got no answer in time (worth another try later),
    /// `Some(false)` when the server refused it.
    pub async fn set_in_background(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> Option<bool> {
        let deadline = self.background_deadline();
        let op = self.store.set(key, value, ttl);
        match self
            .attempt_within("set", op, deadline, Path::Background)
            .await
        {
            Ok(()) => Some(true),
            Err(NoAnswer::Refused) => {
                Counters::incr(&self.counters.l2_writes_refused);
                self.counters.exported.l2_write_refused.increment(1);
                Some(false)
            }
            Err(NoAnswer::Skipped | NoAnswer::Failed) => None,
        }
    }

    /// Write an entry under the configured deadline; false when it was not written. A write
    /// the server refused (OOM under `noeviction`...) is counted in `l2_writes_refused`.
    pub async fn set(&self, key: &str, value: Vec<u8>, ttl: Duration) -> bool {
        match self
            .attempt_within(
                "set",
                self.store.set(key, value, ttl),
                self.deadline,
                Path::Request,
            )
            .await
        {
            Ok(()) => true,
            Err(NoAnswer::Refused) => {
                Counters::incr(&self.counters.l2_writes_refused);
                self.counters.exported.l2_write_refused.increment(1);
                false
            }
            Err(NoAnswer::Skipped | NoAnswer::Failed) => false,
        }
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

    /// The lookup that takes the lease when the entry is missing (`SET key marker NX PX ttl
    /// GET`, in the entry's own key). After a lookup the server refused (OOM under
    /// `noeviction`, which refuses every `SET`; NOPERM; a server older than 7.0, which does
    /// not know `NX` with `GET`) the caller reads with a plain
    /// `GET` and fetches without a lease (counted in `leases_refused`), so for that key
    /// single-flight holds per instance, not across instances.
    pub async fn get_or_lease(&self, key: &str, marker: &[u8], ttl: Duration) -> LeaseRead {
        match self
            .attempt("get", self.store.get_or_lease(key, marker, ttl))
            .await
        {
            Ok(Some(bytes)) => LeaseRead::Found(bytes),
            Ok(None) => LeaseRead::Leased,
            // Counted by the caller, once per flight that goes on without a lease.
            Err(NoAnswer::Refused) => LeaseRead::Refused,
            Err(NoAnswer::Skipped | NoAnswer::Failed) => LeaseRead::Unavailable,
        }
    }

    /// Release the lease at `key` if it holds `token` (in the background: under the
    /// background deadline, its timeouts do not open the breaker). `None`: no answer.
    pub async fn release(&self, key: &str, token: &[u8]) -> Option<bool> {
        let op = self.store.release(key, token);
        let deadline = self.background_deadline();
        self.attempt_within("release", op, deadline, Path::Background)
            .await
            .ok()
    }

    /// Extend the lease at `key` to `ttl` if it holds `token`, in the background, under
    /// a deadline of a third of `ttl` (the next renewal is due then) at most.
    pub async fn renew(&self, key: &str, token: &[u8], ttl: Duration) -> Option<bool> {
        let op = self.store.renew(key, token, ttl);
        let deadline = self.background_deadline().min(ttl / 3).max(self.deadline);
        self.attempt_within("renew", op, deadline, Path::Background)
            .await
            .ok()
    }

    /// A waiter's look at the marker it waits on: one without expiry, or living longer
    /// than `ttl`, gets an end (see `commands::expire_stale_marker`). True when it did.
    pub async fn expire_stale_marker(
        &self,
        key: &str,
        ttl: Duration,
        is_marker: fn(&[u8]) -> bool,
    ) -> bool {
        let op = self.store.expire_stale_marker(key, ttl, is_marker);
        let changed = self
            .guarded("expire_stale_marker", op)
            .await
            .unwrap_or(false);
        if changed {
            Counters::incr(&self.counters.stale_leases_expired);
        }
        changed
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
        fresh: u64,
    ) -> Option<u64> {
        let op = self
            .store
            .hset_publish(key, field, value, channel, message, fresh);
        self.guarded("hset_publish", op).await
    }

    /// Read the generations record (see `RemoteStore::load_generations`) under `deadline`,
    /// outside the breaker: it runs in the background, retried by its owner, and must not
    /// starve behind request traffic that keeps the breaker open on a slow link. Failures
    /// are noted for `health()` and refusals warned about, like any operation's.
    pub async fn load_generations(
        &self,
        key: &str,
        fresh: u64,
        all: bool,
        deadline: Duration,
    ) -> Option<super::Counts> {
        let op = "load_generations";
        let outcome = tokio::time::timeout(deadline, self.store.load_generations(key, fresh, all));
        match outcome.await {
            Ok(Ok(v)) => {
                self.mark_reachable();
                Some(v)
            }
            Ok(Err(L2Error::NotConnected)) => None,
            Ok(Err(e)) => {
                let why = e.to_string();
                self.counters.note_l2_error(op, &why);
                if matches!(e, L2Error::Command(_)) {
                    self.warn_refused(op, &why);
                }
                None
            }
            Err(_) => {
                self.counters
                    .note_l2_error(op, &format!("no answer within {deadline:?}"));
                None
            }
        }
    }

    // Capped hashes and multi-key reads, under the same deadline and breaker.

    /// See `RemoteStore::hset_capped`; false when it was not written.
    pub async fn hset_capped(
        &self,
        keys: &[String],
        field: &[u8],
        value: &[u8],
        cap: usize,
        ttl: Duration,
    ) -> bool {
        let now = crate::now_ms();
        let op = self.store.hset_capped(keys, field, value, cap, now, ttl);
        self.guarded("hset_capped", op).await.is_some()
    }

    /// `HGETALL` of each key in one round trip; `None` when Redis did not answer.
    pub async fn hgetall_many(&self, keys: &[String]) -> Option<super::Hashes> {
        self.guarded("hgetall", self.store.hgetall_many(keys)).await
    }

    /// `MGET keys`; `None` when Redis did not answer.
    pub async fn mget(&self, keys: &[String]) -> Option<Vec<Option<Vec<u8>>>> {
        self.guarded("mget", self.store.mget(keys)).await
    }

    /// `HDEL key fields...`; false when Redis did not answer.
    pub async fn hdel(&self, key: &str, fields: &[Vec<u8>]) -> bool {
        self.guarded("hdel", self.store.hdel(key, fields))
            .await
            .is_some()
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
