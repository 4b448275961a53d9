//! The semantic cache's figures, printed as ONE JSON object, against a redis-server it
//! starts on a free loopback port (never 6379). An in-process upstream answers chats and
//! embeds by hashed bag of words (so the upstream costs next to nothing and what is timed
//! is the cache). For each size (entries in ONE scope):
//!
//! - `hit_l1index`: p50/p99 of a semantic hit (a case/punctuation/politeness variant of a
//!   stored question) on the instance that filled the index: exact L1 miss, exact L2 `GET`,
//!   the (cached) embedding, the in-process lookup, the guard, the entry from L1;
//! - `hit_redis_index`: the same on a second instance whose in-process index is empty:
//!   the lookup reads Redis (two round trips: buckets, then records); `*_served` say how
//!   many of the probes were served (the rest missed: a full bucket, a slow Redis);
//! - `miss_plain` / `miss_semantic`: p50/p99 of an exact miss without and with the
//!   semantic opt-in; `miss_added_p50_us` is the difference (embedding call through the
//!   embeddings path, exact L2 `GET`, Redis lookup; indexing is written behind);
//! - `bytes_per_entry_process`: the in-process index's weighed bytes / entries;
//!   `bytes_per_entry_redis`: `MEMORY USAGE` summed over the index's keys / entries.
//!
//! Sizes: 10,000 entries at 1,536 dimensions and 100,000 at 256 dimensions (100,000 ×
//! 1,536 would hold ~0.7 GB in process and again in Redis on a shared machine).
//! `SEMANTIC_BENCH_SHORT=1`: 2,000 entries at 1,536 dimensions.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use llm_cache::{
    BoxFuture, CacheControl, CacheStatus, ChatMessage, ChatRequest, ChatResponse, EmbeddingRequest,
    EmbeddingResponse, LlmCache, Result, SemanticConfig, Upstream,
};
use serde_json::{Value, json};

struct InProcess {
    dims: usize,
    calls: AtomicU64,
}

impl Upstream for InProcess {
    fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse>> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Relaxed);
            let body = json!({
                "id": format!("chatcmpl-{n}"), "object": "chat.completion", "created": 1,
                "model": request.model,
                "choices": [{"index": 0, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": format!("answer {n}: {}", "lorem ipsum ".repeat(40))}}],
                "usage": {"prompt_tokens": 20, "completion_tokens": 120, "total_tokens": 140}
            });
            Ok(serde_json::from_value(body).expect("a chat answer"))
        })
    }

    fn embeddings<'a>(
        &'a self,
        request: &'a EmbeddingRequest,
    ) -> BoxFuture<'a, Result<EmbeddingResponse>> {
        Box::pin(async move {
            let inputs: Vec<Value> = match serde_json::to_value(&request.input).expect("input") {
                Value::Array(items) => items,
                one => vec![one],
            };
            let data: Vec<Value> = inputs
                .iter()
                .enumerate()
                .map(|(i, text)| {
                    let v = llm_cache_test_support::bow::bag_of_words(
                        text.as_str().unwrap_or(""),
                        self.dims,
                    );
                    json!({"object": "embedding", "index": i, "embedding": v})
                })
                .collect();
            let body = json!({"object": "list", "data": data, "model": request.model,
                "usage": {"prompt_tokens": 8, "total_tokens": 8}});
            Ok(serde_json::from_value(body).expect("an embeddings answer"))
        })
    }
}

/// A question of six words drawn from a 5,000-word vocabulary and a number (so that every
/// one is distinct and they spread over the space; a shared template would put every
/// vector in the same few buckets, see docs/semantic.md).
fn question(i: u64) -> String {
    let mut x = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut words = Vec::new();
    for _ in 0..6 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        words.push(format!("w{}", x % 5000));
    }
    format!("{} {i}?", words.join(" "))
}

/// A variant the guard serves: a greeting and thanks around it, spacing.
fn variant(i: u64) -> String {
    format!("Hi!  {}  Thanks!", question(i))
}

fn request(prompt: &str) -> ChatRequest {
    ChatRequest::new("gpt-4.1")
        .message(ChatMessage::system(
            "You answer questions about the catalogue.",
        ))
        .message(ChatMessage::user(prompt))
}

async fn instance(redis: &str, dims: usize, upstream: Arc<InProcess>) -> LlmCache {
    LlmCache::builder()
        .upstream_arc(upstream)
        .redis(redis)
        .key_prefix("bench:sem")
        .l1_max_bytes(1 << 30)
        .semantic(
            SemanticConfig::new("embed-bench")
                .dimensions(dims as u32)
                .l1_index_bytes(2 << 30),
        )
        .build()
        .await
        .expect("build")
}

fn percentiles(mut us: Vec<f64>) -> Value {
    us.sort_by(f64::total_cmp);
    let at = |q: f64| us[((us.len() as f64 * q) as usize).min(us.len() - 1)];
    json!({"p50_us": (at(0.5) * 10.0).round() / 10.0, "p99_us": (at(0.99) * 10.0).round() / 10.0, "n": us.len()})
}

/// Latencies (µs) of `prompts`, and how many came back with `expect`.
async fn timed(
    cache: &LlmCache,
    prompts: impl Iterator<Item = String>,
    control: &CacheControl,
    expect: CacheStatus,
) -> (Vec<f64>, usize) {
    let (mut out, mut matched) = (Vec::new(), 0);
    for p in prompts {
        let req = request(&p);
        let start = Instant::now();
        let got = cache.chat_with(&req, control).await.expect("answer");
        out.push(start.elapsed().as_secs_f64() * 1e6);
        matched += usize::from(got.status() == expect);
    }
    (out, matched)
}

/// `MEMORY USAGE` summed over the keys matching `pattern`.
async fn redis_bytes(url: &str, pattern: &str) -> (u64, u64) {
    let client = redis::Client::open(url).expect("redis url");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let mut cursor: u64 = 0;
    let (mut keys, mut bytes) = (0u64, 0u64);
    loop {
        let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(5000)
            .query_async(&mut c)
            .await
            .expect("scan");
        let mut pipe = redis::pipe();
        for k in &batch {
            pipe.cmd("MEMORY").arg("USAGE").arg(k);
        }
        let sizes: Vec<Option<u64>> = pipe.query_async(&mut c).await.expect("memory usage");
        keys += batch.len() as u64;
        bytes += sizes.into_iter().flatten().sum::<u64>();
        cursor = next;
        if cursor == 0 {
            return (keys, bytes);
        }
    }
}

async fn one_size(url: &str, entries: u64, dims: usize, probes: u64) -> Value {
    let flush = redis::Client::open(url).expect("url");
    let mut c = flush
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let _: () = redis::cmd("FLUSHALL")
        .query_async(&mut c)
        .await
        .expect("flush");
    let upstream = Arc::new(InProcess {
        dims,
        calls: AtomicU64::new(0),
    });
    let a = instance(url, dims, Arc::clone(&upstream)).await;
    let semantic = CacheControl::new().semantic(true);
    let fill_start = Instant::now();
    for chunk in (0..entries).collect::<Vec<_>>().chunks(64) {
        join_all(chunk.iter().map(|&i| {
            let (a, semantic) = (a.clone(), semantic.clone());
            async move {
                a.chat_with(&request(&question(i)), &semantic)
                    .await
                    .expect("fill");
            }
        }))
        .await;
    }
    // The index is written behind: wait for all of it.
    while a.stats().semantic.indexed < entries {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let fill_s = fill_start.elapsed().as_secs_f64();
    let step = (entries / probes).max(1);
    let probe = |offset: u64| (0..probes).map(move |k| (k * step + offset) % entries);

    let (hit_l1, hits_l1) = timed(
        &a,
        probe(0).map(variant),
        &semantic,
        CacheStatus::HitSemantic,
    )
    .await;
    let b = instance(url, dims, Arc::clone(&upstream)).await;
    let (hit_redis, hits_redis) = timed(
        &b,
        probe(1).map(variant),
        &semantic,
        CacheStatus::HitSemantic,
    )
    .await;
    let plain = CacheControl::new();
    let (miss_plain, _) = timed(
        &a,
        (0..probes).map(|k| question(10_000_000 + k)),
        &plain,
        CacheStatus::Miss,
    )
    .await;
    let (miss_semantic, _) = timed(
        &a,
        (0..probes).map(|k| question(20_000_000 + k)),
        &semantic,
        CacheStatus::Miss,
    )
    .await;
    let p50 = |v: &Vec<f64>| {
        let mut s = v.clone();
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    };
    let added = p50(&miss_semantic) - p50(&miss_plain);
    let stats = a.stats().semantic;
    let (redis_keys, redis_index_bytes) = redis_bytes(url, "bench:sem:v{*").await;
    json!({
        "entries": entries,
        "dims": dims,
        "fill_seconds": (fill_s * 10.0).round() / 10.0,
        "hit_l1index": percentiles(hit_l1),
        "hit_l1index_served": hits_l1,
        "hit_redis_index": percentiles(hit_redis),
        "hit_redis_index_served": hits_redis,
        "redis_skipped_b": b.stats().semantic.redis_skipped,
        "miss_plain": percentiles(miss_plain),
        "miss_semantic": percentiles(miss_semantic),
        "miss_added_p50_us": (added * 10.0).round() / 10.0,
        "bytes_per_entry_process": stats.l1_bytes / stats.l1_entries.max(1),
        "process_index_entries": stats.l1_entries,
        "bytes_per_entry_redis": redis_index_bytes / entries,
        "redis_index_keys": redis_keys,
        "vector_bytes": dims * 4,
    })
}

fn main() {
    let short = std::env::var("SEMANTIC_BENCH_SHORT").is_ok_and(|v| !v.is_empty() && v != "0")
        || std::env::args().any(|a| a == "--short");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let redis = llm_cache_test_support::redis::RedisServer::start();
    let url = redis.url();
    let sizes: &[(u64, usize)] = if short {
        &[(2_000, 1536)]
    } else {
        &[(10_000, 1536), (100_000, 256)]
    };
    let mut out = Vec::new();
    for &(entries, dims) in sizes {
        eprintln!("semantic bench: {entries} entries at {dims} dimensions");
        let figures = runtime.block_on(one_size(&url, entries, dims, 500));
        eprintln!("{figures}");
        out.push(figures);
    }
    println!("{}", json!({"semantic": out, "short": short}));
}
