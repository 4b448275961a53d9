//! What the layer reads from one request before anything else happens: which endpoint it
//! is and whether it may be cached (the cache-control headers and the key scope are read
//! by `integrations::headers`, shared with the HTTP front). It also makes the factories
//! the inner service is given. It must never put a credential in a key
//! unhashed, nor forward a cache-control header.

use std::sync::{Arc, Mutex};

use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use llm_cache_core::bodies::{BodyEndpoint, BodyPlan, BodyRequest};
use llm_cache_core::integrations::headers::strip_controls;
use llm_cache_core::request::{ChatRequest, EmbeddingRequest};
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE};

/// The endpoints whose JSON answers the layer caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Endpoint {
    Chat,
    Embeddings,
    Responses,
    Completions,
}

impl Endpoint {
    fn of_path(path: &str) -> Option<Self> {
        // `/chat/completions` before `/completions`, which it also ends with.
        let endings = [
            ("/chat/completions", Endpoint::Chat),
            ("/embeddings", Endpoint::Embeddings),
            ("/responses", Endpoint::Responses),
            ("/completions", Endpoint::Completions),
        ];
        let path = path.trim_end_matches('/');
        endings
            .into_iter()
            .find_map(|(end, endpoint)| path.ends_with(end).then_some(endpoint))
    }
}

/// What the layer does with one request.
pub(super) enum Plan {
    /// Not cacheable: forward as it came (less the control headers).
    PassThrough,
    /// A chat completion: through [`LlmCache`](llm_cache_core::LlmCache)'s own path.
    Chat(Box<ChatRequest>),
    /// An embeddings request: through [`LlmCache`](llm_cache_core::LlmCache)'s per-input path.
    Embeddings(Box<EmbeddingRequest>),
    /// Another cacheable endpoint: its whole JSON body is the question (llm-cache-core's
    /// `bodies` rules, shared with the HTTP front).
    Body(BodyRequest),
}

/// Decide what to do with `request`.
pub(super) fn plan(request: &reqwest::Request) -> Plan {
    if request.method() != reqwest::Method::POST {
        return Plan::PassThrough;
    }
    let Some(endpoint) = Endpoint::of_path(request.url().path()) else {
        return Plan::PassThrough;
    };
    let json = request
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    // A streaming body (multipart, a file) has no bytes to look at: never cached.
    let Some(bytes) = request.body().and_then(|b| b.as_bytes()) else {
        return Plan::PassThrough;
    };
    if !json {
        return Plan::PassThrough;
    }
    if endpoint == Endpoint::Chat {
        return match ChatRequest::from_json(bytes) {
            Ok(chat) => Plan::Chat(Box::new(chat)),
            // Not a request we understand: the upstream says what is wrong with it.
            Err(_) => Plan::PassThrough,
        };
    }
    if endpoint == Endpoint::Embeddings {
        return match EmbeddingRequest::from_json(bytes) {
            Ok(embed) => Plan::Embeddings(Box::new(embed)),
            Err(_) => Plan::PassThrough,
        };
    }
    let endpoint = match endpoint {
        Endpoint::Responses => BodyEndpoint::Responses,
        _ => BodyEndpoint::Completions,
    };
    // Not JSON, not an object, or a Responses request that depends on server state.
    match BodyRequest::plan(endpoint, bytes) {
        BodyPlan::Cached(body) => Plan::Body(body),
        BodyPlan::PassThrough => Plan::PassThrough,
    }
}

/// The factory the inner service gets: the caller's own, whose every build loses the
/// control headers; its first build is `first` (the request the layer already built to
/// look at), so a large upload is not built twice, and a retry inside builds anew.
pub(super) fn forward(original: HttpRequestFactory, first: reqwest::Request) -> HttpRequestFactory {
    let first = Arc::new(Mutex::new(Some(first)));
    HttpRequestFactory::new(move || {
        let original = original.clone();
        let taken = llm_cache_core::tiered::sync::lock(&first).take();
        async move {
            if let Some(request) = taken {
                return Ok(request);
            }
            let mut request = original.build().await?;
            strip_controls(request.headers_mut());
            Ok(request)
        }
    })
}

/// The caller's chat request sent to the `embeddings` path beside its `chat/completions`
/// (the query, such as Azure's `api-version`, kept); its body is set by the caller.
pub(super) fn embeddings_beside(original: HttpRequestFactory) -> HttpRequestFactory {
    HttpRequestFactory::new(move || {
        let original = original.clone();
        async move {
            let mut request = original.build().await?;
            strip_controls(request.headers_mut());
            let url = request.url_mut();
            let path = url.path().to_owned();
            let base = path.strip_suffix("chat/completions").ok_or_else(|| {
                OpenAIError::InvalidArgument("not a chat completions path".into())
            })?;
            url.set_path(&format!("{base}embeddings"));
            Ok::<_, OpenAIError>(request)
        }
    })
}

/// The factory for a streamed chat miss: the caller's request with `body` instead of its
/// own (the same request asking for usage, which the cache needs to account and to replay
/// it to later callers who ask for it).
pub(super) fn with_body(original: HttpRequestFactory, body: bytes::Bytes) -> HttpRequestFactory {
    HttpRequestFactory::new(move || {
        let original = original.clone();
        let body = body.clone();
        async move {
            let mut request = original.build().await?;
            strip_controls(request.headers_mut());
            request.headers_mut().remove(CONTENT_LENGTH);
            *request.body_mut() = Some(body.into());
            Ok::<_, OpenAIError>(request)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_by_path() {
        assert_eq!(
            Endpoint::of_path("/v1/chat/completions"),
            Some(Endpoint::Chat)
        );
        assert_eq!(
            Endpoint::of_path("/openai/deployments/d/chat/completions"),
            Some(Endpoint::Chat)
        );
        assert_eq!(
            Endpoint::of_path("/v1/completions"),
            Some(Endpoint::Completions)
        );
        assert_eq!(
            Endpoint::of_path("/v1/embeddings"),
            Some(Endpoint::Embeddings)
        );
        assert_eq!(
            Endpoint::of_path("/v1/responses"),
            Some(Endpoint::Responses)
        );
        assert_eq!(Endpoint::of_path("/v1/responses/r_1/cancel"), None);
        assert_eq!(Endpoint::of_path("/v1/files"), None);
    }
}
