//! A caching layer for [async-openai](https://docs.rs/async-openai) clients (feature
//! `async-openai`): one line in an ordinary async-openai program, and its repeated
//! requests are answered from the tiers.
//!
//! ```no_run
//! use async_openai::{Client, config::OpenAIConfig};
//! use async_openai::middleware::{ReqwestService, retry::OpenAIRetryLayer};
//! use llm_cache_core::LlmCache;
//! use llm_cache_async_openai::AsyncOpenAiLayer;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = AsyncOpenAiLayer::build(LlmCache::builder().redis("redis://127.0.0.1:6379")).await?;
//! let client = Client::with_config(OpenAIConfig::default()).with_http_service(
//!     tower::ServiceBuilder::new()
//!         .layer(cache)                          // answers repeats...
//!         .layer(OpenAIRetryLayer::default())    // ...so only misses retry
//!         .service(ReqwestService::new(reqwest::Client::new())),
//! );
//! # Ok(()) }
//! ```
//!
//! # What is cached
//!
//! `POST` JSON requests to `/chat/completions`, `/embeddings`, `/responses` and
//! `/completions` (whatever the base URL: Azure deployment paths too). Chat requests take
//! [`LlmCache`]'s own path: the same single-flight, tiers, stats, metrics and price table
//! as [`LlmCache::chat`], and `"stream": true` is answered with a replay of the stored
//! answer (same text, tool calls, finish reason and usage; chunk boundaries may differ),
//! concurrent identical streams sharing one upstream stream. Embeddings requests take
//! [`LlmCache::embeddings_with`]'s per-input path: each input is its own entry (with the
//! credential scope below in its key), only the missing inputs are sent upstream (the
//! caller's request with those inputs, asking for `base64`), and `x-llm-cache` says
//! `partial` when some inputs were fetched; [`LlmCache::embedding_stats`] counts them. The
//! other endpoints store the upstream's answer as it came (JSON, or the Responses API's
//! typed event stream) and replay it byte for byte (concurrent identical streams share one live upstream stream
//! there too); [`AsyncOpenAiLayer::body_stats`] counts them.
//!
//! Everything else goes to the inner service unchanged and is never stored: other methods
//! and paths (`GET /models`, `DELETE`, file uploads...), non-JSON and multipart bodies,
//! Responses API requests that depend on state the server keeps (`conversation`, or
//! `background: true`), and every answer that is not a complete 2xx: the upstream's own
//! error reaches the caller as async-openai's error.
//!
//! # The key
//!
//! The body's canonical JSON (the same rules as [`ChatRequest`] keys:
//! key order, whitespace and number spelling do not matter; `stream`, `stream_options` and
//! the [`KeyOptions`](llm_cache_core::KeyOptions) ignored fields are dropped), the namespace, the
//! upstream's scheme, host, port, path and query string (so Azure's `api-version` and each
//! deployment are their own), and the **credential scope**: a SHA-256 of the credential
//! headers (`authorization`, `proxy-authorization`, `api-key`, `x-api-key`,
//! `openai-organization`, `openai-project`, every other header whose name contains `auth`,
//! `key`, `token`, `secret` or `cookie`, such as a gateway's `ocp-apim-subscription-key` or
//! `x-goog-api-key`, idempotency keys excepted, and the names given to
//! [`credential_header`](AsyncOpenAiLayerBuilder::credential_header)). Two API keys, or one
//! key in two organizations or projects, never share an answer unless
//! [`share_across_credentials`](AsyncOpenAiLayerBuilder::share_across_credentials) says so.
//! The credentials themselves are never stored, logged or shown. For the Responses API,
//! `previous_response_id` is part of the body and so of the key.
//!
//! Entries made through the layer and through [`LlmCache::chat`] are never shared, even in
//! one cache: `chat` keys know neither the upstream the layer's client calls nor its
//! credentials, so the layer's keys live in a key space of their own.
//!
//! # Per-request control
//!
//! Request headers (removed before the request goes upstream): `x-llm-cache-namespace` (a
//! tenant), `x-llm-cache-ttl` (seconds), `x-llm-cache-control` (`no-store`, `refresh`,
//! `bypass`, `semantic`, comma-separated). A value the layer does not understand fails the
//! request with `OpenAIError::InvalidArgument` naming the header, before any upstream
//! call. `semantic` asks a chat request for the semantic cache when the cache was built
//! with one (`LlmCacheBuilder::semantic`; its embeddings come from the builder's own
//! `upstream`, which the layer's cache then needs); a semantic hit says `hit-semantic`.
//! Set them with async-openai's `RequestOptions` headers (e.g. `client.chat().headers(..)`).
//!
//! Response headers: `x-llm-cache` (`hit-l1`, `hit-l2`, `coalesced`, `miss`, `bypass`,
//! `partial`, `hit-semantic`) and `age` (seconds since the answer was stored, 0 for a
//! miss; on streamed answers too, replayed chat streams included). A cached answer carries
//! only these and `content-type`, not the upstream's other headers.
//!
//! # The cache status in your code
//!
//! async-openai's typed API drops the response headers. [`observe`] runs a future and hands
//! back, beside its output, the [`CacheOutcome`] (status, age, streamed) of every answer the
//! layer made while it ran; [`AsyncOpenAiLayerBuilder::on_outcome`] calls a hook with each:
//!
//! ```no_run
//! # async fn run(client: async_openai::Client<async_openai::config::OpenAIConfig>,
//! #              request: async_openai::types::chat::CreateChatCompletionRequest)
//! #              -> Result<(), Box<dyn std::error::Error>> {
//! use llm_cache_async_openai::observe;
//! use llm_cache_core::CacheStatus;
//!
//! let (answer, seen) = observe(client.chat().create(request)).await;
//! let answer = answer?;
//! if seen.status() == Some(CacheStatus::Miss) {
//!     println!("paid for: {:?}", answer.usage);
//! }
//! # Ok(()) }
//! ```
//!
//! # Errors
//!
//! An upstream error status reaches the caller as the upstream's response (so as
//! async-openai's `ApiError`), after the inner retry layer if there is one; waiters of the
//! same flight get the same one. The cache's own failures (e.g. a waiter deadline) are
//! `OpenAIError::Boxed` holding an [`Error`]. Nothing that failed is stored.

#![warn(missing_docs)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod bodies;
pub use llm_cache_core::integrations::async_openai_convert as convert;
mod reply;
mod request;
mod status;
mod upstream;

pub use self::status::{CacheOutcome, Observed, observe};

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use bytes::Bytes;
use futures_util::StreamExt;

use self::reply::error_reply;
use self::request::Plan;
use self::upstream::FactoryUpstream;
pub use self::upstream::HttpService;
use llm_cache_core::CacheStatus;
use llm_cache_core::chat::{CacheControl, LlmCache, LlmCacheBuilder, Route};
use llm_cache_core::error::{Error, ErrorKind, Result};
use llm_cache_core::integrations::headers;
use llm_cache_core::request::{ChatRequest, ChatResponse};
use llm_cache_core::tiered::stats::Stats;
use llm_cache_core::upstream::{BoxFuture, Upstream};

pub use llm_cache_core::integrations::headers::{
    HEADER_CONTROL, HEADER_NAMESPACE, HEADER_STATUS, HEADER_TTL,
};

/// A tower `Layer` for async-openai's `Client::with_http_service`; see the [module
/// docs](self). Cheap to clone: clones share one cache.
#[derive(Clone)]
pub struct AsyncOpenAiLayer {
    shared: Arc<Shared>,
}

struct Shared {
    /// The cache; its `bodies()` hold the endpoints stored whole.
    cache: LlmCache,
    share_across_credentials: bool,
    /// Which request headers keep answers apart.
    credentials: headers::CredentialScope,
    /// The namespace this layer's requests are bound to; headers nest inside it.
    namespace: String,
    /// Called with each answer's outcome.
    on_outcome: Option<status::Hook>,
}

impl fmt::Debug for AsyncOpenAiLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncOpenAiLayer")
            .field("cache", &self.shared.cache)
            .field(
                "share_across_credentials",
                &self.shared.share_across_credentials,
            )
            .finish_non_exhaustive()
    }
}

/// Configures an [`AsyncOpenAiLayer`].
#[must_use]
pub struct AsyncOpenAiLayerBuilder {
    cache: LlmCacheBuilder,
    share_across_credentials: bool,
    credential_headers: Vec<String>,
    namespace: String,
    on_outcome: Option<status::Hook>,
}

impl fmt::Debug for AsyncOpenAiLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncOpenAiLayerBuilder")
            .field("cache", &self.cache)
            .field("share_across_credentials", &self.share_across_credentials)
            .field("credential_headers", &self.credential_headers)
            .field("namespace", &self.namespace)
            .field("on_outcome", &self.on_outcome.is_some())
            .finish()
    }
}

impl AsyncOpenAiLayerBuilder {
    llm_cache_core::tiered::setters! {
        /// Let requests with different credentials (API keys, organizations, projects) share
        /// answers. Default false: each credential scope has answers of its own. Turn it on only
        /// when every credential the client may carry belongs to one party.
        pub fn share_across_credentials(yes: bool) { share_across_credentials = yes }
    }

    /// Also treat request header `name` as a credential that keeps answers apart (its value
    /// hashed into the key scope, never stored), e.g. a gateway's own key header. Headers
    /// whose names contain `auth`, `key`, `token`, `secret` or `cookie` (such as
    /// `ocp-apim-subscription-key` or `x-goog-api-key`) are credentials already.
    pub fn credential_header(mut self, name: impl Into<String>) -> Self {
        self.credential_headers.push(name.into());
        self
    }

    llm_cache_core::tiered::setters! {
        /// The namespace every request of this layer is bound to (default: the global one). A
        /// request's `x-llm-cache-namespace` nests inside it, so no header can reach another
        /// binding's answers.
        pub fn namespace(namespace: impl Into<String>) { namespace = namespace.into() }
    }

    /// Call `hook` with the [`CacheOutcome`] of every request the layer answers (status,
    /// age, streamed or not), as the `x-llm-cache` and `age` headers state it, for logs or
    /// metrics of your own. It runs on the request's task before the caller sees the
    /// answer: keep it short and never block in it. To learn the outcome of one call of
    /// your own, use [`observe`] instead.
    pub fn on_outcome(mut self, hook: impl Fn(&CacheOutcome) + Send + Sync + 'static) -> Self {
        self.on_outcome = Some(Arc::new(hook));
        self
    }

    /// Build the layer and its cache. Succeeds when Redis is down (L1-only until it
    /// answers); needs a Tokio runtime.
    ///
    /// # Errors
    ///
    /// A `Config` error naming the first bad knob of the cache builder.
    pub async fn build(self) -> Result<AsyncOpenAiLayer> {
        let cache = self.cache.build_or(Arc::new(NoUpstream)).await?;
        Ok(AsyncOpenAiLayer {
            shared: Arc::new(Shared {
                cache,
                share_across_credentials: self.share_across_credentials,
                credentials: self.credential_headers.iter().fold(
                    headers::CredentialScope::scoped().shared(self.share_across_credentials),
                    |scope, name| scope.header(name),
                ),
                namespace: self.namespace,
                on_outcome: self.on_outcome,
            }),
        })
    }
}

/// The upstream of a cache built for the layer alone: the layer brings an upstream with
/// every request, so only a direct `chat` call ever reaches this.
struct NoUpstream;

impl Upstream for NoUpstream {
    fn chat<'a>(&'a self, _request: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse>> {
        Box::pin(async {
            Err(Error::new(
                ErrorKind::Config,
                "this cache was built for the async-openai layer without an upstream: call it \
                 through the layer, or give the builder an `upstream` to call `chat` directly",
            ))
        })
    }
}

impl AsyncOpenAiLayer {
    /// Start configuring a layer whose cache is `cache` (Redis, L1 size, TTLs, key prefix,
    /// key options, prices...). The builder's `upstream` is optional here: the layer's
    /// requests go to the inner service; with one, the cache's own `chat` works too.
    pub fn builder(cache: LlmCacheBuilder) -> AsyncOpenAiLayerBuilder {
        AsyncOpenAiLayerBuilder {
            cache,
            share_across_credentials: false,
            credential_headers: Vec::new(),
            namespace: String::new(),
            on_outcome: None,
        }
    }

    /// `builder(cache).build()`: the layer with the default credential scoping.
    ///
    /// # Errors
    ///
    /// As [`AsyncOpenAiLayerBuilder::build`].
    pub async fn build(cache: LlmCacheBuilder) -> Result<Self> {
        Self::builder(cache).build().await
    }

    /// The cache behind the layer: its chat stats, per-model savings, invalidation...
    pub fn cache(&self) -> &LlmCache {
        &self.shared.cache
    }

    /// The counters of the endpoints stored whole (responses, completions); embeddings are
    /// in [`LlmCache::embedding_stats`].
    pub fn body_stats(&self) -> Stats {
        self.shared.cache.bodies().stats()
    }
}

impl<S> tower::Layer<S> for AsyncOpenAiLayer {
    type Service = AsyncOpenAiCache<S>;

    fn layer(&self, inner: S) -> Self::Service {
        AsyncOpenAiCache {
            layer: self.clone(),
            inner,
        }
    }
}

/// The service [`AsyncOpenAiLayer`] makes: answers cacheable requests from the tiers, and
/// hands everything else (and every miss) to the inner service with the caller's own
/// request factory, so an inner retry layer rebuilds requests as it would without the
/// cache. Always ready: readiness of the inner service is awaited only when it is called.
#[derive(Clone)]
pub struct AsyncOpenAiCache<S> {
    layer: AsyncOpenAiLayer,
    inner: S,
}

impl<S> fmt::Debug for AsyncOpenAiCache<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsyncOpenAiCache")
            .field("layer", &self.layer)
            .finish_non_exhaustive()
    }
}

impl<S> tower::Service<HttpRequestFactory> for AsyncOpenAiCache<S>
where
    S: HttpService,
    S::Error: Into<OpenAIError>,
{
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future = BoxFuture<'static, std::result::Result<reqwest::Response, OpenAIError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::result::Result<(), OpenAIError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, factory: HttpRequestFactory) -> Self::Future {
        let shared = Arc::clone(&self.layer.shared);
        let inner = self.inner.clone();
        Box::pin(async move {
            let response = handle(&shared, inner, factory).await?;
            status::report(shared.on_outcome.as_ref(), &response);
            Ok(response)
        })
    }
}

/// The upstream a chat request's semantic lookup embeds through (with
/// `SemanticConfig::embed_via_route`): the inner service, with the caller's request sent
/// to the `embeddings` path beside its `chat/completions` (same base URL, headers and
/// credentials, same retry stack).
fn chat_embedder<S>(
    inner: &S,
    factory: &HttpRequestFactory,
) -> Arc<dyn llm_cache_core::upstream::Upstream>
where
    S: HttpService,
    S::Error: Into<OpenAIError>,
{
    Arc::new(FactoryUpstream {
        service: inner.clone(),
        factory: request::embeddings_beside(factory.clone()),
    })
}

async fn handle<S>(
    shared: &Shared,
    inner: S,
    factory: HttpRequestFactory,
) -> std::result::Result<reqwest::Response, OpenAIError>
where
    S: HttpService,
    S::Error: Into<OpenAIError>,
{
    let mut request = factory.build().await?;
    let control =
        headers::take_controls(request.headers_mut()).map_err(OpenAIError::InvalidArgument)?;
    let control = headers::bind(control, &shared.namespace);
    let plan = request::plan(&request);
    let share = &shared.credentials;
    match plan {
        Plan::PassThrough => {
            let forward = request::forward(factory, request);
            upstream::send(inner, forward).await
        }
        Plan::Chat(chat) => {
            let stream = chat.stream == Some(true);
            let scope: Arc<[u8]> =
                headers::scope(request.url(), request.headers(), "chat", share).into();
            let embedder = chat_embedder(&inner, &factory);
            let factory = if stream {
                let body =
                    Bytes::from(serde_json::to_vec(&with_usage(&chat)).map_err(|e| {
                        OpenAIError::InvalidArgument(format!("the chat request: {e}"))
                    })?);
                drop(request);
                request::with_body(factory, body)
            } else {
                request::forward(factory, request)
            };
            let upstream = FactoryUpstream {
                service: inner,
                factory,
            };
            let route = Route::via(Arc::new(upstream))
                .scope(scope)
                .embedder(embedder);
            if stream {
                return chat_stream(&shared.cache, &chat, &control, &route).await;
            }
            match shared.cache.chat_routed(&chat, &control, &route).await {
                Ok(cached) => json_reply(cached.value(), cached.status(), cached.age()),
                Err(e) => error_reply(e),
            }
        }
        Plan::Embeddings(embed) => {
            let scope: Arc<[u8]> =
                headers::scope(request.url(), request.headers(), "embeddings", share).into();
            drop(request);
            // Each miss sends the caller's request with only the missing inputs.
            let upstream = FactoryUpstream {
                service: inner,
                factory,
            };
            let route = Route::via(Arc::new(upstream)).scope(scope);
            match shared
                .cache
                .embeddings_routed(&embed, &control, &route)
                .await
            {
                Ok(out) => json_reply(out.response(), out.status(), out.age()),
                Err(e) => error_reply(e),
            }
        }
        Plan::Body(body) => {
            // The key and what is sent are llm-cache-core's `bodies` rules, shared with the
            // HTTP front: one request, one key.
            let scope = headers::scope(request.url(), request.headers(), body.shape(), share);
            if control.bypass {
                shared.cache.count_bypassed();
                let forward = request::forward(factory, request);
                let response = upstream::send(inner, forward).await?;
                return Ok(reply::mark(response, CacheStatus::Bypass));
            }
            let digest = body.digest(&shared.cache, &control, &scope);
            // A completions stream asks for usage whatever this caller asked (the key
            // ignores `stream_options`); a caller who did not ask gets it without.
            let forward = match body.upstream_body() {
                Some(sent) => {
                    let sent = serde_json::to_vec(&sent).map_err(|e| {
                        OpenAIError::InvalidArgument(format!("the completions request: {e}"))
                    })?;
                    drop(request);
                    request::with_body(factory, Bytes::from(sent))
                }
                None => request::forward(factory, request),
            };
            bodies::answer(&shared.cache, &body, digest, &control, inner, forward).await
        }
    }
}

/// `value` as a JSON answer; a miss is as old as its fetch: `age: 0`.
fn json_reply(
    value: &impl serde::Serialize,
    status: CacheStatus,
    age: std::time::Duration,
) -> std::result::Result<reqwest::Response, OpenAIError> {
    let body =
        serde_json::to_vec(value).map_err(|e| OpenAIError::Boxed(Box::new(Error::codec(e))))?;
    let age = if status.is_hit() {
        age
    } else {
        std::time::Duration::ZERO
    };
    Ok(reply::answer(
        "application/json",
        body.into(),
        status,
        Some(age),
    ))
}

/// The request as sent upstream on a streamed miss: usage asked for, whatever the caller
/// asked (the cache accounts for every answer, and replays usage to callers who ask).
fn with_usage(chat: &ChatRequest) -> ChatRequest {
    let mut sent = chat.clone();
    let options = sent.stream_options.take().unwrap_or_default();
    sent.stream_options = Some(llm_cache_core::stream::usage::with_usage(options));
    sent
}

async fn chat_stream(
    cache: &LlmCache,
    chat: &ChatRequest,
    control: &CacheControl,
    route: &Route,
) -> std::result::Result<reqwest::Response, OpenAIError> {
    let live = match cache.chat_stream_routed(chat, control, route).await {
        Ok(live) => live,
        Err(e) => return error_reply(e),
    };
    let (status, age) = (live.status(), live.age());
    let events = live
        .map(|chunk| {
            let chunk = chunk?;
            let mut line = Vec::with_capacity(256);
            line.extend_from_slice(b"data: ");
            serde_json::to_writer(&mut line, &chunk).map_err(Error::codec)?;
            line.extend_from_slice(b"\n\n");
            Ok(Bytes::from(line))
        })
        .chain(futures_util::stream::once(async {
            Ok(Bytes::from_static(b"data: [DONE]\n\n"))
        }));
    Ok(reply::event_stream(events, status, Some(age)))
}
