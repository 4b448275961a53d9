//! What `redis_stats()` and `health()` ask a store: `PING`, `INFO`, and a bounded key count
//! with `SCAN ... MATCH ... COUNT`. Never `KEYS`, never anything that blocks the server for
//! longer than one short `SCAN` step. Each function runs on any async connection: the
//! seam's, or a connection of its own to one Cluster primary.

use redis::RedisResult;
use redis::aio::ConnectionLike;

/// Keys each `SCAN` step asks the server to look at.
pub(crate) const SCAN_COUNT: u64 = 1000;

/// The outcome of a bounded count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct KeyCount {
    /// Keys that matched.
    pub keys: u64,
    /// Of those, keys whose value is exactly as long as a lease marker (counted only when
    /// asked: one `STRLEN` per matched key, pipelined per `SCAN` step).
    pub markers: u64,
    /// True when the scan went round the whole keyspace; false when it stopped at the bound
    /// (then `keys` is a lower bound).
    pub complete: bool,
}

impl KeyCount {
    /// Two nodes' counts together (a Cluster's primaries).
    pub(crate) fn add(self, other: KeyCount) -> KeyCount {
        KeyCount {
            keys: self.keys + other.keys,
            markers: self.markers + other.markers,
            complete: self.complete && other.complete,
        }
    }
}

pub(crate) async fn ping<C: ConnectionLike>(mut c: C) -> RedisResult<()> {
    redis::cmd("PING").query_async::<()>(&mut c).await
}

/// The server's `INFO` (its default sections: server, clients, memory, persistence, stats,
/// replication, cpu, keyspace...).
pub(crate) async fn info<C: ConnectionLike>(mut c: C) -> RedisResult<String> {
    redis::cmd("INFO").query_async::<String>(&mut c).await
}

/// Count the keys matching `pattern`, looking at about `limit` keys at most (`limit /
/// SCAN_COUNT` steps, at least one); with `marker_len`, also those whose value has that
/// length (lease markers among entries: an entry is always longer).
pub(crate) async fn count_keys<C: ConnectionLike>(
    mut c: C,
    pattern: &str,
    limit: u64,
    marker_len: Option<usize>,
) -> RedisResult<KeyCount> {
    let steps = limit.div_ceil(SCAN_COUNT).max(1);
    let mut cursor: u64 = 0;
    let mut count = KeyCount::default();
    for _ in 0..steps {
        let (next, batch): (u64, Vec<Vec<u8>>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async(&mut c)
            .await?;
        count.keys += batch.len() as u64;
        if let Some(len) = marker_len.filter(|_| !batch.is_empty()) {
            let mut pipe = redis::pipe();
            for key in &batch {
                pipe.cmd("STRLEN").arg(key);
            }
            let lengths: Vec<usize> = pipe.query_async(&mut c).await?;
            count.markers += lengths.iter().filter(|&&l| l == len).count() as u64;
        }
        if next == 0 {
            count.complete = true;
            return Ok(count);
        }
        cursor = next;
    }
    Ok(count)
}
