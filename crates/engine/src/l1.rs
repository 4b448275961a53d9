//! The in-process tier: a moka `future::Cache` bounded in bytes of process memory. It holds
//! each value decoded, behind an `Arc`, so a hit is a reference-count increment and never a
//! decode. Each entry carries its own deadline, which the caller caps at the entry's
//! remaining L2 life, so L1 never serves an answer longer than Redis would. It must never
//! block or touch the network.
//!
//! Expiry is checked when an entry is read rather than by moka: moka's per-entry expiry
//! keeps a timer-wheel node per entry (and a cache-wide TTL a write-order node), about 64
//! bytes an entry in all. An expired entry is a miss and is removed; one never read again
//! waits for the bound to need its room.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use moka::future::Cache;

use crate::digest::{Digest, DigestHasherBuilder};

/// What one L1 entry costs the process beyond its value (the value's `Arc` allocation and
/// what it owns, which the weigher counts): the key, moka's per-entry structures (hash
/// table bucket and slot, the entry and its bookkeeping, the LRU node, the key's `Arc`) and
/// the `L1Entry`, measured with glibc's allocator (see tests/engine/l1_memory.rs).
pub(crate) const ENTRY_OVERHEAD: u32 = 384;

/// One L1 entry: 32 bytes beside the value. Cloning is one reference-count increment.
pub(crate) struct L1Entry<V> {
    pub value: Arc<V>,
    /// Unix milliseconds at which the answer was first fetched (carried over from L2).
    pub created_at_ms: u64,
    /// Unix ms at which it was stored in L1 (set by [`L1::insert`]).
    pub stored_at_ms: u64,
    /// How long it may be served from `stored_at_ms`, in ms (at most about 49 days).
    ttl_ms: u32,
    /// Bytes this entry is charged against the bound.
    weight: u32,
}

impl<V> L1Entry<V> {
    /// An entry for `value` that may be served for `ttl` from its insertion (a longer `ttl`
    /// than `u32::MAX` ms, about 49 days, is cut to that: L2 answers after it).
    pub fn new(value: Arc<V>, created_at_ms: u64, ttl: Duration, weight: u32) -> Self {
        L1Entry {
            value,
            created_at_ms,
            stored_at_ms: 0,
            ttl_ms: u32::try_from(ttl.as_millis()).unwrap_or(u32::MAX),
            weight,
        }
    }

    /// Whether the entry may still be served at `now_ms`. A clock that went back past the
    /// entry's storing makes it expired: it is refetched rather than served too long.
    #[inline]
    fn is_live(&self, now_ms: u64) -> bool {
        now_ms
            .checked_sub(self.stored_at_ms)
            .is_some_and(|age| age < u64::from(self.ttl_ms))
    }
}

impl<V> Clone for L1Entry<V> {
    fn clone(&self) -> Self {
        L1Entry {
            value: Arc::clone(&self.value),
            created_at_ms: self.created_at_ms,
            stored_at_ms: self.stored_at_ms,
            ttl_ms: self.ttl_ms,
            weight: self.weight,
        }
    }
}

/// The L1 tier; `None` inside when L1 is disabled (max bytes = 0).
pub(crate) struct L1<V> {
    cache: Option<Cache<Digest, L1Entry<V>, DigestHasherBuilder>>,
    /// Weight inserted since L1 last made moka evict (see [`L1::insert`]).
    unsettled: AtomicU64,
    /// How much weight may wait for moka's eviction: 1/32 of the bound.
    max_unsettled: u64,
}

impl<V: Send + Sync + 'static> L1<V> {
    pub fn new(max_bytes: u64) -> Self {
        let cache = (max_bytes > 0).then(|| {
            Cache::builder()
                .max_capacity(max_bytes)
                .weigher(|_: &Digest, e: &L1Entry<V>| e.weight)
                .build_with_hasher(DigestHasherBuilder)
        });
        L1 {
            cache,
            unsettled: AtomicU64::new(0),
            max_unsettled: max_bytes / 32,
        }
    }

    /// The live entry of `digest`. An expired one is removed (should a fresh value land
    /// between the read and the removal, it is removed too: a later read goes to L2).
    #[inline]
    pub async fn get(&self, digest: &Digest) -> Option<L1Entry<V>> {
        let cache = self.cache.as_ref()?;
        let entry = cache.get(digest).await?;
        if entry.is_live(crate::now_ms()) {
            return Some(entry);
        }
        cache.invalidate(digest).await;
        None
    }

    /// Store `entry`. Moka evicts in batches, once some 64 writes wait; with large
    /// entries that let the cache hold a fifth more than its bound for a while (and the
    /// process keep that memory). So once the weight inserted since the last eviction
    /// passes 1/32 of the bound, this insert makes moka evict now.
    pub async fn insert(&self, digest: Digest, mut entry: L1Entry<V>) {
        if entry.ttl_ms == 0 {
            return;
        }
        if let Some(c) = &self.cache {
            entry.stored_at_ms = crate::now_ms();
            let weight = u64::from(entry.weight);
            c.insert(digest, entry).await;
            let unsettled = self.unsettled.fetch_add(weight, Ordering::Relaxed) + weight;
            if unsettled > self.max_unsettled {
                self.unsettled.store(0, Ordering::Relaxed);
                c.run_pending_tasks().await;
            }
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

    /// Let moka apply pending evictions now (tests and stats use it).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_entry_is_small_and_lives_for_its_ttl_only() {
        assert_eq!(size_of::<L1Entry<()>>(), 32);
        let mut e = L1Entry::new(Arc::new(()), 1, Duration::from_millis(100), 0);
        e.stored_at_ms = 1_000;
        assert!(e.is_live(1_000) && e.is_live(1_099));
        assert!(!e.is_live(1_100), "expired at its deadline");
        assert!(!e.is_live(999), "a clock gone back expires it");
        let long = L1Entry::new(Arc::new(()), 1, Duration::from_secs(1 << 40), 0);
        assert_eq!(long.ttl_ms, u32::MAX);
    }
}
