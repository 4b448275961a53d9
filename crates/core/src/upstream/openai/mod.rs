//! `OpenAiCompatible`: a reqwest (rustls) client for any OpenAI-compatible
//! `/chat/completions` endpoint, with retries, backoff and `Retry-After`. It must never put
//! the API key or another credential in an error, a log line or `Debug` output: every text
//! from the upstream goes through the one mask of `credentials.rs` before it is shortened.

mod credentials;
mod embeddings;
mod errors;
mod raw;
mod reader;
mod retry;

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::Url;
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};

use self::credentials::Mask;
pub use self::credentials::{CREDENTIAL_HEADERS, is_credential_header, is_scoped_credential};
#[doc(hidden)]
pub use self::errors::error_chain;
use self::errors::{parse_answer, provider_error, quote_body};
pub use self::raw::RawAnswer;
use self::reader::{ChunkReader, Opened};
use self::retry::{Failure, retry_after, retryable_status};
pub use self::retry::{RetryPolicy, UpstreamStats};
use super::{BoxFuture, ChunkStream, Upstream};
use crate::error::{Error, ErrorKind, Result, redact_url};
use crate::request::{ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse};
use crate::stream::{ReplayOptions, SseParser, replay};
use crate::tiered::config::positive;

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
/// The API key, every credential header and the base URL's credentials are never shown:
/// `Debug` prints `api_key: "***"`, header names without values and the base URL without
/// its password or query, and errors and log lines carry none of them. A credential in
/// the base URL (`https://user:password@host/v1`, sent as `Authorization: Basic`, or a
/// `?key=...` query) is masked when the upstream echoes it: the password as written and
/// percent-decoded, `user:password` and its base64 form, and every query value but
/// `api-version` (as written and decoded). The credential headers are
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
/// # async fn demo() -> llm_cache_core::Result<()> {
/// use std::time::Duration;
/// use llm_cache_core::{ChatMessage, ChatRequest, OpenAiCompatible, RetryPolicy, Upstream};
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
    /// The caller's own HTTP client, if any (see [`OpenAiCompatible::http_client`]).
    http_client: Option<reqwest::Client>,
    stats: Arc<UpstreamStats>,
    ready: OnceLock<Arc<Ready>>,
}

/// What the configuration turns into once checked.
struct Ready {
    client: reqwest::Client,
    /// The headers sent with each request when the client is the caller's (ours carries
    /// them as its default headers).
    per_request_headers: Option<HeaderMap>,
    endpoint: Url,
    /// `{base}/embeddings`, with the same query.
    embeddings_endpoint: Url,
    /// The endpoint without credentials or query, for messages.
    shown: String,
    /// The credentials this client sends: what every error and log line is masked with.
    mask: Mask,
}

impl Ready {
    /// A POST to `url` (one of this client's endpoints) with this client's headers.
    fn post_to(&self, url: &Url, accept: Option<HeaderValue>) -> reqwest::RequestBuilder {
        let mut headers = self.per_request_headers.clone().unwrap_or_default();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(accept) = accept {
            headers.insert(header::ACCEPT, accept);
        }
        // `headers` replaces values of the same name, where `header` would add a second.
        self.client.post(url.clone()).headers(headers)
    }
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
            http_client: None,
            stats: Arc::default(),
            ready: OnceLock::new(),
        }
    }

    crate::tiered::setters! {
        /// The API key, sent as `Authorization: Bearer <key>`.
        #[must_use]
        pub fn api_key(key: impl Into<String>) { api_key = Some(key.into()); self.reconfigured() }
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

    crate::tiered::setters! {
        /// The deadline to open a connection (default 10 s).
        #[must_use]
        pub fn connect_timeout(d: Duration) { connect_timeout = d; self.reconfigured() }

        /// The deadline of one attempt, from sending to the last byte of the answer
        /// (default 60 s). Retries get a fresh deadline each. A stream has no overall
        /// deadline, since a long answer may take minutes: this bounds the wait for its
        /// headers, then each pause between two reads of its body.
        #[must_use]
        pub fn request_timeout(d: Duration) { request_timeout = d; self.reconfigured() }

        /// The retry policy (default [`RetryPolicy::default`]).
        #[must_use]
        pub fn retry(policy: RetryPolicy) { retry = policy; self.reconfigured() }

        /// Send through `client`, the caller's own reqwest client, instead of one built here:
        /// services share its connection pool, proxy, TLS and DNS settings.
        ///
        /// ## Behavior
        ///
        /// - **Timeouts.** [`request_timeout`](OpenAiCompatible::request_timeout) is set on each
        ///   request, which overrides the client's own `timeout` (a stream lifts it, as with the
        ///   built-in client, and bounds its headers and each read instead). The client's
        ///   `connect_timeout` applies in place of ours, which is not used, though a connection
        ///   still has to open within `request_timeout`; its `read_timeout`, if set, applies in
        ///   addition and can cut a slow stream.
        /// - **Redirects.** The client's redirect policy applies. reqwest's default follows up
        ///   to 10, and drops only `Authorization`, `Cookie` and `Proxy-Authorization` when one
        ///   leaves the host: the API key is then not sent on, but `api-key` or another header
        ///   set here is. Give a client built with `redirect(Policy::none())` to keep
        ///   this client's rule (a 3xx is an upstream error).
        /// - **Headers.** The API key and every [`header`](OpenAiCompatible::header) are sent on
        ///   each request and win over a default header of the client with the same name; the
        ///   client's other default headers and its user agent are sent as they are.
        /// - **Credentials.** A credential the client carries in its default headers (say an
        ///   `Authorization` set with `default_headers`) cannot be seen from here, so it is
        ///   **not masked** when the upstream echoes it in an error. Give it with
        ///   [`api_key`](OpenAiCompatible::api_key) or
        ///   [`credential_header`](OpenAiCompatible::credential_header) instead (or as well)
        ///   to have it masked.
        ///
        /// ```no_run
        /// # fn demo() -> llm_cache_core::Result<()> {
        /// use llm_cache_core::OpenAiCompatible;
        ///
        /// let shared = reqwest::Client::builder()
        ///     .redirect(reqwest::redirect::Policy::none())
        ///     .build()
        ///     .expect("a client");
        /// let upstream = OpenAiCompatible::new("https://api.openai.com/v1")
        ///     .http_client(shared.clone())
        ///     .api_key(std::env::var("OPENAI_API_KEY").unwrap_or_default());
        /// upstream.validate()?;
        /// # Ok(()) }
        /// ```
        #[must_use]
        pub fn http_client(client: reqwest::Client) {
            http_client = Some(client); self.reconfigured()
        }
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
        let embeddings_endpoint = embeddings::endpoint(&endpoint);
        let shown = shown_url(&endpoint);
        positive("connect_timeout", self.connect_timeout)?;
        positive("request_timeout", self.request_timeout)?;
        if self.retry.max_attempts == 0 {
            return Err(Error::config("retry.max_attempts", "must be at least 1"));
        }

        let (headers, mut mask) = self.default_headers()?;
        // A key in the query or a password in the userinfo is sent with every request too.
        mask.add_url_credentials(&endpoint);
        let (client, per_request_headers) = match &self.http_client {
            Some(client) => (client.clone(), Some(headers)),
            None => {
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
                (client, None)
            }
        };
        Ok(Ready {
            client,
            per_request_headers,
            endpoint,
            embeddings_endpoint,
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

    async fn attempt(&self, ready: &Ready, body: Bytes) -> Result<ChatResponse, Failure> {
        let bytes = self.attempt_json(ready, &ready.endpoint, body).await?;
        parse_answer(&bytes, &ready.mask).map_err(Failure::fatal)
    }

    /// One attempt of a JSON call to `url` (chat, embeddings): its 2xx body, or the failure
    /// its status stands for.
    async fn attempt_json(&self, ready: &Ready, url: &Url, body: Bytes) -> Result<Bytes, Failure> {
        let transport = |e| ready.transport_error(e, self);
        let response = ready
            .post_to(url, None)
            // Set on the request too, so that it wins over a caller's client's timeout.
            .timeout(self.request_timeout)
            .body(body)
            .send()
            .await
            .map_err(transport)?;
        if !response.status().is_success() {
            return Err(self.status_failure(ready, response).await);
        }
        response.bytes().await.map_err(transport)
    }

    /// One attempt of a stream, up to its headers: what comes after is not retried. The
    /// client-wide deadline would cut a long stream: it is lifted (tokio clamps the sleep)
    /// and the headers bounded instead, then each read in `ChunkReader`.
    async fn attempt_stream(&self, ready: &Ready, body: Bytes) -> Result<Opened, Failure> {
        let transport = |e| ready.transport_error(e, self);
        let response = self.attempt_raw(ready, &ready.endpoint, body, true).await?;
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
    /// The answer `send` gets, its headers within `request_timeout`; a non-2xx status is
    /// the upstream's error.
    async fn headers_in_time(
        &self,
        ready: &Ready,
        send: impl Future<Output = reqwest::Result<reqwest::Response>>,
    ) -> Result<reqwest::Response, Failure> {
        let response = match tokio::time::timeout(self.request_timeout, send).await {
            Ok(sent) => sent.map_err(|e| ready.transport_error(e, self))?,
            Err(_) => return Err(ready.timeout(self.request_timeout)),
        };
        if !response.status().is_success() {
            return Err(self.status_failure(ready, response).await);
        }
        Ok(response)
    }

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
        let mut error = Error::upstream_status(status.as_u16(), message);
        if let Some(provider) = provider_error(&bytes, &ready.mask) {
            error = error.with_source(provider);
        }
        if let Some(after) = retry_after {
            error = error.with_retry_after(after);
        }
        Failure {
            error,
            retryable: retryable_status(status),
            retry_after,
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

    fn embeddings<'a>(
        &'a self,
        request: &'a EmbeddingRequest,
    ) -> BoxFuture<'a, Result<EmbeddingResponse>> {
        Box::pin(self.send_embeddings(request))
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
            .field(
                "http_client",
                &self.http_client.as_ref().map(|_| "caller's"),
            )
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
    let options = owned.stream_options.take().unwrap_or_default();
    owned.stream_options = Some(crate::stream::usage::with_usage(options));
    owned
}

fn serialise(request: &impl serde::Serialize) -> Result<Bytes> {
    serde_json::to_vec(request)
        .map(Bytes::from)
        .map_err(|e| Error::new(ErrorKind::InvalidRequest, format!("cannot serialise: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-unit-SECRET-0123456789";

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
