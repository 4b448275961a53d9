//! Streamed answers of the non-chat endpoints (`/responses`, `/completions` with
//! `"stream": true`): one upstream stream per key at a time, its bytes handed to every
//! consumer as they arrive (a late joiner gets every byte already seen first), and stored
//! as they came once the stream is complete. A consumer going away never cuts the stream
//! for the others, and a stream that is not complete is never stored.

use std::sync::Arc;
use std::time::Duration;

use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};

use llm_cache_core::chat::CacheControl;
use llm_cache_core::error::{Error, ErrorKind};
use llm_cache_core::replay_log::{Next, ReplayLog};
use llm_cache_core::stream::usage;
use llm_cache_core::tiered::FetchOptions;
use llm_cache_core::tiered::digest::Digest;
use llm_cache_core::tiered::{CacheStatus, TieredCache};

use super::bodies::{StoredBody, fit_for_streaming, stream_is_complete};
use super::reply::{self, Failure, error_reply};
use super::request::Endpoint;
use super::upstream::{HttpService, send_ok};

/// How long a streamed flight may wait on the tiers (the upstream stream included).
const STREAM_WAIT: Duration = Duration::from_secs(30 * 60);

/// Streamed flights in progress, by digest.
pub(super) type Flights = DashMap<Digest, Arc<BodyFlight>>;

/// The log of one streamed flight: the bytes seen so far, then how it ended, and where
/// they come from. See [`ReplayLog`].
pub(super) type BodyFlight = ReplayLog<Bytes, CacheStatus, ()>;

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

/// An error that only says the answer was not complete enough to store (a 2xx the layer
/// handed on as it came): its bytes were delivered, so its consumers end cleanly.
fn only_incomplete(e: &Error) -> bool {
    std::error::Error::source(e)
        .and_then(|s| s.downcast_ref::<Failure>())
        .is_some_and(|f| matches!(f, Failure::Http { status, .. } if status.is_success()))
}

/// Answer a streamed non-chat request: an L1 hit replayed, else this key's flight (led
/// here when there is none), whose bytes reach this caller as they arrive. `drop_usage`:
/// a completions caller who did not ask for the usage chunk, which every stored
/// completions stream has (a miss asks for it), gets the stream without it.
#[allow(clippy::too_many_arguments)]
pub(super) async fn answer<S>(
    flights: &Arc<Flights>,
    bodies: &TieredCache<StoredBody>,
    digest: Digest,
    control: &CacheControl,
    endpoint: Endpoint,
    drop_usage: bool,
    service: S,
    factory: HttpRequestFactory,
) -> Result<reqwest::Response, OpenAIError>
where
    S: HttpService,
    S::Error: Into<OpenAIError>,
{
    let shape = move |events: BoxStream<'static, Result<Bytes, Error>>| {
        if drop_usage {
            usage::without_usage_chunk(events).boxed()
        } else {
            events
        }
    };
    let mut refresh = control.fetch.refresh;
    if !refresh && let Some(hit) = bodies.get(&digest).await {
        if fit_for_streaming(endpoint, hit.value()) {
            let body = Bytes::copy_from_slice(hit.value().body.as_bytes());
            let events = futures_util::stream::once(async move { Ok(body) }).boxed();
            return Ok(reply::event_stream(
                shape(events),
                CacheStatus::HitL1,
                Some(hit.age()),
            ));
        }
        refresh = true;
    }
    let (flight, leads) = match flights.entry(digest) {
        Entry::Occupied(e) if !refresh && !e.get().failed() => (Arc::clone(e.get()), false),
        Entry::Occupied(mut e) => {
            let flight = BodyFlight::new();
            e.insert(Arc::clone(&flight));
            (flight, true)
        }
        Entry::Vacant(e) => {
            let flight = BodyFlight::new();
            e.insert(Arc::clone(&flight));
            (flight, true)
        }
    };
    if leads {
        let mut options = control.fetch.clone();
        options.refresh = refresh;
        drive(
            Arc::clone(flights),
            bodies.clone(),
            Arc::clone(&flight),
            digest,
            options,
            endpoint,
            service,
            factory,
        );
    }
    let events = shape(subscribe(&flight).boxed());
    let status = match flight.first(CacheStatus::Miss).await {
        Ok(origin) if leads => origin,
        Ok(_) => {
            bodies.count_coalesced();
            CacheStatus::Coalesced
        }
        Err(e) => return error_reply(e),
    };
    let age = (status == CacheStatus::Miss).then_some(Duration::ZERO);
    Ok(reply::event_stream(events, status, age))
}

/// Fetch a streamed answer from the upstream: each part to the flight's consumers as it
/// arrives, the whole the answer to store if it is complete.
async fn fetch_stream<S>(
    flight: Arc<BodyFlight>,
    endpoint: Endpoint,
    service: S,
    factory: HttpRequestFactory,
) -> Result<StoredBody, Error>
where
    S: HttpService,
    S::Error: Into<OpenAIError>,
{
    flight.set_origin(CacheStatus::Miss);
    let (response, headers, content_type) = send_ok(service, factory, "text/event-stream").await?;
    let mut body = response.bytes_stream();
    let mut all = BytesMut::new();
    while let Some(part) = body.next().await {
        let part = part.map_err(|e| {
            Error::new(
                ErrorKind::Connect,
                format!(
                    "the stream was cut off: {}",
                    llm_cache_core::upstream::error_chain(&e.without_url())
                ),
            )
        })?;
        all.extend_from_slice(&part);
        flight.push(part);
    }
    let all = all.freeze();
    match std::str::from_utf8(&all) {
        Ok(text) if stream_is_complete(endpoint, &all) => Ok(StoredBody {
            content_type,
            body: text.to_string(),
            // The layer asks for usage on every completions stream it fetches.
            asked_usage: endpoint == Endpoint::Completions,
        }),
        _ => Err(Failure::Http {
            status: reqwest::StatusCode::OK,
            headers,
            body: all,
        }
        .into_error()),
    }
}

/// Run a streamed flight in its own task: through the tiers (L2, a lease), else the
/// upstream stream, each part to the consumers as it arrives, the whole stored if complete.
/// A tier's answer unfit for streaming (see [`fit_for_streaming`]) is fetched again.
#[allow(clippy::too_many_arguments)]
fn drive<S>(
    flights: Arc<Flights>,
    bodies: TieredCache<StoredBody>,
    flight: Arc<BodyFlight>,
    digest: Digest,
    mut options: FetchOptions,
    endpoint: Endpoint,
    service: S,
    factory: HttpRequestFactory,
) where
    S: HttpService,
    S::Error: Into<OpenAIError>,
{
    options.wait = Some(STREAM_WAIT);
    tokio::spawn(async move {
        let fetch = |flight: &Arc<BodyFlight>| {
            let (flight, service, factory) = (Arc::clone(flight), service.clone(), factory.clone());
            move || fetch_stream(flight, endpoint, service, factory)
        };
        let mut got = bodies
            .get_or_fetch_with(digest, &options, fetch(&flight))
            .await;
        if let Ok(cached) = &got
            && cached.status() != CacheStatus::Miss
            && !fit_for_streaming(endpoint, cached.value())
        {
            options.refresh = true;
            got = bodies
                .get_or_fetch_with(digest, &options, fetch(&flight))
                .await;
        }
        match got {
            Ok(cached) => {
                if !flight.has_items() {
                    // Answered by a tier: replay it whole.
                    flight.set_origin(cached.status());
                    flight.push(Bytes::copy_from_slice(cached.value().body.as_bytes()));
                }
                flight.finish(Ok(()));
            }
            Err(e) if flight.has_items() && only_incomplete(&e) => flight.finish(Ok(())),
            Err(e) => flight.finish(Err(e)),
        }
        flights.remove_if(&digest, |_, f| Arc::ptr_eq(f, &flight));
    });
}
