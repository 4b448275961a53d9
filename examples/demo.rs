//! The README's demo: a realistic chat workload (Zipf-popular prompts, bursts of identical
//! concurrent requests) through `LlmCache`, then a report of hits per tier, coalescing,
//! latency by status and the dollars the cache saved.
//!
//! ```text
//! cargo run --release --example demo                        # local stub upstream, L1 only
//! REDIS_URL=redis://127.0.0.1:6390 cargo run --release --example demo   # + Redis (L2)
//! cargo run --release --example demo -- --stream             # every request streamed
//! cargo run --release --example demo -- --help
//! ```
//!
//! Without `OPENAI_BASE_URL` it answers from a stub on loopback that takes 300–1,500 ms per
//! answer (fixed per prompt) and reports token usage; with it, every miss is a real, paid
//! call. Arguments are parsed by hand (no clap): there are a dozen flags.
//!
//! With `--stream`, every request goes through `LlmCache::chat_stream` and is read to its
//! last chunk: misses stream live from the upstream, hits are replayed, and coalesced
//! requests join the stream already in flight. The report then adds the time to first
//! token (from the call to the first chunk with non-empty `delta.content`) per status, and
//! every answer, assembled from its chunks, must equal the one a non-streamed request gets
//! (a mismatch counts as an error). The stub then answers `"stream": true` with a real
//! `text/event-stream`: its first chunk after 30% of the prompt's latency, the content over
//! the rest, then the finish chunk, the usage chunk and `data: [DONE]`.

use std::collections::HashSet;
use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt;
use axum::{Json, Router};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use llm_cache::stream::{Assembler, ChunkChoice};
use llm_cache::{
    CacheStatus, ChatMessage, ChatRequest, LlmCache, LlmStats, OpenAiCompatible, Usage,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

const USAGE: &str = "\
Run a chat workload through llm-cache and report what the cache saved.

Usage: cargo run --release --example demo -- [OPTIONS]

Options:
  --requests N         requests to send (default 2000)
  --distinct D         distinct prompts to draw from (default 200)
  --concurrency C      requests in flight at most (default 64)
  --model NAME         model to ask for (default gpt-4.1)
  --seed S             seed of the workload; the same seed sends the same requests (default 42)
  --zipf S             exponent of the Zipf popularity of prompts (default 1.1)
  --latency-ms MIN:MAX how long the stub upstream takes per answer (default 300:1500)
  --redis URL          use Redis as L2 (default: $REDIS_URL; without either: L1 only)
  --l2-deadline-ms MS  deadline of each Redis operation (default 50)
  --stream             send every request through chat_stream and read it to the end;
                       the report adds time to first token per status, and checks each
                       assembled answer against the non-streamed one (the stub streams
                       SSE: first chunk after 30% of its latency, the content over the rest)
  --json               print the report as one JSON object on stdout (no progress bar)
  --metrics-addr ADDR  serve Prometheus metrics on http://ADDR/metrics while the demo runs
                       (build with --features prometheus)
  --metrics-linger S   keep serving /metrics for S seconds after the report (default 0)
  -h, --help           print this help

Environment:
  OPENAI_BASE_URL      send misses to this OpenAI-compatible API instead of the local stub
                       (real calls, real cost), authenticated with OPENAI_API_KEY
  REDIS_URL            as --redis

Run it twice against the same Redis: the second run starts with an empty L1 and is
answered from Redis.";

/// A share of the workload's jobs that are bursts of identical concurrent requests.
const BURST_PROBABILITY: f64 = 0.02;
/// Copies of one prompt in a burst (never more than the concurrency).
const BURST_COPIES: std::ops::RangeInclusive<usize> = 5..=20;
/// Cap on the answer length the demo asks for (keeps a real upstream cheap).
const MAX_TOKENS: u64 = 400;
/// How long the demo waits for background Redis writes before it exits.
const L2_SETTLE_LIMIT: Duration = Duration::from_secs(2);
/// Share of the stub's latency before the first chunk of a streamed answer; the content
/// streams over the rest.
const STUB_FIRST_CHUNK_SHARE: f64 = 0.3;
/// Words per content chunk of the stub's streams (a real model sends about one token).
const STUB_WORDS_PER_CHUNK: usize = 3;

const SYSTEM_PROMPT: &str = "You are the support assistant of an online bookshop. Answer in \
at most three sentences, in plain language, without markdown. If the question is about an \
order, remind the customer that order details are in their account page. Never invent \
policies: when unsure, say that a human agent will follow up within one business day. Be \
friendly but brief; customers read these answers on their phones.";

const QUESTIONS: &[&str] = &[
    "How do I return",
    "What is the shipping time for",
    "Can I get a refund for",
    "Is there a discount on",
    "How do I track",
    "Can I change the delivery address of",
    "Why was I charged twice for",
    "Do you ship internationally",
    "Can I gift-wrap",
    "What happens if I cancel",
];

const SUBJECTS: &[&str] = &[
    "a damaged paperback",
    "an e-book bundle",
    "a pre-ordered hardcover",
    "a box set",
    "a signed first edition",
    "a used textbook",
    "an audiobook subscription",
    "a gift card",
    "a children's picture book",
    "a bulk school order",
    "a magazine subscription",
    "a rare map",
    "a cookbook",
    "a comic series",
    "a language course",
    "a calendar",
    "a puzzle book",
    "a travel guide",
    "a poetry collection",
    "a graphic novel",
];

// ---------------------------------------------------------------------------------------
// Arguments
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct Args {
    requests: usize,
    distinct: usize,
    concurrency: usize,
    model: String,
    seed: u64,
    zipf: f64,
    latency_ms: (u64, u64),
    redis: Option<String>,
    l2_deadline_ms: u64,
    json: bool,
    stream: bool,
    metrics_addr: Option<SocketAddr>,
    metrics_linger: Duration,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            requests: 2000,
            distinct: 200,
            concurrency: 64,
            model: "gpt-4.1".into(),
            seed: 42,
            zipf: 1.1,
            latency_ms: (300, 1500),
            redis: None,
            l2_deadline_ms: 50,
            json: false,
            stream: false,
            metrics_addr: None,
            metrics_linger: Duration::ZERO,
        }
    }
}

enum ArgError {
    Help,
    Bad(String),
}

fn parse_args(argv: impl IntoIterator<Item = String>) -> Result<Args, ArgError> {
    let mut args = Args {
        redis: std::env::var("REDIS_URL")
            .ok()
            .filter(|u| !u.trim().is_empty()),
        ..Args::default()
    };
    let mut argv = argv.into_iter();
    while let Some(arg) = argv.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, ArgError> {
            inline
                .clone()
                .or_else(|| argv.next())
                .ok_or_else(|| ArgError::Bad(format!("{name} needs a value")))
        };
        match flag.as_str() {
            "-h" | "--help" => return Err(ArgError::Help),
            "--json" if inline.is_none() => args.json = true,
            "--stream" if inline.is_none() => args.stream = true,
            "--requests" => args.requests = positive("--requests", &value("--requests")?)?,
            "--distinct" => args.distinct = positive("--distinct", &value("--distinct")?)?,
            "--concurrency" => {
                args.concurrency = positive("--concurrency", &value("--concurrency")?)?;
            }
            "--model" => {
                let m = value("--model")?;
                if m.trim().is_empty() {
                    return Err(bad("--model", &m, "must not be empty"));
                }
                args.model = m;
            }
            "--seed" => {
                let s = value("--seed")?;
                args.seed = s
                    .parse()
                    .map_err(|_| bad("--seed", &s, "is not a whole number"))?;
            }
            "--zipf" => {
                let s = value("--zipf")?;
                args.zipf = s
                    .parse::<f64>()
                    .ok()
                    .filter(|z| z.is_finite() && (0.0..=10.0).contains(z))
                    .ok_or_else(|| bad("--zipf", &s, "is not an exponent in 0..=10"))?;
            }
            "--latency-ms" => {
                let s = value("--latency-ms")?;
                args.latency_ms = latency_range(&s)?;
            }
            "--redis" => {
                let url = value("--redis")?;
                if url.trim().is_empty() {
                    return Err(bad("--redis", &url, "must not be empty"));
                }
                args.redis = Some(url);
            }
            "--l2-deadline-ms" => {
                let s = value("--l2-deadline-ms")?;
                args.l2_deadline_ms = positive("--l2-deadline-ms", &s)? as u64;
            }
            "--metrics-addr" => {
                let s = value("--metrics-addr")?;
                let addr = s.parse::<SocketAddr>().map_err(|_| {
                    bad(
                        "--metrics-addr",
                        &s,
                        "is not an address such as 127.0.0.1:9000",
                    )
                })?;
                if !cfg!(feature = "prometheus") {
                    return Err(ArgError::Bad(
                        "--metrics-addr needs the `prometheus` feature: \
                         cargo run --release --features prometheus --example demo -- --metrics-addr ADDR"
                            .into(),
                    ));
                }
                args.metrics_addr = Some(addr);
            }
            "--metrics-linger" => {
                let s = value("--metrics-linger")?;
                let secs = s
                    .parse::<u64>()
                    .map_err(|_| bad("--metrics-linger", &s, "is not a whole number of seconds"))?;
                args.metrics_linger = Duration::from_secs(secs);
            }
            _ => return Err(ArgError::Bad(format!("unknown argument `{arg}`"))),
        }
    }
    Ok(args)
}

fn bad(flag: &str, value: &str, why: &str) -> ArgError {
    ArgError::Bad(format!("invalid value for {flag}: `{value}` {why}"))
}

fn positive(flag: &str, value: &str) -> Result<usize, ArgError> {
    value
        .parse::<usize>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| bad(flag, value, "is not a positive whole number"))
}

fn latency_range(value: &str) -> Result<(u64, u64), ArgError> {
    let why = "is not MIN:MAX in milliseconds with MIN <= MAX (e.g. 300:1500)";
    let (min, max) = value
        .split_once(':')
        .ok_or_else(|| bad("--latency-ms", value, why))?;
    match (min.trim().parse::<u64>(), max.trim().parse::<u64>()) {
        (Ok(min), Ok(max)) if min <= max && max <= 600_000 => Ok((min, max)),
        _ => Err(bad("--latency-ms", value, why)),
    }
}

// ---------------------------------------------------------------------------------------
// Workload
// ---------------------------------------------------------------------------------------

/// Draws prompt ranks with probability proportional to `1 / (rank + 1)^s`.
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut total = 0.0;
        let cumulative = (1..=n)
            .map(|k| {
                total += (k as f64).powf(-s);
                total
            })
            .collect();
        Zipf { cumulative }
    }

    fn sample(&self, rng: &mut impl Rng) -> usize {
        let total = *self.cumulative.last().expect("at least one prompt");
        let u = rng.random::<f64>() * total;
        // The first rank whose cumulative weight exceeds u.
        self.cumulative
            .partition_point(|&c| c <= u)
            .min(self.cumulative.len() - 1)
    }
}

/// One unit of the workload: `copies` identical requests for prompt `prompt`, sent at once.
struct Job {
    prompt: usize,
    copies: usize,
}

struct Workload {
    requests: Vec<Arc<ChatRequest>>,
    jobs: Vec<Job>,
    bursts: usize,
}

fn prompt_text(i: usize) -> String {
    let q = QUESTIONS[i % QUESTIONS.len()];
    let s = SUBJECTS[(i / QUESTIONS.len()) % SUBJECTS.len()];
    let round = i / (QUESTIONS.len() * SUBJECTS.len());
    if round == 0 {
        format!("{q} {s}?")
    } else {
        format!("{q} {s} (order group {round})?")
    }
}

fn workload(args: &Args) -> Workload {
    let requests = (0..args.distinct)
        .map(|i| {
            let mut request = ChatRequest::new(args.model.clone())
                .message(ChatMessage::system(SYSTEM_PROMPT))
                .message(ChatMessage::user(prompt_text(i)))
                .temperature(0.0)
                .param("max_tokens", MAX_TOKENS);
            if args.stream {
                // Transport fields: not in the key, so streamed and non-streamed requests
                // share their answers. The usage chunk prices each answer.
                request.stream = Some(true);
                request.stream_options = Some(json!({"include_usage": true}));
            }
            Arc::new(request)
        })
        .collect();
    let zipf = Zipf::new(args.distinct, args.zipf);
    let mut rng = StdRng::seed_from_u64(args.seed);
    let (mut jobs, mut sent, mut bursts) = (Vec::new(), 0, 0);
    while sent < args.requests {
        let left = args.requests - sent;
        let job = if rng.random_bool(BURST_PROBABILITY) {
            // A burst is something suddenly hot: any prompt, not only the popular ones.
            bursts += 1;
            let copies = rng.random_range(BURST_COPIES);
            Job {
                prompt: rng.random_range(0..args.distinct),
                copies: copies.min(args.concurrency).min(left),
            }
        } else {
            Job {
                prompt: zipf.sample(&mut rng),
                copies: 1,
            }
        };
        sent += job.copies;
        jobs.push(job);
    }
    Workload {
        requests,
        jobs,
        bursts,
    }
}

// ---------------------------------------------------------------------------------------
// The stub upstream
// ---------------------------------------------------------------------------------------

struct Stub {
    latency_ms: (u64, u64),
    calls: AtomicU64,
}

/// FNV-1a: stable across runs and Rust versions, so a prompt always takes as long.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Roughly four characters per token, as for English text.
fn tokens_of(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// What the stub answers to one request, streamed or not: the same text, usage and
/// latency, all fixed by the prompt.
struct StubReply {
    id: String,
    model: String,
    text: String,
    prompt_tokens: u64,
    completion_tokens: u64,
    /// How long the whole answer takes (streamed: until its finish chunk).
    latency: Duration,
}

impl StubReply {
    fn new(request: &ChatRequest, (min, max): (u64, u64)) -> Self {
        let prompt = request
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .and_then(ChatMessage::text)
            .unwrap_or_default();
        let h = fnv1a(prompt.as_bytes());
        let max_tokens = request
            .extra
            .get("max_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(MAX_TOKENS)
            .max(1);
        // Longer answers take longer, as they do from a real model.
        let completion_tokens = (40 + h % 360).min(max_tokens);
        let latency = Duration::from_millis(min + (max - min) * (h % 360) / 359);
        let prompt_tokens = 3 + request
            .messages
            .iter()
            .map(|m| 4 + tokens_of(&m.text().unwrap_or_default()))
            .sum::<u64>();
        StubReply {
            id: format!("chatcmpl-stub-{h:016x}"),
            model: request.model.clone(),
            text: stub_answer(&prompt, completion_tokens),
            prompt_tokens,
            completion_tokens,
            latency,
        }
    }

    fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens
        })
    }

    /// The whole `chat.completion`.
    fn completion(&self, created: u64) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": self.text},
                "finish_reason": "stop"
            }],
            "usage": self.usage()
        })
    }

    /// The `data:` of each event of the stream, and when it is due after the request came:
    /// a role chunk and the first piece of content after `STUB_FIRST_CHUNK_SHARE` of the
    /// latency, the other pieces evenly over the rest, the finish chunk at the latency,
    /// then the usage chunk (when asked for) and `[DONE]`.
    fn events(&self, created: u64, include_usage: bool) -> Vec<(Duration, String)> {
        let chunk = |choices: Value, usage: Option<Value>| {
            let mut c = json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.model,
                "choices": choices,
            });
            if let Some(u) = usage {
                c["usage"] = u;
            }
            c.to_string()
        };
        let delta = |delta: Value, finish: Option<&str>| {
            let choice = json!({"index": 0, "delta": delta, "finish_reason": finish});
            json!([choice])
        };
        let first = self.latency.mul_f64(STUB_FIRST_CHUNK_SHARE);
        let streaming = self.latency - first;
        let words: Vec<&str> = self.text.split_inclusive(' ').collect();
        let pieces: Vec<String> = words
            .chunks(STUB_WORDS_PER_CHUNK)
            .map(|w| w.concat())
            .collect();
        let n = pieces.len().max(1) as u32;
        let mut events = vec![(
            first,
            chunk(
                delta(json!({"role": "assistant", "content": ""}), None),
                None,
            ),
        )];
        for (i, piece) in pieces.iter().enumerate() {
            let due = first + streaming * i as u32 / n;
            events.push((due, chunk(delta(json!({"content": piece}), None), None)));
        }
        events.push((self.latency, chunk(delta(json!({}), Some("stop")), None)));
        if include_usage {
            events.push((self.latency, chunk(json!([]), Some(self.usage()))));
        }
        events.push((self.latency, "[DONE]".to_string()));
        events
    }
}

async fn stub_completions(
    State(stub): State<Arc<Stub>>,
    Json(request): Json<ChatRequest>,
) -> Response {
    let came = tokio::time::Instant::now();
    stub.calls.fetch_add(1, Relaxed);
    let reply = StubReply::new(&request, stub.latency_ms);
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if request.stream != Some(true) {
        tokio::time::sleep(reply.latency).await;
        return Json(reply.completion(created)).into_response();
    }
    let include_usage = request
        .stream_options
        .as_ref()
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    // The headers go out at once, each event when it is due (a late one goes at once).
    let events = reply.events(created, include_usage);
    let body = futures_util::stream::iter(events).then(move |(due, data)| async move {
        tokio::time::sleep_until(came + due).await;
        Ok::<_, std::convert::Infallible>(format!("data: {data}\n\n"))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// An answer about `tokens` tokens long.
fn stub_answer(prompt: &str, tokens: u64) -> String {
    const WORDS: &[&str] = &[
        "your", "order", "can", "be", "returned", "within", "thirty", "days", "from", "the",
        "account", "page", "and", "a", "human", "agent", "will", "follow", "up", "soon",
    ];
    let mut text = format!("(stub answer to \"{prompt}\")");
    let target = usize::try_from(tokens * 4).unwrap_or(usize::MAX);
    let mut i = fnv1a(prompt.as_bytes()) as usize;
    while text.len() < target {
        text.push(' ');
        text.push_str(WORDS[i % WORDS.len()]);
        i = i.wrapping_mul(31).wrapping_add(7);
    }
    text
}

async fn start_stub(latency_ms: (u64, u64)) -> std::io::Result<(SocketAddr, Arc<Stub>)> {
    let stub = Arc::new(Stub {
        latency_ms,
        calls: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/v1/chat/completions", post(stub_completions))
        .with_state(Arc::clone(&stub));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // Streamed events are small writes: without TCP_NODELAY, Nagle's algorithm holds each
    // one until the last is acknowledged, and the client delays that ACK by up to 40 ms.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("demo: the stub upstream stopped: {e}");
        }
    });
    Ok((addr, stub))
}

// ---------------------------------------------------------------------------------------
// Running and tallying
// ---------------------------------------------------------------------------------------

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

#[derive(Default)]
struct Tally {
    miss: Vec<Duration>,
    l1: Vec<Duration>,
    l2: Vec<Duration>,
    coalesced: Vec<Duration>,
    /// Time to first token, by status as in `STATUSES` (streamed runs only).
    ttft: [Vec<Duration>; 4],
    /// Errors, mismatches included.
    errors: u64,
    /// Answers whose text differs from their prompt's reference.
    mismatches: u64,
    first_error: Option<String>,
    /// Per prompt, the text a non-streamed request gets: the stub's answer, or (from a
    /// real upstream) the first answer of this run, which every other must equal.
    reference: Vec<Option<String>>,
    tokens_saved: u64,
    /// `None` once an answer could not be priced (unknown model or missing usage).
    cost_without: Option<f64>,
    cost_with: Option<f64>,
    distinct_used: HashSet<usize>,
}

/// The statuses the report breaks latencies down by, in its order.
const STATUSES: [&str; 4] = ["miss", "l1", "l2", "coalesced"];

impl Tally {
    fn new(reference: Vec<Option<String>>) -> Self {
        Tally {
            cost_without: Some(0.0),
            cost_with: Some(0.0),
            reference,
            ..Default::default()
        }
    }

    fn add(&mut self, o: Outcome, cache: &LlmCache, model: &str) {
        self.distinct_used.insert(o.prompt);
        let Answer {
            status,
            usage,
            text,
            ttft,
        } = match o.answer {
            Ok(answer) => answer,
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
                return;
            }
        };
        match &mut self.reference[o.prompt] {
            Some(expected) if *expected != text => {
                self.errors += 1;
                self.mismatches += 1;
                let at = expected
                    .bytes()
                    .zip(text.bytes())
                    .take_while(|(a, b)| a == b)
                    .count();
                self.first_error.get_or_insert_with(|| {
                    format!(
                        "prompt {}: the answer ({}, {} bytes) differs from the one a \
                         non-streamed request gets ({} bytes) from byte {at} on",
                        o.prompt,
                        status.as_str(),
                        text.len(),
                        expected.len()
                    )
                });
                return;
            }
            Some(_) => {}
            unseen @ None => *unseen = Some(text),
        }
        let cost = usage.as_ref().and_then(|u| cache.prices().cost(model, u));
        let paid = !status.is_hit();
        self.cost_without = self.cost_without.zip(cost).map(|(a, c)| a + c);
        if paid {
            self.cost_with = self.cost_with.zip(cost).map(|(a, c)| a + c);
        } else if let Some(u) = &usage {
            self.tokens_saved += u.prompt_tokens + u.completion_tokens;
        }
        let [ttft_miss, ttft_l1, ttft_l2, ttft_coalesced] = &mut self.ttft;
        let (latencies, ttfts) = match status {
            CacheStatus::HitL1 => (&mut self.l1, ttft_l1),
            CacheStatus::HitL2 => (&mut self.l2, ttft_l2),
            CacheStatus::Coalesced => (&mut self.coalesced, ttft_coalesced),
            // Misses; `Bypass` cannot happen here (no temperature rule, no bypass control)
            // and would be an upstream call too.
            _ => (&mut self.miss, ttft_miss),
        };
        latencies.push(o.latency);
        ttfts.extend(ttft);
    }

    fn served(&self) -> usize {
        self.miss.len() + self.l1.len() + self.l2.len() + self.coalesced.len()
    }

    fn hits(&self) -> usize {
        self.l1.len() + self.l2.len() + self.coalesced.len()
    }

    fn hit_ratio(&self) -> f64 {
        match self.served() {
            0 => 0.0,
            n => self.hits() as f64 / n as f64,
        }
    }
}

struct Percentiles {
    count: usize,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
}

fn percentiles(samples: &mut [Duration]) -> Percentiles {
    samples.sort_unstable();
    let at = |p: f64| -> Option<f64> {
        let n = samples.len();
        // Nearest rank: the smallest sample with at least p% of the samples at or below it.
        let rank = ((p / 100.0) * n as f64).ceil() as usize;
        samples
            .get(rank.clamp(1, n.max(1)) - 1)
            .map(|d| d.as_secs_f64() * 1000.0)
    };
    Percentiles {
        count: samples.len(),
        p50_ms: at(50.0),
        p99_ms: at(99.0),
    }
}

/// Background Redis writes still running would be lost when the process exits; wait until
/// every fetched answer is written (or dropped, or failed), for at most `L2_SETTLE_LIMIT`.
async fn settle_l2_writes(cache: &LlmCache) {
    let start = Instant::now();
    let (mut last, mut last_change) = (None, Instant::now());
    loop {
        let s = cache.stats().cache;
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
            let (addr, stub) = start_stub(args.latency_ms)
                .await
                .map_err(|e| format!("could not start the stub upstream: {e}"))?;
            let (min, max) = args.latency_ms;
            let shown = format!(
                "stub on {addr} (answers in {min}-{max} ms, fixed per prompt, with token usage)"
            );
            (
                OpenAiCompatible::new(format!("http://{addr}/v1")),
                shown,
                Some(stub),
            )
        }
    };

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
        .map(|r| {
            stub.is_some()
                .then(|| StubReply::new(r, args.latency_ms).text)
        })
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
        stub_calls: stub.map(|s| s.calls.load(Relaxed)),
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

// ---------------------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------------------

struct Report<'a> {
    args: &'a Args,
    tally: Tally,
    stats: LlmStats,
    wall: Duration,
    bursts: usize,
    stub_calls: Option<u64>,
}

impl Report<'_> {
    fn latencies(&mut self) -> [(&'static str, Percentiles); 4] {
        let t = &mut self.tally;
        [
            ("miss", percentiles(&mut t.miss)),
            ("l1", percentiles(&mut t.l1)),
            ("l2", percentiles(&mut t.l2)),
            ("coalesced", percentiles(&mut t.coalesced)),
        ]
    }

    /// Time to first token by status; `None` unless the run streamed.
    fn ttfts(&mut self) -> Option<[(&'static str, Percentiles); 4]> {
        let ttft = &mut self.tally.ttft;
        self.args
            .stream
            .then(|| std::array::from_fn(|i| (STATUSES[i], percentiles(&mut ttft[i]))))
    }

    fn json(mut self) -> Value {
        let by_status = |ps: [(&str, Percentiles); 4]| -> Value {
            ps.into_iter()
                .map(|(name, p)| {
                    let (p50, p99) = (p.p50_ms.map(micros), p.p99_ms.map(micros));
                    let v = json!({"p50": p50, "p99": p99, "count": p.count});
                    (name.to_string(), v)
                })
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        let latency = by_status(self.latencies());
        let ttft = self.ttfts().map(by_status);
        let (t, s, c) = (&self.tally, &self.stats, &self.stats.cache);
        let stats = json!({
            "l1_hits": c.l1_hits,
            "l2_hits": c.l2_hits,
            "misses": c.misses,
            "coalesced": c.coalesced,
            "fetches": c.fetches,
            "fetch_errors": c.fetch_errors,
            "l2_errors": c.l2_errors,
            "l2_timeouts": c.l2_timeouts,
            "l2_skipped": c.l2_skipped,
            "corrupt_entries": c.corrupt_entries,
            "l2_writes": c.l2_writes,
            "dropped_writes": c.dropped_writes,
            "oversized": c.oversized,
            "waiter_timeouts": c.waiter_timeouts,
            "inflight": c.inflight,
            "breaker": format!("{:?}", c.breaker),
            "l1_entries": c.l1_entries,
            "l1_bytes": c.l1_bytes,
            "bypassed": s.bypassed,
            "upstream_calls": s.upstream_calls,
            "tokens_saved": s.tokens_saved,
            "cost_saved_usd": nanos(s.cost_saved_usd),
        });
        json!({
            "requests": self.args.requests,
            "l1_hits": t.l1.len(),
            "l2_hits": t.l2.len(),
            "coalesced": t.coalesced.len(),
            "misses": t.miss.len(),
            "upstream_calls": s.upstream_calls,
            "errors": t.errors,
            "mismatches": t.mismatches,
            "hit_ratio": t.hit_ratio(),
            "stream": self.args.stream,
            "latency_ms": latency,
            "ttft_ms": ttft,
            "cost_without_usd": t.cost_without.map(nanos),
            "cost_with_usd": t.cost_with.map(nanos),
            "tokens_saved": t.tokens_saved,
            "distinct": self.args.distinct,
            "distinct_used": t.distinct_used.len(),
            "redis": self.args.redis.is_some(),
            "wall_ms": micros(self.wall.as_secs_f64() * 1000.0),
            "model": self.args.model,
            "seed": self.args.seed,
            "concurrency": self.args.concurrency,
            "bursts": self.bursts,
            "stub_calls": self.stub_calls,
            "first_error": t.first_error,
            "stats": stats,
        })
    }

    fn print(mut self) {
        let latencies = self.latencies();
        let ttfts = self.ttfts();
        let (t, s, c) = (&self.tally, &self.stats, &self.stats.cache);
        let n = self.args.requests as u64;
        let share = |k: usize| format!("{:5.1}%", 100.0 * k as f64 / n.max(1) as f64);
        println!("Results");
        let mismatches = if t.mismatches > 0 {
            format!(
                " ({} answers differ from the non-streamed ones)",
                t.mismatches
            )
        } else {
            String::new()
        };
        println!(
            "  requests        {:>9}   errors {}{mismatches}",
            group(n),
            t.errors
        );
        println!(
            "  L1 hits         {:>9}   {}",
            group(t.l1.len() as u64),
            share(t.l1.len())
        );
        println!(
            "  L2 hits         {:>9}   {}",
            group(t.l2.len() as u64),
            share(t.l2.len())
        );
        println!(
            "  coalesced       {:>9}   {}   (joined a call already in flight)",
            group(t.coalesced.len() as u64),
            share(t.coalesced.len())
        );
        println!(
            "  misses          {:>9}   {}",
            group(t.miss.len() as u64),
            share(t.miss.len())
        );
        let stub = self
            .stub_calls
            .map_or(String::new(), |k| format!("   (the stub saw {k})"));
        println!("  upstream calls  {:>9}{stub}", group(s.upstream_calls));
        println!("  hit ratio       {:>8.1}%", 100.0 * t.hit_ratio());
        let secs = self.wall.as_secs_f64();
        println!(
            "  wall time       {:>9}   {} requests/s",
            duration_ms(secs * 1000.0),
            group((n as f64 / secs.max(1e-9)).round() as u64)
        );
        if let Some(e) = &t.first_error {
            println!("  first error     {e}");
        }

        // Every table of the report has the same columns; `width` is its first one's.
        let table = |title: &str, width: usize, rows: &[(&str, Percentiles)]| {
            println!();
            println!("{title:<width$}      count        p50        p99");
            for (name, p) in rows {
                let show = |v: Option<f64>| v.map_or("-".to_string(), duration_ms);
                println!(
                    "  {name:<w$} {:>10} {:>10} {:>10}",
                    group(p.count as u64),
                    show(p.p50_ms),
                    show(p.p99_ms),
                    w = width - 2
                );
            }
        };
        match &ttfts {
            Some(ttfts) => {
                table("Latency (whole stream)", 22, &latencies);
                table("Time to first token", 22, ttfts);
            }
            None => table("Latency", 11, &latencies),
        }

        println!();
        println!("Cost ({})", self.args.model);
        println!("  tokens saved    {:>11}", group(t.tokens_saved));
        match (t.cost_without, t.cost_with) {
            (Some(without), Some(with)) => {
                println!("  without cache   {:>11}", dollars(without));
                let saved = without - with;
                let pct = if without > 0.0 {
                    100.0 * saved / without
                } else {
                    0.0
                };
                println!(
                    "  with cache      {:>11}   saved {} ({pct:.1}%)",
                    dollars(with),
                    dollars(saved)
                );
            }
            _ => println!(
                "  not estimated: no price for `{}` in the table (or answers without usage)",
                self.args.model
            ),
        }

        println!();
        println!("cache.stats()");
        println!(
            "  l1 {} hits, l2 {} hits, {} misses, {} coalesced, {} fetches ({} failed)",
            group(c.l1_hits),
            group(c.l2_hits),
            group(c.misses),
            group(c.coalesced),
            group(c.fetches),
            group(c.fetch_errors)
        );
        println!(
            "  l1 {} entries, {}; upstream calls {}, bypassed {}",
            group(c.l1_entries),
            bytes(c.l1_bytes),
            group(s.upstream_calls),
            group(s.bypassed)
        );
        if self.args.redis.is_some() {
            println!(
                "  l2 {} writes, {} dropped, {} errors, {} timeouts, {} skipped, {} corrupt; breaker {:?}",
                group(c.l2_writes),
                group(c.dropped_writes),
                group(c.l2_errors),
                group(c.l2_timeouts),
                group(c.l2_skipped),
                group(c.corrupt_entries),
                c.breaker
            );
        }
        println!(
            "  tokens saved {}, {} saved by the price table",
            group(s.tokens_saved),
            dollars(s.cost_saved_usd)
        );

        println!();
        match &self.args.redis {
            Some(url) if c.l2_writes == 0 && c.misses > 0 => println!(
                "Redis at {} took no write ({} errors, {} timeouts, breaker {:?}): check that \
                 it runs and the URL's password; this run was L1-only.",
                redis_host_port(url),
                c.l2_errors,
                c.l2_timeouts,
                c.breaker
            ),
            Some(_) if t.l2.is_empty() => println!(
                "Run it again with the same Redis and seed: a new process starts with an empty \
                 L1 and is answered from Redis."
            ),
            Some(_) => {}
            None => println!(
                "L1-only run. Add Redis (REDIS_URL=redis://host:port or --redis URL) and run \
                 twice to see a second process answered from L2."
            ),
        }
    }
}

/// Milliseconds to the microsecond, so the JSON carries no float noise.
fn micros(ms: f64) -> f64 {
    (ms * 1e3).round() / 1e3
}

/// Dollars to the nano-dollar, the crate's own resolution.
fn nanos(usd: f64) -> f64 {
    (usd * 1e9).round() / 1e9
}

/// `1234567` -> `1,234,567`.
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

fn duration_ms(ms: f64) -> String {
    if ms < 1.0 {
        format!("{:.0} µs", ms * 1000.0)
    } else if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

fn dollars(usd: f64) -> String {
    if usd.abs() < 1.0 {
        format!("${usd:.4}")
    } else {
        format!("${usd:.2}")
    }
}

fn bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / f64::from(1 << 20)),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / f64::from(1 << 10)),
        n => format!("{n} B"),
    }
}

/// Only `host:port` of a Redis URL: it may carry a password.
fn redis_host_port(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url));
    if scheme.contains("unix") {
        return "a unix socket".into();
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    if host_port.is_empty() {
        "127.0.0.1:6379".into()
    } else if host_port.ends_with(']') || !host_port.contains(':') {
        format!("{host_port}:6379")
    } else {
        host_port.into()
    }
}

/// A base URL without credentials, query or fragment.
fn shown_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or_default();
            let port = u.port().map_or(String::new(), |p| format!(":{p}"));
            format!("{}://{host}{port}{}", u.scheme(), u.path())
        }
        Err(_) => "OPENAI_BASE_URL (not a valid URL)".into(),
    }
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
