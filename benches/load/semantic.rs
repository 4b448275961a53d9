//! The semantic cache's figures, printed as ONE JSON object, against a redis-server it
//! starts on a free loopback port (never 6379). An in-process upstream answers chats (with
//! the question it was asked, so a hit says which entry served it) and embeds by hashed bag
//! of words (so the upstream costs next to nothing and what is timed is the cache). For
//! each size (entries in ONE scope), each figure beside its baseline from the same run and
//! its target (issue 26):
//!
//! - `redis_rtt_us`: p50 of a raw `GET` of a small key on a connection of the bench's own:
//!   the round trip the other figures are read against;
//! - `embed_call`: p50/p99 of an embedding call through the cache's embeddings path for a
//!   text never embedded (L1 miss, Redis `GET`, the upstream, the fill): what opting in
//!   pays the model, which the targets leave out;
//! - `hit_l1index`: p50/p99 of a semantic hit (a greeting/thanks/spacing variant of a
//!   stored question, its embedding already cached) on the instance that filled the index:
//!   exact L1 miss, exact Redis `GET`, the embedding from L1, the in-process lookup, the
//!   guard, the entry from L1. `lookup_p50_us`/`lookup_p99_us` are that whole hit (one
//!   round trip included), against `target_p50_us` / `target_p99_us`;
//! - `hit_redis_index`: the same on a second instance whose in-process index is empty:
//!   the lookup reads Redis (buckets, then records) and the entry comes from Redis;
//!   `redis_lookup_beyond_2rtt_us` is its p50 minus four round trips (the exact `GET`, the
//!   index's two, the entry's), against `target_redis_beyond_2rtt_us`;
//! - `recall_at_1` (`recall_at_1_redis`): the share of probes served by their true nearest
//!   neighbour, found by a brute-force cosine scan of every stored question in the same run;
//! - `miss_plain` / `miss_semantic`: p50/p99 of an exact miss without and with the
//!   semantic opt-in (fresh questions); `opt_in_added_p50_us` is the difference less the
//!   embedding call's p50 (exact Redis `GET`, both lookups; indexing is written behind),
//!   against `target_opt_in_added_us`; the first instance made every insert of the scope,
//!   so its misses leave the Redis index unread (`redis_index_unread_a` counts them);
//!   `miss_semantic_reading_redis` / `opt_in_added_reading_redis_p50_us`: the same on the
//!   second instance, whose misses read the Redis index (a scope written by several);
//! - `bytes_per_entry_process`: the in-process index's weighed bytes / entries;
//!   `bytes_per_entry_redis`: `MEMORY USAGE` summed over the index's keys / entries.
//!
//! Sizes: 10,000 and 100,000 entries at 1,536 dimensions (the larger holds ~0.7 GB in
//! process and about as much in Redis). `SEMANTIC_BENCH_SHORT=1`: 2,000 entries at 1,536;
//! `SEMANTIC_BENCH_SIZES=100000x1536,10000x384`: the sizes given.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use llm_cache::{
    BoxFuture, CacheControl, CacheStatus, ChatMessage, ChatRequest, ChatResponse, EmbeddingRequest,
    EmbeddingResponse, LlmCache, Result, SemanticConfig, Upstream,
};
use llm_cache_test_support::bow::bag_of_words;
use serde_json::{Value, json};

struct InProcess {
    dims: usize,
    calls: AtomicU64,
}

impl Upstream for InProcess {
    fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse>> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Relaxed);
            let asked = request
                .messages
                .last()
                .and_then(|m| m.text())
                .unwrap_or_default();
            let body = json!({
                "id": format!("chatcmpl-{n}"), "object": "chat.completion", "created": 1,
                "model": request.model,
                "choices": [{"index": 0, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": format!("answer {n} to [{asked}]: {}", "lorem ipsum ".repeat(40))}}],
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
                    let v = bag_of_words(text.as_str().unwrap_or(""), self.dims);
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

fn percentiles(us: &[f64]) -> Value {
    json!({"p50_us": round1(p50(us)), "p99_us": round1(p99(us)), "n": us.len()})
}

/// Latencies (µs) of `prompts`, how many came back with `expect`, and each answer's text.
/// After a miss, the next request waits (untimed) until the miss's writes behind have
/// landed (its L2 entry; with the opt-in, its index records too): each request is timed
/// alone, not with the previous one's background work on the same two threads.
async fn timed(
    cache: &LlmCache,
    prompts: impl Iterator<Item = String>,
    control: &CacheControl,
    expect: CacheStatus,
) -> (Vec<f64>, usize, Vec<String>) {
    let (mut out, mut matched, mut texts) = (Vec::new(), 0, Vec::new());
    for p in prompts {
        let req = request(&p);
        let before = cache.stats();
        let start = Instant::now();
        let got = cache.chat_with(&req, control).await.expect("answer");
        out.push(start.elapsed().as_secs_f64() * 1e6);
        matched += usize::from(got.status() == expect);
        texts.push(got.text().unwrap_or_default());
        if got.status() == CacheStatus::Miss {
            loop {
                let now = cache.stats();
                let looked = now.semantic.lookups > before.semantic.lookups;
                if now.cache.l2_writes > before.cache.l2_writes
                    && (!looked || now.semantic.indexed > before.semantic.indexed)
                {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
    }
    (out, matched, texts)
}

fn embedding_request(text: &str, dims: usize) -> EmbeddingRequest {
    EmbeddingRequest::new("embed-bench", text).dimensions(dims as u32)
}

/// Latencies (µs) of embedding `texts` through the cache's embeddings path, as the semantic
/// lookup does (same model, dimensions and namespace).
async fn embed_timed(
    cache: &LlmCache,
    texts: impl Iterator<Item = String>,
    dims: usize,
) -> Vec<f64> {
    let mut out = Vec::new();
    for t in texts {
        let req = embedding_request(&t, dims);
        let start = Instant::now();
        cache.embeddings(&req).await.expect("embedding");
        out.push(start.elapsed().as_secs_f64() * 1e6);
    }
    out
}

/// Latencies (µs) of a raw `GET` of a small key: the round trip, on a connection of our own.
async fn rtt(url: &str, n: usize) -> Vec<f64> {
    let client = redis::Client::open(url).expect("redis url");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let _: () = redis::cmd("SET")
        .arg("bench:rtt")
        .arg("x".repeat(64))
        .query_async(&mut c)
        .await
        .expect("set");
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let _: Vec<u8> = redis::cmd("GET")
            .arg("bench:rtt")
            .query_async(&mut c)
            .await
            .expect("get");
        out.push(start.elapsed().as_secs_f64() * 1e6);
    }
    out
}

/// Latencies (µs) of a raw `MGET` of as many absent keys as a lookup's bucket read names
/// (240, of the same length): that read's own floor on this connection.
async fn mget_floor(url: &str, n: usize) -> Vec<f64> {
    let client = redis::Client::open(url).expect("redis url");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let keys: Vec<String> = (0..240)
        .map(|i| format!("bench:sem:v{{{}}}s{}.{:x}", "ab".repeat(32), i % 16, i * 97))
        .collect();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let _: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
            .arg(&keys)
            .query_async(&mut c)
            .await
            .expect("mget");
        out.push(start.elapsed().as_secs_f64() * 1e6);
    }
    out
}

/// A unit vector as its non-zero coordinates (a bag of words has a handful).
fn sparse(v: &[f32]) -> Vec<(u32, f32)> {
    v.iter()
        .enumerate()
        .filter(|(_, x)| **x != 0.0)
        .map(|(i, x)| (i as u32, *x))
        .collect()
}

/// The share of `probes` whose answer (`texts`, in order) came from their true nearest
/// stored question: the best exact cosine over every entry, by brute force.
fn recall(stored: &[Vec<(u32, f32)>], probes: &[u64], texts: &[String], dims: usize) -> f64 {
    let mut found = 0usize;
    for (&i, text) in probes.iter().zip(texts) {
        let dense = bag_of_words(&variant(i), dims);
        let mut best = (f32::MIN, 0usize);
        for (j, e) in stored.iter().enumerate() {
            let dot: f32 = e.iter().map(|(k, x)| x * dense[*k as usize]).sum();
            if dot > best.0 {
                best = (dot, j);
            }
        }
        found += usize::from(text.contains(&format!("[{}]", question(best.1 as u64))));
    }
    found as f64 / probes.len().max(1) as f64
}

fn p50(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

fn p99(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() as f64 * 0.99) as usize).min(s.len() - 1)]
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
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
    // 16 at a time: 64 on two shared cores made the fill's Redis writes miss their deadline
    // and open the breaker (the index in Redis then lacks what was skipped).
    for chunk in (0..entries).collect::<Vec<_>>().chunks(16) {
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
    let fill_stats = a.stats().cache;
    let step = (entries / probes).max(1);
    let probe = |offset: u64| -> Vec<u64> {
        (0..probes)
            .map(move |k| (k * step + offset) % entries)
            .collect()
    };
    let (probes_a, probes_b) = (probe(0), probe(1));
    let b = instance(url, dims, Arc::clone(&upstream)).await;
    // The probes' embeddings first (the model's cost, timed apart below): the hits time the
    // lookup.
    let warm = |c: LlmCache, ids: Vec<u64>| async move {
        embed_timed(&c, ids.into_iter().map(variant), dims).await;
    };
    warm(a.clone(), probes_a.clone()).await;
    warm(b.clone(), probes_b.clone()).await;

    let rtt_us = rtt(url, 1000).await;
    let mget_us = mget_floor(url, 500).await;
    let embed = embed_timed(&a, (0..probes).map(|k| question(30_000_000 + k)), dims).await;
    let (hit_l1, hits_l1, texts_l1) = timed(
        &a,
        probes_a.iter().map(|&i| variant(i)),
        &semantic,
        CacheStatus::HitSemantic,
    )
    .await;
    let (hit_redis, hits_redis, texts_redis) = timed(
        &b,
        probes_b.iter().map(|&i| variant(i)),
        &semantic,
        CacheStatus::HitSemantic,
    )
    .await;
    let plain = CacheControl::new();
    let (miss_plain, _, _) = timed(
        &a,
        (0..probes).map(|k| question(10_000_000 + k)),
        &plain,
        CacheStatus::Miss,
    )
    .await;
    let (miss_semantic, _, _) = timed(
        &a,
        (0..probes).map(|k| question(20_000_000 + k)),
        &semantic,
        CacheStatus::Miss,
    )
    .await;
    // The same on the second instance, which made none of the scope's inserts: its
    // in-process index cannot know it holds every entry, so each miss reads the Redis index
    // (and each of its inserts makes the first instance read it too from then on).
    let (miss_semantic_b, _, _) = timed(
        &b,
        (0..probes).map(|k| question(40_000_000 + k)),
        &semantic,
        CacheStatus::Miss,
    )
    .await;
    let stored: Vec<Vec<(u32, f32)>> = (0..entries)
        .map(|i| sparse(&bag_of_words(&question(i), dims)))
        .collect();
    let recall_l1 = recall(&stored, &probes_a, &texts_l1, dims);
    let recall_redis = recall(&stored, &probes_b, &texts_redis, dims);
    let rtt_p50 = p50(&rtt_us);
    let added = p50(&miss_semantic) - p50(&miss_plain) - p50(&embed);
    let added_b = p50(&miss_semantic_b) - p50(&miss_plain) - p50(&embed);
    let stats = a.stats().semantic;
    let (redis_keys, redis_index_bytes) = redis_bytes(url, "bench:sem:v{*").await;
    json!({
        "entries": entries,
        "dims": dims,
        "fill_seconds": round1(fill_s),
        "fill_l2_timeouts": fill_stats.l2_timeouts,
        "fill_l2_skipped": fill_stats.l2_skipped,
        "redis_rtt_us": round1(rtt_p50),
        "redis_mget_240_absent_us": round1(p50(&mget_us)),
        "embed_call": percentiles(&embed),
        "hit_l1index": percentiles(&hit_l1),
        "hit_l1index_served": hits_l1,
        "lookup_p50_us": round1(p50(&hit_l1)),
        "target_p50_us": 300,
        "lookup_p99_us": round1(p99(&hit_l1)),
        "target_p99_us": 1000,
        "recall_at_1": recall_l1,
        "hit_redis_index": percentiles(&hit_redis),
        "hit_redis_index_served": hits_redis,
        "redis_lookup_beyond_2rtt_us": round1(p50(&hit_redis) - 4.0 * rtt_p50),
        "target_redis_beyond_2rtt_us": 300,
        "recall_at_1_redis": recall_redis,
        "redis_skipped_b": b.stats().semantic.redis_skipped,
        "miss_plain": percentiles(&miss_plain),
        "miss_semantic": percentiles(&miss_semantic),
        "opt_in_added_p50_us": round1(added),
        "target_opt_in_added_us": 200,
        "redis_index_unread_a": stats.redis_current,
        "miss_semantic_reading_redis": percentiles(&miss_semantic_b),
        "opt_in_added_reading_redis_p50_us": round1(added_b),
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
    // `SEMANTIC_BENCH_SIZES=100000x1536,10000x384`: other sizes, for a run by hand.
    let asked: Option<Vec<(u64, usize)>> = std::env::var("SEMANTIC_BENCH_SIZES").ok().map(|v| {
        v.split(',')
            .map(|size| {
                let (n, d) = size.split_once('x').expect("ENTRIESxDIMS");
                (n.parse().expect("entries"), d.parse().expect("dims"))
            })
            .collect()
    });
    let sizes: Vec<(u64, usize)> = match asked {
        Some(sizes) => sizes,
        None if short => vec![(2_000, 1536)],
        None => vec![(10_000, 1536), (100_000, 1536)],
    };
    let mut out = Vec::new();
    for &(entries, dims) in &sizes {
        eprintln!("semantic bench: {entries} entries at {dims} dimensions");
        let figures = runtime.block_on(one_size(&url, entries, dims, 500));
        eprintln!("{figures}");
        out.push(figures);
    }
    println!("{}", json!({"semantic": out, "short": short}));
}
