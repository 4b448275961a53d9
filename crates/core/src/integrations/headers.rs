//! The HTTP conventions shared by the async-openai layer and the HTTP front (DESIGN.md,
//! "Conventions shared by the HTTP-level parts"): the request headers that steer the cache
//! and how they are read, the response headers, how a header namespace nests inside a
//! bound one, and the key scope of an upstream URL and its credentials. It must never put a
//! credential in a key unhashed, nor let a control header reach the upstream.

use std::time::Duration;

use http::HeaderMap;
use sha2::{Digest as _, Sha256};

use crate::chat::CacheControl;
use crate::chat::key::put_framed;
use crate::tiered::CacheStatus;
use crate::upstream::CREDENTIAL_HEADERS;

/// Request header: the namespace (tenant) of this request.
pub const HEADER_NAMESPACE: &str = "x-llm-cache-namespace";
/// Request header: how long to keep this request's answer, in seconds.
pub const HEADER_TTL: &str = "x-llm-cache-ttl";
/// Request header: `no-store`, `refresh`, `bypass`, `semantic` (comma-separated).
pub const HEADER_CONTROL: &str = "x-llm-cache-control";
/// Response header: where the answer came from (see [`CacheStatus::header_value`]).
pub use llm_cache_engine::cached::HEADER_STATUS;

/// The request headers that steer the cache; removed before the request goes upstream.
const CONTROL_HEADERS: [&str; 3] = [HEADER_NAMESPACE, HEADER_TTL, HEADER_CONTROL];

/// The value of the `x-llm-cache` response header for `status`.
#[doc(hidden)]
pub fn status_label(status: CacheStatus) -> &'static str {
    status.header_value()
}

/// Take the cache-control headers off `headers` and read them.
///
/// # Errors
///
/// A message naming the header when a value is not understood (an unknown directive, a
/// TTL that is not a positive number of seconds, a namespace that is not visible ASCII).
/// `semantic` asks for the semantic cache ([`CacheControl::semantic`]): it changes nothing
/// unless the cache was built with one.
#[doc(hidden)]
pub fn take_controls(headers: &mut HeaderMap) -> Result<CacheControl, String> {
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
                "semantic" => control.semantic(true),
                other => {
                    return Err(format!(
                        "`{HEADER_CONTROL}`: unknown directive {other:?} (known: no-store, \
                         refresh, bypass, semantic)"
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
#[doc(hidden)]
pub fn bind(control: CacheControl, bound: &str) -> CacheControl {
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
#[doc(hidden)]
pub fn strip_controls(headers: &mut HeaderMap) {
    for name in CONTROL_HEADERS {
        headers.remove(name);
    }
}

/// What a key holds beyond the body and namespace: the upstream's scheme, host, port, path
/// and query string, the answer's shape (`json` or `sse`, for endpoints whose stored form
/// differs), and the credential scope: a SHA-256 of the credential headers (or a fixed tag
/// when credentials may share answers). Each part framed by its length.
#[doc(hidden)]
pub fn scope(
    url: &reqwest::Url,
    headers: &HeaderMap,
    shape: &str,
    share_across_credentials: bool,
) -> Vec<u8> {
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
        put_framed(&mut out, &credential_digest(headers));
    }
    out
}

/// SHA-256 over every credential header present (name and value, framed, in a fixed order
/// of names and in the order of their values). The raw values never leave this function.
pub(crate) fn credential_digest(headers: &HeaderMap) -> [u8; 32] {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
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
            (HEADER_CONTROL, "semantic"),
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
                .semantic(true)
        );
        assert_eq!(h.len(), 1);
        for bad in [
            (HEADER_TTL, "0"),
            (HEADER_TTL, "soon"),
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
}
