//! The generic engine of llm-cache, `TieredCache<V>`: L1 -> single-flight -> L2 -> fetch ->
//! fill, for any serde value. It owns the tiers, their builder and config, flights, leases,
//! invalidation, the envelope, digests, stats and health. It knows nothing of LLMs: the
//! crate graph checks it (this crate depends on no LLM code, and no HTTP or TLS stack in its
//! default build).
//!
//! A flight's leader looks in L1 and L2 from its own task (an L2 hit costs no task hop); a
//! miss runs the fetch there too, and if the caller goes away the fetch goes on in a task of
//! its own, so cancelling a caller never cancels a fetch that is paid for.
#![warn(missing_docs)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[doc(hidden)]
pub mod builder;
#[doc(hidden)]
pub mod cached;
#[doc(hidden)]
pub mod codec;
#[doc(hidden)]
pub mod config;
mod connect;
mod coordination;
mod detach;
use self::coordination::Next;
#[doc(hidden)]
pub mod digest;
#[doc(hidden)]
pub mod envelope;
#[doc(hidden)]
pub mod error;
#[doc(hidden)]
pub mod health;
#[cfg(feature = "axum")]
pub mod http;
#[doc(hidden)]
pub mod inflight;
#[doc(hidden)]
pub mod invalidation;
#[doc(hidden)]
pub mod keyspace;
#[doc(hidden)]
pub mod l1;
#[doc(hidden)]
pub mod l2;
#[doc(hidden)]
pub mod lease;
mod many;
mod read;
#[doc(hidden)]
pub mod redis_stats;
#[doc(hidden)]
pub mod stats;
mod stop;
#[doc(hidden)]
pub mod sync;
mod try_fetch;
mod write_behind;

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use futures_util::FutureExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

pub use self::builder::TieredCacheBuilder;
pub use self::cached::{AnswerStatus, CacheStatus, Cached, FetchOptions};
pub use self::codec::{Codec, JsonCodec, Weigher, default_weight};
pub use self::connect::Redis;
pub use self::digest::Digest;
pub use self::envelope::{Envelope, EnvelopeError};
pub use self::error::{Error, ErrorKind, Result};
pub use self::health::{Health, L2Health};
pub use self::keyspace::Keyspace;
pub use self::l2::{Connection, Guarded};
pub use self::redis_stats::{DEFAULT_SCAN_LIMIT, RedisStats};
pub use self::stats::{BreakerState, Stats};
pub use self::try_fetch::TryFetchError;
/// The redis crate the engine runs on, for the commands a layer runs with [`Guarded::run`].
pub use redis;

use crate::codec::Hooks;
use crate::config::Config;
use crate::digest::DigestHasherBuilder;
use crate::inflight::{Inflight, Join, Leader};
use crate::invalidation::Invalidation;
use crate::l1::{L1, L1Entry};
use crate::stats::{Counters, Readings, ShortKey, Timer};

/// Where a flight's value came from, as the flight reports it to its callers.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Origin {
    L1,
    L2,
    Fetched,
}

struct Landed<V> {
    value: Arc<V>,
    created_at_ms: u64,
    origin: Origin,
}

impl<V> Landed<V> {
    fn new(value: Arc<V>, created_at_ms: u64, origin: Origin) -> Self {
        Landed {
            value,
            created_at_ms,
            origin,
        }
    }

    /// What the flight's leader answers: the status follows where the value came from.
    fn cached(&self, digest: Digest) -> Cached<V> {
        let status = match self.origin {
            Origin::L1 => CacheStatus::HitL1,
            Origin::L2 => CacheStatus::HitL2,
            Origin::Fetched => CacheStatus::Miss,
        };
        Cached::new(Arc::clone(&self.value), status, self.created_at_ms, digest)
    }

    /// What a caller that joined the flight answers.
    fn coalesced(self, digest: Digest) -> Cached<V> {
        Cached::new(
            self.value,
            CacheStatus::Coalesced,
            self.created_at_ms,
            digest,
        )
    }
}

impl<V> Clone for Landed<V> {
    fn clone(&self) -> Self {
        Landed::new(Arc::clone(&self.value), self.created_at_ms, self.origin)
    }
}

/// A two-tier cache for any serde value: moka in process, Redis shared, one fetch per key
/// at a time. Cheap to clone; clones share everything. Dropping the last clone loses the
/// Redis writes still queued; [`TieredCache::close`] says what an orderly stop keeps.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> llm_cache_engine::Result<()> {
/// let cache = llm_cache_engine::TieredCache::<u32>::builder().build().await?; // no Redis: L1-only
/// let key = llm_cache_engine::Digest::of("any bytes that identify the value");
/// let first = cache.get_or_fetch(key, || async { Ok(7) }).await?; // a miss: fetched
/// let again = cache.get_or_fetch(key, || async { Ok(0) }).await?; // a hit: not called
/// assert!(!first.status().is_hit() && again.status().is_hit() && *again.value() == 7);
/// # Ok(()) }
/// ```
pub struct TieredCache<V> {
    inner: Arc<Inner<V>>,
}

impl<V> Clone for TieredCache<V> {
    fn clone(&self) -> Self {
        TieredCache {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<V> fmt::Debug for TieredCache<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredCache")
            .field("config", &self.inner.config)
            .field("inflight", &self.inner.inflight.len())
            .finish_non_exhaustive()
    }
}

struct Inner<V> {
    config: Config,
    keyspace: Keyspace,
    l1: L1<V>,
    /// How values become L2 payloads and what they weigh in L1 (L2 reads and fills only).
    hooks: Hooks<V>,
    l2: Option<Arc<Guarded>>,
    inflight: Arc<Inflight<Landed<V>>>,
    writes: Arc<Semaphore>,
    /// Bounds the L2 lookups of `get_or_fetch_many` in flight at once (see many.rs).
    bulk_reads: Semaphore,
    counters: Arc<Counters>,
    /// The invalidation channel's state and the namespace generations (scale-out).
    invalidation: Arc<Invalidation>,
    /// The task listening on the invalidation channel; stops with the cache.
    subscriber: std::sync::OnceLock<tokio_util::task::AbortOnDropHandle<()>>,
    /// Values on their way to L2 that this instance holds the lease for, until the write
    /// lands or the lease is released: a later flight of this instance is answered from
    /// here (L1 may have evicted the value already) instead of waiting on its own lease.
    writing: DashMap<Digest, Writing<V>, DigestHasherBuilder>,
    /// The background L2 writes under way, per key: an invalidation cancels them, so a
    /// write that lands after the invalidation's UNLINK cannot bring the entry back.
    pending_writes: write_behind::PendingWrites,
    /// Leases this instance may still hold while it releases them.
    unreleased: Arc<lease::Unreleased>,
    /// Unix ms until which lookups use a plain `GET` (the lease lookup was refused; 0: never).
    lease_refused_until_ms: std::sync::atomic::AtomicU64,
    /// How lookups go while L2 hits dominate; see coordination.rs.
    lookup_mode: coordination::LookupMode,
    /// Set by `close()`: flights take no more leases.
    closed: std::sync::atomic::AtomicBool,
}

/// A value [`Inner::writing`] holds.
struct Writing<V> {
    value: Arc<V>,
    created_at_ms: u64,
    expires_at_ms: u64,
}

#[doc(hidden)]
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, duration_ms)
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl<V> TieredCache<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Start configuring a cache.
    pub fn builder() -> TieredCacheBuilder<V> {
        TieredCacheBuilder::new()
    }

    #[doc(hidden)]
    pub fn from_parts_with(
        config: Config,
        l2: Option<Arc<Guarded>>,
        counters: Arc<Counters>,
        hooks: Hooks<V>,
    ) -> Self {
        let writes = Arc::new(Semaphore::new(config.l2_write_concurrency));
        let keyspace = Keyspace::new(&config.key_prefix);
        let subscriber = l2.is_some() && config.topology.invalidation;
        // A tier beside another on one connection counts its own Redis traffic.
        let l2 = l2.map(|l2| l2.for_tier(&counters));
        let cache = TieredCache {
            inner: Arc::new(Inner {
                l1: L1::new(config.l1_max_bytes),
                hooks,
                l2,
                inflight: Inflight::new(),
                writes,
                bulk_reads: Semaphore::new(many::BULK_READS),
                counters,
                invalidation: Arc::new(Invalidation::new(
                    &keyspace,
                    subscriber,
                    config.unsynced_grace,
                )),
                keyspace,
                subscriber: std::sync::OnceLock::new(),
                writing: DashMap::with_hasher(DigestHasherBuilder),
                pending_writes: write_behind::PendingWrites::default(),
                unreleased: Arc::default(),
                lease_refused_until_ms: std::sync::atomic::AtomicU64::new(0),
                lookup_mode: coordination::LookupMode::default(),
                closed: std::sync::atomic::AtomicBool::new(false),
                config,
            }),
        };
        cache.start_invalidation();
        cache.inner.counters.publish(&cache.inner.readings());
        crate::stats::spawn_gauge_upkeep(Arc::downgrade(&cache.inner), |inner| {
            inner.retune_lookups();
            (&inner.counters, inner.readings())
        });
        cache
    }

    /// The value for `digest` from L1 or L2, or else the value `fetch` produces. Concurrent
    /// callers for one digest share one L2 read and at most one fetch: the first leads the
    /// flight (status `HitL2` or `Miss`), the others wait for its outcome (`Coalesced`).
    /// With Redis, a lease makes it one fetch per key across instances too.
    ///
    /// # Errors
    ///
    /// - `fetch`'s own error, unchanged, for every caller of the flight (each gets a
    ///   clone). Errors are never cached: the next call fetches again.
    /// - `FetchAborted` for every caller of the flight when `fetch` panicked; the flight
    ///   is removed, never left stuck.
    /// - `Timeout` for this caller alone when it waited longer than the `waiter_deadline`
    ///   (default 300 s); the flight goes on and its value still fills the tiers.
    ///
    /// Redis trouble is never an error: L2 fails open, and a corrupt entry is a miss.
    ///
    /// # Cancellation
    ///
    /// Once `fetch` has started, dropping this future does not cancel it (it goes on in a
    /// task of its own): other callers keep waiting on it, and its value fills L1 and, in the
    /// background, L2. A caller dropped while its flight was still looking in L1 and L2
    /// gives the flight up, and a waiting caller leads one anew. Dropping a waiter does
    /// nothing to the flight.
    pub async fn get_or_fetch<F, Fut>(&self, digest: Digest, fetch: F) -> Result<Cached<V>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V>> + Send + 'static,
    {
        self.get_or_fetch_with(digest, &FetchOptions::default(), fetch)
            .await
    }

    /// [`get_or_fetch`](Self::get_or_fetch) with per-call options (refresh, no-store,
    /// TTL). Errors and cancellation as [`get_or_fetch`](Self::get_or_fetch).
    pub async fn get_or_fetch_with<F, Fut>(
        &self,
        digest: Digest,
        options: &FetchOptions,
        fetch: F,
    ) -> Result<Cached<V>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V>> + Send + 'static,
    {
        if !options.refresh
            && let Some(hit) = self.get(&digest).await
        {
            return Ok(hit);
        }
        self.get_or_fetch_lazy_after_l1(digest, options, move || fetch)
            .await
    }

    /// [`get_or_fetch_with`](Self::get_or_fetch_with) for a caller that has just looked
    /// `digest` up in L1 ([`get`](Self::get)) and not found it (a refresh need not look):
    /// no second L1 lookup first (a flight's lookup still looks in L1, so a value that
    /// landed in between is found there), and the fetch itself is made only when it will
    /// run: `make` is called (in the caller's task, at most once) when this caller leads a
    /// flight that missed both tiers, so a caller that hits never pays for what the fetch
    /// must own (such as a copy of the request).
    #[doc(hidden)]
    pub async fn get_or_fetch_lazy_after_l1<M, F, Fut>(
        &self,
        digest: Digest,
        options: &FetchOptions,
        make: M,
    ) -> Result<Cached<V>>
    where
        M: FnOnce() -> F + Send,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V>> + Send + 'static,
    {
        let inner = &self.inner;
        // Requests that went past L1: an L1 hit's whole time is `l1_get`.
        let _total = Timer::start(&inner.counters.exported.total);
        let wait = options.wait.unwrap_or(inner.config.waiter_deadline);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let waiter = match inner.inflight.join_or_lead(digest, options.refresh) {
                Join::Leader(leader) => {
                    return self.lead(leader, digest, options, make, deadline).await;
                }
                Join::Waiter(w) => w,
            };
            Counters::incr(&inner.counters.coalesced);
            match tokio::time::timeout_at(deadline, waiter.wait()).await {
                Ok(Some(outcome)) => return outcome.map(|landed| landed.coalesced(digest)),
                // Its leader was cancelled during the lookup: join or lead anew. (The
                // exported counter, monotonic, keeps the join.)
                Ok(None) => Counters::decr(&inner.counters.coalesced),
                Err(_) => return Err(inner.waiter_timed_out()),
            }
        }
    }

    /// Lead a flight. Its [`lookup`](Self::lookup) runs in the caller's own task: an L2 hit
    /// costs no task hop; cancelling the caller there abandons the flight to its waiters. A
    /// miss's fetch runs in the caller's task too, [`Detached`](detach::Detached): if the
    /// caller goes away (or gives up at the deadline) it goes on in a task of its own, so a
    /// fetch that is paid for outlives its caller.
    async fn lead<M, F, Fut>(
        &self,
        leader: Leader<Landed<V>>,
        digest: Digest,
        options: &FetchOptions,
        make: M,
        deadline: tokio::time::Instant,
    ) -> Result<Cached<V>>
    where
        M: FnOnce() -> F + Send,
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V>> + Send + 'static,
    {
        let inner = &self.inner;
        // A refresh never answers from a tier; it still takes the lease when it can.
        let next = if options.refresh {
            Next::Probe
        } else {
            match inner.lookup(&digest, options).await {
                Ok(landed) => {
                    let out = landed.cached(digest);
                    leader.complete(Ok(landed));
                    return Ok(out);
                }
                Err(next) => next,
            }
        };
        let fetch = make();
        let task_inner = Arc::clone(inner);
        let options = options.clone();
        // The flight outlives its leader's call; its span says whose it is.
        let flight_span = tracing::debug_span!(
            "llm_cache.flight",
            key = %ShortKey(digest),
            upstream_attempts = tracing::field::Empty,
        );
        let work = async move {
            let work = Arc::clone(&task_inner).fill(digest, options, next, fetch);
            let work = tracing::Instrument::instrument(work, flight_span);
            let outcome = match AssertUnwindSafe(work).catch_unwind().await {
                Ok(outcome) => outcome,
                Err(panic) => {
                    Counters::incr(&task_inner.counters.fetch_errors);
                    Err(Error::new(
                        ErrorKind::FetchAborted,
                        format!("the fetch panicked: {}", panic_message(&*panic)),
                    ))
                }
            };
            let answer = match &outcome {
                Ok(landed) => Ok(landed.cached(digest)),
                Err(e) => Err(Error::clone(e)),
            };
            leader.complete(outcome);
            answer
        };
        // In this task while its caller waits (no task hop, no wake-up across threads); in
        // a task of its own if the caller goes away or gives up at the deadline.
        match tokio::time::timeout_at(deadline, detach::Detached::new(work)).await {
            Ok(answer) => answer,
            Err(_) => Err(inner.waiter_timed_out()),
        }
    }

    /// The value in L1, if any. Never goes to the network, never fails; dropping the future
    /// changes nothing.
    #[inline]
    pub async fn get(&self, digest: &Digest) -> Option<Cached<V>> {
        // One lookup in 64 is timed (stats.rs says why and how it picks).
        let started =
            crate::stats::sample_l1(&self.inner.counters.l1_hits, digest).then(Instant::now);
        let entry = self.inner.l1_get(digest).await;
        if let Some(started) = started {
            let l1_get = &self.inner.counters.exported.l1_get;
            l1_get.record(started.elapsed());
        }
        let entry = entry?;
        Counters::incr(&self.inner.counters.l1_hits);
        Some(Cached::new(
            entry.value,
            CacheStatus::HitL1,
            entry.created_at_ms,
            *digest,
        ))
    }

    /// The value in L1, else in L2 (promoting it to L1). Never calls a fetch function, and
    /// joins no flight. Never fails: Redis trouble or a corrupt entry is `None`.
    pub async fn fetch_stored(&self, digest: &Digest) -> Option<Cached<V>> {
        if let Some(hit) = self.get(digest).await {
            return Some(hit);
        }
        // What L2 gives is an `Origin::L2` landing: a `HitL2`.
        let landed = self.inner.read_l2(digest).await?;
        Some(landed.cached(*digest))
    }

    /// Store `value` under `digest` in L1 now and in L2 in the background. Returns false
    /// when the value was too large to store.
    ///
    /// # Errors
    ///
    /// `Codec` when `value` cannot be serialised; nothing is stored then. A failed L2
    /// write is counted, not returned.
    ///
    /// # Cancellation
    ///
    /// Dropping the future before it returns may leave the value out of L1 or L2; once it
    /// has returned, the L2 write goes on in the background.
    pub async fn insert(&self, digest: Digest, value: V, options: &FetchOptions) -> Result<bool> {
        self.inner
            .store(digest, &Arc::new(value), now_ms(), options.ttl, &mut None)
            .await
    }

    /// Remove `digest` from L1 and from L2, and tell the other instances to drop it from
    /// their L1. A flight of `digest` running now is detached: its callers still get its
    /// outcome, later callers start a new flight.
    ///
    /// # Errors
    ///
    /// `Redis` when Redis could not confirm the removal (down, slow, breaker open), or
    /// removed it but could not tell the other instances. The L1 removal happens either way.
    ///
    /// # Cancellation
    ///
    /// Dropping the future may leave the Redis removal or the announcement undone: call it
    /// again.
    pub async fn invalidate(&self, digest: &Digest) -> Result<()> {
        self.inner.invalidation.note_invalidation();
        self.inner.l1.remove(digest).await;
        self.inner.writing.remove(digest);
        self.inner.pending_writes.cancel(digest);
        self.inner.inflight.detach(digest);
        if let Some(l2) = &self.inner.l2 {
            let key = self.inner.l2_key(digest);
            if !l2.unlink(&key).await {
                return Err(Error::new(
                    ErrorKind::Redis,
                    format!(
                        "could not remove the entry from redis at {} (down, slow or breaker open)",
                        l2.describe()
                    ),
                ));
            }
            // After the UNLINK: an instance that drops its L1 copy must find L2 empty.
            let state = &self.inner.invalidation;
            if !l2
                .publish(state.channel(), &invalidation::key_message(digest))
                .await
            {
                return Err(Error::new(
                    ErrorKind::Redis,
                    format!(
                        "removed from redis at {}, but could not tell the other instances: their L1 may keep the entry until its L1 TTL",
                        l2.describe()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Drop every L1 entry (L2 is left alone).
    pub fn clear_l1(&self) {
        self.inner.l1.clear();
        self.inner.writing.clear();
    }

    /// Apply pending L1 evictions and expirations now, so `stats()` is exact.
    pub async fn run_pending_tasks(&self) {
        self.inner.l1.run_pending_tasks().await;
    }

    /// Count a caller that was answered by another caller's work without a flight of the
    /// engine's own (a consumer joining a streamed flight).
    #[doc(hidden)]
    pub fn count_coalesced(&self) {
        Counters::incr(&self.inner.counters.coalesced);
    }

    /// Flights in progress now. Returns to zero when the cache is idle.
    pub fn inflight(&self) -> usize {
        self.inner.inflight.len()
    }

    /// A snapshot of the counters. L1 figures are as moka last settled them.
    pub fn stats(&self) -> Stats {
        let (counters, r) = (&self.inner.counters, self.inner.readings());
        counters.publish(&r);
        counters.snapshot(r.inflight, r.breaker, r.l1_entries, r.l1_bytes)
    }

    /// The Redis key of `digest`: `{prefix}:{<hex>}` (the braces are a Cluster hash tag).
    pub fn l2_key(&self, digest: &Digest) -> String {
        self.inner.l2_key(digest)
    }

    #[doc(hidden)]
    pub fn counters(&self) -> &Arc<Counters> {
        &self.inner.counters
    }

    /// The configured L1 and L2 lifetimes.
    #[doc(hidden)]
    pub fn ttls(&self) -> (Duration, Duration) {
        (self.inner.config.l1_ttl, self.inner.config.l2_ttl)
    }

    /// This cache's Redis (none when it is L1-only) and the names of its keys there: how a
    /// layer on the engine keeps keys of its own beside the entries, under the same breaker,
    /// deadline and counters ([`Guarded::run`]) and the same prefix ([`Keyspace::layer_key`]).
    pub fn l2_parts(&self) -> (Option<&Arc<Guarded>>, &Keyspace) {
        (self.inner.l2.as_ref(), &self.inner.keyspace)
    }
}

impl<V: Send + Sync + 'static> Inner<V> {
    /// What the gauges show: L1 as moka last settled it, flights, the breaker.
    fn readings(&self) -> Readings {
        Readings {
            l1_entries: self.l1.entry_count(),
            l1_bytes: self.l1.weighted_size(),
            inflight: self.inflight.len() as u64,
            breaker: self
                .l2
                .as_ref()
                .map_or(BreakerState::Disabled, |l2| l2.breaker_state()),
        }
    }
}

impl<V> Inner<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn l2_key(&self, digest: &Digest) -> String {
        self.keyspace.entry(digest)
    }

    /// The L1 entry of `digest`, if this instance may serve it now (see invalidation.rs:
    /// while it cannot hear invalidations, only for a bounded time).
    #[inline]
    async fn l1_get(&self, digest: &Digest) -> Option<L1Entry<V>> {
        let entry = self.l1.get(digest).await?;
        if self
            .invalidation
            .serves_l1(entry.stored_at_ms, || self.l2_reachable())
        {
            return Some(entry);
        }
        Counters::incr(&self.counters.unsynced_skips);
        None
    }

    /// Whether Redis answers at all (some node of it, for a Cluster).
    fn l2_reachable(&self) -> bool {
        self.l2.as_ref().is_some_and(|l2| l2.reachable())
    }

    /// Put `value` in L1, noting the store for the invalidation state (an entry stored
    /// while nobody listens is cleared when the instance becomes current).
    async fn fill_l1(
        &self,
        digest: Digest,
        value: Arc<V>,
        created_at_ms: u64,
        ttl: Duration,
        weight: u32,
    ) {
        self.invalidation.note_l1_store();
        let entry = L1Entry::new(value, created_at_ms, ttl, weight);
        self.l1.insert(digest, entry).await;
    }

    /// Whether L2 may be read now (see invalidation.rs); counts a refusal.
    fn l2_readable(&self) -> bool {
        if self.invalidation.serves_l2(|| self.l2_reachable()) {
            return true;
        }
        Counters::incr(&self.counters.unsynced_skips);
        false
    }

    fn waiter_timed_out(&self) -> Error {
        Counters::incr(&self.counters.waiter_timeouts);
        Error::new(
            ErrorKind::Timeout,
            format!(
                "gave up waiting for the flight after the waiter deadline ({:?})",
                self.config.waiter_deadline
            ),
        )
    }

    /// A flight's lookup: L1 again (a flight may have just landed), a value this instance
    /// is still writing to L2, then L2 (taking the lease when the entry is missing, in the
    /// same round trip). `Err` says how the fill goes on.
    async fn lookup(&self, digest: &Digest, options: &FetchOptions) -> Result<Landed<V>, Next> {
        if let Some(landed) = self.in_memory(digest).await {
            return Ok(landed);
        }
        self.look_in_l2(digest, options).await
    }

    /// The value in this process: in L1, or being written to L2 by this instance.
    async fn in_memory(&self, digest: &Digest) -> Option<Landed<V>> {
        if let Some(entry) = self.l1_get(digest).await {
            Counters::incr(&self.counters.l1_hits);
            return Some(Landed::new(entry.value, entry.created_at_ms, Origin::L1));
        }
        self.still_writing(digest)
    }

    /// The value this instance is writing to L2 under `digest`, if any and not expired.
    /// Served from memory like an L1 hit, and counted as one.
    fn still_writing(&self, digest: &Digest) -> Option<Landed<V>> {
        let w = self.writing.get(digest)?;
        if now_ms() >= w.expires_at_ms {
            return None;
        }
        Counters::incr(&self.counters.l1_hits);
        Some(Landed::new(
            Arc::clone(&w.value),
            w.created_at_ms,
            Origin::L1,
        ))
    }

    /// A flight's work after its lookup missed: coordinate with other instances, fetch,
    /// fill both tiers.
    async fn fill<F, Fut>(
        self: Arc<Self>,
        digest: Digest,
        options: FetchOptions,
        next: Next,
        fetch: F,
    ) -> Result<Landed<V>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V>> + Send + 'static,
    {
        // Across instances: fetch holding the lease, or wait for the instance that holds it.
        let mut lease = match self.coordinate(&digest, &options, next).await {
            Ok(landed) => return Ok(landed),
            Err(lease) => lease,
        };
        Counters::incr(&self.counters.misses);
        Counters::incr(&self.counters.fetches);
        let fetching = Timer::start(&self.counters.exported.upstream);
        let fetched = self.fetch_holding(lease.as_ref().as_slice(), fetch()).await;
        drop(fetching);
        let value = match fetched {
            Ok(v) => Arc::new(v),
            Err(e) => {
                Counters::incr(&self.counters.fetch_errors);
                self.release_lease(lease.take());
                return Err(e);
            }
        };
        let created_at_ms = now_ms();
        if !options.no_store
            && let Err(e) = self
                .store(digest, &value, created_at_ms, options.ttl, &mut lease)
                .await
        {
            tracing::warn!(error = %e, "fetched value could not be encoded; served, not stored");
        }
        // Not handed to a write (no-store, too large): free it for the waiters now.
        self.release_lease(lease.take());
        Ok(Landed::new(value, created_at_ms, Origin::Fetched))
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "non-string panic payload"
    }
}
