//! The embeddings figures of the load benchmark (`LOAD_BENCH_ONLY=embeddings`), at 1,536
//! dimensions with an in-process upstream (so the figures are the cache's, not HTTP's):
//!
//! - `batch_256_80pct_cached`: a 256-input batch of which 205 inputs are cached (in L1, and
//!   again with L1 cleared so they come from Redis) and 51 are new: p50/p99 per batch, and
//!   the inputs and calls that reached the upstream per batch (must be 51 and 1: fails the
//!   run otherwise);
//! - `fully_cached_us_per_input`: a batch of 256 cached inputs, per input, from L1 and from
//!   Redis, next to a raw `MGET` of the same 256 stored entries on the same connection kind,
//!   their ratio and its target (`target_l2_vs_raw_mget`: 0.8, issue 26);
//!   `fully_cached_cluster_us_per_input` the same from a 3-master Cluster (full runs only:
//!   starting a cluster takes seconds);
//! - `l2_bytes_per_vector`: a stored entry's bytes in Redis against the vector's JSON text
//!   as OpenAI prints it (`float`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use llm_cache::{
    BoxFuture, ChatRequest, ChatResponse, Embedding, EmbeddingRequest, EmbeddingResponse,
    EmbeddingUsage, EncodingFormat, Error, InputItem, LlmCache, Result, Upstream, Vector,
};
use serde_json::{Value, json};

use crate::support::redis::RedisServer;

const DIMS: usize = 1536;
const BATCH: usize = 256;
const CACHED: usize = 205;
/// A fully cached batch from Redis against a raw `MGET` of its keys, per input (issue 26).
const TARGET_VS_RAW_MGET: f64 = 0.8;

/// An embeddings upstream in process: a deterministic vector per input, counted.
#[derive(Default)]
struct Vectors {
    calls: AtomicU64,
    inputs: AtomicU64,
}

fn vector_of(text: &str) -> Vec<f32> {
    let mut h = xxhash_rust::xxh3::xxh3_64(text.as_bytes()) | 1;
    (0..DIMS)
        .map(|_| {
            h ^= h >> 12;
            h ^= h << 25;
            h ^= h >> 27;
            (h.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

impl Upstream for Vectors {
    fn chat<'a>(&'a self, _: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse>> {
        Box::pin(async { Err(Error::fetch_msg("embeddings only")) })
    }

    fn embeddings<'a>(
        &'a self,
        request: &'a EmbeddingRequest,
    ) -> BoxFuture<'a, Result<EmbeddingResponse>> {
        Box::pin(async move {
            let items = request.input.items();
            self.calls.fetch_add(1, Relaxed);
            self.inputs.fetch_add(items.len() as u64, Relaxed);
            let data = items
                .iter()
                .enumerate()
                .map(|(index, item)| {
                    let InputItem::Text(text) = item else {
                        panic!("texts only")
                    };
                    Embedding {
                        object: "embedding".into(),
                        index,
                        embedding: Vector::from_f32(vector_of(text), EncodingFormat::Base64),
                    }
                })
                .collect();
            let tokens = 100 * items.len() as u64;
            Ok(EmbeddingResponse {
                object: "list".into(),
                data,
                model: request.model.clone(),
                usage: EmbeddingUsage {
                    prompt_tokens: tokens,
                    total_tokens: tokens,
                },
                extra: Default::default(),
            })
        })
    }
}

fn texts(from: usize, n: usize) -> Vec<String> {
    (from..from + n)
        .map(|i| format!("chunk {i}: a paragraph of a document that a pipeline re-embeds"))
        .collect()
}

fn request(inputs: Vec<String>) -> EmbeddingRequest {
    EmbeddingRequest::new("text-embedding-3-small", inputs)
}

fn percentiles(mut ms: Vec<f64>) -> (f64, f64) {
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99))
}

fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Wait until every fetched vector is in Redis.
async fn settle(cache: &LlmCache) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let s = cache.embedding_stats().cache;
        if s.l2_writes + s.dropped_writes >= s.fetches {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

pub async fn figures(short: bool, redis: &RedisServer) -> Value {
    let iterations = if short { 15 } else { 150 };
    let upstream = Arc::new(Vectors::default());
    let cache = LlmCache::builder()
        .upstream_arc(Arc::clone(&upstream) as Arc<dyn Upstream>)
        .redis(redis.url())
        .embeddings_l1_max_bytes(1 << 30)
        .build()
        .await
        .expect("cache");
    let warm = texts(0, CACHED);
    cache
        .embeddings(&request(warm.clone()))
        .await
        .expect("warm");
    settle(&cache).await;

    // 80% cached: 205 known inputs and 51 new ones per batch; in L1, then in Redis only.
    let mut sides = serde_json::Map::new();
    let mut fresh = 1_000_000;
    for (side, from_l2) in [("l1", false), ("l2", true)] {
        let mut ms = Vec::with_capacity(iterations);
        let (calls0, inputs0) = (upstream.calls.load(Relaxed), upstream.inputs.load(Relaxed));
        let unanswered = || {
            let s = cache.embedding_stats().cache;
            s.l2_timeouts + s.l2_skipped
        };
        let unanswered0 = unanswered();
        for _ in 0..iterations {
            let mut inputs = warm.clone();
            inputs.extend(texts(fresh, BATCH - CACHED));
            fresh += BATCH;
            let req = request(inputs);
            if from_l2 {
                settle(&cache).await;
                cache.clear_l1();
            }
            let t = Instant::now();
            let out = cache.embeddings(&req).await.expect("batch");
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(out.data.len(), BATCH);
        }
        let calls = (upstream.calls.load(Relaxed) - calls0) as f64 / iterations as f64;
        let inputs = (upstream.inputs.load(Relaxed) - inputs0) as f64 / iterations as f64;
        // Correctness, not speed: these fail the run (and so scripts/test.sh).
        assert_eq!(
            calls, 1.0,
            "a batch with 51 new inputs made {calls} upstream calls"
        );
        // A Redis read past the L2 deadline (a stalled machine) fetches what it was to read:
        // correct, and then more inputs go upstream; never fewer.
        let unanswered = unanswered() - unanswered0;
        if unanswered == 0 {
            assert_eq!(inputs, (BATCH - CACHED) as f64, "upstream inputs per batch");
        } else {
            assert!(
                inputs >= (BATCH - CACHED) as f64,
                "upstream inputs per batch"
            );
        }
        let (p50, p99) = percentiles(ms);
        sides.insert(
            side.into(),
            json!({"ms_p50": r3(p50), "ms_p99": r3(p99),
                "upstream_calls_per_batch": calls, "upstream_inputs_per_batch": inputs,
                "redis_reads_unanswered": unanswered}),
        );
    }

    // Fully cached: 256 known inputs, per input; from L1, from Redis, and a raw MGET.
    let all = texts(2_000_000, BATCH);
    let req = request(all);
    cache.embeddings(&req).await.expect("fill");
    settle(&cache).await;
    let keys = l2_keys(&cache, &req);
    let mut conn = redis.conn().await;
    let ([l1_p50, l2_p50, raw_p50], left_out) =
        fully_cached(&cache, &req, &keys, &mut conn, iterations, true).await;

    let cluster = if short {
        Value::Null
    } else {
        fully_cached_on_a_cluster(iterations).await
    };

    // Bytes: one stored entry against the vector's JSON text.
    let stored: usize = redis::cmd("STRLEN")
        .arg(&keys[0])
        .query_async(&mut conn)
        .await
        .expect("strlen");
    let vector = vector_of(&texts(2_000_000, 1)[0]);
    let as_json = serde_json::to_vec(&vector.iter().map(|&x| f64::from(x)).collect::<Vec<_>>())
        .expect("json")
        .len();
    json!({
        "dimensions": DIMS,
        "iterations": iterations,
        "batch_256_80pct_cached": sides,
        "fully_cached_us_per_input": {
            "l1": r3(l1_p50),
            "l2": r3(l2_p50),
            "raw_mget": r3(raw_p50),
            "l2_vs_raw_mget": r3(raw_p50 / l2_p50),
            "target_l2_vs_raw_mget": TARGET_VS_RAW_MGET,
            "rounds_left_out": left_out,
        },
        "fully_cached_cluster_us_per_input": cluster,
        "l2_bytes_per_vector": {"stored": stored, "json_float_text": as_json,
            "ratio": r3(stored as f64 / as_json as f64)},
    })
}

/// The fully cached batch on a 3-master Redis Cluster (`LOAD_BENCH_ONLY=embeddings`, full
/// runs only: starting a cluster takes seconds): per input from Redis, next to a raw `MGET`
/// of the same keys on the redis crate's own cluster connection (which splits it by slot,
/// as the cache's does), same run.
async fn fully_cached_on_a_cluster(iterations: usize) -> Value {
    let cluster = llm_cache_test_support::topology::RedisCluster::start();
    let upstream = Arc::new(Vectors::default());
    let cache = LlmCache::builder()
        .upstream_arc(Arc::clone(&upstream) as Arc<dyn Upstream>)
        .cluster(cluster.addrs())
        .embeddings_l1_max_bytes(1 << 30)
        .build()
        .await
        .expect("cache on the cluster");
    let req = request(texts(3_000_000, BATCH));
    cache.embeddings(&req).await.expect("fill");
    settle(&cache).await;
    let keys = l2_keys(&cache, &req);
    let seeds: Vec<String> = cluster
        .addrs()
        .iter()
        .map(|a| format!("redis://{a}"))
        .collect();
    let mut conn = redis::cluster::ClusterClient::new(seeds)
        .expect("cluster client")
        .get_async_connection()
        .await
        .expect("cluster connection");
    let ([_, l2_p50, raw_p50], left_out) =
        fully_cached(&cache, &req, &keys, &mut conn, iterations, false).await;
    json!({"masters": 3, "l2": r3(l2_p50), "raw_mget": r3(raw_p50), "rounds_left_out": left_out,
        "l2_vs_raw_mget": r3(raw_p50 / l2_p50), "target_l2_vs_raw_mget": TARGET_VS_RAW_MGET})
}

/// The Redis keys of `req`'s inputs.
fn l2_keys(cache: &LlmCache, req: &EmbeddingRequest) -> Vec<String> {
    cache
        .embedding_digests_with(req, &Default::default())
        .expect("digests")
        .iter()
        .map(|d| cache.tiers().l2_key(d))
        .collect()
}

/// The stored batch `req`, `iterations` times, per input (p50 in µs): from L1 (when `l1`;
/// else 0), from Redis (L1 cleared), and a raw `MGET` of its `keys` on `conn`, interleaved;
/// and how many rounds were left out because the batch was not all from the tier timed (a
/// Redis read past the L2 deadline on a stalled machine fetches that input: correct, but not
/// what is timed). Fails when more than one round in ten is left out.
async fn fully_cached<C: redis::aio::ConnectionLike>(
    cache: &LlmCache,
    req: &EmbeddingRequest,
    keys: &[String],
    conn: &mut C,
    iterations: usize,
    l1: bool,
) -> ([f64; 3], usize) {
    let per_input = |t: Instant| t.elapsed().as_secs_f64() * 1e6 / BATCH as f64;
    let mut times: [Vec<f64>; 3] = Default::default();
    let mut left_out = 0;
    for _ in 0..iterations {
        if l1 {
            let t = Instant::now();
            let out = cache.embeddings(req).await.expect("l1 batch");
            let took = per_input(t);
            if out.status() != llm_cache::CacheStatus::HitL1 {
                left_out += 1;
                settle(cache).await;
                continue;
            }
            times[0].push(took);
        }
        cache.clear_l1();
        // moka removes the cleared entries lazily: without this the batch would pay for
        // dropping the last run's 256 vectors, which a cold L1 does not hold.
        cache.run_pending_tasks().await;
        let t = Instant::now();
        let out = cache.embeddings(req).await.expect("l2 batch");
        let took = per_input(t);
        if out.status() != llm_cache::CacheStatus::HitL2 {
            left_out += 1;
            settle(cache).await;
            continue;
        }
        times[1].push(took);
        let t = Instant::now();
        let bytes: Vec<Vec<u8>> = redis::cmd("MGET")
            .arg(keys)
            .query_async(conn)
            .await
            .expect("mget");
        times[2].push(per_input(t));
        assert_eq!(bytes.len(), BATCH);
    }
    assert!(
        left_out * 10 <= iterations,
        "{left_out} of {iterations} fully cached batches were not all from the tier timed"
    );
    (
        times.map(|t| if t.is_empty() { 0.0 } else { percentiles(t).0 }),
        left_out,
    )
}
