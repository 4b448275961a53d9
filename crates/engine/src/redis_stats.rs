//! `redis_stats()`: what Redis says about itself (`INFO`) and how many of the cache's keys it
//! holds (a bounded `SCAN`), plus the start-up check that warns when Redis is set up to refuse
//! cache writes once it is full. Read-only; it bypasses the breaker and is not counted as
//! cache traffic; it never runs `KEYS` nor anything else that blocks the server.

use std::sync::{Arc, Weak};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::TieredCache;
use crate::error::{Error, ErrorKind, Result};
use crate::health::redact_urls_in;
use crate::l2::{Connection, Guarded, L2Error};

/// Keys [`redis_stats`](TieredCache::redis_stats) looks at, at most, to count the cache's
/// own (100 `SCAN ... COUNT 1000` steps).
pub const DEFAULT_SCAN_LIMIT: u64 = 100_000;

/// How long one `INFO` or one whole count may take.
const STATS_DEADLINE: Duration = Duration::from_secs(5);

/// Retries of the start-up check while Redis is not reachable (1 s, 2 s, 4 s... up to a
/// minute apart: about ten minutes in all).
const CHECK_ATTEMPTS: u32 = 15;

/// Redis as it describes itself, and the cache's share of it.
#[derive(Debug, Clone, Default, PartialEq)]
#[non_exhaustive]
pub struct RedisStats {
    /// Cache entries (`{key_prefix}:{<digest>}`), leases and the generations hash not included.
    pub keys: u64,
    /// Leases held right now: fetches under way, across instances. A lease lives in its
    /// entry's key (a short marker value) until the fetched value replaces it.
    pub leases: u64,
    /// Whether the namespace generations hash (`{key_prefix}:generations`) exists: it does
    /// once a namespace has been invalidated.
    pub generations_key: bool,
    /// True when the counts went round the whole keyspace; false when a count stopped at
    /// its bound, and `keys` or `leases` is a lower bound.
    pub keys_exact: bool,
    /// Keys in every database of the server, whoever wrote them (`INFO keyspace`).
    pub db_keys: u64,
    /// Bytes Redis has allocated (`used_memory`).
    pub used_memory: u64,
    /// The same, as Redis writes it (`1.05M`).
    pub used_memory_human: String,
    /// The memory limit in bytes; 0 means none.
    pub maxmemory: u64,
    /// What Redis does when full (`allkeys-lru`, `noeviction`...).
    pub maxmemory_policy: String,
    /// Lookups of existing keys since the server started (all clients).
    pub keyspace_hits: u64,
    /// Lookups of missing keys since the server started (all clients).
    pub keyspace_misses: u64,
    /// Keys evicted to stay under `maxmemory`.
    pub evicted_keys: u64,
    /// Keys removed because their TTL passed.
    pub expired_keys: u64,
    /// The server's version.
    pub redis_version: String,
    /// Servers the figures come from (more than one for a Cluster: their primaries, summed).
    pub nodes: u32,
    /// Servers among them without `maxmemory`.
    nodes_without_maxmemory: u32,
}

impl RedisStats {
    /// `keyspace_hits / (keyspace_hits + keyspace_misses)`; 0 before any lookup.
    pub fn hit_rate(&self) -> f64 {
        let total = self.keyspace_hits + self.keyspace_misses;
        if total == 0 {
            0.0
        } else {
            self.keyspace_hits as f64 / total as f64
        }
    }

    /// True when Redis makes room for new entries once full: every server has a
    /// `maxmemory` and a policy other than `noeviction`.
    pub fn evicts_when_full(&self) -> bool {
        self.nodes_without_maxmemory == 0
            && self.maxmemory > 0
            && !self.maxmemory_policy.contains("noeviction")
    }

    /// Read the figures out of `INFO` text (one server's, or several concatenated).
    pub(crate) fn parse_info(text: &str) -> RedisStats {
        let mut s = RedisStats::default();
        let mut policies: Vec<&str> = Vec::new();
        let mut human = "";
        for line in text.lines() {
            let Some((field, value)) = line.trim_end().split_once(':') else {
                continue;
            };
            let number = || value.parse::<u64>().unwrap_or(0);
            match field {
                "redis_version" => {
                    s.nodes += 1;
                    if s.redis_version.is_empty() {
                        s.redis_version = value.to_string();
                    }
                }
                "used_memory" => s.used_memory += number(),
                "used_memory_human" => human = value,
                "maxmemory" => {
                    let bytes = number();
                    s.maxmemory += bytes;
                    if bytes == 0 {
                        s.nodes_without_maxmemory += 1;
                    }
                }
                "maxmemory_policy" if !policies.contains(&value) => policies.push(value),
                "keyspace_hits" => s.keyspace_hits += number(),
                "keyspace_misses" => s.keyspace_misses += number(),
                "evicted_keys" => s.evicted_keys += number(),
                "expired_keys" => s.expired_keys += number(),
                db if db.starts_with("db") && db[2..].bytes().all(|b| b.is_ascii_digit()) => {
                    // db0:keys=3,expires=3,avg_ttl=86399000,subexpiry=0
                    let keys = value
                        .split(',')
                        .find_map(|kv| kv.strip_prefix("keys="))
                        .and_then(|n| n.parse::<u64>().ok());
                    s.db_keys += keys.unwrap_or(0);
                }
                _ => {}
            }
        }
        s.maxmemory_policy = policies.join(",");
        s.used_memory_human = if s.nodes <= 1 && !human.is_empty() {
            human.to_string()
        } else {
            human_bytes(s.used_memory)
        };
        s
    }
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.2}{}", UNITS[unit])
    }
}

fn stats_error(l2: &Guarded, what: &str, why: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Redis,
        format!(
            "redis_stats: {what} at {} failed: {}",
            l2.describe(),
            redact_urls_in(&why.to_string())
        ),
    )
}

/// `what` (one step of the stats) under the stats deadline, its failure named.
async fn within<T>(
    l2: &Guarded,
    what: &str,
    step: impl Future<Output = std::result::Result<T, L2Error>>,
) -> Result<T> {
    match tokio::time::timeout(STATS_DEADLINE, step).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(stats_error(l2, what, e)),
        Err(_) => Err(stats_error(l2, what, "no answer within 5 s")),
    }
}

impl<V> TieredCache<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// What Redis says about itself, and how many keys the cache has there, counted with
    /// `SCAN` looking at [`DEFAULT_SCAN_LIMIT`] keys at most. Bypasses the breaker; each
    /// step is bounded (5 s). Errors when the cache is L1-only or Redis does not answer.
    pub async fn redis_stats(&self) -> Result<RedisStats> {
        self.redis_stats_scanning(DEFAULT_SCAN_LIMIT).await
    }

    /// [`redis_stats`](Self::redis_stats), looking at about `limit` keys at most to count
    /// the cache's (`SCAN ... COUNT 1000`, so `limit / 1000` round trips).
    pub async fn redis_stats_scanning(&self, limit: u64) -> Result<RedisStats> {
        let (Some(l2), keyspace) = self.l2_parts() else {
            return Err(Error::config(
                "redis",
                "not configured: this cache is L1-only, there are no Redis statistics",
            ));
        };
        let store = l2.store();
        let mut stats = RedisStats::parse_info(&within(l2, "INFO", store.info()).await?);
        // Each kind with its own exact pattern: a pattern of this prefix never matches a
        // name of another cache's prefix (see keyspace.rs).
        let marker_len = Some(crate::lease::MARKER_LEN);
        let pattern = keyspace.entry_pattern();
        let count = store.count_keys(&pattern, limit, marker_len);
        let entries = within(l2, "SCAN", count).await?;
        stats.keys = entries.keys - entries.markers;
        stats.leases = entries.markers;
        stats.keys_exact = entries.complete;
        let generations = &keyspace.generations();
        let exists = move |mut c: Connection| async move {
            redis::Cmd::exists(generations).query_async(&mut c).await
        };
        let exists = store.run(Some(generations), exists);
        stats.generations_key = within(l2, "EXISTS", exists).await?;
        Ok(stats)
    }
}

/// After connecting, read `INFO` once and warn when Redis would refuse cache writes once full
/// (no `maxmemory`, or the `noeviction` policy). In the background: `build()` never waits for
/// it, and a Redis that is down is retried for a while, then left alone.
pub(crate) fn check_config_in_background(l2: &Arc<Guarded>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let l2: Weak<Guarded> = Arc::downgrade(l2);
    runtime.spawn(async move {
        let mut pause = Duration::from_secs(1);
        for _ in 0..CHECK_ATTEMPTS {
            let Some(store) = l2.upgrade() else {
                return;
            };
            match tokio::time::timeout(STATS_DEADLINE, store.store().info()).await {
                Ok(Ok(text)) => {
                    warn_if_unsafe(&store, &RedisStats::parse_info(&text));
                    return;
                }
                Ok(Err(L2Error::Command(e))) => {
                    // INFO refused (an ACL without +info, a renamed command): nothing to check.
                    tracing::debug!(redis = %store.describe(), error = %redact_urls_in(&e),
                        "cannot read redis INFO: maxmemory settings not checked");
                    return;
                }
                _ => {}
            }
            drop(store);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(60));
        }
    });
}

fn warn_if_unsafe(l2: &Guarded, stats: &RedisStats) {
    if stats.nodes_without_maxmemory > 0 {
        tracing::warn!(
            redis = %l2.describe(),
            "redis has no maxmemory: it grows until the host runs out of memory, or refuses \
             cache writes under noeviction; for a cache set maxmemory and maxmemory-policy volatile-lru (the generations record has no TTL, so it is never evicted)"
        );
    }
    if stats.maxmemory_policy.contains("noeviction") {
        tracing::warn!(
            redis = %l2.describe(),
            maxmemory = stats.maxmemory,
            maxmemory_policy = %stats.maxmemory_policy,
            "redis maxmemory-policy is noeviction: once full it refuses every cache write \
             (counted as l2 command errors); for a cache use volatile-lru"
        );
    }
    tracing::debug!(
        redis = %l2.describe(),
        maxmemory = stats.maxmemory,
        maxmemory_policy = %stats.maxmemory_policy,
        version = %stats.redis_version,
        "redis configuration checked"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "# Server\r\nredis_version:7.0.15\r\n\r\n# Memory\r\nused_memory:1104232\r\n\
        used_memory_human:1.05M\r\nmaxmemory:67108864\r\nmaxmemory_human:64.00M\r\n\
        maxmemory_policy:allkeys-lru\r\n\r\n# Stats\r\nexpired_keys:2\r\nevicted_keys:5\r\n\
        keyspace_hits:30\r\nkeyspace_misses:10\r\n\r\n# Keyspace\r\n\
        db0:keys=12,expires=12,avg_ttl=86390000\r\ndb3:keys=1,expires=0,avg_ttl=0\r\n";

    #[test]
    fn parses_one_server() {
        let s = RedisStats::parse_info(INFO);
        assert_eq!(s.redis_version, "7.0.15");
        assert_eq!(s.used_memory, 1_104_232);
        assert_eq!(s.used_memory_human, "1.05M");
        assert_eq!(s.maxmemory, 64 << 20);
        assert_eq!(s.maxmemory_policy, "allkeys-lru");
        assert_eq!((s.keyspace_hits, s.keyspace_misses), (30, 10));
        assert_eq!((s.evicted_keys, s.expired_keys), (5, 2));
        assert_eq!(s.db_keys, 13);
        assert_eq!(s.nodes, 1);
        assert!((s.hit_rate() - 0.75).abs() < 1e-12);
        assert!(s.evicts_when_full());
    }

    #[test]
    fn sums_several_primaries_and_flags_any_unbounded_one() {
        let other = INFO
            .replace("maxmemory:67108864", "maxmemory:0")
            .replace("allkeys-lru", "noeviction");
        let s = RedisStats::parse_info(&format!("{INFO}{other}"));
        assert_eq!(s.nodes, 2);
        assert_eq!(s.keyspace_hits, 60);
        assert_eq!(s.used_memory, 2 * 1_104_232);
        assert_eq!(s.used_memory_human, "2.11M");
        assert_eq!(s.maxmemory_policy, "allkeys-lru,noeviction");
        assert!(!s.evicts_when_full());
    }

    #[test]
    fn default_server_does_not_evict() {
        let s =
            RedisStats::parse_info("redis_version:7\nmaxmemory:0\nmaxmemory_policy:noeviction\n");
        assert!(!s.evicts_when_full());
        assert_eq!(s.hit_rate(), 0.0);
    }
}
