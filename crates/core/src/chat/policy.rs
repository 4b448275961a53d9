//! Per-request cache control (tenant namespace, TTL, refresh, no-store, bypass) and the
//! rules that decide whether a request or an answer may be cached at all. It must never let
//! an answer without choices (an error in disguise) be stored.

use std::time::Duration;

use crate::error::{Error, ErrorKind, Result};
use crate::request::{ChatRequest, ChatResponse};
use crate::tiered::FetchOptions;

/// How one request uses the cache. The default reads every tier and stores the answer in
/// the global namespace with the configured TTLs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[must_use]
pub struct CacheControl {
    #[doc(hidden)]
    pub namespace: String,
    #[doc(hidden)]
    pub fetch: FetchOptions,
    #[doc(hidden)]
    pub bypass: bool,
    #[doc(hidden)]
    pub semantic: bool,
}

impl CacheControl {
    /// The default control.
    pub fn new() -> Self {
        Self::default()
    }

    crate::tiered::setters! {
        /// The tenant: requests in different namespaces never share answers. Default: the
        /// empty (global) namespace.
        pub fn namespace(namespace: impl Into<String>) { namespace = namespace.into() }
    }

    /// Keep the answer this long in Redis (and at most this long in L1).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.fetch = self.fetch.ttl(ttl);
        self
    }

    /// Never answer from a tier: ask the upstream (possibly sharing a call that started
    /// after this request), then store the new answer.
    pub fn refresh(mut self, yes: bool) -> Self {
        self.fetch = self.fetch.refresh(yes);
        self
    }

    /// Answer as usual but store nothing this request fetches.
    pub fn no_store(mut self, yes: bool) -> Self {
        self.fetch = self.fetch.no_store(yes);
        self
    }

    crate::tiered::setters! {
        /// Do not touch the cache at all: call the upstream directly, store nothing.
        pub fn bypass(yes: bool) { bypass = yes }

        /// Allow a semantic match for this request (when the builder enabled the semantic
        /// cache): after an exact miss, the answer of an earlier request of the same scope
        /// whose last user message means the same may be served (status `HitSemantic`). The
        /// request pays one embedding call (itself cached) on an exact miss. Default false.
        pub fn semantic(yes: bool) { semantic = yes }
    }

    /// The namespace this control selects.
    pub fn namespace_str(&self) -> &str {
        &self.namespace
    }
}

/// Whether a request may use the cache, given the builder's temperature rule.
pub(crate) fn request_is_cacheable(request: &ChatRequest, max_temperature: Option<f64>) -> bool {
    match (max_temperature, request.temperature) {
        (Some(max), Some(t)) => t <= max,
        _ => true,
    }
}

/// An answer without choices is not an answer: it is an error, so it is never stored.
pub(crate) fn check_response(response: &ChatResponse) -> Result<()> {
    if response.choices.is_empty() {
        return Err(Error::new(
            ErrorKind::Upstream,
            "the upstream answered without any choices",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temperature_rule() {
        let r = ChatRequest::new("m").temperature(1.2);
        assert!(request_is_cacheable(&r, None));
        assert!(request_is_cacheable(&r, Some(1.5)));
        assert!(!request_is_cacheable(&r, Some(1.0)));
        assert!(request_is_cacheable(&ChatRequest::new("m"), Some(0.0)));
    }
}
