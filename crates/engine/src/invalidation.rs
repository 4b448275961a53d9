//! Keeping many instances' L1 honest: what one instance invalidates, every instance drops.
//! Owns the invalidation channel (`{prefix}:invalidate`), the subscriber task that listens
//! on it, and the namespace generations (`{prefix}:generations`, one per namespace, part of
//! every key of that namespace: replacing it orphans the namespace's old entries in every
//! tier at once). It must never make a request wait on Redis: generations are read from
//! memory, and with Redis away the last known ones are used.
//!
//! A generation is a random 64-bit value, not a counter: a counter rolled back by a
//! failover (an increment not yet replicated) would hand out a value some instances already
//! use, and their old entries would come back. Redis sets a generation and announces it in
//! one script, so announcements arrive in the order the generations were set; an instance
//! takes the last one it hears, and on every (re)subscription it reloads them all.
//!
//! The instance is *current* while it is subscribed and has loaded the generations. Each
//! time it becomes current (the first time after start too) it clears its L1 if L1 may
//! hold what an invalidation missed: entries stored while no subscription listened, or
//! held when one was lost. A subscription is kept
//! when the generations cannot be read (a Cluster node down): the read is retried on its
//! own while messages keep arriving.
//!
//! The record has an *incarnation*: a random value stored in it (a field no namespace can
//! name), created with the record (`HSETNX`, by whichever instance finds it missing first)
//! and bound into every key beside the namespace's generation. A record that is lost (a
//! `FLUSHALL`, a `DEL`, eviction, a restart without persistence, a failover that lost the
//! write) is recreated with a new incarnation, so it starts a new key space: a cold cache,
//! never a purged namespace's old entries read as "never invalidated". An instance notices
//! a changed incarnation on each reload, on each (re)subscription, when a bump of its own
//! finds it, and within a second from a periodic check; it then adopts the new one and
//! clears its L1. An instance that does not subscribe still loads the record and checks it
//! (so its keys are the fleet's); a subscription the server refuses (NOPERM) is warned about
//! once and reported by `health()`.
//!
//! While it is not current and Redis is partly reachable (someone may be invalidating),
//! it serves cached entries for at most `unsynced_grace`: an L1 entry no longer than that
//! after it was stored or after the instance stopped being current, whichever is later,
//! and L2 only with loaded generations and within the grace. Generations never loaded are
//! unknown, not 0: L2 is not read until they are. When Redis is wholly away nobody can
//! invalidate, so L1 is kept: it is what keeps the upstream bill down during an outage.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use tokio::time::Instant;

use futures_util::future::BoxFuture;
use sha2::{Digest as _, Sha256};
use tokio::sync::watch;
use tokio_util::task::AbortOnDropHandle;

use crate::digest::Digest;
use crate::keyspace::{INCARNATION_FIELD, Keyspace};
use crate::l2::{Guarded, L2Error};

/// How long connecting and subscribing may take before the subscriber tries again.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Backoff between subscription attempts.
const RETRY_MIN: Duration = Duration::from_millis(20);
const RETRY_MAX: Duration = Duration::from_secs(2);
/// How long loading the generations may take: its own bound, not a request's deadline (a
/// link of 60 ms round trip must still load them; nobody waits on it).
const LOAD_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a current instance checks that the record still has its incarnation.
const CHECK_EVERY: Duration = Duration::from_secs(1);

/// What the subscriber does to the cache it serves.
pub(crate) trait Sink: Send + Sync + 'static {
    /// Drop one digest from L1.
    fn forget<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, ()>;
    /// Drop all of L1.
    fn forget_all(&self);
}

/// The channel, the generations and the subscription state of one cache instance.
pub(crate) struct Invalidation {
    channel: String,
    generations_key: String,
    /// Each bumped namespace's generation, and what keys use: it mixed with the incarnation.
    generations: RwLock<HashMap<String, (u64, u64)>>,
    /// The record's incarnation as last read (0: not read yet, or no Redis). Written under
    /// the `generations` lock, with `base`.
    incarnation: AtomicU64,
    /// What keys of a namespace never bumped use: generation 0 mixed with the incarnation.
    base: AtomicU64,
    /// Asks the subscriber to reload the whole record (a bump found a new incarnation).
    reload: tokio::sync::Notify,
    /// Why the server refuses the subscription (NOPERM), while it does.
    refused: std::sync::Mutex<Option<String>>,
    /// False until some namespace has a generation: the hot path then skips the lock.
    any_generation: AtomicBool,
    /// Bumped whenever a generation changes, for those waiting to see their own bump.
    changes: watch::Sender<u64>,
    /// `None` until the first attempt to subscribe has an outcome; then whether a
    /// subscription is live.
    subscribed: watch::Sender<Option<bool>>,
    /// Subscriptions established so far (the first one included).
    subscriptions: AtomicU64,
    /// Counts invalidations seen here, so an L2 read that was out meanwhile does not put
    /// what it read into L1 (it may be the value just invalidated).
    epoch: AtomicU64,
    /// Whether the generations are known: loaded from Redis at least once, or kept in
    /// memory only (no Redis, or no subscriber).
    loaded: AtomicBool,
    /// Subscribed with the generations loaded: every invalidation reaches this instance.
    current: AtomicBool,
    /// Unix ms at which the instance last stopped being current (start-up included).
    unsynced_since_ms: AtomicU64,
    /// A subscription is established (the generations may not be loaded yet): from then on
    /// every invalidation reaches this instance.
    listening: AtomicBool,
    /// L1 may hold entries that missed an invalidation: stored while nobody listened, or
    /// held when a subscription was lost. Cleared with L1 when the instance becomes current.
    l1_dirty: AtomicBool,
    /// How long cached entries are served while not current; see the module docs.
    grace_ms: u64,
}

impl Invalidation {
    /// `subscriber`: whether a subscriber will keep this instance current; without one the
    /// generations are this instance's own and it is always current.
    pub fn new(keyspace: &Keyspace, subscriber: bool, grace: Duration) -> Self {
        Invalidation {
            channel: keyspace.channel(),
            generations_key: keyspace.generations(),
            generations: RwLock::new(HashMap::new()),
            incarnation: AtomicU64::new(0),
            base: AtomicU64::new(0),
            reload: tokio::sync::Notify::new(),
            refused: std::sync::Mutex::new(None),
            any_generation: AtomicBool::new(false),
            changes: watch::Sender::new(0),
            subscribed: watch::Sender::new(None),
            subscriptions: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            loaded: AtomicBool::new(!subscriber),
            current: AtomicBool::new(!subscriber),
            unsynced_since_ms: AtomicU64::new(crate::now_ms()),
            listening: AtomicBool::new(!subscriber),
            l1_dirty: AtomicBool::new(false),
            grace_ms: u64::try_from(grace.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Whether L2 may be read now: current; or the generations are loaded and the
    /// instance stopped being current less than the grace ago (or Redis is wholly away, when
    /// reads fail anyway). `reachable` is asked only when the instance is not current.
    #[inline]
    pub fn serves_l2(&self, reachable: impl FnOnce() -> bool) -> bool {
        if self.current.load(Ordering::Acquire) {
            return true;
        }
        if !self.loaded.load(Ordering::Acquire) {
            return false;
        }
        let since = self.unsynced_since_ms.load(Ordering::Acquire);
        crate::now_ms().saturating_sub(since) < self.grace_ms || self.wholly_away(reachable)
    }

    /// Whether an L1 entry stored at `stored_at_ms` may be served now.
    #[inline]
    pub fn serves_l1(&self, stored_at_ms: u64, reachable: impl FnOnce() -> bool) -> bool {
        if self.current.load(Ordering::Acquire) {
            return true;
        }
        if self.wholly_away(reachable) {
            return true;
        }
        // Unknown generations: what L1 holds was fetched here (L2 is not read), so it is as
        // fresh as its storing; the grace runs from then.
        let since = self.unsynced_since_ms.load(Ordering::Acquire);
        crate::now_ms().saturating_sub(stored_at_ms.max(since)) < self.grace_ms
    }

    /// Whether nobody can invalidate now: no subscription listens (a live one means some
    /// node answers, whatever the last data operation saw) and Redis did not answer the
    /// last operation.
    fn wholly_away(&self, reachable: impl FnOnce() -> bool) -> bool {
        !self.listening.load(Ordering::Acquire) && !reachable()
    }

    /// An entry is going into L1: note it when no subscription listens.
    #[inline]
    pub fn note_l1_store(&self) {
        if !self.listening.load(Ordering::Acquire) {
            self.l1_dirty.store(true, Ordering::Release);
        }
    }

    /// Clear L1 if it may hold what an invalidation missed, then trust it fully.
    fn become_current(&self, sink: &dyn Sink) {
        if self.l1_dirty.swap(false, Ordering::AcqRel) {
            self.note_invalidation();
            sink.forget_all();
            tracing::debug!(channel = %self.channel, "invalidations current: L1 cleared (it may have missed some)");
        }
        self.current.store(true, Ordering::Release);
    }

    fn stop_being_current(&self) {
        self.listening.store(false, Ordering::Release);
        self.l1_dirty.store(true, Ordering::Release);
        if self.current.swap(false, Ordering::AcqRel) {
            self.unsynced_since_ms
                .store(crate::now_ms(), Ordering::Release);
        }
    }

    /// What the keys of `namespace` are scoped with, as this instance knows it: its
    /// generation mixed with the record's incarnation (0 for a namespace never bumped
    /// while the incarnation is unknown or there is no Redis: keys are the digests).
    #[inline]
    pub fn generation(&self, namespace: &str) -> u64 {
        if !self.any_generation.load(Ordering::Acquire) {
            return self.base.load(Ordering::Acquire);
        }
        let map = crate::sync::read(&self.generations);
        match map.get(namespace) {
            Some(&(_, scoped)) => scoped,
            None => self.base.load(Ordering::Acquire),
        }
    }

    /// The record's incarnation as last read (0 before).
    pub fn incarnation(&self) -> u64 {
        self.incarnation.load(Ordering::Acquire)
    }

    /// Learn that `namespace` is now at `generation`.
    pub fn observe(&self, namespace: &str, generation: u64) {
        let mut map = crate::sync::write(&self.generations);
        let incarnation = self.incarnation.load(Ordering::Acquire);
        map.insert(
            namespace.to_owned(),
            (generation, mixed(incarnation, generation)),
        );
        self.any_generation.store(true, Ordering::Release);
        drop(map);
        self.changes.send_modify(|n| *n += 1);
    }

    /// Take Redis's record as the whole truth (after a (re)subscription, or when the
    /// incarnation changed). `None` when it holds no incarnation (it vanished between
    /// creation and read: load again); else whether it replaced a different one that was
    /// known (L1 then holds the old key space's entries).
    fn replace_all(&self, all: Vec<(Vec<u8>, u64)>) -> Option<bool> {
        let incarnation = all
            .iter()
            .find(|(field, _)| field.as_slice() == INCARNATION_FIELD)
            .map(|&(_, value)| value)
            .filter(|&value| value != 0)?;
        let mut map = crate::sync::write(&self.generations);
        let before = self.incarnation.swap(incarnation, Ordering::AcqRel);
        self.base.store(mixed(incarnation, 0), Ordering::Release);
        map.clear();
        for (namespace, generation) in all {
            if let Ok(ns) = String::from_utf8(namespace) {
                map.insert(ns, (generation, mixed(incarnation, generation)));
            }
        }
        if !map.is_empty() {
            self.any_generation.store(true, Ordering::Release);
        }
        drop(map);
        self.loaded.store(true, Ordering::Release);
        self.changes.send_modify(|n| *n += 1);
        Some(before != 0 && before != incarnation)
    }

    /// A bump of ours set `namespace` to `generation` in a record of `incarnation`. When
    /// that is not the incarnation known here (the record was lost and recreated), adopt it
    /// at once (so this instance stops serving the purged namespace now), ask the
    /// subscriber to reload the rest, and return true: the caller clears L1.
    pub fn after_bump(&self, incarnation: u64, namespace: &str, generation: u64) -> bool {
        if incarnation == 0 || incarnation == self.incarnation() {
            return false;
        }
        let mut map = crate::sync::write(&self.generations);
        self.incarnation.store(incarnation, Ordering::Release);
        self.base.store(mixed(incarnation, 0), Ordering::Release);
        map.clear();
        map.insert(
            namespace.to_owned(),
            (generation, mixed(incarnation, generation)),
        );
        self.any_generation.store(true, Ordering::Release);
        drop(map);
        self.note_invalidation();
        self.changes.send_modify(|n| *n += 1);
        self.reload.notify_one();
        true
    }

    /// Why the server refuses this instance's subscription (NOPERM), while it does.
    pub fn refused(&self) -> Option<String> {
        crate::sync::lock(&self.refused).clone()
    }

    /// Note the server's refusal (or its end). True when this refusal is news to the
    /// process: the first instance subscribing there to hear it (a cache's answers and its
    /// vectors share one channel), so that one WARN is logged, not one per tier or retry.
    fn note_refused(&self, server: &str, why: Option<String>) -> bool {
        static WARNED: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
        let place = format!("{server} {}", self.channel);
        let mut warned = crate::sync::lock(&WARNED);
        let news = match &why {
            Some(_) if !warned.contains(&place) => {
                warned.push(place);
                true
            }
            Some(_) => false,
            None => {
                warned.retain(|p| *p != place);
                false
            }
        };
        *crate::sync::lock(&self.refused) = why;
        news
    }

    /// Move `namespace` to a new generation in this instance only (no Redis).
    pub fn bump_locally(&self, namespace: &str) -> u64 {
        let next = new_generation();
        self.observe(namespace, next);
        next
    }

    /// Wait up to `limit` until `namespace` is no longer at generation `from`.
    pub async fn wait_for_change(&self, namespace: &str, from: u64, limit: Duration) -> bool {
        let mut rx = self.changes.subscribe();
        let changed = async {
            while self.generation(namespace) == from {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(limit, changed).await.is_ok()
    }

    pub fn channel(&self) -> &str {
        &self.channel
    }

    pub fn generations_key(&self) -> &str {
        &self.generations_key
    }

    /// Whether a subscription is live now with the generations loaded (current).
    pub fn is_subscribed(&self) -> bool {
        *self.subscribed.borrow() == Some(true)
    }

    /// Wait up to `limit` for the first attempt to become current to succeed or fail; true
    /// when a subscription is live.
    pub async fn wait_first_attempt(&self, limit: Duration) -> bool {
        let mut rx = self.subscribed.subscribe();
        let _ = tokio::time::timeout(limit, rx.wait_for(Option::is_some)).await;
        self.is_subscribed()
    }

    /// The invalidation epoch: read it before an L2 read, compare after.
    #[inline]
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// An entry is being invalidated here (before it leaves L1).
    pub fn note_invalidation(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
    }

    /// Subscriptions established so far.
    pub fn subscriptions(&self) -> u64 {
        self.subscriptions.load(Ordering::Relaxed)
    }
}

/// A fresh generation: random, never 0 (0 is "never invalidated").
pub(crate) fn new_generation() -> u64 {
    crate::lease::random_u64().max(1)
}

/// `generation` bound to the record's `incarnation`: itself while the incarnation is
/// unknown (0), else 64 bits of the SHA-256 of both (never 0), so that a recreated record,
/// whose namespaces all start again at 0, names none of the old record's keys.
fn mixed(incarnation: u64, generation: u64) -> u64 {
    if incarnation == 0 {
        return generation;
    }
    let mut h = Sha256::new();
    h.update(b"llm-cache/generations-incarnation\0");
    h.update(incarnation.to_be_bytes());
    h.update(generation.to_be_bytes());
    let out: [u8; 32] = h.finalize().into();
    let first: [u8; 8] = out[..8].try_into().expect("a SHA-256 has 32 bytes");
    u64::from_be_bytes(first).max(1)
}

/// `digest` in generation `generation` of its namespace. Generation 0 is the digest
/// itself (keys of namespaces never invalidated do not change); a later one is the SHA-256
/// of a fixed tag, the digest and the generation, which no request digest can equal.
#[doc(hidden)]
pub fn scoped(digest: Digest, generation: u64) -> Digest {
    if generation == 0 {
        return digest;
    }
    let mut h = Sha256::new();
    h.update(b"llm-cache/namespace-generation\0");
    h.update(digest.as_bytes());
    h.update(generation.to_be_bytes());
    Digest::from_bytes(h.finalize().into())
}

/// `k:<hex>`: drop this digest from L1.
pub(crate) fn key_message(digest: &Digest) -> Vec<u8> {
    format!("k:{}", digest.to_hex()).into_bytes()
}

/// `g:<generation>:<namespace>`: the namespace moved to this generation.
pub(crate) fn generation_message(namespace: &str, generation: u64) -> Vec<u8> {
    format!("g:{generation}:{namespace}").into_bytes()
}

enum Message {
    Key(Digest),
    Generation(String, u64),
}

fn parse(msg: &[u8]) -> Option<Message> {
    let text = std::str::from_utf8(msg).ok()?;
    if let Some(hex) = text.strip_prefix("k:") {
        return Digest::from_hex(hex).map(Message::Key);
    }
    let rest = text.strip_prefix("g:")?;
    let (generation, namespace) = rest.split_once(':')?;
    Some(Message::Generation(
        namespace.to_owned(),
        generation.parse().ok()?,
    ))
}

/// For an instance that does not subscribe: load the generations record (so its keys are
/// the fleet's, in the record's incarnation) and check its incarnation once a second,
/// reloading when it changed, for as long as `sink` lives. Bumps made elsewhere are not
/// followed between changes (the instance chose not to hear them).
pub(crate) fn spawn_poller(
    state: Arc<Invalidation>,
    l2: Arc<Guarded>,
    sink: Weak<dyn Sink>,
) -> AbortOnDropHandle<()> {
    AbortOnDropHandle::new(tokio::spawn(async move {
        let mut retry = RETRY_MIN;
        let mut loaded = false;
        while sink.strong_count() > 0 {
            let key = &state.generations_key;
            if loaded {
                tokio::time::sleep(CHECK_EVERY).await;
                let record = l2
                    .load_generations(key, new_generation(), false, LOAD_TIMEOUT)
                    .await;
                loaded =
                    record.is_none_or(|r| r.first().map(|&(_, v)| v) == Some(state.incarnation()));
                continue;
            }
            let record = l2
                .load_generations(key, new_generation(), true, LOAD_TIMEOUT)
                .await;
            match record.and_then(|all| state.replace_all(all)) {
                Some(changed) => {
                    if changed && let Some(sink) = sink.upgrade() {
                        state.note_invalidation();
                        sink.forget_all();
                    }
                    loaded = true;
                    retry = RETRY_MIN;
                }
                None => {
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
            first_attempt_failed(&state);
        }
    }))
}

/// Listen on the channel for as long as `sink` lives, resubscribing with a backoff.
pub(crate) fn spawn_subscriber(
    state: Arc<Invalidation>,
    l2: Arc<Guarded>,
    sink: Weak<dyn Sink>,
) -> AbortOnDropHandle<()> {
    AbortOnDropHandle::new(tokio::spawn(subscribe_forever(state, l2, sink)))
}

async fn subscribe_forever(state: Arc<Invalidation>, l2: Arc<Guarded>, sink: Weak<dyn Sink>) {
    let mut retry = RETRY_MIN;
    while sink.strong_count() > 0 {
        match l2
            .store()
            .subscribe(&state.channel, SUBSCRIBE_TIMEOUT)
            .await
        {
            Ok(mut sub) => {
                retry = RETRY_MIN;
                state.note_refused(l2.describe(), None);
                state.listening.store(true, Ordering::Release);
                state.subscriptions.fetch_add(1, Ordering::Relaxed);
                if listen(&state, &l2, &sink, &mut sub).await.is_break() {
                    return;
                }
                state.stop_being_current();
                state.subscribed.send_replace(Some(false));
                tracing::warn!(channel = %state.channel, "lost the invalidation subscription: resubscribing (L1 is cleared once it is back)");
                // A killed connection is usually refused again at once: retry right away.
                continue;
            }
            Err(L2Error::Command(why)) => {
                // The server is up and says no (NOPERM): say so once, loudly, and keep
                // trying (the ACL may be fixed); health() reports it meanwhile.
                if state.note_refused(l2.describe(), Some(why.clone())) {
                    tracing::warn!(
                        channel = %state.channel, error = %why,
                        "redis refuses the invalidation subscription (NOPERM: the ACL user needs SUBSCRIBE on this channel): invalidations from other instances cannot reach this one, so the cache serves entries for at most unsynced_grace after storing them and does not read L2; health() reports degraded"
                    );
                }
                first_attempt_failed(&state);
            }
            Err(e) => {
                tracing::debug!(error = %e, channel = %state.channel, "cannot subscribe to invalidations yet");
                first_attempt_failed(&state);
            }
        }
        tokio::time::sleep(retry).await;
        retry = (retry * 2).min(RETRY_MAX);
    }
}

/// The first attempt to become current has failed: let `settle` go on.
fn first_attempt_failed(state: &Invalidation) {
    state.subscribed.send_if_modified(|s| {
        let first = s.is_none();
        if first {
            *s = Some(false);
        }
        first
    });
}

/// Serve one subscription until it ends (`Continue`) or the cache is gone (`Break`). The
/// generations are read after subscribing (a bump from then on arrives as a message, every
/// earlier one is in the hash); a failed read is retried with a backoff while messages
/// keep being applied, and the instance becomes current once it succeeds.
async fn listen(
    state: &Invalidation,
    l2: &Guarded,
    sink: &Weak<dyn Sink>,
    sub: &mut super::l2::Subscription,
) -> std::ops::ControlFlow<()> {
    use std::ops::ControlFlow::{Break, Continue};
    let mut loaded = false;
    let mut load_retry = RETRY_MIN;
    let mut next_load = Instant::now();
    let mut next_check = Instant::now() + CHECK_EVERY;
    loop {
        let msg = if loaded {
            tokio::select! {
                // The timers first: a busy channel must not starve the check (`next` is
                // cancel-safe, so losing the race costs nothing).
                biased;
                () = state.reload.notified() => {
                    loaded = false;
                    next_load = Instant::now();
                    continue;
                }
                () = tokio::time::sleep_until(next_check) => {
                    next_check = Instant::now() + CHECK_EVERY;
                    let key = &state.generations_key;
                    let fresh = new_generation();
                    if let Some(record) = l2.load_generations(key, fresh, false, LOAD_TIMEOUT).await {
                        let now = record.first().map_or(0, |&(_, value)| value);
                        if now != state.incarnation() {
                            // Lost and recreated (by this check or another instance):
                            // load the new record now.
                            loaded = false;
                            next_load = Instant::now();
                        }
                    }
                    continue;
                }
                msg = sub.next() => msg,
            }
        } else {
            tokio::select! {
                biased;
                () = tokio::time::sleep_until(next_load) => {
                    let loaded_now = l2
                        .load_generations(&state.generations_key, new_generation(), true, LOAD_TIMEOUT)
                        .await;
                    match loaded_now.map(|all| state.replace_all(all)) {
                        Some(Some(changed)) => {
                            let Some(sink) = sink.upgrade() else { return Break(()) };
                            if changed {
                                state.note_invalidation();
                                sink.forget_all();
                                tracing::warn!(
                                    key = %state.generations_key,
                                    "the namespace generations record was lost and recreated (FLUSHALL, DEL, eviction, or a restart or failover that lost it): a new key space starts, L1 cleared; cached answers are fetched again, none invalidated comes back"
                                );
                            }
                            state.become_current(&*sink);
                            state.subscribed.send_replace(Some(true));
                            loaded = true;
                            load_retry = RETRY_MIN;
                            next_check = Instant::now() + CHECK_EVERY;
                            tracing::debug!(channel = %state.channel, "invalidations current: generations loaded");
                        }
                        Some(None) | None => {
                            first_attempt_failed(state);
                            tracing::debug!(key = %state.generations_key, "cannot read the namespace generations yet: retrying, subscription kept");
                            next_load = Instant::now() + load_retry;
                            load_retry = (load_retry * 2).min(RETRY_MAX);
                        }
                    }
                    continue;
                }
                msg = sub.next() => msg,
            }
        };
        let Some(msg) = msg else {
            return Continue(());
        };
        let Some(sink) = sink.upgrade() else {
            return Break(());
        };
        match parse(&msg) {
            Some(Message::Key(digest)) => {
                state.note_invalidation();
                sink.forget(&digest).await;
            }
            Some(Message::Generation(ns, generation)) => state.observe(&ns, generation),
            None => tracing::debug!("ignoring an unknown invalidation message"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let d = Digest::of("x");
        assert!(matches!(parse(&key_message(&d)), Some(Message::Key(got)) if got == d));
        assert!(matches!(
            parse(&generation_message("tenant:42 a", 7)),
            Some(Message::Generation(ns, 7)) if ns == "tenant:42 a"
        ));
        assert!(parse(b"k:zz").is_none());
        assert!(parse(b"g:x:ns").is_none());
        assert!(parse(b"other").is_none());
    }

    #[test]
    fn generation_zero_keeps_the_digest_and_others_change_it() {
        let d = Digest::of("request");
        assert_eq!(scoped(d, 0), d);
        assert_ne!(scoped(d, 1), d);
        assert_ne!(scoped(d, 1), scoped(d, 2));
    }

    #[test]
    fn the_last_generation_heard_wins_and_a_reload_replaces_all() {
        let inv = Invalidation::new(&Keyspace::new("p"), false, Duration::from_secs(5));
        assert_eq!(inv.generation("a"), 0);
        inv.observe("a", 3);
        inv.observe("a", 2);
        assert_eq!(inv.generation("a"), 2);
        let local = inv.bump_locally("a");
        assert!(local != 0 && inv.generation("a") == local);
        assert_eq!(
            inv.replace_all(vec![(b"b".to_vec(), 9)]),
            None,
            "no incarnation"
        );
        let first = vec![(b"b".to_vec(), 9), (INCARNATION_FIELD.to_vec(), 5)];
        assert_eq!(inv.replace_all(first.clone()), Some(false));
        let base = inv.generation("a");
        assert!(base != 0 && base != inv.generation("b"));
        assert_eq!(inv.generation("b"), mixed(5, 9));
        assert_eq!(inv.replace_all(first), Some(false), "same incarnation");
        // A recreated record: every namespace starts again, under keys never used before.
        assert_eq!(
            inv.replace_all(vec![(INCARNATION_FIELD.to_vec(), 6)]),
            Some(true)
        );
        assert_ne!(inv.generation("a"), base);
        assert_ne!(inv.generation("b"), mixed(5, 9));
        assert_ne!(inv.generation("b"), mixed(5, 0));
        assert!(inv.after_bump(7, "a", 3));
        assert_eq!(inv.generation("a"), mixed(7, 3));
        assert_eq!(inv.generation("b"), mixed(7, 0));
        assert!(
            !inv.after_bump(7, "a", 4),
            "known incarnation: nothing to adopt"
        );
    }
}
