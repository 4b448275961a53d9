//! The one error type of the crate. It is cheap to clone because every waiter of a
//! flight receives the same error; it must never carry an API key or a Redis password.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// A specialised `Result` whose error is [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, coarsely. Match on it with a wildcard arm: new kinds may be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A builder knob is invalid; the message names the knob.
    Config,
    /// A request was rejected before any network call; the message names the field.
    InvalidRequest,
    /// The upstream answered with an error status or a body that is not the expected JSON.
    Upstream,
    /// The upstream could not be reached (connect error, reset).
    Connect,
    /// A deadline passed: an upstream request, or a waiter of a flight.
    Timeout,
    /// The fetch function given to the cache failed with an error of the caller's own.
    Fetch,
    /// The fetch function panicked, or the task running it was torn down.
    FetchAborted,
    /// A value could not be serialised or deserialised.
    Codec,
    /// An explicit Redis operation (such as `invalidate`) failed. Reads and writes on the
    /// cache path never return this: they fail open.
    Redis,
    /// The upstream does not offer what was asked (an `Upstream` of
    /// your own without embeddings).
    Unsupported,
}

impl fmt::Display for ErrorKind {
    /// What went wrong in a few words (`invalid configuration`, `upstream error`,
    /// `timed out`...), as the error's own `Display` begins.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl ErrorKind {
    fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Config => "invalid configuration",
            ErrorKind::InvalidRequest => "invalid request",
            ErrorKind::Upstream => "upstream error",
            ErrorKind::Connect => "upstream connect error",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Fetch => "fetch failed",
            ErrorKind::FetchAborted => "fetch aborted",
            ErrorKind::Codec => "codec error",
            ErrorKind::Redis => "redis error",
            ErrorKind::Unsupported => "not supported",
        }
    }
}

type Source = Arc<dyn std::error::Error + Send + Sync + 'static>;

#[derive(Clone)]
struct Inner {
    kind: ErrorKind,
    message: String,
    status: Option<u16>,
    retry_after: Option<Duration>,
    source: Option<Source>,
}

/// The crate's error: a kind, a message, and for upstream errors the HTTP status.
///
/// Cloning is one reference-count increment.
#[derive(Clone)]
pub struct Error(Arc<Inner>);

impl Error {
    /// An error of `kind` with a human-readable message.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error(Arc::new(Inner {
            kind,
            message: message.into(),
            status: None,
            retry_after: None,
            source: None,
        }))
    }

    /// An error for a fetch function of the caller's own, wrapping its cause.
    pub fn fetch<E>(source: E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let message = source.to_string();
        Self::new(ErrorKind::Fetch, message).with_source(source)
    }

    /// A fetch error with a message only.
    pub fn fetch_msg(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Fetch, message)
    }

    #[doc(hidden)]
    pub fn config(knob: &str, why: impl fmt::Display) -> Self {
        Self::new(ErrorKind::Config, format!("`{knob}`: {why}"))
    }

    #[doc(hidden)]
    pub fn invalid_request(field: &str, why: impl fmt::Display) -> Self {
        Self::new(ErrorKind::InvalidRequest, format!("`{field}`: {why}"))
    }

    #[doc(hidden)]
    pub fn codec(why: impl fmt::Display) -> Self {
        Self::new(ErrorKind::Codec, why.to_string())
    }

    /// An upstream error with the HTTP status it answered with, for an
    /// `Upstream` of your own: [`status`](Self::status) reports it,
    /// [`is_rate_limited`](Self::is_rate_limited) is true for 429. Add the delay of a
    /// `Retry-After` with [`with_retry_after`](Self::with_retry_after).
    ///
    /// ```
    /// use std::time::Duration;
    /// use llm_cache_engine::{Error, ErrorKind};
    ///
    /// let e = Error::upstream_status(429, "slow down").with_retry_after(Duration::from_secs(3));
    /// assert_eq!(e.kind(), ErrorKind::Upstream);
    /// assert_eq!((e.status(), e.retry_after()), (Some(429), Some(Duration::from_secs(3))));
    /// assert!(e.is_rate_limited());
    /// assert_eq!(e.to_string(), "upstream error (HTTP 429): slow down");
    /// ```
    pub fn upstream_status(status: u16, message: impl Into<String>) -> Self {
        let mut e = Self::new(ErrorKind::Upstream, message);
        Arc::make_mut(&mut e.0).status = Some(status);
        e
    }

    /// The same error, saying the upstream asked to be called again after `after` (its
    /// `Retry-After`), as [`retry_after`](Self::retry_after) reports. The cache does not
    /// wait on it: it is for the caller (or the upstream's own retry loop).
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        Arc::make_mut(&mut self.0).retry_after = Some(after);
        self
    }

    #[doc(hidden)]
    pub fn with_source<E>(mut self, source: E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        if let Some(inner) = Arc::get_mut(&mut self.0) {
            inner.source = Some(Arc::new(source));
        }
        self
    }

    /// The kind of this error.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The message, without the kind prefix.
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The HTTP status the upstream answered with, when there was one.
    pub fn status(&self) -> Option<u16> {
        self.0.status
    }

    /// The delay the upstream asked for with `Retry-After`, when it did.
    pub fn retry_after(&self) -> Option<Duration> {
        self.0.retry_after
    }

    /// The upstream answered 429 Too Many Requests; [`retry_after`](Self::retry_after)
    /// says how long it asked to be left alone, when it did.
    pub fn is_rate_limited(&self) -> bool {
        self.0.status == Some(429)
    }

    /// A builder knob was invalid.
    pub fn is_config(&self) -> bool {
        self.0.kind == ErrorKind::Config
    }

    /// The request was rejected before any network call.
    pub fn is_invalid_request(&self) -> bool {
        self.0.kind == ErrorKind::InvalidRequest
    }

    /// A deadline passed (upstream request or flight waiter).
    pub fn is_timeout(&self) -> bool {
        self.0.kind == ErrorKind::Timeout
    }

    /// The upstream answered with an error, or could not be reached.
    pub fn is_upstream(&self) -> bool {
        matches!(self.0.kind, ErrorKind::Upstream | ErrorKind::Connect)
    }

    /// The fetch panicked or its task was torn down before it answered.
    pub fn is_fetch_aborted(&self) -> bool {
        self.0.kind == ErrorKind::FetchAborted
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.kind.as_str())?;
        if let Some(status) = self.0.status {
            write!(f, " (HTTP {status})")?;
        }
        if !self.0.message.is_empty() {
            write!(f, ": {}", self.0.message)?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.0.kind)
            .field("message", &self.0.message);
        if let Some(status) = self.0.status {
            d.field("status", &status);
        }
        if let Some(after) = self.0.retry_after {
            d.field("retry_after", &after);
        }
        if let Some(source) = &self.0.source {
            d.field("source", &source.to_string());
        }
        d.finish()
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0
            .source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

/// Redact the password of a URL such as `redis://user:secret@host:6379/0`, so the URL can
/// be shown in errors and `Debug` output.
#[doc(hidden)]
pub fn redact_url(url: &str) -> String {
    let Ok(mut parsed) = url::Url::parse(url) else {
        // Not a URL the parser takes: show its scheme only, never what could be a secret.
        return match url.find("://") {
            Some(end) => format!("{}://(unparsable)", &url[..end]),
            None => "(unparsable URL)".to_string(),
        };
    };
    if parsed.password().is_some() {
        let _ = parsed.set_password(Some("***"));
    } else if !parsed.username().is_empty() {
        // A lone user part may be a token (`rediss://token@host`).
        let _ = parsed.set_username("***");
    }
    // Some clients accept `?password=...`; hide that too.
    if parsed.query_pairs().any(|(k, _)| k == "password") {
        let pairs: Vec<(String, String)> = parsed
            .query_pairs()
            .map(|(k, v)| {
                let v = if k == "password" {
                    "***".into()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(pairs);
    }
    parsed.to_string()
}

/// What an upstream's JSON error body says besides its message (`error.type`, `error.code`,
/// `error.param`), masked: kept as the source of the upstream's error, so an HTTP front can
/// answer its own callers with the provider's own fields.
#[derive(Debug, Clone, PartialEq)]
pub struct ProviderError {
    /// `error.type`.
    pub kind: Option<String>,
    /// `error.code`.
    pub code: Option<serde_json::Value>,
    /// `error.param`.
    pub param: Option<serde_json::Value>,
}

impl std::fmt::Display for ProviderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the provider's error type {:?}", self.kind)
    }
}

impl std::error::Error for ProviderError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_url("redis://user:s3cret@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact_url("redis://:s3cret@host"), "redis://:***@host");
        assert_eq!(redact_url("rediss://token@host"), "rediss://***@host");
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
        assert_eq!(
            redact_url("redis://host/0?password=abc&x=1"),
            "redis://host/0?password=***&x=1"
        );
        assert!(!redact_url("redis://u:p@ss@host").contains("p@ss"));
    }

    #[test]
    fn display_has_kind_status_and_message() {
        let e = Error::upstream_status(429, "rate limited");
        assert_eq!(e.to_string(), "upstream error (HTTP 429): rate limited");
        assert_eq!(e.clone().status(), Some(429));
        assert!(e.is_upstream());
    }
}
