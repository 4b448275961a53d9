//! The remote tier: one connection seam over the topologies (store.rs: one server, a
//! Sentinel master, a Cluster), the fail-open guard every command runs through (guard.rs:
//! breaker, deadline, counters, error classification) and the cache's own commands
//! (commands.rs), each written once. Nothing here may make a request fail: an L2 problem is
//! a miss, a skipped write, a counter.

mod cluster;
mod commands;
mod guard;
mod inspect;
mod lazy;
mod pubsub;
mod sentinel;
mod store;
mod tls;
mod topology;

pub use self::guard::Guarded;
pub(crate) use self::guard::{L2Read, LeaseRead};
pub use self::pubsub::Subscription;
pub use self::store::Connection;
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
