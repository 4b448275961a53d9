//! Many keys in one call: [`TieredCache::get_or_fetch_many`]. Each key is its own entry;
//! the keys missing from L1 are read from L2 together first (a hit needs no flight), and
//! each key still missing has its own flight and lease, exactly as with `get_or_fetch`;
//! what is shared is the fetch: the keys that miss every tier (and whose lease this instance holds or does not
//! need) are handed to one call of the fetch function, so a batch API upstream is asked
//! once for all of them. Keys another instance is fetching are waited for on their own,
//! and fetched on their own if that instance goes away.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::future::join_all;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::coordination::Next;
use super::write_behind::Stage;
use super::{Inner, Landed, Origin, TieredCache, now_ms, panic_message};
use crate::cached::{CacheStatus, Cached, FetchOptions};
use crate::digest::Digest;
use crate::error::{Error, ErrorKind, Result};
use crate::inflight::{Join, Leader, Waiter};
use crate::l2::{Guarded, L2Read};
use crate::lease::{self, Lease};
use crate::stats::{Counters, Timer};

/// How many lookups of all `get_or_fetch_many` calls are in flight at once (and the most
/// keys one `MGET` reads): past it a read waits here, in the process, rather than in the connection's queue, where its time
/// would count against the L2 deadline (and trip the breaker under a burst of batches).
pub(super) const BULK_READS: usize = 256;

/// Keys per `MGET` of the read before the flights (see [`Inner::read_before_flights`]):
/// small enough that a batch's first values are decoded while its last ones travel, large
/// enough that a command's fixed cost is shared by many keys.
const READ_GROUP: usize = 32;

/// What the read before the flights left for the flights: by position, what it read of
/// each key it did not answer (taken by that key's first lookup), and when.
struct ReadFirst {
    reads: Vec<Option<L2Read>>,
    epoch: u64,
    /// The positions it did not answer, ascending.
    left: Vec<usize>,
}

/// A flight this call leads, once its lookup missed.
struct Missed<V> {
    position: usize,
    digest: Digest,
    leader: Leader<Landed<V>>,
}

/// A flight about to be fetched, with the lease it holds (if any).
struct ToFetch<V> {
    missed: Missed<V>,
    lease: Option<Lease>,
}

impl<V> TieredCache<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// The values of many keys at once: [`get_or_fetch_with`](Self::get_or_fetch_with) for
    /// each digest, except that the keys which miss every tier are fetched together, by one
    /// call of `fetch`.
    ///
    /// `fetch` is given the positions (indices into `digests`) it must produce, in
    /// ascending order, and returns one result per position, in that order. It is called
    /// once for every key this instance may fetch now, and once more for each key whose
    /// lease another instance held and gave up without a value (with that key alone).
    ///
    /// The keys missing from L1 are read from L2 before any flight, in `MGET`s of 32 keys
    /// sent at once (per node in a Cluster, where the client splits them by slot), each
    /// group decoded while the next ones travel: a key found there is answered (`HitL2`)
    /// without a flight, as [`fetch_stored`](Self::fetch_stored) would. What the others read
    /// is their flights' lookup, so a miss costs no second read.
    ///
    /// The answer has one result per digest, in order. Each key missing from both tiers has
    /// its own flight: a key another caller is fetching (a `get_or_fetch` or another
    /// `get_or_fetch_many`) is waited for (`Coalesced`), never fetched twice; a key repeated
    /// in `digests` is answered once and its repeats are `Coalesced` copies.
    ///
    /// # Errors
    ///
    /// Per key, never for the whole call: `fetch`'s error for a position (an `Err` is not
    /// stored; the next call fetches that key again), `FetchAborted` for every position of
    /// a `fetch` that panicked or returned the wrong number of results, `Timeout` for keys
    /// this caller waited on past the waiter deadline. Keys that were found or fetched are
    /// stored and answered whatever happened to the others.
    ///
    /// # Cancellation
    ///
    /// As [`get_or_fetch`](Self::get_or_fetch): once `fetch` has started it runs in a task
    /// of its own and fills the tiers even if this future is dropped.
    pub async fn get_or_fetch_many<F, Fut>(
        &self,
        digests: &[Digest],
        options: &FetchOptions,
        fetch: F,
    ) -> Vec<Result<Cached<V>>>
    where
        F: Fn(Vec<usize>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Result<V>>> + Send + 'static,
    {
        self.many(digests, options, fetch, false).await
    }

    /// [`get_or_fetch_many`](Self::get_or_fetch_many) for a caller that has just looked
    /// every one of `digests` up in L1 ([`get`](Self::get)) and found none: the same, but
    /// without a second L1 lookup of each before L2.
    #[doc(hidden)]
    pub async fn get_or_fetch_many_after_l1<F, Fut>(
        &self,
        digests: &[Digest],
        options: &FetchOptions,
        fetch: F,
    ) -> Vec<Result<Cached<V>>>
    where
        F: Fn(Vec<usize>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Result<V>>> + Send + 'static,
    {
        self.many(digests, options, fetch, true).await
    }

    async fn many<F, Fut>(
        &self,
        digests: &[Digest],
        options: &FetchOptions,
        fetch: F,
        l1_checked: bool,
    ) -> Vec<Result<Cached<V>>>
    where
        F: Fn(Vec<usize>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Result<V>>> + Send + 'static,
    {
        let inner = &self.inner;
        let mut answers: Vec<Option<Result<Cached<V>>>> = digests.iter().map(|_| None).collect();
        // Repeats are answered as their first occurrence.
        let mut first: HashMap<Digest, usize> = HashMap::with_capacity(digests.len());
        let mut repeat_of = vec![None; digests.len()];
        let mut pending = Vec::with_capacity(digests.len());
        for (i, digest) in digests.iter().enumerate() {
            match first.get(digest) {
                Some(&f) => repeat_of[i] = Some(f),
                None => {
                    first.insert(*digest, i);
                    if !options.refresh
                        && !l1_checked
                        && let Some(hit) = self.get(digest).await
                    {
                        answers[i] = Some(Ok(hit));
                    } else {
                        pending.push(i);
                    }
                }
            }
        }
        if !pending.is_empty() {
            let _total = Timer::start(&inner.counters.exported.total);
            let wait = options.wait.unwrap_or(inner.config.waiter_deadline);
            let deadline = tokio::time::Instant::now() + wait;
            let fetch = Arc::new(fetch);
            let mut read = inner
                .read_before_flights(digests, &pending, options, &mut answers)
                .await;
            pending = std::mem::take(&mut read.left);
            // A round leaves behind the keys whose flight was abandoned: lead or join anew.
            while !pending.is_empty() {
                pending = self
                    .round(
                        digests,
                        &pending,
                        options,
                        &fetch,
                        deadline,
                        &mut answers,
                        &mut read,
                    )
                    .await;
            }
        }
        let mut out = Vec::with_capacity(digests.len());
        for (i, answer) in answers.iter_mut().enumerate() {
            let answer = match repeat_of[i] {
                Some(f) => match &out[f] {
                    Ok(c) => {
                        let c: &Cached<V> = c;
                        Counters::incr(&inner.counters.coalesced);
                        Ok(Cached::new(
                            c.clone().into_arc(),
                            CacheStatus::Coalesced,
                            c.created_at_ms(),
                            c.digest(),
                        ))
                    }
                    Err(e) => Err(Error::clone(e)),
                },
                None => answer.take().expect("every key answered"),
            };
            out.push(answer);
        }
        out
    }

    /// Join or lead a flight for each of `positions`, look up the led ones, fetch the
    /// misses together in a task of their own, and wait for everything. Returns the
    /// positions whose flight was abandoned by its leader before it had an outcome.
    // The call's constants and its two outputs, passed as they are rather than bundled for
    // one private function.
    #[allow(clippy::too_many_arguments)]
    async fn round<F, Fut>(
        &self,
        digests: &[Digest],
        positions: &[usize],
        options: &FetchOptions,
        fetch: &Arc<F>,
        deadline: tokio::time::Instant,
        answers: &mut [Option<Result<Cached<V>>>],
        read: &mut ReadFirst,
    ) -> Vec<usize>
    where
        F: Fn(Vec<usize>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Result<V>>> + Send + 'static,
    {
        let inner = &self.inner;
        let mut led = Vec::new();
        let mut waiting: Vec<(usize, Waiter<Landed<V>>, bool)> = Vec::new();
        for &i in positions {
            match inner.inflight.join_or_lead(digests[i], options.refresh) {
                Join::Leader(leader) => led.push((i, leader)),
                Join::Waiter(w) => {
                    Counters::incr(&inner.counters.coalesced);
                    waiting.push((i, w, false));
                }
            }
        }
        let keys: Vec<Digest> = led.iter().map(|(i, _)| digests[*i]).collect();
        let reads = led.iter().map(|(i, _)| read.reads[*i].take()).collect();
        let looked = inner.lookup_many(&keys, options, reads, read.epoch).await;
        let mut missed = Vec::new();
        for ((i, leader), found) in led.into_iter().zip(looked) {
            match found {
                Ok(landed) => {
                    answers[i] = Some(Ok(landed.cached(digests[i])));
                    leader.complete(Ok(landed));
                }
                Err(next) => {
                    waiting.push((i, leader.waiter(), true));
                    let missed_one = Missed {
                        position: i,
                        digest: digests[i],
                        leader,
                    };
                    missed.push((missed_one, next));
                }
            }
        }
        if !missed.is_empty() {
            let task_inner = Arc::clone(inner);
            let options = options.clone();
            let fetch = Arc::clone(fetch);
            tokio::spawn(async move { task_inner.fill_many(missed, options, fetch).await });
        }
        let mut abandoned = Vec::new();
        let waits = waiting.into_iter().map(|(i, w, own)| async move {
            (i, own, tokio::time::timeout_at(deadline, w.wait()).await)
        });
        for (i, own, waited) in join_all(waits).await {
            answers[i] = Some(match waited {
                Ok(Some(Ok(landed))) if own => Ok(landed.cached(digests[i])),
                Ok(Some(Ok(landed))) => Ok(landed.coalesced(digests[i])),
                Ok(Some(Err(e))) => Err(e),
                Ok(None) if own => Err(Error::new(
                    ErrorKind::FetchAborted,
                    "the flight's task ended before it produced a value",
                )),
                Ok(None) => {
                    Counters::decr(&inner.counters.coalesced);
                    abandoned.push(i);
                    continue;
                }
                Err(_) => Err(inner.waiter_timed_out()),
            });
        }
        abandoned
    }
}

impl<V> Inner<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// The reads of a call's keys from L2 before any flight (a key found there needs none):
    /// groups of [`READ_GROUP`] keys, one `MGET` each (per node in a Cluster, where the
    /// client splits it by slot), all sent at once under the L2 deadline, and each group's
    /// values decoded and promoted to L1 as it lands while the others travel. The hits are
    /// answered in `answers`; what the others read is kept for their flights' lookups, so
    /// that a miss costs no second read. A refresh reads nothing.
    async fn read_before_flights(
        &self,
        digests: &[Digest],
        pending: &[usize],
        options: &FetchOptions,
        answers: &mut [Option<Result<Cached<V>>>],
    ) -> ReadFirst {
        let mut out = ReadFirst {
            reads: digests.iter().map(|_| None).collect(),
            epoch: 0,
            left: Vec::new(),
        };
        let l2 = match &self.l2 {
            Some(l2) if !options.refresh && self.l2_readable() => l2,
            _ => {
                out.left = pending.to_vec();
                return out;
            }
        };
        // An invalidation that lands while the reads are out must not be undone by them.
        out.epoch = self.invalidation.epoch();
        let epoch = out.epoch;
        let mut groups: FuturesUnordered<_> = pending
            .chunks(READ_GROUP)
            .map(|group| self.read_group(l2, digests, group))
            .collect();
        while let Some((group, keys, reads)) = groups.next().await {
            for ((&i, key), read) in group.iter().zip(&keys).zip(reads) {
                let read = match read {
                    L2Read::Hit(bytes) if !lease::is_marker(&bytes) => {
                        match self.accept(&digests[i], key, &bytes, epoch).await {
                            Some(landed) => {
                                answers[i] = Some(Ok(landed.cached(digests[i])));
                                continue;
                            }
                            // Corrupt (removed) or expired: as if the key were empty.
                            None => L2Read::Miss,
                        }
                    }
                    read => read,
                };
                out.reads[i] = Some(read);
                out.left.push(i);
            }
        }
        out.left.sort_unstable();
        out
    }

    /// One group's `MGET` (see [`read_before_flights`](Self::read_before_flights)).
    async fn read_group<'g>(
        &self,
        l2: &Guarded,
        digests: &[Digest],
        group: &'g [usize],
    ) -> (&'g [usize], Vec<String>, Vec<L2Read>) {
        let _in_flight = self
            .bulk_reads
            .acquire_many(group.len() as u32)
            .await
            .expect("never closed");
        let keys: Vec<String> = group.iter().map(|&i| self.l2_key(&digests[i])).collect();
        let reads = l2.get_many(&keys).await;
        (group, keys, reads)
    }

    /// The lookups of many flights: each in this process first, then the rest from what
    /// the read before the flights found (`reads`, taken at `epoch`), or from L2 with one
    /// `MGET` per [`BULK_READS`] keys (per node in a Cluster) under one deadline; each read
    /// taken as a flight's own `GET` would be (a miss with leases then sends the lookup that
    /// takes its lease, those at once). A refresh looks at nothing.
    async fn lookup_many(
        &self,
        digests: &[Digest],
        options: &FetchOptions,
        mut reads: Vec<Option<L2Read>>,
        epoch: u64,
    ) -> Vec<std::result::Result<Landed<V>, Next>> {
        let mut out: Vec<Option<std::result::Result<Landed<V>, Next>>> =
            Vec::with_capacity(digests.len());
        let mut remote = Vec::new();
        let mut known = Vec::new();
        for (i, digest) in digests.iter().enumerate() {
            if options.refresh {
                out.push(Some(Err(Next::Probe)));
            } else if let Some(landed) = self.in_memory(digest).await {
                out.push(Some(Ok(landed)));
            } else {
                out.push(None);
                match (reads[i].take(), &self.l2) {
                    (Some(read), Some(l2)) => known.push((i, l2, read)),
                    _ => remote.push(i),
                }
            }
        }
        let taken = known.into_iter().map(|(i, l2, read)| {
            let digest = &digests[i];
            async move {
                let key = self.l2_key(digest);
                let got = self.after_get(l2, digest, &key, read, epoch, options).await;
                (i, got)
            }
        });
        for (i, got) in join_all(taken).await {
            out[i] = Some(got);
        }
        let l2 = self.l2.as_ref().filter(|_| self.l2_readable());
        for chunk in remote.chunks(BULK_READS) {
            let Some(l2) = l2 else {
                for &i in chunk {
                    out[i] = Some(Err(Next::Alone));
                }
                continue;
            };
            let _in_flight = self
                .bulk_reads
                .acquire_many(chunk.len() as u32)
                .await
                .expect("never closed");
            let keys: Vec<String> = chunk.iter().map(|&i| self.l2_key(&digests[i])).collect();
            // An invalidation that lands while the reads are out must not be undone by them.
            let epoch = self.invalidation.epoch();
            let reads = l2.get_many(&keys).await;
            let taken = chunk.iter().zip(&keys).zip(reads).map(|((&i, key), read)| {
                let digest = &digests[i];
                async move {
                    let got = self.after_get(l2, digest, key, read, epoch, options).await;
                    (i, got)
                }
            });
            for (i, got) in join_all(taken).await {
                out[i] = Some(got);
            }
        }
        out.into_iter()
            .map(|o| o.expect("every lookup answered"))
            .collect()
    }

    /// The flights of one call that missed both tiers: settle each with the other
    /// instances (the lease), fetch those this instance may fetch now in one call, and
    /// those another instance was fetching one by one if it gave up.
    async fn fill_many<F, Fut>(
        self: Arc<Self>,
        missed: Vec<(Missed<V>, Next)>,
        options: FetchOptions,
        fetch: Arc<F>,
    ) where
        F: Fn(Vec<usize>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Result<V>>> + Send + 'static,
    {
        let (waits, now): (Vec<_>, Vec<_>) = missed
            .into_iter()
            .partition(|(_, next)| matches!(next, Next::Wait));
        let settled = join_all(now.into_iter().map(|(m, next)| {
            let this = &self;
            let options = &options;
            async move { (this.coordinate(&m.digest, options, next).await, m) }
        }))
        .await;
        let mut together = Vec::new();
        for (outcome, m) in settled {
            match outcome {
                Ok(landed) => m.leader.complete(Ok(landed)),
                Err(lease) => together.push(ToFetch { missed: m, lease }),
            }
        }
        let alone = join_all(waits.into_iter().map(|(m, next)| {
            let this = &self;
            let options = &options;
            let fetch = &fetch;
            async move {
                match this.coordinate(&m.digest, options, next).await {
                    Ok(landed) => m.leader.complete(Ok(landed)),
                    Err(lease) => {
                        let one = vec![ToFetch { missed: m, lease }];
                        this.fetch_together(one, options, fetch).await;
                    }
                }
            }
        }));
        futures_util::join!(self.fetch_together(together, &options, &fetch), alone);
    }

    /// One call of `fetch` for `group`, holding their leases meanwhile; then store and
    /// answer each key with its own result.
    async fn fetch_together<F, Fut>(
        self: &Arc<Self>,
        group: Vec<ToFetch<V>>,
        options: &FetchOptions,
        fetch: &Arc<F>,
    ) where
        F: Fn(Vec<usize>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Result<V>>> + Send + 'static,
    {
        if group.is_empty() {
            return;
        }
        for _ in &group {
            Counters::incr(&self.counters.misses);
            Counters::incr(&self.counters.fetches);
        }
        let positions: Vec<usize> = group.iter().map(|f| f.missed.position).collect();
        let work = AssertUnwindSafe(async { fetch(positions).await }).catch_unwind();
        let fetching = Timer::start(&self.counters.exported.upstream);
        let held: Vec<&Lease> = group.iter().filter_map(|f| f.lease.as_ref()).collect();
        let fetched = self.fetch_holding(&held, work).await;
        drop(fetching);
        let results: Vec<Result<V>> = match fetched {
            Ok(values) if values.len() == group.len() => values,
            other => {
                let why = match other {
                    Ok(values) => format!(
                        "the fetch returned {} values for {} keys",
                        values.len(),
                        group.len()
                    ),
                    Err(panic) => format!("the fetch panicked: {}", panic_message(&*panic)),
                };
                group
                    .iter()
                    .map(|_| Err(Error::new(ErrorKind::FetchAborted, why.clone())))
                    .collect()
            }
        };
        let created_at_ms = now_ms();
        let mut writes = Vec::new();
        let mut answered = Vec::with_capacity(results.len());
        for (ToFetch { missed, mut lease }, result) in group.into_iter().zip(results) {
            let value = match result {
                Ok(v) => Arc::new(v),
                Err(e) => {
                    Counters::incr(&self.counters.fetch_errors);
                    self.release_lease(lease.take());
                    missed.leader.complete(Err(e));
                    continue;
                }
            };
            if !options.no_store {
                match self
                    .stage(
                        missed.digest,
                        &value,
                        created_at_ms,
                        options.ttl,
                        &mut lease,
                    )
                    .await
                {
                    Ok(Stage::Write(write)) => writes.push(write),
                    Ok(Stage::TooLarge | Stage::InMemory) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "fetched value could not be encoded; served, not stored")
                    }
                }
            }
            // Not handed to a write (no-store, too large, no L2): free it for the waiters.
            self.release_lease(lease.take());
            answered.push((missed.leader, value));
        }
        // One permit and one task for the whole group's writes.
        self.write_behind(writes);
        for (leader, value) in answered {
            leader.complete(Ok(Landed::new(value, created_at_ms, Origin::Fetched)));
        }
    }
}
