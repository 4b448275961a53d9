//! The flights of stored bodies. A JSON answer goes through the tiers' own flight (L1, L2
//! and a lease, then the caller's upstream call). A streamed one has a flight of its own
//! per key: one upstream stream at a time, its bytes handed to every consumer as they
//! arrive (a late joiner gets every byte already seen first, from a [`ReplayLog`]), and
//! stored as they came once the stream is complete. A consumer going away never cuts the
//! stream for the others, and an answer that is not complete is never stored.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};

use super::{
    BodyCache, BodyEndpoint, JsonAnswer, Sent, StoredBody, StreamAnswer, fit_for_streaming,
    json_is_complete, stream_is_complete,
};
use crate::CacheStatus;
use crate::chat::CacheControl;
use crate::error::{Error, ErrorKind, Result};
use crate::replay_log::{Next, ReplayLog};
use crate::stream::usage;
use crate::tiered::sync::lock;
use crate::tiered::{Digest, FetchOptions};

/// How long a streamed flight may wait on the tiers (the upstream stream included).
const STREAM_WAIT: Duration = Duration::from_secs(30 * 60);

/// Streamed flights in progress, by digest.
pub(super) type Flights = DashMap<Digest, Arc<BodyFlight>>;

/// The log of one streamed flight: the bytes seen so far, then how it ended, and where
/// they come from. See [`ReplayLog`].
type BodyFlight = ReplayLog<Bytes, CacheStatus, ()>;

impl BodyCache {
    /// Answer a JSON (not streamed) request of `endpoint` with key `digest` from the tiers,
    /// or from `send` on a miss (concurrent identical requests share one call).
    ///
    /// # Errors
    ///
    /// The error of `send` or of its body (every waiter of the flight gets the same one),
    /// the error `Sent::incomplete` made of a 2xx body that is not a complete answer, or
    /// the tiers' own (a waiter deadline).
    pub async fn answer_json<F, Fut>(
        &self,
        digest: Digest,
        control: &CacheControl,
        endpoint: BodyEndpoint,
        send: F,
    ) -> Result<JsonAnswer>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Sent>> + Send + 'static,
    {
        let fetch = move || async move {
            let sent = send().await?;
            let mut body = sent.body;
            let mut all = BytesMut::new();
            while let Some(part) = body.next().await {
                all.extend_from_slice(&part?);
            }
            let all = all.freeze();
            let complete = json_is_complete(endpoint, &all);
            match std::str::from_utf8(&all) {
                Ok(text) if complete => Ok(StoredBody {
                    content_type: sent
                        .content_type
                        .unwrap_or_else(|| "application/json".into()),
                    body: text.to_string(),
                    asked_usage: false,
                }),
                _ => Err((sent.incomplete)(all)),
            }
        };
        let cached = self
            .tiers
            .get_or_fetch_with(digest, &control.fetch, fetch)
            .await?;
        let status = CacheStatus::from(cached.status());
        let age = if status == CacheStatus::Miss {
            Duration::ZERO
        } else {
            cached.age()
        };
        let stored = cached.value();
        Ok(JsonAnswer {
            content_type: stored.content_type.clone(),
            body: Bytes::copy_from_slice(stored.body.as_bytes()),
            status,
            age,
        })
    }

    /// Answer a streamed request of `endpoint` with key `digest`: an L1 hit replayed,
    /// else this key's flight (led here when there is none, through L2 and a lease, then
    /// `send`), whose bytes reach this caller as they arrive. `drop_usage`: a completions
    /// caller who did not ask for the usage chunk, which every stored completions stream
    /// has (a miss asks for it: see [`BodyRequest::upstream_body`](super::BodyRequest::upstream_body)),
    /// gets the stream without it.
    ///
    /// # Errors
    ///
    /// As [`answer_json`](Self::answer_json), when the flight fails before its first
    /// byte; a failure after it ends [`StreamAnswer::events`] with the error.
    pub async fn answer_stream<F, Fut>(
        &self,
        digest: Digest,
        control: &CacheControl,
        endpoint: BodyEndpoint,
        drop_usage: bool,
        send: F,
    ) -> Result<StreamAnswer>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Sent>> + Send + 'static,
    {
        let shape = move |events: BoxStream<'static, Result<Bytes>>| {
            if drop_usage {
                usage::without_usage_chunk(events).boxed()
            } else {
                events
            }
        };
        let mut refresh = control.fetch.refresh;
        if !refresh && let Some(hit) = self.tiers.get(&digest).await {
            if fit_for_streaming(endpoint, hit.value()) {
                let body = Bytes::copy_from_slice(hit.value().body.as_bytes());
                return Ok(StreamAnswer {
                    events: shape(futures_util::stream::once(async move { Ok(body) }).boxed()),
                    status: CacheStatus::HitL1,
                    age: Some(hit.age()),
                });
            }
            refresh = true;
        }
        let (flight, leads) = BodyFlight::join(&self.flights, digest, refresh);
        if leads {
            let mut options = control.fetch.clone();
            options.refresh = refresh;
            self.drive(Arc::clone(&flight), digest, options, endpoint, send);
        }
        let events = shape(subscribe(&flight).boxed());
        let status = match flight.first(CacheStatus::Miss).await? {
            origin if leads => origin,
            _ => {
                self.tiers.count_coalesced();
                CacheStatus::Coalesced
            }
        };
        let age = (status == CacheStatus::Miss).then_some(Duration::ZERO);
        Ok(StreamAnswer {
            events,
            status,
            age,
        })
    }

    /// Run a streamed flight in its own task: through the tiers (L2, a lease), else the
    /// upstream stream, each part to the consumers as it arrives, the whole stored if
    /// complete. A tier's answer unfit for streaming (see [`fit_for_streaming`]) is
    /// fetched again.
    fn drive<F, Fut>(
        &self,
        flight: Arc<BodyFlight>,
        digest: Digest,
        mut options: FetchOptions,
        endpoint: BodyEndpoint,
        send: F,
    ) where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<Sent>> + Send + 'static,
    {
        options.wait = Some(STREAM_WAIT);
        let (tiers, flights) = (self.tiers.clone(), Arc::clone(&self.flights));
        // Set when the answer was handed on as it came but is not worth storing.
        let incomplete = Arc::new(AtomicBool::new(false));
        // Taken by the one fetch that runs (a refetch runs only when the first did not).
        let send = Arc::new(Mutex::new(Some(send)));
        tokio::spawn(async move {
            let fetch = |flight: &Arc<BodyFlight>| {
                let (flight, incomplete) = (Arc::clone(flight), Arc::clone(&incomplete));
                let send = Arc::clone(&send);
                move || async move {
                    flight.set_origin(CacheStatus::Miss);
                    let send = lock(&send).take().ok_or_else(|| {
                        Error::new(ErrorKind::FetchAborted, "the stream was fetched already")
                    })?;
                    let sent = send().await?;
                    let mut body = sent.body;
                    let mut all = BytesMut::new();
                    while let Some(part) = body.next().await {
                        let part = part?;
                        all.extend_from_slice(&part);
                        flight.push(part);
                    }
                    let all = all.freeze();
                    match std::str::from_utf8(&all) {
                        Ok(text) if stream_is_complete(endpoint, &all) => Ok(StoredBody {
                            content_type: sent
                                .content_type
                                .unwrap_or_else(|| "text/event-stream".into()),
                            body: text.to_string(),
                            // Every completions stream is fetched asking for usage.
                            asked_usage: endpoint == BodyEndpoint::Completions,
                        }),
                        _ => {
                            incomplete.store(true, Ordering::Release);
                            Err((sent.incomplete)(all))
                        }
                    }
                }
            };
            let mut got = tiers
                .get_or_fetch_with(digest, &options, fetch(&flight))
                .await;
            if let Ok(cached) = &got
                && cached.status() != CacheStatus::Miss
                && !fit_for_streaming(endpoint, cached.value())
            {
                options.refresh = true;
                got = tiers
                    .get_or_fetch_with(digest, &options, fetch(&flight))
                    .await;
            }
            match got {
                Ok(cached) => {
                    if !flight.has_items() {
                        // Answered by a tier: replay it whole.
                        flight.set_origin(cached.status().into());
                        flight.push(Bytes::copy_from_slice(cached.value().body.as_bytes()));
                    }
                    flight.finish(Ok(()));
                }
                // Its bytes were delivered as they came: its consumers end cleanly.
                Err(_) if flight.has_items() && incomplete.load(Ordering::Acquire) => {
                    flight.finish(Ok(()));
                }
                Err(e) => flight.finish(Err(e)),
            }
            flights.remove_if(&digest, |_, f| Arc::ptr_eq(f, &flight));
        });
    }
}

/// Every byte from the start, then the live ones; an error ends it.
fn subscribe(
    flight: &Arc<BodyFlight>,
) -> impl Stream<Item = Result<Bytes, Error>> + Send + 'static {
    futures_util::stream::unfold(Some(flight.reader()), |reader| async move {
        let mut reader = reader?;
        match reader.next().await? {
            Next::Item(part) => Some((Ok(part), Some(reader))),
            Next::End(_) => None,
            Next::Failed(e) => Some((Err(e), None)),
        }
    })
}
