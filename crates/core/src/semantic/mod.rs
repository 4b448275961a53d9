//! The opt-in semantic cache: after an exact miss, a request whose last message is a plain
//! user text may be answered with the entry of an earlier request of the same exact scope
//! whose last user text means the same. It owns the lexical guard, the configuration and
//! the candidate indexes (in process and in Redis). It must never serve a candidate on its
//! cosine alone: the guard decides. It knows nothing of chat requests: the layer above
//! gives it a scope digest, a text and a vector.

mod guard;
mod local;
mod remote;
mod rewrite;
mod sketch;
mod tokens;
mod words;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

pub use self::guard::{
    Canonical, DEFAULT_MAX_TYPOS, DEFAULT_TYPO_MIN_LEN, GuardVerdict, LexicalGuard, Refusal,
};
use self::local::LocalIndex;
use self::remote::{Generation, RemoteIndex};
pub(crate) use self::sketch::cosine;
use self::sketch::{Record, Sketch, max_distance};
use crate::tiered::Guarded;
use crate::tiered::Keyspace;
use crate::tiered::digest::Digest;
use crate::tiered::now_ms;
use crate::upstream::BoxFuture;

/// The default cosine a candidate needs before the guard looks at it. Low on purpose: the
/// guard decides what is served, the threshold only spares it candidates that cannot be the
/// same question. The cache embeds the prompt as written.
pub const DEFAULT_SEMANTIC_THRESHOLD: f32 = 0.7;
/// The default most candidates re-ranked and guarded per lookup.
pub const DEFAULT_MAX_CANDIDATES: usize = 8;
/// The default bytes of process memory the in-process index may hold (vectors, texts).
pub const DEFAULT_SEMANTIC_L1_BYTES: u64 = 64 << 20;
/// The default most entries per bucket (in process and in Redis): bounds a lookup's
/// bytes at 240 buckets (16 tables, each signature and its one-bit neighbours) × 64
/// members × 77 B from Redis, then at most `max_candidates` records. A bucket holds about
/// 1/16,384 of a scope: the cap is reached near a million entries in one scope.
pub const DEFAULT_BUCKET_CAP: usize = 64;
/// The default cosine at which an audit deems two answers to agree (see
/// [`SemanticConfig::audit_agreement`]).
pub const DEFAULT_AUDIT_AGREEMENT: f32 = 0.8;

/// The audit's outcomes as a counter, by `outcome` (`agreed`, `disagreed`, `failed`).
pub(crate) const AUDITS: &str = "ai_cache_semantic_audits_total";

/// The semantic cache's settings, given to
/// [`LlmCacheBuilder::semantic`](crate::LlmCacheBuilder::semantic). Requests opt in with
/// [`CacheControl::semantic`](crate::CacheControl::semantic).
#[derive(Debug, Clone)]
#[must_use]
pub struct SemanticConfig {
    pub(crate) model: String,
    pub(crate) dimensions: Option<u32>,
    pub(crate) threshold: f32,
    pub(crate) max_candidates: usize,
    pub(crate) l1_index_bytes: u64,
    pub(crate) bucket_cap: usize,
    pub(crate) guard: LexicalGuard,
    pub(crate) audit_fraction: f64,
    pub(crate) audit_agreement: f32,
    pub(crate) embed_via_route: bool,
}

impl SemanticConfig {
    /// Embed with `model` (through the cache's own embeddings path: cached, single-flight,
    /// from the configured upstream).
    pub fn new(model: impl Into<String>) -> Self {
        SemanticConfig {
            model: model.into(),
            dimensions: None,
            threshold: DEFAULT_SEMANTIC_THRESHOLD,
            max_candidates: DEFAULT_MAX_CANDIDATES,
            l1_index_bytes: DEFAULT_SEMANTIC_L1_BYTES,
            bucket_cap: DEFAULT_BUCKET_CAP,
            guard: LexicalGuard::default(),
            audit_fraction: 0.0,
            audit_agreement: DEFAULT_AUDIT_AGREEMENT,
            embed_via_route: false,
        }
    }

    crate::tiered::setters! {
        /// Ask the model for this many dimensions (models that support it: smaller vectors,
        /// smaller index).
        pub fn dimensions(n: u32) { dimensions = Some(n) }

        /// The cosine a candidate needs before the guard looks at it, in (0, 1]. Default
        /// [`DEFAULT_SEMANTIC_THRESHOLD`].
        pub fn threshold(cosine: f32) { threshold = cosine }

        /// The most candidates re-ranked by exact cosine and guarded per lookup (at least 1).
        pub fn max_candidates(n: usize) { max_candidates = n }

        /// The bytes of process memory the in-process index may hold; 0 keeps none (Redis only).
        pub fn l1_index_bytes(bytes: u64) { l1_index_bytes = bytes }

        /// The most entries one bucket holds (at least 1): bounds each lookup's bytes.
        pub fn bucket_cap(n: usize) { bucket_cap = n }

        /// The lexical guard (tighten with [`LexicalGuard::strict`], or tune its knobs).
        pub fn guard(guard: LexicalGuard) { guard = guard }

        /// Audit this fraction of semantic hits, in [0, 1] (default 0: off). An audited hit is
        /// served as usual; in the background the cache also asks the upstream (one paid call,
        /// counted in `upstream_calls`) and compares the fresh answer with the one served:
        /// they agree when their texts are equal once trimmed, or when the cosine of their
        /// embeddings (the semantic model, through the embeddings path) is at least
        /// [`audit_agreement`](Self::audit_agreement). The counts are in
        /// [`SemanticStats`] (`audited`, `agreed`, `disagreed`, `audit_failed`) and in
        /// `ai_cache_semantic_audits_total{outcome}`: `disagreed / (agreed + disagreed)` is an
        /// estimate of your traffic's false-hit rate. Sampling is deterministic: every
        /// `1 / fraction`-th hit.
        pub fn audit(fraction: f64) { audit_fraction = fraction }

        /// The cosine of the two answers' embeddings at or above which an audit counts them as
        /// agreeing, in (0, 1]. Default [`DEFAULT_AUDIT_AGREEMENT`]: two samples of one answer
        /// in other words score above it with sentence-embedding models, answers to other
        /// questions mostly below; a sampled temperature > 0 upstream disagrees with itself
        /// now and then, so read the rate against a baseline of exact repeats.
        pub fn audit_agreement(cosine: f32) { audit_agreement = cosine }

        /// Embed through the route a request came by, when it came through the async-openai
        /// layer or the HTTP front: the layer's inner service (the caller's base URL, headers,
        /// credentials and retry stack, at the `embeddings` path beside `chat/completions`), or
        /// the front's upstream client (its held key, or the caller's credentials when it
        /// passes them through). No second `OpenAiCompatible` beside the layer: a cache built
        /// without an upstream can then be semantic. Vectors fetched this way are keyed per
        /// route (and credential scope). A request made on the cache itself still embeds
        /// through the builder's upstream. Default false.
        pub fn embed_via_route(yes: bool) { embed_via_route = yes }
    }

    /// The knob that is wrong, and why.
    pub(crate) fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if self.model.is_empty() {
            return Err(("semantic.model", "must name an embedding model"));
        }
        if !(self.threshold > 0.0 && self.threshold <= 1.0) {
            return Err(("semantic.threshold", "must be in (0, 1]"));
        }
        if self.max_candidates == 0 {
            return Err(("semantic.max_candidates", "must be at least 1"));
        }
        if self.bucket_cap == 0 {
            return Err(("semantic.bucket_cap", "must be at least 1"));
        }
        if !(0.0..=1.0).contains(&self.audit_fraction) {
            return Err(("semantic.audit", "must be in [0, 1]"));
        }
        if !(self.audit_agreement > 0.0 && self.audit_agreement <= 1.0) {
            return Err(("semantic.audit_agreement", "must be in (0, 1]"));
        }
        Ok(())
    }
}

llm_cache_engine::counters! {
    /// The semantic counters in [`LlmStats`](crate::LlmStats).
    #[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
    #[non_exhaustive]
    pub struct SemanticStats;
    pub(crate) struct Counters {
        counters {
            /// Lookups made (after an exact miss, for requests that opted in and qualify).
            lookups,
            /// Requests answered by a semantic match.
            hits,
            /// Candidates above the threshold that the lexical guard refused.
            guard_refusals,
            /// Answers indexed after a miss (in process, and in Redis when it took them).
            indexed,
            /// Matches whose entry was gone (dropped from the index, then a miss).
            stale,
            /// Lookups that could not ask Redis (down, slow, breaker open): in-process only.
            redis_skipped,
            /// Lookups that left the Redis index unread: the in-process index held every
            /// entry of the scope's generation in Redis.
            redis_current,
            /// Requests that opted in but could not be looked up (not a plain user text last,
            /// no content words, or the embedding call failed).
            ineligible,
            /// Semantic hits audited (see [`SemanticConfig::audit`]): the upstream was asked too.
            audited,
            /// Audits whose fresh answer agreed with the one served.
            agreed => [AUDITS, "outcome" => "agreed"],
            /// Audits whose fresh answer disagreed: a likely false hit.
            disagreed => [AUDITS, "outcome" => "disagreed"],
            /// Audits that could not decide (the upstream or the embedding call failed, or an
            /// answer had no text).
            audit_failed => [AUDITS, "outcome" => "failed"],
        }
        gauges {
            /// Entries in the in-process index.
            l1_entries: u64,
            /// Bytes of the in-process index.
            l1_bytes: u64,
        }
        extra {
            /// Semantic hits seen by the audit's sampling.
            audit_seen: AtomicU64,
        }
    }
}

/// What an audit found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AuditOutcome {
    Agreed,
    Disagreed,
    Failed,
}

/// A candidate that passed the threshold and the guard.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Match {
    pub(crate) entry: Digest,
    pub(crate) similarity: f32,
}

/// A read of a scope's generation hash sent ahead of the lookup that may need it (see
/// [`Semantic::read_ahead`]): its command is written when it is made, its reply awaited
/// only by a lookup that finds nothing in process. Dropped unread, it costs Redis one
/// script and the caller nothing more.
pub(crate) struct ReadAhead<'a> {
    read: Option<BoxFuture<'a, Option<Generation>>>,
    /// The answer, when it came at once (nothing was sent: no connection, breaker open).
    ready: Option<Generation>,
}

impl ReadAhead<'_> {
    async fn generation(self) -> Option<Generation> {
        match self.read {
            Some(read) => read.await,
            None => self.ready,
        }
    }
}

/// The semantic index of one cache: the settings, both indexes, the counters.
pub(crate) struct Semantic {
    pub(crate) config: SemanticConfig,
    /// The sketch distance past which a candidate cannot reach the threshold.
    max_distance: u32,
    local: Option<LocalIndex>,
    remote: Option<RemoteIndex>,
    pub(crate) counters: Counters,
}

impl std::fmt::Debug for Semantic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Semantic")
            .field("config", &self.config)
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl Semantic {
    pub(crate) fn new(config: SemanticConfig, l2: Option<(Arc<Guarded>, Keyspace)>) -> Self {
        metrics::describe_counter!(
            AUDITS,
            metrics::Unit::Count,
            "Audited semantic hits, by outcome (agreed, disagreed, failed): the upstream's fresh \
             answer compared with the one served"
        );
        let local = (config.l1_index_bytes > 0)
            .then(|| LocalIndex::new(config.l1_index_bytes, config.bucket_cap));
        let remote = l2.map(|(l2, ks)| RemoteIndex::new(l2, ks, config.bucket_cap));
        Semantic {
            max_distance: max_distance(config.threshold),
            config,
            local,
            remote,
            counters: Counters::default(),
        }
    }

    /// The prompt as the guard compares it.
    pub(crate) fn canonical(&self, text: &str) -> Canonical {
        self.config.guard.canonical(text)
    }

    /// Send the read of `scope`'s generation now, when the in-process index holds a mark
    /// for `scope` (else it could not use it), without waiting for its reply: a caller
    /// makes it once its exact Redis `GET` missed, before its embedding call, so that a
    /// lookup that needs the generation finds it landed. Polled here once, in the caller's task (no
    /// task is spawned). A generation read before the lookup can only be older than one
    /// read after: an insert of another instance in between is then not seen, and the
    /// Redis index is left unread (a miss, never another answer).
    pub(crate) fn read_ahead(&self, scope: Digest) -> ReadAhead<'_> {
        let mut ahead = ReadAhead {
            read: None,
            ready: None,
        };
        if let (Some(local), Some(remote)) = (&self.local, &self.remote)
            && local.tracks(&scope)
        {
            let mut read: BoxFuture<'_, Option<Generation>> = Box::pin(remote.generation(scope));
            // Woken by nobody: the lookup polls it again when it awaits it.
            match read.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(g) => ahead.ready = g,
                Poll::Pending => ahead.read = Some(read),
            }
        }
        ahead
    }

    /// The candidates of `scope` that pass the threshold and the guard against `canonical`,
    /// best first: the in-process index's, else Redis's (then kept in process too). When the
    /// in-process index finds nothing, the scope's generation read ahead (`ahead`) is
    /// awaited: the Redis index is left unread when the in-process index holds every entry
    /// up to it.
    pub(crate) async fn find(
        &self,
        scope: Digest,
        canonical: &Canonical,
        vector: &[f32],
        ahead: ReadAhead<'_>,
    ) -> Vec<Match> {
        Counters::incr(&self.counters.lookups);
        let cfg = &self.config;
        let sketch = Sketch::of(vector);
        let mut out = Vec::new();
        let mut checked: Vec<Digest> = Vec::new();
        if let Some(local) = &self.local {
            let found = local
                .lookup(
                    scope,
                    vector,
                    &sketch,
                    self.max_distance,
                    cfg.max_candidates,
                    cfg.threshold,
                )
                .await;
            for (entry, r, similarity) in found {
                checked.push(entry);
                if self.passes(canonical, &r.record.text) {
                    out.push(Match { entry, similarity });
                }
            }
            if !out.is_empty() {
                return out;
            }
            if let Some(g) = ahead.generation().await
                && local.holds(&scope, &g)
            {
                Counters::incr(&self.counters.redis_current);
                return out;
            }
        }
        let Some(remote) = &self.remote else {
            return out;
        };
        let found = remote.lookup(scope, &sketch, self.max_distance, cfg.max_candidates);
        let Some(found) = found.await else {
            Counters::incr(&self.counters.redis_skipped);
            return out;
        };
        let mut ranked: Vec<(Digest, Record, u64, f32)> = found
            .into_iter()
            .map(|(d, r, deadline)| {
                let cos = sketch::cosine(vector, &r.vector);
                (d, r, deadline, cos)
            })
            .filter(|(d, _, _, cos)| *cos >= cfg.threshold && !checked.contains(d))
            .collect();
        ranked.sort_by(|a, b| {
            b.3.total_cmp(&a.3)
                .then_with(|| a.0.as_bytes().cmp(b.0.as_bytes()))
        });
        for (entry, record, deadline, similarity) in ranked {
            if self.passes(canonical, &record.text) {
                out.push(Match { entry, similarity });
                if let Some(local) = &self.local {
                    // Kept in process as long as Redis keeps it.
                    local.insert(scope, entry, record, sketch, deadline).await;
                }
            }
        }
        out
    }

    fn passes(&self, canonical: &Canonical, candidate_text: &str) -> bool {
        let guard = &self.config.guard;
        let verdict = guard.compare(canonical, &guard.canonical(candidate_text));
        if !verdict.passes() {
            Counters::incr(&self.counters.guard_refusals);
        }
        verdict.passes()
    }

    /// Index `entry` of `scope` (its last user text `text`, embedded as `vector`) in process
    /// and in Redis for `l2_ttl` (in process for `l1_ttl` without Redis). Redis trouble is
    /// skipped.
    pub(crate) async fn insert(
        &self,
        scope: Digest,
        entry: Digest,
        text: &str,
        vector: Vec<f32>,
        l1_ttl: Duration,
        l2_ttl: Duration,
    ) {
        let record = Record {
            vector,
            text: text.to_owned(),
            created_ms: now_ms(),
        };
        let sketch = Sketch::of(&record.vector);
        // In process first: when Redis counts the insert, this index holds it. As long as
        // Redis keeps it (its answer is there that long), else as long as the L1 does.
        let ttl = if self.remote.is_some() {
            l2_ttl
        } else {
            l1_ttl
        };
        let deadline = now_ms().saturating_add(millis(ttl));
        if let Some(local) = &self.local {
            local
                .insert(scope, entry, record.clone(), sketch, deadline)
                .await;
        }
        if let Some(remote) = &self.remote {
            let inserted = remote.insert(scope, entry, &record, &sketch, l2_ttl).await;
            if let (Some(local), Some(inserted)) = (&self.local, inserted) {
                local.note_insert(scope, inserted);
            }
        }
        Counters::incr(&self.counters.indexed);
    }

    /// Drop a match whose entry is gone, from both indexes.
    pub(crate) async fn forget(&self, scope: Digest, entry: Digest) {
        Counters::incr(&self.counters.stale);
        self.remove(scope, entry).await;
    }

    /// Drop `entry` of `scope` from both indexes (its record; its Redis bucket fields go at
    /// their next read).
    pub(crate) async fn remove(&self, scope: Digest, entry: Digest) {
        if let Some(local) = &self.local {
            local.remove(scope, entry).await;
        }
        if let Some(remote) = &self.remote {
            remote.remove(scope, entry).await;
        }
    }

    /// Drop the in-process index (the cache's L1 was cleared).
    pub(crate) fn clear_local(&self) {
        if let Some(local) = &self.local {
            local.clear();
        }
    }

    pub(crate) fn stats(&self) -> SemanticStats {
        let (l1_entries, l1_bytes) = self.local.as_ref().map_or((0, 0), LocalIndex::size);
        self.counters.snapshot(l1_entries, l1_bytes)
    }

    /// Whether this semantic hit is audited: exactly `audit_fraction` of hits, spread
    /// evenly (the n-th hit is audited when `floor(n·f)` steps up).
    pub(crate) fn sample_audit(&self) -> bool {
        let f = self.config.audit_fraction;
        if f <= 0.0 {
            return false;
        }
        let n = self.counters.audit_seen.fetch_add(1, Relaxed) as f64;
        ((n + 1.0) * f).floor() > (n * f).floor()
    }

    /// Count an audit's outcome (its series is published from the count).
    pub(crate) fn record_audit(&self, outcome: AuditOutcome) {
        let c = &self.counters;
        Counters::incr(&c.audited);
        Counters::incr(match outcome {
            AuditOutcome::Agreed => &c.agreed,
            AuditOutcome::Disagreed => &c.disagreed,
            AuditOutcome::Failed => &c.audit_failed,
        });
    }
}

impl Counters {
    pub(crate) fn incr(c: &AtomicU64) {
        c.fetch_add(1, Relaxed);
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
