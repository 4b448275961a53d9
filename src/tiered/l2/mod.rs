//! The remote tier: a small store trait, the Redis store behind it, and the fail-open
//! guard (per-operation deadline, circuit breaker) that every call goes through. Nothing
//! here may make a request fail: an L2 problem is a miss, a skipped write, a counter.

mod cluster;
mod commands;
mod guard;
pub(crate) mod inspect;
mod lazy;
mod pubsub;
mod redis;
mod sentinel;
mod tls;
mod topology;

use std::time::Duration;

use futures_util::future::BoxFuture;

pub(crate) use self::guard::{Guarded, L2Read};
pub(crate) use self::pubsub::Subscription;
pub(crate) use self::topology::{Topology, open_store, validate as validate_topology};

/// Why an L2 operation failed. Never shown to callers of the cache path; counted and logged.
#[derive(Debug, Clone, thiserror::Error)]
pub(crate) enum L2Error {
    /// The store could not be reached or the connection broke.
    #[error("connection: {0}")]
    Connection(String),
    /// The store answered with an error.
    #[error("{0}")]
    Command(String),
    /// Only the node that owns this key is unreachable (Cluster): a miss for its keys,
    /// never a reason to stop using the other nodes, so the breaker does not count it.
    #[error("node down: {0}")]
    NodeDown(String),
}

/// The fields of a hash of counters and their values (namespace generations).
pub(crate) type Counts = Vec<(Vec<u8>, u64)>;

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

    // What health() and redis_stats() read; the Redis commands are in inspect.rs.
    /// `PING` (for `health()`). The default reads a key nobody writes.
    fn ping(&self) -> BoxFuture<'_, Result<(), L2Error>> {
        Box::pin(async move { self.get("llm-cache:ping").await.map(|_| ()) })
    }
    /// The nodes that do not answer now (a Cluster's masters, each pinged on its own);
    /// empty for a single server, whose state `ping` gives.
    fn nodes_down(&self) -> BoxFuture<'_, Vec<String>> {
        Box::pin(async { Vec::new() })
    }
    /// The server's `INFO` text. A store of several primaries returns every primary's,
    /// concatenated: `redis_stats()` sums their numbers.
    fn info(&self) -> BoxFuture<'_, Result<String, L2Error>> {
        Box::pin(async {
            Err(L2Error::Command(
                "INFO is not supported by this store".into(),
            ))
        })
    }
    /// Keys matching `pattern`, counted with `SCAN MATCH pattern COUNT 1000`, looking at
    /// about `limit` keys at most (per primary); never `KEYS`.
    fn count_keys<'a>(
        &'a self,
        pattern: &'a str,
        limit: u64,
    ) -> BoxFuture<'a, Result<inspect::KeyCount, L2Error>> {
        let _ = (pattern, limit);
        Box::pin(async {
            Err(L2Error::Command(
                "SCAN is not supported by this store".into(),
            ))
        })
    }

    // Leases, invalidation and namespace generations: what lets instances act as one.
    /// `SET key token NX PX ttl`: true when this call took the key.
    fn set_nx<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, L2Error>>;
    /// Whether `key` exists.
    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, L2Error>>;
    /// Delete `key` only if it holds `token`; true when it did.
    fn release<'a>(&'a self, key: &'a str, token: &'a str) -> BoxFuture<'a, Result<bool, L2Error>>;
    /// Extend `key`'s life to `ttl` only if it holds `token`; true when it did.
    fn renew<'a>(
        &'a self,
        key: &'a str,
        token: &'a str,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, L2Error>>;
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        message: &'a [u8],
    ) -> BoxFuture<'a, Result<(), L2Error>>;
    /// `HSET key field value` and `PUBLISH channel message` in one atomic step.
    fn hset_publish<'a>(
        &'a self,
        key: &'a str,
        field: &'a [u8],
        value: u64,
        channel: &'a str,
        message: &'a [u8],
    ) -> BoxFuture<'a, Result<(), L2Error>>;
    /// Every counter in the hash at `key`.
    fn hgetall<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Counts, L2Error>>;
    /// Subscribe to `channel` on a node of the store, bounded by `timeout`. Not guarded:
    /// the subscription lives until its connection goes away.
    fn subscribe<'a>(
        &'a self,
        channel: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Subscription, L2Error>>;
}
