//! The LLM layer's answer types: [`CacheStatus`] (the engine's outcomes, plus the two this
//! layer adds: a batch answered [`Partial`](CacheStatus::Partial)ly from the tiers, and a
//! [`HitSemantic`](CacheStatus::HitSemantic)) and [`Cached`] (an answer with where it came
//! from, how old it is and, for a semantic hit, what it matched). The engine's
//! [`TieredCache`](crate::TieredCache) returns the engine's own
//! [`tiered::Cached`](crate::tiered::Cached); `From` turns one into the other.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::chat::StoredAnswer;
use crate::request::ChatResponse;
use crate::tiered::{self, Digest};

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
    /// An answer made of many entries (one per input of a batch), some of them found in
    /// the tiers or in other callers' flights and some fetched by this caller.
    Partial,
    /// The answer of an earlier request that asks the same in other words (the opt-in
    /// semantic cache): see [`Cached::similarity`] and [`Cached::matched_digest`].
    HitSemantic,
}

impl CacheStatus {
    /// Every status, in the order of the enum (a slice: the enum may grow).
    pub const ALL: &'static [CacheStatus] = &[
        CacheStatus::HitL1,
        CacheStatus::HitL2,
        CacheStatus::Miss,
        CacheStatus::Coalesced,
        CacheStatus::Bypass,
        CacheStatus::Partial,
        CacheStatus::HitSemantic,
    ];

    /// The value of the `x-llm-cache` response header for this status: `hit-l1`, `hit-l2`,
    /// `coalesced`, `miss`, `bypass`, `partial`, `hit-semantic`.
    pub fn header_value(self) -> &'static str {
        match tiered::CacheStatus::try_from(self) {
            Ok(engine) => engine.header_value(),
            Err(CacheStatus::HitSemantic) => "hit-semantic",
            Err(_) => "partial",
        }
    }

    /// True for answers that cost no fetch of this caller's own (L1, L2, coalesced,
    /// semantic).
    pub fn is_hit(self) -> bool {
        match tiered::CacheStatus::try_from(self) {
            Ok(engine) => engine.is_hit(),
            Err(own) => own == CacheStatus::HitSemantic,
        }
    }

    /// A short lower-case name (`l1`, `l2`, `miss`, `coalesced`, `bypass`, `partial`,
    /// `semantic`).
    pub fn as_str(self) -> &'static str {
        match tiered::CacheStatus::try_from(self) {
            Ok(engine) => engine.as_str(),
            Err(CacheStatus::HitSemantic) => "semantic",
            Err(_) => "partial",
        }
    }
}

impl From<tiered::CacheStatus> for CacheStatus {
    fn from(status: tiered::CacheStatus) -> Self {
        match status {
            tiered::CacheStatus::HitL1 => CacheStatus::HitL1,
            tiered::CacheStatus::HitL2 => CacheStatus::HitL2,
            tiered::CacheStatus::Miss => CacheStatus::Miss,
            tiered::CacheStatus::Coalesced => CacheStatus::Coalesced,
            tiered::CacheStatus::Bypass => CacheStatus::Bypass,
        }
    }
}

/// The statuses the engine has a name for; `Partial` and `HitSemantic` are this layer's
/// own and are given back as the error.
impl TryFrom<CacheStatus> for tiered::CacheStatus {
    type Error = CacheStatus;
    fn try_from(status: CacheStatus) -> Result<Self, CacheStatus> {
        Ok(match status {
            CacheStatus::HitL1 => tiered::CacheStatus::HitL1,
            CacheStatus::HitL2 => tiered::CacheStatus::HitL2,
            CacheStatus::Miss => tiered::CacheStatus::Miss,
            CacheStatus::Coalesced => tiered::CacheStatus::Coalesced,
            CacheStatus::Bypass => tiered::CacheStatus::Bypass,
            other => return Err(other),
        })
    }
}

// A `TieredCache` status compares with this one as it always did
// (`cached.status() == llm_cache::CacheStatus::HitL1`).
impl PartialEq<tiered::CacheStatus> for CacheStatus {
    fn eq(&self, other: &tiered::CacheStatus) -> bool {
        *self == CacheStatus::from(*other)
    }
}

impl PartialEq<CacheStatus> for tiered::CacheStatus {
    fn eq(&self, other: &CacheStatus) -> bool {
        CacheStatus::from(*self) == *other
    }
}

impl tiered::AnswerStatus for CacheStatus {
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

/// An answer together with where it came from and how old it is.
#[derive(Debug)]
pub struct Cached<V> {
    entry: tiered::Cached<V>,
    status: CacheStatus,
    /// For a semantic hit: the similarity, and the digest of the request itself (the
    /// entry's is the matched one).
    matched: Option<(f32, Digest)>,
    /// For a chat answer: the form the tiers hold, whose identity says that two hits
    /// served the same entry (the HTTP front keeps the JSON of the answers it serves by
    /// it).
    stored: Option<Arc<StoredAnswer>>,
}

impl<V> Clone for Cached<V> {
    fn clone(&self) -> Self {
        Cached {
            entry: self.entry.clone(),
            status: self.status,
            matched: self.matched,
            stored: self.stored.clone(),
        }
    }
}

impl<V> From<tiered::Cached<V>> for Cached<V> {
    fn from(entry: tiered::Cached<V>) -> Self {
        Cached {
            status: entry.status().into(),
            entry,
            matched: None,
            stored: None,
        }
    }
}

impl Cached<ChatResponse> {
    /// A chat answer from the form the tiers hold it in.
    pub(crate) fn answer(entry: tiered::Cached<StoredAnswer>) -> Self {
        let status = entry.status();
        let value = entry.value().response();
        Cached {
            entry: tiered::Cached::new(value, status, entry.created_at_ms(), entry.digest()),
            status: status.into(),
            matched: None,
            stored: Some(entry.into_arc()),
        }
    }

    /// The entry this answer was served from, when the tiers held it: two answers with the
    /// same (`Arc::ptr_eq`) entry are the same answer.
    #[doc(hidden)]
    pub fn stored(&self) -> Option<&Arc<StoredAnswer>> {
        self.stored.as_ref()
    }
}

impl<V> Cached<V> {
    #[doc(hidden)]
    pub fn new(value: Arc<V>, status: CacheStatus, created_at_ms: u64, digest: Digest) -> Self {
        // The engine's value has no name for this layer's own statuses; `status` is the one
        // served.
        let engine = tiered::CacheStatus::try_from(status).unwrap_or(tiered::CacheStatus::Miss);
        Cached {
            entry: tiered::Cached::new(value, engine, created_at_ms, digest),
            status,
            matched: None,
            stored: None,
        }
    }

    /// `entry`'s value served for the request of `digest` as a semantic hit.
    #[doc(hidden)]
    pub fn matched(entry: Cached<V>, digest: Digest, similarity: f32) -> Self {
        Cached {
            entry: entry.entry,
            status: CacheStatus::HitSemantic,
            // A cosine computed in f32 can land a hair outside [-1, 1].
            matched: Some((similarity.clamp(-1.0, 1.0), digest)),
            stored: entry.stored,
        }
    }

    /// For a [`CacheStatus::HitSemantic`]: the cosine between the request's embedding and
    /// the matched entry's; `None` otherwise.
    pub fn similarity(&self) -> Option<f32> {
        self.matched.map(|(s, _)| s)
    }

    /// For a [`CacheStatus::HitSemantic`]: the digest of the entry served (the request's
    /// own is [`digest`](Self::digest)); `None` otherwise.
    pub fn matched_digest(&self) -> Option<Digest> {
        self.matched.map(|_| self.entry.digest())
    }

    /// The value.
    pub fn value(&self) -> &V {
        self.entry.value()
    }

    /// The shared value, without copying it.
    pub fn into_arc(self) -> Arc<V> {
        self.entry.into_arc()
    }

    /// Where it came from.
    pub fn status(&self) -> CacheStatus {
        self.status
    }

    /// When the value was first fetched (for hits, possibly by another process).
    pub fn created_at(&self) -> SystemTime {
        self.entry.created_at()
    }

    /// How long ago the value was fetched; zero for a fresh fetch.
    pub fn age(&self) -> Duration {
        self.entry.age()
    }

    /// The key's digest; `digest().to_hex()` is the Redis key's suffix.
    pub fn digest(&self) -> Digest {
        self.matched.map_or_else(|| self.entry.digest(), |(_, d)| d)
    }

    #[doc(hidden)]
    pub fn created_at_ms(&self) -> u64 {
        self.entry.created_at_ms()
    }
}

impl<V> Deref for Cached<V> {
    type Target = V;
    fn deref(&self) -> &V {
        self.entry.value()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[CacheStatus] = CacheStatus::ALL;

    #[test]
    fn the_engines_statuses_keep_their_names_and_the_layers_own_are_named() {
        let names: Vec<_> = ALL
            .iter()
            .map(|s| (s.header_value(), s.as_str(), s.is_hit()))
            .collect();
        assert_eq!(
            names,
            [
                ("hit-l1", "l1", true),
                ("hit-l2", "l2", true),
                ("miss", "miss", false),
                ("coalesced", "coalesced", true),
                ("bypass", "bypass", false),
                ("partial", "partial", false),
                ("hit-semantic", "semantic", true),
            ]
        );
        for &s in ALL {
            match tiered::CacheStatus::try_from(s) {
                Ok(engine) => {
                    assert_eq!(CacheStatus::from(engine), s);
                    assert_eq!(engine, s);
                    assert_eq!(s, engine);
                    assert_eq!(engine.header_value(), s.header_value());
                    assert_eq!(engine.is_hit(), s.is_hit());
                }
                Err(own) => {
                    assert_eq!(own, s);
                    assert!(matches!(s, CacheStatus::Partial | CacheStatus::HitSemantic));
                }
            }
        }
    }

    #[test]
    fn a_semantic_hit_keeps_the_requests_digest_and_names_the_entry_it_served() {
        let (request, entry) = (Digest::of("request"), Digest::of("entry"));
        let found = Cached::from(tiered::Cached::new(
            Arc::new("answer"),
            tiered::CacheStatus::HitL2,
            1,
            entry,
        ));
        assert_eq!(
            (found.status(), found.digest()),
            (CacheStatus::HitL2, entry)
        );
        assert_eq!((found.similarity(), found.matched_digest()), (None, None));
        let served = Cached::matched(found, request, 1.000_01);
        assert_eq!(served.status(), CacheStatus::HitSemantic);
        assert_eq!(served.digest(), request);
        assert_eq!(served.matched_digest(), Some(entry));
        assert_eq!(served.similarity(), Some(1.0));
        assert_eq!(*served, "answer");
        assert_eq!(served.created_at_ms(), 1);
    }
}
