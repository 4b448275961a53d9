//! The provider the front calls when it has an `upstream_url`: an `OpenAiCompatible`
//! client holding the provider key, or one per request carrying the caller's own
//! credential headers (pass-through); the key scope of each; and `GET /v1/models` passed
//! through. It must never send a caller key upstream in held mode, nor show the provider
//! key to a caller.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use reqwest::Url;

use super::Front;
use super::errors::ApiError;
use crate::error::{Error, Result, redact_url};
use crate::integrations::headers;
use crate::request::{ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse};
use crate::upstream::{
    BoxFuture, CREDENTIAL_HEADERS, ChunkStream, OpenAiCompatible, RetryPolicy, Upstream,
};
use llm_cache_core::bodies::BodyEndpoint;
use llm_cache_core::chat::Route;

/// Bodies of `/v1/models` answers stop here.
const MODELS_BODY_LIMIT: usize = 4 << 20;

pub(super) struct Provider {
    base_url: Arc<str>,
    client: reqwest::Client,
    retry: RetryPolicy,
    request_timeout: Duration,
    /// `{base}/chat/completions` and `{base}/embeddings`, by [`Endpoint`]: their scheme,
    /// host, port, path and query go in every key of their endpoint.
    endpoint_urls: [Url; 2],
    models_url: Url,
    /// `{base}/responses` and `{base}/completions` (the answers stored whole).
    body_urls: [Url; 2],
    /// The client with the held key (or none), and its scopes; unused in pass-through mode.
    held: Arc<OpenAiCompatible>,
    held_scopes: [Arc<[u8]>; 2],
    held_headers: HeaderMap,
    held_key: Option<String>,
    /// Which caller headers are credentials (pass-through mode).
    credential_scope: headers::CredentialScope,
}

/// The endpoints whose answers the front caches; each has a key space of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Endpoint {
    Chat,
    Embeddings,
}

impl Endpoint {
    /// Every endpoint, in the order of the enum (which indexes `endpoint_urls`).
    const ALL: [Endpoint; 2] = [Endpoint::Chat, Endpoint::Embeddings];

    fn shape(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Embeddings => "embeddings",
        }
    }
}

impl Provider {
    pub(super) fn new(
        base_url: &str,
        key: Option<&str>,
        client: Option<reqwest::Client>,
        retry: RetryPolicy,
        request_timeout: Duration,
        credential_scope: headers::CredentialScope,
    ) -> Result<Self> {
        let base = Url::parse(base_url.trim())
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some())
            .ok_or_else(|| {
                Error::config(
                    "upstream_url",
                    format!("not an http(s) URL with a host: {}", redact_url(base_url)),
                )
            })?;
        let client = match client {
            Some(c) => c,
            None => reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("llm-cache-proxy/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| Error::config("http_client", e))?,
        };
        let key = key.map(str::trim).filter(|k| !k.is_empty());
        let mut upstream = OpenAiCompatible::new(base_url)
            .http_client(client.clone())
            .retry(retry)
            .request_timeout(request_timeout);
        let mut held_headers = HeaderMap::new();
        if let Some(key) = key {
            upstream = upstream.api_key(key);
            let mut value = HeaderValue::from_str(&format!("Bearer {key}")).map_err(|_| {
                Error::config("upstream_key", "has characters not allowed in a header")
            })?;
            value.set_sensitive(true);
            held_headers.insert(header::AUTHORIZATION, value);
        }
        upstream.validate()?;
        let endpoint_urls = [
            joined(&base, "chat/completions")?,
            joined(&base, "embeddings")?,
        ];
        let models_url = joined(&base, "models")?;
        let body_urls = [joined(&base, "responses")?, joined(&base, "completions")?];
        let held_scopes = Endpoint::ALL.map(|e| {
            let url = &endpoint_urls[e as usize];
            headers::scope(url, &held_headers, e.shape(), &credential_scope).into()
        });
        Ok(Provider {
            base_url: base_url.into(),
            client,
            retry,
            request_timeout,
            endpoint_urls,
            models_url,
            body_urls,
            held: Arc::new(upstream),
            held_scopes,
            held_headers,
            held_key: key.map(str::to_string),
            credential_scope,
        })
    }

    /// Where a request's miss goes and the scope of its key: the held client, or (pass
    /// through) a client carrying the caller's credential headers, scoped by their digest.
    pub(super) fn route(
        &self,
        endpoint: Endpoint,
        pass_through: bool,
        request: &HeaderMap,
    ) -> std::result::Result<Route, ApiError> {
        if !pass_through {
            let held: Arc<dyn Upstream> = self.held.clone();
            let scope = Arc::clone(&self.held_scopes[endpoint as usize]);
            // The held client embeds too: a semantic lookup needs no second upstream.
            return Ok(Route::via(Arc::clone(&held)).scope(scope).embedder(held));
        }
        let credentials = credentials(request, &self.credential_scope)?;
        let url = &self.endpoint_urls[endpoint as usize];
        let scope = headers::scope(url, &credentials, endpoint.shape(), &self.credential_scope);
        let upstream: Arc<dyn Upstream> = Arc::new(self.pass_through(&credentials));
        // With the caller's own credentials, like the chat call.
        Ok(Route::via(Arc::clone(&upstream))
            .scope(scope)
            .embedder(upstream))
    }

    /// An upstream carrying the caller's `credentials` (pass-through mode).
    fn pass_through(&self, credentials: &HeaderMap) -> PassThrough {
        let mut sent = Vec::new();
        for (name, value) in credentials {
            // `credentials` only holds values that are text.
            sent.push((
                name.to_string(),
                value.to_str().unwrap_or_default().to_string(),
            ));
        }
        PassThrough {
            base_url: Arc::clone(&self.base_url),
            client: self.client.clone(),
            retry: self.retry,
            request_timeout: self.request_timeout,
            headers: sent,
        }
    }

    /// The client a stored-body request's miss goes to (the held one, or one carrying the
    /// caller's credentials in pass-through mode) and the credentials its key is scoped by.
    pub(super) fn body_client(
        &self,
        pass_through: bool,
        request: &HeaderMap,
    ) -> std::result::Result<(Arc<OpenAiCompatible>, HeaderMap), ApiError> {
        if !pass_through {
            return Ok((Arc::clone(&self.held), self.held_headers.clone()));
        }
        let credentials = credentials(request, &self.credential_scope)?;
        let client = Arc::new(self.pass_through(&credentials).client());
        Ok((client, credentials))
    }

    /// The key scope of a stored-body request: `{base}/responses` or `{base}/completions`,
    /// the digest of `credentials`, and the answer's shape (`json` or `sse`), as the
    /// async-openai layer makes it for the same request.
    pub(super) fn body_scope(
        &self,
        endpoint: BodyEndpoint,
        credentials: &HeaderMap,
        shape: &str,
    ) -> Arc<[u8]> {
        let url = &self.body_urls[endpoint as usize];
        headers::scope(url, credentials, shape, &self.credential_scope).into()
    }
}

/// The path of a stored-body endpoint under the base URL.
pub(super) fn body_tail(endpoint: BodyEndpoint) -> &'static str {
    match endpoint {
        BodyEndpoint::Responses => "responses",
        BodyEndpoint::Completions => "completions",
    }
}

/// `base` with `tail` appended to its path (its query, such as Azure's `api-version`, kept).
fn joined(base: &Url, tail: &str) -> Result<Url> {
    let mut url = base.clone();
    url.set_fragment(None);
    if url
        .path()
        .trim_end_matches('/')
        .ends_with("/chat/completions")
    {
        // A base URL naming the endpoint itself, as `OpenAiCompatible` accepts.
        let trimmed = url
            .path()
            .trim_end_matches('/')
            .trim_end_matches("/chat/completions")
            .to_string();
        url.set_path(&trimmed);
    }
    url.path_segments_mut()
        .map_err(|()| Error::config("upstream_url", "cannot take a path"))?
        .pop_if_empty()
        .extend(tail.split('/'));
    Ok(url)
}

/// The caller's credential headers, to forward (pass-through mode): the fixed ones, and
/// every other header `scope` counts as a credential (a gateway's key header...).
fn credentials(
    request: &HeaderMap,
    scope: &headers::CredentialScope,
) -> std::result::Result<HeaderMap, ApiError> {
    let mut out = HeaderMap::new();
    for (name, value) in request {
        if !(CREDENTIAL_HEADERS.contains(&name.as_str()) || scope.is_credential(name.as_str())) {
            continue;
        }
        if value.to_str().is_err() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("the `{name}` header is not visible ASCII"),
            ));
        }
        let mut value = value.clone();
        value.set_sensitive(true);
        out.append(name.clone(), value);
    }
    if out.is_empty() {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "no credentials: this proxy forwards your provider key (`Authorization: Bearer ...`)",
        )
        .kind("invalid_request_error")
        .code("missing_api_key"));
    }
    Ok(out)
}

/// An upstream carrying one caller's credential headers; built on a miss only.
struct PassThrough {
    base_url: Arc<str>,
    client: reqwest::Client,
    retry: RetryPolicy,
    request_timeout: Duration,
    headers: Vec<(String, String)>,
}

impl PassThrough {
    fn client(&self) -> OpenAiCompatible {
        let mut c = OpenAiCompatible::new(&*self.base_url)
            .http_client(self.client.clone())
            .retry(self.retry)
            .request_timeout(self.request_timeout);
        for (name, value) in &self.headers {
            c = c.credential_header(name, value);
        }
        c
    }
}

impl Upstream for PassThrough {
    fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse>> {
        Box::pin(async move { self.client().chat(request).await })
    }

    fn chat_stream<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<ChunkStream>> {
        Box::pin(async move { self.client().chat_stream(request).await })
    }

    fn embeddings<'a>(
        &'a self,
        request: &'a EmbeddingRequest,
    ) -> BoxFuture<'a, Result<EmbeddingResponse>> {
        Box::pin(async move { self.client().embeddings(request).await })
    }
}

/// `GET /v1/models`: the upstream's own answer, with the held key or the caller's
/// credentials.
pub(super) async fn models(
    State(front): State<Arc<Front>>,
    request: HeaderMap,
) -> std::result::Result<Response, ApiError> {
    let Some(provider) = &front.provider else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "this front has no upstream URL to list models from",
        )
        .code("unknown_url"));
    };
    let headers = if front.pass_through {
        credentials(&request, &provider.credential_scope)?
    } else {
        if let Some(callers) = &front.callers {
            callers.authenticate(&request)?;
        }
        provider.held_headers.clone()
    };
    let sent = provider
        .client
        .get(provider.models_url.clone())
        .headers(headers)
        .timeout(provider.request_timeout)
        .send()
        .await;
    let mut response = sent.map_err(|e| {
        let why = if e.is_timeout() {
            "did not answer in time"
        } else {
            "could not be reached"
        };
        ApiError::new(StatusCode::BAD_GATEWAY, format!("the upstream {why}"))
            .code("upstream_unreachable")
    })?;
    let status = response.status();
    let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
    let mut body = Vec::new();
    while body.len() < MODELS_BODY_LIMIT {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(_) => {
                let why = "the upstream's answer was cut off";
                return Err(ApiError::new(StatusCode::BAD_GATEWAY, why));
            }
        }
    }
    // The provider may quote the key it was sent: never the held one to a caller.
    if let Some(key) = &provider.held_key {
        let text = String::from_utf8_lossy(&body);
        if text.contains(key.as_str()) {
            body = text.replace(key.as_str(), "***").into_bytes();
        }
    }
    let mut out = Response::new(Body::from(body));
    *out.status_mut() = status;
    if let Some(ct) = content_type {
        out.headers_mut().insert(header::CONTENT_TYPE, ct);
    }
    Ok(out)
}
