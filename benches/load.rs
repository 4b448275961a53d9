//! The load benchmark: prints ONE JSON object with every figure measured in this run,
//! against a redis-server it starts on a free loopback port (never 6379) and kills at the
//! end. Ratios against raw Redis are what to compare across machines, not absolutes.
//!
//! - L1-hit throughput and p50/p99 through `LlmCache::chat`, at concurrency 1 and 64;
//! - L2-hit throughput and p50/p99 at concurrency 64 (L1 disabled), raw `redis` GET of the
//!   same stored bytes with the same concurrency and connection setup (one multiplexed
//!   connection, TCP_NODELAY), and the ratio of the two;
//! - stampede: 1,000 concurrent identical cold requests, and the upstream calls they cost;
//! - miss overhead: p50 of a miss through the cache minus p50 of the same client calling
//!   the mock upstream (HTTP on loopback) directly;
//! - L1 memory per entry: resident-set growth over N entries held, divided by N.
//!
//! Requests are about 1 KB, responses about 2 KB. `cargo bench --bench load` for the full
//! run; `LOAD_BENCH_SHORT=1` (or `-- --short`) for the quick one `scripts/test.sh` runs.
//! Progress goes to stderr, the JSON to stdout.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use llm_cache::{
    BoxFuture, CacheStatus, ChatMessage, ChatRequest, ChatResponse, Choice, LlmCache,
    OpenAiCompatible, Result, RetryPolicy, Upstream, Usage,
};
use serde_json::{Value, json};
use support::redis::RedisServer;
use support::upstream::MockUpstream;

/// Callers at once for the concurrent figures.
const CONCURRENCY: usize = 64;
/// Distinct keys each concurrent caller cycles through on the L2 figures, so no two
/// callers share a key (sharing would coalesce instead of reading L2).
const KEYS_PER_CALLER: usize = 4;
/// Callers of the stampede.
const STAMPEDE: usize = 1_000;

/// How long each figure runs: the full run, or the quick one for CI.
#[derive(Clone, Copy)]
struct Budget {
    short: bool,
    /// Per throughput figure (split into rounds where two are compared).
    run: Duration,
    /// Pairs of rounds (L2 hits, raw GETs) that share `run` for each of the two.
    rounds: u32,
    /// Sequential misses (and as many direct upstream calls).
    misses: usize,
    /// Entries held for the memory figure.
    entries: usize,
}

impl Budget {
    fn from_env() -> Budget {
        let short = std::env::var("LOAD_BENCH_SHORT").is_ok_and(|v| !v.is_empty() && v != "0")
            || std::env::args().any(|a| a == "--short");
        if short {
            Budget {
                short,
                run: Duration::from_millis(800),
                rounds: 4,
                misses: 300,
                entries: 5_000,
            }
        } else {
            Budget {
                short,
                run: Duration::from_secs(4),
                rounds: 16,
                misses: 2_000,
                entries: 20_000,
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

/// About 2 KB of answer: words drawn from a small vocabulary, which lz4 compresses about
/// as well as it does real answers (roughly 2:1).
fn response(model: &str, n: u64) -> ChatResponse {
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
    let mut content = String::with_capacity(2048);
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while content.len() < 1900 {
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

/// An in-process upstream with a 2 KB answer: for the hit figures the upstream is never
/// called after warm-up, and for the stampede only its call count matters.
struct Canned {
    calls: AtomicU64,
    delay: Duration,
}

impl Upstream for Canned {
    fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse>> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Relaxed);
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            Ok(response(&request.model, n))
        })
    }
}

fn canned(delay: Duration) -> Arc<Canned> {
    Arc::new(Canned {
        calls: AtomicU64::new(0),
        delay,
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
            let per_op = |ns: u64| round3(ns as f64 / 1000.0 / self.latencies.len().max(1) as f64);
            report["client_cpu_us_per_op"] = json!(per_op(self.client_cpu_ns));
            report["redis_cpu_us_per_op"] = json!(per_op(self.redis_cpu_ns));
        }
        report
    }
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
                    let t = Instant::now();
                    op(i, n).await;
                    latencies.push(t.elapsed().as_nanos() as u64);
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
    b.build().await.expect("build the cache")
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

/// L1 memory per entry: resident-set growth while `entries` answers are held.
async fn l1_memory(budget: Budget) -> Value {
    let upstream = canned(Duration::ZERO);
    let cache = build(upstream, None, 1 << 30).await;
    // Warm the allocator and the runtime on a few entries first.
    for i in 0..200 {
        cache.chat(&request(1_000_000 + i)).await.expect("warm-up");
    }
    let before = rss_bytes();
    for i in 0..budget.entries {
        cache.chat(&request(i)).await.expect("fill");
    }
    cache.tiers().run_pending_tasks().await;
    let after = rss_bytes();
    let stats = cache.stats().cache;
    let held = stats.l1_entries.saturating_sub(200);
    let growth = after.saturating_sub(before);
    json!({
        "entries": held,
        "rss_growth_bytes": growth,
        "bytes_per_entry": growth / held.max(1),
        "weight_per_entry": stats.l1_bytes / stats.l1_entries.max(1),
    })
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

/// L2 hits through the cache (L1 off) and raw GETs of the same bytes, in alternating
/// rounds so that the machine's drift hits both alike.
async fn l2_vs_raw(budget: Budget, redis: &RedisServer) -> (Value, Value, Value, usize) {
    let upstream = canned(Duration::ZERO);
    let cache = build(upstream, Some(&redis.url()), 0).await;
    let keys = CONCURRENCY * KEYS_PER_CALLER;
    let requests: Arc<Vec<ChatRequest>> =
        Arc::new((0..keys).map(|i| request(3_000_000 + i)).collect());
    for r in requests.iter() {
        cache.chat(r).await.expect("fill L2");
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

    // The same connection setup as the cache's store: one multiplexed connection, TCP_NODELAY.
    let info = redis::IntoConnectionInfo::into_connection_info(redis.url().as_str())
        .expect("redis url")
        .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
    let client = redis::Client::open(info).expect("redis client");
    let conn = client
        .get_multiplexed_async_connection_with_config(
            &redis::AsyncConnectionConfig::new().set_response_timeout(None),
        )
        .await
        .expect("raw connection");
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
    // Short rounds in pairs: the machine's load drifts on a scale of seconds, so each pair
    // sees about the same machine, and the median of the pairs' ratios is the figure.
    // `LOAD_BENCH_PROFILE=cache` (or `raw`): run only that side for the whole figure, so
    // a profiler sees one path; the figures it prints then compare nothing.
    match std::env::var("LOAD_BENCH_PROFILE").as_deref() {
        Ok("cache") => _ = drive(CONCURRENCY, budget.run, l2_hit.clone()).await,
        Ok("raw") => _ = drive(CONCURRENCY, budget.run, raw_get.clone()).await,
        _ => {}
    }
    let round = budget.run / budget.rounds;
    let pid = redis.pid().expect("redis-server is running");
    let (mut l2_rounds, mut raw_rounds, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for pair in 0..budget.rounds {
        let (raw, l2) = if pair % 2 == 0 {
            let raw = drive_charged(pid, CONCURRENCY, round, raw_get.clone()).await;
            (
                raw,
                drive_charged(pid, CONCURRENCY, round, l2_hit.clone()).await,
            )
        } else {
            let l2 = drive_charged(pid, CONCURRENCY, round, l2_hit.clone()).await;
            (
                drive_charged(pid, CONCURRENCY, round, raw_get.clone()).await,
                l2,
            )
        };
        ratios.push(l2.ops_per_sec() / raw.ops_per_sec());
        raw_rounds.push(raw);
        l2_rounds.push(l2);
    }
    ratios.sort_by(f64::total_cmp);
    let ratio = ratios[ratios.len() / 2];
    let (mut l2, mut raw) = (Sample::merge(l2_rounds), Sample::merge(raw_rounds));
    let s = cache.stats().cache;
    assert_eq!(
        s.misses, keys as u64,
        "every timed call must be an L2 hit (misses {}, l2 errors {}, timeouts {})",
        s.misses, s.l2_errors, s.l2_timeouts
    );
    let overall = l2.ops_per_sec() / raw.ops_per_sec();
    // What no L2 hit can skip, on one core: the request's key (canonical JSON, SHA-256),
    // the envelope (checksum, lz4) and the answer's JSON. Added to what a raw GET costs
    // client and server per op, it bounds the ratio this machine allows when CPU-bound.
    let floor = necessary_work(&cache, &requests, &stored);
    let per_op = |ns: u64, s: &Sample| ns as f64 / 1000.0 / s.latencies.len().max(1) as f64;
    let raw_cpu = per_op(raw.client_cpu_ns, &raw) + per_op(raw.redis_cpu_ns, &raw);
    let ceiling = raw_cpu / (raw_cpu + floor["total_us"].as_f64().unwrap_or(0.0));
    let ratio = json!({
        "median_of_pairs": round3(ratio),
        "overall": round3(overall),
        "pairs": budget.rounds,
        "necessary_cpu_per_hit": floor,
        "cpu_bound_ceiling": round3(ceiling),
    });
    (l2.report(), raw.report(), ratio, stored.len())
}

/// Mean single-core time of the work every L2 hit must do besides the GET.
fn necessary_work(cache: &LlmCache, requests: &[ChatRequest], stored: &[u8]) -> Value {
    // `stored` is the entry of the first request.
    let first = cache.digest_with(&requests[0], &Default::default());
    let none = llm_cache::envelope::MacKeys::none();
    const N: usize = 20_000;
    let time = |f: &mut dyn FnMut(usize)| {
        let start = Instant::now();
        for i in 0..N {
            f(i);
        }
        start.elapsed().as_nanos() as f64 / N as f64 / 1000.0
    };
    let key = time(&mut |i| {
        let r = &requests[i % requests.len()];
        std::hint::black_box(cache.digest_with(r, &Default::default()));
    });
    let decode = time(&mut |_| {
        let env = llm_cache::envelope::decode(std::hint::black_box(stored), &first, &none)
            .expect("stored");
        std::hint::black_box(env.payload.len());
    });
    let payload = llm_cache::envelope::decode(stored, &first, &none)
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

/// A miss through the cache (with Redis: the L2 read that misses, the fill, the write
/// behind) against the same client calling the mock directly, interleaved call by call.
async fn miss_overhead(budget: Budget, redis: &str) -> Value {
    let mock = MockUpstream::start().await;
    let client = Arc::new(OpenAiCompatible::new(mock.base_url()).retry(RetryPolicy::none()));
    let cache = build(
        Arc::clone(&client) as Arc<dyn Upstream>,
        Some(redis),
        256 << 20,
    )
    .await;
    // Warm the HTTP connection pool and both paths.
    for i in 0..50 {
        client.chat(&request(5_000_000 + i)).await.expect("warm-up");
        cache.chat(&request(5_100_000 + i)).await.expect("warm-up");
    }
    let mut direct = Sample::default();
    let mut missed = Sample::default();
    for i in 0..budget.misses {
        let (a, b) = (request(6_000_000 + i), request(7_000_000 + i));
        let t = Instant::now();
        std::hint::black_box(client.chat(&a).await.expect("direct call"));
        direct.latencies.push(t.elapsed().as_nanos() as u64);
        let t = Instant::now();
        let out = cache.chat(&b).await.expect("miss");
        missed.latencies.push(t.elapsed().as_nanos() as u64);
        assert_eq!(out.status(), CacheStatus::Miss);
    }
    let (d50, m50) = (direct.percentile_ns(0.5), missed.percentile_ns(0.5));
    json!({
        "misses": budget.misses,
        "miss_p50_us": us(m50),
        "miss_p99_us": us(missed.percentile_ns(0.99)),
        "direct_p50_us": us(d50),
        "direct_p99_us": us(direct.percentile_ns(0.99)),
        "overhead_p50_us": us(m50.saturating_sub(d50)),
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
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let report = runtime.block_on(async {
        // `LOAD_BENCH_ONLY=l2` (memory, l1, l2, stampede, miss) runs one figure, for profiling.
        let only = std::env::var("LOAD_BENCH_ONLY").unwrap_or_default();
        let run = |name: &str| only.is_empty() || only == name;
        let redis = RedisServer::start();
        eprintln!("load: redis-server on port {}", redis.port());
        // First, while the heap is fresh: later figures would leave freed memory to reuse.
        eprintln!("load: L1 memory per entry ({} entries)", budget.entries);
        let memory = if run("memory") {
            l1_memory(budget).await
        } else {
            Value::Null
        };
        eprintln!("load: L1 hits");
        let (l1_c1, l1_c64) = if run("l1") {
            l1_hits(budget, &redis.url()).await
        } else {
            (Value::Null, Value::Null)
        };
        eprintln!("load: L2 hits vs raw GET");
        let (l2, raw, ratio, stored_bytes) = if run("l2") {
            l2_vs_raw(budget, &redis).await
        } else {
            (Value::Null, Value::Null, Value::Null, 0)
        };
        eprintln!("load: stampede");
        let stampede = if run("stampede") {
            stampede(&redis.url()).await
        } else {
            Value::Null
        };
        eprintln!("load: miss overhead");
        let miss = if run("miss") {
            miss_overhead(budget, &redis.url()).await
        } else {
            Value::Null
        };

        let request_bytes = serde_json::to_vec(&request(0)).map_or(0, |b| b.len());
        let response_bytes = serde_json::to_vec(&response("gpt-4.1", 0)).map_or(0, |b| b.len());
        let targets = json!({
            "l1_hit_p50_under_3us": l1_c1["p50_us"].as_f64() < Some(3.0),
            "l2_hit_throughput_at_least_0_8_of_raw_get":
                ratio["median_of_pairs"].as_f64() >= Some(0.8),
            "stampede_exactly_1_upstream_call": stampede["upstream_calls"] == 1,
            "miss_overhead_p50_under_1ms": miss["overhead_p50_us"].as_f64() < Some(1000.0),
        });
        json!({
            "mode": if budget.short { "short" } else { "full" },
            "machine": {"cpus": cores, "cpu_model": cpu_model()},
            "request_bytes": request_bytes,
            "response_bytes": response_bytes,
            "l2_stored_bytes": stored_bytes,
            "l1_hit": {"concurrency_1": l1_c1, "concurrency_64": l1_c64},
            "l2_hit": {"concurrency_64": l2},
            "raw_redis_get": {"concurrency_64": raw},
            "l2_hit_vs_raw_get_throughput": ratio,
            "stampede": stampede,
            "miss_overhead": miss,
            "l1_memory": memory,
            "targets": targets,
        })
    });
    let mut report = report;
    report["seconds"] = json!((started.elapsed().as_secs_f64() * 10.0).round() / 10.0);
    println!("{report}");
    runtime.shutdown_timeout(Duration::from_secs(1));
}
