//! `TieredCache<V>`: L1 -> single-flight -> L2 -> fetch -> fill, for any serde value.
//! It knows nothing about LLMs. A flight's leader looks in L1 and L2 from its own task (an
//! L2 hit costs no task hop); a miss runs the fetch in a detached task, so cancelling a
//! caller never cancels a fetch that is paid for.

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use futures_util::FutureExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

use crate::builder::{Config, TieredCacheBuilder};
use crate::digest::{Digest, DigestHasherBuilder};
use crate::envelope;
use crate::error::{Error, ErrorKind, Result};
use crate::inflight::{Inflight, Join, Leader};
use crate::invalidation::{self, AbortOnDrop, Invalidation};
use crate::keyspace::Keyspace;
use crate::l1::{L1, L1Entry};
use crate::l2::{Guarded, L2Read};
use crate::lease::{self, Lease};
use crate::metrics::{BreakerState, Counters, Readings, ShortKey, Stats, Timer};

/// Where an answer came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CacheStatus {
    /// Served from the in-process tier.
    HitL1,
    /// Served from Redis (and promoted to L1).
    HitL2,
    /// Not cached anywhere: this caller's flight fetched it.
    Miss,
    /// Joined a flight another caller started, and got its answer.
    Coalesced,
    /// The cache was bypassed on request.
    Bypass,
}

impl CacheStatus {
    /// True for answers that cost no fetch of this caller's own (L1, L2, coalesced).
    pub fn is_hit(self) -> bool {
        matches!(
            self,
            CacheStatus::HitL1 | CacheStatus::HitL2 | CacheStatus::Coalesced
        )
    }

    /// A short lower-case name (`l1`, `l2`, `miss`, `coalesced`, `bypass`).
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::HitL1 => "l1",
            CacheStatus::HitL2 => "l2",
            CacheStatus::Miss => "miss",
            CacheStatus::Coalesced => "coalesced",
            CacheStatus::Bypass => "bypass",
        }
    }
}

impl fmt::Display for CacheStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A value together with where it came from and how old it is.
#[derive(Debug)]
pub struct Cached<V> {
    value: Arc<V>,
    status: CacheStatus,
    created_at_ms: u64,
    digest: Digest,
}

impl<V> Clone for Cached<V> {
    fn clone(&self) -> Self {
        Cached {
            value: Arc::clone(&self.value),
            status: self.status,
            created_at_ms: self.created_at_ms,
            digest: self.digest,
        }
    }
}

impl<V> Cached<V> {
    pub(crate) fn new(
        value: Arc<V>,
        status: CacheStatus,
        created_at_ms: u64,
        digest: Digest,
    ) -> Self {
        Cached {
            value,
            status,
            created_at_ms,
            digest,
        }
    }

    /// The value.
    pub fn value(&self) -> &V {
        &self.value
    }

    /// The shared value, without copying it.
    pub fn into_arc(self) -> Arc<V> {
        self.value
    }

    /// Where it came from.
    pub fn status(&self) -> CacheStatus {
        self.status
    }

    /// When the value was first fetched (for hits, possibly by another process).
    pub fn created_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.created_at_ms)
    }

    /// How long ago the value was fetched; zero for a fresh fetch.
    pub fn age(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.created_at_ms))
    }

    /// The key's digest; `digest().to_hex()` is the Redis key's suffix.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    pub(crate) fn created_at_ms(&self) -> u64 {
        self.created_at_ms
    }
}

impl<V> Deref for Cached<V> {
    type Target = V;
    fn deref(&self) -> &V {
        &self.value
    }
}

/// Per-call options of [`TieredCache::get_or_fetch_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct FetchOptions {
    pub(crate) refresh: bool,
    pub(crate) no_store: bool,
    pub(crate) ttl: Option<Duration>,
    /// How long this caller waits for the flight, instead of the waiter deadline (the
    /// driver of a streamed flight waits as long as the stream may last).
    pub(crate) wait: Option<Duration>,
}

impl FetchOptions {
    /// Default options: read every tier, store the answer with the configured TTLs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Skip the read: never answer from a tier, fetch anew and store the result.
    pub fn refresh(mut self, yes: bool) -> Self {
        self.refresh = yes;
        self
    }

    /// Do not store what is fetched in any tier.
    pub fn no_store(mut self, yes: bool) -> Self {
        self.no_store = yes;
        self
    }

    /// Store with this L2 lifetime instead of the configured one; L1 keeps it as a ceiling.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
}

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
    /// What the flight's leader answers: the status follows where the value came from.
    fn cached(&self, digest: Digest) -> Cached<V> {
        let status = match self.origin {
            Origin::L1 => CacheStatus::HitL1,
            Origin::L2 => CacheStatus::HitL2,
            Origin::Fetched => CacheStatus::Miss,
        };
        Cached::new(Arc::clone(&self.value), status, self.created_at_ms, digest)
    }
}

impl<V> Clone for Landed<V> {
    fn clone(&self) -> Self {
        Landed {
            value: Arc::clone(&self.value),
            created_at_ms: self.created_at_ms,
            origin: self.origin,
        }
    }
}

/// A two-tier cache for any serde value: moka in process, Redis shared, one fetch per key
/// at a time. Cheap to clone; clones share everything.
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
    /// The names of this cache's keys and channel in Redis.
    keyspace: Keyspace,
    l1: L1<V>,
    l2: Option<Arc<Guarded>>,
    inflight: Arc<Inflight<Landed<V>>>,
    writes: Arc<Semaphore>,
    counters: Arc<Counters>,
    /// The invalidation channel's state and the namespace generations (scale-out).
    invalidation: Arc<Invalidation>,
    /// The task listening on the invalidation channel; stops with the cache.
    subscriber: std::sync::OnceLock<AbortOnDrop>,
    /// Values on their way to L2 that this instance holds the lease for, until the write
    /// lands or the lease is released: a later flight of this instance is answered from
    /// here (L1 may have evicted the value already) instead of waiting on its own lease.
    writing: DashMap<Digest, Writing<V>, DigestHasherBuilder>,
    /// Leases this instance may still hold while it releases them.
    unreleased: Arc<lease::Unreleased>,
}

/// A value [`Inner::writing`] holds.
struct Writing<V> {
    value: Arc<V>,
    created_at_ms: u64,
    expires_at_ms: u64,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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

    pub(crate) fn from_parts(
        config: Config,
        l2: Option<Arc<Guarded>>,
        counters: Arc<Counters>,
    ) -> Self {
        let writes = Arc::new(Semaphore::new(config.l2_write_concurrency));
        let keyspace = Keyspace::new(&config.key_prefix);
        let subscriber = l2.is_some() && config.topology.invalidation;
        let cache = TieredCache {
            inner: Arc::new(Inner {
                l1: L1::new(config.l1_max_bytes),
                l2,
                inflight: Inflight::new(),
                writes,
                counters,
                invalidation: Arc::new(Invalidation::new(
                    &keyspace,
                    subscriber,
                    config.unsynced_grace,
                )),
                keyspace,
                subscriber: std::sync::OnceLock::new(),
                writing: DashMap::with_hasher(DigestHasherBuilder),
                unreleased: Arc::default(),
                config,
            }),
        };
        cache.start_invalidation();
        cache
            .inner
            .counters
            .exported
            .publish(&cache.inner.readings());
        crate::metrics::spawn_gauge_upkeep(Arc::downgrade(&cache.inner), |inner| {
            (&inner.counters.exported, inner.readings())
        });
        cache
    }

    /// The value for `digest` from L1 or L2, or else the value `fetch` produces. Concurrent
    /// callers for one digest share one L2 read and at most one fetch.
    pub async fn get_or_fetch<F, Fut>(&self, digest: Digest, fetch: F) -> Result<Cached<V>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V>> + Send + 'static,
    {
        self.get_or_fetch_with(digest, &FetchOptions::default(), fetch)
            .await
    }

    /// [`get_or_fetch`](Self::get_or_fetch) with per-call options.
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
        self.get_or_fetch_lazy(digest, options, move || fetch).await
    }

    /// [`get_or_fetch_with`](Self::get_or_fetch_with) where the fetch itself is made only
    /// when it will run: `make` is called (in the caller's task, at most once) when this
    /// caller leads a flight that missed both tiers, so a caller that hits never pays for
    /// what the fetch must own (such as a copy of the request).
    pub(crate) async fn get_or_fetch_lazy<M, F, Fut>(
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
        if !options.refresh
            && let Some(hit) = self.get(&digest).await
        {
            return Ok(hit);
        }
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
            inner.counters.exported.coalesced.increment(1);
            match tokio::time::timeout_at(deadline, waiter.wait()).await {
                Ok(Some(outcome)) => {
                    let landed = outcome?;
                    return Ok(Cached::new(
                        landed.value,
                        CacheStatus::Coalesced,
                        landed.created_at_ms,
                        digest,
                    ));
                }
                // Its leader was cancelled during the lookup: join or lead anew. (The
                // exported counter, monotonic, keeps the join.)
                Ok(None) => Counters::decr(&inner.counters.coalesced),
                Err(_) => return Err(inner.waiter_timed_out()),
            }
        }
    }

    /// Lead a flight. The lookup (L1 again, since a flight may have just landed, then L2)
    /// runs in the caller's own task: an L2 hit costs no task hop. Cancelling the caller
    /// there abandons the flight, and its waiters take over. A miss hands the fetch to a
    /// detached task, so a fetch that is paid for outlives its caller.
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
        if !options.refresh
            && let Some(landed) = inner.lookup(&digest).await
        {
            let out = landed.cached(digest);
            leader.complete(Ok(landed));
            return Ok(out);
        }
        let waiter = leader.waiter();
        let fetch = make();
        let task_inner = Arc::clone(inner);
        let options = options.clone();
        // The flight outlives its leader's call; its span says whose it is.
        let flight_span = tracing::debug_span!(
            "llm_cache.flight",
            key = %ShortKey(digest),
            upstream_attempts = tracing::field::Empty,
        );
        tokio::spawn(async move {
            let work = Arc::clone(&task_inner).fill(digest, options, fetch);
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
            leader.complete(outcome);
        });
        match tokio::time::timeout_at(deadline, waiter.wait()).await {
            Ok(Some(outcome)) => outcome.map(|landed| landed.cached(digest)),
            // The task was dropped unfinished: only a runtime shutting down does that.
            Ok(None) => Err(Error::new(
                ErrorKind::FetchAborted,
                "the flight's task ended before it produced a value",
            )),
            Err(_) => Err(inner.waiter_timed_out()),
        }
    }

    /// The value in L1, if any. Never goes to the network.
    #[inline]
    pub async fn get(&self, digest: &Digest) -> Option<Cached<V>> {
        // One lookup in 64 is timed (metrics.rs says why and how it picks).
        let started =
            crate::metrics::sample_l1(&self.inner.counters.l1_hits, digest).then(Instant::now);
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

    /// The value in L1, else in L2 (promoting it to L1). Never calls a fetch function.
    pub async fn fetch_stored(&self, digest: &Digest) -> Option<Cached<V>> {
        if let Some(hit) = self.get(digest).await {
            return Some(hit);
        }
        let landed = self.inner.read_l2(digest).await?;
        Some(Cached::new(
            landed.value,
            CacheStatus::HitL2,
            landed.created_at_ms,
            *digest,
        ))
    }

    /// Store `value` under `digest` in L1 now and in L2 in the background. Returns false
    /// when the value was too large to store.
    pub async fn insert(&self, digest: Digest, value: V, options: &FetchOptions) -> Result<bool> {
        self.inner
            .store(digest, &Arc::new(value), now_ms(), options.ttl, &mut None)
            .await
    }

    /// Remove `digest` from L1 and from L2. The L1 removal always happens; the error says
    /// when Redis could not confirm the removal.
    pub async fn invalidate(&self, digest: &Digest) -> Result<()> {
        self.inner.invalidation.note_invalidation();
        self.inner.l1.remove(digest).await;
        self.inner.writing.remove(digest);
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
    pub(crate) fn count_coalesced(&self) {
        Counters::incr(&self.inner.counters.coalesced);
    }

    /// Flights in progress now. Returns to zero when the cache is idle.
    pub fn inflight(&self) -> usize {
        self.inner.inflight.len()
    }

    /// A snapshot of the counters. L1 figures are as moka last settled them.
    pub fn stats(&self) -> Stats {
        let inner = &self.inner;
        let breaker = inner
            .l2
            .as_ref()
            .map_or(BreakerState::Disabled, |l2| l2.breaker_state());
        inner.counters.exported.publish(&inner.readings());
        inner.counters.snapshot(
            inner.inflight.len() as u64,
            breaker,
            inner.l1.entry_count(),
            inner.l1.weighted_size(),
        )
    }

    /// The Redis key of `digest`: `{prefix}:{<hex>}` (the braces are a Cluster hash tag).
    pub fn l2_key(&self, digest: &Digest) -> String {
        self.inner.l2_key(digest)
    }

    pub(crate) fn counters(&self) -> &Arc<Counters> {
        &self.inner.counters
    }

    /// The guarded remote tier and the key prefix, for `health()` and `redis_stats()`.
    pub(crate) fn l2_parts(&self) -> (Option<&Arc<Guarded>>, &Keyspace) {
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
    /// is still writing to L2, then L2.
    async fn lookup(&self, digest: &Digest) -> Option<Landed<V>> {
        if let Some(entry) = self.l1_get(digest).await {
            Counters::incr(&self.counters.l1_hits);
            return Some(Landed {
                value: entry.value,
                created_at_ms: entry.created_at_ms,
                origin: Origin::L1,
            });
        }
        if let Some(landed) = self.still_writing(digest) {
            return Some(landed);
        }
        self.read_l2(digest).await
    }

    /// The value this instance is writing to L2 under `digest`, if any and not expired.
    /// Served from memory like an L1 hit, and counted as one.
    fn still_writing(&self, digest: &Digest) -> Option<Landed<V>> {
        let w = self.writing.get(digest)?;
        if now_ms() >= w.expires_at_ms {
            return None;
        }
        Counters::incr(&self.counters.l1_hits);
        Some(Landed {
            value: Arc::clone(&w.value),
            created_at_ms: w.created_at_ms,
            origin: Origin::L1,
        })
    }

    /// A flight's work after its lookup missed: coordinate with other instances, fetch,
    /// fill both tiers.
    async fn fill<F, Fut>(
        self: Arc<Self>,
        digest: Digest,
        options: FetchOptions,
        fetch: F,
    ) -> Result<Landed<V>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V>> + Send + 'static,
    {
        // Across instances: take the lease, or wait for the instance that holds it.
        let mut lease = match self.coordinate(&digest, &options).await {
            Ok(landed) => return Ok(landed),
            Err(lease) => lease,
        };
        Counters::incr(&self.counters.misses);
        Counters::incr(&self.counters.fetches);
        let fetching = Timer::start(&self.counters.exported.upstream);
        let fetched = self.fetch_holding(lease.as_ref(), fetch()).await;
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
        Ok(Landed {
            value,
            created_at_ms,
            origin: Origin::Fetched,
        })
    }

    /// Read and decode from L2, promoting a hit to L1. A corrupt entry is counted, removed
    /// and reported as a miss.
    async fn read_l2(&self, digest: &Digest) -> Option<Landed<V>> {
        let l2 = self.l2.as_ref()?;
        if !self.l2_readable() {
            return None;
        }
        let key = self.l2_key(digest);
        // An invalidation that lands while this read is out must not be undone by it.
        let epoch = self.invalidation.epoch();
        let L2Read::Hit(bytes) = l2.get(&key).await else {
            return None;
        };
        let decoded = envelope::decode_with_limit(
            &bytes,
            digest,
            &self.config.mac_keys,
            self.config.max_entry_bytes,
        )
        .map_err(|e| e.to_string())
        .and_then(|env| {
            serde_json::from_slice::<V>(&env.payload)
                .map(|v| {
                    let remaining = env.remaining_ttl_ms(now_ms());
                    (v, env.created_at_ms, remaining, env.payload.len())
                })
                .map_err(|e| format!("payload does not decode: {e}"))
        });
        match decoded {
            Ok((_, _, 0, _)) => None,
            Ok((value, created_at_ms, remaining_ms, payload_len)) => {
                Counters::incr(&self.counters.l2_hits);
                let value = Arc::new(value);
                let ttl = self.config.l1_ttl.min(Duration::from_millis(remaining_ms));
                // Weighed like a fetched value: by its encoded (uncompressed) size.
                let weight = L1::<V>::weight_of(payload_len);
                if self.invalidation.epoch() == epoch {
                    self.invalidation.note_l1_store();
                    self.l1
                        .insert(
                            *digest,
                            L1Entry {
                                value: Arc::clone(&value),
                                created_at_ms,
                                ttl,
                                weight,
                                stored_at_ms: 0,
                            },
                        )
                        .await;
                }
                Some(Landed {
                    value,
                    created_at_ms,
                    origin: Origin::L2,
                })
            }
            Err(why) => {
                Counters::incr(&self.counters.corrupt_entries);
                self.counters.exported.l2_corrupt.increment(1);
                tracing::warn!(key = %&key[..key.len().min(self.config.key_prefix.len() + 17)], error = %why,
                    "corrupt cache entry in redis: removing it and fetching anew");
                // Awaited, not in the background: a late UNLINK must not delete the fresh value.
                l2.unlink(&key).await;
                None
            }
        }
    }

    /// Fill L1 now and L2 in the background. `Ok(false)` when the value is too large.
    async fn store(
        self: &Arc<Self>,
        digest: Digest,
        value: &Arc<V>,
        created_at_ms: u64,
        ttl: Option<Duration>,
        lease: &mut Option<Lease>,
    ) -> Result<bool> {
        let payload = serde_json::to_vec(&**value)
            .map_err(|e| Error::codec(format!("value does not serialize: {e}")))?;
        if payload.len() > self.config.max_entry_bytes {
            Counters::incr(&self.counters.oversized);
            tracing::debug!(
                bytes = payload.len(),
                max = self.config.max_entry_bytes,
                "value larger than max_entry_bytes: served, not stored"
            );
            return Ok(false);
        }
        let l2_ttl = ttl.unwrap_or(self.config.l2_ttl);
        let l1_ttl = self.config.l1_ttl.min(l2_ttl);
        self.invalidation.note_l1_store();
        self.l1
            .insert(
                digest,
                L1Entry {
                    value: Arc::clone(value),
                    created_at_ms,
                    ttl: l1_ttl,
                    weight: L1::<V>::weight_of(payload.len()),
                    stored_at_ms: 0,
                },
            )
            .await;
        if let Some(l2) = &self.l2 {
            let bytes = envelope::encode(
                &payload,
                &digest,
                created_at_ms,
                duration_ms(l2_ttl),
                self.config.compression_threshold,
                &self.config.mac_keys,
            );
            let lease = lease.take();
            if lease.is_some() {
                self.writing.insert(
                    digest,
                    Writing {
                        value: Arc::clone(value),
                        created_at_ms,
                        expires_at_ms: created_at_ms.saturating_add(duration_ms(l1_ttl)),
                    },
                );
            }
            self.write_behind(l2, digest, value, bytes, l2_ttl, lease);
        }
        Ok(true)
    }

    /// Write to L2 off the caller's path, bounded in concurrency; a full bound drops the
    /// write and counts it.
    /// A lease held for this value is released after the write (waiters on other instances
    /// look for the value once the lease is gone).
    /// While the lease is held, [`writing`](Self::writing) answers for the value; it lets
    /// go once the value is in L2 or the lease is released (a failed write, its release
    /// retried in the background, must not make this instance's next flight wait on it).
    fn write_behind(
        self: &Arc<Self>,
        l2: &Arc<Guarded>,
        digest: Digest,
        value: &Arc<V>,
        bytes: Vec<u8>,
        ttl: Duration,
        lease: Option<Lease>,
    ) {
        let (this, value) = (Arc::downgrade(self), Arc::downgrade(value));
        // Only this write's entry: a newer one (a refresh) stays.
        let done = move || {
            if let Some(this) = this.upgrade() {
                this.writing.remove_if(&digest, |_, w| {
                    std::ptr::eq(Arc::as_ptr(&w.value), value.as_ptr())
                });
            }
        };
        let Ok(permit) = Arc::clone(&self.writes).try_acquire_owned() else {
            Counters::incr(&self.counters.dropped_writes);
            self.counters.exported.l2_dropped_write.increment(1);
            if let Some(lease) = lease {
                tokio::spawn(async move {
                    lease::release_until_done(lease).await;
                    done();
                });
            }
            return;
        };
        let l2 = Arc::clone(l2);
        let counters = Arc::clone(&self.counters);
        let key = self.l2_key(&digest);
        tokio::spawn(async move {
            let wrote = l2.set(&key, bytes, ttl).await;
            drop(permit);
            if wrote {
                Counters::incr(&counters.l2_writes);
                done();
                if let Some(lease) = lease {
                    lease::release(lease).await;
                }
            } else if let Some(lease) = lease {
                lease::release_until_done(lease).await;
                done();
            }
        });
    }
}

// --- scale-out (issue 5): leases, the invalidation channel, namespace generations ---

impl<V> TieredCache<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Start listening on the invalidation channel (with Redis, unless turned off).
    fn start_invalidation(&self) {
        let inner = &self.inner;
        let Some(l2) = &inner.l2 else { return };
        if !inner.config.topology.invalidation {
            return;
        }
        let weak: std::sync::Weak<Inner<V>> = Arc::downgrade(inner);
        let sink: std::sync::Weak<dyn invalidation::Sink> = weak;
        let task =
            invalidation::spawn_subscriber(Arc::clone(&inner.invalidation), Arc::clone(l2), sink);
        let _ = inner.subscriber.set(task);
    }

    /// Give the invalidation subscription a moment (as `build()` does the connection): wait
    /// until the first attempt succeeds or fails, at most `max(l2_deadline, 200 ms)`.
    pub(crate) async fn settle(&self) {
        if self.inner.subscriber.get().is_some() {
            let limit = self
                .inner
                .config
                .l2_deadline
                .max(Duration::from_millis(200));
            self.inner.invalidation.wait_first_attempt(limit).await;
        }
    }

    /// Whether this instance is subscribed to the invalidation channel right now and knows
    /// the namespace generations, so that what other instances invalidate leaves its L1
    /// too. False without Redis, while Redis is away, while the generations cannot be read,
    /// and for a moment after the subscription is lost (the instance then resubscribes,
    /// reloads the generations and clears its L1). While false and Redis is partly
    /// reachable, cached entries are served for at most `unsynced_grace`.
    pub fn invalidation_subscribed(&self) -> bool {
        self.inner.invalidation.is_subscribed()
    }

    /// How many times the invalidation subscription was established (1 after start-up;
    /// each loss and return adds one).
    pub fn invalidation_subscriptions(&self) -> u64 {
        self.inner.invalidation.subscriptions()
    }

    /// The generation of `namespace` as this instance knows it: memory only.
    #[inline]
    pub(crate) fn generation(&self, namespace: &str) -> u64 {
        self.inner.invalidation.generation(namespace)
    }

    /// Move `namespace` to a new generation in Redis, announced to every instance in the
    /// same step. Without Redis the bump is local. With Redis unreachable this instance
    /// clears its L1 and the error says the others may not have been reached.
    pub(crate) async fn bump_generation(&self, namespace: &str) -> Result<()> {
        let inner = &self.inner;
        let state = &inner.invalidation;
        let Some(l2) = &inner.l2 else {
            state.bump_locally(namespace);
            return Ok(());
        };
        let before = state.generation(namespace);
        let generation = invalidation::new_generation();
        let message = invalidation::generation_message(namespace, generation);
        let (key, channel) = (state.generations_key(), state.channel());
        if !l2
            .hset_publish(key, namespace.as_bytes(), generation, channel, &message)
            .await
        {
            inner.l1.clear();
            return Err(Error::new(
                ErrorKind::Redis,
                format!(
                    "could not set the namespace's new generation in redis at {}: this instance's L1 was cleared, other instances may still serve the namespace (retry)",
                    l2.describe()
                ),
            ));
        }
        // Our own subscription applies it in order with any concurrent bump; wait briefly so
        // that this instance has switched when we return. Without one, apply it here.
        if !(state.is_subscribed()
            && state
                .wait_for_change(namespace, before, Duration::from_secs(1))
                .await)
        {
            state.observe(namespace, generation);
        }
        Ok(())
    }
}

impl<V: Send + Sync + 'static> invalidation::Sink for Inner<V> {
    fn forget<'a>(&'a self, digest: &'a Digest) -> futures_util::future::BoxFuture<'a, ()> {
        Box::pin(async move {
            self.l1.remove(digest).await;
            self.writing.remove(digest);
            self.inflight.detach(digest);
        })
    }

    fn forget_all(&self) {
        self.l1.clear();
        self.writing.clear();
    }
}

impl<V> Inner<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// After an L2 miss: `Ok` with the value another instance's flight wrote while this one
    /// waited on its lease, or `Err` to fetch (holding the lease when there is one).
    async fn coordinate(
        &self,
        digest: &Digest,
        options: &FetchOptions,
    ) -> std::result::Result<Landed<V>, Option<Lease>> {
        let Some(l2) = self.l2.as_ref().filter(|_| self.config.topology.leases) else {
            return Err(None);
        };
        // Waiting for another instance's value is pointless when L2 cannot be read.
        if !self.l2_readable() {
            return Err(None);
        }
        let key = self.keyspace.lease(digest);
        let ttl = self.config.topology.lease_ttl;
        if options.no_store {
            // Never leads with a lease (it stores nothing for the waiters), but waits for one.
            if l2.exists(&key).await != Some(true) {
                return Err(None);
            }
        } else {
            match lease::take(l2, &self.unreleased, &key, ttl).await {
                // The lease may be free because its last holder just wrote the value.
                lease::Take::Held(held) if !options.refresh => {
                    return match self.read_l2(digest).await {
                        Some(landed) => {
                            lease::release_later(held);
                            Ok(landed)
                        }
                        None => Err(Some(held)),
                    };
                }
                lease::Take::Held(held) => return Err(Some(held)),
                lease::Take::Unavailable => return Err(None),
                // A refresh never takes an answer looked up before it asked.
                lease::Take::Taken if options.refresh => return Err(None),
                lease::Take::Taken => {}
            }
        }
        // Taken by this instance itself, its release not confirmed yet: nobody to wait for.
        if self.unreleased.holds(&key) {
            return Err(None);
        }
        let waited = lease::wait(
            l2,
            &self.unreleased,
            &key,
            ttl,
            self.config.waiter_deadline,
            || self.read_l2(digest),
        )
        .await;
        match waited {
            lease::Waited::Value(landed) => Ok(landed),
            lease::Waited::Lead(held) if options.no_store => {
                lease::release_later(held);
                Err(None)
            }
            lease::Waited::Lead(held) => Err(Some(held)),
            lease::Waited::Alone => Err(None),
        }
    }

    /// Run the fetch, renewing the lease (when held) until it finishes.
    async fn fetch_holding<Fut: Future>(&self, held: Option<&Lease>, work: Fut) -> Fut::Output {
        match (held, &self.l2) {
            (Some(held), Some(l2)) => {
                lease::hold(l2, held, self.config.topology.lease_ttl, work).await
            }
            _ => work.await,
        }
    }

    fn release_lease(&self, held: Option<Lease>) {
        if let Some(held) = held {
            lease::release_later(held);
        }
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
