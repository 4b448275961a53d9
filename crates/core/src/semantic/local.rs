//! The in-process index: per scope, [`TABLES`] tables of locality-sensitive buckets of
//! members (entry digest, sketch, deadline: what ranking needs), and the records (vector,
//! prompt text) in a moka cache bounded in bytes. Evicting a record takes it out of its
//! buckets; a bucket holds at most `bucket_cap` members (the oldest leave first), so a
//! lookup ranks a bounded number of candidates whatever the scope's size, and reads the
//! records of the best `max` only. Never goes to the network.
//!
//! Per scope it may also hold a mark: the epoch of the scope's generation hash in Redis
//! (see `remote.rs`) when this instance's own insert created it (a scope new to Redis).
//! While the hash counts no insert but this instance's, and the mark stands, this index
//! holds every entry the Redis index holds (each own insert lands here before Redis counts
//! it), and a lookup can leave the Redis buckets unread. The mark goes whenever a record
//! leaves other than with its Redis counterpart (evicted for bytes, past its in-process
//! deadline, the index cleared), and never comes back for that epoch. Another instance's
//! insert makes the counts differ: every later lookup of the scope reads Redis.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use dashmap::DashMap;
use moka::future::Cache;
use moka::notification::RemovalCause;

use super::remote::{Generation, Inserted};
use super::sketch::{Member, PROBES, Record, Sketch, TABLE_BITS, TABLES, cosine, rank};
use crate::tiered::digest::{Digest, DigestHasherBuilder};
use crate::tiered::now_ms;

/// One candidate in process.
#[derive(Debug)]
pub(crate) struct LocalRecord {
    pub(crate) record: Record,
    pub(crate) sketch: Sketch,
}

/// A scope's buckets, by [`bucket_key`]: one map per scope, so that a lookup's 240 probes
/// are plain map reads under one shard lock, not 240 hashes of the scope's digest.
type ScopeBuckets = HashMap<u32, VecDeque<Member>, BuildHasherDefault<BucketHasher>>;
type Buckets = DashMap<Digest, ScopeBuckets, DigestHasherBuilder>;

/// Table `t`'s bucket `signature` as one number.
fn bucket_key(t: usize, signature: u32) -> u32 {
    ((t as u32) << TABLE_BITS) | signature
}

/// Hashes a [`bucket_key`] with one multiplication: the keys are the hyperplanes' bits,
/// already uniform, and never chosen by a caller of their own.
#[derive(Default)]
struct BucketHasher(u64);

impl Hasher for BucketHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, x: u32) {
        self.0 = (u64::from(x) ^ self.0).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// Per scope, the epoch of the Redis generation hash whose every insert this index holds.
type Marks = DashMap<Digest, u64, DigestHasherBuilder>;

/// The in-process index (cheap to clone).
#[derive(Clone)]
pub(crate) struct LocalIndex {
    records: Cache<(Digest, Digest), Arc<LocalRecord>>,
    buckets: Arc<Buckets>,
    marks: Arc<Marks>,
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
/// its member in each table's bucket.
const OVERHEAD: usize = 200 + TABLES * (std::mem::size_of::<Member>() + 8);

impl LocalIndex {
    pub(crate) fn new(max_bytes: u64, bucket_cap: usize) -> Self {
        let buckets: Arc<Buckets> = Arc::new(DashMap::with_hasher(DigestHasherBuilder));
        let marks: Arc<Marks> = Arc::new(DashMap::with_hasher(DigestHasherBuilder));
        let on_evict = Arc::clone(&buckets);
        let unmark = Arc::clone(&marks);
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
                    // Gone for bytes (Redis may keep it): no longer every entry of Redis.
                    if matches!(cause, RemovalCause::Size | RemovalCause::Expired) {
                        unmark.remove(&key.0);
                    }
                },
            )
            .build();
        LocalIndex {
            records,
            buckets,
            marks,
            bucket_cap: bucket_cap.max(1),
        }
    }

    /// Note that this instance's own insert of an entry of `scope`, already in this index,
    /// was counted in the Redis generation hash `inserted` names.
    pub(crate) fn note_insert(&self, scope: Digest, inserted: Inserted) {
        use dashmap::Entry;
        match self.marks.entry(scope) {
            Entry::Vacant(v) if inserted.created => {
                v.insert(inserted.epoch);
            }
            Entry::Vacant(_) => {}
            // Created again over a mark (Redis lost the hash, maybe with inserts this index
            // never saw), or another epoch: not known.
            Entry::Occupied(o) if inserted.created || *o.get() != inserted.epoch => {
                o.remove();
            }
            Entry::Occupied(_) => {}
        }
    }

    /// Whether this index holds every entry of `scope` that the Redis index holds, by its
    /// generation hash `generation`: same epoch as the mark, every insert this writer's.
    pub(crate) fn holds(&self, scope: &Digest, generation: &Generation) -> bool {
        generation.inserts == generation.own
            && self
                .marks
                .get(scope)
                .is_some_and(|m| *m == generation.epoch)
    }

    /// Whether `scope` has a mark (else reading its generation is no use).
    pub(crate) fn tracks(&self, scope: &Digest) -> bool {
        self.marks.contains_key(scope)
    }

    /// Index `entry` of `scope` (`sketch` is its vector's) until `deadline_ms`.
    pub(crate) async fn insert(
        &self,
        scope: Digest,
        entry: Digest,
        record: Record,
        sketch: Sketch,
        deadline_ms: u64,
    ) {
        let old = self.records.get(&(scope, entry)).await;
        self.records
            .insert((scope, entry), Arc::new(LocalRecord { record, sketch }))
            .await;
        if let Some(old) = old {
            // Replaced: its members go (they may carry another sketch or deadline).
            unbucket(&self.buckets, scope, entry, &old.sketch);
        }
        let member = Member {
            entry,
            sketch,
            deadline_ms,
        };
        let mut scoped = self.buckets.entry(scope).or_default();
        for t in 0..TABLES {
            let bucket = scoped
                .entry(bucket_key(t, sketch.signature(t)))
                .or_default();
            bucket.push_back(member);
            if bucket.len() > self.bucket_cap {
                bucket.pop_front();
            }
        }
    }

    /// At most `max` candidates of `scope` at or above `threshold`, best first, with their
    /// cosine: the live members of the buckets of [`Sketch::probes`] at most
    /// `max_distance` bits from `sketch`, ranked by [`rank`], the records of the best `max`
    /// re-ranked by exact cosine. The Redis index reads the same buckets and ranks the same
    /// way, so both find the same candidates.
    pub(crate) async fn lookup(
        &self,
        scope: Digest,
        vector: &[f32],
        sketch: &Sketch,
        max_distance: u32,
        max: usize,
        threshold: f32,
    ) -> Vec<(Digest, Arc<LocalRecord>, f32)> {
        let now = now_ms();
        let mut found: Vec<(u32, Digest, ())> = Vec::new();
        let mut expired: Vec<Digest> = Vec::new();
        if let Some(scoped) = self.buckets.get(&scope) {
            // Every bucket first, then their members: the map reads do not wait on each
            // other's cache misses (a large scope's buckets are far apart in memory), and
            // most of a lookup's time is those misses.
            let mut buckets = [None; PROBES];
            for (b, (t, sig)) in buckets.iter_mut().zip(sketch.probes()) {
                *b = scoped.get(&bucket_key(t, sig));
            }
            for m in buckets.into_iter().flatten().flatten() {
                if m.deadline_ms <= now {
                    expired.push(m.entry);
                    continue;
                }
                let d = m.sketch.distance(sketch);
                if d <= max_distance {
                    found.push((d, m.entry, ()));
                }
            }
        }
        if !expired.is_empty() {
            // Past the in-process deadline, maybe not Redis's.
            self.marks.remove(&scope);
        }
        for d in expired {
            self.records.invalidate(&(scope, d)).await;
        }
        rank(&mut found, max);
        let mut out: Vec<(Digest, Arc<LocalRecord>, f32)> = Vec::with_capacity(found.len());
        for (_, d, ()) in found {
            match self.records.get(&(scope, d)).await {
                Some(r) => {
                    let cos = cosine(vector, &r.record.vector);
                    if cos >= threshold {
                        out.push((d, r, cos));
                    }
                }
                // Evicted, its eviction not yet applied to the buckets and the mark.
                None => {
                    self.marks.remove(&scope);
                }
            }
        }
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
        self.marks.clear();
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
    let empty = match buckets.get_mut(&scope) {
        Some(mut scoped) => {
            for t in 0..TABLES {
                let key = bucket_key(t, sketch.signature(t));
                if let Some(b) = scoped.get_mut(&key) {
                    b.retain(|m| m.entry != entry);
                    if b.is_empty() {
                        scoped.remove(&key);
                    }
                }
            }
            scoped.is_empty()
        }
        None => false,
    };
    if empty {
        buckets.remove_if(&scope, |_, b| b.is_empty());
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
        let sk = Sketch::of(&v);
        index
            .insert(s1, e, record(v.clone(), "q"), sk, now_ms() + 60_000)
            .await;
        let found = index.lookup(s1, &v, &sk, 256, 4, 0.9).await;
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, e);
        assert!(index.lookup(s2, &v, &sk, 256, 4, 0.9).await.is_empty());
        index.remove(s1, e).await;
        index.run_pending_tasks().await;
        assert!(index.lookup(s1, &v, &sk, 256, 4, 0.9).await.is_empty());
        assert!(index.buckets.is_empty(), "buckets emptied on removal");
        // Past its deadline: not a candidate.
        index
            .insert(s1, e, record(v.clone(), "q"), sk, now_ms() - 1)
            .await;
        assert!(index.lookup(s1, &v, &sk, 256, 4, 0.9).await.is_empty());
        // Replaced with a later deadline: a candidate again, once.
        index
            .insert(s1, e, record(v.clone(), "q"), sk, now_ms() + 60_000)
            .await;
        index.run_pending_tasks().await;
        assert_eq!(index.lookup(s1, &v, &sk, 256, 4, 0.9).await.len(), 1);
        let in_buckets: usize = index
            .buckets
            .iter()
            .map(|s| s.values().map(VecDeque::len).sum::<usize>())
            .sum();
        assert_eq!(in_buckets, TABLES, "one member per table");
    }

    #[tokio::test]
    async fn a_mark_stands_for_its_epoch_while_every_insert_is_its_own() {
        let index = LocalIndex::new(1 << 20, 64);
        let s = Digest::of("scope");
        let g = |epoch, inserts, own| Generation {
            epoch,
            inserts,
            own,
        };
        let ins = |epoch, created| Inserted { epoch, created };
        assert!(!index.holds(&s, &g(7, 1, 1)));
        index.note_insert(s, ins(7, false));
        assert!(!index.tracks(&s), "a hash it did not create: not known");
        index.note_insert(s, ins(7, true));
        assert!(index.holds(&s, &g(7, 2, 2)));
        assert!(!index.holds(&s, &g(7, 3, 2)), "another writer's insert");
        assert!(!index.holds(&s, &g(8, 2, 2)), "another epoch");
        index.note_insert(s, ins(9, false));
        assert!(!index.tracks(&s), "the hash was created again by another");
        index.note_insert(s, ins(9, true));
        index.note_insert(s, ins(10, true));
        assert!(!index.tracks(&s), "created again over a mark");
        index.note_insert(s, ins(11, true));
        index.clear();
        assert!(!index.tracks(&s), "cleared");
        // A member past its in-process deadline in a lookup's buckets: the mark goes.
        let v: Vec<f32> = (0..32).map(|i| (i as f32 * 0.3).sin()).collect();
        let sk = Sketch::of(&v);
        index
            .insert(s, Digest::of("e"), record(v.clone(), "q"), sk, now_ms() - 1)
            .await;
        index.note_insert(s, ins(12, true));
        assert!(index.tracks(&s));
        assert!(index.lookup(s, &v, &sk, 256, 4, 0.9).await.is_empty());
        assert!(!index.tracks(&s), "expired in process");
    }

    #[tokio::test]
    async fn stays_within_its_bytes() {
        let index = LocalIndex::new(200_000, 64);
        let s = Digest::of("scope");
        index.note_insert(
            s,
            Inserted {
                epoch: 1,
                created: true,
            },
        );
        for i in 0..500u32 {
            let v: Vec<f32> = (0..64).map(|k| ((i * 64 + k) as f32).sin()).collect();
            let sk = Sketch::of(&v);
            index
                .insert(
                    s,
                    Digest::of(i.to_le_bytes()),
                    record(v, "text"),
                    sk,
                    now_ms() + 60_000,
                )
                .await;
        }
        index.run_pending_tasks().await;
        let (n, bytes) = index.size();
        assert!(bytes <= 200_000, "{n} records, {bytes} bytes");
        assert!(n > 100);
        assert!(!index.tracks(&s), "evicted for bytes: the mark goes");
    }
}
