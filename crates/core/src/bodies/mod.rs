//! The endpoints whose answers are stored whole (`/responses`, `/completions`), shared by
//! the async-openai layer and the HTTP front: which requests are cacheable, their key, the
//! stored body, when an answer is complete enough to store, and the flights (one upstream
//! call, or one upstream stream, per key at a time). The whole JSON body is the question;
//! the upstream's answer, JSON or an event stream, is stored as it came and replayed byte
//! for byte. The upstream call itself is the caller's (an async fn handed to
//! [`BodyCache::answer_json`] / [`BodyCache::answer_stream`]): nothing here knows HTTP
//! clients. It must never store an answer that is not complete, and the layer and the
//! front must give one request the same key.

mod complete;
mod flight;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::CacheStatus;
use crate::chat::{CacheControl, LlmCache};
use crate::error::{Error, Result};
use crate::tiered::stats::Stats;
use crate::tiered::{Digest, TieredCache};

pub use self::complete::{json_is_complete, stream_is_complete};

/// One stored answer: its content type and body text (JSON, or the event stream as the
/// upstream sent it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredBody {
    /// The upstream's `Content-Type`.
    pub content_type: String,
    /// The body as it came.
    pub body: String,
    /// A completions stream fetched asking for usage (every one stored now): whether it has
    /// the usage chunk is then the upstream's answer, not a caller's choice. Absent in
    /// entries stored before; see [`fit_for_streaming`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub asked_usage: bool,
}

/// Whether a stored answer may be replayed as a stream: a completions stream stored by an
/// older version without its usage chunk (its first caller did not ask) is fetched again,
/// once, so callers who ask for usage get it.
pub fn fit_for_streaming(endpoint: BodyEndpoint, stored: &StoredBody) -> bool {
    endpoint != BodyEndpoint::Completions
        || stored.asked_usage
        || crate::stream::usage::has_usage_chunk(stored.body.as_bytes())
}

/// The endpoints stored whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyEndpoint {
    /// `POST /responses` (the Responses API).
    Responses,
    /// `POST /completions` (legacy text completions).
    Completions,
}

/// A cacheable request to a [`BodyEndpoint`]: its JSON body, read once.
#[derive(Debug, Clone)]
pub struct BodyRequest {
    /// Which endpoint.
    pub endpoint: BodyEndpoint,
    /// The whole body (a JSON object).
    pub body: Value,
    /// `"stream": true`.
    pub stream: bool,
}

/// What to do with a request to a [`BodyEndpoint`].
#[derive(Debug)]
pub enum BodyPlan {
    /// Not cacheable (not a JSON object, or a Responses request whose answer depends on
    /// state the server keeps): send it upstream as it came, store nothing.
    PassThrough,
    /// Cacheable.
    Cached(BodyRequest),
}

impl BodyRequest {
    /// Decide what to do with `bytes` sent to `endpoint`. serde_json reads with its own
    /// depth limit (128) and the key walks the value without recursion: nothing here can
    /// overflow the stack.
    pub fn plan(endpoint: BodyEndpoint, bytes: &[u8]) -> BodyPlan {
        let Ok(body) = serde_json::from_slice::<Value>(bytes) else {
            return BodyPlan::PassThrough;
        };
        let Some(map) = body.as_object() else {
            return BodyPlan::PassThrough;
        };
        if endpoint == BodyEndpoint::Responses && depends_on_server_state(map) {
            return BodyPlan::PassThrough;
        }
        let stream = map.get("stream").and_then(Value::as_bool) == Some(true);
        BodyPlan::Cached(BodyRequest {
            endpoint,
            body,
            stream,
        })
    }

    /// The shape given to the key scope (`integrations::headers::scope`): a streamed and a
    /// JSON answer to one question are stored apart (each is replayed as it came).
    pub fn shape(&self) -> &'static str {
        if self.stream { "sse" } else { "json" }
    }

    /// The canonical form of the body (the rules of chat keys: key order, whitespace and
    /// number spelling do not matter; `stream`, `stream_options` and the
    /// [`KeyOptions`](crate::KeyOptions) ignored fields are dropped).
    pub fn canonical(&self, options: &crate::KeyOptions) -> Vec<u8> {
        crate::key::canonical_value(&self.body, options)
    }

    /// Whether the stored stream is replayed without its usage chunk: a streamed
    /// completions request that does not ask for it (`stream_options.include_usage`),
    /// which the key ignores, while every stored completions stream has it.
    pub fn drops_usage(&self) -> bool {
        self.stream
            && self.endpoint == BodyEndpoint::Completions
            && !crate::stream::usage::asks_for_usage(&self.body)
    }

    /// The body a miss sends upstream when it must differ from the caller's: a streamed
    /// completions request asks for the usage chunk whatever the caller asked (see
    /// [`drops_usage`](Self::drops_usage)); `None`: the caller's bytes as they came.
    pub fn upstream_body(&self) -> Option<Value> {
        if !(self.stream && self.endpoint == BodyEndpoint::Completions) {
            return None;
        }
        let mut sent = self.body.clone();
        crate::stream::usage::ask_for_usage(&mut sent);
        Some(sent)
    }

    /// The key of this request in `cache`, in `control`'s namespace, with `scope` (the
    /// upstream URL and credential digest of the caller, from `headers::scope` with
    /// [`shape`](Self::shape)).
    pub fn digest(&self, cache: &LlmCache, control: &CacheControl, scope: &[u8]) -> Digest {
        cache.scoped_digest(&self.canonical(cache.key_options()), control, scope)
    }
}

/// A Responses API request whose answer depends on state the server keeps and may change:
/// a `conversation` (its items grow), or background mode (the answer is fetched later).
/// `previous_response_id` names an immutable response, so it is simply part of the key.
fn depends_on_server_state(map: &Map<String, Value>) -> bool {
    let set = |name: &str| map.get(name).is_some_and(|v| !v.is_null());
    set("conversation") || map.get("background").and_then(Value::as_bool) == Some(true)
}

/// What the caller's upstream call hands back for a 2xx answer.
pub struct Sent {
    /// The upstream's `Content-Type`, when it named one.
    pub content_type: Option<String>,
    /// The body as it arrives; an `Err` cuts it (nothing is stored).
    pub body: BoxStream<'static, Result<Bytes>>,
    /// The error a 2xx body that is not a complete answer becomes (it is never stored;
    /// the caller's error handling hands it back as it came).
    pub incomplete: Box<dyn FnOnce(Bytes) -> Error + Send>,
}

impl std::fmt::Debug for Sent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sent")
            .field("content_type", &self.content_type)
            .finish_non_exhaustive()
    }
}

/// A JSON answer: from a tier, or the upstream's on a miss.
#[derive(Debug)]
pub struct JsonAnswer {
    /// The stored content type.
    pub content_type: String,
    /// The body as it came.
    pub body: Bytes,
    /// Where it came from.
    pub status: CacheStatus,
    /// How old it is (zero for a miss).
    pub age: Duration,
}

/// A streamed answer: a replay, or this key's live upstream stream.
pub struct StreamAnswer {
    /// The event-stream bytes; an `Err` ends it (the caller cuts its body).
    pub events: BoxStream<'static, Result<Bytes>>,
    /// Where it comes from.
    pub status: CacheStatus,
    /// How old it is, when known (zero for a miss).
    pub age: Option<Duration>,
}

impl std::fmt::Debug for StreamAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamAnswer")
            .field("status", &self.status)
            .field("age", &self.age)
            .finish_non_exhaustive()
    }
}

/// The tier of stored bodies (a sibling of the chat tier: same knobs, key prefix and Redis
/// connection, counters of its own) and its streamed flights. Cheap to clone.
#[derive(Clone)]
pub struct BodyCache {
    tiers: TieredCache<StoredBody>,
    flights: Arc<flight::Flights>,
}

impl std::fmt::Debug for BodyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyCache")
            .field("tiers", &self.tiers)
            .finish_non_exhaustive()
    }
}

impl BodyCache {
    /// Bodies stored in `tiers`.
    pub fn new(tiers: TieredCache<StoredBody>) -> Self {
        BodyCache {
            tiers,
            flights: Arc::default(),
        }
    }

    /// The tier underneath.
    pub fn tiers(&self) -> &TieredCache<StoredBody> {
        &self.tiers
    }

    /// Its counters.
    pub fn stats(&self) -> Stats {
        self.tiers.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(endpoint: BodyEndpoint, body: &str) -> Option<BodyRequest> {
        match BodyRequest::plan(endpoint, body.as_bytes()) {
            BodyPlan::Cached(request) => Some(request),
            BodyPlan::PassThrough => None,
        }
    }

    fn canonical(body: &str) -> Vec<u8> {
        let request = plan(BodyEndpoint::Responses, body).expect("cacheable");
        request.canonical(&crate::KeyOptions::default())
    }

    #[test]
    fn which_requests_are_cached() {
        use BodyEndpoint::{Completions, Responses};
        assert!(plan(Responses, r#"{"model":"m","input":"x"}"#).is_some());
        assert!(plan(Responses, r#"{"model":"m","conversation":"conv_1"}"#).is_none());
        assert!(plan(Responses, r#"{"model":"m","conversation":null}"#).is_some());
        assert!(plan(Responses, r#"{"model":"m","background":true}"#).is_none());
        assert!(plan(Responses, r#"{"model":"m","background":false}"#).is_some());
        // Only the Responses API keeps server state.
        assert!(plan(Completions, r#"{"model":"m","background":true}"#).is_some());
        assert!(plan(Responses, "[1]").is_none());
        assert!(plan(Responses, "{").is_none());
        let streamed = plan(Responses, r#"{"model":"m","stream":true}"#).unwrap();
        assert!(streamed.stream);
        assert_eq!(streamed.shape(), "sse");
        assert_eq!(plan(Responses, r#"{"model":"m"}"#).unwrap().shape(), "json");
    }

    #[test]
    fn the_key_is_the_whole_body_less_transport_fields() {
        let base = canonical(r#"{"model":"m","input":"x"}"#);
        assert_eq!(base, canonical(r#"{ "input": "x", "model": "m" }"#));
        assert_eq!(
            base,
            canonical(r#"{"model":"m","input":"x","stream":true,"stream_options":{"a":1}}"#)
        );
        assert_ne!(base, canonical(r#"{"model":"m","input":"y"}"#));
        let follow = |id: &str| {
            canonical(&format!(
                r#"{{"model":"m","input":"x","previous_response_id":"{id}"}}"#
            ))
        };
        assert_ne!(base, follow("resp_1"));
        assert_ne!(follow("resp_1"), follow("resp_2"));
        assert_ne!(
            base,
            canonical(r#"{"model":"m","input":"x","temperature":1}"#)
        );
    }

    #[test]
    fn completions_streams_ask_for_usage_and_drop_it_for_callers_who_did_not() {
        let c = |body: &str| plan(BodyEndpoint::Completions, body).unwrap();
        let plain = c(r#"{"model":"m","prompt":"p","stream":true}"#);
        assert!(plain.drops_usage());
        let sent = plain.upstream_body().unwrap();
        assert_eq!(sent["stream_options"]["include_usage"], true);
        let asked = c(r#"{"model":"m","prompt":"p","stream":true,
            "stream_options":{"include_usage":true}}"#);
        assert!(!asked.drops_usage());
        let whole = c(r#"{"model":"m","prompt":"p"}"#);
        assert!(!whole.drops_usage() && whole.upstream_body().is_none());
        let responses = plan(BodyEndpoint::Responses, r#"{"model":"m","stream":true}"#).unwrap();
        assert!(!responses.drops_usage() && responses.upstream_body().is_none());
    }
}
