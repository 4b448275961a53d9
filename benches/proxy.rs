//! The HTTP front's figures: requests per second and p50/p99 for L1 hits and L2 hits
//! through the router over HTTP (`llm_cache::serve::router` on loopback, a keep-alive
//! reqwest client, 64 concurrent callers), next to the same hits through
//! `LlmCache::chat` in process, on the same cache in the same run. The difference is the
//! price of HTTP (hyper on both sides, JSON out and in), not of the cache. The client runs
//! in this process too, on the same runtime: its CPU counts against the proxy's figures.
//!
//! ```text
//! cargo bench --bench proxy --features axum                 # about 20 s
//! PROXY_BENCH_SHORT=1 cargo bench --bench proxy --features axum   # (or -- --short) about 5 s
//! ```
//!
//! Prints one JSON object on stdout; progress on stderr.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use llm_cache::{BoxFuture, ChatMessage, ChatRequest, ChatResponse, LlmCache, Upstream};
use llm_cache_test_support::redis::RedisServer;
use llm_cache_test_support::served::Served;
use serde_json::{Value, json};

/// Concurrent callers of every figure.
const CALLERS: usize = 64;
/// Characters of each answer's content (about 2 KB of JSON, as in the load bench).
const ANSWER_CHARS: usize = 1_600;

/// An upstream that answers at once with a canned answer: only hits are timed here.
struct Canned;

impl Upstream for Canned {
    fn chat<'a>(
        &'a self,
        request: &'a ChatRequest,
    ) -> BoxFuture<'a, llm_cache::Result<ChatResponse>> {
        let words = "the carrier pays demurrage when the delay is caused by a shipper error ";
        let content: String = words.chars().cycle().take(ANSWER_CHARS).collect();
        let answer = json!({
            "id": "chatcmpl-bench", "object": "chat.completion", "created": 0,
            "model": request.model,
            "choices": [{"index": 0, "finish_reason": "stop",
                "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 120, "completion_tokens": 400, "total_tokens": 520}
        });
        Box::pin(async move { Ok(serde_json::from_value(answer).expect("a chat completion")) })
    }
}

fn request(id: usize) -> ChatRequest {
    ChatRequest::new("gpt-4.1")
        .message(ChatMessage::system(
            "You are a careful assistant for a logistics company. Answer in plain English.",
        ))
        .message(ChatMessage::user(format!(
            "Question {id}: a pallet shipped from Rotterdam to Lyon was held at the border for \
             two days because the customs declaration listed the wrong HS code. Who pays?"
        )))
        .temperature(0.0)
}

#[derive(Default)]
struct Sample {
    latencies: Vec<u64>,
    wall: Duration,
}

impl Sample {
    fn percentile_us(&mut self, p: f64) -> f64 {
        self.latencies.sort_unstable();
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        let ns = self.latencies.get(i).copied().unwrap_or(0);
        (ns as f64 / 10.0).round() / 100.0
    }

    fn report(&mut self) -> Value {
        json!({
            "ops": self.latencies.len(),
            "ops_per_sec": (self.latencies.len() as f64 / self.wall.as_secs_f64()).round(),
            "p50_us": self.percentile_us(0.50),
            "p99_us": self.percentile_us(0.99),
        })
    }
}

/// Run `op(i)` from [`CALLERS`] tasks for `run`; every call's latency is kept.
async fn drive<F, Fut>(run: Duration, op: F) -> Sample
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let op = Arc::new(op);
    let barrier = Arc::new(tokio::sync::Barrier::new(CALLERS + 1));
    let tasks: Vec<_> = (0..CALLERS)
        .map(|i| {
            let (op, barrier) = (Arc::clone(&op), Arc::clone(&barrier));
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(1 << 14);
                barrier.wait().await;
                let start = Instant::now();
                let mut n = 0u32;
                while start.elapsed() < run {
                    let t = Instant::now();
                    op(i).await;
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
    }
}

/// One tier: hits through the router over HTTP and through `chat`, and the p50 difference.
async fn tier(run: Duration, cache: LlmCache, requests: Arc<Vec<ChatRequest>>) -> Value {
    let front = Served::start(llm_cache::serve::router(cache.clone())).await;
    let url = Arc::new(format!("{}/chat/completions", front.v1()));
    let bodies: Arc<Vec<Bytes>> = Arc::new(
        requests
            .iter()
            .map(|r| Bytes::from(serde_json::to_vec(r).expect("a body")))
            .collect(),
    );
    let expected = if cache.stats().cache.l1_entries > 0 {
        "hit-l1"
    } else {
        "hit-l2"
    };
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CALLERS)
        .build()
        .expect("a client");
    let mut http = drive(run, move |i| {
        let (client, url, bodies) = (client.clone(), Arc::clone(&url), Arc::clone(&bodies));
        async move {
            let response = client
                .post(url.as_str())
                .header("content-type", "application/json")
                .body(bodies[i].clone())
                .send()
                .await
                .expect("an answer");
            assert_eq!(response.headers()["x-llm-cache"], expected);
            response.bytes().await.expect("a body");
        }
    })
    .await;
    let direct = cache.clone();
    let mut in_process = drive(run, move |i| {
        let (cache, requests) = (direct.clone(), Arc::clone(&requests));
        async move {
            let hit = cache.chat(&requests[i]).await.expect("a hit");
            assert!(hit.status().is_hit());
        }
    })
    .await;
    let overhead = http.percentile_us(0.50) - in_process.percentile_us(0.50);
    json!({
        "via_http": http.report(),
        "in_process": in_process.report(),
        "http_overhead_p50_us": (overhead * 100.0).round() / 100.0,
    })
}

fn main() {
    let short = std::env::var("PROXY_BENCH_SHORT").is_ok_and(|v| !v.is_empty() && v != "0")
        || std::env::args().any(|a| a == "--short");
    let run = if short {
        Duration::from_millis(800)
    } else {
        Duration::from_secs(4)
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .expect("runtime");
    let started = Instant::now();
    let mut report = runtime.block_on(async {
        let redis = RedisServer::start();
        let requests: Arc<Vec<ChatRequest>> = Arc::new((0..CALLERS).map(request).collect());
        let mut out = json!({
            "mode": if short { "short" } else { "full" },
            "machine": {"cpus": cores},
            "concurrency": CALLERS,
        });
        for (name, l1_bytes) in [("l1_hit", 256u64 << 20), ("l2_hit", 0)] {
            eprintln!("proxy: {name}");
            let cache = LlmCache::builder()
                .upstream(Canned)
                .redis(redis.url())
                .l1_max_bytes(l1_bytes)
                .l2_deadline(Duration::from_millis(500))
                .build()
                .await
                .expect("a cache");
            for r in requests.iter() {
                cache.chat(r).await.expect("warm");
            }
            if l1_bytes == 0 {
                let start = Instant::now();
                // Written now, or already there from the L1 figure's warm-up (an L2 hit).
                let stored = |s: llm_cache::Stats| s.l2_writes + s.l2_hits;
                while stored(cache.stats().cache) < CALLERS as u64 {
                    assert!(start.elapsed() < Duration::from_secs(30), "no L2 writes");
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            out[name] = tier(run, cache, Arc::clone(&requests)).await;
        }
        out
    });
    report["seconds"] = json!((started.elapsed().as_secs_f64() * 10.0).round() / 10.0);
    println!("{report}");
    runtime.shutdown_timeout(Duration::from_secs(1));
}
