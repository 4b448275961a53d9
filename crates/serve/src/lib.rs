//! An OpenAI-compatible HTTP front (feature `axum`): an axum [`Router`] that answers
//! OpenAI-style requests from the cache, for services in any language. Point the official
//! `openai` SDK's `base_url` at it and every repeat is answered from the tiers.
//!
//! ```no_run
//! use llm_cache_core::{LlmCache, OpenAiCompatible};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let cache = LlmCache::builder()
//!     .upstream(OpenAiCompatible::new("https://api.openai.com/v1").api_key("sk-..."))
//!     .build()
//!     .await?;
//! let app = axum::Router::new().nest("/llm", llm_cache_serve::router(cache));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! Handlers of your own take a few lines: the crate's [`Error`],
//! [`Cached`](llm_cache_core::Cached), [`CachedStream`](llm_cache_core::CachedStream) and
//! [`CachedEmbeddings`](llm_cache_core::CachedEmbeddings) are axum responses (OpenAI-shaped errors;
//! JSON or server-sent events with `x-llm-cache` and `age`).
//!
//! ```no_run
//! use axum::body::Bytes;
//! use axum::extract::State;
//! use llm_cache_core::{Cached, ChatRequest, ChatResponse, Error, LlmCache};
//!
//! async fn ask(State(cache): State<LlmCache>, body: Bytes) -> Result<Cached<ChatResponse>, Error> {
//!     let request = ChatRequest::from_json(&body)?;
//!     cache.chat(&request).await
//! }
//! # fn app(cache: LlmCache) -> axum::Router {
//! axum::Router::new().route("/ask", axum::routing::post(ask)).with_state(cache)
//! # }
//! ```
//!
//! # Routes
//!
//! - `POST /v1/chat/completions`: JSON, or with `"stream": true` server-sent events (a
//!   replay of the stored answer on a hit: same text, tool calls, finish reason and usage;
//!   chunk boundaries may differ; the usage chunk only when `stream_options.include_usage`
//!   asks for it), then `data: [DONE]`. Concurrent identical requests, streamed or not,
//!   cost one upstream call.
//! - `POST /v1/embeddings`: input by input (only the missing inputs go upstream, in one
//!   call; `x-llm-cache: partial` when some inputs were cached and some fetched), vectors
//!   in the request's `encoding_format`.
//! - `POST /v1/responses` and `POST /v1/completions`: JSON, or with `"stream": true`
//!   server-sent events, stored as the upstream sent them and replayed byte for byte
//!   (llm-cache-core's `bodies`, the async-openai layer's path: the same keys). The whole
//!   body is the key (`previous_response_id` included; `stream` and `stream_options`
//!   dropped); a streamed completions caller who did not ask for usage gets the stream
//!   without its usage chunk. Responses requests with a `conversation` or
//!   `background: true` go upstream uncached (`x-llm-cache: bypass`); an answer that is
//!   not complete reaches the caller as it came and is never stored. They need
//!   [`upstream_url`](ServeBuilder::upstream_url) (404 without).
//! - `GET /v1/models`: passed through to the upstream (needs
//!   [`upstream_url`](ServeBuilder::upstream_url)); never cached.
//! - `GET /health` (JSON: the Redis tier's state; always 200, Redis is optional),
//!   `GET /stats` ([`LlmStats`](llm_cache_core::LlmStats) as JSON: counts only, never a key or a
//!   prompt), `GET /metrics` (Prometheus text, with the `prometheus` feature and
//!   [`metrics`](ServeBuilder::metrics)); behind the [admin key](ServeBuilder::admin_key)
//!   when one is set.
//! - `POST /v1/cache/invalidate` and `GET /dashboard`: see [Operators](#operators).
//!
//! # Per-request control
//!
//! The request headers of the async-openai layer: `x-llm-cache-namespace` (a tenant,
//! nested inside the namespace the caller is bound to), `x-llm-cache-ttl` (seconds),
//! `x-llm-cache-control` (`no-store`, `refresh`, `bypass`). Answers carry `x-llm-cache`
//! (`hit-l1`, `hit-l2`, `coalesced`, `miss`, `bypass`, `partial`) and `age` (seconds).
//!
//! # Credentials
//!
//! Three ways to run, chosen on the [`ServeBuilder`]:
//!
//! - **Open** (the default, and [`router`]): no caller authentication, for a router nested
//!   behind a service's own. Misses go to the cache's own upstream, and keys are the
//!   cache's own ([`LlmCache::chat_with`](llm_cache_core::LlmCache::chat_with) shares them).
//! - **Caller keys** ([`callers`](ServeBuilder::callers)): the front holds the provider key
//!   ([`upstream_key`](ServeBuilder::upstream_key)); each caller sends its own key as
//!   `Authorization: Bearer <key>`, bound to a namespace (see [`CallerKeys`] for the file
//!   format): keys share answers only when they are bound to the same namespace. A caller
//!   key may use `refresh`, `bypass` or `no-store`, which spend the upstream budget, only
//!   when its line allows them.
//! - **Pass-through** ([`pass_through_credentials`](ServeBuilder::pass_through_credentials)):
//!   the caller's credential headers (`authorization`, `api-key`, `openai-organization`...,
//!   every header whose name contains `auth`, `key`, `token`, `secret` or `cookie`, such as
//!   a gateway's `ocp-apim-subscription-key` or `x-goog-api-key`, and the names given to
//!   [`credential_header`](ServeBuilder::credential_header)) are forwarded to the upstream,
//!   and the cache is scoped by their SHA-256, as the async-openai layer does: two keys
//!   never share an answer.
//!
//! With an [`upstream_url`](ServeBuilder::upstream_url), keys also hold the upstream's
//! host, path and query and the SHA-256 of the credentials sent to it. Caller keys and
//! credentials never appear in logs, errors or `/stats`; caller keys are compared by their
//! SHA-256 digests.
//!
//! # Operators
//!
//! `POST /v1/cache/invalidate` takes `{"chat": <a chat completions body>}`,
//! `{"embeddings": <an embeddings body>}` or `{"namespace": true}` and removes that body's
//! answer (the key this front computes for it and this caller), the vectors of its inputs, or
//! everything of the caller's namespace. Who may: a caller key with `allow=invalidate`, in
//! its own namespace only; in pass-through mode the caller's own credentials for a body and
//! the admin key for the namespace; in open mode the admin key only, and nobody when none is
//! set. `GET /dashboard` is a self-contained page (no external asset) showing `/stats` and
//! `/health`, refreshed every 5 s; it holds no numbers, so it needs no key, and sends the
//! admin key given as `/dashboard#key=<admin key>` (or typed in) as `Authorization: Bearer`.
//!
//! # Errors
//!
//! Every error is an OpenAI-shaped JSON body, `{"error": {"message", "type", "param",
//! "code"}}`. An upstream error keeps the upstream's own status, `type`, `code` and `param`
//! and its `Retry-After` (also as `retry-after-ms`); errors of the front itself say what
//! was wrong: 400 for a body that is not a chat request (malformed JSON, nested deeper
//! than [`MAX_REQUEST_DEPTH`](llm_cache_core::MAX_REQUEST_DEPTH), a bad control header), 401 for a
//! missing or unknown caller key, 403 for a directive the key may not use, 413 for a body
//! over [`body_limit`](ServeBuilder::body_limit), 415 for a body that is not sent as JSON
//! (`Content-Type: application/json` or `application/*+json`; a form or `text/plain` POST,
//! which a browser sends across origins without a preflight, is never answered), 502/504 when the upstream could not be
//! reached or did not answer in time. Nothing that failed is stored. An error in the middle
//! of a stream (after its first chunk) is sent as one last event,
//! `data: {"error": {...}}`, with no `[DONE]` after it: the `openai` SDKs raise it as an
//! `APIError`.
//!
//! # Retries
//!
//! The SDKs retry 429s and 5xx themselves (the `openai` SDKs twice, honouring
//! `Retry-After`), and their retries of one question coalesce into one upstream call
//! again. So by default the front tries the upstream at most twice for a miss (connect
//! errors, timeouts, 5xx, a 429 without `Retry-After`) and hands an answer that carries
//! `Retry-After` back at once, header kept, so the waiting is done once, by the caller;
//! change it with [`retry`](ServeBuilder::retry).

#![warn(missing_docs)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod access;
mod admin;
mod answers;
mod bodies;
mod chat;
mod dashboard;
mod embeddings;
mod errors;
mod invalidate;
mod operator;
mod provider;
mod server;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

pub use self::access::{CallerKey, CallerKeys};
pub use self::errors::ApiError;
use self::provider::Provider;
pub use self::server::{ServeLimits, serve};
use llm_cache_core::chat::LlmCache;
// The LLM layer under the names the front was written against.
use crate::error::{Error, Result};
use crate::integrations::headers;
use crate::upstream::RetryPolicy;
use llm_cache_core::{error, integrations, request, upstream};

/// The default of [`ServeBuilder::body_limit`]: 4 MiB.
pub const DEFAULT_BODY_LIMIT: usize = 4 << 20;

/// The router for `cache`, open to every caller, answering misses from the cache's own
/// upstream (see the [module docs](self)). The same as `builder(cache).build()`.
pub fn router(cache: LlmCache) -> Router {
    builder(cache)
        .build()
        .expect("an open router without an upstream URL has nothing to check")
}

/// Start configuring a router for `cache`.
pub fn builder(cache: LlmCache) -> ServeBuilder {
    ServeBuilder {
        cache,
        upstream_url: None,
        upstream_key: None,
        http_client: None,
        retry: default_retry(),
        request_timeout: Duration::from_secs(120),
        callers: None,
        pass_through: false,
        credential_headers: Vec::new(),
        namespace: String::new(),
        body_limit: DEFAULT_BODY_LIMIT,
        admin_key: None,
        #[cfg(feature = "prometheus")]
        metrics: None,
    }
}

/// At most two attempts, and an answer with `Retry-After` goes back to the caller at once.
fn default_retry() -> RetryPolicy {
    RetryPolicy::default()
        .max_attempts(2)
        .max_retry_after(Duration::ZERO)
}

/// Configures the router: the upstream and its credentials, who may call, the body limit.
#[must_use]
pub struct ServeBuilder {
    cache: LlmCache,
    upstream_url: Option<String>,
    upstream_key: Option<String>,
    http_client: Option<reqwest::Client>,
    retry: RetryPolicy,
    request_timeout: Duration,
    callers: Option<CallerKeys>,
    pass_through: bool,
    credential_headers: Vec<String>,
    namespace: String,
    body_limit: usize,
    /// The admin key, or why it is not one (reported by `build`).
    admin_key: Option<Result<operator::AdminKey>>,
    #[cfg(feature = "prometheus")]
    metrics: Option<llm_cache_core::prometheus::PrometheusHandle>,
}

impl std::fmt::Debug for ServeBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeBuilder")
            .field(
                "upstream_url",
                &self.upstream_url.as_deref().map(crate::error::redact_url),
            )
            .field("upstream_key", &self.upstream_key.as_ref().map(|_| "***"))
            .field("callers", &self.callers)
            .field("pass_through", &self.pass_through)
            .field("credential_headers", &self.credential_headers)
            .field("body_limit", &self.body_limit)
            .field("admin_key", &self.admin_key.as_ref().map(|_| "***"))
            .finish_non_exhaustive()
    }
}

impl ServeBuilder {
    llm_cache_core::tiered::setters! {
        /// The provider's base URL, such as `https://api.openai.com/v1`: chat misses go to its
        /// `/chat/completions` and `GET /v1/models` to its `/models`, and keys hold its host,
        /// path and query. Without it, misses go to the cache's own upstream and `/v1/models`
        /// answers 404.
        pub fn upstream_url(url: impl Into<String>) { upstream_url = Some(url.into()) }

        /// The provider key the front sends (`Authorization: Bearer`), when it holds it.
        pub fn upstream_key(key: impl Into<String>) { upstream_key = Some(key.into()) }

        /// The reqwest client for upstream calls (its pool, proxy, TLS); default: one of its own.
        pub fn http_client(client: reqwest::Client) { http_client = Some(client) }

        /// The retry policy of upstream calls (see [Retries](self#retries)).
        pub fn retry(policy: RetryPolicy) { retry = policy }

        /// The deadline of one upstream attempt (default 120 s; a stream's headers, then each
        /// pause between its reads).
        pub fn request_timeout(timeout: Duration) { request_timeout = timeout }

        /// Accept only these caller keys, each bound to its namespace.
        pub fn callers(keys: CallerKeys) { callers = Some(keys) }

        /// Forward the caller's credential headers to the upstream and scope the cache by them,
        /// instead of holding a provider key.
        pub fn pass_through_credentials(yes: bool) { pass_through = yes }
    }

    /// Also treat request header `name` as a credential in pass-through mode: forwarded to
    /// the upstream, and its SHA-256 in the key scope, so callers that differ there never
    /// share an answer. Headers whose names contain `auth`, `key`, `token`, `secret` or
    /// `cookie` (a gateway's `ocp-apim-subscription-key`, `x-goog-api-key`...) are
    /// credentials already.
    pub fn credential_header(self, name: impl Into<String>) -> Self {
        self.credential_headers([name])
    }

    /// [`credential_header`](Self::credential_header) for each of `names`.
    pub fn credential_headers<I>(mut self, names: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.credential_headers
            .extend(names.into_iter().map(Into::into));
        self
    }

    llm_cache_core::tiered::setters! {
        /// The namespace every request is bound to when no caller key binds it (open and
        /// pass-through modes); `x-llm-cache-namespace` nests inside it.
        pub fn namespace(namespace: impl Into<String>) { namespace = namespace.into() }

        /// The largest request body accepted, in bytes (default [`DEFAULT_BODY_LIMIT`]); a
        /// larger one is answered 413 before it is read whole.
        pub fn body_limit(bytes: usize) { body_limit = bytes }

        /// Guard `/health`, `/stats`, `/metrics` (and so the dashboard's numbers) with `key`:
        /// each then needs `Authorization: Bearer <key>` (401 otherwise). Without caller keys it
        /// is also the key that may use `POST /v1/cache/invalidate` (in pass-through mode, for a
        /// namespace; see [Operators](self#operators)). Only its SHA-256 is kept; it is never
        /// logged or shown. `build` fails on an empty key.
        pub fn admin_key(key: impl AsRef<str>) {
            admin_key = Some(operator::AdminKey::new(key.as_ref()))
        }

        /// Serve `GET /metrics` from this Prometheus handle (see
        /// [`prometheus::install`](llm_cache_core::prometheus::install)).
        #[cfg(feature = "prometheus")]
        pub fn metrics(handle: llm_cache_core::prometheus::PrometheusHandle) {
            metrics = Some(handle)
        }
    }

    /// Check the configuration and build the router.
    ///
    /// # Errors
    ///
    /// A `Config` error naming the knob: a bad `upstream_url`, pass-through or an upstream
    /// key without an `upstream_url`, pass-through together with caller keys or an upstream
    /// key, an empty caller-key list, a zero body limit, an empty admin key.
    pub fn build(self) -> Result<Router> {
        if self.body_limit == 0 {
            return Err(Error::config("body_limit", "must be at least 1 byte"));
        }
        if self.pass_through && self.callers.is_some() {
            return Err(Error::config(
                "pass_through_credentials",
                "the caller's Authorization is the provider's key there: it cannot also be a \
                 caller key (drop `callers`)",
            ));
        }
        if self.pass_through && self.upstream_key.is_some() {
            return Err(Error::config(
                "pass_through_credentials",
                "forwards the caller's credentials: drop `upstream_key`",
            ));
        }
        if self.callers.as_ref().is_some_and(CallerKeys::is_empty) {
            return Err(Error::config("callers", "no caller key given"));
        }
        let provider = match &self.upstream_url {
            Some(url) => Some(Provider::new(
                url,
                self.upstream_key.as_deref(),
                self.http_client.clone(),
                self.retry,
                self.request_timeout,
                self.credential_headers
                    .iter()
                    .fold(headers::CredentialScope::scoped(), |scope, name| {
                        scope.header(name)
                    }),
            )?),
            None if self.pass_through => {
                return Err(Error::config(
                    "pass_through_credentials",
                    "needs an `upstream_url` to forward to",
                ));
            }
            None if self.upstream_key.is_some() => {
                return Err(Error::config(
                    "upstream_key",
                    "needs an `upstream_url` (without one, misses go to the cache's own upstream)",
                ));
            }
            None => None,
        };
        let admin_key = self.admin_key.transpose()?;
        let body_limit = self.body_limit;
        let front = Arc::new(Front {
            cache: self.cache,
            provider,
            callers: self.callers,
            pass_through: self.pass_through,
            namespace: self.namespace,
            body_limit: self.body_limit,
            admin_key,
            answers: answers::AnswerBytes::new(),
            #[cfg(feature = "prometheus")]
            metrics: self.metrics,
        });
        Ok(Router::new()
            .route("/v1/chat/completions", post(chat::completions))
            .route("/v1/embeddings", post(embeddings::embeddings))
            .route("/v1/responses", post(bodies::responses))
            .route("/v1/completions", post(bodies::completions))
            .route("/v1/models", get(provider::models))
            .route("/livez", get(admin::livez))
            .route("/health", get(admin::health))
            .route("/stats", get(admin::stats))
            .route("/metrics", get(admin::metrics))
            .route("/v1/cache/invalidate", post(invalidate::invalidate))
            .route("/dashboard", get(dashboard::page))
            .fallback(errors::not_found)
            .method_not_allowed_fallback(errors::method_not_allowed)
            .layer(DefaultBodyLimit::max(body_limit))
            .with_state(front))
    }
}

/// What every handler shares.
struct Front {
    cache: LlmCache,
    provider: Option<Provider>,
    callers: Option<CallerKeys>,
    pass_through: bool,
    namespace: String,
    body_limit: usize,
    admin_key: Option<operator::AdminKey>,
    /// The JSON of chat answers served lately (an L1 hit is not serialised again).
    answers: answers::AnswerBytes,
    #[cfg(feature = "prometheus")]
    metrics: Option<llm_cache_core::prometheus::PrometheusHandle>,
}
