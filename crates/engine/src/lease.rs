//! Single-flight across instances. The lease lives in the entry's own key: the flight's
//! lookup is `SET {prefix}:{<hex>} <marker> NX PX ttl GET`, one command that returns the
//! entry when there is one and otherwise stores this flight's marker (a short value no
//! envelope can be) in its place. So a miss has taken the lease in the same round trip as
//! the lookup, an L2 hit costs the server about what a `GET` does, and the holder's write of
//! the value replaces the marker: writing and releasing are one plain `SET`. The holder
//! renews the marker every third of its life while it fetches (the lease is short, 2 s by
//! default, so a holder that cannot renew, stalled, cut off or killed, loses it within one
//! lease); only the holder deletes it (compare-and-delete, or without EVAL a plain read and
//! delete) when it stores nothing. A waiter also expires a marker that has no expiry and
//! caps one that outlives its lease (see `wait`). A flight that finds another's marker polls
//! the key with a backoff (the same command: it takes the lease when the marker is gone
//! without a value, because its holder died or failed) until the value lands.
//! With Redis unreachable every step answers "unavailable" at once (guard, breaker) and the
//! flight fetches on its own: single-flight falls back to one per instance, never a stall.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use tokio::time::Instant;

use crate::l2::{Guarded, L2Read, LeaseRead};

/// What a lease marker starts with: the envelope's magic and a version byte no envelope
/// uses, so no entry can be read as a marker nor a marker as an entry.
const MARKER_PREFIX: [u8; 5] = *b"LLMC\xfe";
/// A marker: the prefix and 16 random bytes, the holder's token.
pub(crate) const MARKER_LEN: usize = MARKER_PREFIX.len() + 16;

/// Fill `buf` from the operating system's random source. Without one (never on the
/// platforms tokio runs on) the clock and a counter stand in: a marker must only differ
/// from every other holder's, not be secret.
pub(crate) fn random_bytes(buf: &mut [u8]) {
    if getrandom::fill(buf).is_err() {
        use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let seed = crate::now_ms() ^ COUNTER.fetch_add(1, Relaxed).rotate_left(32);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = xxhash_rust::xxh3::xxh3_64_with_seed(&(i as u64).to_le_bytes(), seed) as u8;
        }
    }
}

/// A random `u64`, see [`random_bytes`].
pub(crate) fn random_u64() -> u64 {
    let mut bytes = [0u8; 8];
    random_bytes(&mut bytes);
    u64::from_le_bytes(bytes)
}

/// A new marker, unique to the flight that stores it.
fn new_marker() -> [u8; MARKER_LEN] {
    let mut marker = [0u8; MARKER_LEN];
    marker[..MARKER_PREFIX.len()].copy_from_slice(&MARKER_PREFIX);
    random_bytes(&mut marker[MARKER_PREFIX.len()..]);
    marker
}

/// Whether `bytes`, read from an entry's key, are a lease marker (a flight is fetching it).
pub(crate) fn is_marker(bytes: &[u8]) -> bool {
    bytes.len() == MARKER_LEN && bytes.starts_with(&MARKER_PREFIX)
}

/// First and longest pause between two looks at L2 while another instance fetches.
const POLL_MIN: Duration = Duration::from_millis(5);
const POLL_MAX: Duration = Duration::from_millis(100);

/// A lease this instance holds. Dropped without a release (its flight panicked, or was
/// dropped mid-way), it releases itself in the background rather than leave every
/// instance waiting out its TTL.
pub(crate) struct Lease {
    key: String,
    token: [u8; MARKER_LEN],
    own: Arc<Unreleased>,
    l2: Arc<Guarded>,
    /// False once a release has taken the lease over.
    armed: bool,
}

impl Lease {
    /// No longer this flight's to release: off the list [`close`](Unreleased::held) reads.
    fn disarm(&mut self) {
        if self.armed {
            self.armed = false;
            let token = self.token;
            self.own.held.remove_if(&self.key, |_, t| *t == token);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.disarm();
        if tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        release_later(Lease {
            key: std::mem::take(&mut self.key),
            token: self.token,
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
/// It also lists the leases this instance's flights hold right now, so that `close()` can
/// release them, and counts the background releases under way, so that `flush()` can wait
/// for them.
#[derive(Default)]
pub(crate) struct Unreleased {
    /// Keys with a release under way, and how many.
    releasing: DashMap<String, usize>,
    /// The leases held by this instance's flights (key, token).
    held: DashMap<String, [u8; MARKER_LEN]>,
    /// Background releases under way.
    busy: Outstanding,
}

impl Unreleased {
    /// Whether this instance may hold the lease at `key`.
    pub fn holds(&self, key: &str) -> bool {
        self.releasing.contains_key(key)
    }

    /// The leases this instance's flights hold now (key, token).
    pub fn held(&self) -> Vec<(String, [u8; MARKER_LEN])> {
        self.held
            .iter()
            .map(|e| (e.key().clone(), *e.value()))
            .collect()
    }

    /// Wait until no background release is under way, at most until `deadline`.
    pub async fn releases_done(&self, deadline: Instant) -> bool {
        self.busy.idle_by(deadline).await
    }

    /// Note `key` until the returned mark drops.
    fn mark(self: &Arc<Self>, key: &str) -> Mark {
        self.busy.add(1);
        *self.releasing.entry(key.to_owned()).or_insert(0) += 1;
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
        self.own.releasing.remove_if_mut(&self.key, |_, n| {
            *n -= 1;
            *n == 0
        });
        self.own.busy.done(1);
    }
}

/// How many background jobs are under way, and a signal when none is left (what
/// `flush()` waits on).
#[derive(Default)]
pub(crate) struct Outstanding {
    n: AtomicUsize,
    idle: tokio::sync::Notify,
}

impl Outstanding {
    /// `n` more jobs.
    pub fn add(&self, n: usize) {
        self.n.fetch_add(n, Ordering::AcqRel);
    }

    /// Add `n` jobs unless that makes more than `cap`; false when refused.
    pub fn try_add(&self, n: usize, cap: usize) -> bool {
        self.n
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                (now + n <= cap).then_some(now + n)
            })
            .is_ok()
    }

    /// `n` jobs are over.
    pub fn done(&self, n: usize) {
        if self.n.fetch_sub(n, Ordering::AcqRel) == n {
            self.idle.notify_waiters();
        }
    }

    /// How many jobs are under way.
    pub fn len(&self) -> usize {
        self.n.load(Ordering::Acquire)
    }

    /// Wait until no job is left, at most until `deadline`; whether none is left.
    pub async fn idle_by(&self, deadline: Instant) -> bool {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            // Registered before the check, so a last job ending in between still wakes us.
            notified.as_mut().enable();
            if self.len() == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.len() == 0;
            }
        }
    }
}

/// The outcome of a flight's lookup in L2 (see the module docs).
pub(crate) enum Probe {
    /// The key holds an entry's bytes (to decode: they may be corrupt).
    Found(Vec<u8>),
    /// The key was empty: this flight holds its lease now.
    Held(Lease),
    /// Another flight's marker is there: it is fetching.
    Taken,
    /// The server refused the command (full under `noeviction`, no permission, older than
    /// 7.0): read with a plain `GET`, fetch without a lease.
    Refused,
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

/// Look `key` up, taking its lease when it is empty (one round trip).
pub(crate) async fn probe(
    l2: &Arc<Guarded>,
    own: &Arc<Unreleased>,
    key: &str,
    ttl: Duration,
) -> Probe {
    let token = new_marker();
    let lease = || Lease {
        key: key.to_owned(),
        token,
        own: Arc::clone(own),
        l2: Arc::clone(l2),
        armed: true,
    };
    match l2.get_or_lease(key, &token, ttl).await {
        LeaseRead::Found(bytes) if is_marker(&bytes) => Probe::Taken,
        LeaseRead::Found(bytes) => Probe::Found(bytes),
        LeaseRead::Leased => {
            own.held.insert(key.to_owned(), token);
            Probe::Held(lease())
        }
        LeaseRead::Refused => Probe::Refused,
        LeaseRead::Unavailable => {
            // The SET may have landed after the deadline: remove our marker, if it is there,
            // so other instances do not wait out a lease nobody holds.
            release_later(lease());
            Probe::Unavailable
        }
    }
}

/// Run `work` while renewing every lease in `leases` every third of its life (all in one
/// step, concurrently). A renewal that finds a lease gone (it expired and another instance
/// took it) stops renewing that one; the others and `work` go on.
pub(crate) async fn hold_all<F: Future>(
    l2: &Guarded,
    leases: &[&Lease],
    ttl: Duration,
    work: F,
) -> F::Output {
    if leases.is_empty() {
        return work.await;
    }
    tokio::pin!(work);
    let every = ttl / 3;
    let mut next = Instant::now() + every;
    let mut renewing: Vec<bool> = vec![true; leases.len()];
    loop {
        tokio::select! {
            out = &mut work => return out,
            () = tokio::time::sleep_until(next), if renewing.iter().any(|r| *r) => {
                next = Instant::now() + every;
                let renewals = leases.iter().zip(&renewing).map(|(lease, on)| async move {
                    if *on { l2.renew(&lease.key, &lease.token, ttl).await } else { None }
                });
                let outcomes = futures_util::future::join_all(renewals).await;
                for ((on, outcome), lease) in renewing.iter_mut().zip(outcomes).zip(leases) {
                    if outcome == Some(false) {
                        tracing::debug!(lease = %lease.key, "lease lost while fetching (it expired)");
                        *on = false;
                    }
                }
            }
        }
    }
}

/// Release `lease` in the background (compare-and-delete: never someone else's).
pub(crate) fn release_later(lease: Lease) {
    // Marked before the task starts: a flight right after this must already see it.
    tokio::spawn(release_until_done(lease));
}

/// The value was written over the lease's marker: nothing is left to release.
pub(crate) fn replaced(mut lease: Lease) {
    lease.disarm();
}

/// How long a background release keeps trying; past it the lease has expired anyway for
/// every TTL but the longest, and those expire on their own.
const RELEASE_RETRY_LIMIT: Duration = Duration::from_secs(60);

/// Release `lease`, retrying, until done; marked at once (before the future first runs),
/// so that `flush()` waits for it.
pub(crate) fn release_until_done(mut lease: Lease) -> impl Future<Output = ()> + Send {
    lease.disarm();
    let mark = lease.own.mark(&lease.key);
    async move {
        let l2 = &lease.l2;
        let give_up = Instant::now() + RELEASE_RETRY_LIMIT;
        let mut pause = Duration::from_millis(50);
        while l2.release(&lease.key, &lease.token).await.is_none() && Instant::now() < give_up {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(1));
        }
        drop(mark);
    }
}

/// Wait for the flight whose marker is at `key`, polling with a backoff. With `take`, each
/// poll is the lookup that takes the lease when the key is empty (its holder died or stored
/// nothing): this flight then leads. Without (a no-store flight, which never leads with a
/// lease), a poll is a plain `GET` and an empty key ends the wait. `decode` turns an entry's
/// bytes into a value (`None` when they are corrupt: they were removed, keep polling).
/// Gives up after `limit`.
///
/// A marker no holder keeps alive the way this instance would must not hold it up past
/// one lease: every third of `ttl` while it waits, the waiter gives a marker without an
/// expiry (written by hand, or by something else) 1 ms to live and cuts one that lives
/// longer than `ttl` down to `ttl` (see `commands::expire_stale_marker`).
pub(crate) async fn wait<T, D, Fut>(
    l2: &Arc<Guarded>,
    own: &Arc<Unreleased>,
    key: &str,
    ttl: Duration,
    limit: Duration,
    take: bool,
    mut decode: D,
) -> Waited<T>
where
    D: FnMut(Vec<u8>) -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let give_up = Instant::now() + limit;
    let mut pause = POLL_MIN;
    let mut next_check = Instant::now();
    loop {
        let now = Instant::now();
        if now >= give_up {
            return Waited::Alone;
        }
        let jitter = random_u64() % (pause.as_micros() as u64 / 4 + 1);
        tokio::time::sleep_until((now + pause + Duration::from_micros(jitter)).min(give_up)).await;
        pause = (pause * 2).min(POLL_MAX);
        let found = if take {
            match probe(l2, own, key, ttl).await {
                Probe::Found(bytes) => Some(bytes),
                Probe::Held(lease) => return Waited::Lead(lease),
                // Ours, from a release not confirmed yet: nothing to wait for.
                Probe::Taken if own.holds(key) => return Waited::Alone,
                Probe::Taken => None,
                Probe::Refused | Probe::Unavailable => return Waited::Alone,
            }
        } else {
            match l2.get(key).await {
                L2Read::Hit(bytes) if is_marker(&bytes) => None,
                L2Read::Hit(bytes) => Some(bytes),
                L2Read::Miss | L2Read::Unavailable => return Waited::Alone,
            }
        };
        // Another flight's marker is there: see that it has an end, and poll again.
        let Some(bytes) = found else {
            if Instant::now() >= next_check {
                next_check = Instant::now() + ttl / 3;
                if l2.expire_stale_marker(key, ttl, is_marker).await {
                    pause = POLL_MIN;
                }
            }
            continue;
        };
        if let Some(v) = decode(bytes).await {
            return Waited::Value(v);
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
        assert!(own.releasing.is_empty(), "nothing is left behind");
        assert_eq!(own.busy.len(), 0);
    }
}

#[cfg(test)]
mod marker_tests {
    use super::*;
    use crate::envelope;

    #[test]
    fn markers_are_unique_and_never_entries() {
        let (a, b) = (new_marker(), new_marker());
        assert_ne!(a, b);
        assert!(is_marker(&a) && is_marker(&b));
        // An envelope is longer than a marker and has another version byte.
        const { assert!(MARKER_LEN < envelope::HEADER_LEN) };
        assert_ne!(MARKER_PREFIX[4], envelope::VERSION);
        assert_eq!(MARKER_PREFIX[..4], envelope::MAGIC);
        let d = envelope::Binding::from_bytes([7; 32]);
        let entry = envelope::encode(b"{}", &d, 1, 1000, usize::MAX, &envelope::MacKeys::none());
        assert!(!is_marker(&entry));
        assert!(envelope::decode(&a, &d, &envelope::MacKeys::none()).is_err());
        let mut longer = a.to_vec();
        longer.push(0);
        assert!(!is_marker(&longer) && !is_marker(&a[..MARKER_LEN - 1]));
    }
}
