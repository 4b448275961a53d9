//! Filling the tiers once a value is fetched: L1 now, L2 in the background, bounded in
//! concurrency. A write must never block the caller's answer; a write that cannot run is
//! dropped and counted, and the lease held for it is still released. The value's `SET`
//! replaces the lease marker in the same key: one round trip writes and releases.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// The background writes under way, per key, each with the flag an invalidation raises.
#[derive(Default)]
pub(super) struct PendingWrites(DashMap<Digest, Vec<Arc<AtomicBool>>, DigestHasherBuilder>);

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
        let payload = self.hooks.codec.encode(value)?;
        if payload.len() > self.config.max_entry_bytes {
            Counters::incr(&self.counters.oversized);
            tracing::debug!(
                bytes = payload.len(),
                max = self.config.max_entry_bytes,
                "value larger than max_entry_bytes: served, not stored"
            );
            return Ok(false);
        }
        let l2_ttl = ttl.unwrap_or(self.config.l2_ttl);
        let l1_ttl = self.config.l1_ttl.min(l2_ttl);
        let weight = self.hooks.weigh(value, payload.len());
        self.fill_l1(digest, Arc::clone(value), created_at_ms, l1_ttl, weight)
            .await;
        if let Some(l2) = &self.l2 {
            let bytes = envelope::encode(
                &payload,
                &digest,
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
            self.write_behind(l2, digest, value, bytes, l2_ttl, lease);
        }
        Ok(true)
    }

    /// Write to L2 off the caller's path, bounded in concurrency; a full bound drops the
    /// write and counts it.
    /// A lease held for this value lives in the same key: the write replaces its marker,
    /// so writing and releasing are one command; a write that fails releases it.
    /// While the lease is held, [`writing`](Self::writing) answers for the value; it lets
    /// go once the value is in L2 or the lease is released (a failed write, its release
    /// retried in the background, must not make this instance's next flight wait on it).
    fn write_behind(
        self: &Arc<Self>,
        l2: &Arc<Guarded>,
        digest: Digest,
        value: &Arc<V>,
        bytes: Vec<u8>,
        ttl: Duration,
        lease: Option<Lease>,
    ) {
        let (this, value) = (Arc::downgrade(self), Arc::downgrade(value));
        // Only this write's entry: a newer one (a refresh) stays.
        let done = move || {
            if let Some(this) = this.upgrade() {
                this.writing.remove_if(&digest, |_, w| {
                    std::ptr::eq(Arc::as_ptr(&w.value), value.as_ptr())
                });
            }
        };
        let Ok(permit) = Arc::clone(&self.writes).try_acquire_owned() else {
            Counters::incr(&self.counters.dropped_writes);
            self.counters.exported.l2_dropped_write.increment(1);
            if let Some(lease) = lease {
                tokio::spawn(async move {
                    lease::release_until_done(lease).await;
                    done();
                });
            }
            return;
        };
        let l2 = Arc::clone(l2);
        let counters = Arc::clone(&self.counters);
        let key = self.l2_key(&digest);
        let cancelled = self.pending_writes.start(digest);
        let this = Arc::downgrade(self);
        tokio::spawn(async move {
            // An invalidation may overtake this write at any point: before it (skip it) or
            // while it is out (its UNLINK may have run first: remove the key again).
            let wrote = !cancelled.load(Ordering::Acquire) && l2.set(&key, bytes, ttl).await;
            let overtaken = cancelled.load(Ordering::Acquire);
            if overtaken && wrote {
                l2.unlink(&key).await;
            }
            if let Some(this) = this.upgrade() {
                this.pending_writes.finish(&digest, &cancelled);
            }
            drop(permit);
            // Each write is counted once: cancelled, written, or (in the guard) failed.
            if overtaken {
                Counters::incr(&counters.l2_writes_cancelled);
            } else if wrote {
                Counters::incr(&counters.l2_writes);
            }
            if wrote {
                // The value replaced the lease's marker: written and released in one SET.
                if let Some(lease) = lease {
                    lease::replaced(lease);
                }
                done();
            } else if let Some(lease) = lease {
                lease::release_until_done(lease).await;
                done();
            }
        });
    }
}
