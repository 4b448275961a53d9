//! `LlmCache`: what users came for. It turns a chat request into a key, answers from the
//! tiers, and calls the upstream only on a miss (once per key, however many callers). It
//! owns the LLM layer on the engine: keys, per-request policy, pricing and savings, and
//! the fan-out of streams; the wire types it speaks sit below it, in `request.rs`. It must
//! never alter the provider's JSON nor store an error.

mod builder;
mod embeddings;
pub mod key;
mod policy;
mod pricing;
mod savings;
mod semantic;
mod stored;
mod stream_flight;
mod trace;
mod weight;

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use dashmap::DashMap;
use futures_util::StreamExt;

pub use self::builder::{DEFAULT_STREAM_DEADLINE, LlmCacheBuilder};
pub use self::policy::CacheControl;
pub use self::pricing::{ModelPrice, PriceTable};
use self::savings::ModelCounters;
pub use self::savings::{DEFAULT_MAX_MODEL_LABELS, OTHER_MODELS};
pub use self::savings::{LlmStats, ModelSavings};
pub use self::stored::StoredAnswer;
pub use self::stream_flight::CachedStream;
use self::stream_flight::{StreamFlight, StreamSettings};
use crate::chat::key::KeyOptions;
use crate::error::Result;
use crate::request::{ChatRequest, ChatResponse};
use crate::tiered::digest::{Digest, DigestHasherBuilder};
use crate::tiered::health::Health;
use crate::tiered::redis_stats::RedisStats;
use crate::tiered::stats::Timer;
use crate::tiered::{TieredCache, now_ms};
use crate::upstream::Upstream;
use crate::{CacheStatus, Cached};

/// Where a request's answer comes from on a miss, and what its key holds beyond the body and
/// namespace: the extension point for an integration that calls its own upstream through
/// the cache (an HTTP front, a tower layer in another client's stack).
///
/// [`Route::OWN`] is the cache's own upstream and plain keys (what `chat_with` uses, at no
/// cost). A route of your own names the upstream a miss asks and a **scope**: bytes mixed
/// into every key it makes (say, the upstream's host and a digest of the caller's
/// credentials), so its entries live in a key space of their own and never answer another
/// upstream's or another caller's requests. Pass it to [`LlmCache::chat_routed`],
/// [`LlmCache::chat_stream_routed`] or [`LlmCache::embeddings_routed`].
///
/// ```
/// # use std::sync::Arc;
/// # use llm_cache_core::{Route, Upstream};
/// # fn make(their_upstream: Arc<dyn Upstream>) -> Route {
/// let route = Route::via(their_upstream).scope(b"https://api.example.com/v1 key:1f2e".to_vec());
/// # route }
/// ```
#[derive(Clone)]
pub struct Route {
    /// Mixed into every key the route makes; `None`: keys as `chat_with` makes them.
    pub scope: Option<Arc<[u8]>>,
    /// The upstream a miss asks; `None`: the cache's own upstream.
    pub upstream: Option<Arc<dyn Upstream>>,
    /// Where this route's `/embeddings` calls go (the same base URL, credentials and retry
    /// stack as `upstream`), for a semantic lookup with
    /// [`SemanticConfig::embed_via_route`](crate::SemanticConfig::embed_via_route); `None`:
    /// the cache's own upstream embeds.
    pub embedder: Option<Arc<dyn Upstream>>,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("scope_bytes", &self.scope.as_ref().map(|s| s.len()))
            .field("own_upstream", &self.upstream.is_none())
            .field("own_embedder", &self.embedder.is_none())
            .finish()
    }
}

impl Route {
    /// The cache's own upstream, and keys as [`LlmCache::digest_with`] makes them.
    pub const OWN: Route = Route {
        scope: None,
        upstream: None,
        embedder: None,
    };

    /// A route whose misses ask `upstream`, with no scope yet (add one with
    /// [`scope`](Self::scope) unless its answers may be shared with the cache's own).
    pub fn via(upstream: Arc<dyn Upstream>) -> Self {
        Route {
            upstream: Some(upstream),
            ..Route::OWN
        }
    }

    crate::tiered::setters! {
        /// The same route with `scope` mixed into every key it makes.
        #[must_use]
        pub fn scope(scope: impl Into<Arc<[u8]>>) { scope = Some(scope.into()) }

        /// The same route with its `/embeddings` calls sent to `embedder`.
        #[must_use]
        pub fn embedder(embedder: Arc<dyn Upstream>) { embedder = Some(embedder) }
    }

    /// The upstream a miss asks.
    pub(crate) fn upstream<'a>(&'a self, own: &'a Arc<dyn Upstream>) -> &'a Arc<dyn Upstream> {
        self.upstream.as_ref().unwrap_or(own)
    }
}

/// An OpenAI-compatible chat client that answers repeats from cache. Cheap to clone.
/// Call [`LlmCache::close`] before dropping the last clone, or the Redis writes still
/// queued are lost.
///
/// ```
/// use llm_cache_core::{BoxFuture, CacheStatus, ChatMessage, ChatRequest, ChatResponse, Choice};
/// use llm_cache_core::{LlmCache, Result, Upstream};
///
/// /// Answers every request with the same text, from memory.
/// struct Canned;
///
/// impl Upstream for Canned {
///     fn chat<'a>(&'a self, r: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse>> {
///         let message = ChatMessage::assistant("A cache keeps answers.");
///         let choices = vec![Choice { message, ..Default::default() }];
///         let response = ChatResponse { model: r.model.clone(), choices, ..Default::default() };
///         Box::pin(async move { Ok(response) })
///     }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<()> {
/// let cache = LlmCache::builder().upstream(Canned).build().await?; // no Redis: L1-only
/// let request = ChatRequest::new("gpt-4.1").message(ChatMessage::user("What is a cache?"));
/// assert_eq!(cache.chat(&request).await?.status(), CacheStatus::Miss);
/// let again = cache.chat(&request).await?;
/// assert_eq!(again.status(), CacheStatus::HitL1);
/// assert_eq!(again.text().as_deref(), Some("A cache keeps answers."));
/// assert_eq!(cache.stats().cache.misses, 1);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct LlmCache {
    inner: Arc<Inner>,
}

struct Inner {
    tiers: TieredCache<StoredAnswer>,
    upstream: Arc<dyn Upstream>,
    key_options: KeyOptions,
    prices: PriceTable,
    max_cacheable_temperature: Option<f64>,
    models: DashMap<String, Arc<ModelCounters>>,
    /// Models with counters of their own, at most `max_model_labels` (see `savings`).
    model_labels: AtomicUsize,
    max_model_labels: usize,
    /// The counters of the models past the cap (also in `models`, under `other`).
    other_models: OnceLock<Arc<ModelCounters>>,
    bypassed: AtomicU64,
    upstream_calls: Arc<AtomicU64>,
    /// Streamed flights in progress, so concurrent streams of one key share one upstream
    /// stream (the tiered flight underneath carries the assembled answer).
    streams: DashMap<Digest, Arc<StreamFlight>, DigestHasherBuilder>,
    stream_chunk_chars: usize,
    abort_abandoned_streams: bool,
    stream_deadline: Duration,
    /// The per-input embeddings path and its tier.
    embeddings: crate::embeddings::Embeddings,
    /// The opt-in semantic index (`None` unless the builder enabled it).
    semantic: Option<Arc<crate::semantic::Semantic>>,
    /// The answers stored whole (`/responses`, `/completions`) of the HTTP layers.
    bodies: crate::bodies::BodyCache,
}

impl fmt::Debug for LlmCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmCache")
            .field("tiers", &self.inner.tiers)
            .field("key_options", &self.inner.key_options)
            .finish_non_exhaustive()
    }
}

impl LlmCache {
    /// Start configuring a cache.
    pub fn builder() -> LlmCacheBuilder {
        LlmCacheBuilder::new()
    }

    /// `tiers`: the answers' tier and the vectors' (the embeddings path).
    pub(crate) fn from_parts(
        (tiers, embeddings, bodies): (
            TieredCache<StoredAnswer>,
            crate::embeddings::Embeddings,
            crate::bodies::BodyCache,
        ),
        upstream: Arc<dyn Upstream>,
        key_options: KeyOptions,
        prices: PriceTable,
        max_cacheable_temperature: Option<f64>,
        streaming: StreamSettings,
        max_model_labels: usize,
    ) -> Self {
        savings::describe();
        LlmCache {
            inner: Arc::new(Inner {
                tiers,
                upstream,
                key_options,
                prices,
                max_cacheable_temperature,
                models: DashMap::new(),
                model_labels: AtomicUsize::new(0),
                max_model_labels,
                other_models: OnceLock::new(),
                bypassed: AtomicU64::new(0),
                upstream_calls: Arc::new(AtomicU64::new(0)),
                streams: DashMap::with_hasher(DigestHasherBuilder),
                stream_chunk_chars: streaming.chunk_chars,
                abort_abandoned_streams: streaming.abort_abandoned,
                stream_deadline: streaming.deadline,
                embeddings,
                semantic: None,
                bodies,
            }),
        }
    }

    /// Answer `request` from cache, or from the upstream on a miss.
    ///
    /// Concurrent callers with the same key share one flight: one leads it (status `Miss`,
    /// or `HitL2` when Redis had the answer) and the others wait for its result (status
    /// `Coalesced`), so the upstream is called at most once per key at a time.
    ///
    /// # Errors
    ///
    /// As [`chat_with`](Self::chat_with): the request's validation error, or the flight's
    /// error, the same for every caller of the flight and never cached.
    ///
    /// # Cancellation
    ///
    /// As [`chat_with`](Self::chat_with): dropping the future never cancels an upstream
    /// call already made; its answer still fills the cache.
    pub async fn chat(&self, request: &ChatRequest) -> Result<Cached<ChatResponse>> {
        self.chat_with(request, &CacheControl::default()).await
    }

    /// [`chat`](Self::chat) with per-request control: namespace, TTL, refresh, no-store,
    /// bypass.
    ///
    /// # Errors
    ///
    /// `InvalidRequest`, before anything else (no key, no copy, no upstream call), when
    /// `request` fails [`ChatRequest::validate`], e.g. nests deeper than
    /// [`MAX_REQUEST_DEPTH`](crate::MAX_REQUEST_DEPTH). The same holds for every method
    /// that takes a request. Otherwise:
    ///
    /// - The upstream's error, unchanged: from the built-in client kind `Upstream` (with
    ///   [`status`](crate::Error::status) and [`retry_after`](crate::Error::retry_after)),
    ///   `Connect` or `Timeout`; from an [`Upstream`] of your own whatever it returns. An
    ///   answer without any choices is an `Upstream` error too. Every caller of the flight
    ///   gets the same error (a clone), and errors are never cached: the next call asks the
    ///   upstream again.
    /// - `FetchAborted` for every caller of the flight when the upstream call panicked; no
    ///   flight is left stuck.
    /// - `Timeout` for this caller alone when it waited longer than the builder's
    ///   `waiter_deadline` (default 300 s): the flight goes on, and its answer still fills
    ///   the cache.
    ///
    /// Redis trouble is never an error here: the Redis tier fails open.
    ///
    /// # Cancellation
    ///
    /// Dropping the returned future never cancels an upstream call that has started: the
    /// fetch runs in a task of its own, other callers keep waiting on it, and its answer
    /// fills L1 and (in the background) Redis. Dropped while its flight was still looking
    /// in the tiers, the flight is given up and a waiting caller leads one anew. A bypassed
    /// request (`bypass`, or above `max_cacheable_temperature`) has no flight: its upstream
    /// call runs in the caller's future and is dropped with it.
    pub async fn chat_with(
        &self,
        request: &ChatRequest,
        control: &CacheControl,
    ) -> Result<Cached<ChatResponse>> {
        self.chat_routed(request, control, &Route::OWN).await
    }

    /// [`chat_with`](Self::chat_with) for an HTTP-level layer: the answer comes from the
    /// route's upstream on a miss and the key holds the route's scope too (see
    /// [`Route`]). Same tiers, flights, stats and prices as `chat_with`.
    pub async fn chat_routed(
        &self,
        request: &ChatRequest,
        control: &CacheControl,
        route: &Route,
    ) -> Result<Cached<ChatResponse>> {
        // First of all: nothing below (the key, the trace, a copy) may see a request that
        // nests too deep to walk.
        request.validate()?;
        let answer = self.answer(request, control, route);
        trace::traced(self, false, request, control, route, answer, Cached::status).await
    }

    async fn answer(
        &self,
        request: &ChatRequest,
        control: &CacheControl,
        route: &Route,
    ) -> Result<Cached<ChatResponse>> {
        let inner = &self.inner;
        if control.bypass || !policy::request_is_cacheable(request, inner.max_cacheable_temperature)
        {
            return self.bypass(request, control, route).await;
        }
        let digest = self.route_digest(request, control, route);
        let counters = inner.model(&request.model);
        if !control.fetch.refresh
            && let Some(hit) = inner.tiers.get(&digest).await
        {
            let hit = Cached::answer(hit);
            counters.saved(CacheStatus::HitL1, hit.value());
            return Ok(hit);
        }
        let mut pending = None;
        if let Some(semantic) = inner.semantic.as_ref().filter(|_| control.semantic)
            && !control.fetch.refresh
        {
            match self
                .semantic_before(semantic, request, control, route, digest)
                .await
            {
                semantic::Before::Served(hit) => {
                    counters.saved(hit.status(), hit.value());
                    return Ok(hit);
                }
                semantic::Before::Miss(p) => pending = p,
            }
        }
        // A streamed flight of this key must not be aborted while this caller waits on it.
        let _hold = if inner.abort_abandoned_streams {
            inner.streams.get(&digest).map(|f| f.hold())
        } else {
            None
        };
        // The fetch owns a copy of the request, made only when this caller's flight misses.
        let make_fetch = || {
            let upstream = Arc::clone(route.upstream(&inner.upstream));
            let calls = Arc::clone(&inner.upstream_calls);
            let owned = request.clone();
            move || async move {
                calls.fetch_add(1, Relaxed);
                let response = upstream.chat(&owned).await?;
                policy::check_response(&response)?;
                Ok(StoredAnswer::from(response))
            }
        };
        let out = Cached::answer(
            inner
                .tiers
                .get_or_fetch_lazy_after_l1(digest, &control.fetch, make_fetch)
                .await?,
        );
        if out.status().is_hit() {
            counters.saved(out.status(), out.value());
        } else {
            counters.missed();
        }
        if let Some(p) =
            pending.filter(|_| out.status() == CacheStatus::Miss && !control.fetch.no_store)
        {
            self.semantic_index(p, digest, control.fetch.ttl);
        }
        Ok(out)
    }

    async fn bypass(
        &self,
        request: &ChatRequest,
        control: &CacheControl,
        route: &Route,
    ) -> Result<Cached<ChatResponse>> {
        let inner = &self.inner;
        inner.bypassed.fetch_add(1, Relaxed);
        inner.upstream_calls.fetch_add(1, Relaxed);
        let exported = &inner.tiers.counters().exported;
        let _total = Timer::start(&exported.total);
        let upstream = Timer::start(&exported.upstream);
        let response = route.upstream(&inner.upstream).chat(request).await;
        drop(upstream);
        let response = response?;
        policy::check_response(&response)?;
        let digest = self.route_digest(request, control, route);
        Ok(Cached::new(
            Arc::new(response),
            CacheStatus::Bypass,
            now_ms(),
            digest,
        ))
    }

    /// Answer many requests, at most `concurrency` upstream calls at a time. Results keep
    /// the input order, one per request; identical requests cost one call.
    ///
    /// # Errors
    ///
    /// Never fails as a whole: each result is what [`chat_with`](Self::chat_with) returns
    /// for its request, and a duplicate gets a clone of its first occurrence's result
    /// (error included, which is not cached).
    ///
    /// # Cancellation
    ///
    /// Dropping the future drops the calls not yet answered; as with
    /// [`chat_with`](Self::chat_with), an upstream call already made runs on and fills the
    /// cache.
    pub async fn batch(
        &self,
        requests: &[ChatRequest],
        concurrency: usize,
    ) -> Vec<Result<Cached<ChatResponse>>> {
        self.batch_with(requests, &CacheControl::default(), concurrency)
            .await
    }

    /// [`batch`](Self::batch) with one control for every request. Errors and cancellation
    /// as [`batch`](Self::batch).
    pub async fn batch_with(
        &self,
        requests: &[ChatRequest],
        control: &CacheControl,
        concurrency: usize,
    ) -> Vec<Result<Cached<ChatResponse>>> {
        // Duplicates are grouped by digest so they cost one call even with L1 disabled. An
        // invalid request is answered with its error here, before it is keyed.
        let mut first_of: std::collections::HashMap<Digest, usize> = Default::default();
        let mut leader_of = Vec::with_capacity(requests.len());
        let mut answers: Vec<Option<Result<Cached<ChatResponse>>>> =
            (0..requests.len()).map(|_| None).collect();
        for (i, r) in requests.iter().enumerate() {
            let lead = match r.validate() {
                Ok(()) => *first_of.entry(self.digest_with(r, control)).or_insert(i),
                Err(e) => {
                    answers[i] = Some(Err(e));
                    i
                }
            };
            leader_of.push(lead);
        }
        let unique: Vec<usize> = (0..requests.len())
            .filter(|&i| leader_of[i] == i && answers[i].is_none())
            .collect();
        let mut done = futures_util::stream::iter(unique)
            .map(|i| async move { (i, self.chat_with(&requests[i], control).await) })
            .buffer_unordered(concurrency.max(1));
        while let Some((i, answer)) = done.next().await {
            answers[i] = Some(answer);
        }
        drop(done);
        (0..requests.len())
            .map(|i| {
                let lead = leader_of[i];
                let answer = answers[lead]
                    .as_ref()
                    .expect("every unique request answered");
                match answer {
                    Ok(c) if lead != i => {
                        self.inner
                            .model(&requests[i].model)
                            .saved(CacheStatus::Coalesced, c.value());
                        Ok(Cached::new(
                            c.clone().into_arc(),
                            CacheStatus::Coalesced,
                            c.created_at_ms(),
                            c.digest(),
                        ))
                    }
                    other => other.clone(),
                }
            })
            .collect()
    }

    /// Remove the cached answer of `request` (global namespace) from both tiers.
    ///
    /// # Errors
    ///
    /// As [`invalidate_with`](Self::invalidate_with).
    pub async fn invalidate(&self, request: &ChatRequest) -> Result<()> {
        self.invalidate_with(request, &CacheControl::default())
            .await
    }

    /// Remove the cached answer of `request` in the control's namespace from both tiers,
    /// and tell the other instances to drop it from their L1. A flight of the key running
    /// now is detached: it still answers its callers but no longer joins new ones.
    ///
    /// # Errors
    ///
    /// `InvalidRequest` as for [`chat_with`](Self::chat_with). `Redis` when Redis could not
    /// confirm the removal, or removed it but could not tell the other instances; the L1
    /// removal has happened either way. See [`TieredCache::invalidate`].
    ///
    /// # Cancellation
    ///
    /// Dropping the future may leave the Redis removal or the announcement undone: call it
    /// again.
    pub async fn invalidate_with(
        &self,
        request: &ChatRequest,
        control: &CacheControl,
    ) -> Result<()> {
        self.invalidate_routed(request, control, &Route::OWN).await
    }

    /// [`invalidate_with`](Self::invalidate_with) for an HTTP-level layer: the answer
    /// [`chat_routed`](Self::chat_routed) (or `chat_stream_routed`) stored for `request` on
    /// `route` (whose scope is part of the key) is removed, so the next identical request
    /// on that route is a miss.
    ///
    /// # Errors
    ///
    /// As [`invalidate_with`](Self::invalidate_with).
    pub async fn invalidate_routed(
        &self,
        request: &ChatRequest,
        control: &CacheControl,
        route: &Route,
    ) -> Result<()> {
        request.validate()?;
        let digest = self.route_digest(request, control, route);
        let out = self.inner.tiers.invalidate(&digest).await;
        self.semantic_unindex(request, control, route, digest).await;
        out
    }

    /// Invalidate every answer of `namespace` (a tenant) at once, in every tier of every
    /// instance, in O(1): the namespace's generation in Redis, which is part of each of its
    /// keys, moves on, so its old entries are never read again (they expire by their TTL),
    /// and the new generation is published to the other instances. Without Redis it applies
    /// to this instance only. With Redis unreachable this instance clears its L1 and the
    /// error says the other instances were not reached.
    ///
    /// # Errors
    ///
    /// `Redis` when Redis did not take the new generation (down, slow, breaker open): this
    /// instance's L1 is cleared, the other instances may still serve the namespace; retry.
    ///
    /// # Cancellation
    ///
    /// Dropping the future may leave the bump undone or unannounced: call it again.
    pub async fn invalidate_namespace(&self, namespace: &str) -> Result<()> {
        self.inner.tiers.bump_generation(namespace).await
    }

    /// The digest `request` is cached under in the control's namespace (and the namespace's
    /// current generation, see [`invalidate_namespace`](Self::invalidate_namespace)).
    pub fn digest_with(&self, request: &ChatRequest, control: &CacheControl) -> Digest {
        let digest = key::derive(request, &control.namespace, &self.inner.key_options);
        crate::tiered::invalidation::scoped(digest, self.inner.tiers.generation(&control.namespace))
    }

    /// The digest of `request` on `route`: [`digest_with`](Self::digest_with) for the
    /// cache's own route, else a scoped digest (a key space of its own).
    pub(crate) fn route_digest(
        &self,
        request: &ChatRequest,
        control: &CacheControl,
        route: &Route,
    ) -> Digest {
        match &route.scope {
            None => self.digest_with(request, control),
            Some(scope) => {
                let canonical = key::canonical_json(request, &self.inner.key_options);
                self.scoped_digest(&canonical, control, scope)
            }
        }
    }

    /// The digest of a canonical body with `scope` in `control`'s namespace and its current
    /// generation (see [`key::derive_scoped`]).
    #[doc(hidden)]
    pub fn scoped_digest(&self, canonical: &[u8], control: &CacheControl, scope: &[u8]) -> Digest {
        let digest = key::derive_scoped(canonical, &control.namespace, scope);
        crate::tiered::invalidation::scoped(digest, self.inner.tiers.generation(&control.namespace))
    }

    /// The key options in use.
    #[doc(hidden)]
    pub fn key_options(&self) -> &KeyOptions {
        &self.inner.key_options
    }

    /// Count a request that went past the cache on its caller's wish (an HTTP layer's
    /// `bypass`), as [`chat_with`](Self::chat_with) counts its own.
    #[doc(hidden)]
    pub fn count_bypassed(&self) {
        self.inner.bypassed.fetch_add(1, Relaxed);
        self.inner.upstream_calls.fetch_add(1, Relaxed);
    }

    /// The answers the HTTP layers store whole (`/responses`, `/completions`): a tier
    /// beside the chat tier (same knobs, key prefix and Redis connection, counters of its
    /// own) and its streamed flights. The async-openai layer and the HTTP front share it.
    pub fn bodies(&self) -> &crate::bodies::BodyCache {
        &self.inner.bodies
    }

    /// The generic tiers underneath, for inspection (`inflight()`, `l2_key()`...).
    pub fn tiers(&self) -> &TieredCache<StoredAnswer> {
        &self.inner.tiers
    }

    /// The price table in use.
    pub fn prices(&self) -> &PriceTable {
        &self.inner.prices
    }

    /// Check the Redis tier now; see [`TieredCache::health`].
    pub async fn health(&self) -> Health {
        self.tiers().health().await
    }

    /// What Redis says about itself and how many keys the cache has there; see
    /// [`TieredCache::redis_stats`].
    ///
    /// # Errors
    ///
    /// As [`TieredCache::redis_stats`].
    pub async fn redis_stats(&self) -> Result<RedisStats> {
        self.tiers().redis_stats().await
    }

    /// See [`TieredCache::redis_stats_scanning`].
    pub async fn redis_stats_scanning(&self, limit: u64) -> Result<RedisStats> {
        self.tiers().redis_stats_scanning(limit).await
    }

    /// Wait until the answers, embeddings and stored bodies queued for Redis so far are written (and the
    /// lease releases under way are done), at most `timeout`; see [`TieredCache::flush`].
    ///
    /// # Errors
    ///
    /// `Timeout` when some were still pending at the deadline (they go on).
    pub async fn flush(&self, timeout: Duration) -> Result<()> {
        let embeddings = self.inner.embeddings.tiers();
        let (answers, vectors, bodies) = futures_util::join!(
            self.tiers().flush(timeout),
            embeddings.flush(timeout),
            self.inner.bodies.tiers().flush(timeout)
        );
        answers.and(vectors).and(bodies)
    }

    /// Stop in order before dropping the cache, at most `timeout`: write what is queued,
    /// release the leases held by fetches under way, take no more leases; see
    /// [`TieredCache::close`] (which also says what dropping without it loses). The proxy
    /// calls it on SIGTERM.
    ///
    /// # Errors
    ///
    /// `Timeout` when writes or leases were still pending at the deadline.
    pub async fn close(&self, timeout: Duration) -> Result<()> {
        let embeddings = self.inner.embeddings.tiers();
        let (answers, vectors, bodies) = futures_util::join!(
            self.tiers().close(timeout),
            embeddings.close(timeout),
            self.inner.bodies.tiers().close(timeout)
        );
        answers.and(vectors).and(bodies)
    }
}
