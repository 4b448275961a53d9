//! The scale figure: does an L1 hit cost more when the cache holds a million entries than
//! when it holds twenty thousand? One L1-only cache is filled to the small size and
//! measured, then filled to the large one and measured again, each hit drawn uniformly over
//! all held keys. The request is cloned before the timed call (a service holds a request it
//! just parsed, not a cold one among a million), so the clone counts in the throughput
//! but not in the latency.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Budget, CONCURRENCY, build, canned, drive_timed, request, round3};
use llm_cache::{CacheStatus, ChatRequest, LlmCache};

/// Entries held for the first measurement, as the memory figure of the full run.
const SMALL: usize = 20_000;
/// Entries held for the second.
const LARGE: usize = 1_000_000;

/// A uniform index below `held` for caller `i`'s `n`-th hit (splitmix64 of both).
fn pick(i: usize, n: usize, held: usize) -> usize {
    let mut z = ((i as u64) << 40 ^ n as u64).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z % held as u64) as usize
}

/// Fill the cache with `requests[range]`, from as many tasks as there are cores.
async fn fill(cache: &LlmCache, requests: &Arc<Vec<ChatRequest>>, from: usize, to: usize) {
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (cache, requests) = (cache.clone(), Arc::clone(requests));
            tokio::spawn(async move {
                for r in requests[from + w..to].iter().step_by(workers) {
                    cache.chat(r).await.expect("fill");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("a filler panicked");
    }
    cache.tiers().run_pending_tasks().await;
}

/// Hits at concurrency 1 and 64 over the first `held` requests.
async fn hits(
    cache: &LlmCache,
    requests: &Arc<Vec<ChatRequest>>,
    held: usize,
    run: Duration,
) -> Value {
    let hit = {
        let (cache, requests) = (cache.clone(), Arc::clone(requests));
        move |i: usize, n: usize| {
            let cache = cache.clone();
            let r = requests[pick(i, n, held)].clone();
            async move {
                let t = Instant::now();
                let out = cache.chat(&r).await.expect("L1 hit");
                let took = t.elapsed();
                debug_assert_eq!(out.status(), CacheStatus::HitL1);
                std::hint::black_box(out);
                took
            }
        }
    };
    let mut one = drive_timed(1, run, hit.clone()).await;
    let mut many = drive_timed(CONCURRENCY, run, hit).await;
    json!({
        "entries": cache.stats().cache.l1_entries,
        "concurrency_1": one.report(),
        "concurrency_64": many.report(),
    })
}

pub(crate) async fn l1_scale(budget: Budget) -> Value {
    let started = Instant::now();
    // L1 only, bounded far above what a million ~2 KB answers weigh: nothing is evicted.
    let cache = build(canned(Duration::ZERO), None, 16 << 30).await;
    let requests: Arc<Vec<ChatRequest>> =
        Arc::new((0..LARGE).map(|i| request(10_000_000 + i)).collect());
    let run = budget.run / 2;
    fill(&cache, &requests, 0, SMALL).await;
    let small = hits(&cache, &requests, SMALL, run).await;
    eprintln!("load: scale: filling to {LARGE} entries");
    fill(&cache, &requests, SMALL, LARGE).await;
    let large = hits(&cache, &requests, LARGE, run).await;
    let s = cache.stats().cache;
    assert_eq!(s.misses, LARGE as u64, "every timed call must be an L1 hit");
    assert_eq!(s.l1_entries, LARGE as u64, "every entry must still be held");
    let ratio = |level: &str, figure: &str| {
        round3(
            large[level][figure].as_f64().unwrap_or(0.0)
                / small[level][figure].as_f64().unwrap_or(1.0),
        )
    };
    let p50_ratio = ratio("concurrency_1", "p50_us");
    let throughput_ratio = ratio("concurrency_64", "ops_per_sec");
    let seconds = (started.elapsed().as_secs_f64() * 10.0).round() / 10.0;
    // Freeing a million entries takes seconds, and this is the run's last figure: the
    // process ends soon after and returns the memory at once.
    std::mem::forget(cache);
    std::mem::forget(requests);
    json!({
        "small": small,
        "large": large,
        "large_vs_small_p50_concurrency_1": p50_ratio,
        "large_vs_small_throughput_concurrency_64": throughput_ratio,
        "seconds": seconds,
    })
}
