//! Filling the tiers once a value is fetched: L1 now, L2 in the background, bounded in
//! concurrency. A write must never block the caller's answer; a write that cannot run is
//! dropped and counted, and the lease held for it is still released. The value's `SET`
//! replaces the lease marker in the same key: one round trip writes and releases.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Inner, Writing, duration_ms};
use crate::error::Result;
use crate::tiered::digest::{Digest, DigestHasherBuilder};
use crate::tiered::envelope;
use crate::tiered::l2::Guarded;
use crate::tiered::lease::{self, Lease};
use crate::tiered::stats::Counters;

/// The background writes under way, per key, each with the flag an invalidation raises;
/// and how many writes of batches wait for their turn.
#[derive(Default)]
pub(super) struct PendingWrites(
    DashMap<Digest, Vec<Arc<AtomicBool>>, DigestHasherBuilder>,
    AtomicUsize,
);

impl PendingWrites {
    /// A write of `digest` starts: its cancel flag.
    fn start(&self, digest: Digest) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        self.0.entry(digest).or_default().push(Arc::clone(&flag));
        flag
    }

    /// The write with `flag` is over.
    fn finish(&self, digest: &Digest, flag: &Arc<AtomicBool>) {
        self.0.remove_if_mut(digest, |_, flags| {
            flags.retain(|f| !Arc::ptr_eq(f, flag));
            flags.is_empty()
        });
    }

    /// `digest` was invalidated: every write of it under way must not leave it in L2.
    pub(super) fn cancel(&self, digest: &Digest) {
        if let Some((_, flags)) = self.0.remove(digest) {
            for f in flags {
                f.store(true, Ordering::Release);
            }
        }
    }
}

/// How many writes of one batch go out together (the connection pipelines them).
const WAVE: usize = 64;

/// How many batch writes may wait for a permit, per permit of `l2_write_concurrency`.
const QUEUED_PER_PERMIT: usize = 16;

/// The deadline of each write of a batch: ten times the L2 deadline, at least 500 ms. The
/// L2 deadline bounds what Redis adds to a request; a batch's writes are on no request's
/// path, and up to `l2_write_concurrency` of them wait behind each other in the
/// connection, so under a burst the last would pass the request deadline (and trip the
/// breaker) while Redis is healthy.
fn bulk_write_deadline(l2_deadline: Duration) -> Duration {
    (l2_deadline * 10).max(Duration::from_millis(500))
}

/// The write bound of the cache behind `this` (1 when it is gone).
fn semaphore_size<V>(this: &std::sync::Weak<Inner<V>>) -> usize {
    this.upgrade()
        .map_or(1, |inner| inner.config.l2_write_concurrency.max(1))
}

/// A value in L1 whose L2 write is ready to go.
pub(super) struct Staged<V> {
    digest: Digest,
    value: Arc<V>,
    bytes: Vec<u8>,
    ttl: Duration,
    lease: Option<Lease>,
}

/// What staging a value did.
pub(super) enum Stage<V> {
    /// Larger than `max_entry_bytes`: stored nowhere.
    TooLarge,
    /// In L1; there is no L2.
    InMemory,
    /// In L1; its L2 write is ready.
    Write(Staged<V>),
}

impl<V> Inner<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Fill L1 now and L2 in the background. `Ok(false)` when the value is too large.
    pub(super) async fn store(
        self: &Arc<Self>,
        digest: Digest,
        value: &Arc<V>,
        created_at_ms: u64,
        ttl: Option<Duration>,
        lease: &mut Option<Lease>,
    ) -> Result<bool> {
        match self.stage(digest, value, created_at_ms, ttl, lease).await? {
            Stage::TooLarge => Ok(false),
            Stage::InMemory => Ok(true),
            Stage::Write(write) => {
                self.write_behind(vec![write]);
                Ok(true)
            }
        }
    }

    /// Fill L1 now and get the L2 write ready (taking the lease, which the write will
    /// replace).
    pub(super) async fn stage(
        self: &Arc<Self>,
        digest: Digest,
        value: &Arc<V>,
        created_at_ms: u64,
        ttl: Option<Duration>,
        lease: &mut Option<Lease>,
    ) -> Result<Stage<V>> {
        let payload = self.hooks.codec.encode(value)?;
        if payload.len() > self.config.max_entry_bytes {
            Counters::incr(&self.counters.oversized);
            tracing::debug!(
                bytes = payload.len(),
                max = self.config.max_entry_bytes,
                "value larger than max_entry_bytes: served, not stored"
            );
            return Ok(Stage::TooLarge);
        }
        let l2_ttl = ttl.unwrap_or(self.config.l2_ttl);
        let l1_ttl = self.config.l1_ttl.min(l2_ttl);
        let weight = self.hooks.weigh(value, payload.len());
        self.fill_l1(digest, Arc::clone(value), created_at_ms, l1_ttl, weight)
            .await;
        if self.l2.is_none() {
            return Ok(Stage::InMemory);
        }
        let bytes = envelope::encode(
            &payload,
            &envelope::Binding::of_key(&self.l2_key(&digest)),
            created_at_ms,
            duration_ms(l2_ttl),
            self.config.compression_threshold,
            &self.config.mac_keys,
        );
        let lease = lease.take();
        if lease.is_some() {
            self.writing.insert(
                digest,
                Writing {
                    value: Arc::clone(value),
                    created_at_ms,
                    expires_at_ms: created_at_ms.saturating_add(duration_ms(l1_ttl)),
                },
            );
        }
        Ok(Stage::Write(Staged {
            digest,
            value: Arc::clone(value),
            bytes,
            ttl: l2_ttl,
            lease,
        }))
    }

    /// Write to L2 off the caller's path, at most `l2_write_concurrency` writes in flight.
    /// A single value's write takes a permit or, with none free, is dropped and counted.
    /// The writes of a batch (`get_or_fetch_many`) go out [`WAVE`] at a time, each wave
    /// waiting for its permits in the background; they are dropped and counted only when
    /// more than [`QUEUED_PER_PERMIT`] times the bound already wait.
    /// A lease held for a value lives in the same key: the write replaces its marker, so
    /// writing and releasing are one command; a write that fails releases it.
    /// While the lease is held, [`writing`](Self::writing) answers for the value; it lets
    /// go once the value is in L2 or the lease is released (a failed write, its release
    /// retried in the background, must not make this instance's next flight wait on it).
    pub(super) fn write_behind(self: &Arc<Self>, writes: Vec<Staged<V>>) {
        let Some(l2) = &self.l2 else { return };
        if writes.is_empty() {
            return;
        }
        let single = writes.len() == 1;
        let permit = if single {
            Arc::clone(&self.writes).try_acquire_owned().ok()
        } else {
            None
        };
        let queued = &self.pending_writes.1;
        let cap = self
            .config
            .l2_write_concurrency
            .saturating_mul(QUEUED_PER_PERMIT);
        let admitted = if single {
            permit.is_some()
        } else {
            queued
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n + writes.len() <= cap).then_some(n + writes.len())
                })
                .is_ok()
        };
        if !admitted {
            for write in writes {
                Counters::incr(&self.counters.dropped_writes);
                self.counters.exported.l2_dropped_write.increment(1);
                if let Some(lease) = write.lease {
                    let done = self.when_written(write.digest, &write.value);
                    tokio::spawn(async move {
                        lease::release_until_done(lease).await;
                        done();
                    });
                }
            }
            return;
        }
        let jobs: Vec<_> = writes
            .into_iter()
            .map(|w| {
                let cancelled = self.pending_writes.start(w.digest);
                (self.when_written(w.digest, &w.value), cancelled, w)
            })
            .collect();
        let l2 = Arc::clone(l2);
        let this = Arc::downgrade(self);
        let semaphore = Arc::clone(&self.writes);
        tokio::spawn(async move {
            let mut jobs = jobs.into_iter().peekable();
            while jobs.peek().is_some() {
                let wave: Vec<_> = jobs.by_ref().take(WAVE).collect();
                let n = wave.len();
                // A single write holds its permit already; a batch's wave waits for its own.
                let _permits = match &permit {
                    Some(_) => None,
                    None => {
                        let want = u32::try_from(n).unwrap_or(u32::MAX);
                        let want = want.min(u32::try_from(semaphore_size(&this)).unwrap_or(1));
                        Some(Arc::clone(&semaphore).acquire_many_owned(want.max(1)).await)
                    }
                };
                let writes = wave.into_iter().map(|(done, cancelled, w)| {
                    let (l2, this) = (&l2, &this);
                    async move {
                        let Some(inner) = this.upgrade() else { return };
                        let deadline = if single {
                            inner.config.l2_deadline
                        } else {
                            bulk_write_deadline(inner.config.l2_deadline)
                        };
                        inner.write_one(l2, w, &cancelled, done, deadline).await;
                    }
                });
                futures_util::future::join_all(writes).await;
                if permit.is_none()
                    && let Some(inner) = this.upgrade()
                {
                    inner.pending_writes.1.fetch_sub(n, Ordering::Relaxed);
                }
            }
            drop(permit);
        });
    }

    /// What to do once the write of `value` under `digest` is over: drop its
    /// [`writing`](Self::writing) entry (only this write's: a newer one, a refresh, stays).
    fn when_written(
        self: &Arc<Self>,
        digest: Digest,
        value: &Arc<V>,
    ) -> impl FnOnce() + Send + 'static + use<V> {
        let (this, value) = (Arc::downgrade(self), Arc::downgrade(value));
        move || {
            if let Some(this) = this.upgrade() {
                this.writing.remove_if(&digest, |_, w| {
                    std::ptr::eq(Arc::as_ptr(&w.value), value.as_ptr())
                });
            }
        }
    }

    /// One write of [`write_behind`](Self::write_behind).
    async fn write_one(
        &self,
        l2: &Guarded,
        write: Staged<V>,
        cancelled: &Arc<AtomicBool>,
        done: impl FnOnce(),
        deadline: Duration,
    ) {
        let key = self.l2_key(&write.digest);
        // An invalidation may overtake this write at any point: before it (skip it) or
        // while it is out (its UNLINK may have run first: remove the key again).
        let wrote = !cancelled.load(Ordering::Acquire)
            && l2.set_within(&key, write.bytes, write.ttl, deadline).await;
        let overtaken = cancelled.load(Ordering::Acquire);
        if overtaken && wrote {
            l2.unlink(&key).await;
        }
        self.pending_writes.finish(&write.digest, cancelled);
        // Each write is counted once: cancelled, written, or (in the guard) failed.
        if overtaken {
            Counters::incr(&self.counters.l2_writes_cancelled);
        } else if wrote {
            Counters::incr(&self.counters.l2_writes);
        }
        if wrote {
            // The value replaced the lease's marker: written and released in one SET.
            if let Some(lease) = write.lease {
                lease::replaced(lease);
            }
            done();
        } else if let Some(lease) = write.lease {
            lease::release_until_done(lease).await;
            done();
        }
    }
}
