//! Streamed answers: [`CachedStream`], the streaming path of [`LlmCache`], and the fan-out
//! log that lets every consumer of one upstream stream read it from the start. One upstream
//! stream per key at a time, however many consumers; a consumer going away must never cut
//! the stream for the others, nor (unless `abort_abandoned_streams`) stop it being stored.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};

use super::StoredAnswer;
use super::semantic::Before;
use super::{LlmCache, Route};
use crate::chat::policy::{self, CacheControl};
use crate::error::{Error, ErrorKind, Result};
use crate::replay_log::{Next, ReplayLog};
use crate::request::{ChatRequest, ChatResponse};
use crate::stream::{Assembler, ChatChunk, ReplayOptions, replay};
use crate::tiered::FetchOptions;
use crate::tiered::digest::Digest;
use crate::upstream::Upstream;
use crate::{CacheStatus, Cached};

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
    /// When the answer was first fetched, for a replay of a stored one (`None`: fetched now).
    created_at_ms: Option<u64>,
    /// For a semantic hit: the similarity and the digest of the entry replayed.
    matched: Option<(f32, Digest)>,
    chunks: BoxStream<'static, Result<ChatChunk>>,
}

impl CachedStream {
    /// A replay of `hit`, the stored answer of the request of `digest`.
    fn replayed(hit: &Cached<ChatResponse>, digest: Digest, options: &ReplayOptions) -> Self {
        let chunks = replay(hit.value(), options);
        CachedStream {
            status: hit.status(),
            digest,
            created_at_ms: Some(hit.created_at_ms()),
            matched: hit.similarity().zip(hit.matched_digest()),
            chunks: futures_util::stream::iter(chunks.into_iter().map(Ok)).boxed(),
        }
    }

    /// Where the chunks come from: a replay of an L1 or L2 hit, a live upstream stream
    /// (miss), another caller's stream (coalesced), or the upstream directly (bypass).
    pub fn status(&self) -> CacheStatus {
        self.status
    }

    /// The key's digest.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// For a [`CacheStatus::HitSemantic`] replay: the cosine between the request's
    /// embedding and the matched entry's; `None` otherwise.
    pub fn similarity(&self) -> Option<f32> {
        self.matched.map(|(s, _)| s)
    }

    /// For a [`CacheStatus::HitSemantic`] replay: the digest of the entry replayed.
    pub fn matched_digest(&self) -> Option<Digest> {
        self.matched.map(|(_, d)| d)
    }

    /// How long ago the answer was first fetched (for a replay of a stored answer, possibly
    /// by another process); zero for a stream fetched now.
    pub fn age(&self) -> Duration {
        self.created_at_ms.map_or(Duration::ZERO, |at| {
            Duration::from_millis(crate::tiered::now_ms().saturating_sub(at))
        })
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

impl LlmCache {
    /// Answer `request` as a stream of chunks: a replay on a hit, the live upstream stream
    /// on a miss. Concurrent streams of one key share one upstream stream; a late joiner
    /// gets every chunk already seen, then the live ones. Returns once the first chunk is
    /// there (or with the error that came before any). A live stream may last up to the
    /// builder's `stream_deadline` (30 min by default), however short the waiter deadline;
    /// past it every consumer gets a `Timeout` error and nothing is stored.
    ///
    /// # Errors
    ///
    /// `InvalidRequest` as for [`chat_with`](Self::chat_with); the upstream's error when
    /// the stream fails before its first chunk, the same for every consumer of the flight;
    /// a failure after that is the stream's last item instead. Errors are never cached.
    ///
    /// # Cancellation
    ///
    /// The upstream stream is read by a task of its own: dropping this future or the
    /// returned stream does not stop it, and the assembled answer still fills the cache,
    /// unless the builder's `abort_abandoned_streams` is set, in which case the upstream
    /// stream is dropped once no consumer is left and nothing is stored.
    pub async fn chat_stream(&self, request: &ChatRequest) -> Result<CachedStream> {
        self.chat_stream_with(request, &CacheControl::default())
            .await
    }

    /// [`chat_stream`](Self::chat_stream) with per-request control. Errors and cancellation
    /// as [`chat_stream`](Self::chat_stream).
    pub async fn chat_stream_with(
        &self,
        request: &ChatRequest,
        control: &CacheControl,
    ) -> Result<CachedStream> {
        self.chat_stream_routed(request, control, &Route::OWN).await
    }

    /// [`chat_stream_with`](Self::chat_stream_with) on an HTTP-level layer's route (see
    /// [`Route`]): same flights, fan-out, tiers and stats.
    pub async fn chat_stream_routed(
        &self,
        request: &ChatRequest,
        control: &CacheControl,
        route: &Route,
    ) -> Result<CachedStream> {
        // Before the key, the trace or a copy: see `chat_routed`.
        request.validate()?;
        let answer = self.answer_stream(request, control, route);
        super::trace::traced(
            self,
            true,
            request,
            control,
            route,
            answer,
            CachedStream::status,
        )
        .await
    }

    async fn answer_stream(
        &self,
        request: &ChatRequest,
        control: &CacheControl,
        route: &Route,
    ) -> Result<CachedStream> {
        let inner = &self.inner;
        let mut options = ReplayOptions::for_request(request);
        options.chunk_chars = inner.stream_chunk_chars;
        let usage = options.include_usage;
        let digest = self.route_digest(request, control, route);
        if control.bypass || !policy::request_is_cacheable(request, inner.max_cacheable_temperature)
        {
            inner.bypassed.fetch_add(1, Relaxed);
            inner.upstream_calls.fetch_add(1, Relaxed);
            let live = route.upstream(&inner.upstream).chat_stream(request).await?;
            let chunks = if usage {
                live
            } else {
                live.filter(|c| std::future::ready(!is_usage_only(c)))
                    .boxed()
            };
            return Ok(CachedStream {
                status: CacheStatus::Bypass,
                digest,
                created_at_ms: None,
                matched: None,
                chunks,
            });
        }
        let counters = inner.model(&request.model);
        if !control.fetch.refresh
            && let Some(hit) = inner.tiers.get(&digest).await
        {
            let hit = Cached::answer(hit);
            counters.saved(CacheStatus::HitL1, hit.value());
            return Ok(CachedStream::replayed(&hit, digest, &options));
        }
        let mut pending = None;
        if let Some(semantic) = inner.semantic.as_ref().filter(|_| control.semantic)
            && !control.fetch.refresh
        {
            match self
                .semantic_before(semantic, request, control, route, digest)
                .await
            {
                Before::Served(hit) => {
                    counters.saved(hit.status(), hit.value());
                    return Ok(CachedStream::replayed(&hit, digest, &options));
                }
                Before::Miss(p) => pending = p,
            }
        }
        let (flight, leads) = StreamFlight::join(&inner.streams, digest, control.fetch.refresh);
        if leads {
            self.drive_stream(Arc::clone(&flight), digest, request, &control.fetch, route);
        }
        // Subscribe before waiting, so the flight counts this consumer from the start.
        let hit = Arc::new(std::sync::OnceLock::<CacheStatus>::new());
        // A leader's miss that completes is indexed for semantic lookups (if it asked).
        let index = pending
            .filter(|_| leads && !control.fetch.no_store)
            .map(|p| self.semantic_later(p, digest, control.fetch.ttl));
        let on_end = {
            let (hit, counters) = (Arc::clone(&hit), counters.clone());
            move |answer: &ChatResponse| match hit.get() {
                Some(&status) => counters.saved(status, answer),
                None => {
                    if let Some(index) = index {
                        index();
                    }
                }
            }
        };
        let chunks = subscribe(&flight, usage, on_end);
        let (origin, created_at_ms) = flight.first((CacheStatus::Miss, None)).await?;
        let status = if leads {
            origin
        } else {
            inner.tiers.count_coalesced();
            CacheStatus::Coalesced
        };
        if status.is_hit() {
            let _ = hit.set(status);
        } else {
            counters.missed();
        }
        Ok(CachedStream {
            status,
            digest,
            created_at_ms,
            matched: None,
            chunks,
        })
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
        route: &Route,
    ) {
        let inner = Arc::clone(&self.inner);
        let request = request.clone();
        let route = route.clone();
        let mut fetch_options = fetch_options.clone();
        let stream_deadline = inner.stream_deadline;
        fetch_options.wait = Some(stream_deadline.saturating_add(STREAM_DRIVER_GRACE));
        let until = tokio::time::Instant::now() + stream_deadline;
        tokio::spawn(async move {
            let fetch = {
                let flight = Arc::clone(&flight);
                let upstream = Arc::clone(route.upstream(&inner.upstream));
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
                    let cached = Cached::answer(cached);
                    if !flight.has_items() {
                        // Answered by a tier or by a non-streamed flight: replay it.
                        let fetched_now = cached.status() == CacheStatus::Miss;
                        flight.set_origin((
                            cached.status(),
                            (!fetched_now).then(|| cached.created_at_ms()),
                        ));
                        let all = ReplayOptions {
                            chunk_chars: inner.stream_chunk_chars,
                            include_usage: true,
                        };
                        for chunk in replay(cached.value(), &all) {
                            flight.push(Arc::new(chunk));
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
    ) -> Result<StoredAnswer> {
        flight.set_origin((CacheStatus::Miss, None));
        calls.fetch_add(1, Relaxed);
        let mut live = upstream.chat_stream(&request).await?;
        let mut assembler = Assembler::new();
        while let Some(chunk) = live.next().await {
            let chunk = chunk?;
            assembler.push(&chunk)?;
            flight.push(Arc::new(chunk));
            if abort && flight.consumers() == 0 {
                return Err(Error::new(
                    ErrorKind::FetchAborted,
                    "every consumer of the stream went away (abort_abandoned_streams)",
                ));
            }
        }
        let answer = assembler.finish()?;
        policy::check_response(&answer)?;
        Ok(StoredAnswer::from(answer))
    }
}

/// The log of one streamed flight: every chunk seen so far, then how it ended (the
/// assembled answer), and where the chunks come from (with, for a stored answer, when it
/// was first fetched). See [`ReplayLog`].
pub(crate) type StreamFlight =
    ReplayLog<Arc<ChatChunk>, (CacheStatus, Option<u64>), Arc<ChatResponse>>;

/// Runs once with the assembled answer when a consumer's stream ends well.
type OnEnd = Box<dyn FnOnce(&ChatResponse) + Send>;

/// A consumer that reads the whole log from the start. With `usage` false, the final
/// usage-only chunk is skipped (the request did not ask for it). `on_end` runs once with
/// the assembled answer when the stream ends well.
fn subscribe(
    flight: &Arc<StreamFlight>,
    usage: bool,
    on_end: impl FnOnce(&ChatResponse) + Send + 'static,
) -> BoxStream<'static, Result<ChatChunk>> {
    let on_end: Option<OnEnd> = Some(Box::new(on_end));
    futures_util::stream::unfold(
        (flight.reader(), on_end),
        move |(mut reader, mut on_end)| async move {
            loop {
                match reader.next().await? {
                    Next::Item(chunk) => {
                        if usage || !(chunk.choices.is_empty() && chunk.usage.is_some()) {
                            return Some((Ok((*chunk).clone()), (reader, on_end)));
                        }
                    }
                    Next::End(answer) => {
                        if let (Some(f), Some(a)) = (on_end.take(), answer) {
                            f(&a);
                        }
                        return None;
                    }
                    Next::Failed(e) => return Some((Err(e), (reader, on_end))),
                }
            }
        },
    )
    .boxed()
}
