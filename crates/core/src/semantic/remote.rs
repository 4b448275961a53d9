//! The Redis index, on plain Redis 7.0 (no modules), in keys of its own kind (`v`) beside
//! the cache's entries, with commands of its own run through the cache's guard: per scope,
//! [`TABLES`] tables of bucket hashes (`P:v{S}bT.X`, field = entry digest, value = deadline
//! and sketch, at most `bucket_cap` fields, alive as long as their latest deadline) and one
//! record per entry (`P:v{S}rH`: vector + prompt text, expiring with the answer). All keys
//! of a scope share the hash tag `{S}`: one node, one pipeline. An insert is two round
//! trips (the record, then one script for every bucket); a lookup is two of bounded size
//! (the 104 buckets of [`Sketch::probes`], the in-process index's, then the best `max`
//! records). Any Redis trouble is `None`: the caller skips the semantic lookup.

use std::collections::HashSet;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use super::sketch::{Record, Sketch, TABLES, bucket_value, parse_bucket};
use crate::tiered::digest::{Digest, DigestHasherBuilder};
use crate::tiered::now_ms;
use crate::tiered::redis::{self, Cmd, Script};
use crate::tiered::{Guarded, Keyspace};

/// The kind of the index's keys in the cache's key space.
const KIND: char = 'v';

/// Add `ARGV[1]` = `ARGV[2]` to each bucket hash of `KEYS` (one script: the keys share a
/// Cluster slot), whose values all start with a 13-digit deadline in Unix milliseconds
/// ([`bucket_value`]): keep at most `ARGV[3]` fields per hash (dropping those past their
/// deadline `ARGV[4]` first, then those with the earliest), and keep each hash alive as
/// long as its latest deadline (`PEXPIRE NX`, then `GT`: Redis 7.0; no per-field expiry
/// needed).
static HSET_CAPPED: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cap = tonumber(ARGV[3])
local now = tonumber(ARGV[4])
for _, key in ipairs(KEYS) do
  redis.call('hset', key, ARGV[1], ARGV[2])
  if redis.call('hlen', key) > cap then
    local all = redis.call('hgetall', key)
    local live = {}
    for i = 1, #all, 2 do
      local deadline = tonumber(string.sub(all[i + 1], 1, 13)) or 0
      if deadline <= now then
        redis.call('hdel', key, all[i])
      else
        live[#live + 1] = {all[i], deadline}
      end
    end
    if #live > cap then
      table.sort(live, function(a, b) return a[2] < b[2] end)
      for i = 1, #live - cap do
        redis.call('hdel', key, live[i][1])
      end
    end
  end
  redis.call('pexpire', key, ARGV[5], 'NX')
  redis.call('pexpire', key, ARGV[5], 'GT')
end
return 1",
    )
});

/// The Redis index of one cache.
#[derive(Clone)]
pub(crate) struct RemoteIndex {
    l2: Arc<Guarded>,
    keyspace: Keyspace,
    bucket_cap: usize,
}

impl RemoteIndex {
    pub(crate) fn new(l2: Arc<Guarded>, keyspace: Keyspace, bucket_cap: usize) -> Self {
        RemoteIndex {
            l2,
            keyspace,
            bucket_cap: bucket_cap.max(1),
        }
    }

    /// Index `entry` of `scope` for `ttl` (the answer's own L2 lifetime). False when Redis
    /// did not take all of it (a bucket without its record is dropped at its next read).
    pub(crate) async fn insert(
        &self,
        scope: Digest,
        entry: Digest,
        record: &Record,
        sketch: &Sketch,
        ttl: Duration,
    ) -> bool {
        let key = self.record(&scope, &entry);
        if !self.l2.set(&key, record.encode(), ttl).await {
            return false;
        }
        let now = now_ms();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut script = HSET_CAPPED.prepare_invoke();
        for t in 0..TABLES {
            script.key(self.bucket(&scope, t, sketch.signature(t)));
        }
        script.arg(entry.as_bytes());
        script.arg(bucket_value(now.saturating_add(ttl_ms), sketch));
        script.arg(self.bucket_cap).arg(now).arg(ttl_ms);
        let first = self.bucket(&scope, 0, sketch.signature(0));
        let add = |mut c| async move { script.invoke_async::<i64>(&mut c).await };
        self.l2.run("hset_capped", &first, add).await.is_some()
    }

    /// `P:v{S}rH`: the record of entry `entry` in scope `scope`.
    fn record(&self, scope: &Digest, entry: &Digest) -> String {
        self.keyspace
            .layer_key(KIND, scope, format_args!("r{entry}"))
    }

    /// `P:v{S}bT.X`: bucket `signature` of table `table` of scope `scope`.
    fn bucket(&self, scope: &Digest, table: usize, signature: u32) -> String {
        let suffix = format_args!("b{table}.{signature:x}");
        self.keyspace.layer_key(KIND, scope, suffix)
    }

    /// At most `max` candidates of `scope`, nearest by sketch first (then by digest), with
    /// their records and deadlines: the buckets of [`Sketch::probes`] in one pipeline, then
    /// the best `max` records, exactly as the in-process index ranks. `None` when Redis
    /// did not answer. Expired or orphaned bucket fields are removed in the background.
    pub(crate) async fn lookup(
        &self,
        scope: Digest,
        sketch: &Sketch,
        max: usize,
    ) -> Option<Vec<(Digest, Record, u64)>> {
        let keys: Vec<String> = sketch
            .probes()
            .into_iter()
            .map(|(t, sig)| self.bucket(&scope, t, sig))
            .collect();
        let mut pipe = redis::pipe();
        for key in &keys {
            pipe.cmd("HGETALL").arg(key);
        }
        let hgetall = |mut c| async move { pipe.query_async(&mut c).await };
        let hashes: Vec<Vec<(Vec<u8>, Vec<u8>)>> =
            self.l2.run("hgetall", keys.first()?, hgetall).await?;
        let now = now_ms();
        let mut stale: Vec<(String, Vec<u8>)> = Vec::new();
        let mut ranked: Vec<(u32, Digest, u64, Sketch)> = Vec::new();
        let mut seen: HashSet<Digest, DigestHasherBuilder> =
            HashSet::with_hasher(DigestHasherBuilder);
        for (key, fields) in keys.iter().zip(hashes) {
            for (field, value) in fields {
                match parse_bucket(&field, &value) {
                    Some((d, deadline, s)) if deadline > now => {
                        if seen.insert(d) {
                            ranked.push((s.distance(sketch), d, deadline, s));
                        }
                    }
                    _ => stale.push((key.clone(), field)),
                }
            }
        }
        ranked.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| a.1.as_bytes().cmp(b.1.as_bytes()))
        });
        ranked.truncate(max);
        let record_keys: Vec<String> = ranked
            .iter()
            .map(|(_, d, _, _)| self.record(&scope, d))
            .collect();
        let records: Vec<Option<Vec<u8>>> = match record_keys.first() {
            None => Vec::new(),
            Some(first) => {
                let mget = Cmd::mget(&record_keys);
                let mget = |mut c| async move { mget.query_async(&mut c).await };
                self.l2.run("mget", first, mget).await?
            }
        };
        let mut out = Vec::with_capacity(records.len());
        for ((_, d, deadline, s), bytes) in ranked.iter().zip(records) {
            match bytes.as_deref().and_then(Record::decode) {
                Some(r) => out.push((*d, r, *deadline)),
                // The record expired or was dropped: so go its fields, in its own buckets.
                None => {
                    for t in 0..TABLES {
                        let key = self.bucket(&scope, t, s.signature(t));
                        stale.push((key, d.as_bytes().to_vec()));
                    }
                }
            }
        }
        if !stale.is_empty() {
            let l2 = Arc::clone(&self.l2);
            tokio::spawn(async move {
                for (key, field) in stale {
                    let hdel = Cmd::hdel(&key, field);
                    let hdel = |mut c| async move { hdel.query_async::<()>(&mut c).await };
                    l2.run("hdel", &key, hdel).await;
                }
            });
        }
        Some(out)
    }

    /// Drop `entry` of `scope`: its record now, its bucket fields at their next read.
    pub(crate) async fn remove(&self, scope: Digest, entry: Digest) -> bool {
        self.l2.unlink(&self.record(&scope, &entry)).await
    }
}
