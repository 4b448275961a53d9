//! Counters of what the cache did, and the `Stats` snapshot users read. Counting is a
//! relaxed atomic add: it must never take a lock or allocate on the hit path.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The state of the circuit breaker in front of Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Redis is used.
    Closed,
    /// Redis is skipped until the cool-down passes.
    Open,
    /// One probe is being let through to see whether Redis is back.
    HalfOpen,
    /// No Redis is configured: the cache is L1-only.
    Disabled,
}

/// A snapshot of the cache's counters.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Stats {
    /// Answers served from L1.
    pub l1_hits: u64,
    /// Answers served from L2 (Redis).
    pub l2_hits: u64,
    /// Lookups that found nothing in any tier and led a fetch.
    pub misses: u64,
    /// Callers that joined a flight already running instead of fetching.
    pub coalesced: u64,
    /// Fetches run (calls to the fetch function / upstream).
    pub fetches: u64,
    /// Fetches that failed (errors and panics).
    pub fetch_errors: u64,
    /// L2 operations that failed for a reason other than their deadline.
    pub l2_errors: u64,
    /// L2 operations abandoned at their deadline.
    pub l2_timeouts: u64,
    /// L2 operations skipped because the breaker was open.
    pub l2_skipped: u64,
    /// L2 values that failed to decode (bad magic, version, checksum...): treated as misses.
    pub corrupt_entries: u64,
    /// L2 writes completed.
    pub l2_writes: u64,
    /// L2 writes dropped because the background-write bound was full.
    pub dropped_writes: u64,
    /// Values not stored because they exceeded the maximum entry size.
    pub oversized: u64,
    /// Waiters that gave up at the waiter deadline.
    pub waiter_timeouts: u64,
    /// Flights in progress now.
    pub inflight: u64,
    /// Breaker state now.
    pub breaker: BreakerState,
    /// Entries in L1 now (approximate, as moka reports it).
    pub l1_entries: u64,
    /// Weighted size of L1 in bytes now.
    pub l1_bytes: u64,
}

impl Stats {
    /// Hits in either tier divided by all lookups that returned a value or led a fetch.
    pub fn hit_ratio(&self) -> f64 {
        let hits = self.l1_hits + self.l2_hits + self.coalesced;
        let total = hits + self.misses;
        if total == 0 {
            0.0
        } else {
            hits as f64 / total as f64
        }
    }
}

#[derive(Default, Debug)]
pub(crate) struct Counters {
    pub l1_hits: AtomicU64,
    pub l2_hits: AtomicU64,
    pub misses: AtomicU64,
    pub coalesced: AtomicU64,
    pub fetches: AtomicU64,
    pub fetch_errors: AtomicU64,
    pub l2_errors: AtomicU64,
    pub l2_timeouts: AtomicU64,
    pub l2_skipped: AtomicU64,
    pub corrupt_entries: AtomicU64,
    pub l2_writes: AtomicU64,
    pub dropped_writes: AtomicU64,
    pub oversized: AtomicU64,
    pub waiter_timeouts: AtomicU64,
}

impl Counters {
    #[inline]
    pub fn incr(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    pub fn snapshot(
        &self,
        inflight: u64,
        breaker: BreakerState,
        l1_entries: u64,
        l1_bytes: u64,
    ) -> Stats {
        Stats {
            l1_hits: self.l1_hits.load(Relaxed),
            l2_hits: self.l2_hits.load(Relaxed),
            misses: self.misses.load(Relaxed),
            coalesced: self.coalesced.load(Relaxed),
            fetches: self.fetches.load(Relaxed),
            fetch_errors: self.fetch_errors.load(Relaxed),
            l2_errors: self.l2_errors.load(Relaxed),
            l2_timeouts: self.l2_timeouts.load(Relaxed),
            l2_skipped: self.l2_skipped.load(Relaxed),
            corrupt_entries: self.corrupt_entries.load(Relaxed),
            l2_writes: self.l2_writes.load(Relaxed),
            dropped_writes: self.dropped_writes.load(Relaxed),
            oversized: self.oversized.load(Relaxed),
            waiter_timeouts: self.waiter_timeouts.load(Relaxed),
            inflight,
            breaker,
            l1_entries,
            l1_bytes,
        }
    }
}
