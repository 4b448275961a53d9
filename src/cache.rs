//! `LlmCache`: what users came for. It turns a chat request into a key, answers from the
//! tiers, and calls the upstream only on a miss (once per key, however many callers).
//! It never alters the provider's JSON and never stores an error.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use std::pin::Pin;
use std::task::{Context, Poll};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};

use crate::builder::LlmCacheBuilder;
use crate::digest::{Digest, DigestHasherBuilder};
use crate::error::{Error, ErrorKind, Result};
use crate::key::{self, KeyOptions};
use crate::metrics::{ModelExported, Stats, Timer};
use crate::policy::{self, CacheControl};
use crate::pricing::{ModelPrice, PriceTable};
use crate::request::{ChatRequest, ChatResponse};
use crate::stream::{Assembler, ChatChunk, ReplayOptions, StreamFlight, replay};
use crate::tiered::{CacheStatus, Cached, FetchOptions, TieredCache, now_ms};
use crate::upstream::Upstream;

/// Dollars are counted in nano-dollars so that a relaxed atomic add can do it.
const NANOS_PER_DOLLAR: f64 = 1e9;

/// What the cache saved for one model.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct ModelSavings {
    /// Answers served without paying for a call (L1, L2, coalesced).
    pub hits: u64,
    /// Requests that went to the upstream for this model.
    pub misses: u64,
    /// Tokens (prompt + completion) of the answers served from cache.
    pub tokens_saved: u64,
    /// Dollars those tokens would have cost, by the price table.
    pub cost_saved_usd: f64,
}

/// A snapshot of an [`LlmCache`]'s counters.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct LlmStats {
    /// The tiers' counters (hits per tier, misses, coalesced, L2 trouble...).
    pub cache: Stats,
    /// Requests that did not use the cache (bypass, or above the temperature rule).
    pub bypassed: u64,
    /// Calls made to the upstream (misses, refreshes, bypasses).
    pub upstream_calls: u64,
    /// Tokens of all answers served from cache.
    pub tokens_saved: u64,
    /// Dollars those answers would have cost.
    pub cost_saved_usd: f64,
    /// The same, per requested model.
    pub per_model: BTreeMap<String, ModelSavings>,
}

#[derive(Default)]
struct ModelCounters {
    price: Option<ModelPrice>,
    hits: AtomicU64,
    misses: AtomicU64,
    tokens: AtomicU64,
    nano_dollars: AtomicU64,
    /// The same, through the `metrics` facade.
    exported: ModelExported,
}

/// An OpenAI-compatible chat client that answers repeats from cache. Cheap to clone.
#[derive(Clone)]
pub struct LlmCache {
    inner: Arc<Inner>,
}

struct Inner {
    tiers: TieredCache<ChatResponse>,
    upstream: Arc<dyn Upstream>,
    key_options: KeyOptions,
    prices: PriceTable,
    max_cacheable_temperature: Option<f64>,
    models: DashMap<String, Arc<ModelCounters>>,
    bypassed: AtomicU64,
    upstream_calls: Arc<AtomicU64>,
    /// Streamed flights in progress, so concurrent streams of one key share one upstream
    /// stream (the tiered flight underneath carries the assembled answer).
    streams: DashMap<Digest, Arc<StreamFlight>, DigestHasherBuilder>,
    stream_chunk_chars: usize,
    abort_abandoned_streams: bool,
    stream_deadline: Duration,
}

/// Settings of the streaming path, from the builder.
#[derive(Debug, Clone, Copy)]
pub(crate) struct StreamSettings {
    pub chunk_chars: usize,
    pub abort_abandoned: bool,
    /// The longest a streamed flight may last (`stream_deadline`).
    pub deadline: Duration,
}

/// How much longer than the stream deadline the driver of a streamed flight waits on the
/// tiers: the fetch's own deadline fires first (so its error, and nothing stored, is what
/// the consumers see); this only bounds a driver stuck on a flight that is not its own.
const STREAM_DRIVER_GRACE: Duration = Duration::from_secs(1);

/// A streamed answer: `chat.completion.chunk`s, and where they come from. Dropping it
/// detaches this consumer only; the upstream stream is still read to the end and stored
/// (unless the builder's `abort_abandoned_streams` says otherwise).
pub struct CachedStream {
    status: CacheStatus,
    digest: Digest,
    chunks: BoxStream<'static, Result<ChatChunk>>,
}

impl CachedStream {
    /// Where the chunks come from: a replay of an L1 or L2 hit, a live upstream stream
    /// (miss), another caller's stream (coalesced), or the upstream directly (bypass).
    pub fn status(&self) -> CacheStatus {
        self.status
    }

    /// The key's digest.
    pub fn digest(&self) -> Digest {
        self.digest
    }
}

impl Stream for CachedStream {
    type Item = Result<ChatChunk>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.chunks.poll_next_unpin(cx)
    }
}

impl fmt::Debug for CachedStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CachedStream")
            .field("status", &self.status)
            .field("digest", &self.digest)
            .finish_non_exhaustive()
    }
}

fn is_usage_only(chunk: &Result<ChatChunk>) -> bool {
    matches!(chunk, Ok(c) if c.choices.is_empty() && c.usage.is_some())
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

    pub(crate) fn from_parts(
        tiers: TieredCache<ChatResponse>,
        upstream: Arc<dyn Upstream>,
        key_options: KeyOptions,
        prices: PriceTable,
        max_cacheable_temperature: Option<f64>,
        streaming: StreamSettings,
    ) -> Self {
        LlmCache {
            inner: Arc::new(Inner {
                tiers,
                upstream,
                key_options,
                prices,
                max_cacheable_temperature,
                models: DashMap::new(),
                bypassed: AtomicU64::new(0),
                upstream_calls: Arc::new(AtomicU64::new(0)),
                streams: DashMap::with_hasher(DigestHasherBuilder),
                stream_chunk_chars: streaming.chunk_chars,
                abort_abandoned_streams: streaming.abort_abandoned,
                stream_deadline: streaming.deadline,
            }),
        }
    }

    /// Answer `request` from cache, or from the upstream on a miss.
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
    /// that takes a request.
    pub async fn chat_with(
        &self,
        request: &ChatRequest,
        control: &CacheControl,
    ) -> Result<Cached<ChatResponse>> {
        // First of all: nothing below (the key, the trace, a copy) may see a request that
        // nests too deep to walk.
        request.validate()?;
        let span = crate::metrics::request_span(false, &request.model);
        if span.is_disabled() {
            return self.answer(request, control).await;
        }
        let traced = crate::metrics::Traced::start(&span, self.digest_with(request, control));
        let out =
            tracing::Instrument::instrument(self.answer(request, control), span.clone()).await;
        traced.finish(out.as_ref().map(|c| c.status()));
        out
    }

    async fn answer(
        &self,
        request: &ChatRequest,
        control: &CacheControl,
    ) -> Result<Cached<ChatResponse>> {
        let inner = &self.inner;
        if control.bypass || !policy::request_is_cacheable(request, inner.max_cacheable_temperature)
        {
            return self.bypass(request, control).await;
        }
        let digest = self.digest_with(request, control);
        let counters = inner.model(&request.model);
        if !control.fetch.refresh
            && let Some(hit) = inner.tiers.get(&digest).await
        {
            counters.saved(CacheStatus::HitL1, hit.value());
            return Ok(hit);
        }
        // A streamed flight of this key must not be aborted while this caller waits on it.
        let _hold = if inner.abort_abandoned_streams {
            inner.streams.get(&digest).map(|f| f.hold())
        } else {
            None
        };
        // The fetch owns a copy of the request, made only when this caller's flight misses.
        let make_fetch = || {
            let upstream = Arc::clone(&inner.upstream);
            let calls = Arc::clone(&inner.upstream_calls);
            let owned = request.clone();
            move || async move {
                calls.fetch_add(1, Relaxed);
                let response = upstream.chat(&owned).await?;
                policy::check_response(&response)?;
                Ok(response)
            }
        };
        let out = inner
            .tiers
            .get_or_fetch_lazy(digest, &control.fetch, make_fetch)
            .await?;
        if out.status().is_hit() {
            counters.saved(out.status(), out.value());
        } else {
            counters.missed();
        }
        Ok(out)
    }

    async fn bypass(
        &self,
        request: &ChatRequest,
        control: &CacheControl,
    ) -> Result<Cached<ChatResponse>> {
        let inner = &self.inner;
        inner.bypassed.fetch_add(1, Relaxed);
        inner.upstream_calls.fetch_add(1, Relaxed);
        let exported = &inner.tiers.counters().exported;
        let _total = Timer::start(&exported.total);
        let upstream = Timer::start(&exported.upstream);
        let response = inner.upstream.chat(request).await;
        drop(upstream);
        let response = response?;
        policy::check_response(&response)?;
        let digest = self.digest_with(request, control);
        Ok(Cached::new(
            Arc::new(response),
            CacheStatus::Bypass,
            now_ms(),
            digest,
        ))
    }

    /// Answer `request` as a stream of chunks: a replay on a hit, the live upstream stream
    /// on a miss. Concurrent streams of one key share one upstream stream; a late joiner
    /// gets every chunk already seen, then the live ones. Returns once the first chunk is
    /// there (or with the error that came before any). A live stream may last up to the
    /// builder's `stream_deadline` (30 min by default), however short the waiter deadline;
    /// past it every consumer gets a `Timeout` error and nothing is stored.
    pub async fn chat_stream(&self, request: &ChatRequest) -> Result<CachedStream> {
        self.chat_stream_with(request, &CacheControl::default())
            .await
    }

    /// [`chat_stream`](Self::chat_stream) with per-request control.
    pub async fn chat_stream_with(
        &self,
        request: &ChatRequest,
        control: &CacheControl,
    ) -> Result<CachedStream> {
        // Before the key, the trace or a copy: see `chat_with`.
        request.validate()?;
        let span = crate::metrics::request_span(true, &request.model);
        if span.is_disabled() {
            return self.answer_stream(request, control).await;
        }
        let traced = crate::metrics::Traced::start(&span, self.digest_with(request, control));
        let out =
            tracing::Instrument::instrument(self.answer_stream(request, control), span.clone())
                .await;
        traced.finish(out.as_ref().map(|c| c.status()));
        out
    }

    async fn answer_stream(
        &self,
        request: &ChatRequest,
        control: &CacheControl,
    ) -> Result<CachedStream> {
        let inner = &self.inner;
        let mut options = ReplayOptions::for_request(request);
        options.chunk_chars = inner.stream_chunk_chars;
        let usage = options.include_usage;
        let digest = self.digest_with(request, control);
        if control.bypass || !policy::request_is_cacheable(request, inner.max_cacheable_temperature)
        {
            inner.bypassed.fetch_add(1, Relaxed);
            inner.upstream_calls.fetch_add(1, Relaxed);
            let live = inner.upstream.chat_stream(request).await?;
            let chunks = if usage {
                live
            } else {
                live.filter(|c| std::future::ready(!is_usage_only(c)))
                    .boxed()
            };
            return Ok(CachedStream {
                status: CacheStatus::Bypass,
                digest,
                chunks,
            });
        }
        let counters = inner.model(&request.model);
        if !control.fetch.refresh
            && let Some(hit) = inner.tiers.get(&digest).await
        {
            counters.saved(CacheStatus::HitL1, hit.value());
            let chunks = replay(hit.value(), &options);
            return Ok(CachedStream {
                status: CacheStatus::HitL1,
                digest,
                chunks: futures_util::stream::iter(chunks.into_iter().map(Ok)).boxed(),
            });
        }
        let (flight, leads) = self.join_stream(digest, control.fetch.refresh);
        if leads {
            self.drive_stream(Arc::clone(&flight), digest, request, &control.fetch);
        }
        // Subscribe before waiting, so the flight counts this consumer from the start.
        let hit = Arc::new(std::sync::OnceLock::<CacheStatus>::new());
        let on_end = {
            let (hit, counters) = (Arc::clone(&hit), Arc::clone(&counters));
            move |answer: &ChatResponse| {
                if let Some(&status) = hit.get() {
                    counters.saved(status, answer);
                }
            }
        };
        let chunks = flight.subscribe(usage, on_end);
        let origin = flight.first().await?;
        let status = if leads {
            origin
        } else {
            CacheStatus::Coalesced
        };
        if !leads {
            inner.tiers.count_coalesced();
        }
        if status.is_hit() {
            let _ = hit.set(status);
        } else {
            counters.missed();
        }
        Ok(CachedStream {
            status,
            digest,
            chunks,
        })
    }

    fn join_stream(&self, digest: Digest, refresh: bool) -> (Arc<StreamFlight>, bool) {
        match self.inner.streams.entry(digest) {
            // A flight that already failed is about to leave the map: start anew.
            Entry::Occupied(e) if !refresh && !e.get().failed() => (Arc::clone(e.get()), false),
            Entry::Occupied(mut e) => {
                let flight = StreamFlight::new();
                e.insert(Arc::clone(&flight));
                (flight, true)
            }
            Entry::Vacant(e) => {
                let flight = StreamFlight::new();
                e.insert(Arc::clone(&flight));
                (flight, true)
            }
        }
    }

    /// Run a streamed flight in the background: through the tiers (L2, or a flight already
    /// running), else the upstream stream, whose chunks go to every consumer as they arrive
    /// and whose assembled answer fills the tiers.
    ///
    /// The flight is bounded by `stream_deadline`, not by the waiter deadline: a stream
    /// longer than the waiter deadline is still delivered whole to every consumer and
    /// stored. Past `stream_deadline` the upstream stream is dropped, the consumers get a
    /// `Timeout` error, and nothing is stored.
    fn drive_stream(
        &self,
        flight: Arc<StreamFlight>,
        digest: Digest,
        request: &ChatRequest,
        fetch_options: &FetchOptions,
    ) {
        let inner = Arc::clone(&self.inner);
        let request = request.clone();
        let mut fetch_options = fetch_options.clone();
        let stream_deadline = inner.stream_deadline;
        fetch_options.wait = Some(stream_deadline.saturating_add(STREAM_DRIVER_GRACE));
        let until = tokio::time::Instant::now() + stream_deadline;
        tokio::spawn(async move {
            let fetch = {
                let flight = Arc::clone(&flight);
                let upstream = Arc::clone(&inner.upstream);
                let calls = Arc::clone(&inner.upstream_calls);
                let abort = inner.abort_abandoned_streams;
                move || async move {
                    let read = Self::read_stream(flight, upstream, calls, abort, request);
                    match tokio::time::timeout_at(until, read).await {
                        Ok(answer) => answer,
                        Err(_) => Err(Error::new(
                            ErrorKind::Timeout,
                            format!(
                                "the stream was cut at the stream deadline \
                                 (stream_deadline = {stream_deadline:?}); nothing was stored"
                            ),
                        )),
                    }
                }
            };
            match inner
                .tiers
                .get_or_fetch_with(digest, &fetch_options, fetch)
                .await
            {
                Ok(cached) => {
                    if !flight.has_chunks() {
                        // Answered by a tier or by a non-streamed flight: replay it.
                        flight.set_origin(cached.status());
                        let all = ReplayOptions {
                            chunk_chars: inner.stream_chunk_chars,
                            include_usage: true,
                        };
                        for chunk in replay(cached.value(), &all) {
                            flight.push(chunk);
                        }
                    }
                    flight.finish(Ok(cached.into_arc()));
                }
                Err(e) => flight.finish(Err(e)),
            }
            inner
                .streams
                .remove_if(&digest, |_, f| Arc::ptr_eq(f, &flight));
        });
    }

    /// A streamed flight's fetch: the upstream stream, each chunk to every consumer as it
    /// arrives, assembled into the answer that fills the tiers.
    async fn read_stream(
        flight: Arc<StreamFlight>,
        upstream: Arc<dyn Upstream>,
        calls: Arc<AtomicU64>,
        abort: bool,
        request: ChatRequest,
    ) -> Result<ChatResponse> {
        flight.set_origin(CacheStatus::Miss);
        calls.fetch_add(1, Relaxed);
        let mut live = upstream.chat_stream(&request).await?;
        let mut assembler = Assembler::new();
        while let Some(chunk) = live.next().await {
            let chunk = chunk?;
            assembler.push(&chunk)?;
            flight.push(chunk);
            if abort && flight.consumers() == 0 {
                return Err(Error::new(
                    ErrorKind::FetchAborted,
                    "every consumer of the stream went away (abort_abandoned_streams)",
                ));
            }
        }
        let answer = assembler.finish()?;
        policy::check_response(&answer)?;
        Ok(answer)
    }

    /// Answer many requests, at most `concurrency` upstream calls at a time. Results keep
    /// the input order, one per request; identical requests cost one call.
    pub async fn batch(
        &self,
        requests: &[ChatRequest],
        concurrency: usize,
    ) -> Vec<Result<Cached<ChatResponse>>> {
        self.batch_with(requests, &CacheControl::default(), concurrency)
            .await
    }

    /// [`batch`](Self::batch) with one control for every request.
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
    pub async fn invalidate(&self, request: &ChatRequest) -> Result<()> {
        self.invalidate_with(request, &CacheControl::default())
            .await
    }

    /// Remove the cached answer of `request` in the control's namespace from both tiers.
    pub async fn invalidate_with(
        &self,
        request: &ChatRequest,
        control: &CacheControl,
    ) -> Result<()> {
        request.validate()?;
        let digest = self.digest_with(request, control);
        self.inner.tiers.invalidate(&digest).await
    }

    /// Invalidate every answer of `namespace` (a tenant) at once, in every tier of every
    /// instance, in O(1): the namespace's generation in Redis, which is part of each of its
    /// keys, moves on, so its old entries are never read again (they expire by their TTL),
    /// and the new generation is published to the other instances. Without Redis it applies
    /// to this instance only. With Redis unreachable this instance clears its L1 and the
    /// error says the other instances were not reached.
    pub async fn invalidate_namespace(&self, namespace: &str) -> Result<()> {
        self.inner.tiers.bump_generation(namespace).await
    }

    /// The digest `request` is cached under in the control's namespace (and the namespace's
    /// current generation, see [`invalidate_namespace`](Self::invalidate_namespace)).
    pub fn digest_with(&self, request: &ChatRequest, control: &CacheControl) -> Digest {
        let digest = key::derive(request, &control.namespace, &self.inner.key_options);
        crate::invalidation::scoped(digest, self.inner.tiers.generation(&control.namespace))
    }

    /// The generic tiers underneath, for inspection (`inflight()`, `l2_key()`...).
    pub fn tiers(&self) -> &TieredCache<ChatResponse> {
        &self.inner.tiers
    }

    /// A snapshot of the counters, with tokens and dollars saved overall and per model.
    pub fn stats(&self) -> LlmStats {
        let inner = &self.inner;
        let mut per_model = BTreeMap::new();
        let (mut tokens, mut nanos) = (0u64, 0u64);
        for entry in inner.models.iter() {
            let c = entry.value();
            let t = c.tokens.load(Relaxed);
            let n = c.nano_dollars.load(Relaxed);
            tokens += t;
            nanos += n;
            per_model.insert(
                entry.key().clone(),
                ModelSavings {
                    hits: c.hits.load(Relaxed),
                    misses: c.misses.load(Relaxed),
                    tokens_saved: t,
                    cost_saved_usd: n as f64 / NANOS_PER_DOLLAR,
                },
            );
        }
        LlmStats {
            cache: inner.tiers.stats(),
            bypassed: inner.bypassed.load(Relaxed),
            upstream_calls: inner.upstream_calls.load(Relaxed),
            tokens_saved: tokens,
            cost_saved_usd: nanos as f64 / NANOS_PER_DOLLAR,
            per_model,
        }
    }

    /// The price table in use.
    pub fn prices(&self) -> &PriceTable {
        &self.inner.prices
    }
}

impl Inner {
    fn model(&self, model: &str) -> Arc<ModelCounters> {
        if let Some(c) = self.models.get(model) {
            return Arc::clone(&c);
        }
        Arc::clone(
            self.models
                .entry(model.to_string())
                .or_insert_with(|| {
                    Arc::new(ModelCounters {
                        price: self.prices.price(model),
                        exported: ModelExported::register(model),
                        ..Default::default()
                    })
                })
                .value(),
        )
    }
}

impl ModelCounters {
    /// An answer served without a call (`status`: from where), and what it saved.
    fn saved(&self, status: CacheStatus, response: &ChatResponse) {
        self.hits.fetch_add(1, Relaxed);
        self.exported.hit(status);
        let Some(usage) = &response.usage else {
            return;
        };
        let tokens = usage.prompt_tokens.saturating_add(usage.completion_tokens);
        self.tokens.fetch_add(tokens, Relaxed);
        let mut nanos = 0;
        if let Some(price) = &self.price {
            let dollars = price.cost(usage);
            if dollars.is_finite() && dollars > 0.0 {
                nanos = (dollars * NANOS_PER_DOLLAR).round() as u64;
                self.nano_dollars.fetch_add(nanos, Relaxed);
            }
        }
        self.exported.saved(tokens, nanos);
    }

    /// An answer that cost an upstream call.
    fn missed(&self) {
        self.misses.fetch_add(1, Relaxed);
        self.exported.miss();
    }
}
