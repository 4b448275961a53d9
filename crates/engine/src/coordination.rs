//! What lets many instances act as one cache: the lease that makes one instance fetch
//! while the others wait for its value, and the glue to the invalidation channel and the
//! namespace generations. Every step is fail-open: with Redis away an instance fetches on
//! its own and never waits longer than the waiter deadline.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{FetchOptions, Inner, Landed, TieredCache, now_ms};
use crate::digest::Digest;
use crate::error::{Error, ErrorKind, Result};
use crate::invalidation;
use crate::l2::{Guarded, L2Read};
use crate::lease::{self, Lease};
use crate::stats::Counters;

impl<V> TieredCache<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Whether L2 lookups send a plain `GET` first now, because more than nine in ten of
    /// the last second's were hits (then a miss costs two round trips before its fetch);
    /// false while misses are common (a miss then costs one: the lookup takes the lease).
    #[doc(hidden)]
    pub fn lookups_get_first(&self) -> bool {
        self.inner.lookups_get_first()
    }

    /// Start listening on the invalidation channel (with Redis, unless turned off).
    pub(super) fn start_invalidation(&self) {
        let inner = &self.inner;
        let Some(l2) = &inner.l2 else { return };
        let weak: std::sync::Weak<Inner<V>> = Arc::downgrade(inner);
        let sink: std::sync::Weak<dyn invalidation::Sink> = weak;
        let (state, l2) = (Arc::clone(&inner.invalidation), Arc::clone(l2));
        // Without a subscription the record is still read, so the keys are the fleet's.
        let task = if inner.config.topology.invalidation {
            invalidation::spawn_subscriber(state, l2, sink)
        } else {
            invalidation::spawn_poller(state, l2, sink)
        };
        let _ = inner.subscriber.set(task);
    }

    /// Give the invalidation subscription a moment (as `build()` does the connection): wait
    /// until the first attempt succeeds or fails, at most `max(l2_deadline, 200 ms)`.
    #[doc(hidden)]
    pub async fn settle(&self) {
        if self.inner.subscriber.get().is_some() {
            let limit = self
                .inner
                .config
                .l2_deadline
                .max(Duration::from_millis(200));
            self.inner.invalidation.wait_first_attempt(limit).await;
        }
    }

    /// Whether this instance is subscribed to the invalidation channel right now and knows
    /// the namespace generations, so that what other instances invalidate leaves its L1
    /// too. False without Redis, while Redis is away, while the generations cannot be read,
    /// and for a moment after the subscription is lost (the instance then resubscribes,
    /// reloads the generations and clears its L1). While false and Redis is partly
    /// reachable, cached entries are served for at most `unsynced_grace`.
    pub fn invalidation_subscribed(&self) -> bool {
        self.inner.invalidation.is_subscribed()
    }

    /// How many times the invalidation subscription was established (1 after start-up;
    /// each loss and return adds one).
    pub fn invalidation_subscriptions(&self) -> u64 {
        self.inner.invalidation.subscriptions()
    }

    /// The generation of `namespace` as this instance knows it: memory only.
    #[inline]
    #[doc(hidden)]
    pub fn generation(&self, namespace: &str) -> u64 {
        self.inner.invalidation.generation(namespace)
    }

    /// Move `namespace` to a new generation in Redis, announced to every instance in the
    /// same step. Without Redis the bump is local. With Redis unreachable this instance
    /// clears its L1 and the error says the others may not have been reached.
    #[doc(hidden)]
    pub async fn bump_generation(&self, namespace: &str) -> Result<()> {
        let inner = &self.inner;
        let state = &inner.invalidation;
        let Some(l2) = &inner.l2 else {
            state.bump_locally(namespace);
            return Ok(());
        };
        let before = state.generation(namespace);
        let generation = invalidation::new_generation();
        let message = invalidation::generation_message(namespace, generation);
        let (key, channel) = (state.generations_key(), state.channel());
        let fresh = invalidation::new_generation();
        let Some(incarnation) = l2
            .hset_publish(
                key,
                namespace.as_bytes(),
                generation,
                channel,
                &message,
                fresh,
            )
            .await
        else {
            inner.l1.clear();
            return Err(Error::new(
                ErrorKind::Redis,
                format!(
                    "could not set the namespace's new generation in redis at {}: this instance's L1 was cleared, other instances may still serve the namespace (retry)",
                    l2.describe()
                ),
            ));
        };
        // The record was lost and recreated (by this bump or another instance): adopt its
        // incarnation now, so this instance stops serving the old key space at once.
        if state.after_bump(incarnation, namespace, generation) {
            inner.l1.clear();
        }
        // Our own subscription applies it in order with any concurrent bump; wait briefly so
        // that this instance has switched when we return. Without one, apply it here.
        if !(state.is_subscribed()
            && state
                .wait_for_change(namespace, before, Duration::from_secs(1))
                .await)
        {
            state.observe(namespace, generation);
        }
        Ok(())
    }
}

impl<V: Send + Sync + 'static> invalidation::Sink for Inner<V> {
    fn forget<'a>(&'a self, digest: &'a Digest) -> futures_util::future::BoxFuture<'a, ()> {
        Box::pin(async move {
            self.l1.remove(digest).await;
            self.writing.remove(digest);
            self.pending_writes.cancel(digest);
            self.inflight.detach(digest);
        })
    }

    fn forget_all(&self) {
        self.l1.clear();
        self.writing.clear();
    }
}

/// How a flight goes on after its lookup missed.
pub(crate) enum Next {
    /// This flight holds the lease (its lookup took it): fetch.
    Held(Lease),
    /// Another flight's lease is there: wait for its value, taking over if it goes away.
    Wait,
    /// Fetch without a lease (leases off, Redis away or refusing, a no-store miss).
    Alone,
    /// Look again, taking the lease if the key is empty (a refresh, which never looked, and
    /// a lookup that found a corrupt entry and removed it).
    Probe,
}

/// How long after a refused lookup-and-lease the lookups use a plain `GET` (one refusal a
/// second at most, so a full or older Redis costs hits no second round trip).
const REFUSED_FOR_MS: u64 = 1_000;

/// Lookups between two retunings below which the mode stays as it is.
const RETUNE_MIN_LOOKUPS: u64 = 64;

/// Which lookup L2 reads use while leases are on. The lookup that takes the lease
/// (`SET NX PX GET`) makes a miss one round trip, but every hit pays for the longer command
/// (about 10 to 20% of raw `GET` throughput on a 2-core machine, against a round trip of
/// client and server work on every miss with `GET` first). So, once a second (with the
/// gauges), the cache looks at the L2 lookups since the last look: when more than
/// nine in ten were hits (and there were at least [`RETUNE_MIN_LOOKUPS`]), lookups send a
/// plain `GET` first and only a miss sends the lookup that takes the lease (two round trips
/// for a miss, hits as cheap as `GET`); otherwise lookups take the lease in the same round
/// trip. A fresh instance starts with the one-round-trip miss.
#[derive(Default)]
pub(crate) struct LookupMode {
    /// True: `GET` first.
    get_first: std::sync::atomic::AtomicBool,
    /// The L2 hits and fetches counted at the last retuning.
    last: std::sync::Mutex<(u64, u64)>,
}

impl<V> Inner<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Whether this flight's lookup may take the lease in the same round trip.
    fn leases_on(&self, options: &FetchOptions) -> bool {
        self.config.topology.leases
            && !options.no_store
            && !self.leases_refused_now()
            && !self.closed.load(Ordering::Acquire)
    }

    /// Whether the server refused the lookup that takes a lease within the last second.
    fn leases_refused_now(&self) -> bool {
        let until = self.lease_refused_until_ms.load(Ordering::Relaxed);
        until != 0 && now_ms() < until
    }

    /// A flight goes on without the lease it wanted, because Redis refuses to take leases.
    fn count_lease_refused(&self) {
        Counters::incr(&self.counters.leases_refused);
    }

    /// The L2 part of a flight's lookup: one round trip. With leases, the lookup is the
    /// command that takes the lease when the entry is missing (see lease.rs).
    pub(super) async fn look_in_l2(
        &self,
        digest: &Digest,
        options: &FetchOptions,
    ) -> Result<Landed<V>, Next> {
        let Some(l2) = &self.l2 else {
            return Err(Next::Alone);
        };
        if !self.l2_readable() {
            return Err(Next::Alone);
        }
        let key = self.l2_key(digest);
        // An invalidation that lands while this read is out must not be undone by it.
        let epoch = self.invalidation.epoch();
        if self.leases_on(options) && !self.lookup_mode.get_first.load(Ordering::Relaxed) {
            return self.take_or_read(l2, digest, &key, epoch, options).await;
        }
        let read = l2.get(&key).await;
        self.after_get(l2, digest, &key, read, epoch, options).await
    }

    /// How a lookup goes on from what a plain `GET` of `key` read (taken at `epoch`; its own,
    /// or its part of a batch's `MGET`): a hit, or how the flight goes on. With leases, a
    /// miss then sends the lookup that takes the lease.
    pub(super) async fn after_get(
        &self,
        l2: &Arc<Guarded>,
        digest: &Digest,
        key: &str,
        read: L2Read,
        epoch: u64,
        options: &FetchOptions,
    ) -> Result<Landed<V>, Next> {
        if self.leases_on(options) {
            return match read {
                L2Read::Hit(bytes) if lease::is_marker(&bytes) => {
                    Err(if self.unreleased.holds(key) {
                        Next::Alone
                    } else {
                        Next::Wait
                    })
                }
                L2Read::Hit(bytes) => self
                    .accept(digest, key, &bytes, epoch)
                    .await
                    .ok_or(Next::Probe),
                L2Read::Unavailable => Err(Next::Alone),
                // Then the lookup that takes the lease (it may find the value landed).
                L2Read::Miss => self.take_or_read(l2, digest, key, epoch, options).await,
            };
        }
        self.without_lease(digest, key, read, epoch, options).await
    }

    /// The lookup that takes the lease when `key` is empty (one round trip); after the
    /// server refused it, a plain `GET` and no lease.
    async fn take_or_read(
        &self,
        l2: &Arc<Guarded>,
        digest: &Digest,
        key: &str,
        epoch: u64,
        options: &FetchOptions,
    ) -> Result<Landed<V>, Next> {
        let ttl = self.config.topology.lease_ttl;
        match lease::probe(l2, &self.unreleased, key, ttl).await {
            lease::Probe::Found(bytes) => {
                return self
                    .accept(digest, key, &bytes, epoch)
                    .await
                    .ok_or(Next::Probe);
            }
            lease::Probe::Held(held) => return Err(Next::Held(held)),
            // Taken by this instance itself, its release not confirmed yet: nobody to
            // wait for.
            lease::Probe::Taken if self.unreleased.holds(key) => return Err(Next::Alone),
            lease::Probe::Taken => return Err(Next::Wait),
            lease::Probe::Unavailable => return Err(Next::Alone),
            lease::Probe::Refused => {
                self.lease_refused_until_ms
                    .store(now_ms() + REFUSED_FOR_MS, Ordering::Relaxed);
            }
        }
        let read = l2.get(key).await;
        self.without_lease(digest, key, read, epoch, options).await
    }

    /// What a plain `GET` read, for a lookup that takes no lease.
    async fn without_lease(
        &self,
        digest: &Digest,
        key: &str,
        read: L2Read,
        epoch: u64,
        options: &FetchOptions,
    ) -> Result<Landed<V>, Next> {
        // Leases wanted but refused: a miss fetches without one, and says so.
        let refused = self.config.topology.leases
            && !options.no_store
            && !self.closed.load(Ordering::Acquire);
        let alone = || {
            if refused {
                self.count_lease_refused();
            }
            Next::Alone
        };
        match read {
            // A no-store flight waits for another's value, but never leads with a lease.
            L2Read::Hit(bytes) if lease::is_marker(&bytes) => {
                if self.config.topology.leases && options.no_store && !self.unreleased.holds(key) {
                    Err(Next::Wait)
                } else {
                    Err(alone())
                }
            }
            L2Read::Hit(bytes) => self
                .accept(digest, key, &bytes, epoch)
                .await
                .ok_or_else(alone),
            L2Read::Miss => Err(alone()),
            L2Read::Unavailable => Err(Next::Alone),
        }
    }

    /// Choose the lookup for the next second from the L2 hits and fetches of the last one
    /// (see [`LookupMode`]). Called by the gauge upkeep, never on a request's path.
    pub(super) fn retune_lookups(&self) {
        if self.l2.is_none() || !self.config.topology.leases {
            return;
        }
        let now = (
            self.counters.l2_hits.load(Ordering::Relaxed),
            self.counters.fetches.load(Ordering::Relaxed),
        );
        let mut last = crate::sync::lock(&self.lookup_mode.last);
        let (hits, misses) = (now.0.saturating_sub(last.0), now.1.saturating_sub(last.1));
        if hits + misses < RETUNE_MIN_LOOKUPS {
            return;
        }
        *last = now;
        let get_first = misses * 10 < hits + misses;
        self.lookup_mode
            .get_first
            .store(get_first, Ordering::Relaxed);
    }

    /// Whether L2 lookups send a plain `GET` first now (hits dominate); see [`LookupMode`].
    pub(super) fn lookups_get_first(&self) -> bool {
        self.lookup_mode.get_first.load(Ordering::Relaxed)
    }

    /// After the lookup missed: `Ok` with the value another instance's flight wrote while
    /// this one waited on its lease, or `Err` to fetch (holding the lease when there is one).
    pub(super) async fn coordinate(
        &self,
        digest: &Digest,
        options: &FetchOptions,
        next: Next,
    ) -> std::result::Result<Landed<V>, Option<Lease>> {
        let next = match next {
            Next::Probe => match self.probe_again(digest, options).await {
                Ok(landed) => return Ok(landed),
                Err(next) => next,
            },
            next => next,
        };
        let l2 = match (next, &self.l2) {
            (Next::Held(held), _) => return Err(Some(held)),
            (Next::Wait, Some(l2)) => l2,
            _ => return Err(None),
        };
        let key = self.l2_key(digest);
        let epoch = self.invalidation.epoch();
        let waited = lease::wait(
            l2,
            &self.unreleased,
            &key,
            self.config.topology.lease_ttl,
            self.config.waiter_deadline,
            !options.no_store,
            |bytes| {
                let key = &key;
                async move { self.accept(digest, key, &bytes, epoch).await }
            },
        )
        .await;
        match waited {
            lease::Waited::Value(landed) => Ok(landed),
            lease::Waited::Lead(held) => Err(Some(held)),
            lease::Waited::Alone => Err(None),
        }
    }

    /// A second look that may take the lease: for a refresh (which ignores what is there)
    /// and after a corrupt entry was removed. Never waits on a refresh's behalf.
    async fn probe_again(
        &self,
        digest: &Digest,
        options: &FetchOptions,
    ) -> Result<Landed<V>, Next> {
        let Some(l2) = &self.l2 else {
            return Err(Next::Alone);
        };
        if !self.leases_on(options) || !self.invalidation.serves_l2(|| self.l2_reachable()) {
            return Err(Next::Alone);
        }
        let key = self.l2_key(digest);
        let epoch = self.invalidation.epoch();
        let ttl = self.config.topology.lease_ttl;
        match lease::probe(l2, &self.unreleased, &key, ttl).await {
            lease::Probe::Held(held) => Err(Next::Held(held)),
            // Written between the two looks.
            lease::Probe::Found(bytes) if !options.refresh => self
                .accept(digest, &key, &bytes, epoch)
                .await
                .ok_or(Next::Alone),
            lease::Probe::Taken if !options.refresh && !self.unreleased.holds(&key) => {
                Err(Next::Wait)
            }
            _ => Err(Next::Alone),
        }
    }

    /// Run the fetch, renewing the leases it holds until it finishes.
    pub(super) async fn fetch_holding<Fut: Future>(
        &self,
        held: &[&Lease],
        work: Fut,
    ) -> Fut::Output {
        match &self.l2 {
            Some(l2) => lease::hold_all(l2, held, self.config.topology.lease_ttl, work).await,
            None => work.await,
        }
    }

    pub(super) fn release_lease(&self, held: Option<Lease>) {
        if let Some(held) = held {
            lease::release_later(held);
        }
    }
}
