//! The load benchmark: prints ONE JSON object with every figure measured in this run,
//! against a redis-server it starts on a free loopback port (never 6379) and kills at the
//! end. Ratios against raw Redis and the hand-written cache are what to compare across
//! machines, not absolutes. The figures (and their `LOAD_BENCH_ONLY` names):
//!
//! - `l1`: L1-hit throughput and p50/p99 through `LlmCache::chat`, at concurrency 1 and 64;
//! - `l2`: three sides at concurrency 64 with the same connection setup (one multiplexed
//!   connection, TCP_NODELAY) and the same tasks, in interleaved rounds whose order rotates
//!   so the machine's drift hits all alike, each charged the CPU this process and
//!   redis-server spent: the cache's L2 hit (L1 disabled, default lz4 above 1 KiB, no MAC),
//!   the hand-written cache of `load/hand_written.rs` (SHA-256 of `serde_json` bytes, plain
//!   JSON under `SET ... EX`, `GET` and `from_slice`) on its own keys holding the same
//!   answers, and a raw `GET` of the cache's stored bytes. Per side: ops/s, p50/p99, client
//!   and redis CPU per op; the median-of-rounds ratios L2 hit / hand-written and
//!   L2 hit / raw GET; `necessary_cpu_per_hit` (the key, envelope and JSON work no L2 hit
//!   can skip, timed on one core), the CPU-bound ceiling it implies on this machine, and
//!   `l2_bookkeeping_us_per_hit` = L2 hit client CPU per op - raw GET's - necessary, with
//!   `l2_bookkeeping_detail`: the same measure for the hand-written cache (which keeps no
//!   books: it shows what doing the necessary work amid 64 tasks costs beyond doing it alone
//!   in a loop) and ours beyond it; and `l2_lookup_commands`: `GET` against the two lookups
//!   that take a lease in the same round trip, `SET NX PX GET` (the cache's) and a Lua
//!   get-or-lease script, all on keys that hold an entry (the cost every hit would pay);
//! - `stampede`: 1,000 concurrent identical cold requests, and the upstream calls they cost
//!   (must be 1: fails the run otherwise);
//! - `miss`: p50 of a miss through the cache minus p50 of the same client calling the mock
//!   upstream (HTTP on loopback) directly, with leases on (the default with Redis) and off,
//!   and the p50 of the one round trip each needs, sent raw (a `GET` without leases, the
//!   lease-taking `SET NX PX GET` with them), all five interleaved in a new order each
//!   round, each call made from the same idle state on a worker thread, as a service's
//!   handler; what a miss costs beyond the call and its round trip, against its 25 µs
//!   target (and, with leases, beyond a `GET` too); and a round trip timed back to back
//!   for comparison;
//! - `batch`: `LlmCache::batch` of 1,000 requests of which 500 are cached, at concurrency 64:
//!   throughput and upstream calls (must be 500: fails the run otherwise);
//! - `memory`: L1 memory per entry, resident-set growth over N entries held divided by N,
//!   and how much of it lies beyond the answer's JSON length (`beyond_json_bytes`), for the
//!   ~2 KB answers and for small (~100-character) ones, with the second half's growth per
//!   entry beside it; each fill runs in its own child process, on one thread
//!   (`LOAD_BENCH_ENTRIES=N` changes N);
//! - `async_openai` (with `--features async-openai`): an L1 and an L2 hit through
//!   async-openai's `Client` with the cache's layer, next to the same hit through
//!   `LlmCache::chat`, one caller each (`async_openai_figures.rs`);
//! - `embeddings`: a 256-input batch with 80% of its inputs cached (L1, and Redis), the
//!   per-input cost of a fully cached batch next to a raw `MGET`, and a stored vector's
//!   bytes against its JSON text, at 1,536 dimensions (`load/embeddings.rs`);
//! - `scale` (full run only, unless named in `LOAD_BENCH_ONLY`): L1-hit p50/p99 and
//!   throughput at concurrency 1 and 64 on a cache holding 20,000 entries and one holding
//!   1,000,000, in alternating rounds, each hit drawn uniformly over all held keys, and the
//!   median-of-rounds ratios large / small (`load/scale.rs`).
//!
//! Requests are about 1 KB, responses about 2 KB. `cargo bench --bench load` for the full
//! run; `LOAD_BENCH_SHORT=1` (or `-- --short`) for the quick one `scripts/test.sh` runs;
//! `LOAD_BENCH_ONLY=l2,miss` runs only the figures named. Progress goes to stderr, the JSON
//! to stdout.

#[cfg(feature = "async-openai")]
#[path = "async_openai_figures.rs"]
mod async_openai_figures;
#[path = "load/embeddings.rs"]
mod embeddings;
#[path = "load/hand_written.rs"]
mod hand_written;
#[path = "load/scale.rs"]
mod scale;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use llm_cache::{
    BoxFuture, CacheStatus, ChatMessage, ChatRequest, ChatResponse, Choice, LlmCache,
    LlmCacheBuilder, OpenAiCompatible, Result, RetryPolicy, Upstream, Usage,
};
use llm_cache_test_support as support;
use serde_json::{Value, json};
use support::redis::RedisServer;
use support::upstream::MockUpstream;

use hand_written::HandWrittenCache;

/// Callers at once for the concurrent figures.
const CONCURRENCY: usize = 64;
/// Distinct keys each concurrent caller cycles through on the L2 figures, so no two
/// callers share a key (sharing would coalesce instead of reading L2).
const KEYS_PER_CALLER: usize = 4;
/// Callers of the stampede.
const STAMPEDE: usize = 1_000;
/// Characters of an answer's content: about 2 KB of JSON in all.
const ANSWER_CHARS: usize = 1_900;
/// Characters of a small answer's content, for the second memory figure.
const SMALL_ANSWER_CHARS: usize = 100;
/// The cache's default L2 TTL, which the hand-written cache uses too.
const L2_TTL_SECS: u64 = 86_400;

/// How long each figure runs: the full run, or the quick one for CI.
#[derive(Clone, Copy)]
struct Budget {
    short: bool,
    /// Per throughput figure (split into rounds where sides are compared).
    run: Duration,
    /// Rounds of the L2 comparison: in each, every side runs `run / rounds`, in an order
    /// that rotates from round to round (a multiple of 3 gives each side each place alike).
    rounds: u32,
    /// Sequential misses per side (direct, leases on, leases off).
    misses: usize,
    /// Entries held for the memory figure.
    entries: usize,
    /// Batches of 1,000 for the batch figure.
    batches: usize,
}

impl Budget {
    fn from_env() -> Budget {
        let short = std::env::var("LOAD_BENCH_SHORT").is_ok_and(|v| !v.is_empty() && v != "0")
            || std::env::args().any(|a| a == "--short");
        let mut budget = Budget::of(short);
        // `LOAD_BENCH_ENTRIES=N`: hold N entries for the memory figure instead.
        if let Some(n) = std::env::var("LOAD_BENCH_ENTRIES")
            .ok()
            .and_then(|n| n.parse().ok())
        {
            budget.entries = n;
        }
        budget
    }

    fn of(short: bool) -> Budget {
        if short {
            Budget {
                short,
                run: Duration::from_millis(900),
                rounds: 6,
                misses: 300,
                entries: 5_000,
                batches: 3,
            }
        } else {
            Budget {
                short,
                run: Duration::from_secs(4),
                rounds: 18,
                misses: 2_000,
                entries: 20_000,
                batches: 10,
            }
        }
    }
}

/// About 1 KB of request: a system prompt and a question that differs per `id`.
fn request(id: usize) -> ChatRequest {
    let system = "You are a careful assistant for a logistics company. Answer in plain \
        English, cite the policy section you rely on, never invent tracking numbers, and \
        keep answers under two hundred words. When a question is ambiguous, say which \
        reading you answer and why. Prefer metric units; give times in UTC with the \
        offset of the customer's zone. Do not answer questions about other customers. ";
    let question = format!(
        "Question {id}: a pallet shipped from Rotterdam to Lyon on a Tuesday was held at \
         the border for two days because the customs declaration listed the wrong HS code. \
         Who pays the demurrage, how do we correct the declaration, and what should we tell \
         the customer about the new delivery window? Please also list the documents the \
         driver needs at the next checkpoint, in the order they will be asked for. ({id})"
    );
    ChatRequest::new("gpt-4.1")
        .message(ChatMessage::system(system))
        .message(ChatMessage::assistant(
            "Understood. Send the shipment reference and the customs office involved.",
        ))
        .message(ChatMessage::user(question))
        .temperature(0.0)
}

/// An answer whose content is at least `chars` long (about 2 KB of JSON for
/// [`ANSWER_CHARS`]): words drawn from a small vocabulary, which lz4 compresses about as
/// well as it does real answers (roughly 2:1).
fn response(model: &str, n: u64, chars: usize) -> ChatResponse {
    const WORDS: [&str; 64] = [
        "the",
        "carrier",
        "declaration",
        "customs",
        "pays",
        "demurrage",
        "when",
        "delay",
        "is",
        "caused",
        "by",
        "shipper",
        "error",
        "amend",
        "code",
        "pallet",
        "border",
        "office",
        "invoice",
        "broker",
        "tariff",
        "origin",
        "certificate",
        "driver",
        "checkpoint",
        "window",
        "delivery",
        "customer",
        "policy",
        "section",
        "liable",
        "notice",
        "days",
        "fee",
        "storage",
        "terminal",
        "release",
        "hold",
        "inspection",
        "document",
        "copy",
        "signed",
        "stamp",
        "weight",
        "volume",
        "route",
        "Lyon",
        "Rotterdam",
        "Tuesday",
        "UTC",
        "we",
        "you",
        "they",
        "must",
        "should",
        "can",
        "not",
        "and",
        "or",
        "with",
        "for",
        "to",
        "of",
        "in",
    ];
    let mut content = String::with_capacity(chars + 16);
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while content.len() < chars {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        content.push_str(WORDS[(x % 64) as usize]);
        content.push(if x.is_multiple_of(11) { '.' } else { ' ' });
    }
    ChatResponse {
        id: format!("chatcmpl-bench-{n}"),
        object: "chat.completion".into(),
        created: 1_767_225_600,
        model: model.to_string(),
        choices: vec![Choice {
            message: ChatMessage::assistant(content),
            finish_reason: Some("stop".into()),
            ..Default::default()
        }],
        usage: Some(Usage {
            prompt_tokens: 240,
            completion_tokens: 480,
            total_tokens: 720,
            ..Default::default()
        }),
        system_fingerprint: Some("fp_bench".into()),
        ..Default::default()
    }
}

/// An in-process upstream whose n-th call answers `response(model, n, chars)`: for the hit
/// figures it is never called after warm-up, and for the stampede only its call count matters.
struct Canned {
    calls: AtomicU64,
    delay: Duration,
    chars: usize,
}

impl Upstream for Canned {
    fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse>> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Relaxed);
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            Ok(response(&request.model, n, self.chars))
        })
    }
}

fn canned(delay: Duration) -> Arc<Canned> {
    canned_sized(delay, ANSWER_CHARS)
}

fn canned_sized(delay: Duration, chars: usize) -> Arc<Canned> {
    Arc::new(Canned {
        calls: AtomicU64::new(0),
        delay,
        chars,
    })
}

/// Latencies in nanoseconds and the wall time they took; for the L2 figures also the CPU
/// time this process and redis-server spent meanwhile (0 when not measured).
#[derive(Default)]
struct Sample {
    latencies: Vec<u64>,
    wall: Duration,
    client_cpu_ns: u64,
    redis_cpu_ns: u64,
}

impl Sample {
    fn merge(samples: impl IntoIterator<Item = Sample>) -> Sample {
        let mut all = Sample::default();
        for s in samples {
            all.latencies.extend(s.latencies);
            all.wall += s.wall;
            all.client_cpu_ns += s.client_cpu_ns;
            all.redis_cpu_ns += s.redis_cpu_ns;
        }
        all
    }

    fn ops_per_sec(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }

    fn percentile_ns(&mut self, p: f64) -> u64 {
        self.latencies.sort_unstable();
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies.get(i).copied().unwrap_or(0)
    }

    fn report(&mut self) -> Value {
        let mut report = json!({
            "ops": self.latencies.len(),
            "ops_per_sec": self.ops_per_sec().round(),
            "p50_us": us(self.percentile_ns(0.50)),
            "p99_us": us(self.percentile_ns(0.99)),
        });
        if self.client_cpu_ns > 0 {
            report["client_cpu_us_per_op"] = json!(round3(self.client_cpu_us_per_op()));
            report["redis_cpu_us_per_op"] = json!(round3(self.redis_cpu_us_per_op()));
        }
        report
    }

    fn client_cpu_us_per_op(&self) -> f64 {
        self.client_cpu_ns as f64 / 1000.0 / self.latencies.len().max(1) as f64
    }

    fn redis_cpu_us_per_op(&self) -> f64 {
        self.redis_cpu_ns as f64 / 1000.0 / self.latencies.len().max(1) as f64
    }
}

/// The median of `v` (the upper one of an even count).
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn us(ns: u64) -> f64 {
    (ns as f64 / 10.0).round() / 100.0
}

/// Run `op` from `callers` tasks for `run`, each caller `i` calling `op(i, n)` for its
/// n-th operation. Every call's latency is kept.
async fn drive<F, Fut>(callers: usize, run: Duration, op: F) -> Sample
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    drive_timed(callers, run, move |i, n| {
        let call = op(i, n);
        async move {
            let t = Instant::now();
            call.await;
            t.elapsed()
        }
    })
    .await
}

/// [`drive`] for an `op` that times itself and returns the latency to keep, so that what
/// it prepares before the timed call (a cold request cloned, as a service holds one it just
/// parsed) counts in the throughput but not in the latency.
async fn drive_timed<F, Fut>(callers: usize, run: Duration, op: F) -> Sample
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Duration> + Send,
{
    let op = Arc::new(op);
    let barrier = Arc::new(tokio::sync::Barrier::new(callers + 1));
    let tasks: Vec<_> = (0..callers)
        .map(|i| {
            let (op, barrier) = (Arc::clone(&op), Arc::clone(&barrier));
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(1 << 16);
                barrier.wait().await;
                let start = Instant::now();
                let mut n = 0;
                while start.elapsed() < run {
                    latencies.push(op(i, n).await.as_nanos() as u64);
                    n += 1;
                    // An L1 hit never suspends: let the other callers have the thread.
                    if n.is_multiple_of(64) {
                        tokio::task::yield_now().await;
                    }
                }
                latencies
            })
        })
        .collect();
    barrier.wait().await;
    let start = Instant::now();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.expect("a caller panicked"));
    }
    Sample {
        latencies,
        wall: start.elapsed(),
        ..Sample::default()
    }
}

/// CPU time (ns) all threads of process `pid` have run, from `/proc/<pid>/task/*/schedstat`.
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// [`drive`], also charging the CPU this process and `redis_pid` spent to the sample.
async fn drive_charged<F, Fut>(redis_pid: u32, callers: usize, run: Duration, op: F) -> Sample
where
    F: Fn(usize, usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let (me, redis0) = (cpu_ns(std::process::id()), cpu_ns(redis_pid));
    let mut sample = drive(callers, run, op).await;
    sample.client_cpu_ns = cpu_ns(std::process::id()).saturating_sub(me);
    sample.redis_cpu_ns = cpu_ns(redis_pid).saturating_sub(redis0);
    sample
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

async fn build(upstream: Arc<dyn Upstream>, redis: Option<&str>, l1_bytes: u64) -> LlmCache {
    builder(upstream, redis, l1_bytes)
        .build()
        .await
        .expect("build the cache")
}

/// The cache's defaults, but for the bench's upstream, L1 bound, and a generous deadline.
fn builder(upstream: Arc<dyn Upstream>, redis: Option<&str>, l1_bytes: u64) -> LlmCacheBuilder {
    let mut b = LlmCache::builder()
        .upstream_arc(upstream)
        .l1_max_bytes(l1_bytes)
        // Generous: a loaded two-core machine must not turn hits into timeouts.
        .l2_deadline(Duration::from_millis(500))
        .l2_write_concurrency(1024);
    if let Some(url) = redis {
        b = b.redis(url);
    }
    // `LOAD_BENCH_UNCOMPRESSED=1`: store answers without lz4, to see what it costs a hit.
    if std::env::var("LOAD_BENCH_UNCOMPRESSED").is_ok_and(|v| v == "1") {
        b = b.compression_threshold(usize::MAX);
    }
    b
}

async fn wait_for_writes(cache: &LlmCache, n: u64) {
    let start = Instant::now();
    while cache.stats().cache.l2_writes < n {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "L2 writes did not land: {} of {n}",
            cache.stats().cache.l2_writes
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// L1 memory per entry: resident-set growth while `entries` answers of `chars` characters
/// are held, and how much of it lies beyond the answer's JSON. Run in a fresh process
/// ([`l1_memory_in_child`]): memory an earlier figure freed would be reused and hide growth.
async fn l1_memory(budget: Budget, chars: usize) -> Value {
    const WARM: usize = 200;
    let upstream = canned_sized(Duration::ZERO, chars);
    let cache = build(upstream, None, 1 << 30).await;
    // Warm the allocator and the runtime on a few entries first.
    for i in 0..WARM {
        cache.chat(&request(1_000_000 + i)).await.expect("warm-up");
    }
    let before = rss_bytes();
    let half = budget.entries / 2;
    for i in 0..half {
        cache.chat(&request(i)).await.expect("fill");
    }
    cache.tiers().run_pending_tasks().await;
    let middle = rss_bytes();
    for i in half..budget.entries {
        cache.chat(&request(i)).await.expect("fill");
    }
    cache.tiers().run_pending_tasks().await;
    let after = rss_bytes();
    let stats = cache.stats().cache;
    let held = stats.l1_entries.saturating_sub(WARM as u64);
    let growth = after.saturating_sub(before);
    let per_entry = growth / held.max(1);
    // The upstream's calls WARM.. answered the fill: the mean length of their JSON.
    let json_bytes: usize = (WARM..WARM + budget.entries)
        .map(|n| serde_json::to_vec(&response("gpt-4.1", n as u64, chars)).map_or(0, |b| b.len()))
        .sum();
    let json_per_entry = json_bytes as u64 / budget.entries.max(1) as u64;
    // The second half's growth alone: what one more entry costs once the fill's transient
    // allocations have settled (for small answers the first thousands cost far more).
    let marginal = after.saturating_sub(middle) / (budget.entries - half).max(1) as u64;
    json!({
        "entries": held,
        "answer_json_bytes": json_per_entry,
        "rss_growth_bytes": growth,
        "bytes_per_entry": per_entry,
        "beyond_json_bytes": per_entry as i64 - json_per_entry as i64,
        "second_half_bytes_per_entry": marginal,
        "weight_per_entry": stats.l1_bytes / stats.l1_entries.max(1),
    })
}

/// The per-entry cost of the cache's structures alone, with a trivial value (an `Arc<u64>`),
/// measured like [`l1_memory`] (resident-set growth over `entries`, after a warm-up, on one
/// thread): moka by itself (the engine's key type and a weigher, as the engine builds it),
/// and the engine's L1 (`TieredCache<u64>`, L1 only: moka plus the engine's entry). What an
/// answer costs beyond its JSON, less the engine's figure, is what the answer's own form
/// costs.
async fn trivial_entries(budget: Budget) -> Value {
    const WARM: u64 = 200;
    let n = budget.entries as u64;
    let digest = |i: u64| llm_cache_engine::digest::Digest::of(i.to_le_bytes());
    let per_entry = |before: u64, after: u64| after.saturating_sub(before) / n.max(1);

    let moka: moka::future::Cache<llm_cache_engine::digest::Digest, Arc<u64>> =
        moka::future::Cache::builder()
            .max_capacity(1 << 40)
            .weigher(|_, _| 64)
            .build();
    for i in 0..WARM {
        moka.insert(digest(1 << 40 | i), Arc::new(i)).await;
    }
    moka.run_pending_tasks().await;
    let before = rss_bytes();
    for i in 0..n {
        moka.insert(digest(i), Arc::new(i)).await;
    }
    moka.run_pending_tasks().await;
    let moka_bytes = per_entry(before, rss_bytes());
    assert!(moka.entry_count() >= n, "moka kept every entry");

    let tiers = llm_cache_engine::TieredCache::<u64>::builder()
        .l1_max_bytes(1 << 40)
        .build()
        .await
        .expect("an L1-only engine");
    for i in 0..WARM {
        tiers
            .get_or_fetch(digest(1 << 41 | i), move || async move { Ok(i) })
            .await
            .expect("warm-up");
    }
    tiers.run_pending_tasks().await;
    let before = rss_bytes();
    for i in 0..n {
        tiers
            .get_or_fetch(digest(1 << 42 | i), move || async move { Ok(i) })
            .await
            .expect("fill");
    }
    tiers.run_pending_tasks().await;
    let engine_bytes = per_entry(before, rss_bytes());
    json!({
        "entries": n,
        "moka_bytes_per_entry": moka_bytes,
        "engine_l1_bytes_per_entry": engine_bytes,
    })
}

/// Set in a child process of this benchmark: run only [`l1_memory`] with answers of this
/// many characters and print its JSON.
const MEMORY_CHILD: &str = "LOAD_BENCH_MEMORY_CHILD";

/// [`l1_memory`] in a child process of this same benchmark, so each fill has a fresh heap.
fn l1_memory_in_child(budget: Budget, chars: usize) -> Value {
    let exe = std::env::current_exe().expect("the benchmark's own path");
    let mut child = std::process::Command::new(exe);
    child
        .env(MEMORY_CHILD, chars.to_string())
        .stderr(std::process::Stdio::inherit());
    if budget.short {
        child.arg("--short");
    }
    let out = child.output().expect("run the memory child");
    assert!(
        out.status.success(),
        "the memory child failed: {}",
        out.status
    );
    serde_json::from_slice(&out.stdout).expect("the memory child prints JSON")
}

async fn l1_hits(budget: Budget, redis: &str) -> (Value, Value) {
    let upstream = canned(Duration::ZERO);
    let cache = build(upstream, Some(redis), 256 << 20).await;
    let requests: Arc<Vec<ChatRequest>> =
        Arc::new((0..CONCURRENCY).map(|i| request(2_000_000 + i)).collect());
    for r in requests.iter() {
        cache.chat(r).await.expect("warm-up");
    }
    let hit = {
        let (cache, requests) = (cache.clone(), Arc::clone(&requests));
        move |i: usize, _n: usize| {
            let (cache, requests) = (cache.clone(), Arc::clone(&requests));
            async move {
                let out = cache.chat(&requests[i]).await.expect("L1 hit");
                debug_assert_eq!(out.status(), CacheStatus::HitL1);
                std::hint::black_box(out);
            }
        }
    };
    let mut one = drive(1, budget.run, hit.clone()).await;
    let mut many = drive(CONCURRENCY, budget.run, hit).await;
    let s = cache.stats().cache;
    assert_eq!(
        s.misses, CONCURRENCY as u64,
        "every timed call must be an L1 hit"
    );
    (one.report(), many.report())
}

/// What the L2 comparison prints.
struct L2Figures {
    l2: Value,
    hand: Value,
    raw: Value,
    vs_hand: Value,
    vs_raw: Value,
    bookkeeping_us: f64,
    /// The same excess for the hand-written cache, and ours beyond it.
    bookkeeping_detail: Value,
    /// GET against the two one-round-trip lookups that take a lease on a miss.
    lookups: Value,
    stored_bytes: usize,
}

/// L2 hits through the cache (L1 off), the hand-written cache on its own keys holding the
/// same answers, and raw GETs of the cache's stored bytes, in rounds whose order rotates
/// so that the machine's drift hits all three alike.
async fn l2_comparison(budget: Budget, redis: &RedisServer) -> L2Figures {
    let upstream = canned(Duration::ZERO);
    let cache = build(upstream, Some(&redis.url()), 0).await;
    let keys = CONCURRENCY * KEYS_PER_CALLER;
    let requests: Arc<Vec<ChatRequest>> =
        Arc::new((0..keys).map(|i| request(3_000_000 + i)).collect());

    // The same connection setup as the cache's store: one multiplexed connection, TCP_NODELAY.
    let info = redis::IntoConnectionInfo::into_connection_info(redis.url().as_str())
        .expect("redis url")
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    let client = redis::Client::open(info).expect("redis client");
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(None);
    let connect = || client.get_multiplexed_async_connection_with_config(&config);
    let conn = connect().await.expect("raw connection");
    let conn_for_lookups = conn.clone();
    let hand_cache = HandWrittenCache::new(
        connect().await.expect("hand-written connection"),
        "hand:",
        L2_TTL_SECS,
    );
    let hand = hand_cache.clone();

    // Fill: the cache's answers go to L2 through the cache; the hand-written cache stores the
    // same answers under its own keys.
    for r in requests.iter() {
        let out = cache.chat(r).await.expect("fill L2");
        hand.set(r, &out)
            .await
            .expect("fill the hand-written cache");
    }
    wait_for_writes(&cache, keys as u64).await;
    let redis_keys: Arc<Vec<String>> = Arc::new(
        requests
            .iter()
            .map(|r| {
                let d = cache.digest_with(r, &Default::default());
                cache.tiers().l2_key(&d)
            })
            .collect(),
    );
    let mut probe = conn.clone();
    let stored: Vec<u8> = redis::cmd("GET")
        .arg(&redis_keys[0])
        .query_async(&mut probe)
        .await
        .expect("stored bytes");

    let l2_hit = {
        let (cache, requests) = (cache.clone(), Arc::clone(&requests));
        move |i: usize, n: usize| {
            let (cache, requests) = (cache.clone(), Arc::clone(&requests));
            async move {
                let r = &requests[i * KEYS_PER_CALLER + n % KEYS_PER_CALLER];
                let out = cache.chat(r).await.expect("L2 hit");
                std::hint::black_box(out);
            }
        }
    };
    let hand_hit = {
        let (hand, requests) = (hand.clone(), Arc::clone(&requests));
        move |i: usize, n: usize| {
            let (hand, requests) = (hand.clone(), Arc::clone(&requests));
            async move {
                let r = &requests[i * KEYS_PER_CALLER + n % KEYS_PER_CALLER];
                let out = hand.get(r).await.expect("hand-written GET");
                std::hint::black_box(out.expect("the hand-written cache holds the answer"));
            }
        }
    };
    let raw_get = {
        let keys = Arc::clone(&redis_keys);
        move |i: usize, n: usize| {
            let (mut conn, keys) = (conn.clone(), Arc::clone(&keys));
            async move {
                let key = &keys[i * KEYS_PER_CALLER + n % KEYS_PER_CALLER];
                let bytes: Option<Vec<u8>> = redis::cmd("GET")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .expect("raw GET");
                std::hint::black_box(bytes.expect("the key is stored"));
            }
        }
    };
    let pid = redis.pid().expect("redis-server is running");
    let round = budget.run / budget.rounds;
    let run_side = |side: usize, length: Duration| {
        let (l2_hit, hand_hit, raw_get) = (l2_hit.clone(), hand_hit.clone(), raw_get.clone());
        async move {
            match side {
                0 => drive_charged(pid, CONCURRENCY, length, l2_hit).await,
                1 => drive_charged(pid, CONCURRENCY, length, hand_hit).await,
                _ => drive_charged(pid, CONCURRENCY, length, raw_get).await,
            }
        }
    };
    // `LOAD_BENCH_PROFILE=cache` (or `hand`, `raw`): run only that side for the whole figure
    // first, so a profiler sees one path.
    match std::env::var("LOAD_BENCH_PROFILE").as_deref() {
        Ok("cache") => _ = run_side(0, budget.run).await,
        Ok("hand") => _ = run_side(1, budget.run).await,
        Ok("raw") => _ = run_side(2, budget.run).await,
        _ => {}
    }
    // Short rounds: the machine's load drifts on a scale of seconds, so the three sides of
    // one round see about the same machine, and the median of the rounds' ratios is the
    // figure. The order rotates (l2 hand raw, hand raw l2, raw l2 hand, ...).
    let mut sides: [Vec<Sample>; 3] = Default::default();
    let (mut vs_hand, mut vs_raw) = (Vec::new(), Vec::new());
    for r in 0..budget.rounds as usize {
        let mut this: [Option<Sample>; 3] = Default::default();
        for k in 0..3 {
            let side = (r + k) % 3;
            this[side] = Some(run_side(side, round).await);
        }
        let [l2, hand, raw] = this.map(|s| s.expect("every side ran"));
        vs_hand.push(l2.ops_per_sec() / hand.ops_per_sec());
        vs_raw.push(l2.ops_per_sec() / raw.ops_per_sec());
        for (all, s) in sides.iter_mut().zip([l2, hand, raw]) {
            all.push(s);
        }
    }
    let [mut l2, mut hand, mut raw] = sides.map(Sample::merge);
    let s = cache.stats().cache;
    assert_eq!(
        s.misses, keys as u64,
        "every timed call must be an L2 hit (misses {}, l2 errors {}, timeouts {})",
        s.misses, s.l2_errors, s.l2_timeouts
    );
    // What no L2 hit can skip, on one core: the request's key (canonical JSON, SHA-256),
    // the envelope (checksum, lz4) and the answer's JSON. Added to what a raw GET costs
    // client and server per op, it bounds the ratio this machine allows when CPU-bound.
    let floor = necessary_work(&cache, &requests, &stored);
    let necessary = floor["total_us"].as_f64().unwrap_or(0.0);
    let raw_cpu = raw.client_cpu_us_per_op() + raw.redis_cpu_us_per_op();
    let ceiling = raw_cpu / (raw_cpu + necessary);
    let bookkeeping = l2.client_cpu_us_per_op() - raw.client_cpu_us_per_op() - necessary;
    // The same measure for the hand-written cache, which keeps no books at all: what it
    // shows is the price of doing the necessary work amid 64 tasks (cold caches, other
    // allocations) rather than alone in a loop, the floor of this figure on this machine.
    let plain = serde_json::to_vec(cache.chat(&requests[0]).await.expect("hit").value())
        .expect("an answer serializes");
    let hand_necessary = hand_written_work(&hand_cache, &requests, &plain);
    let hand_excess = hand.client_cpu_us_per_op() - raw.client_cpu_us_per_op() - hand_necessary;
    let bookkeeping_detail = json!({
        "hand_written_necessary_us": round3(hand_necessary),
        "hand_written_excess_us_per_hit": round3(hand_excess),
        "beyond_hand_written_us": round3(bookkeeping - hand_excess),
    });
    let lookups = lookup_commands(budget, pid, conn_for_lookups, Arc::clone(&redis_keys)).await;
    L2Figures {
        vs_hand: json!({
            "median_of_rounds": round3(median(vs_hand)),
            "overall": round3(l2.ops_per_sec() / hand.ops_per_sec()),
            "rounds": budget.rounds,
        }),
        vs_raw: json!({
            "median_of_rounds": round3(median(vs_raw)),
            "overall": round3(l2.ops_per_sec() / raw.ops_per_sec()),
            "rounds": budget.rounds,
            "necessary_cpu_per_hit": floor,
            "cpu_bound_ceiling": round3(ceiling),
        }),
        bookkeeping_us: round3(bookkeeping),
        bookkeeping_detail,
        lookups,
        l2: l2.report(),
        hand: hand.report(),
        raw: raw.report(),
        stored_bytes: stored.len(),
    }
}

/// Microseconds per call of `f` (called with 0, 1, 2...), the best mean of 50 batches of
/// 400. Wall time on one thread, so the best of several batches: a batch that another
/// process preempted (the machine is shared) would count time this work did not take.
fn best_batch_mean_us(f: &mut dyn FnMut(usize)) -> f64 {
    const BATCHES: usize = 50;
    const N: usize = 400;
    (0..BATCHES)
        .map(|b| {
            let start = Instant::now();
            for i in b * N..(b + 1) * N {
                f(i);
            }
            start.elapsed().as_nanos() as f64 / N as f64 / 1000.0
        })
        .fold(f64::INFINITY, f64::min)
}

/// Single-core time per hit (best batch mean) of the work every L2 hit must do besides the GET.
fn necessary_work(cache: &LlmCache, requests: &[ChatRequest], stored: &[u8]) -> Value {
    // `stored` is the entry of the first request.
    let first = cache
        .tiers()
        .l2_key(&cache.digest_with(&requests[0], &Default::default()));
    let none = llm_cache::envelope::MacKeys::none();
    let time = best_batch_mean_us;
    let key = time(&mut |i| {
        let r = &requests[i % requests.len()];
        std::hint::black_box(cache.digest_with(r, &Default::default()));
    });
    let decode = time(&mut |_| {
        // The key name's hash (the entry's binding) is part of every decode.
        let bound = llm_cache::envelope::Binding::of_key(std::hint::black_box(&first));
        let env = llm_cache::envelope::decode(std::hint::black_box(stored), &bound, &none)
            .expect("stored");
        std::hint::black_box(env.payload.len());
    });
    let payload =
        llm_cache::envelope::decode(stored, &llm_cache::envelope::Binding::of_key(&first), &none)
            .expect("stored")
            .payload
            .into_owned();
    let parse = time(&mut |_| {
        let r: ChatResponse = serde_json::from_slice(std::hint::black_box(&payload)).expect("json");
        std::hint::black_box(r);
    });
    json!({
        "key_us": round3(key),
        "envelope_us": round3(decode),
        "json_us": round3(parse),
        "total_us": round3(key + decode + parse),
    })
}

/// Single-core time per hit (best batch mean) of what the hand-written cache does besides
/// the GET: its key (`serde_json::to_vec`, SHA-256, hex) and `from_slice` of the answer.
fn hand_written_work(hand: &HandWrittenCache, requests: &[ChatRequest], plain: &[u8]) -> f64 {
    let time = best_batch_mean_us;
    let key = time(&mut |i| {
        std::hint::black_box(hand.key(&requests[i % requests.len()]));
    });
    let parse = time(&mut |_| {
        let r: ChatResponse = serde_json::from_slice(std::hint::black_box(plain)).expect("json");
        std::hint::black_box(r);
    });
    key + parse
}

/// The lookup an L2 read can be, in the same rounds: a plain `GET` (what the hand-written
/// cache sends), `SET key marker NX PX ttl GET` (what the cache sends: it takes the lease in
/// the same round trip when the key is empty), and a Lua script that does `GET` and, on a
/// miss, `SET NX` of a separate lease key (the other way to look up and lease in one round
/// trip). Every key holds an entry, so all three are hits and set nothing.
async fn lookup_commands(
    budget: Budget,
    pid: u32,
    conn: redis::aio::MultiplexedConnection,
    keys: Arc<Vec<String>>,
) -> Value {
    static SCRIPT: &str = "local v = redis.call('GET', KEYS[1]) if v then return v end \
        if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end return 0";
    let script = redis::Script::new(SCRIPT);
    let marker = [
        b'L', b'L', b'M', b'C', 0xfe, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16,
    ];
    let op = move |kind: usize| {
        let (conn, keys, script) = (conn.clone(), Arc::clone(&keys), script.clone());
        move |i: usize, n: usize| {
            let (mut conn, keys, script) = (conn.clone(), Arc::clone(&keys), script.clone());
            async move {
                let key = &keys[i * KEYS_PER_CALLER + n % KEYS_PER_CALLER];
                let bytes: Option<Vec<u8>> = match kind {
                    0 => redis::cmd("GET").arg(key).query_async(&mut conn).await,
                    1 => {
                        redis::cmd("SET")
                            .arg(key)
                            .arg(&marker[..])
                            .arg("NX")
                            .arg("PX")
                            .arg(10_000)
                            .arg("GET")
                            .query_async(&mut conn)
                            .await
                    }
                    _ => {
                        script
                            .key(key)
                            .key(format!("{key}.lease"))
                            .arg(&marker[..])
                            .arg(10_000)
                            .invoke_async(&mut conn)
                            .await
                    }
                }
                .expect("lookup");
                std::hint::black_box(bytes.expect("the key holds an entry"));
            }
        }
    };
    let rounds = (budget.rounds as usize).max(3);
    let round = budget.run / 2 / rounds as u32;
    let mut sides: [Vec<Sample>; 3] = Default::default();
    for r in 0..rounds {
        for k in 0..3 {
            let side = (r + k) % 3;
            sides[side].push(drive_charged(pid, CONCURRENCY, round, op(side)).await);
        }
    }
    let [mut get, mut set_nx_get, mut script] = sides.map(Sample::merge);
    let base = get.ops_per_sec();
    json!({
        "get": get.report(),
        "set_nx_get": set_nx_get.report(),
        "lua_get_or_lease": script.report(),
        "set_nx_get_vs_get_throughput": round3(set_nx_get.ops_per_sec() / base),
        "lua_vs_get_throughput": round3(script.ops_per_sec() / base),
    })
}

async fn stampede(redis: &str) -> Value {
    // The answer takes 100 ms, so every caller arrives while the first call is running.
    let upstream = canned(Duration::from_millis(100));
    let cache = build(
        Arc::clone(&upstream) as Arc<dyn Upstream>,
        Some(redis),
        256 << 20,
    )
    .await;
    let req = Arc::new(request(4_000_000));
    let barrier = Arc::new(tokio::sync::Barrier::new(STAMPEDE));
    let start = Instant::now();
    let tasks: Vec<_> = (0..STAMPEDE)
        .map(|_| {
            let (cache, req, barrier) = (cache.clone(), Arc::clone(&req), Arc::clone(&barrier));
            tokio::spawn(async move {
                barrier.wait().await;
                cache.chat(&req).await.expect("stampede").status()
            })
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::<String, u64>::new();
    for t in tasks {
        *statuses
            .entry(t.await.expect("a caller panicked").to_string())
            .or_default() += 1;
    }
    let calls = upstream.calls.load(Relaxed);
    // Correctness, not speed: this one fails the run (and so scripts/test.sh).
    assert_eq!(
        calls, 1,
        "a stampede of {STAMPEDE} identical requests cost {calls} upstream calls"
    );
    json!({
        "callers": STAMPEDE,
        "upstream_calls": calls,
        "statuses": statuses,
        "ms": start.elapsed().as_millis() as u64,
    })
}

/// A miss through the cache (with Redis: the L2 read that misses, the lease, the fill, the
/// write behind) against the same client calling the mock directly, with leases on (the
/// default with Redis) and off, interleaved call by call in an order that rotates.
/// What a miss may cost beyond the upstream call and one Redis round trip (issue 26).
const MISS_TARGET_BEYOND_ROUND_TRIP_US: f64 = 25.0;

async fn miss_overhead(budget: Budget, redis: &str) -> Value {
    let mock = MockUpstream::start().await;
    let client = Arc::new(OpenAiCompatible::new(mock.base_url()).retry(RetryPolicy::none()));
    let upstream = || Arc::clone(&client) as Arc<dyn Upstream>;
    let leased = build(upstream(), Some(redis), 256 << 20).await;
    let unleased = builder(upstream(), Some(redis), 256 << 20)
        .leases(false)
        .build()
        .await
        .expect("build the cache without leases");
    // Warm the HTTP connection pool and the three paths.
    for i in 0..50 {
        client.chat(&request(5_000_000 + i)).await.expect("warm-up");
        leased.chat(&request(5_100_000 + i)).await.expect("warm-up");
        unleased
            .chat(&request(5_200_000 + i))
            .await
            .expect("warm-up");
    }
    wait_for_writes(&leased, 50).await;
    wait_for_writes(&unleased, 50).await;
    // One Redis round trip (a GET of a missing key on a connection of its own, set up as the
    // cache's is): what a miss pays on top while lookups send GET first (L2 hits dominate).
    let info = redis::IntoConnectionInfo::into_connection_info(redis)
        .expect("redis url")
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    let mut conn = redis::Client::open(info)
        .expect("redis client")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection");
    // direct, with leases, without leases, one round trip: interleaved call by call, the
    // order rotating, and every call made from the same idle state (below).
    let mut samples: [Sample; 5] = Default::default();
    let mut writes = [
        0,
        leased.stats().cache.l2_writes,
        unleased.stats().cache.l2_writes,
        0,
        0,
    ];
    let mut back_to_back = Sample::default();
    for i in 0..budget.misses {
        // A new order each round (a fixed rotation would make each side follow the same
        // other side most of the time, and what one leaves running slow the next).
        let mut order = [0usize, 1, 2, 3, 4];
        let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for j in (1..5).rev() {
            x ^= x >> 29;
            x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
            order.swap(j, (x % (j as u64 + 1)) as usize);
        }
        for side in order {
            let r = request(6_000_000 + side * 1_000_000 + i);
            let t = Instant::now();
            let (status, written) = match side {
                0 => {
                    std::hint::black_box(client.chat(&r).await.expect("direct call"));
                    (CacheStatus::Miss, None)
                }
                1 => (
                    leased.chat(&r).await.expect("miss with leases").status(),
                    Some(&leased),
                ),
                2 => (
                    unleased
                        .chat(&r)
                        .await
                        .expect("miss without leases")
                        .status(),
                    Some(&unleased),
                ),
                3 => {
                    raw_get_missing(&mut conn, format!("missing:{i}")).await;
                    (CacheStatus::Miss, None)
                }
                _ => {
                    // The lookup that takes a lease on an empty key, as a leased miss sends.
                    let none: Option<Vec<u8>> = redis::cmd("SET")
                        .arg(format!("leased:{i}"))
                        .arg("lease-marker-of-the-bench")
                        .arg("NX")
                        .arg("PX")
                        .arg(30_000)
                        .arg("GET")
                        .query_async(&mut conn)
                        .await
                        .expect("raw SET NX GET");
                    assert!(none.is_none());
                    (CacheStatus::Miss, None)
                }
            };
            samples[side].latencies.push(t.elapsed().as_nanos() as u64);
            assert_eq!(status, CacheStatus::Miss);
            // The write behind the miss (off the caller's path) lands before the next call,
            // so that it slows no other timed call.
            if let Some(cache) = written {
                let before = writes[side];
                while cache.stats().cache.l2_writes == before {
                    tokio::time::sleep(Duration::from_micros(50)).await;
                }
                writes[side] += 1;
            }
            // Then every side waits the same before its next call (the timer's granularity,
            // about 1 ms): each call starts with the runtime's threads idle, as a miss's GET
            // does after the wait above. A round trip timed back to back (below) finds them
            // awake, and is faster than any miss's.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Two GETs in a row, the second timed.
        raw_get_missing(&mut conn, format!("missing:a{i}")).await;
        let t = Instant::now();
        raw_get_missing(&mut conn, format!("missing:b{i}")).await;
        back_to_back.latencies.push(t.elapsed().as_nanos() as u64);
        // The next round's first call starts idle too.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let [
        mut direct,
        mut with,
        mut without,
        mut round_trip,
        mut lease_trip,
    ] = samples;
    let d50 = direct.percentile_ns(0.5);
    let rt50 = round_trip.percentile_ns(0.5);
    let lt50 = lease_trip.percentile_ns(0.5);
    let beyond =
        |overhead: u64, trip: u64| ((overhead as f64 - trip as f64) / 10.0).round() / 100.0;
    // Each miss against the one round trip its lookup needs: a `GET` without leases, the
    // lease-taking `SET NX PX GET` with them (a write: the server does more for it), both
    // sent raw in the same rounds.
    let miss = |s: &mut Sample, trip: u64| {
        let m50 = s.percentile_ns(0.5);
        let overhead = m50.saturating_sub(d50);
        json!({
            "miss_p50_us": us(m50),
            "miss_p99_us": us(s.percentile_ns(0.99)),
            "overhead_p50_us": us(overhead),
            "beyond_round_trip_p50_us": beyond(overhead, trip),
            "beyond_get_round_trip_p50_us": beyond(overhead, rt50),
            "target_beyond_round_trip_us": MISS_TARGET_BEYOND_ROUND_TRIP_US,
        })
    };
    json!({
        "misses": budget.misses,
        "direct_p50_us": us(d50),
        "direct_p99_us": us(direct.percentile_ns(0.99)),
        "with_leases": miss(&mut with, lt50),
        "without_leases": miss(&mut without, rt50),
        "redis_round_trip_p50_us": us(rt50),
        "redis_round_trip_back_to_back_p50_us": us(back_to_back.percentile_ns(0.5)),
        "redis_set_nx_get_round_trip_p50_us": us(lt50),
    })
}

/// A raw `GET` of `key`, which must be missing.
async fn raw_get_missing(conn: &mut redis::aio::MultiplexedConnection, key: String) {
    let none: Option<Vec<u8>> = redis::cmd("GET")
        .arg(key)
        .query_async(conn)
        .await
        .expect("raw GET");
    assert!(none.is_none());
}

/// `LlmCache::batch` of 1,000 requests of which every other one is already cached (in L1
/// and L2), at concurrency 64 with Redis: its throughput, and the upstream calls it costs.
async fn batch_half_cached(budget: Budget, redis: &str) -> Value {
    const REQUESTS: usize = 1_000;
    let upstream = canned(Duration::ZERO);
    let cache = build(
        Arc::clone(&upstream) as Arc<dyn Upstream>,
        Some(redis),
        256 << 20,
    )
    .await;
    let (mut ms, mut statuses) = (Vec::new(), std::collections::BTreeMap::<String, u64>::new());
    let mut upstream_calls = 0;
    for b in 0..budget.batches {
        let requests: Vec<ChatRequest> = (0..REQUESTS)
            .map(|i| request(9_000_000 + b * REQUESTS + i))
            .collect();
        for r in requests.iter().step_by(2) {
            cache.chat(r).await.expect("cache half");
        }
        let calls = upstream.calls.load(Relaxed);
        let start = Instant::now();
        let answers = cache.batch(&requests, CONCURRENCY).await;
        ms.push(start.elapsed().as_secs_f64() * 1000.0);
        let calls = upstream.calls.load(Relaxed) - calls;
        upstream_calls += calls;
        // Correctness, not speed: this one fails the run (and so scripts/test.sh).
        assert_eq!(
            calls,
            (REQUESTS / 2) as u64,
            "a batch of {REQUESTS} with half cached cost {calls} upstream calls"
        );
        for a in answers {
            *statuses
                .entry(a.expect("batch answer").status().to_string())
                .or_default() += 1;
        }
    }
    ms.sort_by(f64::total_cmp);
    let p50 = ms[ms.len() / 2];
    json!({
        "requests": REQUESTS,
        "cached": REQUESTS / 2,
        "concurrency": CONCURRENCY,
        "batches": budget.batches,
        "upstream_calls_per_batch": upstream_calls / budget.batches.max(1) as u64,
        "statuses": statuses,
        "ms_p50": round3(p50),
        "requests_per_sec": (REQUESTS as f64 / p50 * 1000.0).round(),
    })
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown".into())
}

fn main() {
    let budget = Budget::from_env();
    if let Ok(chars) = std::env::var(MEMORY_CHILD) {
        // One thread: on the multi-thread runtime the fill's allocations land in whichever
        // worker's malloc arena runs them, and the growth for small answers varied from run
        // to run by 60%; on one thread it is the same every run.
        let chars: usize = chars.parse().expect("answer characters");
        let one_thread = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        // 0 characters: the structures alone, with a trivial value.
        let figure = if chars == 0 {
            one_thread.block_on(trivial_entries(budget))
        } else {
            one_thread.block_on(l1_memory(budget, chars))
        };
        println!("{figure}");
        return;
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let report = runtime.block_on(async {
        // `LOAD_BENCH_ONLY=l2,miss` (of memory, l1, l2, stampede, miss, batch, embeddings,
        // scale) runs
        // only those figures, for profiling; `scale` runs only in the full run unless named.
        let only = std::env::var("LOAD_BENCH_ONLY").unwrap_or_default();
        let named = |name: &str| only.split(',').any(|n| n.trim() == name);
        let run = |name: &str| only.is_empty() || named(name);
        let redis = RedisServer::start();
        eprintln!("load: redis-server on port {}", redis.port());
        // Progress to stderr for each figure that runs.
        let run = |name: &str, what: &str| {
            let yes = run(name);
            if yes {
                eprintln!("load: {what}");
            }
            yes
        };
        let memory = if run("memory", "L1 memory per entry (child processes)") {
            let answer = l1_memory_in_child(budget, ANSWER_CHARS);
            let trivial = l1_memory_in_child(budget, 0);
            // What is ours beyond the answer's JSON and moka's own entry (the engine's
            // entry, the answer's form).
            let beyond = answer["beyond_json_bytes"].as_i64();
            let less = |what: &str| beyond.zip(trivial[what].as_i64()).map(|(b, t)| b - t);
            json!({
                "answer": answer,
                "small_answer": l1_memory_in_child(budget, SMALL_ANSWER_CHARS),
                "trivial_value": trivial,
                "ours_beyond_json_and_moka_bytes": less("moka_bytes_per_entry"),
                "answer_form_beyond_json_and_engine_entry_bytes": less("engine_l1_bytes_per_entry"),
            })
        } else {
            Value::Null
        };
        let (l1_c1, l1_c64) = if run("l1", "L1 hits") {
            l1_hits(budget, &redis.url()).await
        } else {
            (Value::Null, Value::Null)
        };
        let l2 = if run("l2", "L2 hits vs the hand-written cache vs raw GET") {
            Some(l2_comparison(budget, &redis).await)
        } else {
            None
        };
        let stampede = if run("stampede", "stampede") {
            stampede(&redis.url()).await
        } else {
            Value::Null
        };
        let miss = if run("miss", "miss overhead, leases on and off") {
            // On a worker, as a service's request handlers run: from `block_on`'s thread
            // every hand-off to a task (the Redis connection's, the write behind) would wake a
            // parked worker, which is not what a miss costs in a service.
            let url = redis.url();
            tokio::spawn(async move { miss_overhead(budget, &url).await })
                .await
                .expect("the miss figures panicked")
        } else {
            Value::Null
        };
        // With `--features async-openai`: hits through async-openai's Client and the layer.
        #[cfg(feature = "async-openai")]
        let async_openai = if run("async_openai", "hits through the async-openai layer") {
            async_openai_figures::figures(budget.run, &redis.url()).await
        } else {
            Value::Null
        };
        #[cfg(not(feature = "async-openai"))]
        let async_openai = Value::Null;
        let batch = if run("batch", "batch of 1,000, half cached") {
            batch_half_cached(budget, &redis.url()).await
        } else {
            Value::Null
        };
        let embeddings = if run("embeddings", "embeddings: a 256-input batch, 80% cached") {
            embeddings::figures(budget.short, &redis).await
        } else {
            Value::Null
        };
        // The million-entry figure takes about half a minute: full run only, unless named.
        let scale = if (!budget.short || named("scale")) && run("scale", "L1 hits at scale") {
            scale::l1_scale(budget).await
        } else {
            Value::Null
        };

        let request_bytes = serde_json::to_vec(&request(0)).map_or(0, |b| b.len());
        let response_bytes =
            serde_json::to_vec(&response("gpt-4.1", 0, ANSWER_CHARS)).map_or(0, |b| b.len());
        let figures = l2;
        let (l2, hand, raw, vs_hand, vs_raw, bookkeeping, stored_bytes) = match &figures {
            Some(f) => (
                f.l2.clone(),
                f.hand.clone(),
                f.raw.clone(),
                f.vs_hand.clone(),
                f.vs_raw.clone(),
                json!(f.bookkeeping_us),
                f.stored_bytes,
            ),
            None => Default::default(),
        };
        let (bookkeeping_detail, lookups) = match figures {
            Some(f) => (f.bookkeeping_detail, f.lookups),
            None => Default::default(),
        };
        // Each target is true or false, or null when its figure did not run.
        let at_most = |figure: &Value, bound: f64| json!(figure.as_f64().map(|x| x <= bound));
        let under = |figure: &Value, bound: f64| json!(figure.as_f64().map(|x| x < bound));
        let targets = json!({
            "l1_hit_p50_under_3us": under(&l1_c1["p50_us"], 3.0),
            "l2_hit_throughput_at_least_0_9_of_hand_written":
                json!(vs_hand["median_of_rounds"].as_f64().map(|r| r >= 0.9)),
            "l2_bookkeeping_at_most_1us": at_most(&bookkeeping, 1.0),
            "stampede_exactly_1_upstream_call":
                json!(stampede["upstream_calls"].as_u64().map(|n| n == 1)),
            "miss_overhead_p50_under_100us_with_leases":
                under(&miss["with_leases"]["overhead_p50_us"], 100.0),
            "miss_at_most_25us_beyond_its_round_trip_with_leases": at_most(
                &miss["with_leases"]["beyond_round_trip_p50_us"],
                MISS_TARGET_BEYOND_ROUND_TRIP_US
            ),
            "miss_at_most_25us_beyond_its_round_trip_without_leases": at_most(
                &miss["without_leases"]["beyond_round_trip_p50_us"],
                MISS_TARGET_BEYOND_ROUND_TRIP_US
            ),
            "batch_half_cached_exactly_500_upstream_calls":
                json!(batch["upstream_calls_per_batch"].as_u64().map(|n| n == 500)),
            "l1_bytes_beyond_json_at_most_300":
                at_most(&memory["answer"]["beyond_json_bytes"], 300.0),
            "l1_ours_beyond_json_and_moka_at_most_150":
                at_most(&memory["ours_beyond_json_and_moka_bytes"], 150.0),
        });
        json!({
            "mode": if budget.short { "short" } else { "full" },
            "machine": {"cpus": cores, "cpu_model": cpu_model()},
            "request_bytes": request_bytes,
            "response_bytes": response_bytes,
            "l2_stored_bytes": stored_bytes,
            "l1_hit": {"concurrency_1": l1_c1, "concurrency_64": l1_c64},
            "l2_hit": {"concurrency_64": l2},
            "hand_written_cache": {"concurrency_64": hand},
            "raw_redis_get": {"concurrency_64": raw},
            "l2_hit_vs_hand_written_throughput": vs_hand,
            "l2_hit_vs_raw_get_throughput": vs_raw,
            "l2_bookkeeping_us_per_hit": bookkeeping,
            "l2_bookkeeping_detail": bookkeeping_detail,
            "l2_lookup_commands": lookups,
            "stampede": stampede,
            "miss_overhead": miss,
            "batch": batch,
            "embeddings": embeddings,
            "async_openai_layer": async_openai,
            "l1_memory": memory,
            "l1_scale": scale,
            "targets": targets,
        })
    });
    let mut report = report;
    report["seconds"] = json!((started.elapsed().as_secs_f64() * 10.0).round() / 10.0);
    println!("{report}");
    runtime.shutdown_timeout(Duration::from_secs(1));
}
