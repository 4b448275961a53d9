//! The Redis index, on plain Redis 7.0 (no modules): per scope, [`TABLES`] tables of
//! bucket hashes (`P:v{S}bT.X`, field = entry digest, value = deadline + sketch, at most
//! `bucket_cap` fields, alive as long as their latest deadline) and one record per entry
//! (`P:v{S}rH`: vector + prompt text, expiring with the answer). All keys of a scope share
//! the hash tag `{S}`: one node, one pipeline. An insert is two round trips (the record,
//! then one script for every bucket); a lookup is two of bounded size (the 104 buckets of
//! [`Sketch::probes`], the in-process index's, then the best `max` records). Any Redis trouble is `None`: the caller
//! skips the semantic lookup.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use super::sketch::{Record, Sketch, TABLES, bucket_value, parse_bucket};
use crate::tiered::digest::{Digest, DigestHasherBuilder};
use crate::tiered::keyspace::Keyspace;
use crate::tiered::l2::Guarded;
use crate::tiered::now_ms;

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
        let key = self.keyspace.index_record(&scope, &entry);
        if !self.l2.set(&key, record.encode(), ttl).await {
            return false;
        }
        let deadline = now_ms().saturating_add(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        let value = bucket_value(deadline, sketch);
        let buckets: Vec<String> = (0..TABLES)
            .map(|t| self.keyspace.index_bucket(&scope, t, sketch.signature(t)))
            .collect();
        self.l2
            .hset_capped(&buckets, entry.as_bytes(), &value, self.bucket_cap, ttl)
            .await
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
            .map(|(t, sig)| self.keyspace.index_bucket(&scope, t, sig))
            .collect();
        let hashes = self.l2.hgetall_many(&keys).await?;
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
            .map(|(_, d, _, _)| self.keyspace.index_record(&scope, d))
            .collect();
        let records = if record_keys.is_empty() {
            Vec::new()
        } else {
            self.l2.mget(&record_keys).await?
        };
        let mut out = Vec::with_capacity(records.len());
        for ((_, d, deadline, s), bytes) in ranked.iter().zip(records) {
            match bytes.as_deref().and_then(Record::decode) {
                Some(r) => out.push((*d, r, *deadline)),
                // The record expired or was dropped: so go its fields, in its own buckets.
                None => {
                    for t in 0..TABLES {
                        let key = self.keyspace.index_bucket(&scope, t, s.signature(t));
                        stale.push((key, d.as_bytes().to_vec()));
                    }
                }
            }
        }
        if !stale.is_empty() {
            let l2 = Arc::clone(&self.l2);
            tokio::spawn(async move {
                for (key, field) in stale {
                    l2.hdel(&key, &[field]).await;
                }
            });
        }
        Some(out)
    }

    /// Drop `entry` of `scope`: its record now, its bucket fields at their next read.
    pub(crate) async fn remove(&self, scope: Digest, entry: Digest) -> bool {
        self.l2
            .unlink(&self.keyspace.index_record(&scope, &entry))
            .await
    }
}
