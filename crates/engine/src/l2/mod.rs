//! The remote tier: a small store trait, the Redis store behind it, and the fail-open
//! guard (per-operation deadline, circuit breaker) that every call goes through. Nothing
//! here may make a request fail: an L2 problem is a miss, a skipped write, a counter.

mod cluster;
mod commands;
mod guard;
#[doc(hidden)]
pub mod inspect;
mod lazy;
mod pubsub;
mod redis;
mod sentinel;
mod tls;
mod topology;

use std::time::Duration;

use futures_util::future::BoxFuture;

#[doc(hidden)]
pub use self::commands::deadline_prefix;
#[doc(hidden)]
pub use self::guard::{Guarded, L2Read, LeaseRead};
pub use self::pubsub::Subscription;
pub use self::topology::{Topology, default_lease_ttl};
pub(crate) use self::topology::{open_store, validate as validate_topology};

/// Why an L2 operation failed. Never shown to callers of the cache path; counted and logged.
/// Only failures that say Redis is unreachable, too slow or cannot serve count toward the
/// breaker (`Connection`, `NotServing`, deadlines); an error reply to one command does not.
#[derive(Debug, Clone, thiserror::Error)]
#[doc(hidden)]
pub enum L2Error {
    /// The store could not be reached or the connection broke.
    #[error("connection: {0}")]
    Connection(String),
    /// No connection right now (one is being made in the background): nothing was sent.
    #[error("not connected")]
    NotConnected,
    /// The server answered with an error reply to this command (OOM under `noeviction`, a
    /// script error, WRONGTYPE, NOPERM...): it is up and serves other commands.
    #[error("{0}")]
    Command(String),
    /// The server answered that it cannot serve anything now (LOADING, BUSY, MASTERDOWN,
    /// CLUSTERDOWN, NOAUTH): as good as down.
    #[error("{0}")]
    NotServing(String),
    /// Only the node that owns this key is unreachable (Cluster): a miss for its keys,
    /// never a reason to stop using the other nodes, so the breaker does not count it.
    #[error("node down: {0}")]
    NodeDown(String),
}

/// Error replies that say the server cannot serve any command now, rather than refusing
/// this one.
const NOT_SERVING: [&str; 6] = [
    "LOADING",
    "BUSY",
    "MASTERDOWN",
    "CLUSTERDOWN",
    "NOAUTH",
    "WRONGPASS",
];

/// True when `e` is an error reply (or a reply of the wrong shape) from a server that
/// answered and would answer other commands: OOM under `noeviction`, a script error,
/// WRONGTYPE, NOPERM, MISCONF, MOVED/ASK that outlived the cluster client... Not a sign of an
/// outage. READONLY is not one (a demoted master: the store connects again), nor are the
/// [`NOT_SERVING`] replies.
pub(crate) fn refused_by_server(e: &::redis::RedisError) -> bool {
    use ::redis::{ErrorKind, ServerErrorKind};
    match e.kind() {
        ErrorKind::UnexpectedReturnType | ErrorKind::Client => true,
        ErrorKind::Server(ServerErrorKind::ReadOnly) => false,
        ErrorKind::Server(_) | ErrorKind::Extension => {
            e.code().is_some_and(|code| !NOT_SERVING.contains(&code))
        }
        _ => false,
    }
}

/// An error reply as Redis writes it (`OOM command not allowed when ...`), the code first.
pub(crate) fn reply_text(e: &::redis::RedisError) -> String {
    match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        (Some(code), None) => code.to_owned(),
        _ => e.to_string(),
    }
}

/// Whether a store can run a command now.
#[derive(Debug, Clone, PartialEq, Eq)]
#[doc(hidden)]
pub enum Link {
    /// A connection is up.
    Up,
    /// None yet; an attempt is under way in the background.
    Connecting,
    /// The last attempt failed (each failed attempt is reported once); a new one has started.
    Failed(String),
}

impl From<Link> for L2Error {
    fn from(link: Link) -> Self {
        match link {
            Link::Failed(why) => L2Error::Connection(why),
            Link::Up | Link::Connecting => L2Error::NotConnected,
        }
    }
}

/// The fields and values of several hashes, one list per key.
pub(crate) type Hashes = Vec<Vec<(Vec<u8>, Vec<u8>)>>;

/// The fields of a hash of counters and their values (namespace generations).
pub(crate) type Counts = Vec<(Vec<u8>, u64)>;

/// What the cache needs from a remote tier. Implementations may be slow or broken: the
/// guard bounds every call with a deadline.
#[doc(hidden)]
pub trait RemoteStore: Send + Sync + 'static {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, L2Error>>;
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), L2Error>>;
    fn unlink<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), L2Error>>;
    /// Drop the current connection and start making a new one in the background (used when
    /// the breaker opens: a half-open or stalled connection must not be reused forever).
    fn reset(&self);
    /// Whether a connection is up; without one, start making one in the background unless
    /// an attempt is under way. Never waits.
    fn link(&self) -> Link;
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
    /// about `limit` keys at most (per primary); never `KEYS`. With `marker_len`, also how
    /// many of them hold a value of that length (`STRLEN`, pipelined).
    fn count_keys<'a>(
        &'a self,
        pattern: &'a str,
        limit: u64,
        marker_len: Option<usize>,
    ) -> BoxFuture<'a, Result<inspect::KeyCount, L2Error>> {
        let _ = (pattern, limit, marker_len);
        Box::pin(async {
            Err(L2Error::Command(
                "SCAN is not supported by this store".into(),
            ))
        })
    }

    // Leases, invalidation and namespace generations: what lets instances act as one.
    /// `SET key marker NX PX ttl GET`: the value at `key` if there is one, else `None`, and
    /// then this call has stored `marker` there (a lease in the entry's own key).
    fn get_or_lease<'a>(
        &'a self,
        key: &'a str,
        marker: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, L2Error>>;
    /// Whether `key` exists.
    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, L2Error>>;
    /// Delete `key` only if it holds `token`; true when it did.
    fn release<'a>(&'a self, key: &'a str, token: &'a [u8])
    -> BoxFuture<'a, Result<bool, L2Error>>;
    /// Extend `key`'s life to `ttl` only if it holds `token`; true when it did.
    fn renew<'a>(
        &'a self,
        key: &'a str,
        token: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, L2Error>>;
    /// Give a lease marker at `key` that has no expiry, or outlives `ttl`, an end (see
    /// `commands::expire_stale_marker`); true when it changed one.
    fn expire_stale_marker<'a>(
        &'a self,
        key: &'a str,
        ttl: Duration,
        is_marker: fn(&[u8]) -> bool,
    ) -> BoxFuture<'a, Result<bool, L2Error>>;
    fn publish<'a>(
        &'a self,
        channel: &'a str,
        message: &'a [u8],
    ) -> BoxFuture<'a, Result<(), L2Error>>;
    /// `HSET key field value` and `PUBLISH channel message` in one atomic step, creating
    /// the record's incarnation (`fresh`) if it has none; the record's incarnation.
    fn hset_publish<'a>(
        &'a self,
        key: &'a str,
        field: &'a [u8],
        value: u64,
        channel: &'a str,
        message: &'a [u8],
        fresh: u64,
    ) -> BoxFuture<'a, Result<u64, L2Error>>;
    /// The generations record at `key` (created with incarnation `fresh` if missing):
    /// every counter (`all`), or only the incarnation's. See `commands::load_generations`.
    fn load_generations<'a>(
        &'a self,
        key: &'a str,
        fresh: u64,
        all: bool,
    ) -> BoxFuture<'a, Result<Counts, L2Error>>;
    // Capped hashes of deadline-prefixed values, and multi-key reads (keys of one call share
    // a Cluster slot): what an index kept beside the entries needs.
    /// See `commands::hset_capped`.
    fn hset_capped<'a>(
        &'a self,
        keys: &'a [String],
        field: &'a [u8],
        value: &'a [u8],
        cap: usize,
        now_ms: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), L2Error>> {
        let _ = (keys, field, value, cap, now_ms, ttl);
        Box::pin(async {
            Err(L2Error::Command(
                "HSET is not supported by this store".into(),
            ))
        })
    }
    /// `HGETALL` of each key, pipelined.
    fn hgetall_many<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Result<Hashes, L2Error>> {
        let _ = keys;
        Box::pin(async {
            Err(L2Error::Command(
                "HGETALL is not supported by this store".into(),
            ))
        })
    }
    /// `MGET keys`.
    fn mget<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Option<Vec<u8>>>, L2Error>> {
        let _ = keys;
        Box::pin(async {
            Err(L2Error::Command(
                "MGET is not supported by this store".into(),
            ))
        })
    }
    /// `HDEL key fields...`.
    fn hdel<'a>(
        &'a self,
        key: &'a str,
        fields: &'a [Vec<u8>],
    ) -> BoxFuture<'a, Result<(), L2Error>> {
        let _ = (key, fields);
        Box::pin(async {
            Err(L2Error::Command(
                "HDEL is not supported by this store".into(),
            ))
        })
    }
    /// Subscribe to `channel` on a node of the store, bounded by `timeout`. Not guarded:
    /// the subscription lives until its connection goes away.
    fn subscribe<'a>(
        &'a self,
        channel: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Subscription, L2Error>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error a server's reply `-{line}` turns into.
    fn reply(line: &str) -> ::redis::RedisError {
        let value = ::redis::parse_redis_value(format!("-{line}\r\n").as_bytes())
            .expect("an error reply parses");
        value
            .extract_error()
            .expect_err("an error reply is an error")
    }

    #[test]
    fn error_replies_from_a_healthy_server_are_refusals() {
        for line in [
            "OOM command not allowed when used memory > 'maxmemory'.",
            "ERR user_script:1: Script attempted to access nonexistent global variable 'x'",
            "WRONGTYPE Operation against a key holding the wrong kind of value",
            "NOPERM User cache has no permissions to run the 'set' command",
            "MISCONF Redis is configured to save RDB snapshots, but it's unable to persist",
            "NOSCRIPT No matching script",
            "EXECABORT Transaction discarded",
            "MOVED 3999 127.0.0.1:6381",
        ] {
            let e = reply(line);
            assert!(refused_by_server(&e), "{line}: {e:?}");
            assert_eq!(reply_text(&e), line);
        }
    }

    #[test]
    fn replies_that_say_the_server_cannot_serve_are_not_refusals() {
        for line in [
            "LOADING Redis is loading the dataset in memory",
            "BUSY Redis is busy running a script.",
            "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.",
            "CLUSTERDOWN The cluster is down",
            "NOAUTH Authentication required.",
            "READONLY You can't write against a read only replica.",
        ] {
            assert!(!refused_by_server(&reply(line)), "{line}");
        }
        let io =
            ::redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert!(!refused_by_server(&io));
    }
}
