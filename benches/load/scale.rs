//! The scale figure: does an L1 hit cost more when the cache holds a million entries than
//! when it holds twenty thousand? Two L1-only caches, filled to each size, are measured in
//! alternating rounds, each hit drawn uniformly over all the keys its cache holds. Each
//! request is built just before its timed call (a service holds a request it just parsed,
//! not a cold one among a million held), so building it counts in the throughput, alike
//! at both sizes, but not in the latency.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Budget, CONCURRENCY, Sample, build, canned, drive_timed, median, request, round3};
use llm_cache::{BoxFuture, CacheStatus, LlmCache};

/// Entries held for the first measurement, as the memory figure of the full run.
const SMALL: usize = 20_000;
/// Entries held for the second.
const LARGE: usize = 1_000_000;
/// The first request id of this figure.
const BASE: usize = 10_000_000;

/// A uniform index below `held` for caller `i`'s `n`-th hit (splitmix64 of both).
fn pick(i: usize, n: usize, held: usize) -> usize {
    let mut z = ((i as u64) << 40 ^ n as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z % held as u64) as usize
}

/// Fill the cache with the requests `from..to` (after `BASE`), from as many tasks as there
/// are cores.
async fn fill(cache: &LlmCache, from: usize, to: usize) {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let cache = cache.clone();
            tokio::spawn(async move {
                for i in (from + w..to).step_by(workers) {
                    cache.chat(&request(BASE + i)).await.expect("fill");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("a filler panicked");
    }
    cache.tiers().run_pending_tasks().await;
}

/// Hits on `cache`, drawn uniformly over its `held` requests.
fn hit(
    cache: &LlmCache,
    held: usize,
) -> impl Fn(usize, usize) -> BoxFuture<'static, Duration> + Clone + Send + Sync + 'static {
    let cache = cache.clone();
    move |i: usize, n: usize| {
        let cache = cache.clone();
        let r = request(BASE + pick(i, n, held));
        Box::pin(async move {
            let t = Instant::now();
            let out = cache.chat(&r).await.expect("L1 hit");
            let took = t.elapsed();
            debug_assert_eq!(out.status(), CacheStatus::HitL1);
            std::hint::black_box(out);
            took
        })
    }
}

/// A cache holding the first `held` requests, L1 only, bounded far above what a million
/// ~2 KB answers weigh: nothing is evicted.
async fn filled(held: usize) -> LlmCache {
    let cache = build(canned(Duration::ZERO), None, 16 << 30).await;
    fill(&cache, 0, held).await;
    let s = cache.stats().cache;
    assert_eq!(s.l1_entries, held as u64, "every entry must be held");
    cache
}

pub(crate) async fn l1_scale(budget: Budget) -> Value {
    const ROUNDS: u32 = 4;
    let started = Instant::now();
    let small = filled(SMALL).await;
    eprintln!("load: scale: filling a second cache to {LARGE} entries");
    let large = filled(LARGE).await;
    // The two caches in alternating rounds, as the L2 comparison: the machine's drift hits
    // both alike, and the median of the rounds' ratios is the figure.
    let round = budget.run / 2 / ROUNDS;
    let mut figures = json!({});
    for (callers, level) in [(1, "concurrency_1"), (CONCURRENCY, "concurrency_64")] {
        let (mut on_small, mut on_large) = (Vec::new(), Vec::new());
        let (mut p50s, mut throughputs) = (Vec::new(), Vec::new());
        for r in 0..ROUNDS {
            let (mut s, mut l) = if r % 2 == 0 {
                let s = drive_timed(callers, round, hit(&small, SMALL)).await;
                (s, drive_timed(callers, round, hit(&large, LARGE)).await)
            } else {
                let l = drive_timed(callers, round, hit(&large, LARGE)).await;
                (drive_timed(callers, round, hit(&small, SMALL)).await, l)
            };
            p50s.push(l.percentile_ns(0.5) as f64 / s.percentile_ns(0.5).max(1) as f64);
            throughputs.push(l.ops_per_sec() / s.ops_per_sec());
            on_small.push(s);
            on_large.push(l);
        }
        figures[level] = json!({
            "small": Sample::merge(on_small).report(),
            "large": Sample::merge(on_large).report(),
            "large_vs_small_p50": round3(median(p50s)),
            "large_vs_small_throughput": round3(median(throughputs)),
        });
    }
    for (cache, held) in [(&small, SMALL), (&large, LARGE)] {
        let s = cache.stats().cache;
        assert_eq!(s.misses, held as u64, "every timed call must be an L1 hit");
        assert_eq!(s.l1_entries, held as u64, "every entry must still be held");
    }
    figures["entries"] = json!({"small": SMALL, "large": LARGE});
    figures["rounds"] = json!(ROUNDS);
    figures["seconds"] = json!((started.elapsed().as_secs_f64() * 10.0).round() / 10.0);
    // Freeing a million entries takes seconds, and this is the run's last figure: the
    // process ends soon after and returns the memory at once.
    std::mem::forget(large);
    figures
}
