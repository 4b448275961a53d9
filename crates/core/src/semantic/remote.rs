//! The Redis index, on plain Redis 7.0 (no modules), in keys of its own kind (`v`) beside
//! the cache's entries, with commands of its own run through the cache's guard: per scope,
//! [`TABLES`] tables of bucket strings (`P:v{S}sT.X`: at most `bucket_cap` members of
//! [`MEMBER_BYTES`] each, entry digest, deadline and sketch, alive as long as their latest
//! deadline) and one record per entry (`P:v{S}rH`: vector + prompt text, expiring with the
//! answer), and the scope's generation hash (`P:v{S}g`: the inserts into its buckets, in
//! all and per writer, and a random epoch; an instance that made every insert of the
//! scope and still holds them all in process can leave the buckets unread: see
//! `local.rs`). All keys of a scope
//! share the hash tag `{S}`: one node, one command. An insert is two round trips (the
//! record, then one script for every bucket and the generation); a lookup is one
//! `MGET` of the 240 buckets of [`Sketch::probes`] (the in-process index's), then, only
//! when a member is near enough, one `MGET` of the best `max` records. Any Redis trouble
//! is `None`: the caller skips the semantic lookup.
//!
//! Versions: the first layout kept buckets as hashes (`P:v{S}bT.X`); this one never reads
//! them (its buckets are other keys), so entries indexed before are not found, a miss,
//! until they are indexed again; the old hashes expire with their entries. Records are
//! unchanged.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use super::sketch::{MEMBER_BYTES, Member, Record, Sketch, TABLES, deadline_digits, rank};
use crate::tiered::digest::Digest;
use crate::tiered::now_ms;
use crate::tiered::redis::{Cmd, Script};
use crate::tiered::{Guarded, Keyspace};

/// The kind of the index's keys in the cache's key space.
const KIND: char = 'v';

/// Add the member `ARGV[2]` of entry `ARGV[1]` to each bucket string of `KEYS[2..]` (one
/// script: the keys share a Cluster slot), replacing that entry's member, dropping members
/// past their deadline `ARGV[4]` (13 digits, compared as text), and keeping at most
/// `ARGV[3]` (those with the earliest deadlines go first); each string stays alive as long
/// as its latest deadline (`PEXPIRE NX`, then `GT`: Redis 7.0). Then count the insert in
/// the scope's generation hash `KEYS[1]` (field `n`: every insert; field `ARGV[7]`: this
/// writer's; `e`: its epoch, the random `ARGV[6]` when the hash is created; alive as long
/// as the buckets) and answer `{epoch, 1 if this insert created it in a scope whose
/// buckets held no other member}`.
static BUCKET_ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local size = 77
local cap = tonumber(ARGV[3])
local now = ARGV[4]
local others = false
for k = 2, #KEYS do
  local key = KEYS[k]
  local old = redis.call('get', key)
  local keep = {}
  if old then
    for i = 1, #old - size + 1, size do
      local m = string.sub(old, i, i + size - 1)
      if string.sub(m, 1, 32) ~= ARGV[1] and string.sub(m, 33, 45) > now then
        keep[#keep + 1] = m
      end
    end
  end
  if #keep > 0 then others = true end
  if #keep >= cap then
    table.sort(keep, function(a, b) return string.sub(a, 33, 45) < string.sub(b, 33, 45) end)
    for _ = 1, #keep - cap + 1 do
      table.remove(keep, 1)
    end
  end
  keep[#keep + 1] = ARGV[2]
  redis.call('set', key, table.concat(keep), 'KEEPTTL')
  redis.call('pexpire', key, ARGV[5], 'NX')
  redis.call('pexpire', key, ARGV[5], 'GT')
end
local g = KEYS[1]
local created = 0
if redis.call('exists', g) == 0 then
  redis.call('hset', g, 'e', ARGV[6])
  if not others then created = 1 end
end
local n = tonumber(redis.call('hget', g, 'n') or '0') + 1
local w = tonumber(redis.call('hget', g, ARGV[7]) or '0') + 1
redis.call('hset', g, 'n', string.format('%d', n), ARGV[7], string.format('%d', w))
redis.call('pexpire', g, ARGV[5], 'NX')
redis.call('pexpire', g, ARGV[5], 'GT')
return {redis.call('hget', g, 'e'), created}",
    )
});

/// The generation hash `KEYS[1]` as `{epoch, inserts, writer ARGV[1]'s inserts}` (a script,
/// not `HMGET`: the commands of the documented ACL user, docs/operations.md, suffice).
static GENERATION_READ: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local g = KEYS[1]
return {redis.call('hget', g, 'e'), redis.call('hget', g, 'n'), redis.call('hget', g, ARGV[1])}",
    )
});

/// Drop the members of the entries `ARGV` (and those past the deadline `ARGV[1]`) from
/// each bucket string of `KEYS`; an emptied string goes.
static BUCKET_DROP: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local size = 77
local now = ARGV[1]
local gone = {}
for i = 2, #ARGV do gone[ARGV[i]] = true end
for _, key in ipairs(KEYS) do
  local old = redis.call('get', key)
  if old then
    local keep = {}
    for i = 1, #old - size + 1, size do
      local m = string.sub(old, i, i + size - 1)
      if not gone[string.sub(m, 1, 32)] and string.sub(m, 33, 45) > now then
        keep[#keep + 1] = m
      end
    end
    if #keep == 0 then
      redis.call('del', key)
    elseif #keep * size < #old then
      redis.call('set', key, table.concat(keep), 'KEEPTTL')
    end
  end
end
return 1",
    )
});

/// A scope's generation hash as one writer reads it: its epoch (random, drawn when it was
/// created), the inserts it counts, and how many of them were this writer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Generation {
    pub(crate) epoch: u64,
    pub(crate) inserts: u64,
    pub(crate) own: u64,
}

/// What an insert into the Redis index took: the epoch of the scope's generation hash, and
/// whether this insert created it in a scope with no other member in its buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Inserted {
    pub(crate) epoch: u64,
    pub(crate) created: bool,
}

/// `base` (`P:v{S}`) + `sT.X`: bucket `signature` of table `table` (a lookup names 240 of
/// them: the scope's part is written once).
fn bucket_key(base: &str, table: usize, signature: u32) -> String {
    use std::fmt::Write;
    let mut key = String::with_capacity(base.len() + 8);
    key.push_str(base);
    let _ = write!(key, "s{table}.{signature:x}");
    key
}

/// The Redis index of one cache.
#[derive(Clone)]
pub(crate) struct RemoteIndex {
    l2: Arc<Guarded>,
    keyspace: Keyspace,
    bucket_cap: usize,
    /// This writer's field in the generation hashes: `w` and a random number.
    writer: String,
}

impl RemoteIndex {
    pub(crate) fn new(l2: Arc<Guarded>, keyspace: Keyspace, bucket_cap: usize) -> Self {
        RemoteIndex {
            l2,
            keyspace,
            bucket_cap: bucket_cap.max(1),
            writer: format!("w{:016x}", rand::random::<u64>()),
        }
    }

    /// Index `entry` of `scope` for `ttl` (the answer's own L2 lifetime): the scope's
    /// generation this insert took, or `None` when Redis did not take all of it (a bucket
    /// without its record is dropped at its next read).
    pub(crate) async fn insert(
        &self,
        scope: Digest,
        entry: Digest,
        record: &Record,
        sketch: &Sketch,
        ttl: Duration,
    ) -> Option<Inserted> {
        let key = self.record(&scope, &entry);
        if !self.l2.set(&key, record.encode(), ttl).await {
            return None;
        }
        let now = now_ms();
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let member = Member {
            entry,
            sketch: *sketch,
            deadline_ms: now.saturating_add(ttl_ms),
        };
        let mut script = BUCKET_ADD.prepare_invoke();
        let first = self.generation_key(&scope);
        script.key(&first);
        for t in 0..TABLES {
            script.key(self.bucket(&scope, t, sketch.signature(t)));
        }
        script.arg(entry.as_bytes());
        script.arg(member.to_bytes());
        script
            .arg(self.bucket_cap)
            .arg(deadline_digits(now))
            .arg(ttl_ms)
            .arg(rand::random::<u64>())
            .arg(&self.writer);
        let add = |mut c| async move { script.invoke_async::<(u64, u8)>(&mut c).await };
        let (epoch, created) = self.l2.run("bucket_add", &first, add).await?;
        Some(Inserted {
            epoch,
            created: created == 1,
        })
    }

    /// The scope's generation hash now, in one round trip: `None` when it has none or Redis
    /// did not answer.
    pub(crate) async fn generation(&self, scope: Digest) -> Option<Generation> {
        let key = self.generation_key(&scope);
        let mut read = GENERATION_READ.prepare_invoke();
        read.key(&key).arg(&self.writer);
        let read = |mut c| async move {
            read.invoke_async::<(Option<u64>, Option<u64>, Option<u64>)>(&mut c)
                .await
        };
        let (epoch, inserts, own) = self.l2.run("generation", &key, read).await?;
        Some(Generation {
            epoch: epoch?,
            inserts: inserts?,
            own: own.unwrap_or(0),
        })
    }

    /// `P:v{S}g`: the generation hash of scope `scope`, counting every insert into its
    /// buckets.
    fn generation_key(&self, scope: &Digest) -> String {
        self.keyspace.layer_key(KIND, scope, "g")
    }

    /// `P:v{S}rH`: the record of entry `entry` in scope `scope`.
    fn record(&self, scope: &Digest, entry: &Digest) -> String {
        self.keyspace
            .layer_key(KIND, scope, format_args!("r{entry}"))
    }

    /// `P:v{S}sT.X`: bucket `signature` of table `table` of scope `scope`.
    fn bucket(&self, scope: &Digest, table: usize, signature: u32) -> String {
        bucket_key(&self.keyspace.layer_key(KIND, scope, ""), table, signature)
    }

    /// At most `max` candidates of `scope`, nearest by sketch first (then by digest), with
    /// their records and deadlines: the buckets of [`Sketch::probes`] in one `MGET`, their
    /// live members at most `max_distance` bits from `sketch` ranked by [`rank`] exactly as
    /// the in-process index ranks, then the records of the best `max` in one `MGET` (none
    /// when no member is near enough). `None` when Redis did not answer. Members whose
    /// record is gone are removed in the background.
    pub(crate) async fn lookup(
        &self,
        scope: Digest,
        sketch: &Sketch,
        max_distance: u32,
        max: usize,
    ) -> Option<Vec<(Digest, Record, u64)>> {
        let base = self.keyspace.layer_key(KIND, &scope, "");
        let keys: Vec<String> = sketch
            .probes()
            .into_iter()
            .map(|(t, sig)| bucket_key(&base, t, sig))
            .collect();
        let mget = Cmd::mget(&keys);
        let mget = |mut c| async move { mget.query_async(&mut c).await };
        let buckets: Vec<Option<Vec<u8>>> = self.l2.run("mget", keys.first()?, mget).await?;
        let now = deadline_digits(now_ms());
        let mut found: Vec<(u32, Digest, Member)> = Vec::new();
        for bucket in buckets.iter().flatten() {
            for m in bucket.chunks_exact(MEMBER_BYTES) {
                // Deadline first (as text: 13 digits), then distance, then the rest.
                if m[32..45] <= *now.as_bytes() {
                    continue;
                }
                let Some(s) = Sketch::from_bytes(&m[45..]) else {
                    continue;
                };
                let d = s.distance(sketch);
                if d <= max_distance
                    && let Some(member) = Member::from_bytes(m)
                {
                    found.push((d, member.entry, member));
                }
            }
        }
        rank(&mut found, max);
        let record_keys: Vec<String> = found
            .iter()
            .map(|(_, d, _)| self.record(&scope, d))
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
        let mut gone: Vec<Member> = Vec::new();
        for ((_, d, m), bytes) in found.iter().zip(records) {
            match bytes.as_deref().and_then(Record::decode) {
                Some(r) => out.push((*d, r, m.deadline_ms)),
                // The record expired or was dropped: so goes its member, in its buckets.
                None => gone.push(*m),
            }
        }
        if !gone.is_empty() {
            self.drop_members(scope, gone);
        }
        Some(out)
    }

    /// Remove `members` from their buckets, in the background.
    fn drop_members(&self, scope: Digest, members: Vec<Member>) {
        let mut script = BUCKET_DROP.prepare_invoke();
        let mut keys: Vec<String> = members
            .iter()
            .flat_map(|m| (0..TABLES).map(|t| self.bucket(&scope, t, m.sketch.signature(t))))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        for key in &keys {
            script.key(key);
        }
        script.arg(deadline_digits(now_ms()));
        for m in &members {
            script.arg(m.entry.as_bytes());
        }
        let l2 = Arc::clone(&self.l2);
        tokio::spawn(async move {
            let remove = |mut c| async move { script.invoke_async::<i64>(&mut c).await };
            l2.run("bucket_drop", &keys[0], remove).await;
        });
    }

    /// Drop `entry` of `scope`: its record now, its bucket fields at their next read.
    pub(crate) async fn remove(&self, scope: Digest, entry: Digest) -> bool {
        self.l2.unlink(&self.record(&scope, &entry)).await
    }
}
