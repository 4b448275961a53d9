//! `TieredCache<V>`: L1 -> single-flight -> L2 -> fetch -> fill, for any serde value.
//! It knows nothing about LLMs. The caller's future only waits: the flight's work runs in
//! a detached task, so cancelling a caller never cancels a fetch that is paid for.

use std::fmt;
use std::future::Future;
use std::ops::Deref;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::FutureExt;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

use crate::builder::{Config, TieredCacheBuilder};
use crate::digest::Digest;
use crate::envelope;
use crate::error::{Error, ErrorKind, Result};
use crate::inflight::{Inflight, Join};
use crate::l1::{L1, L1Entry};
use crate::l2::{Guarded, L2Read};
use crate::metrics::{BreakerState, Counters, Stats};

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
    l1: L1<V>,
    l2: Option<Arc<Guarded>>,
    inflight: Arc<Inflight<Landed<V>>>,
    writes: Arc<Semaphore>,
    counters: Arc<Counters>,
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
        TieredCache {
            inner: Arc::new(Inner {
                l1: L1::new(config.l1_max_bytes),
                l2,
                inflight: Inflight::new(),
                writes,
                counters,
                config,
            }),
        }
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
        if !options.refresh
            && let Some(hit) = self.get(&digest).await
        {
            return Ok(hit);
        }
        let inner = &self.inner;
        let (waiter, led) = match inner.inflight.join_or_lead(digest, options.refresh) {
            Join::Waiter(w) => {
                Counters::incr(&inner.counters.coalesced);
                (w, false)
            }
            Join::Leader(leader) => {
                let waiter = leader.waiter();
                let task_inner = Arc::clone(inner);
                let options = options.clone();
                tokio::spawn(async move {
                    let work = Arc::clone(&task_inner).lead(digest, options, fetch);
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
                (waiter, true)
            }
        };
        let landed = match tokio::time::timeout(inner.config.waiter_deadline, waiter.wait()).await {
            Ok(outcome) => outcome?,
            Err(_) => {
                Counters::incr(&inner.counters.waiter_timeouts);
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "gave up waiting for the flight after the waiter deadline ({:?})",
                        inner.config.waiter_deadline
                    ),
                ));
            }
        };
        let status = match (led, landed.origin) {
            (false, _) => CacheStatus::Coalesced,
            (true, Origin::L1) => CacheStatus::HitL1,
            (true, Origin::L2) => CacheStatus::HitL2,
            (true, Origin::Fetched) => CacheStatus::Miss,
        };
        Ok(Cached::new(
            landed.value,
            status,
            landed.created_at_ms,
            digest,
        ))
    }

    /// The value in L1, if any. Never goes to the network.
    #[inline]
    pub async fn get(&self, digest: &Digest) -> Option<Cached<V>> {
        let entry = self.inner.l1.get(digest).await?;
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
            .store(digest, &Arc::new(value), now_ms(), options.ttl)
            .await
    }

    /// Remove `digest` from L1 and from L2. The L1 removal always happens; the error says
    /// when Redis could not confirm the removal.
    pub async fn invalidate(&self, digest: &Digest) -> Result<()> {
        self.inner.l1.remove(digest).await;
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
        }
        Ok(())
    }

    /// Drop every L1 entry (L2 is left alone).
    pub fn clear_l1(&self) {
        self.inner.l1.clear();
    }

    /// Apply pending L1 evictions and expirations now, so `stats()` is exact.
    pub async fn run_pending_tasks(&self) {
        self.inner.l1.run_pending_tasks().await;
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
        inner.counters.snapshot(
            inner.inflight.len() as u64,
            breaker,
            inner.l1.entry_count(),
            inner.l1.weighted_size(),
        )
    }

    /// The Redis key of `digest`: `{prefix}:{hex}`.
    pub fn l2_key(&self, digest: &Digest) -> String {
        self.inner.l2_key(digest)
    }
}

impl<V> Inner<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    fn l2_key(&self, digest: &Digest) -> String {
        let mut key = String::with_capacity(self.config.key_prefix.len() + 65);
        key.push_str(&self.config.key_prefix);
        key.push(':');
        digest.write_hex(&mut key);
        key
    }

    /// The flight's work: L1 again (a flight may have just landed), L2, then the fetch.
    async fn lead<F, Fut>(
        self: Arc<Self>,
        digest: Digest,
        options: FetchOptions,
        fetch: F,
    ) -> Result<Landed<V>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V>> + Send + 'static,
    {
        if !options.refresh {
            if let Some(entry) = self.l1.get(&digest).await {
                Counters::incr(&self.counters.l1_hits);
                return Ok(Landed {
                    value: entry.value,
                    created_at_ms: entry.created_at_ms,
                    origin: Origin::L1,
                });
            }
            if let Some(landed) = self.read_l2(&digest).await {
                return Ok(landed);
            }
        }
        Counters::incr(&self.counters.misses);
        Counters::incr(&self.counters.fetches);
        let value = match fetch().await {
            Ok(v) => Arc::new(v),
            Err(e) => {
                Counters::incr(&self.counters.fetch_errors);
                return Err(e);
            }
        };
        let created_at_ms = now_ms();
        if !options.no_store
            && let Err(e) = self.store(digest, &value, created_at_ms, options.ttl).await
        {
            tracing::warn!(error = %e, "fetched value could not be encoded; served, not stored");
        }
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
        let key = self.l2_key(digest);
        let L2Read::Hit(bytes) = l2.get(&key).await else {
            return None;
        };
        let decoded = envelope::decode(&bytes)
            .map_err(|e| e.to_string())
            .and_then(|env| {
                serde_json::from_slice::<V>(&env.payload)
                    .map(|v| (v, env.created_at_ms, env.remaining_ttl_ms(now_ms())))
                    .map_err(|e| format!("payload does not decode: {e}"))
            });
        match decoded {
            Ok((_, _, 0)) => None,
            Ok((value, created_at_ms, remaining_ms)) => {
                Counters::incr(&self.counters.l2_hits);
                let value = Arc::new(value);
                let ttl = self.config.l1_ttl.min(Duration::from_millis(remaining_ms));
                let weight = L1::<V>::weight_of(bytes.len());
                self.l1
                    .insert(
                        *digest,
                        L1Entry {
                            value: Arc::clone(&value),
                            created_at_ms,
                            ttl,
                            weight,
                        },
                    )
                    .await;
                Some(Landed {
                    value,
                    created_at_ms,
                    origin: Origin::L2,
                })
            }
            Err(why) => {
                Counters::incr(&self.counters.corrupt_entries);
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
        &self,
        digest: Digest,
        value: &Arc<V>,
        created_at_ms: u64,
        ttl: Option<Duration>,
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
        self.l1
            .insert(
                digest,
                L1Entry {
                    value: Arc::clone(value),
                    created_at_ms,
                    ttl: self.config.l1_ttl.min(l2_ttl),
                    weight: L1::<V>::weight_of(payload.len()),
                },
            )
            .await;
        if let Some(l2) = &self.l2 {
            let bytes = envelope::encode(
                &payload,
                created_at_ms,
                duration_ms(l2_ttl),
                self.config.compression_threshold,
            );
            self.write_behind(l2, self.l2_key(&digest), bytes, l2_ttl);
        }
        Ok(true)
    }

    /// Write to L2 off the caller's path, bounded in concurrency; a full bound drops the
    /// write and counts it.
    fn write_behind(&self, l2: &Arc<Guarded>, key: String, bytes: Vec<u8>, ttl: Duration) {
        let Ok(permit) = Arc::clone(&self.writes).try_acquire_owned() else {
            Counters::incr(&self.counters.dropped_writes);
            return;
        };
        let l2 = Arc::clone(l2);
        let counters = Arc::clone(&self.counters);
        tokio::spawn(async move {
            if l2.set(&key, bytes, ttl).await {
                Counters::incr(&counters.l2_writes);
            }
            drop(permit);
        });
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
