//! The remote tier: a small store trait, the Redis store behind it, and the fail-open
//! guard (per-operation deadline, circuit breaker) that every call goes through. Nothing
//! here may make a request fail: an L2 problem is a miss, a skipped write, a counter.

mod guard;
mod redis;

use std::time::Duration;

use futures_util::future::BoxFuture;

pub(crate) use self::guard::{Guarded, L2Read};
pub(crate) use self::redis::RedisStore;

/// Why an L2 operation failed. Never shown to callers of the cache path; counted and logged.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum L2Error {
    /// The store could not be reached or the connection broke.
    #[error("connection: {0}")]
    Connection(String),
    /// The store answered with an error.
    #[error("{0}")]
    Command(String),
}

/// What the cache needs from a remote tier. Implementations may be slow or broken: the
/// guard bounds every call with a deadline.
pub(crate) trait RemoteStore: Send + Sync + 'static {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, L2Error>>;
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), L2Error>>;
    fn unlink<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), L2Error>>;
    /// Drop the current connection so the next operation makes a new one (used when the
    /// breaker opens: a half-open or stalled connection must not be reused forever).
    fn reset(&self);
    /// The store's address with any password redacted, for logs and errors.
    fn describe(&self) -> &str;
}
