//! Single-flight across instances. On an L2 miss the flight's leader takes a lease in
//! Redis (`SET {prefix}:lease:{hex} token NX PX ttl`) and renews it while it fetches; a
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

use rand::Rng;
use tokio::time::Instant;

use crate::digest::Digest;
use crate::l2::Guarded;

/// First and longest pause between two looks at L2 while another instance fetches.
const POLL_MIN: Duration = Duration::from_millis(5);
const POLL_MAX: Duration = Duration::from_millis(100);

/// A lease this instance holds.
#[derive(Debug)]
pub(crate) struct Lease {
    key: String,
    token: String,
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

/// `{prefix}:lease:{hex}`.
pub(crate) fn lease_key(prefix: &str, digest: &Digest) -> String {
    let mut key = String::with_capacity(prefix.len() + 71);
    key.push_str(prefix);
    key.push_str(":lease:");
    key.push_str(&digest.to_hex());
    key
}

pub(crate) async fn take(l2: &Arc<Guarded>, key: &str, ttl: Duration) -> Take {
    let token = format!("{:032x}", rand::rng().random::<u128>());
    match l2.set_nx(key, &token, ttl).await {
        Some(true) => Take::Held(Lease {
            key: key.to_owned(),
            token,
        }),
        Some(false) => Take::Taken,
        None => {
            // The SET may have landed after the deadline: remove our token, if it is there,
            // so other instances do not wait out a lease nobody holds.
            release_later(
                l2,
                Lease {
                    key: key.to_owned(),
                    token,
                },
            );
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
pub(crate) fn release_later(l2: &Arc<Guarded>, lease: Lease) {
    let l2 = Arc::clone(l2);
    tokio::spawn(async move { release_until_done(&l2, lease).await });
}

/// Release now; if Redis could not say (down, slow, breaker open), keep trying in the
/// background, so a lease nobody holds does not make other flights wait out its TTL.
pub(crate) async fn release(l2: &Arc<Guarded>, lease: Lease) {
    if l2.release(&lease.key, &lease.token).await.is_none() {
        release_later(l2, lease);
    }
}

/// How long a background release keeps trying; past it the lease has expired anyway for
/// every TTL but the longest, and those expire on their own.
const RELEASE_RETRY_LIMIT: Duration = Duration::from_secs(60);

pub(crate) async fn release_until_done(l2: &Guarded, lease: Lease) {
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
        match take(l2, key, ttl).await {
            Take::Taken => {}
            Take::Unavailable => return Waited::Alone,
            Take::Held(lease) => {
                // The holder writes its value before it releases: look once more.
                return match read().await {
                    Some(v) => {
                        release_later(l2, lease);
                        Waited::Value(v)
                    }
                    None => Waited::Lead(lease),
                };
            }
        }
    }
}
