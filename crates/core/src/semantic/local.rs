//! The in-process index: per scope, [`TABLES`] tables of locality-sensitive buckets of
//! entry digests, and the records (vector, prompt text, deadline) in a moka cache bounded
//! in bytes. Evicting a record takes it out of its buckets; a bucket holds at most
//! `bucket_cap` digests (the oldest leave first), so a lookup reads a bounded number of
//! candidates whatever the scope's size. Never goes to the network.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use dashmap::DashMap;
use moka::future::Cache;
use moka::notification::RemovalCause;

use super::sketch::{Record, Sketch, TABLES, cosine};
use crate::tiered::digest::{Digest, DigestHasherBuilder};
use crate::tiered::now_ms;

/// One candidate in process.
#[derive(Debug)]
pub(crate) struct LocalRecord {
    pub(crate) record: Record,
    pub(crate) sketch: Sketch,
    pub(crate) deadline_ms: u64,
}

type BucketKey = (Digest, u8, u32);
type Buckets = DashMap<BucketKey, VecDeque<Digest>>;

/// The in-process index (cheap to clone).
#[derive(Clone)]
pub(crate) struct LocalIndex {
    records: Cache<(Digest, Digest), Arc<LocalRecord>>,
    buckets: Arc<Buckets>,
    bucket_cap: usize,
}

impl std::fmt::Debug for LocalIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalIndex")
            .field("records", &self.records.entry_count())
            .field("bytes", &self.records.weighted_size())
            .finish_non_exhaustive()
    }
}

/// What a record costs in process besides its own bytes: its key, moka's structures and
/// its digest in each table's bucket.
const OVERHEAD: usize = 200 + TABLES * 40;

impl LocalIndex {
    pub(crate) fn new(max_bytes: u64, bucket_cap: usize) -> Self {
        let buckets: Arc<Buckets> = Arc::new(DashMap::new());
        let on_evict = Arc::clone(&buckets);
        let records = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_, r: &Arc<LocalRecord>| {
                u32::try_from(r.record.weight() + OVERHEAD).unwrap_or(u32::MAX)
            })
            .eviction_listener(
                move |key: Arc<(Digest, Digest)>, r: Arc<LocalRecord>, cause| {
                    // A record replaced by a newer one of the same entry keeps its buckets.
                    if cause != RemovalCause::Replaced {
                        unbucket(&on_evict, key.0, key.1, &r.sketch);
                    }
                },
            )
            .build();
        LocalIndex {
            records,
            buckets,
            bucket_cap: bucket_cap.max(1),
        }
    }

    /// Index `entry` of `scope` until `deadline_ms`.
    pub(crate) async fn insert(
        &self,
        scope: Digest,
        entry: Digest,
        record: Record,
        deadline_ms: u64,
    ) {
        let sketch = Sketch::of(&record.vector);
        let fresh = !self.records.contains_key(&(scope, entry));
        self.records
            .insert(
                (scope, entry),
                Arc::new(LocalRecord {
                    record,
                    sketch,
                    deadline_ms,
                }),
            )
            .await;
        if !fresh {
            return;
        }
        for t in 0..TABLES {
            let mut bucket = self
                .buckets
                .entry((scope, t as u8, sketch.signature(t)))
                .or_default();
            bucket.push_back(entry);
            if bucket.len() > self.bucket_cap {
                bucket.pop_front();
            }
        }
    }

    /// At most `max` candidates of `scope` at or above `threshold`, best first, with their
    /// cosine: the members of the buckets of [`Sketch::probes`], ranked by sketch distance
    /// (then digest), the best `max` of them re-ranked by exact cosine. The Redis index
    /// reads the same buckets and ranks the same way, so both find the same candidates.
    pub(crate) async fn lookup(
        &self,
        scope: Digest,
        vector: &[f32],
        sketch: &Sketch,
        max: usize,
        threshold: f32,
    ) -> Vec<(Digest, Arc<LocalRecord>, f32)> {
        let mut seen: Vec<Digest> = Vec::new();
        let mut dedup: HashSet<Digest, DigestHasherBuilder> =
            HashSet::with_hasher(DigestHasherBuilder);
        for (t, sig) in sketch.probes() {
            if let Some(bucket) = self.buckets.get(&(scope, t as u8, sig)) {
                seen.extend(bucket.iter().filter(|d| dedup.insert(**d)));
            }
        }
        let now = now_ms();
        let mut ranked: Vec<(u32, Digest, Arc<LocalRecord>)> = Vec::with_capacity(seen.len());
        for d in seen {
            match self.records.get(&(scope, d)).await {
                Some(r) if r.deadline_ms > now => ranked.push((r.sketch.distance(sketch), d, r)),
                Some(_) => self.records.invalidate(&(scope, d)).await,
                None => {}
            }
        }
        ranked.sort_by(|a, b| {
            a.0.cmp(&b.0)
                .then_with(|| a.1.as_bytes().cmp(b.1.as_bytes()))
        });
        let mut out: Vec<(Digest, Arc<LocalRecord>, f32)> = ranked
            .into_iter()
            .take(max)
            .filter_map(|(_, d, r)| {
                let cos = cosine(vector, &r.record.vector);
                (cos >= threshold).then_some((d, r, cos))
            })
            .collect();
        out.sort_by(|a, b| {
            b.2.total_cmp(&a.2)
                .then_with(|| a.0.as_bytes().cmp(b.0.as_bytes()))
        });
        out
    }

    /// Drop `entry` of `scope` (its answer is gone).
    pub(crate) async fn remove(&self, scope: Digest, entry: Digest) {
        self.records.invalidate(&(scope, entry)).await;
    }

    /// Drop every record (the L1 was cleared).
    pub(crate) fn clear(&self) {
        self.records.invalidate_all();
    }

    /// Let moka apply pending evictions.
    #[cfg(test)]
    pub(crate) async fn run_pending_tasks(&self) {
        self.records.run_pending_tasks().await;
    }

    /// Records and their bytes as weighed.
    pub(crate) fn size(&self) -> (u64, u64) {
        (self.records.entry_count(), self.records.weighted_size())
    }
}

fn unbucket(buckets: &Buckets, scope: Digest, entry: Digest, sketch: &Sketch) {
    for t in 0..TABLES {
        let key = (scope, t as u8, sketch.signature(t));
        let empty = match buckets.get_mut(&key) {
            Some(mut b) => {
                b.retain(|d| *d != entry);
                b.is_empty()
            }
            None => false,
        };
        if empty {
            buckets.remove_if(&key, |_, b| b.is_empty());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(v: Vec<f32>, text: &str) -> Record {
        Record {
            vector: v,
            text: text.into(),
            created_ms: now_ms(),
        }
    }

    #[tokio::test]
    async fn finds_its_own_scope_only_and_forgets_what_is_evicted() {
        let index = LocalIndex::new(1 << 20, 64);
        let (s1, s2) = (Digest::of("scope 1"), Digest::of("scope 2"));
        let v: Vec<f32> = (0..32).map(|i| (i as f32 * 0.3).sin()).collect();
        let e = Digest::of("entry");
        index
            .insert(s1, e, record(v.clone(), "q"), now_ms() + 60_000)
            .await;
        let sk = Sketch::of(&v);
        let found = index.lookup(s1, &v, &sk, 4, 0.9).await;
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, e);
        assert!(index.lookup(s2, &v, &sk, 4, 0.9).await.is_empty());
        index.remove(s1, e).await;
        index.run_pending_tasks().await;
        assert!(index.lookup(s1, &v, &sk, 4, 0.9).await.is_empty());
        assert!(index.buckets.is_empty(), "buckets emptied on removal");
        // Past its deadline: not a candidate.
        index
            .insert(s1, e, record(v.clone(), "q"), now_ms() - 1)
            .await;
        assert!(index.lookup(s1, &v, &sk, 4, 0.9).await.is_empty());
    }

    #[tokio::test]
    async fn stays_within_its_bytes() {
        let index = LocalIndex::new(200_000, 64);
        let s = Digest::of("scope");
        for i in 0..500u32 {
            let v: Vec<f32> = (0..64).map(|k| ((i * 64 + k) as f32).sin()).collect();
            index
                .insert(
                    s,
                    Digest::of(i.to_le_bytes()),
                    record(v, "text"),
                    now_ms() + 60_000,
                )
                .await;
        }
        index.run_pending_tasks().await;
        let (n, bytes) = index.size();
        assert!(bytes <= 200_000, "{n} records, {bytes} bytes");
        assert!(n > 100);
    }
}
