//! `health()`: whether Redis is usable now and, when it is not, the last error the cache
//! saw. One `PING` through the fail-open guard (so it obeys the deadline and the breaker and
//! counts like any operation); never a password in what it reports.

use std::fmt;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::TieredCache;
use crate::error::redact_url;
use crate::stats::BreakerState;

/// The state of the Redis tier, as [`health()`](TieredCache::health) found it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum L2Health {
    /// Redis answered.
    Up,
    /// Redis answered, but not everything works: some of its nodes did not answer (a
    /// Cluster with masters down, named in [`Health::nodes_down`]: their keys miss, the
    /// others' hit), or it refuses the invalidation subscription (an ACL user without
    /// SUBSCRIBE, said in [`Health::invalidation`]: L2 is not read and L1 entries are
    /// served for at most `unsynced_grace`).
    Degraded,
    /// Redis did not answer (error or deadline); the breaker still lets operations through.
    Down,
    /// The circuit breaker is open (or one probe is out): Redis is skipped until a probe
    /// succeeds. Requests are served from L1 and the upstream.
    BreakerOpen,
    /// No Redis is configured: the cache is L1-only by design.
    Disabled,
}

impl L2Health {
    /// `up`, `degraded`, `down`, `breaker_open` or `disabled`.
    pub fn as_str(self) -> &'static str {
        match self {
            L2Health::Up => "up",
            L2Health::Degraded => "degraded",
            L2Health::Down => "down",
            L2Health::BreakerOpen => "breaker_open",
            L2Health::Disabled => "disabled",
        }
    }
}

impl fmt::Display for L2Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What [`health()`](TieredCache::health) reports. The cache serves requests whatever it
/// says (Redis is an optimisation); it tells an operator whether the shared tier is working.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Health {
    /// The Redis tier now.
    pub l2: L2Health,
    /// The breaker's state after the check.
    pub breaker: BreakerState,
    /// The Redis address, password hidden; `None` when L1-only.
    pub redis: Option<String>,
    /// Nodes that did not answer the check (`host:port` of a Cluster's masters); empty
    /// for a single server or when all answered.
    pub nodes_down: Vec<String>,
    /// The last L2 failure this cache saw (also when Redis is up again), such as
    /// `get: connection: Connection refused (os error 111)`, with URL passwords hidden.
    pub last_error: Option<String>,
    /// When that failure happened.
    pub last_error_at: Option<SystemTime>,
    /// Why invalidations from other instances cannot reach this one now, when Redis says
    /// so: the server's refusal of the subscription (`NOPERM ...`). `None` otherwise.
    pub invalidation: Option<String>,
}

impl Health {
    /// True when Redis is up or not configured: nothing for an operator to look at.
    pub fn is_ok(&self) -> bool {
        matches!(self.l2, L2Health::Up | L2Health::Disabled)
    }

    fn disabled() -> Health {
        Health {
            l2: L2Health::Disabled,
            breaker: BreakerState::Disabled,
            redis: None,
            nodes_down: Vec::new(),
            last_error: None,
            last_error_at: None,
            invalidation: None,
        }
    }
}

impl fmt::Display for Health {
    /// One line for a log or a status page: `l2 down (redis://127.0.0.1:6390): last error
    /// 2s ago: get: connection: Connection refused (os error 111)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "l2 {}", self.l2)?;
        if let Some(redis) = &self.redis {
            write!(f, " ({redis})")?;
        }
        if !self.nodes_down.is_empty() {
            write!(f, ": nodes down: {}", self.nodes_down.join(","))?;
        }
        if let Some(why) = &self.invalidation {
            write!(f, ": invalidation subscription refused: {why}")?;
        }
        if let Some(error) = &self.last_error {
            let ago = self
                .last_error_at
                .and_then(|at| SystemTime::now().duration_since(at).ok())
                .unwrap_or(Duration::ZERO);
            write!(f, ": last error {}s ago: {error}", ago.as_secs())?;
        }
        Ok(())
    }
}

/// The last L2 failure, as the guard saw it.
#[derive(Debug, Clone)]
#[doc(hidden)]
pub struct LastError {
    op: &'static str,
    message: String,
    at: SystemTime,
}

impl LastError {
    pub(crate) fn new(op: &'static str, why: &str) -> Self {
        LastError {
            op,
            message: redact_urls_in(why),
            at: SystemTime::now(),
        }
    }
}

/// `text` with the password of every URL in it hidden (`redis://user:***@host`).
pub(crate) fn redact_urls_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(sep) = rest.find("://") {
        let scheme_start = rest[..sep]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        let url_end = rest[sep..]
            .find(|c: char| c.is_whitespace() || matches!(c, '`' | '"' | '\'' | ',' | ')' | '>'))
            .map_or(rest.len(), |i| sep + i);
        out.push_str(&rest[..scheme_start]);
        out.push_str(&redact_url(&rest[scheme_start..url_end]));
        rest = &rest[url_end..];
    }
    out.push_str(rest);
    out
}

impl<V> TieredCache<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Check the Redis tier now: one `PING` under the L2 deadline, through the breaker (so
    /// while the breaker is open it is skipped and reports [`L2Health::BreakerOpen`]; once the
    /// cool-down is over it is the probe that can close it). For a Cluster every master is
    /// also pinged on a connection of its own (not through the breaker): with some of them
    /// silent the tier is [`L2Health::Degraded`] and [`Health::nodes_down`] names them.
    /// It is `Degraded` too while Redis refuses the invalidation subscription (an ACL user
    /// without SUBSCRIBE): [`Health::invalidation`] holds the refusal.
    /// Never fails, never blocks longer than about the L2 deadline.
    pub async fn health(&self) -> Health {
        let (Some(l2), _) = self.l2_parts() else {
            return Health::disabled();
        };
        let (answered, nodes_down) = tokio::join!(l2.ping(), l2.store().nodes_down());
        let breaker = l2.breaker_state();
        let refused = self.inner.invalidation.refused();
        let state = match (answered, breaker) {
            (true, _) if !nodes_down.is_empty() || refused.is_some() => L2Health::Degraded,
            (true, _) => L2Health::Up,
            (false, BreakerState::Closed) => L2Health::Down,
            (false, _) => L2Health::BreakerOpen,
        };
        let last = crate::sync::lock(&self.counters().last_l2_error).clone();
        Health {
            l2: state,
            breaker,
            redis: Some(l2.describe().to_string()),
            nodes_down,
            last_error: last.as_ref().map(|e| format!("{}: {}", e.op, e.message)),
            last_error_at: last.map(|e| e.at),
            invalidation: refused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_in_text_lose_their_passwords() {
        assert_eq!(
            redact_urls_in("connect to redis://u:s3cret@h:6379/0 failed: refused"),
            "connect to redis://u:***@h:6379/0 failed: refused"
        );
        assert_eq!(
            redact_urls_in("`rediss://:pw@a` and (redis://b:1)"),
            "`rediss://:***@a` and (redis://b:1)"
        );
        assert_eq!(redact_urls_in("no url here"), "no url here");
        assert!(!redact_urls_in("x redis://user:p%40ss@host y").contains("p%40ss"));
    }
}
