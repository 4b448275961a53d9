//! `--embeddings`: a re-indexing workload. A corpus of documents, each cut into chunks, is
//! embedded in full on every pass (one request per document, its chunks as the inputs),
//! and between passes about `--change-rate` of the chunks are edited, as a retrieval
//! pipeline re-indexes after edits. Only the edited chunks should reach the upstream; the
//! report says how many inputs were requested and how many were sent, what was saved, and
//! checks every vector against the one the mock upstream answers for its chunk
//! (`llm_cache_test_support::embeddings::expected_embedding`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use llm_cache::{CacheStatus, EmbeddingRequest, EncodingFormat, LlmCache};
use llm_cache_test_support::embeddings::expected_embedding;
use llm_cache_test_support::fnv1a;
use llm_cache_test_support::upstream::MockUpstream;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::args::Args;

/// The text of one version of one chunk: about 600 characters (150 tokens).
fn chunk_text(document: usize, chunk: usize, version: u32) -> String {
    const WORDS: &[&str] = &[
        "the",
        "cache",
        "answers",
        "repeated",
        "questions",
        "from",
        "memory",
        "while",
        "new",
        "ones",
        "reach",
        "the",
        "model",
        "once",
        "and",
        "every",
        "vector",
        "lands",
        "at",
        "its",
        "index",
    ];
    let mut text = format!("Document {document}, section {chunk} (revision {version}):");
    let mut i = fnv1a(text.as_bytes()) as usize;
    while text.len() < 600 {
        text.push(' ');
        text.push_str(WORDS[i % WORDS.len()]);
        i = i.wrapping_mul(31).wrapping_add(7);
    }
    text
}

struct Pass {
    requested: u64,
    sent: u64,
    calls: u64,
    changed: u64,
    partial: u64,
    wall: Duration,
}

pub(crate) async fn run(
    args: &Args,
    cache: &LlmCache,
    mock: Option<&MockUpstream>,
) -> Result<(), String> {
    let model = args.embedding_model();
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut versions = vec![vec![0u32; args.chunks]; args.documents];
    let mismatches = Arc::new(AtomicU64::new(0));
    let charged = Arc::new(AtomicU64::new(0));
    let mut passes = Vec::new();
    if !args.json {
        println!(
            "llm-cache embeddings demo: {} documents x {} chunks, {} passes, ~{:.0}% of chunks edited between passes, model {model}, {} dimensions",
            args.documents,
            args.chunks,
            args.passes,
            args.change_rate * 100.0,
            args.dims
        );
    }
    for pass in 0..args.passes {
        let mut changed = 0;
        if pass > 0 {
            for doc in &mut versions {
                for v in doc.iter_mut() {
                    if rng.random_bool(args.change_rate) {
                        *v += 1;
                        changed += 1;
                    }
                }
            }
        }
        let (calls0, inputs0) = mock.map_or((0, 0), embedding_traffic);
        let started = Instant::now();
        let permits = Arc::new(Semaphore::new(args.concurrency));
        let mut tasks = JoinSet::new();
        for (d, doc) in versions.iter().enumerate() {
            let texts: Vec<String> = doc
                .iter()
                .enumerate()
                .map(|(c, &v)| chunk_text(d, c, v))
                .collect();
            // Half the documents ask for floats, half for base64: one entry serves both.
            let format = if d % 2 == 0 {
                EncodingFormat::Float
            } else {
                EncodingFormat::Base64
            };
            let request = EmbeddingRequest::new(model.clone(), texts.clone())
                .dimensions(args.dims as u32)
                .encoding_format(format);
            let (cache, permits) = (cache.clone(), Arc::clone(&permits));
            let (mismatches, charged, dims, check) = (
                Arc::clone(&mismatches),
                Arc::clone(&charged),
                args.dims,
                mock.is_some(),
            );
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await.expect("open");
                let out = cache
                    .embeddings(&request)
                    .await
                    .map_err(|e| e.to_string())?;
                charged.fetch_add(out.usage.prompt_tokens, Relaxed);
                // A real upstream's vectors are its own: only the stub's are known.
                for (e, text) in out.data.iter().zip(&texts).filter(|_| check) {
                    if e.embedding.to_f32_vec() != expected_embedding(&json!(text), dims) {
                        mismatches.fetch_add(1, Relaxed);
                    }
                }
                Ok::<_, String>(out.status() == CacheStatus::Partial)
            });
        }
        let mut partial = 0;
        while let Some(done) = tasks.join_next().await {
            partial += u64::from(done.map_err(|e| e.to_string())??);
        }
        let wall = started.elapsed();
        let (calls1, inputs1) = mock.map_or((0, 0), embedding_traffic);
        passes.push(Pass {
            requested: (args.documents * args.chunks) as u64,
            sent: inputs1 - inputs0,
            calls: calls1 - calls0,
            changed,
            partial,
            wall,
        });
    }
    let stats = cache.embedding_stats();
    let llm = cache.stats();
    let dollars = llm.per_model.get(&model).map_or(0.0, |m| m.cost_saved_usd);
    let requested: u64 = passes.iter().map(|p| p.requested).sum();
    let sent: u64 = passes.iter().map(|p| p.sent).sum();
    let bad = mismatches.load(Relaxed);
    if args.json {
        let per_pass: Vec<Value> = passes
            .iter()
            .map(|p| {
                json!({"inputs_requested": p.requested, "inputs_sent": p.sent,
                "upstream_calls": p.calls, "chunks_edited": p.changed,
                "partial_requests": p.partial, "wall_ms": p.wall.as_millis() as u64})
            })
            .collect();
        println!(
            "{}",
            json!({"mode": "embeddings", "model": model, "dimensions": args.dims,
                "passes": per_pass, "inputs_requested": requested, "inputs_sent": sent,
                "tokens_charged": charged.load(Relaxed), "tokens_saved": stats.tokens_saved,
                "cost_saved_usd": dollars, "vector_mismatches": bad,
                "hits_l1": stats.hits_l1, "hits_l2": stats.hits_l2,
                "l2_writes": stats.cache.l2_writes, "l2_errors": stats.cache.l2_errors,
                "l2_timeouts": stats.cache.l2_timeouts, "dropped_writes": stats.cache.dropped_writes,
                "breaker_openings": stats.cache.breaker_openings,
                "errors": stats.failed})
        );
    } else {
        println!("\n pass  inputs  edited  sent upstream  calls  partial requests   wall");
        for (i, p) in passes.iter().enumerate() {
            println!(
                " {:>4}  {:>6}  {:>6}  {:>13}  {:>5}  {:>16}  {:>6.2} s",
                i + 1,
                p.requested,
                p.changed,
                p.sent,
                p.calls,
                p.partial,
                p.wall.as_secs_f64()
            );
        }
        println!(
            "\n inputs requested {requested}, sent upstream {sent} ({:.1}% answered from cache)",
            100.0 * (requested - sent.min(requested)) as f64 / requested.max(1) as f64
        );
        println!(
            " tokens charged {}, saved {} (${dollars:.6} at the {model} price)",
            charged.load(Relaxed),
            stats.tokens_saved
        );
        match mock {
            Some(_) => {
                println!(" vectors checked against the stub: {requested}, mismatches: {bad}")
            }
            None => println!(" vectors not checked: a real upstream's are its own"),
        }
    }
    if bad > 0 {
        return Err(format!("{bad} vectors differ from the stub's"));
    }
    Ok(())
}

/// The mock's `/v1/embeddings` calls so far, and the inputs they carried.
fn embedding_traffic(mock: &MockUpstream) -> (u64, u64) {
    let calls = mock.embedding_calls();
    let inputs = calls.iter().map(Vec::len).sum::<usize>();
    (calls.len() as u64, inputs as u64)
}
