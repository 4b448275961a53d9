//! Counters of what the cache did, the `Stats` snapshot users read, and the same figures
//! exported through the `metrics` facade (the application picks the recorder), published
//! from the counters; `counters!` and `Published`, with which the layers on the engine
//! declare theirs the same way. Counting is a relaxed atomic add: it must never take a lock
//! or allocate on the hit path.

use std::fmt;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, Unit};

use crate::digest::Digest;

#[doc(hidden)]
pub use metrics;

/// The state of the circuit breaker in front of Redis. Serialises as its
/// [`as_str`](Self::as_str) name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Redis is used.
    Closed,
    /// Redis is skipped until the cool-down passes.
    Open,
    /// One probe is being let through to see whether Redis is back.
    HalfOpen,
    /// No Redis is configured: the cache is L1-only.
    Disabled,
}

/// Declares a set of counters once: each is a relaxed atomic in the counters struct and a
/// field of the snapshot struct with the same name and docs, read by `snapshot`; a counter
/// with a series (`name => [metric name, labels...]`) is a [`Published`], whose series is
/// published from the same atomic by `publish_counts` (for the engine once a second and on
/// every `stats()`), never counted twice. The gauges, given to `snapshot`, follow the
/// counters; the `extra` fields of the counters struct are made with `Default`. The LLM
/// layer declares its own sets with it.
#[doc(hidden)]
#[macro_export]
macro_rules! counters {
    (@type) => { ::std::sync::atomic::AtomicU64 };
    (@type $($series:tt)+) => { $crate::stats::Published };
    (@new) => { ::std::sync::atomic::AtomicU64::new(0) };
    (@new $($series:tt)+) => {
        $crate::stats::Published::new($crate::stats::metrics::counter!($($series)+))
    };
    (@publish $counter:expr) => {};
    (@publish $counter:expr, $($series:tt)+) => { $counter.publish() };
    (
        $(#[$sattr:meta])*
        pub struct $Stats:ident;
        $(#[$cattr:meta])*
        $vis:vis struct $Counters:ident {
            counters { $( $(#[$cdoc:meta])* $c:ident $(=> [$($series:tt)+])?, )* }
            gauges { $( $(#[$gdoc:meta])* $g:ident: $gt:ty, )* }
            extra { $( $(#[$edoc:meta])* $e:ident: $et:ty, )* }
        }
    ) => {
        $(#[$sattr])*
        pub struct $Stats {
            $( $(#[$cdoc])* pub $c: u64, )*
            $( $(#[$gdoc])* pub $g: $gt, )*
        }

        $(#[$cattr])*
        #[derive(Debug)]
        $vis struct $Counters {
            $( $vis $c: $crate::counters!(@type $($($series)+)?), )*
            $( $(#[$edoc])* $vis $e: $et, )*
        }

        impl ::std::default::Default for $Counters {
            fn default() -> Self {
                $Counters {
                    $( $c: $crate::counters!(@new $($($series)+)?), )*
                    $( $e: ::std::default::Default::default(), )*
                }
            }
        }

        impl $Counters {
            /// The counters now, with the gauges given.
            $vis fn snapshot(&self, $( $g: $gt, )*) -> $Stats {
                $Stats {
                    $( $c: self.$c.load(::std::sync::atomic::Ordering::Relaxed), )*
                    $( $g, )*
                }
            }

            /// Publish every series from its counter (what the counter gained since).
            $vis fn publish_counts(&self) {
                $( $crate::counters!(@publish self.$c $(, $($series)+)?); )*
            }
        }
    };
}

counters! {
    /// A snapshot of the cache's counters. Serialises (serde) as an object of its fields.
    #[derive(Debug, Clone, PartialEq, serde::Serialize)]
    #[non_exhaustive]
    pub struct Stats;
    #[doc(hidden)]
    pub struct Counters {
        counters {
            /// Answers served from L1.
            l1_hits,
            /// Answers served from L2 (Redis).
            l2_hits,
            /// Flights that found nothing in L1 or L2 (or were refreshes) and ran the fetch: one
            /// per flight, not per caller, counted when the fetch starts and together with
            /// `fetches`, whatever the fetch's outcome. A fetch that fails or panics counts here
            /// (and in `fetch_errors`), and so does one whose callers all went away or timed out
            /// (it runs on). Callers that joined the flight count in `coalesced`.
            ///
            /// `LlmStats::per_model[m].misses` (`ai_cache_misses_total`) counts answers instead,
            /// and leaves failed fetches out: with an upstream that fails, this is the larger.
            misses,
            /// Callers that joined a flight already running instead of fetching.
            coalesced => [COALESCED],
            /// Fetches run (calls to the fetch function / upstream).
            fetches,
            /// Fetches that failed (errors and panics).
            fetch_errors,
            /// L2 operations that failed for a reason other than their deadline.
            l2_errors,
            /// Of `l2_errors`, those that did not reach Redis (no connection, a node down).
            l2_connection_errors => [L2_ERRORS, "kind" => "connection"],
            /// Of `l2_errors`, those Redis answered with an error reply (OOM, NOPERM, LOADING...).
            l2_command_errors => [L2_ERRORS, "kind" => "command"],
            /// L2 operations abandoned at their deadline.
            l2_timeouts => [L2_ERRORS, "kind" => "timeout"],
            /// Of `l2_timeouts`, the background work's (writes behind, lease renewals and releases,
            /// under their own longer deadline): these never open the breaker.
            l2_background_timeouts,
            /// Lease markers of other holders that a waiter found without an expiry, or living
            /// longer than `lease_ttl`, and gave an end (so it waits one lease at most).
            stale_leases_expired,
            /// L2 operations skipped: the breaker was open, or no connection was up (one is being
            /// made in the background; no operation waits for it).
            l2_skipped,
            /// L2 values that failed to decode (bad magic, version, checksum...): treated as
            /// misses.
            corrupt_entries => [L2_ERRORS, "kind" => "corrupt"],
            /// L2 writes completed.
            l2_writes,
            /// L2 writes the server refused with an error reply (e.g. `OOM` when Redis is full
            /// under `noeviction`): the entry stays in L1 only. Redis is up: the breaker stays
            /// closed.
            l2_writes_refused => [L2_REFUSED, "operation" => "write"],
            /// Flights that fetched without a lease because the server refuses the lookup that
            /// takes one (`OOM` under `noeviction`, which refuses every `SET`; `NOPERM`; a Redis
            /// older than 7.0): for that key single-flight held per instance, not across instances.
            /// After a refusal, lookups use a plain `GET` for a second before they try again.
            leases_refused => [L2_REFUSED, "operation" => "lease"],
            /// L2 writes dropped because the background-write bound was full.
            dropped_writes => [L2_ERRORS, "kind" => "dropped_write"],
            /// Background L2 writes that an invalidation of their key overtook: skipped before
            /// they ran, or undone (the key removed again) when they landed after it.
            l2_writes_cancelled,
            /// Values not stored because they exceeded the maximum entry size.
            oversized,
            /// Waiters that gave up at the waiter deadline.
            waiter_timeouts,
            /// Cached entries (L1 or L2) not served because this instance could not hear
            /// invalidations for longer than `unsynced_grace` while Redis was partly reachable, or
            /// did not know the namespace generations yet.
            unsynced_skips,
            /// Times the breaker opened: from closed after `breaker_threshold` failures in a row,
            /// or again after a probe failed on a live connection.
            breaker_openings => [BREAKER_OPENINGS],
        }
        gauges {
            /// Flights in progress now.
            inflight: u64,
            /// Breaker state now.
            breaker: BreakerState,
            /// Entries in L1 now (approximate, as moka reports it).
            l1_entries: u64,
            /// Weighted size of L1 in bytes now.
            l1_bytes: u64,
        }
        extra {
            /// The histograms and the gauges' series (the counters publish their own).
            exported: Exported,
            /// The last L2 failure, for `health()`. Written only when an operation fails.
            last_l2_error: Mutex<Option<crate::health::LastError>>,
            /// What the layer on this tier publishes with it (see `also_publish`).
            layer: LayerSeries,
        }
    }
}

impl BreakerState {
    /// A short lower-case name (`closed`, `open`, `half_open`, `disabled`), the same as the
    /// `state` label of `ai_cache_breaker_state`.
    pub fn as_str(self) -> &'static str {
        BREAKER_LABELS[breaker_index(self)]
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Stats {
    /// Hits in either tier divided by all lookups that returned a value or led a fetch.
    pub fn hit_ratio(&self) -> f64 {
        let hits = self.l1_hits + self.l2_hits + self.coalesced;
        let total = hits + self.misses;
        if total == 0 {
            0.0
        } else {
            hits as f64 / total as f64
        }
    }
}

impl Counters {
    #[inline]
    pub fn incr(counter: &AtomicU64) {
        counter.fetch_add(1, Relaxed);
    }

    /// Take back one [`incr`](Self::incr) that turned out not to count.
    pub fn decr(counter: &AtomicU64) {
        counter.fetch_sub(1, Relaxed);
    }

    /// Remember an L2 failure for `health()`, with any URL password in it hidden.
    pub fn note_l2_error(&self, op: &'static str, why: &str) {
        let last = crate::health::LastError::new(op, why);
        *crate::sync::lock(&self.last_l2_error) = Some(last);
    }
}

// Export through the `metrics` facade. Handles are registered once, when a cache is built,
// with the recorder installed at that moment, and used without a lookup afterwards: install
// the recorder before building the cache. Layers on the engine register their own series.

/// Latency by operation (`l1_get`, `l2_get`, `l2_set`, `upstream`, `total`).
#[doc(hidden)]
pub const LATENCY: &str = "ai_cache_latency_seconds";
/// Weighted size of L1 in bytes.
pub(crate) const SIZE_BYTES: &str = "ai_cache_size_bytes";
/// Entries in L1.
pub(crate) const L1_ENTRIES: &str = "ai_cache_l1_entries";
/// Flights in progress.
pub(crate) const INFLIGHT: &str = "ai_cache_inflight";
/// Callers that joined a flight already running.
pub(crate) const COALESCED: &str = "ai_cache_coalesced_total";
/// L2 trouble by kind (`timeout`, `connection`, `command`, `corrupt`, `dropped_write`).
pub(crate) const L2_ERRORS: &str = "ai_cache_l2_errors_total";
/// Caches whose breaker is in each state (`closed`, `open`, `half_open`, `disabled`).
pub(crate) const BREAKER_STATE: &str = "ai_cache_breaker_state";
/// Times a breaker opened.
pub(crate) const BREAKER_OPENINGS: &str = "ai_cache_breaker_openings_total";
/// L2 writes and leases the server refused with an error reply, by `operation`.
pub(crate) const L2_REFUSED: &str = "ai_cache_l2_refused_total";

/// One L1 lookup in this many is timed for `l1_get`. Timing every one would add two clock
/// reads and a histogram push to a hit that costs a few hundred nanoseconds, and the
/// Prometheus exporter buffers every pushed sample until its next upkeep.
pub(crate) const L1_SAMPLE_EVERY: u64 = 64;

/// How often the gauges (L1 size, entries, flights, breaker) are refreshed.
const GAUGE_UPKEEP: Duration = Duration::from_secs(1);

/// Whether this L1 lookup is one of the timed ones: the hit count (a line the hit writes
/// anyway) mixed with a byte of the key, so picking is one load and writes nothing. Hits move
/// the count, so a hot key is timed one time in 64; while the count stands still (misses)
/// the key picks, one key in 64.
#[inline]
pub(crate) fn sample_l1(l1_hits: &AtomicU64, digest: &Digest) -> bool {
    let mix = l1_hits.load(Relaxed) ^ u64::from(digest.as_bytes()[31]);
    mix.is_multiple_of(L1_SAMPLE_EVERY)
}

/// Records the time since it was made when dropped, so every way out of a scope (an error,
/// `?`, a cancelled caller) is measured.
#[doc(hidden)]
pub struct Timer<'a> {
    histogram: &'a Histogram,
    started: Instant,
}

impl Timer<'_> {
    #[doc(hidden)]
    pub fn start(histogram: &Histogram) -> Timer<'_> {
        Timer {
            histogram,
            started: Instant::now(),
        }
    }
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        self.histogram.record(self.started.elapsed());
    }
}

/// The first 12 hex digits of a digest, for logs: enough to tell requests apart and to
/// find the Redis key, nothing to rebuild a request from.
#[doc(hidden)]
pub struct ShortKey(pub Digest);

impl fmt::Display for ShortKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0.as_bytes()[..6] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

fn describe() {
    metrics::describe_histogram!(
        LATENCY,
        Unit::Seconds,
        "Latency by operation: l1_get (sampled 1 in 64), l2_get, l2_set, upstream, total (requests that went past L1)"
    );
    metrics::describe_gauge!(
        SIZE_BYTES,
        Unit::Bytes,
        "Weighted size of L1 (encoded values plus overhead)"
    );
    metrics::describe_gauge!(L1_ENTRIES, Unit::Count, "Entries in L1");
    metrics::describe_gauge!(
        INFLIGHT,
        Unit::Count,
        "Flights (upstream fetches or L2 reads shared by callers) in progress"
    );
    metrics::describe_counter!(
        COALESCED,
        Unit::Count,
        "Callers that joined a flight already running instead of fetching"
    );
    metrics::describe_counter!(
        L2_ERRORS,
        Unit::Count,
        "Redis trouble by kind: timeout, connection, command, corrupt, dropped_write"
    );
    metrics::describe_gauge!(
        BREAKER_STATE,
        "Caches whose Redis circuit breaker is in this state (closed, open, half_open, disabled)"
    );
    metrics::describe_counter!(
        BREAKER_OPENINGS,
        Unit::Count,
        "Times the Redis circuit breaker opened (from closed, or again after a failed probe)"
    );
    metrics::describe_counter!(
        L2_REFUSED,
        Unit::Count,
        "Redis writes (operation=write) and leases (operation=lease) refused with an error reply, e.g. OOM under noeviction"
    );
}

/// The names of the states, in the order of the enum (its discriminants index them).
const BREAKER_LABELS: [&str; 4] = ["closed", "open", "half_open", "disabled"];

fn breaker_index(state: BreakerState) -> usize {
    state as usize
}

/// The engine's histograms and gauges. Gauges are published as differences from what this
/// cache last published, so several caches in one process add up instead of overwriting
/// each other; a dropped cache takes its share back.
#[doc(hidden)]
pub struct Exported {
    pub l1_get: Histogram,
    l2_get: Histogram,
    l2_set: Histogram,
    pub upstream: Histogram,
    pub total: Histogram,
    breaker: [Gauge; 4],
    size_bytes: Gauge,
    l1_entries: Gauge,
    inflight: Gauge,
    /// 0: nothing published yet; otherwise 1 + the breaker index.
    published_breaker: AtomicU8,
    published_bytes: AtomicU64,
    published_entries: AtomicU64,
    published_inflight: AtomicU64,
    /// False for a tier that shares another's L2 (and so its breaker): the breaker gauge
    /// counts each breaker once.
    owns_breaker: bool,
}

impl Default for Exported {
    fn default() -> Self {
        Self::register()
    }
}

impl fmt::Debug for Exported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exported").finish_non_exhaustive()
    }
}

impl Counters {
    /// The counters of a tier built beside another on the same L2 connection (the
    /// embeddings' vectors, the async-openai layer's bodies): its own counts, and its L1
    /// sizes added to the process's gauges, but not a second count of the shared breaker.
    #[doc(hidden)]
    pub fn sibling() -> Self {
        let mut counters = Counters::default();
        counters.exported.owns_breaker = false;
        counters
    }
}

impl Exported {
    fn register() -> Self {
        describe();
        let latency = |op: &'static str| metrics::histogram!(LATENCY, "operation" => op);
        Exported {
            l1_get: latency("l1_get"),
            l2_get: latency("l2_get"),
            l2_set: latency("l2_set"),
            upstream: latency("upstream"),
            total: latency("total"),
            breaker: BREAKER_LABELS.map(|state| metrics::gauge!(BREAKER_STATE, "state" => state)),
            size_bytes: metrics::gauge!(SIZE_BYTES),
            l1_entries: metrics::gauge!(L1_ENTRIES),
            inflight: metrics::gauge!(INFLIGHT),
            owns_breaker: true,
            published_breaker: AtomicU8::new(0),
            published_bytes: AtomicU64::new(0),
            published_entries: AtomicU64::new(0),
            published_inflight: AtomicU64::new(0),
        }
    }

    /// A timer for the L2 operation `op`, for the two operations that have a series.
    pub(crate) fn l2_timer(&self, op: &str) -> Option<Timer<'_>> {
        match op {
            "get" => Some(Timer::start(&self.l2_get)),
            "set" => Some(Timer::start(&self.l2_set)),
            _ => None,
        }
    }

    /// Publish the breaker's state; each change moves one unit from the old state's gauge
    /// to the new one's, exactly once however many threads see it.
    pub(crate) fn publish_breaker(&self, state: BreakerState) {
        if !self.owns_breaker {
            return;
        }
        let now = breaker_index(state);
        let before = self.published_breaker.swap(now as u8 + 1, SeqCst);
        if before != now as u8 + 1 {
            self.unpublish_breaker(before);
            self.breaker[now].increment(1.0);
        }
    }

    /// Take back the unit `published` (a `published_breaker` value) put on a state's gauge.
    fn unpublish_breaker(&self, published: u8) {
        if published != 0 {
            self.breaker[usize::from(published - 1)].decrement(1.0);
        }
    }

    /// Publish L1's size and entries and the flights in progress.
    pub(crate) fn publish_sizes(&self, l1_entries: u64, l1_bytes: u64, inflight: u64) {
        publish_delta(&self.size_bytes, &self.published_bytes, l1_bytes);
        publish_delta(&self.l1_entries, &self.published_entries, l1_entries);
        publish_delta(&self.inflight, &self.published_inflight, inflight);
    }
}

fn publish_delta(gauge: &Gauge, published: &AtomicU64, now: u64) {
    let before = published.swap(now, SeqCst);
    if before != now {
        gauge.increment(now as f64 - before as f64);
    }
}

impl Drop for Exported {
    fn drop(&mut self) {
        self.publish_sizes(0, 0, 0);
        let published = *self.published_breaker.get_mut();
        self.unpublish_breaker(published);
    }
}

/// What the gauge upkeep reads from a cache.
pub(crate) struct Readings {
    pub l1_entries: u64,
    pub l1_bytes: u64,
    pub inflight: u64,
    pub breaker: BreakerState,
}

/// A counter and the series published from it: [`publish`](Self::publish) adds to the
/// series what the counter gained since the last publish, so the two never disagree and a
/// count is written once (a relaxed add, as for any counter). Reads as its atomic.
#[doc(hidden)]
pub struct Published {
    count: AtomicU64,
    series: Counter,
    published: AtomicU64,
}

impl Published {
    /// A counter at 0 publishing into `series`.
    pub fn new(series: Counter) -> Self {
        Published {
            count: AtomicU64::new(0),
            series,
            published: AtomicU64::new(0),
        }
    }

    /// Add to the series what the counter gained since the last publish (exactly once,
    /// however many threads publish at the same time).
    pub fn publish(&self) {
        let now = self.count.load(Relaxed);
        let before = self.published.fetch_max(now, SeqCst);
        if now > before {
            self.series.increment(now - before);
        }
    }
}

impl std::ops::Deref for Published {
    type Target = AtomicU64;

    fn deref(&self) -> &AtomicU64 {
        &self.count
    }
}

impl fmt::Debug for Published {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.count, f)
    }
}

impl Counters {
    /// Publish the gauges from `r`, every counter's series, and the series of the layer
    /// on these counters ([`also_publish`](Self::also_publish)): once a second from the
    /// upkeep, and on every `stats()`, so a scrape after `stats()` agrees with it.
    pub(crate) fn publish(&self, r: &Readings) {
        let e = &self.exported;
        e.publish_sizes(r.l1_entries, r.l1_bytes, r.inflight);
        e.publish_breaker(r.breaker);
        self.publish_counts();
        if let Some(layer) = self.layer.0.get() {
            layer();
        }
    }

    /// Publish the series of a layer built on this tier (its own counters) whenever the
    /// tier publishes its own: once a second and on every `stats()`. Set once; later calls
    /// are ignored. `publish` should hold its layer weakly: the layer owns the tier, so a
    /// strong handle would keep both alive.
    pub fn also_publish(&self, publish: impl Fn() + Send + Sync + 'static) {
        let _ = self.layer.0.set(Box::new(publish));
    }

    /// Count an L2 failure other than a deadline by its kind.
    pub(crate) fn l2_error(&self, e: &crate::l2::L2Error) {
        use crate::l2::L2Error;
        Counters::incr(&self.l2_errors);
        match e {
            L2Error::Connection(_) | L2Error::NodeDown(_) | L2Error::NotConnected => {
                Counters::incr(&self.l2_connection_errors);
            }
            // The server answered with an error: OOM under noeviction, NOPERM, LOADING...
            L2Error::Command(_) | L2Error::NotServing(_) => {
                Counters::incr(&self.l2_command_errors);
            }
        }
    }
}

/// The series a layer on a tier publishes with it (see [`Counters::also_publish`]).
#[doc(hidden)]
#[derive(Default)]
pub struct LayerSeries(OnceLock<Box<dyn Fn() + Send + Sync>>);

impl fmt::Debug for LayerSeries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LayerSeries").finish_non_exhaustive()
    }
}

/// Refresh the gauges of `target` every second until it is dropped. Without a Tokio runtime
/// (a cache built outside one) the gauges are refreshed by `stats()` only.
pub(crate) fn spawn_gauge_upkeep<T: Send + Sync + 'static>(
    target: Weak<T>,
    read: fn(&T) -> (&Counters, Readings),
) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(GAUGE_UPKEEP);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(target) = target.upgrade() else {
                return;
            };
            let (counters, readings) = read(&target);
            counters.publish(&readings);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::BreakerState;

    #[test]
    fn breaker_state_names_match_display_and_serde() {
        for (state, name) in [
            (BreakerState::Closed, "closed"),
            (BreakerState::Open, "open"),
            (BreakerState::HalfOpen, "half_open"),
            (BreakerState::Disabled, "disabled"),
        ] {
            assert_eq!(state.as_str(), name);
            assert_eq!(state.to_string(), name);
            assert_eq!(serde_json::to_value(state).unwrap(), name);
        }
    }
}
