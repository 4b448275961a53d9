//! The in-process tier: a moka `future::Cache` bounded in bytes. Each entry carries its
//! own time to live, which the caller caps at the entry's remaining L2 life, so L1 never
//! serves an answer longer than Redis would. It must never block or touch the network.

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::Expiry;
use moka::future::Cache;

use crate::tiered::digest::{Digest, DigestHasherBuilder};

/// What every entry costs beyond its encoded value: the key, the moka node, the `Arc`.
const ENTRY_OVERHEAD: u32 = 160;

/// One L1 entry. Cloning is one reference-count increment.
pub(crate) struct L1Entry<V> {
    pub value: Arc<V>,
    /// Unix milliseconds at which the answer was first fetched (carried over from L2).
    pub created_at_ms: u64,
    /// How long this entry may stay in L1 from its insertion.
    pub ttl: Duration,
    /// Bytes this entry is charged against the bound.
    pub weight: u32,
    /// Unix ms at which it was stored in L1 (set by [`L1::insert`]).
    pub stored_at_ms: u64,
}

impl<V> Clone for L1Entry<V> {
    fn clone(&self) -> Self {
        L1Entry {
            value: Arc::clone(&self.value),
            created_at_ms: self.created_at_ms,
            ttl: self.ttl,
            weight: self.weight,
            stored_at_ms: self.stored_at_ms,
        }
    }
}

struct PerEntryTtl;

impl<V> Expiry<Digest, L1Entry<V>> for PerEntryTtl {
    fn expire_after_create(&self, _: &Digest, entry: &L1Entry<V>, _: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }

    fn expire_after_update(
        &self,
        _: &Digest,
        entry: &L1Entry<V>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// The L1 tier; `None` inside when L1 is disabled (max bytes = 0).
pub(crate) struct L1<V> {
    cache: Option<Cache<Digest, L1Entry<V>, DigestHasherBuilder>>,
}

impl<V: Send + Sync + 'static> L1<V> {
    pub fn new(max_bytes: u64) -> Self {
        if max_bytes == 0 {
            return L1 { cache: None };
        }
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_: &Digest, e: &L1Entry<V>| e.weight)
            .expire_after(PerEntryTtl)
            .build_with_hasher(DigestHasherBuilder);
        L1 { cache: Some(cache) }
    }

    /// The weight charged for a value whose encoded form is `encoded_len` bytes.
    pub fn weight_of(encoded_len: usize) -> u32 {
        u32::try_from(encoded_len)
            .unwrap_or(u32::MAX)
            .saturating_add(ENTRY_OVERHEAD)
    }

    #[inline]
    pub async fn get(&self, digest: &Digest) -> Option<L1Entry<V>> {
        match &self.cache {
            Some(c) => c.get(digest).await,
            None => None,
        }
    }

    pub async fn insert(&self, digest: Digest, mut entry: L1Entry<V>) {
        if entry.ttl.is_zero() {
            return;
        }
        if let Some(c) = &self.cache {
            entry.stored_at_ms = crate::tiered::now_ms();
            c.insert(digest, entry).await;
        }
    }

    pub async fn remove(&self, digest: &Digest) {
        if let Some(c) = &self.cache {
            c.invalidate(digest).await;
        }
    }

    pub fn clear(&self) {
        if let Some(c) = &self.cache {
            c.invalidate_all();
        }
    }

    /// Let moka apply pending evictions and expirations now (tests and stats use it).
    pub async fn run_pending_tasks(&self) {
        if let Some(c) = &self.cache {
            c.run_pending_tasks().await;
        }
    }

    pub fn entry_count(&self) -> u64 {
        self.cache.as_ref().map_or(0, |c| c.entry_count())
    }

    pub fn weighted_size(&self) -> u64 {
        self.cache.as_ref().map_or(0, |c| c.weighted_size())
    }
}
