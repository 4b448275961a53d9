//! Stopping in order: `flush()` waits for the writes behind and the lease releases under
//! way; `close()` also stops taking leases and releases those of fetches still running. It
//! must never drop a write nor leave a lease it could release.

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::TieredCache;
use crate::error::{Error, ErrorKind, Result};

impl<V> TieredCache<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Wait until every L2 write queued so far has been sent and answered (or has failed)
    /// and every lease release under way is done, at most `timeout`. The cache keeps
    /// serving meanwhile; writes queued during the wait are waited for too.
    ///
    /// # Errors
    ///
    /// `Timeout` when writes or releases were still pending at the deadline; they go on
    /// in the background.
    pub async fn flush(&self, timeout: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        self.flush_by(deadline).await
    }

    async fn flush_by(&self, deadline: tokio::time::Instant) -> Result<()> {
        let inner = &self.inner;
        let writes = inner.pending_writes.1.idle_by(deadline).await;
        let releases = inner.unreleased.releases_done(deadline).await;
        if writes && releases {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Timeout,
            format!(
                "flush: {} L2 writes still pending at the deadline, lease releases {}",
                inner.pending_writes.1.len(),
                if releases { "done" } else { "still under way" }
            ),
        ))
    }

    /// Stop in order, at most `timeout`: from now on flights take no lease (they fetch
    /// on their own); wait for the pending L2 writes and lease releases as
    /// [`flush`](Self::flush) does; then release the leases this instance's flights still
    /// hold (fetches under way: other instances fetch for themselves at once instead of
    /// waiting for them; their answers are still written when they land). Call it last,
    /// before dropping the cache: requests after it are still answered, without leases.
    ///
    /// Without `close()`, dropping the last clone loses the writes still queued (their
    /// answers stay out of Redis) and leaves the leases of running fetches to expire
    /// within `lease_ttl`; releases already started go on while the runtime runs.
    ///
    /// # Errors
    ///
    /// `Timeout` when writes, releases or held leases were still pending at the deadline.
    pub async fn close(&self, timeout: Duration) -> Result<()> {
        let inner = &self.inner;
        inner
            .closed
            .store(true, std::sync::atomic::Ordering::Release);
        let deadline = tokio::time::Instant::now() + timeout;
        let flushed = self.flush_by(deadline).await;
        let Some(l2) = &inner.l2 else {
            return flushed;
        };
        let held = inner.unreleased.held();
        let releases = held
            .iter()
            .map(|(key, token)| tokio::time::timeout_at(deadline, l2.release(key, token)));
        let unanswered = futures_util::future::join_all(releases)
            .await
            .into_iter()
            .filter(|r| !matches!(r, Ok(Some(_))))
            .count();
        flushed?;
        if unanswered > 0 {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "close: {unanswered} of {} held leases could not be released (they expire within lease_ttl)",
                    held.len()
                ),
            ));
        }
        Ok(())
    }
}
