//! The value types every layer on the engine uses: [`Cached`] (a value, where it came
//! from, how old it is), [`CacheStatus`] and the per-call [`FetchOptions`]. Plain data: no
//! I/O, no tiers, and nothing that names a layer above the engine.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::digest::Digest;
use crate::now_ms;

/// Response header of the HTTP integrations: where the answer came from, as
/// [`CacheStatus::as_str`] names it.
pub const HEADER_STATUS: &str = "x-llm-cache";

/// Where the engine's answer came from.
///
/// Exhaustive on purpose: these are the outcomes of a tiered lookup, and the layers above
/// the engine map each of them into statuses of their own (which may add outcomes the
/// engine does not know), so a new one is a breaking change that the compiler shows to
/// every layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
    /// The value of the `x-llm-cache` response header for this status: `hit-l1`, `hit-l2`,
    /// `coalesced`, `miss`, `bypass`.
    pub fn header_value(self) -> &'static str {
        match self {
            CacheStatus::HitL1 => "hit-l1",
            CacheStatus::HitL2 => "hit-l2",
            CacheStatus::Coalesced => "coalesced",
            CacheStatus::Miss => "miss",
            CacheStatus::Bypass => "bypass",
        }
    }

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

/// What an answer's status tells its HTTP headers: the `x-llm-cache` value and whether it
/// is a hit (a miss is sent with `age: 0`). The engine's [`CacheStatus`] is one; a layer
/// above the engine implements it for its own status type to use the
/// [`http`](crate::http) helpers.
pub trait AnswerStatus: Copy {
    /// The value of the `x-llm-cache` response header.
    fn header_value(self) -> &'static str;
    /// True for answers that cost no fetch of this caller's own.
    fn is_hit(self) -> bool;
}

impl AnswerStatus for CacheStatus {
    fn header_value(self) -> &'static str {
        CacheStatus::header_value(self)
    }
    fn is_hit(self) -> bool {
        CacheStatus::is_hit(self)
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
    #[doc(hidden)]
    pub fn new(value: Arc<V>, status: CacheStatus, created_at_ms: u64, digest: Digest) -> Self {
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

    #[doc(hidden)]
    pub fn created_at_ms(&self) -> u64 {
        self.created_at_ms
    }
}

impl<V> Deref for Cached<V> {
    type Target = V;
    fn deref(&self) -> &V {
        &self.value
    }
}

/// Per-call options of [`TieredCache::get_or_fetch_with`](super::TieredCache::get_or_fetch_with).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct FetchOptions {
    #[doc(hidden)]
    pub refresh: bool,
    #[doc(hidden)]
    pub no_store: bool,
    #[doc(hidden)]
    pub ttl: Option<Duration>,
    /// How long this caller waits for the flight, instead of the waiter deadline (the
    /// driver of a streamed flight waits as long as the stream may last).
    #[doc(hidden)]
    pub wait: Option<Duration>,
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
