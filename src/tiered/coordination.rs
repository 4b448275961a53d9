//! What lets many instances act as one cache: the lease that makes one instance fetch
//! while the others wait for its value, and the glue to the invalidation channel and the
//! namespace generations. Every step is fail-open: with Redis away an instance fetches on
//! its own and never waits longer than the waiter deadline.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{FetchOptions, Inner, Landed, TieredCache};
use crate::error::{Error, ErrorKind, Result};
use crate::tiered::digest::Digest;
use crate::tiered::invalidation;
use crate::tiered::lease::{self, Lease};

impl<V> TieredCache<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Start listening on the invalidation channel (with Redis, unless turned off).
    pub(super) fn start_invalidation(&self) {
        let inner = &self.inner;
        let Some(l2) = &inner.l2 else { return };
        if !inner.config.topology.invalidation {
            return;
        }
        let weak: std::sync::Weak<Inner<V>> = Arc::downgrade(inner);
        let sink: std::sync::Weak<dyn invalidation::Sink> = weak;
        let task =
            invalidation::spawn_subscriber(Arc::clone(&inner.invalidation), Arc::clone(l2), sink);
        let _ = inner.subscriber.set(task);
    }

    /// Give the invalidation subscription a moment (as `build()` does the connection): wait
    /// until the first attempt succeeds or fails, at most `max(l2_deadline, 200 ms)`.
    pub(crate) async fn settle(&self) {
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
    pub(crate) fn generation(&self, namespace: &str) -> u64 {
        self.inner.invalidation.generation(namespace)
    }

    /// Move `namespace` to a new generation in Redis, announced to every instance in the
    /// same step. Without Redis the bump is local. With Redis unreachable this instance
    /// clears its L1 and the error says the others may not have been reached.
    pub(crate) async fn bump_generation(&self, namespace: &str) -> Result<()> {
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
        if !l2
            .hset_publish(key, namespace.as_bytes(), generation, channel, &message)
            .await
        {
            inner.l1.clear();
            return Err(Error::new(
                ErrorKind::Redis,
                format!(
                    "could not set the namespace's new generation in redis at {}: this instance's L1 was cleared, other instances may still serve the namespace (retry)",
                    l2.describe()
                ),
            ));
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

impl<V> Inner<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// After an L2 miss: `Ok` with the value another instance's flight wrote while this one
    /// waited on its lease, or `Err` to fetch (holding the lease when there is one).
    pub(super) async fn coordinate(
        &self,
        digest: &Digest,
        options: &FetchOptions,
    ) -> std::result::Result<Landed<V>, Option<Lease>> {
        let Some(l2) = self.l2.as_ref().filter(|_| self.config.topology.leases) else {
            return Err(None);
        };
        // Waiting for another instance's value is pointless when L2 cannot be read (the
        // lookup just before counted the refusal).
        if !self.invalidation.serves_l2(|| self.l2_reachable()) {
            return Err(None);
        }
        let key = self.keyspace.lease(digest);
        let ttl = self.config.topology.lease_ttl;
        if options.no_store {
            // Never leads with a lease (it stores nothing for the waiters), but waits for one.
            if l2.exists(&key).await != Some(true) {
                return Err(None);
            }
        } else {
            match lease::take(l2, &self.unreleased, &key, ttl).await {
                // The lease may be free because its last holder just wrote the value.
                lease::Take::Held(held) if !options.refresh => {
                    return match self.read_l2(digest).await {
                        Some(landed) => {
                            lease::release_later(held);
                            Ok(landed)
                        }
                        None => Err(Some(held)),
                    };
                }
                lease::Take::Held(held) => return Err(Some(held)),
                lease::Take::Unavailable => return Err(None),
                // A refresh never takes an answer looked up before it asked.
                lease::Take::Taken if options.refresh => return Err(None),
                lease::Take::Taken => {}
            }
        }
        // Taken by this instance itself, its release not confirmed yet: nobody to wait for.
        if self.unreleased.holds(&key) {
            return Err(None);
        }
        let waited = lease::wait(
            l2,
            &self.unreleased,
            &key,
            ttl,
            self.config.waiter_deadline,
            || self.read_l2(digest),
        )
        .await;
        match waited {
            lease::Waited::Value(landed) => Ok(landed),
            lease::Waited::Lead(held) if options.no_store => {
                lease::release_later(held);
                Err(None)
            }
            lease::Waited::Lead(held) => Err(Some(held)),
            lease::Waited::Alone => Err(None),
        }
    }

    /// Run the fetch, renewing the lease (when held) until it finishes.
    pub(super) async fn fetch_holding<Fut: Future>(
        &self,
        held: Option<&Lease>,
        work: Fut,
    ) -> Fut::Output {
        match (held, &self.l2) {
            (Some(held), Some(l2)) => {
                lease::hold(l2, held, self.config.topology.lease_ttl, work).await
            }
            _ => work.await,
        }
    }

    pub(super) fn release_lease(&self, held: Option<Lease>) {
        if let Some(held) = held {
            lease::release_later(held);
        }
    }
}
