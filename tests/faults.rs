//! Fault injection under load: 64 callers drive a steady mixed load (Zipf over 200 prompts,
//! plus a trickle of one-off prompts that always miss) through `LlmCache::chat` while Redis
//! is killed, paused, cut off, stalled or fed replies in slices, and while the upstream
//! fails 30% of its calls (500, or 429 with `Retry-After`). Every answer must be the one
//! for its request, the only errors allowed are upstream failures that outlived every
//! retry (counted), nothing panics, no flight is left behind, and L2 hits come back once
//! Redis does. Each scenario prints one summary line (run with `--nocapture` to see it).

use llm_cache_test_support as support;

use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use llm_cache::{
    BreakerState, CacheStatus, ChatMessage, ChatRequest, LlmCache, OpenAiCompatible, RetryPolicy,
    UpstreamStats,
};
use support::proxy::Proxy;
use support::redis::RedisServer;
use support::upstream::{MockUpstream, expected_content};

/// Callers in flight at once.
const CONCURRENCY: usize = 64;
/// Distinct repeated prompts, drawn with Zipf weights 1/(rank+1).
const PROMPTS: usize = 200;
/// One request in this many is a one-off prompt: a sure miss that reaches the upstream.
const ONE_OFF_EVERY: u64 = 50;
/// Load before a fault starts, so the tiers are warm.
const WARM_UP: Duration = Duration::from_millis(300);
/// How long the load may take to show L2 hits again once Redis is back.
const RECOVERY_LIMIT: Duration = Duration::from_secs(8);
/// A request taking longer than this is a hang, and fails the test.
const HANG_LIMIT: Duration = Duration::from_secs(15);

/// The scenarios share two cores: one at a time, so timings (deadlines, cool-downs) mean
/// what they say. Each test has its own runtime, hence a runtime-agnostic async lock.
async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// Panics anywhere in the process (spawned tasks included, which tokio would swallow).
fn panics() -> &'static AtomicU64 {
    static PANICS: OnceLock<AtomicU64> = OnceLock::new();
    PANICS.get_or_init(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            panics().fetch_add(1, Relaxed);
            default(info);
        }));
        AtomicU64::new(0)
    })
}

/// What the cache is pointed at, and how the upstream misbehaves.
struct Setup {
    proxy: Option<Proxy>,
    mock: MockUpstream,
    cache: LlmCache,
    upstream: Arc<UpstreamStats>,
}

impl Setup {
    /// A fresh redis-server (returned beside the setup, so a fault can own it), the proxy
    /// when asked for, the mock upstream and the cache.
    async fn new(through_proxy: bool, retry_after_secs: u64) -> (Setup, RedisServer) {
        Self::with_l2_deadline(through_proxy, retry_after_secs, Duration::from_millis(50)).await
    }

    /// [`new`](Self::new) with another `l2_deadline`.
    async fn with_l2_deadline(
        through_proxy: bool,
        retry_after_secs: u64,
        l2_deadline: Duration,
    ) -> (Setup, RedisServer) {
        panics();
        let redis = RedisServer::start();
        let proxy = if through_proxy {
            Some(Proxy::start(redis.addr().parse().expect("redis address")))
        } else {
            None
        };
        let url = proxy.as_ref().map_or_else(|| redis.url(), Proxy::url);
        let mock = MockUpstream::start().await;
        mock.fail_ratio(0.2, 0.1, Some(retry_after_secs));
        let client = OpenAiCompatible::new(mock.base_url())
            .request_timeout(Duration::from_secs(5))
            .retry(
                RetryPolicy::new()
                    .max_attempts(6)
                    .base_delay(Duration::from_millis(2))
                    .max_delay(Duration::from_millis(20))
                    .max_retry_after(Duration::from_secs(2)),
            );
        let upstream = client.stats();
        let cache = LlmCache::builder()
            .upstream(client)
            .redis(url)
            // Small enough that the Zipf tail keeps reading from L2.
            .l1_max_bytes(16 << 10)
            .l2_deadline(l2_deadline)
            .breaker_threshold(5)
            .breaker_cooldown(Duration::from_millis(250))
            .build()
            .await
            .expect("build the cache");
        let setup = Setup {
            proxy,
            mock,
            cache,
            upstream,
        };
        (setup, redis)
    }

    fn proxy(&self) -> &Proxy {
        self.proxy
            .as_ref()
            .expect("this scenario runs through the proxy")
    }
}

/// What the callers saw.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    ok: AtomicU64,
    l1: AtomicU64,
    l2: AtomicU64,
    miss: AtomicU64,
    coalesced: AtomicU64,
    /// Upstream 500/429 that outlived every retry: allowed, counted.
    exhausted: AtomicU64,
    /// Anything else: wrong answers, other errors, hangs. Must stay empty.
    bad: Mutex<Vec<String>>,
}

impl Tally {
    fn bad(&self, what: String) {
        let mut bad = self.bad.lock().unwrap();
        if bad.len() < 20 {
            bad.push(what);
        }
    }
}

/// 200 prompts with their expected answers, and the Zipf CDF over them.
struct Workload {
    prompts: Vec<(ChatRequest, String)>,
    cdf: Vec<f64>,
    one_offs: AtomicU64,
}

fn request(prompt: String) -> ChatRequest {
    ChatRequest::new("gpt-4.1")
        .message(ChatMessage::system("Answer in one sentence."))
        .message(ChatMessage::user(prompt))
        .temperature(0.0)
}

impl Workload {
    fn new() -> Workload {
        let prompts = (0..PROMPTS)
            .map(|i| {
                let r = request(format!("question {i}: what does a cache do under fault?"));
                let expected = expected_content(&r);
                (r, expected)
            })
            .collect();
        let weights: Vec<f64> = (0..PROMPTS).map(|k| 1.0 / (k + 1) as f64).collect();
        let total: f64 = weights.iter().sum();
        let cdf = weights
            .iter()
            .scan(0.0, |acc, w| {
                *acc += w / total;
                Some(*acc)
            })
            .collect();
        Workload {
            prompts,
            cdf,
            one_offs: AtomicU64::new(0),
        }
    }

    /// The next request and its expected answer.
    fn draw(&self, n: u64) -> (ChatRequest, String) {
        if n.is_multiple_of(ONE_OFF_EVERY) {
            let id = self.one_offs.fetch_add(1, Relaxed);
            let r = request(format!("one-off question {id}"));
            let expected = expected_content(&r);
            return (r, expected);
        }
        let x: f64 = rand::random();
        let i = self.cdf.partition_point(|&c| c < x).min(PROMPTS - 1);
        self.prompts[i].clone()
    }
}

/// The load: 64 callers looping until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    callers: Vec<tokio::task::JoinHandle<Vec<Duration>>>,
    started: Instant,
}

impl Load {
    fn start(cache: &LlmCache) -> Load {
        let workload = Arc::new(Workload::new());
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let callers = (0..CONCURRENCY)
            .map(|_| {
                let (cache, workload) = (cache.clone(), Arc::clone(&workload));
                let (stop, tally) = (Arc::clone(&stop), Arc::clone(&tally));
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    while !stop.load(Relaxed) {
                        let n = tally.requests.fetch_add(1, Relaxed) + 1;
                        let (req, expected) = workload.draw(n);
                        let start = Instant::now();
                        call(&cache, &req, &expected, &tally).await;
                        latencies.push(start.elapsed());
                    }
                    latencies
                })
            })
            .collect();
        Load {
            stop,
            tally,
            callers,
            started: Instant::now(),
        }
    }

    /// Stop the callers; the tally, the time the load ran, and every call's latency (sorted).
    async fn stop(self) -> (Arc<Tally>, Duration, Vec<Duration>) {
        self.stop.store(true, Relaxed);
        let mut latencies = Vec::new();
        for caller in self.callers {
            latencies.extend(caller.await.expect("a caller task panicked"));
        }
        latencies.sort_unstable();
        (self.tally, self.started.elapsed(), latencies)
    }
}

async fn call(cache: &LlmCache, req: &ChatRequest, expected: &str, tally: &Tally) {
    match tokio::time::timeout(HANG_LIMIT, cache.chat(req)).await {
        Err(_) => tally.bad(format!("hung for {HANG_LIMIT:?}")),
        Ok(Ok(out)) => {
            let counter = match out.status() {
                CacheStatus::HitL1 => &tally.l1,
                CacheStatus::HitL2 => &tally.l2,
                CacheStatus::Miss => &tally.miss,
                CacheStatus::Coalesced => &tally.coalesced,
                other => {
                    tally.bad(format!("unexpected status {other}"));
                    return;
                }
            };
            counter.fetch_add(1, Relaxed);
            match out.text() {
                Some(text) if text == expected => {
                    tally.ok.fetch_add(1, Relaxed);
                }
                got => tally.bad(format!(
                    "wrong answer ({}): got {got:?}, want {expected:?}",
                    out.status()
                )),
            }
        }
        Ok(Err(e)) if e.is_upstream() && matches!(e.status(), Some(429 | 500)) => {
            tally.exhausted.fetch_add(1, Relaxed);
        }
        Ok(Err(e)) => tally.bad(format!("unexpected error: {e}")),
    }
}

/// Run the load around `fault`, then until L2 hits resume, and check every invariant.
/// `fault` returns once Redis is reachable again.
async fn scenario<F, Fut>(name: &str, setup: &Setup, fault: F)
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let cache = &setup.cache;
    let panics_before = panics().load(Relaxed);
    let load = Load::start(cache);
    tokio::time::sleep(WARM_UP).await;
    let before = cache.stats().cache;
    fault().await;

    // Redis is back: L2 must serve hits again (and the breaker close) while the load runs.
    let back = cache.stats().cache.l2_hits;
    let recovering = Instant::now();
    loop {
        let now = cache.stats().cache;
        if now.l2_hits > back && now.breaker == BreakerState::Closed {
            break;
        }
        assert!(
            recovering.elapsed() < RECOVERY_LIMIT,
            "{name}: L2 hits did not resume within {RECOVERY_LIMIT:?} of Redis coming back \
             (l2_hits {} -> {}, breaker {:?})",
            back,
            now.l2_hits,
            now.breaker
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let recovered_in = recovering.elapsed();
    // A little more steady load on the recovered tiers.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (tally, elapsed, latencies) = load.stop().await;
    let at = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
    let slow = latencies.partition_point(|l| *l <= Duration::from_secs(1));
    let slow = latencies.len() - slow;

    let start = Instant::now();
    while cache.tiers().inflight() != 0 && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stats = cache.stats();
    let s = &stats.cache;
    let requests = tally.requests.load(Relaxed);
    let mut line = String::new();
    let _ = write!(
        line,
        "faults: {name}: {:.1}s requests={} ok={} exhausted={} bad={} | latency p50={:?} \
         p99={:?} max={:?} over_1s={slow} | status l1={} l2={} miss={} coalesced={} | tiers l1_hits={} l2_hits={} misses={} fetch_errors={} \
         l2_errors={} l2_timeouts={} l2_skipped={} l2_writes={} dropped_writes={} | \
         during fault: l2_errors={} l2_timeouts={} l2_skipped={} | upstream http={} \
         retries={} errors={} | breaker={:?} recovered_in={:?} inflight={}",
        elapsed.as_secs_f64(),
        requests,
        tally.ok.load(Relaxed),
        tally.exhausted.load(Relaxed),
        tally.bad.lock().unwrap().len(),
        at(0.5),
        at(0.99),
        at(1.0),
        tally.l1.load(Relaxed),
        tally.l2.load(Relaxed),
        tally.miss.load(Relaxed),
        tally.coalesced.load(Relaxed),
        s.l1_hits,
        s.l2_hits,
        s.misses,
        s.fetch_errors,
        s.l2_errors,
        s.l2_timeouts,
        s.l2_skipped,
        s.l2_writes,
        s.dropped_writes,
        s.l2_errors - before.l2_errors,
        s.l2_timeouts - before.l2_timeouts,
        s.l2_skipped - before.l2_skipped,
        setup.upstream.calls(),
        setup.upstream.retries(),
        setup.upstream.errors(),
        s.breaker,
        recovered_in,
        cache.tiers().inflight(),
    );
    if let Some(proxy) = &setup.proxy {
        let (bytes, writes) = proxy.reply_traffic();
        let _ = write!(
            line,
            " | proxy accepted={} dropped={} reply_bytes={bytes} reply_writes={writes}",
            proxy.accepted(),
            proxy.dropped()
        );
    }
    println!("{line}");

    let bad = tally.bad.lock().unwrap();
    assert!(bad.is_empty(), "{name}: bad outcomes: {bad:#?}");
    let answered = tally.ok.load(Relaxed) + tally.exhausted.load(Relaxed);
    assert_eq!(
        answered, requests,
        "{name}: every request is answered or counted"
    );
    assert_eq!(cache.tiers().inflight(), 0, "{name}: flights left behind");
    assert_eq!(
        panics().load(Relaxed),
        panics_before,
        "{name}: something panicked"
    );
    assert!(
        tally.l2.load(Relaxed) > 0 && tally.l1.load(Relaxed) > 0,
        "{name}: the load must exercise both tiers"
    );
    assert!(
        setup.mock.calls() > 0 && setup.upstream.retries() > 0,
        "{name}: the upstream's faults must be exercised"
    );
}

/// Blocking process control (kill, restart, signals) off the async workers' backs.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted() {
    let _one = one_at_a_time().await;
    let (setup, mut redis) = Setup::new(false, 0).await;
    scenario("redis SIGKILL + restart", &setup, || async {
        blocking(|| redis.kill());
        // Down long enough for the breaker to open and probe a few times.
        tokio::time::sleep(Duration::from_millis(700)).await;
        blocking(|| redis.restart());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_paused_for_two_seconds() {
    let _one = one_at_a_time().await;
    let (setup, redis) = Setup::new(false, 0).await;
    scenario("redis SIGSTOP 2s", &setup, || async {
        blocking(|| redis.pause());
        tokio::time::sleep(Duration::from_secs(2)).await;
        blocking(|| redis.resume());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_drops_every_connection() {
    let _one = one_at_a_time().await;
    let (setup, _redis) = Setup::new(true, 0).await;
    scenario("proxy drops connections", &setup, || async {
        for _ in 0..5 {
            setup.proxy().drop_all();
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(setup.proxy().dropped() > 0, "no connection was dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_stalls_connections_half_open() {
    let _one = one_at_a_time().await;
    let (setup, _redis) = Setup::new(true, 0).await;
    scenario("proxy stalls half-open 1s", &setup, || async {
        setup.proxy().stall(true);
        tokio::time::sleep(Duration::from_secs(1)).await;
        setup.proxy().stall(false);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_slices_replies() {
    let _one = one_at_a_time().await;
    let (setup, _redis) = Setup::new(true, 0).await;
    let during = Mutex::new(None);
    scenario("proxy slices replies 1-7 B", &setup, || async {
        let proxy = setup.proxy();
        let before = (setup.cache.stats().cache, proxy.reply_traffic());
        proxy.slice_replies(true);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        proxy.slice_replies(false);
        let after = (setup.cache.stats().cache, proxy.reply_traffic());
        *during.lock().unwrap() = Some((before, after));
    })
    .await;
    let ((stats0, (bytes0, writes0)), (stats1, (bytes1, writes1))) =
        during.lock().unwrap().take().expect("the fault ran");
    let (bytes, writes) = (bytes1 - bytes0, writes1 - writes0);
    let (hits, errors) = (
        stats1.l2_hits - stats0.l2_hits,
        stats1.l2_errors - stats0.l2_errors,
    );
    println!(
        "faults: while sliced: reply_bytes={bytes} reply_writes={writes} l2_hits={hits} l2_errors={errors}"
    );
    // Pieces of 1 to 7 bytes average 4 (fewer at the end of a read): allow 5.
    assert!(
        writes * 5 >= bytes,
        "replies were not sliced: {bytes} B in {writes} writes"
    );
    assert!(hits > 0, "no L2 hit was read from sliced replies");
    assert_eq!(errors, 0, "sliced replies must parse: no L2 errors");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_rate_limited_with_retry_after() {
    let _one = one_at_a_time().await;
    // Redis is fine here; the upstream's 429s ask for `Retry-After: 1`.
    let (setup, _redis) = Setup::new(false, 1).await;
    scenario(
        "upstream 500 20% + 429/Retry-After:1 10%",
        &setup,
        || async {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        },
    )
    .await;
}

/// A dropped connection is remade in the background while requests go on, even when a
/// connect takes twice the L2 deadline. Counted with `breaker_openings`, not timed: a drop
/// and its reconnect never open the breaker by themselves; every opening must be paid for
/// by deadline misses of its own. (It used to count every command in flight on the dropped
/// connection, more than `breaker_threshold` under load, and a probe then paid the new
/// connect under the deadline, timed out, and opened it again.)
///
/// A loaded machine misses deadlines for reasons of its own: at 50 ms a busy CPU opened
/// the breaker 11 times in 6 drops (a probe that misses its deadline reopens it at once,
/// one miss for one opening). So the deadline here is 500 ms, ten times the usual, which
/// load does not reach, with connects twice as slow; and an opening that deadline misses
/// did pay for is still allowed, as the breaker doing its job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_open_the_breaker_at_most_once_each() {
    const DROPS: u64 = 4;
    const DEADLINE: Duration = Duration::from_millis(500);
    let _one = one_at_a_time().await;
    let (setup, _redis) = Setup::with_l2_deadline(true, 0, DEADLINE).await;
    // Only Redis misbehaves here.
    setup.mock.fail_ratio(0.0, 0.0, None);
    let (cache, proxy) = (&setup.cache, setup.proxy());
    proxy.connect_delay(DEADLINE * 2);
    let load = Load::start(cache);
    tokio::time::sleep(WARM_UP).await;
    let before = cache.stats().cache;
    let mut windows = Vec::new();
    for drop in 1..=DROPS {
        let start = cache.stats().cache;
        let accepted = proxy.accepted();
        assert!(proxy.drop_all() > 0, "drop {drop}: no connection to drop");
        // Healed: a new connection, the breaker closed, L2 hits again.
        let healing = Instant::now();
        loop {
            let now = cache.stats().cache;
            if proxy.accepted() > accepted
                && now.breaker == BreakerState::Closed
                && now.l2_hits > start.l2_hits + 20
            {
                break;
            }
            assert!(
                healing.elapsed() < RECOVERY_LIMIT,
                "drop {drop}: not healed within {RECOVERY_LIMIT:?} ({now:?})"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Steady load for a few cool-downs: a flapping breaker would open again here.
        tokio::time::sleep(Duration::from_millis(800)).await;
        let end = cache.stats().cache;
        windows.push((
            end.breaker_openings - start.breaker_openings,
            end.l2_timeouts - start.l2_timeouts,
        ));
    }
    let (tally, elapsed, _) = load.stop().await;
    let after = cache.stats().cache;
    let openings = after.breaker_openings - before.breaker_openings;
    let timeouts = after.l2_timeouts - before.l2_timeouts;
    println!(
        "faults: {DROPS} drops under load: {:.1}s requests={} breaker_openings={openings} \
         (openings, timeouts) per drop={windows:?} l2_errors={} l2_timeouts={timeouts} \
         l2_skipped={} proxy accepted={} dropped={}",
        elapsed.as_secs_f64(),
        tally.requests.load(Relaxed),
        after.l2_errors - before.l2_errors,
        after.l2_skipped - before.l2_skipped,
        proxy.accepted(),
        proxy.dropped(),
    );
    let bad = tally.bad.lock().unwrap();
    assert!(bad.is_empty(), "bad outcomes: {bad:#?}");
    assert_eq!(
        tally.ok.load(Relaxed) + tally.exhausted.load(Relaxed),
        tally.requests.load(Relaxed),
        "every request is answered"
    );
    // Each opening is made by one failure, the last of a run (or a probe's); a drop's own
    // failures are connection errors, never deadline misses. So openings beyond the
    // deadline misses were opened by drops: none may be. Summed over the drops so far,
    // not per window: a miss and the opening it causes may fall either side of a window's
    // edge.
    let (mut opened, mut missed) = (0, 0);
    for (i, (o, t)) in windows.iter().enumerate() {
        (opened, missed) = (opened + o, missed + t);
        assert!(
            opened <= missed,
            "by drop {}: the breaker opened {opened} times with {missed} deadline misses: \
             a dropped connection alone must not open it; (openings, timeouts) per drop: \
             {windows:?}",
            i + 1
        );
    }
    assert!(
        openings <= timeouts,
        "{openings} openings, {timeouts} deadline misses"
    );
}
