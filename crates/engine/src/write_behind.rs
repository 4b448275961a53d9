//! Filling the tiers once a value is fetched: L1 now, L2 in the background, bounded in
//! concurrency and in queue length. A write must never block the caller's answer; a write
//! that finds the queue full is dropped and counted, and the lease held for it is still
//! released. The value's `SET` replaces the lease marker in the same key: one round trip
//! writes and releases. Writes run under the background deadline, and their timeouts do not
//! open the breaker (see `Guarded::set_in_background`). `flush()` waits for the queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dashmap::DashMap;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Inner, Writing, duration_ms};
use crate::digest::{Digest, DigestHasherBuilder};
use crate::envelope;
use crate::error::Result;
use crate::l2::Guarded;
use crate::lease::{self, Lease, Outstanding};
use crate::stats::Counters;

/// The background writes under way, per key, each with the flag an invalidation raises;
/// and how many writes are queued or running.
#[derive(Default)]
pub(super) struct PendingWrites(
    DashMap<Digest, Vec<Arc<AtomicBool>>, DigestHasherBuilder>,
    pub(super) Arc<Outstanding>,
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

/// How long a background write that found Redis away keeps trying (see `write_one`).
const WRITE_RETRY_LIMIT: Duration = Duration::from_secs(10);

/// How many writes may be queued or running, per permit of `l2_write_concurrency`.
const QUEUED_PER_PERMIT: usize = 16;

/// The write bound of the cache behind `this` (1 when it is gone).
fn semaphore_size<V>(this: &std::sync::Weak<Inner<V>>) -> usize {
    this.upgrade()
        .map_or(1, |inner| inner.config.l2_write_concurrency.max(1))
}

/// A value in L1 whose L2 write is ready to go: its payload, sealed in its envelope
/// (compression, checksum, signature) by the write itself, off the caller's path.
pub(super) struct Staged<V> {
    digest: Digest,
    value: Arc<V>,
    payload: Vec<u8>,
    created_at_ms: u64,
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
            payload,
            created_at_ms,
            ttl: l2_ttl,
            lease,
        }))
    }

    /// Write to L2 off the caller's path, at most `l2_write_concurrency` writes in flight.
    /// Writes queue for a permit in the background, [`WAVE`] at a time; they are dropped
    /// and counted only when more than [`QUEUED_PER_PERMIT`] times the bound are already
    /// queued or running (a burst of single misses queues like a batch does).
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
        let cap = self
            .config
            .l2_write_concurrency
            .saturating_mul(QUEUED_PER_PERMIT);
        if !self.pending_writes.1.try_add(writes.len(), cap) {
            for write in writes {
                Counters::incr(&self.counters.dropped_writes);
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
        // The count is taken back here, not by the cache: a dropped cache loses its queue.
        let queue = Arc::clone(&self.pending_writes.1);
        tokio::spawn(async move {
            let mut jobs = jobs.into_iter().peekable();
            while jobs.peek().is_some() {
                let wave: Vec<_> = jobs.by_ref().take(WAVE).collect();
                let n = wave.len();
                let want = u32::try_from(n).unwrap_or(u32::MAX);
                let want = want.min(u32::try_from(semaphore_size(&this)).unwrap_or(1));
                let _permits = Arc::clone(&semaphore).acquire_many_owned(want.max(1)).await;
                let writes = wave.into_iter().map(|(done, cancelled, w)| {
                    let (l2, this) = (&l2, &this);
                    async move {
                        let Some(inner) = this.upgrade() else { return };
                        inner.write_one(l2, w, &cancelled, done).await;
                    }
                });
                futures_util::future::join_all(writes).await;
                queue.done(n);
            }
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
    ) {
        let key = self.l2_key(&write.digest);
        let bytes = envelope::encode(
            &write.payload,
            &envelope::Binding::of_key(&key),
            write.created_at_ms,
            duration_ms(write.ttl),
            self.config.compression_threshold,
            &self.config.mac_keys,
        );
        // An invalidation may overtake this write at any point: before it (skip it) or
        // while it is out (its UNLINK may have run first: remove the key again).
        // A write that was not sent (the breaker is open: readers timed out in the same
        // burst) or got no answer in time is tried again, with a backoff, for a while: it
        // is on nobody's path, and the queue bound caps what waits.
        let give_up = tokio::time::Instant::now() + WRITE_RETRY_LIMIT;
        let mut pause = Duration::from_millis(100);
        let wrote = loop {
            if cancelled.load(Ordering::Acquire) {
                break false;
            }
            match l2.set_in_background(&key, bytes.clone(), write.ttl).await {
                Some(wrote) => break wrote,
                None if tokio::time::Instant::now() + pause < give_up => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                None => break false,
            }
        };
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
