//! `OpenAiCompatible`: a reqwest (rustls) client for any OpenAI-compatible
//! `/chat/completions` endpoint, with retries, backoff and `Retry-After`. It must never put
//! the API key or another credential in an error, a log line or `Debug` output: every text
//! from the upstream goes through the one mask of `credentials.rs` before it is shortened.

mod credentials;

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::BoxStream;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use serde_json::{Map, Value};

use super::{BoxFuture, ChunkStream, Upstream};
use crate::error::{Error, ErrorKind, Result, redact_url};
use crate::request::{ChatRequest, ChatResponse};
use crate::stream::{ChatChunk, ReplayOptions, SseEvent, SseParser, parse_chunk, replay};
use credentials::{MASKED, Mask, is_credential_header};
use metrics::Counter;

/// When and how often [`OpenAiCompatible`] tries a failed call again.
///
/// Connect errors, timeouts and HTTP 429, 500, 502, 503 and 504 are retried; every other
/// status (400, 401, 404, ...) and a 2xx body that is not a chat completion are not.
/// Between attempts it waits a "full jitter" backoff, a random delay in
/// `0..=min(max_delay, base_delay * 2^n)` for the n-th retry (n from 0). When the upstream
/// sends `Retry-After` (delta-seconds or an HTTP date; also `retry-after-ms`), that delay
/// replaces the backoff and is never undercut; if it is longer than `max_retry_after` the
/// call gives up at once rather than retry sooner than asked, and the error carries the
/// delay ([`Error::retry_after`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    max_attempts: u32,
    base_delay: Duration,
    max_delay: Duration,
    max_retry_after: Duration,
}

impl Default for RetryPolicy {
    /// 3 attempts, 200 ms base delay, 10 s max delay, `Retry-After` honoured up to 30 s.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The default policy (see [`RetryPolicy::default`]).
    pub fn new() -> Self {
        Self::default()
    }

    /// One attempt, no retries.
    pub fn none() -> Self {
        Self::default().max_attempts(1)
    }

    /// Attempts in all, the first included (default 3; must be at least 1).
    #[must_use]
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }

    /// The backoff bound of the first retry, doubled for each later one (default 200 ms).
    #[must_use]
    pub fn base_delay(mut self, d: Duration) -> Self {
        self.base_delay = d;
        self
    }

    /// The largest backoff bound (default 10 s).
    #[must_use]
    pub fn max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }

    /// The longest `Retry-After` the client waits for; a longer one ends the call with
    /// the error (default 30 s).
    #[must_use]
    pub fn max_retry_after(mut self, d: Duration) -> Self {
        self.max_retry_after = d;
        self
    }

    /// The jittered delay before retry `n` (0 for the first retry).
    fn backoff(&self, n: u32) -> Duration {
        let bound = self
            .base_delay
            .saturating_mul(2u32.saturating_pow(n))
            .min(self.max_delay);
        let nanos = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::random_range(0..=nanos))
    }
}

/// Counters of one [`OpenAiCompatible`] client; take a handle with
/// [`OpenAiCompatible::stats`] before handing the client to the cache.
#[derive(Debug)]
pub struct UpstreamStats {
    calls: AtomicU64,
    retries: AtomicU64,
    errors: AtomicU64,
    /// The same, as `ai_upstream_requests_total{outcome}`.
    exported: UpstreamExported,
}

impl Default for UpstreamStats {
    fn default() -> Self {
        UpstreamStats {
            calls: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            exported: UpstreamExported::register(),
        }
    }
}

impl UpstreamStats {
    /// HTTP requests sent, retries included.
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    /// HTTP requests that were retries of a failed attempt.
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// `chat` and `chat_stream` calls that ended in an error, after all their attempts
    /// (for a stream, also one cut off or failing after it started).
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }
}

/// An [`Upstream`] for any OpenAI-compatible API, over reqwest (rustls, HTTP/2 when the
/// server offers it).
///
/// It POSTs to `{base_url}/chat/completions` (a `base_url` that already ends in
/// `/chat/completions` is used as is; a query such as Azure's `?api-version=` is kept).
/// `chat` removes `stream` and `stream_options` from the body; `chat_stream` sets
/// `stream: true` and adds `include_usage: true` to the caller's `stream_options`, and
/// yields each chunk as it arrives (a server that answers with one JSON completion
/// instead is replayed as chunks). Setters never fail: the
/// configuration is checked, and the HTTP client built, by [`OpenAiCompatible::validate`],
/// which the cache builder calls from `build()`; a client used on its own does it on its
/// first call. A bad knob is an [`ErrorKind::Config`] error that names it. Redirects are
/// not followed (they are answered as an upstream error with the 3xx status).
///
/// The API key is sent as `Authorization: Bearer <key>`.
///
/// # Credentials
///
/// The API key and every credential header are never shown: `Debug` prints
/// `api_key: "***"` and header names without values, and errors and log lines carry
/// neither them nor the URL's query or credentials. The credential headers are
/// `Authorization`, `Proxy-Authorization`, `api-key`, `x-api-key`, `OpenAI-Organization`,
/// `OpenAI-Project` (any case), any header whose name contains `auth`, `key`, `token`,
/// `secret` or `cookie`, and any set with [`OpenAiCompatible::credential_header`]. When an
/// upstream echoes one in its error text, it is masked as `***`, both the whole value and
/// the bare token after an auth scheme (`Bearer <token>`; for `Basic`, the base64 text, the
/// decoded `user:password` and the password), before the text is shortened for the error.
/// A value shorter than 4 characters is no secret (local servers take any key) and is not
/// masked; one shorter than 8 is masked only where it stands alone, not inside a longer
/// word. Every header value is sent marked sensitive (`HeaderValue::set_sensitive`), so
/// HTTP/2 never indexes it and reqwest's own `Debug` output hides it.
///
/// ```no_run
/// # async fn demo() -> llm_cache::Result<()> {
/// use std::time::Duration;
/// use llm_cache::{ChatMessage, ChatRequest, OpenAiCompatible, RetryPolicy, Upstream};
///
/// let client = OpenAiCompatible::new("https://api.openai.com/v1")
///     .api_key(std::env::var("OPENAI_API_KEY").unwrap_or_default())
///     .header("OpenAI-Organization", "org-123")
///     .request_timeout(Duration::from_secs(30))
///     .retry(RetryPolicy::default().max_attempts(4));
/// client.validate()?;
/// let stats = client.stats();
/// let answer = client
///     .chat(&ChatRequest::new("gpt-4.1").message(ChatMessage::user("hi")))
///     .await?;
/// println!("{:?} after {} HTTP calls", answer.text(), stats.calls());
/// # Ok(()) }
/// ```
pub struct OpenAiCompatible {
    base_url: String,
    api_key: Option<String>,
    headers: Vec<(String, String)>,
    /// Header names the user marked as credentials, lowercase.
    credential_headers: Vec<String>,
    connect_timeout: Duration,
    request_timeout: Duration,
    retry: RetryPolicy,
    stats: Arc<UpstreamStats>,
    ready: OnceLock<Arc<Ready>>,
}

/// What the configuration turns into once checked.
struct Ready {
    client: reqwest::Client,
    endpoint: Url,
    /// The endpoint without credentials or query, for messages.
    shown: String,
    /// The credentials this client sends: what every error and log line is masked with.
    mask: Mask,
}

/// Answer bodies read for an error message stop here.
const ERROR_BODY_LIMIT: usize = 64 << 10;
/// How much of an unexpected body an error quotes.
const SNIPPET_BYTES: usize = 200;
/// How much of a provider's error message an error quotes.
const MESSAGE_BYTES: usize = 1024;

impl OpenAiCompatible {
    /// A client for `base_url`, such as `https://api.openai.com/v1`.
    pub fn new(base_url: impl Into<String>) -> Self {
        OpenAiCompatible {
            base_url: base_url.into(),
            api_key: None,
            headers: Vec::new(),
            credential_headers: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            retry: RetryPolicy::default(),
            stats: Arc::default(),
            ready: OnceLock::new(),
        }
    }

    /// The API key, sent as `Authorization: Bearer <key>`.
    #[must_use]
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self.reconfigured()
    }

    /// An extra header on every request (a later value for the same name wins; the API
    /// key's `Authorization` wins over one set here). A credential header (see
    /// [Credentials](OpenAiCompatible#credentials)) is treated as a secret; for another
    /// header that carries one, use [`OpenAiCompatible::credential_header`].
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self.reconfigured()
    }

    /// An extra header that carries a credential the client cannot know about from its
    /// name (say `X-Tenant-Pass`): like [`OpenAiCompatible::header`], and every value sent
    /// under this name, whole or after its auth scheme, is masked wherever the upstream
    /// echoes it (see [Credentials](OpenAiCompatible#credentials)).
    #[must_use]
    pub fn credential_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        let name = name.into();
        self.credential_headers.push(name.to_ascii_lowercase());
        self.header(name, value)
    }

    /// The deadline to open a connection (default 10 s).
    #[must_use]
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self.reconfigured()
    }

    /// The deadline of one attempt, from sending to the last byte of the answer
    /// (default 60 s). Retries get a fresh deadline each. A stream has no overall
    /// deadline, since a long answer may take minutes: this bounds the wait for its
    /// headers, then each pause between two reads of its body.
    #[must_use]
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self.reconfigured()
    }

    /// The retry policy (default [`RetryPolicy::default`]).
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self.reconfigured()
    }

    /// A handle on this client's counters; it stays valid after the client is moved.
    pub fn stats(&self) -> Arc<UpstreamStats> {
        Arc::clone(&self.stats)
    }

    /// Check every knob and build the HTTP client, without any network call.
    pub fn validate(&self) -> Result<()> {
        self.ready().map(|_| ())
    }

    fn reconfigured(mut self) -> Self {
        self.ready = OnceLock::new();
        self
    }

    fn ready(&self) -> Result<&Arc<Ready>> {
        if let Some(ready) = self.ready.get() {
            return Ok(ready);
        }
        let ready = Arc::new(self.prepare()?);
        // A racing caller may have won; either result is the same.
        Ok(self.ready.get_or_init(|| ready))
    }

    fn prepare(&self) -> Result<Ready> {
        let endpoint = endpoint(&self.base_url)?;
        let shown = shown_url(&endpoint);
        if self.connect_timeout.is_zero() {
            return Err(Error::config(
                "connect_timeout",
                "must be greater than zero",
            ));
        }
        if self.request_timeout.is_zero() {
            return Err(Error::config(
                "request_timeout",
                "must be greater than zero",
            ));
        }
        if self.retry.max_attempts == 0 {
            return Err(Error::config("retry.max_attempts", "must be at least 1"));
        }

        let (headers, mask) = self.default_headers()?;
        let client = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            .default_headers(headers)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("llm-cache/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                Error::config("client", format!("the HTTP client cannot be built: {e}"))
            })?;
        Ok(Ready {
            client,
            endpoint,
            shown,
            mask,
        })
    }

    /// The headers of every request, each value marked sensitive, and the mask of the
    /// credentials among them.
    fn default_headers(&self) -> Result<(HeaderMap, Mask)> {
        let mut headers = HeaderMap::new();
        let mut mask = Mask::default();
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        for (name, value) in &self.headers {
            let header_name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| Error::config("header", format!("`{name}` is not a header name")))?;
            // The value may be a secret: the error names the header, never the value.
            let mut header_value = HeaderValue::from_str(value).map_err(|_| {
                Error::config(
                    "header",
                    format!("the value of `{name}` has characters not allowed in a header"),
                )
            })?;
            header_value.set_sensitive(true);
            if is_credential_header(header_name.as_str())
                || self
                    .credential_headers
                    .iter()
                    .any(|n| n == header_name.as_str())
            {
                mask.add_credential(value);
            }
            headers.insert(header_name, header_value);
        }
        // Keys read from files or the environment often end in a newline; an empty key
        // (local servers) sends no header at all.
        if let Some(key) = self
            .api_key
            .as_deref()
            .map(str::trim)
            .filter(|k| !k.is_empty())
        {
            let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                Error::config("api_key", "has characters not allowed in an HTTP header")
            })?;
            value.set_sensitive(true);
            mask.add_credential(&format!("Bearer {key}"));
            headers.insert(header::AUTHORIZATION, value);
        }
        Ok((headers, mask))
    }

    async fn send(&self, request: &ChatRequest) -> Result<ChatResponse> {
        let ready = self.ready()?;
        let body = serialise(&without_stream(request))?;
        self.with_retries(|| self.attempt(ready, body.clone()))
            .await
    }

    async fn open_stream(&self, request: &ChatRequest) -> Result<ChunkStream> {
        let ready = self.ready()?;
        let body = serialise(&with_stream(request))?;
        let response = match self
            .with_retries(|| self.attempt_stream(ready, body.clone()))
            .await?
        {
            Opened::Events(response) => response,
            Opened::Answer(answer) => {
                let options = ReplayOptions {
                    include_usage: true,
                    ..ReplayOptions::default()
                };
                let chunks = replay(&answer, &options);
                return Ok(futures_util::stream::iter(chunks.into_iter().map(Ok)).boxed());
            }
        };
        let reader = ChunkReader {
            body: response.bytes_stream().boxed(),
            parser: SseParser::new(),
            events: VecDeque::new(),
            parse_error: None,
            chunks: 0,
            finished: false,
            idle: self.request_timeout,
            ready: Arc::clone(ready),
            stats: Arc::clone(&self.stats),
        };
        Ok(
            futures_util::stream::unfold(reader, |mut reader| async move {
                let item = reader.next().await?;
                Some((item, reader))
            })
            .boxed(),
        )
    }

    /// Run `attempt` under the retry policy, counting calls, retries and errors.
    async fn with_retries<T, F, Fut>(&self, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let policy = self.retry;
        let mut n: u32 = 1;
        loop {
            self.stats.calls.fetch_add(1, Ordering::Relaxed);
            if n > 1 {
                self.stats.retries.fetch_add(1, Ordering::Relaxed);
                self.stats.exported.retried.increment(1);
            }
            let failure = match attempt().await {
                Ok(answer) => {
                    self.stats.exported.ok.increment(1);
                    tracing::Span::current().record("upstream_attempts", n);
                    return Ok(answer);
                }
                Err(failure) => failure,
            };
            let delay = match failure.retry_after {
                _ if !failure.retryable || n >= policy.max_attempts => None,
                Some(after) if after > policy.max_retry_after => None,
                Some(after) => Some(after),
                None => Some(policy.backoff(n - 1)),
            };
            let Some(delay) = delay else {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                self.stats.exported.error.increment(1);
                tracing::Span::current().record("upstream_attempts", n);
                return Err(failure.error);
            };
            tracing::debug!(
                attempt = n,
                delay_ms = delay.as_millis() as u64,
                error = %failure.error,
                "upstream call failed; retrying"
            );
            tokio::time::sleep(delay).await;
            n += 1;
        }
    }

    async fn attempt(&self, ready: &Ready, body: Bytes) -> Result<ChatResponse, Failure> {
        let transport = |e| ready.transport_error(e, self);
        let response = ready
            .client
            .post(ready.endpoint.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        if status.is_success() {
            let bytes = response.bytes().await.map_err(transport)?;
            return parse_answer(&bytes, &ready.mask).map_err(Failure::fatal);
        }
        Err(self.status_failure(ready, response).await)
    }

    /// One attempt of a stream, up to its headers: what comes after is not retried.
    async fn attempt_stream(&self, ready: &Ready, body: Bytes) -> Result<Opened, Failure> {
        let transport = |e| ready.transport_error(e, self);
        let send = ready
            .client
            .post(ready.endpoint.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "text/event-stream")
            // The client-wide deadline would cut a long stream: lift it (tokio clamps the
            // sleep) and bound the headers here, then each read in `ChunkReader`.
            .timeout(Duration::MAX)
            .body(body)
            .send();
        let response = match tokio::time::timeout(self.request_timeout, send).await {
            Ok(sent) => sent.map_err(transport)?,
            Err(_) => return Err(ready.timeout(self.request_timeout)),
        };
        if !response.status().is_success() {
            return Err(self.status_failure(ready, response).await);
        }
        let json = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("application/json"));
        if !json {
            return Ok(Opened::Events(response));
        }
        // A server that does not stream answers with the whole completion.
        let bytes = match tokio::time::timeout(self.request_timeout, response.bytes()).await {
            Ok(read) => read.map_err(transport)?,
            Err(_) => return Err(ready.timeout(self.request_timeout)),
        };
        parse_answer(&bytes, &ready.mask)
            .map(Opened::Answer)
            .map_err(Failure::fatal)
    }

    /// The failure a non-2xx answer stands for, quoting the provider's message.
    async fn status_failure(&self, ready: &Ready, mut response: reqwest::Response) -> Failure {
        let status = response.status();
        let retry_after = retry_after(response.headers(), SystemTime::now());
        let mut bytes = Vec::new();
        // A stream request has no client-wide deadline: bound the error body here.
        let read = async {
            while bytes.len() < ERROR_BODY_LIMIT {
                match response.chunk().await {
                    Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
                    Ok(None) => break,
                    // The status is what matters; keep what arrived of the body.
                    Err(_) => break,
                }
            }
        };
        let _ = tokio::time::timeout(self.request_timeout, read).await;
        let message = quote_body(&bytes, &ready.mask)
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("").to_string());
        let error = Error::upstream_status(status.as_u16(), message).with_retry_after(retry_after);
        Failure {
            error,
            retryable: retryable_status(status),
            retry_after,
        }
    }
}

/// What a stream attempt opened.
enum Opened {
    /// A 2xx whose body is (presumably) an event stream.
    Events(reqwest::Response),
    /// A 2xx JSON completion from a server that does not stream.
    Answer(ChatResponse),
}

/// Turns an event stream's body into chunks as its bytes arrive, one read at a time.
struct ChunkReader {
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    parser: SseParser,
    /// Events of the last read not yet turned into chunks.
    events: VecDeque<SseEvent>,
    /// A parse error that comes after `events`.
    parse_error: Option<Error>,
    /// Chunks yielded so far.
    chunks: usize,
    /// `[DONE]` or an error was seen: nothing more is read.
    finished: bool,
    /// The longest pause between two reads (the client's `request_timeout`).
    idle: Duration,
    ready: Arc<Ready>,
    stats: Arc<UpstreamStats>,
}

impl ChunkReader {
    /// The next chunk; `None` after `[DONE]`; one final `Err` when the stream fails.
    async fn next(&mut self) -> Option<Result<ChatChunk>> {
        loop {
            if self.finished {
                return None;
            }
            if let Some(event) = self.events.pop_front() {
                return match parse_chunk(&event.data) {
                    Ok(Some(chunk)) => {
                        self.chunks += 1;
                        Some(Ok(chunk))
                    }
                    Ok(None) => {
                        self.finish();
                        // What follows `[DONE]` is the end of the body: read it in the
                        // background so the connection goes back to the pool, not closed.
                        let body = std::mem::replace(
                            &mut self.body,
                            futures_util::stream::empty().boxed(),
                        );
                        tokio::spawn(drain(body, self.idle));
                        None
                    }
                    Err(e) => {
                        let e = self.chunk_error(&event.data, e);
                        Some(Err(self.fail(e)))
                    }
                };
            }
            if let Some(e) = self.parse_error.take() {
                return Some(Err(self.fail(e)));
            }
            let read = match tokio::time::timeout(self.idle, self.body.next()).await {
                Ok(read) => read,
                Err(_) => {
                    let why = format!(
                        "the stream stalled after {} chunks: no data within request_timeout {:?}",
                        self.chunks, self.idle
                    );
                    return Some(Err(self.fail(self.error(ErrorKind::Timeout, why))));
                }
            };
            match read {
                Some(Ok(bytes)) => {
                    let mut events = Vec::new();
                    if let Err(e) = self.parser.push_into(&bytes, &mut events) {
                        self.parse_error = Some(e);
                    }
                    self.events.extend(events);
                }
                Some(Err(e)) => {
                    let why = format!(
                        "the stream was cut off after {} chunks: {}",
                        self.chunks,
                        error_chain(&e.without_url())
                    );
                    return Some(Err(self.fail(self.error(ErrorKind::Connect, why))));
                }
                None => {
                    let why = format!(
                        "the stream was cut off after {} chunks: the body ended before [DONE]",
                        self.chunks
                    );
                    return Some(Err(self.fail(self.error(ErrorKind::Upstream, why))));
                }
            }
        }
    }

    fn error(&self, kind: ErrorKind, why: String) -> Error {
        Error::new(kind, format!("POST {}: {why}", self.ready.shown))
    }

    /// `parse_chunk` quotes only the start of a bad event, which may cut a credential that
    /// the mask then cannot recognise: parse the masked event again for the message.
    fn chunk_error(&self, data: &str, e: Error) -> Error {
        let mask = &self.ready.mask;
        if !mask.reveals(data) {
            return e;
        }
        match parse_chunk(&mask.apply(data)) {
            Err(masked) => masked,
            // Masking made it a chunk: quote nothing.
            Ok(_) => Error::new(
                e.kind(),
                format!(
                    "stream event is not a chat.completion.chunk (not quoted: it shows {MASKED})"
                ),
            ),
        }
    }

    /// End the stream with `e`, counted and masked.
    fn fail(&mut self, e: Error) -> Error {
        self.finish();
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        self.stats.exported.error.increment(1);
        self.ready.mask_error(e)
    }

    /// Stop reading, and let the connection go now rather than when the stream is dropped.
    fn finish(&mut self) {
        self.finished = true;
        self.events.clear();
        self.parse_error = None;
        self.body = futures_util::stream::empty().boxed();
    }
}

/// Read what is left of a finished stream's body, a little and not for long.
async fn drain(mut body: BoxStream<'static, reqwest::Result<Bytes>>, idle: Duration) {
    let mut left = ERROR_BODY_LIMIT;
    while let Ok(Some(Ok(bytes))) = tokio::time::timeout(idle, body.next()).await {
        left = match left.checked_sub(bytes.len()) {
            Some(left) => left,
            None => return,
        };
    }
}

impl Ready {
    fn transport_error(&self, e: reqwest::Error, client: &OpenAiCompatible) -> Failure {
        // reqwest errors print the URL, whose query may hold a secret: drop it.
        let e = e.without_url();
        let (kind, what) = if e.is_timeout() && e.is_connect() {
            (
                ErrorKind::Timeout,
                format!(
                    "no connection within connect_timeout {:?}",
                    client.connect_timeout
                ),
            )
        } else if e.is_timeout() {
            (
                ErrorKind::Timeout,
                format!(
                    "no answer within request_timeout {:?}",
                    client.request_timeout
                ),
            )
        } else {
            (ErrorKind::Connect, error_chain(&e))
        };
        let message = self.scrub(&format!("POST {}: {what}", self.shown));
        let error = Error::new(kind, message);
        // The cause prints the same text, unmasked: keep it only when it shows no secret.
        let error = if self.mask.reveals(&error_chain(&e)) {
            error
        } else {
            error.with_source(e)
        };
        Failure {
            error,
            retryable: true,
            retry_after: None,
        }
    }

    /// An attempt that got no answer within `request_timeout`.
    fn timeout(&self, request_timeout: Duration) -> Failure {
        let what = format!("no answer within request_timeout {request_timeout:?}");
        Failure {
            error: Error::new(
                ErrorKind::Timeout,
                self.scrub(&format!("POST {}: {what}", self.shown)),
            ),
            retryable: true,
            retry_after: None,
        }
    }

    fn scrub(&self, text: &str) -> String {
        self.mask.apply(text).into_owned()
    }

    /// `e`, or the same error with its message masked when it shows a credential.
    fn mask_error(&self, e: Error) -> Error {
        if self.mask.reveals(e.message()) {
            Error::new(e.kind(), self.scrub(e.message()))
        } else {
            e
        }
    }
}

/// One failed attempt, and whether another may follow.
struct Failure {
    error: Error,
    retryable: bool,
    retry_after: Option<Duration>,
}

impl Failure {
    fn fatal(error: Error) -> Self {
        Failure {
            error,
            retryable: false,
            retry_after: None,
        }
    }
}

impl Upstream for OpenAiCompatible {
    fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse>> {
        Box::pin(self.send(request))
    }

    fn chat_stream<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<ChunkStream>> {
        Box::pin(self.open_stream(request))
    }

    fn validate(&self) -> Result<()> {
        OpenAiCompatible::validate(self)
    }
}

impl fmt::Debug for OpenAiCompatible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("OpenAiCompatible");
        d.field("base_url", &shown_base(&self.base_url));
        match self.api_key {
            Some(_) => d.field("api_key", &"***"),
            None => d.field("api_key", &None::<()>),
        };
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        d.field("headers", &names)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("retry", &self.retry)
            .field("stats", &self.stats)
            .finish()
    }
}

/// `{base}/chat/completions`, checked.
fn endpoint(base: &str) -> Result<Url> {
    let mut url = Url::parse(base.trim())
        .map_err(|e| Error::config("base_url", format!("{e}: {}", shown_base(base))))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(Error::config(
            "base_url",
            format!("must be an http(s) URL with a host: {}", shown_base(base)),
        ));
    }
    url.set_fragment(None);
    if !url
        .path()
        .trim_end_matches('/')
        .ends_with("/chat/completions")
    {
        url.path_segments_mut()
            .map_err(|()| Error::config("base_url", "cannot take a path"))?
            .pop_if_empty()
            .extend(["chat", "completions"]);
    }
    Ok(url)
}

/// A URL fit for messages: no credentials, no query.
fn shown_url(url: &Url) -> String {
    let mut shown = format!("{}://{}", url.scheme(), url.host_str().unwrap_or(""));
    if let Some(port) = url.port() {
        shown.push_str(&format!(":{port}"));
    }
    shown.push_str(url.path());
    shown
}

/// A base URL as configured, fit for messages even when it does not parse.
fn shown_base(base: &str) -> String {
    let redacted = redact_url(base);
    match redacted.find(['?', '#']) {
        Some(i) => format!("{}?***", &redacted[..i]),
        None => redacted,
    }
}

/// The request as sent: without `stream`/`stream_options` (streaming is not used here).
fn without_stream(request: &ChatRequest) -> Cow<'_, ChatRequest> {
    if request.stream.is_none() && request.stream_options.is_none() {
        Cow::Borrowed(request)
    } else {
        let mut owned = request.clone();
        owned.stream = None;
        owned.stream_options = None;
        Cow::Owned(owned)
    }
}

/// The request as `chat_stream` sends it: `stream: true`, and the caller's
/// `stream_options` with `include_usage: true` (the cache accounts for every answer).
fn with_stream(request: &ChatRequest) -> ChatRequest {
    let mut owned = request.clone();
    owned.stream = Some(true);
    let mut options = match owned.stream_options.take() {
        Some(Value::Object(options)) => options,
        _ => Map::new(),
    };
    options.insert("include_usage".into(), Value::Bool(true));
    owned.stream_options = Some(Value::Object(options));
    owned
}

fn serialise(request: &ChatRequest) -> Result<Bytes> {
    serde_json::to_vec(request)
        .map(Bytes::from)
        .map_err(|e| Error::new(ErrorKind::InvalidRequest, format!("cannot serialise: {e}")))
}

fn retryable_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 429 | 500 | 502 | 503 | 504)
}

/// The delay the upstream asked for: `retry-after-ms`, else `Retry-After` as
/// delta-seconds or an HTTP date (a date in the past means "now").
fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name: &str| headers.get(name)?.to_str().ok().map(str::trim);
    if let Some(d) = text("retry-after-ms")
        .and_then(|v| v.parse::<f64>().ok())
        .and_then(|ms| Duration::try_from_secs_f64(ms / 1000.0).ok())
    {
        return Some(d);
    }
    let value = text(header::RETRY_AFTER.as_str())?;
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    if let Some(d) = value
        .parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
    {
        return Some(d);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// A 2xx body as a chat completion, or an Upstream error quoting the body, masked.
fn parse_answer(bytes: &[u8], mask: &Mask) -> Result<ChatResponse> {
    match serde_json::from_slice::<ChatResponse>(bytes) {
        Ok(response) if !response.choices.is_empty() => Ok(response),
        Ok(_) => Err(Error::new(
            ErrorKind::Upstream,
            match provider_message(bytes, mask) {
                Some(message) => format!("answered 2xx with an error: {message}"),
                None => format!(
                    "answer has no choices; body starts: {}",
                    quote(bytes, mask, SNIPPET_BYTES)
                ),
            },
        )),
        // serde's message may quote a string of the body.
        Err(e) => Err(Error::new(
            ErrorKind::Upstream,
            format!(
                "answer is not a chat completion ({}); body starts: {}",
                mask.apply(&e.to_string()),
                quote(bytes, mask, SNIPPET_BYTES)
            ),
        )),
    }
}

/// What an error quotes of an error body: the provider's message, else the start of the
/// body; `None` for an empty body.
fn quote_body(bytes: &[u8], mask: &Mask) -> Option<String> {
    provider_message(bytes, mask)
        .or_else(|| (!bytes.is_empty()).then(|| quote(bytes, mask, SNIPPET_BYTES)))
}

/// `error.message` of an OpenAI error body (also `error` as a string, or a top-level
/// `message`), masked and shortened.
fn provider_message(bytes: &[u8], mask: &Mask) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    let message = match value.get("error") {
        Some(serde_json::Value::String(s)) => s.as_str(),
        Some(error) => error.get("message")?.as_str()?,
        None => value.get("message")?.as_str()?,
    };
    Some(quote(message.as_bytes(), mask, MESSAGE_BYTES))
}

/// Upstream text fit for an error: masked, then shortened to `limit` bytes. Masking first
/// matters: a credential cut by the limit would no longer be recognised.
fn quote(bytes: &[u8], mask: &Mask, limit: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    snippet(mask.apply(&text).as_bytes(), limit)
}

/// The first `limit` bytes of `bytes` as one line of text, `…` when cut.
fn snippet(bytes: &[u8], limit: usize) -> String {
    let cut = bytes.len() > limit;
    let head = &bytes[..bytes.len().min(limit)];
    let mut text: String = String::from_utf8_lossy(head)
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if cut {
        // A multi-byte character split by the cut decodes as U+FFFD: drop it.
        while text.ends_with('\u{FFFD}') {
            text.pop();
        }
        text.push('…');
    }
    text.trim().to_string()
}

/// An error and its causes, one line (hyper repeats itself; skip repeats).
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

/// The series of an upstream client (the built-in `OpenAiCompatible`).
pub(crate) struct UpstreamExported {
    pub ok: Counter,
    pub error: Counter,
    pub retried: Counter,
}

impl UpstreamExported {
    pub(crate) fn register() -> Self {
        super::describe_series();
        let outcome = |o: &'static str| metrics::counter!(super::UPSTREAM_REQUESTS, "outcome" => o);
        UpstreamExported {
            ok: outcome("ok"),
            error: outcome("error"),
            retried: outcome("retried"),
        }
    }
}

impl fmt::Debug for UpstreamExported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamExported").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-unit-SECRET-0123456789";

    #[test]
    fn backoff_is_full_jitter_within_the_exponential_bound() {
        let p = RetryPolicy::default()
            .base_delay(Duration::from_millis(100))
            .max_delay(Duration::from_millis(350));
        for _ in 0..200 {
            assert!(p.backoff(0) <= Duration::from_millis(100));
            assert!(p.backoff(1) <= Duration::from_millis(200));
            assert!(p.backoff(2) <= Duration::from_millis(350));
            assert!(p.backoff(40) <= Duration::from_millis(350));
        }
        // Full jitter: the delays spread over the whole range, not just near the top.
        let low = (0..200)
            .filter(|_| p.backoff(2) < Duration::from_millis(100))
            .count();
        assert!(low > 0, "full jitter should sometimes pick short delays");
        assert_eq!(
            RetryPolicy::default().base_delay(Duration::ZERO).backoff(3),
            Duration::ZERO
        );
    }

    #[test]
    fn retry_after_reads_seconds_dates_and_milliseconds() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let headers = |pairs: &[(&'static str, String)]| {
            let mut h = HeaderMap::new();
            for (n, v) in pairs {
                h.insert(*n, HeaderValue::from_str(v).unwrap());
            }
            h
        };
        let secs = |v: &str| retry_after(&headers(&[("retry-after", v.to_string())]), now);
        assert_eq!(secs("1"), Some(Duration::from_secs(1)));
        assert_eq!(secs(" 120 "), Some(Duration::from_secs(120)));
        assert_eq!(secs("1.5"), Some(Duration::from_millis(1500)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(secs(&later), Some(Duration::from_secs(7)));
        let earlier = httpdate::fmt_http_date(now - Duration::from_secs(7));
        assert_eq!(secs(&earlier), Some(Duration::ZERO));
        assert_eq!(secs("soon"), None);
        assert_eq!(secs("-3"), None);
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
        let ms = headers(&[
            ("retry-after-ms", "250".to_string()),
            ("retry-after", "9".to_string()),
        ]);
        assert_eq!(retry_after(&ms, now), Some(Duration::from_millis(250)));
    }

    #[test]
    fn provider_messages_and_snippets() {
        let openai = br#"{"error":{"message":"bad `temperature`","type":"invalid_request_error"}}"#;
        assert_eq!(
            provider_message(openai, &Mask::default()).as_deref(),
            Some("bad `temperature`")
        );
        assert_eq!(
            provider_message(br#"{"error":"overloaded"}"#, &Mask::default()).as_deref(),
            Some("overloaded")
        );
        assert_eq!(
            provider_message(br#"{"message":"nope"}"#, &Mask::default()).as_deref(),
            Some("nope")
        );
        assert_eq!(
            provider_message(b"<html>502</html>", &Mask::default()),
            None
        );
        assert_eq!(
            provider_message(br#"{"error":{"code":1}}"#, &Mask::default()),
            None
        );

        assert_eq!(snippet(b"short\nbody", 200), "short body");
        let long = "é".repeat(150); // 300 bytes
        let s = snippet(long.as_bytes(), 201);
        assert!(s.ends_with('…') && !s.contains('\u{FFFD}'), "{s}");
        assert_eq!(s.chars().count(), 101);
    }

    #[test]
    fn two_xx_bodies_must_be_chat_completions() {
        let ok = br#"{"choices":[{"index":0,"message":{"role":"assistant","content":"hi"}}]}"#;
        assert_eq!(
            parse_answer(ok, &Mask::default())
                .unwrap()
                .text()
                .as_deref(),
            Some("hi")
        );
        let e = parse_answer(b"<html>gateway</html>", &Mask::default()).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Upstream);
        assert!(e.message().contains("<html>gateway</html>"), "{e}");
        let e = parse_answer(br#"{"error":{"message":"quota"}}"#, &Mask::default()).unwrap_err();
        assert!(e.message().contains("quota"), "{e}");
        let e = parse_answer(b"{}", &Mask::default()).unwrap_err();
        assert!(e.message().contains("no choices"), "{e}");
        assert!(parse_answer(b"", &Mask::default()).is_err());
        assert!(parse_answer(&[0xff, 0xfe, 0x00], &Mask::default()).is_err());
    }

    #[test]
    fn endpoints_append_chat_completions_and_keep_the_query() {
        let e = |b: &str| endpoint(b).unwrap().to_string();
        assert_eq!(
            e("https://api.openai.com/v1"),
            "https://api.openai.com/v1/chat/completions"
        );
        assert_eq!(
            e("https://api.openai.com/v1/"),
            "https://api.openai.com/v1/chat/completions"
        );
        assert_eq!(e("http://h:8080"), "http://h:8080/chat/completions");
        assert_eq!(
            e("https://h/v1/chat/completions"),
            "https://h/v1/chat/completions"
        );
        assert_eq!(
            e("https://x.azure.com/openai/deployments/d?api-version=1"),
            "https://x.azure.com/openai/deployments/d/chat/completions?api-version=1"
        );
        let url = endpoint("https://u:pw@h/v1?key=zzz").unwrap();
        assert_eq!(shown_url(&url), "https://h/v1/chat/completions");
    }

    #[test]
    fn bad_knobs_are_config_errors_naming_the_knob() {
        let check = |c: OpenAiCompatible, knob: &str| {
            let e = c.validate().unwrap_err();
            assert!(e.is_config(), "{e}");
            assert!(e.message().contains(&format!("`{knob}`")), "{e}");
            assert!(!format!("{e} {e:?}").contains(KEY), "{e:?}");
        };
        check(OpenAiCompatible::new("not a url"), "base_url");
        check(OpenAiCompatible::new("ftp://h/v1"), "base_url");
        check(OpenAiCompatible::new("unix:/tmp/sock"), "base_url");
        check(
            OpenAiCompatible::new("http://h").header("bad name", "v"),
            "header",
        );
        check(
            OpenAiCompatible::new("http://h").header("x-api-key", format!("{KEY}\n")),
            "header",
        );
        check(
            OpenAiCompatible::new("http://h").api_key(format!("{KEY}\r\nX: y")),
            "api_key",
        );
        check(
            OpenAiCompatible::new("http://h").request_timeout(Duration::ZERO),
            "request_timeout",
        );
        check(
            OpenAiCompatible::new("http://h").connect_timeout(Duration::ZERO),
            "connect_timeout",
        );
        check(
            OpenAiCompatible::new("http://h").retry(RetryPolicy::default().max_attempts(0)),
            "retry.max_attempts",
        );
        let secret_in_url = OpenAiCompatible::new(format!("ftp://u:{KEY}@h/?key={KEY}"));
        check(secret_in_url, "base_url");
        OpenAiCompatible::new("http://127.0.0.1:1/v1")
            .api_key(KEY)
            .header("OpenAI-Organization", "org")
            .validate()
            .unwrap();
        // A key read from a file keeps its newline; it is trimmed, not rejected.
        OpenAiCompatible::new("http://h")
            .api_key(format!("{KEY}\n"))
            .validate()
            .unwrap();
    }

    #[test]
    fn debug_hides_the_key_and_header_values() {
        let c = OpenAiCompatible::new("https://api.example.com/v1")
            .api_key(KEY)
            .header("x-api-key", "hdr-SECRET-value");
        let shown = format!("{c:?}");
        assert!(shown.contains(r#"api_key: "***""#), "{shown}");
        assert!(shown.contains("x-api-key"), "{shown}");
        assert!(
            !shown.contains(KEY) && !shown.contains("hdr-SECRET-value"),
            "{shown}"
        );
        let plain = format!("{:?}", OpenAiCompatible::new("http://h"));
        assert!(plain.contains("api_key: None"), "{plain}");
    }

    #[test]
    fn scrub_masks_secrets_in_messages() {
        let c = OpenAiCompatible::new("http://h").api_key(KEY);
        let ready = c.ready().unwrap();
        assert_eq!(
            ready.scrub(&format!("Incorrect API key provided: {KEY}.")),
            "Incorrect API key provided: ***."
        );
        let short = OpenAiCompatible::new("http://h").api_key("x");
        assert_eq!(
            short.ready().unwrap().scrub("max tokens exceeded"),
            "max tokens exceeded"
        );
    }

    #[test]
    fn every_header_is_sensitive_and_every_credential_masked() {
        let c = OpenAiCompatible::new("http://h")
            .api_key(KEY)
            .header("Proxy-Authorization", "Bearer proxy-SECRET-0123")
            .header("OpenAI-Project", "proj_SECRET_0123")
            .header("x-request-id", "not-a-secret-0123")
            .credential_header("X-Tenant-Pass", "tenant-SECRET-0123");
        let (headers, mask) = c.default_headers().unwrap();
        for (name, value) in &headers {
            assert!(
                value.is_sensitive() || name == header::ACCEPT,
                "{name} is not sensitive"
            );
        }
        assert_eq!(headers["x-tenant-pass"], "tenant-SECRET-0123");
        let text = format!(
            "{KEY} proxy-SECRET-0123 proj_SECRET_0123 tenant-SECRET-0123 not-a-secret-0123"
        );
        assert_eq!(mask.apply(&text), "*** *** *** *** not-a-secret-0123");
    }

    #[test]
    fn streams_ask_for_usage_and_keep_the_other_stream_options() {
        let sent = |r: &ChatRequest| serde_json::to_value(with_stream(r)).unwrap();
        let mut r = ChatRequest::new("m");
        let body = sent(&r);
        assert_eq!(body["stream"], serde_json::json!(true));
        assert_eq!(
            body["stream_options"],
            serde_json::json!({"include_usage": true})
        );
        r.stream_options = Some(serde_json::json!({"include_usage": false, "x_vendor": 1}));
        assert_eq!(
            sent(&r)["stream_options"],
            serde_json::json!({"include_usage": true, "x_vendor": 1})
        );
        r.stream_options = Some(serde_json::json!("not an object"));
        assert_eq!(
            sent(&r)["stream_options"],
            serde_json::json!({"include_usage": true})
        );
    }

    #[test]
    fn stream_fields_are_not_sent() {
        let mut r = ChatRequest::new("m");
        assert!(matches!(without_stream(&r), Cow::Borrowed(_)));
        r.stream = Some(true);
        r.stream_options = Some(serde_json::json!({"include_usage": true}));
        let sent = serde_json::to_value(&*without_stream(&r)).unwrap();
        assert!(sent.get("stream").is_none() && sent.get("stream_options").is_none());
    }
}
