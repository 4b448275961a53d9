//! Single-flight across instances. On an L2 miss the flight's leader takes a lease in
//! Redis (`SET {prefix}:{<hex>}.lease token NX PX ttl`, in the entry's Cluster slot) and renews it while it fetches; a
//! flight that finds the lease taken polls L2 with a backoff until the value lands or the
//! lease is gone (released, or expired because its holder died), and then takes the lease
//! itself. A flight that takes a lease looks in L2 once more before it fetches: the lease
//! may be free because its last holder has just written the value. Only the holder releases
//! it (compare-and-delete), after its value is written.
//! With Redis unreachable every step answers "unavailable" at once (guard, breaker) and the
//! flight fetches on its own: single-flight falls back to one per instance, never a stall.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use rand::Rng;
use tokio::time::Instant;

use crate::tiered::l2::Guarded;

/// First and longest pause between two looks at L2 while another instance fetches.
const POLL_MIN: Duration = Duration::from_millis(5);
const POLL_MAX: Duration = Duration::from_millis(100);

/// A lease this instance holds. Dropped without a release (its flight panicked, or was
/// dropped mid-way), it releases itself in the background rather than leave every
/// instance waiting out its TTL.
pub(crate) struct Lease {
    key: String,
    token: String,
    own: Arc<Unreleased>,
    l2: Arc<Guarded>,
    /// False once a release has taken the lease over.
    armed: bool,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        release_later(Lease {
            key: std::mem::take(&mut self.key),
            token: std::mem::take(&mut self.token),
            own: Arc::clone(&self.own),
            l2: Arc::clone(&self.l2),
            armed: false,
        });
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// Lease keys this instance may still hold in Redis: a release it could not confirm yet
/// (retried in the background), or a `SET NX` whose answer never came. Waiting on one of
/// them is waiting on itself: no flight of this instance is fetching that key (it would
/// have been joined, not waited for), so a flight that finds one taken fetches at once.
#[derive(Default)]
pub(crate) struct Unreleased(DashMap<String, usize>);

impl Unreleased {
    /// Whether this instance may hold the lease at `key`.
    pub fn holds(&self, key: &str) -> bool {
        self.0.contains_key(key)
    }

    /// Note `key` until the returned mark drops.
    fn mark(self: &Arc<Self>, key: &str) -> Mark {
        *self.0.entry(key.to_owned()).or_insert(0) += 1;
        Mark {
            own: Arc::clone(self),
            key: key.to_owned(),
        }
    }
}

/// One background release under way; see [`Unreleased`].
struct Mark {
    own: Arc<Unreleased>,
    key: String,
}

impl Drop for Mark {
    fn drop(&mut self) {
        self.own.0.remove_if_mut(&self.key, |_, n| {
            *n -= 1;
            *n == 0
        });
    }
}

/// The outcome of trying to take a lease.
pub(crate) enum Take {
    Held(Lease),
    /// Another flight holds it.
    Taken,
    /// Redis could not say (down, slow, breaker open).
    Unavailable,
}

/// How a wait for another instance's flight ended.
pub(crate) enum Waited<T> {
    /// Its value landed in L2.
    Value(T),
    /// Its lease went away without a value: this flight now holds the lease and fetches.
    Lead(Lease),
    /// Redis went away or the wait ran out: fetch without a lease.
    Alone,
}

pub(crate) async fn take(
    l2: &Arc<Guarded>,
    own: &Arc<Unreleased>,
    key: &str,
    ttl: Duration,
) -> Take {
    let token = format!("{:032x}", rand::rng().random::<u128>());
    let lease = |token| Lease {
        key: key.to_owned(),
        token,
        own: Arc::clone(own),
        l2: Arc::clone(l2),
        armed: true,
    };
    match l2.set_nx(key, &token, ttl).await {
        Some(true) => Take::Held(lease(token)),
        Some(false) => Take::Taken,
        None => {
            // The SET may have landed after the deadline: remove our token, if it is there,
            // so other instances do not wait out a lease nobody holds.
            release_later(lease(token));
            Take::Unavailable
        }
    }
}

/// Run `work` while renewing `lease` every third of its life. A renewal that finds the
/// lease gone (it expired and another instance took it) stops renewing; `work` goes on.
pub(crate) async fn hold<F: Future>(
    l2: &Guarded,
    lease: &Lease,
    ttl: Duration,
    work: F,
) -> F::Output {
    tokio::pin!(work);
    let every = ttl / 3;
    let mut next = Instant::now() + every;
    let mut renewing = true;
    loop {
        tokio::select! {
            out = &mut work => return out,
            () = tokio::time::sleep_until(next), if renewing => {
                next = Instant::now() + every;
                if l2.renew(&lease.key, &lease.token, ttl).await == Some(false) {
                    tracing::debug!(lease = %lease.key, "lease lost while fetching (it expired)");
                    renewing = false;
                }
            }
        }
    }
}

/// Release `lease` in the background (compare-and-delete: never someone else's).
pub(crate) fn release_later(mut lease: Lease) {
    lease.armed = false;
    // Marked before the task starts: a flight right after this must already see it.
    let mark = lease.own.mark(&lease.key);
    tokio::spawn(async move {
        retry_release(&lease).await;
        drop(mark);
    });
}

/// Release now; if Redis could not say (down, slow, breaker open), keep trying in the
/// background, so a lease nobody holds does not make other flights wait out its TTL.
pub(crate) async fn release(mut lease: Lease) {
    if lease.l2.release(&lease.key, &lease.token).await.is_none() {
        release_later(lease);
    } else {
        lease.armed = false;
    }
}

/// How long a background release keeps trying; past it the lease has expired anyway for
/// every TTL but the longest, and those expire on their own.
const RELEASE_RETRY_LIMIT: Duration = Duration::from_secs(60);

pub(crate) async fn release_until_done(mut lease: Lease) {
    lease.armed = false;
    let _mark = lease.own.mark(&lease.key);
    retry_release(&lease).await;
}

async fn retry_release(lease: &Lease) {
    let l2 = &lease.l2;
    let give_up = Instant::now() + RELEASE_RETRY_LIMIT;
    let mut pause = Duration::from_millis(50);
    loop {
        if l2.release(&lease.key, &lease.token).await.is_some() || Instant::now() >= give_up {
            return;
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

/// Wait for the flight holding the lease at `key`: poll `read` (L2) with a backoff; when
/// the lease is free, take it and look once more. Gives up after `limit`.
pub(crate) async fn wait<T, R, Fut>(
    l2: &Arc<Guarded>,
    own: &Arc<Unreleased>,
    key: &str,
    ttl: Duration,
    limit: Duration,
    mut read: R,
) -> Waited<T>
where
    R: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let give_up = Instant::now() + limit;
    let mut pause = POLL_MIN;
    loop {
        let now = Instant::now();
        if now >= give_up {
            return Waited::Alone;
        }
        let jitter = rand::rng().random_range(0..=pause.as_micros() as u64 / 4);
        tokio::time::sleep_until((now + pause + Duration::from_micros(jitter)).min(give_up)).await;
        pause = (pause * 2).min(POLL_MAX);
        if let Some(v) = read().await {
            return Waited::Value(v);
        }
        match take(l2, own, key, ttl).await {
            // Ours, from a release not confirmed yet: nothing to wait for.
            Take::Taken if own.holds(key) => return Waited::Alone,
            Take::Taken => {}
            Take::Unavailable => return Waited::Alone,
            Take::Held(lease) => {
                // The holder writes its value before it releases: look once more.
                return match read().await {
                    Some(v) => {
                        release_later(lease);
                        Waited::Value(v)
                    }
                    None => Waited::Lead(lease),
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_stays_marked_until_its_last_release_ends() {
        let own = Arc::new(Unreleased::default());
        assert!(!own.holds("p:lease:a"));
        let first = own.mark("p:lease:a");
        let second = own.mark("p:lease:a");
        assert!(own.holds("p:lease:a") && !own.holds("p:lease:b"));
        drop(first);
        assert!(own.holds("p:lease:a"), "one release is still under way");
        drop(second);
        assert!(!own.holds("p:lease:a"));
        assert!(own.0.is_empty(), "nothing is left behind");
    }
}
