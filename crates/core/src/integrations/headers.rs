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
use crate::upstream::{CREDENTIAL_HEADERS, is_scoped_credential};

/// Request header: the namespace (tenant) of this request.
pub const HEADER_NAMESPACE: &str = "x-llm-cache-namespace";
/// Request header: how long to keep this request's answer, in seconds.
pub const HEADER_TTL: &str = "x-llm-cache-ttl";
/// Request header: `no-store`, `refresh`, `bypass`, `semantic` (comma-separated).
pub const HEADER_CONTROL: &str = "x-llm-cache-control";
/// Response header: where the answer came from (see
/// [`CacheStatus::header_value`](crate::CacheStatus::header_value)).
pub use llm_cache_engine::cached::HEADER_STATUS;

/// The request headers that steer the cache; removed before the request goes upstream.
#[doc(hidden)]
pub const CONTROL_HEADERS: [&str; 3] = [HEADER_NAMESPACE, HEADER_TTL, HEADER_CONTROL];

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
    credentials: &CredentialScope,
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
    if credentials.shared {
        put_framed(&mut out, b"credentials:shared");
    } else {
        put_framed(&mut out, &credential_digest(headers, &credentials.extra));
    }
    out
}

/// Which request headers are credentials that keep answers apart: every header whose name
/// says it carries one (the rule that masks credentials in text: a credential header, or a
/// name containing `auth`, `key`, `token`, `secret` or `cookie`, such as
/// `ocp-apim-subscription-key` or `x-goog-api-key`; idempotency keys excepted), plus the
/// names configured with [`header`](Self::header). [`shared`](Self::shared) is the
/// explicit opt-out.
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
pub struct CredentialScope {
    shared: bool,
    /// Lower-case names scoped on top of the rule.
    extra: Vec<String>,
}

impl CredentialScope {
    /// Answers kept apart by credentials (the default).
    pub fn scoped() -> Self {
        Self::default()
    }

    /// Answers shared across credentials (the opt-out), or not.
    pub fn shared(mut self, yes: bool) -> Self {
        self.shared = yes;
        self
    }

    /// Also treat header `name` as a credential (case-insensitive).
    pub fn header(mut self, name: &str) -> Self {
        let name = name.to_ascii_lowercase();
        if !self.extra.contains(&name) {
            self.extra.push(name);
        }
        self
    }

    /// Whether header `name` is a credential under this scope.
    pub fn is_credential(&self, name: &str) -> bool {
        is_scoped_credential(name) || self.extra.iter().any(|e| e.eq_ignore_ascii_case(name))
    }
}

/// SHA-256 over every credential header present (name and value, framed, in the order of
/// names and, per name, in the order of its values). The raw values never leave this
/// function.
pub(crate) fn credential_digest(headers: &HeaderMap, extra: &[String]) -> [u8; 32] {
    let mut names: Vec<&str> = headers
        .keys()
        .map(http::HeaderName::as_str)
        .filter(|name| is_scoped_credential(name) || extra.iter().any(|e| e == name))
        .collect();
    // The fixed credential headers first, in their order (so keys made before the rule
    // covered other names stay the same), then the others by name.
    names.sort_unstable_by_key(|name| {
        let fixed = CREDENTIAL_HEADERS.iter().position(|c| c == name);
        (fixed.unwrap_or(CREDENTIAL_HEADERS.len()), *name)
    });
    names.dedup();
    let mut framed = Vec::new();
    put_framed(&mut framed, b"llm-cache/credential-scope");
    for name in names {
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

    #[test]
    fn gateway_and_configured_credential_headers_are_in_the_scope() {
        let url: reqwest::Url = "https://gw.example.com/v1/chat/completions"
            .parse()
            .unwrap();
        let scope = |pairs: &[(&str, &str)], c: &CredentialScope| {
            super::scope(&url, &headers(pairs), "chat", c)
        };
        let rule = CredentialScope::scoped();
        for name in [
            "ocp-apim-subscription-key",
            "x-goog-api-key",
            "x-auth-token",
            "cookie",
        ] {
            assert_ne!(
                scope(&[(name, "one-secret")], &rule),
                scope(&[(name, "two-secret")], &rule),
                "{name}"
            );
        }
        // Not credentials: an idempotency key, an ordinary header.
        for name in ["idempotency-key", "x-request-id"] {
            assert_eq!(
                scope(&[(name, "a1")], &rule),
                scope(&[(name, "b2")], &rule),
                "{name}"
            );
        }
        // A configured name, any case; and the explicit opt-out.
        let custom = CredentialScope::scoped().header("X-Tenant-Pass");
        assert_ne!(
            scope(&[("x-tenant-pass", "one")], &custom),
            scope(&[("x-tenant-pass", "two")], &custom)
        );
        assert_eq!(
            scope(&[("x-tenant-pass", "one")], &rule),
            scope(&[("x-tenant-pass", "two")], &rule)
        );
        let shared = CredentialScope::scoped().shared(true);
        assert_eq!(
            scope(&[("x-goog-api-key", "one")], &shared),
            scope(&[("x-goog-api-key", "two")], &shared)
        );
        // Keys made with the fixed headers alone are unchanged by the order of insertion.
        assert_eq!(
            scope(
                &[("authorization", "Bearer a"), ("openai-organization", "o")],
                &rule
            ),
            scope(
                &[("openai-organization", "o"), ("authorization", "Bearer a")],
                &rule
            )
        );
    }

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
        let a = credential_digest(&headers(&[("authorization", "Bearer sk-one")]), &[]);
        let b = credential_digest(&headers(&[("authorization", "Bearer sk-two")]), &[]);
        let org = credential_digest(
            &headers(&[
                ("authorization", "Bearer sk-one"),
                ("openai-organization", "org-2"),
            ]),
            &[],
        );
        assert_ne!(a, b);
        assert_ne!(a, org);
        assert_eq!(
            a,
            credential_digest(
                &headers(&[("authorization", "Bearer sk-one"), ("x-other", "1")]),
                &[]
            )
        );
    }
}
