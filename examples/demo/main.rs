//! The README's demo: a realistic chat workload (Zipf-popular prompts, bursts of identical
//! concurrent requests) through `LlmCache`, then a report of hits per tier, coalescing,
//! latency by status and the dollars the cache saved.
//!
//! ```text
//! cargo run --release --example demo                        # local stub upstream, L1 only
//! REDIS_URL=redis://127.0.0.1:6390 cargo run --release --example demo   # + Redis (L2)
//! cargo run --release --example demo -- --stream             # every request streamed
//! cargo run --release --example demo -- --embeddings         # a re-indexing workload
//! cargo run --release --example demo -- --help
//! ```
//!
//! Without `OPENAI_BASE_URL` it answers from a stub on loopback, the test-support crate's
//! `MockUpstream` in its realistic mode, that takes 300–1,500 ms per answer (fixed per
//! prompt) and reports token usage; with it, every miss is a real, paid call. Arguments are
//! parsed by hand (no clap): there are a dozen flags.
//!
//! With `--stream`, every request goes through `LlmCache::chat_stream` and is read to its
//! last chunk: misses stream live from the upstream, hits are replayed, and coalesced
//! requests join the stream already in flight. The report then adds the time to first
//! token (from the call to the first chunk with non-empty `delta.content`) per status, and
//! every answer, assembled from its chunks, must equal the one a non-streamed request gets
//! (a mismatch counts as an error). The stub then answers `"stream": true` with a real
//! `text/event-stream`: its first chunk after 30% of the prompt's latency, the content over
//! the rest, then the finish chunk, the usage chunk and `data: [DONE]`.

mod args;
mod embeddings;
mod report;
mod workload;

use args::{ArgError, Args, USAGE, parse_args};
use report::{Report, Tally, group, redis_host_port, shown_url};
use workload::{BURST_COPIES, workload};

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use llm_cache::stream::{Assembler, ChunkChoice};
use llm_cache::{CacheStatus, ChatRequest, LlmCache, OpenAiCompatible, Usage};
use llm_cache_test_support::realistic::Realistic;
use llm_cache_test_support::upstream::MockUpstream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// How long the demo waits for background Redis writes before it exits.
const L2_SETTLE_LIMIT: Duration = Duration::from_secs(2);

struct Outcome {
    prompt: usize,
    latency: Duration,
    answer: Result<Answer, String>,
}

/// What one request got.
struct Answer {
    status: CacheStatus,
    usage: Option<Usage>,
    /// The answer's text (streamed: assembled from its chunks).
    text: String,
    /// Streamed only: from the call to the first chunk with content (to the end of the
    /// stream when none had any).
    ttft: Option<Duration>,
}

/// One request, as the run asks: `chat`, or `chat_stream` read to its last chunk.
async fn ask(
    cache: &LlmCache,
    request: &ChatRequest,
    stream: bool,
    started: Instant,
) -> Result<Answer, String> {
    if !stream {
        let cached = cache.chat(request).await.map_err(|e| e.to_string())?;
        return Ok(Answer {
            status: cached.status(),
            usage: cached.value().usage.clone(),
            text: cached.value().text().unwrap_or_default(),
            ttft: None,
        });
    }
    let mut chunks = cache
        .chat_stream(request)
        .await
        .map_err(|e| e.to_string())?;
    let status = chunks.status();
    let failed = |e: llm_cache::Error| format!("the stream ({}) failed: {e}", status.as_str());
    let (mut assembler, mut ttft) = (Assembler::new(), None);
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk.map_err(failed)?;
        let content = |c: &ChunkChoice| c.delta.content.as_deref().is_some_and(|t| !t.is_empty());
        if ttft.is_none() && chunk.choices.iter().any(content) {
            ttft = Some(started.elapsed());
        }
        assembler.push(&chunk).map_err(failed)?;
    }
    let ended = started.elapsed();
    let answer = assembler.finish().map_err(failed)?;
    Ok(Answer {
        status,
        usage: answer.usage.clone(),
        text: answer.text().unwrap_or_default(),
        ttft: Some(ttft.unwrap_or(ended)),
    })
}

/// Background Redis writes still running would be lost when the process exits; wait until
/// every fetched answer is written (or dropped, or failed), for at most `L2_SETTLE_LIMIT`.
async fn settle_l2_writes(cache: &LlmCache) {
    settle(|| cache.stats().cache).await;
}

/// [`settle_l2_writes`] for the embeddings tier.
async fn settle_vector_writes(cache: &LlmCache) {
    settle(|| cache.embedding_stats().cache).await;
}

async fn settle(stats: impl Fn() -> llm_cache::Stats) {
    let start = Instant::now();
    let (mut last, mut last_change) = (None, Instant::now());
    loop {
        let s = stats();
        let stored = s.fetches.saturating_sub(s.fetch_errors);
        let settled = s.l2_writes + s.dropped_writes + s.oversized;
        if settled >= stored || start.elapsed() >= L2_SETTLE_LIMIT {
            return;
        }
        // Failed writes show up as errors or timeouts: stop once nothing moves any more.
        let progress = settled + s.l2_errors + s.l2_timeouts;
        if last != Some(progress) {
            (last, last_change) = (Some(progress), Instant::now());
        } else if last_change.elapsed() >= Duration::from_millis(500) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn progress_bar(total: usize, hidden: bool) -> ProgressBar {
    if hidden || !std::io::stderr().is_terminal() {
        return ProgressBar::with_draw_target(Some(total as u64), ProgressDrawTarget::hidden());
    }
    let bar = ProgressBar::new(total as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner:.green} [{elapsed_precise}] {wide_bar:.cyan/blue} {pos}/{len} {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    bar
}

async fn run(args: Args) -> Result<(), String> {
    // Metrics first: the client and the cache take their metric handles when they are built.
    #[cfg(feature = "prometheus")]
    if let Some(addr) = args.metrics_addr {
        llm_cache::prometheus::serve(addr)
            .map_err(|e| format!("could not serve /metrics on {addr}: {e}"))?;
    }
    // The upstream: the caller's API, or a stub on loopback.
    let base_url = std::env::var("OPENAI_BASE_URL")
        .ok()
        .filter(|u| !u.trim().is_empty());
    let (upstream, upstream_shown, stub) = match &base_url {
        Some(url) => {
            let mut client = OpenAiCompatible::new(url.clone());
            let key = std::env::var("OPENAI_API_KEY").unwrap_or_default();
            let key_state = if key.trim().is_empty() {
                "OPENAI_API_KEY not set: no key sent"
            } else {
                client = client.api_key(key);
                "key from OPENAI_API_KEY"
            };
            let shown = format!("{} ({key_state}; real calls, real cost)", shown_url(url));
            (client, shown, None)
        }
        None => {
            let (min, max) = args.latency_ms;
            let mode = Realistic::new(Duration::from_millis(min), Duration::from_millis(max));
            let mock = MockUpstream::start_realistic(mode).await;
            let shown = format!(
                "stub on {} (answers in {min}-{max} ms, fixed per prompt, with token usage)",
                mock.addr()
            );
            (
                OpenAiCompatible::new(mock.base_url()),
                shown,
                Some((mock, mode)),
            )
        }
    };
    let mock = stub.as_ref().map(|(mock, _)| mock);

    let mut builder = LlmCache::builder()
        .upstream(upstream)
        .l2_deadline(Duration::from_millis(args.l2_deadline_ms));
    if let Some(url) = &args.redis {
        builder = builder.redis(url.clone());
    }
    let cache = builder
        .build()
        .await
        .map_err(|e| format!("could not build the cache: {e}"))?;

    if args.embeddings {
        let out = embeddings::run(&args, &cache, mock).await;
        if args.redis.is_some() {
            settle_vector_writes(&cache).await;
        }
        return out;
    }
    let work = workload(&args);
    if !args.json {
        let price = cache.prices().price(&args.model).map_or_else(
            || "no price listed: costs are not estimated".to_string(),
            |p| {
                format!(
                    "${:.2} / ${:.2} per million input / output tokens",
                    p.input_per_million, p.output_per_million
                )
            },
        );
        println!("llm-cache demo");
        println!("  upstream     {upstream_shown}");
        match &args.redis {
            Some(url) => println!("  redis        {} (L1 + L2)", redis_host_port(url)),
            None => println!(
                "  redis        none: running L1-only (set REDIS_URL or pass --redis URL for L2)"
            ),
        }
        let (lo, hi) = (
            (*BURST_COPIES.start()).min(args.concurrency),
            (*BURST_COPIES.end()).min(args.concurrency),
        );
        println!(
            "  workload     {} requests over {} prompts, Zipf s={}, {} burst(s) of {lo}-{hi} identical requests",
            group(args.requests as u64),
            group(args.distinct as u64),
            args.zipf,
            work.bursts,
        );
        println!(
            "               concurrency {}, model {} ({price}), seed {}",
            args.concurrency, args.model, args.seed
        );
        if args.stream {
            println!(
                "  streaming    every request through chat_stream, read to its last chunk; \
                 answers checked against the non-streamed ones"
            );
        }
        if let Some(addr) = args.metrics_addr {
            println!("  metrics      http://{addr}/metrics (Prometheus text, while the demo runs)");
        }
        println!();
    }

    let bar = progress_bar(args.requests, args.json);
    let live_hits = Arc::new(AtomicU64::new(0));
    let permits = Arc::new(Semaphore::new(args.concurrency));
    let mut tasks = JoinSet::new();
    // What a non-streamed request gets: the stub's answers are known in advance; those of
    // a real upstream are the first of the run.
    let reference = work
        .requests
        .iter()
        .map(|r| stub.as_ref().map(|(_, mode)| mode.reply(&**r).text))
        .collect();
    let mut tally = Tally::new(reference);
    let started = Instant::now();
    for job in &work.jobs {
        let copies = u32::try_from(job.copies).expect("copies are capped by the concurrency");
        // A burst takes its permits together, so all its copies really are in flight at once.
        let permit = Arc::new(
            Arc::clone(&permits)
                .acquire_many_owned(copies)
                .await
                .expect("the semaphore is never closed"),
        );
        for _ in 0..job.copies {
            let (cache, bar, hits) = (cache.clone(), bar.clone(), Arc::clone(&live_hits));
            let (request, permit, prompt, stream) = (
                Arc::clone(&work.requests[job.prompt]),
                Arc::clone(&permit),
                job.prompt,
                args.stream,
            );
            tasks.spawn(async move {
                let t = Instant::now();
                let answer = ask(&cache, &request, stream, t).await;
                let latency = t.elapsed();
                drop(permit);
                if matches!(&answer, Ok(a) if a.status.is_hit()) {
                    hits.fetch_add(1, Relaxed);
                }
                bar.inc(1);
                let done = bar.position().max(1);
                bar.set_message(format!(
                    "hits {:.1}%",
                    100.0 * hits.load(Relaxed) as f64 / done as f64
                ));
                Outcome {
                    prompt,
                    latency,
                    answer,
                }
            });
        }
        while let Some(done) = tasks.try_join_next() {
            tally.add(done.map_err(|e| e.to_string())?, &cache, &args.model);
        }
    }
    while let Some(done) = tasks.join_next().await {
        tally.add(done.map_err(|e| e.to_string())?, &cache, &args.model);
    }
    let wall = started.elapsed();
    bar.finish_and_clear();
    if args.redis.is_some() {
        settle_l2_writes(&cache).await;
    }
    cache.tiers().run_pending_tasks().await;

    let report = Report {
        args: &args,
        tally,
        stats: cache.stats(),
        wall,
        bursts: work.bursts,
        stub_calls: mock.map(|m| m.calls_to("/v1/chat/completions") as u64),
    };
    if args.json {
        println!("{}", report.json());
    } else {
        report.print();
    }
    if args.metrics_addr.is_some() && !args.metrics_linger.is_zero() {
        if !args.json {
            println!("serving /metrics for {:?} more", args.metrics_linger);
        }
        tokio::time::sleep(args.metrics_linger).await;
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(args) => args,
        Err(ArgError::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(ArgError::Bad(why)) => {
            eprintln!("demo: {why}\nRun with --help for the options.");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demo: could not start the Tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(why) => {
            eprintln!("demo: {why}");
            ExitCode::FAILURE
        }
    }
}
