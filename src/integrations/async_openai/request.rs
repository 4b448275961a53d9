//! What the layer reads from one request before anything else happens: the cache-control
//! headers (taken off the request), which endpoint it is and whether it may be cached, and
//! the key scope (upstream host, path, query, credential digest). It also makes the
//! factories the inner service is given. It must never put a credential in a key
//! unhashed, nor forward a cache-control header.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_openai::error::OpenAIError;
use async_openai::middleware::HttpRequestFactory;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::chat::CacheControl;
use crate::chat::key::put_framed;
use crate::request::{ChatRequest, EmbeddingRequest};
use crate::upstream::CREDENTIAL_HEADERS;

use super::{HEADER_CONTROL, HEADER_NAMESPACE, HEADER_TTL};

/// The request headers that steer the cache; removed before the request goes upstream.
const CONTROL_HEADERS: [&str; 3] = [HEADER_NAMESPACE, HEADER_TTL, HEADER_CONTROL];

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
        let path = path.trim_end_matches('/');
        if path.ends_with("/chat/completions") {
            Some(Endpoint::Chat)
        } else if path.ends_with("/embeddings") {
            Some(Endpoint::Embeddings)
        } else if path.ends_with("/responses") {
            Some(Endpoint::Responses)
        } else if path.ends_with("/completions") {
            Some(Endpoint::Completions)
        } else {
            None
        }
    }
}

/// What the layer does with one request.
pub(super) enum Plan {
    /// Not cacheable: forward as it came (less the control headers).
    PassThrough,
    /// A chat completion: through [`LlmCache`](crate::LlmCache)'s own path.
    Chat(Box<ChatRequest>),
    /// An embeddings request: through [`LlmCache`](crate::LlmCache)'s per-input path.
    Embeddings(Box<EmbeddingRequest>),
    /// Another cacheable endpoint: its whole JSON body is the question.
    Body {
        endpoint: Endpoint,
        body: Value,
        stream: bool,
    },
}

/// Take the cache-control headers off `headers` and read them.
///
/// # Errors
///
/// A message naming the header when a value is not understood (an unknown directive, a
/// TTL that is not a positive number of seconds, a namespace that is not visible ASCII),
/// and for `semantic`, which this version does not offer.
pub(super) fn take_controls(headers: &mut HeaderMap) -> Result<CacheControl, String> {
    let mut control = CacheControl::new();
    if let Some(ns) = one_value(headers, HEADER_NAMESPACE)? {
        if ns.is_empty() || !ns.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "`{HEADER_NAMESPACE}`: give a non-empty namespace of visible ASCII"
            ));
        }
        control = control.namespace(ns);
    }
    if let Some(ttl) = one_value(headers, HEADER_TTL)? {
        match ttl.trim().parse::<u64>() {
            Ok(secs) if secs > 0 => control = control.ttl(Duration::from_secs(secs)),
            _ => {
                return Err(format!(
                    "`{HEADER_TTL}`: {ttl:?} is not a positive number of seconds"
                ));
            }
        }
    }
    for value in headers.get_all(HEADER_CONTROL) {
        let text = value
            .to_str()
            .map_err(|_| format!("`{HEADER_CONTROL}`: not visible ASCII"))?;
        for directive in text.split(',').map(str::trim).filter(|d| !d.is_empty()) {
            control = match directive.to_ascii_lowercase().as_str() {
                "no-store" => control.no_store(true),
                "refresh" => control.refresh(true),
                "bypass" => control.bypass(true),
                "semantic" => {
                    return Err(format!(
                        "`{HEADER_CONTROL}`: `semantic` is not offered by this version of \
                         llm-cache (exact matches only); remove it"
                    ));
                }
                other => {
                    return Err(format!(
                        "`{HEADER_CONTROL}`: unknown directive {other:?} (known: no-store, \
                         refresh, bypass)"
                    ));
                }
            };
        }
    }
    strip_controls(headers);
    Ok(control)
}

/// `control` with its namespace nested inside `bound` (the layer's own): the bound one
/// alone when the request names none, else both, joined by a byte no header value can
/// hold (header namespaces are visible ASCII), so no header reaches another binding.
pub(super) fn bind(control: CacheControl, bound: &str) -> CacheControl {
    let asked = control.namespace_str();
    match (bound.is_empty(), asked.is_empty()) {
        (true, _) => control,
        (false, true) => control.namespace(bound),
        (false, false) => {
            let nested = format!("{bound}\u{1f}{asked}");
            control.namespace(nested)
        }
    }
}

fn one_value(headers: &HeaderMap, name: &str) -> Result<Option<String>, String> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(format!("`{name}`: given more than once"));
    }
    let text = first
        .to_str()
        .map_err(|_| format!("`{name}`: not visible ASCII"))?;
    Ok(Some(text.trim().to_string()))
}

/// Remove the cache-control headers.
pub(super) fn strip_controls(headers: &mut HeaderMap) {
    for name in CONTROL_HEADERS {
        headers.remove(name);
    }
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
    let Ok(body) = serde_json::from_slice::<Value>(bytes) else {
        return Plan::PassThrough;
    };
    let Some(map) = body.as_object() else {
        return Plan::PassThrough;
    };
    // serde_json read it with its own depth limit (128), and the key walks it without
    // recursion: nothing here can overflow the stack.
    if endpoint == Endpoint::Responses && depends_on_server_state(map) {
        return Plan::PassThrough;
    }
    let stream = map.get("stream").and_then(Value::as_bool) == Some(true);
    Plan::Body {
        endpoint,
        body,
        stream,
    }
}

/// A Responses API request whose answer depends on state the server keeps and may change:
/// a `conversation` (its items grow), or background mode (the answer is fetched later).
/// `previous_response_id` names an immutable response, so it is simply part of the key.
fn depends_on_server_state(map: &serde_json::Map<String, Value>) -> bool {
    let set = |name: &str| map.get(name).is_some_and(|v| !v.is_null());
    set("conversation") || map.get("background").and_then(Value::as_bool) == Some(true)
}

/// What a key holds beyond the body and namespace: the upstream's scheme, host, port, path
/// and query string, the answer's shape (`json` or `sse`, for endpoints whose stored form
/// differs), and the credential scope: a SHA-256 of the credential headers (or a fixed tag
/// when credentials may share answers). Each part framed by its length.
pub(super) fn scope(
    request: &reqwest::Request,
    shape: &str,
    share_across_credentials: bool,
) -> Vec<u8> {
    let url = request.url();
    let mut out = Vec::with_capacity(256);
    put_framed(&mut out, url.scheme().as_bytes());
    put_framed(&mut out, url.host_str().unwrap_or_default().as_bytes());
    put_framed(
        &mut out,
        url.port_or_known_default()
            .unwrap_or_default()
            .to_string()
            .as_bytes(),
    );
    put_framed(&mut out, url.path().as_bytes());
    put_framed(&mut out, url.query().unwrap_or_default().as_bytes());
    put_framed(&mut out, shape.as_bytes());
    if share_across_credentials {
        put_framed(&mut out, b"credentials:shared");
    } else {
        put_framed(&mut out, &credential_digest(request.headers()));
    }
    out
}

/// SHA-256 over every credential header present (name and value, framed, in a fixed order
/// of names and in the order of their values). The raw values never leave this function.
fn credential_digest(headers: &HeaderMap) -> [u8; 32] {
    let mut framed = Vec::new();
    put_framed(&mut framed, b"llm-cache/credential-scope");
    for name in CREDENTIAL_HEADERS {
        for value in headers.get_all(name) {
            put_framed(&mut framed, name.as_bytes());
            put_framed(&mut framed, value.as_bytes());
        }
    }
    Sha256::digest(&framed).into()
}

/// The factory the inner service gets: the caller's own, whose every build loses the
/// control headers; its first build is `first` (the request the layer already built to
/// look at), so a large upload is not built twice, and a retry inside builds anew.
pub(super) fn forward(original: HttpRequestFactory, first: reqwest::Request) -> HttpRequestFactory {
    let first = Arc::new(Mutex::new(Some(first)));
    HttpRequestFactory::new(move || {
        let original = original.clone();
        let taken = first.lock().unwrap_or_else(PoisonError::into_inner).take();
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

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                reqwest::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn controls_are_read_and_stripped() {
        let mut h = headers(&[
            (HEADER_NAMESPACE, "tenant-1"),
            (HEADER_TTL, "60"),
            (HEADER_CONTROL, "no-store, Refresh"),
            ("authorization", "Bearer k"),
        ]);
        let c = take_controls(&mut h).unwrap();
        assert_eq!(
            c,
            CacheControl::new()
                .namespace("tenant-1")
                .ttl(Duration::from_secs(60))
                .no_store(true)
                .refresh(true)
        );
        assert_eq!(h.len(), 1);
        for bad in [
            (HEADER_TTL, "0"),
            (HEADER_TTL, "soon"),
            (HEADER_CONTROL, "semantic"),
            (HEADER_CONTROL, "cache-everything"),
            (HEADER_NAMESPACE, "a b"),
        ] {
            let e = take_controls(&mut headers(&[bad])).unwrap_err();
            assert!(e.contains(bad.0), "{e}");
        }
    }

    #[test]
    fn header_namespaces_nest_inside_the_bound_one() {
        let asked = |ns: &str| CacheControl::new().namespace(ns);
        assert_eq!(bind(asked("t"), "").namespace_str(), "t");
        assert_eq!(bind(CacheControl::new(), "svc").namespace_str(), "svc");
        let nested = bind(asked("t"), "svc");
        assert_ne!(nested.namespace_str(), "t");
        assert_ne!(nested.namespace_str(), "svc");
        assert_ne!(
            nested.namespace_str(),
            bind(asked("t"), "svc2").namespace_str()
        );
    }

    #[test]
    fn credentials_are_digested_not_kept() {
        let a = credential_digest(&headers(&[("authorization", "Bearer sk-one")]));
        let b = credential_digest(&headers(&[("authorization", "Bearer sk-two")]));
        let org = credential_digest(&headers(&[
            ("authorization", "Bearer sk-one"),
            ("openai-organization", "org-2"),
        ]));
        assert_ne!(a, b);
        assert_ne!(a, org);
        assert_eq!(
            a,
            credential_digest(&headers(&[
                ("authorization", "Bearer sk-one"),
                ("x-other", "1")
            ]))
        );
    }

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
