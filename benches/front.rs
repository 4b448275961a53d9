//! The HTTP front against a bare handler, measured from outside by `wrk` (issue 26, item 1).
//!
//! Four servers in this process, on one tokio runtime, each on its own loopback port:
//!
//! - `front`: `llm_cache::serve`'s router (open mode, an `upstream_url` as the proxy has)
//!   served by `llm_cache_serve::serve` under the default `ServeLimits`, as the proxy serves
//!   it; every timed request is an L1 hit of `POST /v1/chat/completions`.
//! - `bare`: an axum handler on `axum::serve` that reads the body and answers the front's
//!   own answer (the same ~2 KB of JSON, `content-type`, `x-llm-cache` and `age`) from memory.
//! - `bare_limits`: the same handler served by `llm_cache_serve::serve`, to tell the server
//!   loop's cost from the router's.
//! - `handler`: the crate docs' own handler (parse, `chat`, the `Cached` answer as the
//!   response) under `llm_cache_serve::serve`: the cache's work without the router.
//!
//! `wrk` (keep-alive, one thread, the same ~1 KB chat request every time) drives each of them
//! at 1 and at 64 connections, in rotating order, three rounds; the JSON gives each figure's
//! median over the rounds (and every round), the servers' CPU per request (wrk excluded),
//! the cache's work timed alone, and in `targets` the ratio of the front's requests/s to the
//! bare handler's at 64 connections (target at least 0.7; reported, not asserted). The bench
//! fails only on correctness: an error or a non-2xx answer from wrk, or a timed request that
//! was not an L1 hit.
//!
//! ```text
//! bash scripts/bench-front.sh                    # installs wrk when missing; about 100 s
//! cargo bench --bench front --features serve     # the same, with wrk already installed
//! FRONT_BENCH_SHORT=1 cargo bench --bench front --features serve   # one round of 1 s runs
//! ```
//!
//! `FRONT_BENCH_SECONDS` sets each run's length (default 4), `FRONT_BENCH_ROUNDS` the rounds
//! (default 3), `FRONT_BENCH_SERVE=front` (or `bare`, `bare_limits`, `handler`) serves one
//! side alone and prints its URL and a wrk script, for a profiler or a load generator of your
//! own. wrk and the servers share the machine's cores. Prints one JSON object on stdout;
//! progress on stderr.

use std::hint::black_box;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use llm_cache::{ChatRequest, LlmCache, OpenAiCompatible};
use serde_json::{Value, json};

/// Characters of the answer's content: about 2 KB of JSON, as in the load and proxy benches.
const ANSWER_CHARS: usize = 1_600;
/// The connection counts of every figure.
const CONNECTIONS: [usize; 2] = [1, 64];
/// The sides, in the order of the first round.
const SIDES: [&str; 4] = ["bare", "bare_limits", "handler", "front"];
const PATH: &str = "/v1/chat/completions";

/// A realistic chat request of about 1 KB: a system prompt, a short exchange, parameters.
fn request_body() -> String {
    let body = json!({
        "model": "gpt-4.1-mini",
        "messages": [
            {"role": "system", "content": "You are a careful assistant for a logistics \
                company. Answer in plain English, in at most three short paragraphs, and \
                cite the Incoterms rule or the customs regulation you rely on. If the \
                question is ambiguous, say which reading you answer. Never invent a \
                regulation; say so when you do not know."},
            {"role": "user", "content": "A pallet of machine parts shipped DAP from \
                Rotterdam to Lyon was held at the border for two days because the customs \
                declaration listed the wrong HS code."},
            {"role": "assistant", "content": "Under DAP the seller delivers when the goods \
                are placed at the buyer's disposal at the named place, ready for unloading; \
                import clearance is the buyer's job. Who filed the declaration?"},
            {"role": "user", "content": "Our broker filed it for us, as the buyer, with the \
                code the seller printed on the commercial invoice. The carrier now bills two \
                days of demurrage. Who pays, and can we recover it from the seller?"}
        ],
        "temperature": 0.2,
        "max_tokens": 600,
        "top_p": 1,
        "user": "bench-caller-0042"
    });
    body.to_string()
}

/// The canned upstream's answer: about 2 KB of JSON.
fn canned_answer() -> Value {
    let words = "the carrier pays demurrage when the delay is caused by a shipper error ";
    let content: String = words.chars().cycle().take(ANSWER_CHARS).collect();
    json!({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 0,
        "model": "gpt-4.1-mini",
        "choices": [{"index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 220, "completion_tokens": 400, "total_tokens": 620}
    })
}

/// What the bare handler answers: the front's own bytes and cache headers.
#[derive(Clone)]
struct Answer {
    body: Bytes,
    headers: HeaderMap,
}

async fn bare(State(answer): State<Answer>, body: Bytes) -> Response {
    drop(body);
    (answer.headers.clone(), answer.body.clone()).into_response()
}

/// The crate docs' own handler: parse, `chat`, the `Cached` answer as the response.
async fn handler(
    State(cache): State<LlmCache>,
    body: Bytes,
) -> Result<llm_cache::Cached<llm_cache::ChatResponse>, llm_cache::Error> {
    let request = ChatRequest::from_json(&body)?;
    cache.chat(&request).await
}

fn bare_router(answer: Answer) -> Router {
    Router::new().route(PATH, post(bare)).with_state(answer)
}

async fn bind() -> tokio::net::TcpListener {
    tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port")
}

/// Serve `router` with `axum::serve` (the bare side and the canned upstream).
async fn serve_axum(router: Router) -> SocketAddr {
    let listener = bind().await;
    let addr = listener.local_addr().expect("an address");
    tokio::spawn(async move { axum::serve(listener, router).await.expect("axum::serve") });
    addr
}

/// Serve `router` as the proxy does: `llm_cache_serve::serve` under the default limits.
async fn serve_limits(router: Router) -> SocketAddr {
    let listener = bind().await;
    let addr = listener.local_addr().expect("an address");
    let limits = llm_cache::serve::ServeLimits::default();
    tokio::spawn(async move {
        llm_cache::serve::serve(listener, router, limits, std::future::pending())
            .await
            .expect("llm_cache_serve::serve")
    });
    addr
}

struct Servers {
    cache: LlmCache,
    addrs: Vec<(&'static str, SocketAddr)>,
    answer_bytes: usize,
}

/// The upstream, the cache and the front, warmed so that the request is an L1 hit; then the
/// bare sides, answering the bytes and headers the front answered.
async fn start(body: &str) -> Servers {
    let answer = canned_answer();
    let upstream = Router::new().route(
        "/v1/chat/completions",
        post(move || {
            let answer = answer.clone();
            async move { axum::Json(answer) }
        }),
    );
    let upstream = format!("http://{}/v1", serve_axum(upstream).await);
    let cache = LlmCache::builder()
        .upstream(OpenAiCompatible::new(upstream.clone()))
        .build()
        .await
        .expect("a cache");
    let router = llm_cache::serve::builder(cache.clone())
        .upstream_url(upstream)
        .build()
        .expect("the front's router");
    let front = serve_limits(router).await;
    let client = reqwest::Client::new();
    let mut answer = None;
    for expected in ["miss", "hit-l1"] {
        let response = client
            .post(format!("http://{front}{PATH}"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("the front answers");
        assert_eq!(response.status(), 200, "the front's answer");
        assert_eq!(response.headers()["x-llm-cache"], expected);
        let mut headers = HeaderMap::new();
        for name in [header::CONTENT_TYPE, header::AGE] {
            let value = response.headers().get(&name).expect("the front's header");
            headers.insert(name, value.clone());
        }
        headers.insert("x-llm-cache", HeaderValue::from_static("hit-l1"));
        let body = response.bytes().await.expect("the front's body");
        answer = Some(Answer { body, headers });
    }
    let answer = answer.expect("an answer");
    let answer_bytes = answer.body.len();
    let bare = serve_axum(bare_router(answer.clone())).await;
    let bare_limits = serve_limits(bare_router(answer)).await;
    let handler = serve_limits(
        Router::new()
            .route(PATH, post(handler))
            .with_state(cache.clone()),
    )
    .await;
    // Its key is the cache's own (no upstream URL in it): one miss to fill it.
    let response = client
        .post(format!("http://{handler}{PATH}"))
        .body(body.to_string())
        .send()
        .await
        .expect("the handler answers");
    assert_eq!(response.status(), 200, "the handler's answer");
    Servers {
        cache,
        addrs: vec![
            ("bare", bare),
            ("bare_limits", bare_limits),
            ("handler", handler),
            ("front", front),
        ],
        answer_bytes,
    }
}

/// The wrk script: the POST, and a last line of JSON with the figures.
fn wrk_script(body: &str) -> String {
    let mut fence = String::from("=");
    while body.contains(&format!("]{fence}]")) {
        fence.push('=');
    }
    format!(
        r#"wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = [{fence}[{body}]{fence}]
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'FRONT_BENCH {{"requests":%d,"duration_us":%d,"bytes":%d,"non_2xx":%d,"socket_errors":%d,"p50_us":%d,"p99_us":%d}}\n',
    summary.requests, summary.duration, summary.bytes, e.status,
    e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"#
    )
}

/// One wrk run against `addr` with `connections` for `seconds`: its figures as JSON.
fn wrk(script: &std::path::Path, addr: SocketAddr, connections: usize, seconds: u64) -> Value {
    let out = Command::new(wrk_program())
        .args(["-t1", "--timeout", "10s"])
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg("-s")
        .arg(script)
        .arg(format!("http://{addr}{PATH}"))
        .output()
        .unwrap_or_else(|e| panic!("{} could not run ({e}): {NO_WRK}", wrk_program()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "wrk failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("FRONT_BENCH "))
        .unwrap_or_else(|| panic!("wrk printed no figures:\n{stdout}"));
    let raw: Value = serde_json::from_str(line).expect("wrk's figures");
    let n = |k: &str| raw[k].as_u64().expect("a wrk figure");
    assert_eq!(n("non_2xx"), 0, "answers other than 2xx from {addr}: {raw}");
    assert_eq!(n("socket_errors"), 0, "socket errors against {addr}: {raw}");
    let requests = n("requests");
    assert!(requests > 0, "no request completed against {addr}");
    let secs = n("duration_us") as f64 / 1e6;
    json!({
        "requests": requests,
        "requests_per_sec": (requests as f64 / secs).round(),
        "p50_us": n("p50_us"),
        "p99_us": n("p99_us"),
        "bytes_per_answer": n("bytes") / requests,
    })
}

/// CPU time of this process's threads so far (the servers; wrk is another process), from
/// `/proc/self/task/*/schedstat` (Linux; `None` elsewhere).
fn process_cpu() -> Option<Duration> {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
        total += stat.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(Duration::from_nanos(total))
}

const NO_WRK: &str = "this bench needs wrk: `bash scripts/bench-front.sh` installs it \
    (or `apt-get install wrk`, or set WRK to its path)";

fn wrk_program() -> String {
    std::env::var("WRK").unwrap_or_else(|_| "wrk".to_string())
}

/// What the front does per hit beyond the bare handler, each part timed alone in a loop on
/// this thread (the servers idle): parse the body, the L1 hit through `chat` (key: canonical
/// JSON and SHA-256, then the lookup), serialise the answer. Means in µs.
fn front_work(runtime: &tokio::runtime::Runtime, cache: &LlmCache, body: &str) -> Value {
    const N: u32 = 20_000;
    let mean_us =
        |elapsed: Duration| (elapsed.as_secs_f64() * 1e6 / f64::from(N) * 100.0).round() / 100.0;
    let started = Instant::now();
    for _ in 0..N {
        black_box(ChatRequest::from_json(black_box(body.as_bytes())).expect("a chat request"));
    }
    let parse = mean_us(started.elapsed());
    let request = ChatRequest::from_json(body.as_bytes()).expect("a chat request");
    let (hit, answer) = runtime.block_on(async {
        cache.chat(&request).await.expect("the answer");
        let started = Instant::now();
        for _ in 0..N {
            let hit = cache.chat(black_box(&request)).await.expect("a hit");
            assert!(hit.status().is_hit(), "an L1 hit");
            black_box(hit);
        }
        let elapsed = started.elapsed();
        (elapsed, cache.chat(&request).await.expect("a hit"))
    });
    let started = Instant::now();
    for _ in 0..N {
        black_box(serde_json::to_vec(black_box(answer.value())).expect("JSON"));
    }
    let serialise = mean_us(started.elapsed());
    let hit = mean_us(hit);
    json!({
        "parse_request_us": parse,
        "l1_hit_through_chat_us": hit,
        "serialise_answer_us": serialise,
        "sum_us": ((parse + hit + serialise) * 100.0).round() / 100.0,
    })
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn env_number(name: &str) -> Option<f64> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

fn main() {
    let short = std::env::var("FRONT_BENCH_SHORT").is_ok_and(|v| !v.is_empty() && v != "0")
        || std::env::args().any(|a| a == "--short");
    // wrk takes whole seconds.
    let seconds = env_number("FRONT_BENCH_SECONDS").map_or(if short { 1 } else { 4 }, |s| s as u64);
    let rounds = env_number("FRONT_BENCH_ROUNDS").map_or(if short { 1 } else { 3 }, |r| r as usize);
    assert!(
        rounds > 0 && seconds > 0,
        "at least one round of at least 1 s"
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .expect("runtime");
    let body = request_body();
    let servers = runtime.block_on(start(&body));
    if let Ok(side) = std::env::var("FRONT_BENCH_SERVE") {
        let (_, addr) = servers
            .addrs
            .iter()
            .find(|(name, _)| *name == side)
            .unwrap_or_else(|| panic!("FRONT_BENCH_SERVE={side:?}: one of {SIDES:?}"));
        println!("serving {side} on http://{addr}{PATH} (POST; Ctrl-C stops)");
        let script =
            std::env::temp_dir().join(format!("llm-cache-front-{}.lua", std::process::id()));
        std::fs::write(&script, wrk_script(&body)).expect("the wrk script");
        println!("wrk script: {}", script.display());
        runtime.block_on(std::future::pending::<()>());
    }
    Command::new(wrk_program())
        .arg("--version")
        .output()
        .unwrap_or_else(|e| panic!("{} could not run ({e}): {NO_WRK}", wrk_program()));
    let script = std::env::temp_dir().join(format!("llm-cache-front-{}.lua", std::process::id()));
    std::fs::write(&script, wrk_script(&body)).expect("the wrk script");

    let started = Instant::now();
    let work = front_work(&runtime, &servers.cache, &body);
    // Warm every side's connections and allocator once before the timed runs.
    for (_, addr) in &servers.addrs {
        wrk(&script, *addr, 64, 1);
    }
    let mut runs: Vec<(usize, &str, Value)> = Vec::new();
    for round in 0..rounds {
        for connections in CONNECTIONS {
            for k in 0..SIDES.len() {
                let (side, addr) = servers.addrs[(k + round) % SIDES.len()];
                eprintln!("front bench: round {round}, {connections} connections, {side}");
                let before = servers.cache.stats();
                let cpu = process_cpu();
                let mut figures = wrk(&script, addr, connections, seconds);
                let requests = figures["requests"].as_f64().expect("requests");
                figures["server_cpu_us_per_request"] =
                    json!(cpu.zip(process_cpu()).map(|(a, b)| {
                        ((b - a).as_secs_f64() * 1e6 / requests * 100.0).round() / 100.0
                    }));
                if side == "front" || side == "handler" {
                    let after = servers.cache.stats();
                    let hits = after.cache.l1_hits - before.cache.l1_hits;
                    assert_eq!(after.cache.misses, before.cache.misses, "a timed miss");
                    assert!(
                        hits >= figures["requests"].as_u64().expect("requests"),
                        "fewer L1 hits ({hits}) than requests answered: {figures}"
                    );
                }
                runs.push((connections, side, figures));
            }
        }
    }
    let _ = std::fs::remove_file(&script);

    let mut report = json!({
        "mode": if short { "short" } else { "full" },
        "machine": {"cpus": cores, "note": "wrk (one thread) and the servers share these cores"},
        "request_bytes": body.len(),
        "answer_bytes": servers.answer_bytes,
        "seconds_per_run": seconds,
        "rounds": rounds,
    });
    for connections in CONNECTIONS {
        let mut at = json!({});
        for side in SIDES {
            let mine: Vec<&Value> = runs
                .iter()
                .filter(|(c, s, _)| *c == connections && *s == side)
                .map(|(_, _, v)| v)
                .collect();
            // Medians over the rounds (null when a figure is missing, as the CPU off Linux).
            let m = |k: &str| {
                let all: Option<Vec<f64>> = mine.iter().map(|v| v[k].as_f64()).collect();
                all.map(median)
            };
            at[side] = json!({
                "requests_per_sec": m("requests_per_sec"),
                "p50_us": m("p50_us"),
                "p99_us": m("p99_us"),
                "server_cpu_us_per_request": m("server_cpu_us_per_request"),
                "rounds": mine,
            });
        }
        let of = |side: &str, k: &str| at[side][k].as_f64();
        let over_bare = |side: &str| {
            let rps = |s| of(s, "requests_per_sec").expect("requests/s");
            json!(((rps(side) / rps("bare")) * 1000.0).round() / 1000.0)
        };
        // The front's server CPU per request beyond the bare handler's (µs).
        let beyond = of("front", "server_cpu_us_per_request")
            .zip(of("bare", "server_cpu_us_per_request"))
            .map(|(f, b)| ((f - b) * 100.0).round() / 100.0);
        let ratios = json!({
            "front_over_bare": over_bare("front"),
            "bare_limits_over_bare": over_bare("bare_limits"),
            "handler_over_bare": over_bare("handler"),
            "front_cpu_beyond_bare_us": beyond,
        });
        for (k, v) in ratios.as_object().expect("an object") {
            at[k] = v.clone();
        }
        report[format!("connections_{connections}")] = at;
    }
    report["front_work"] = work;
    let ratio = report["connections_64"]["front_over_bare"]
        .as_f64()
        .expect("a ratio");
    report["targets"] = json!({
        "front_at_least_0_7_of_bare_at_64_connections": {"value": ratio, "met": ratio >= 0.7},
    });
    report["seconds"] = json!((started.elapsed().as_secs_f64() * 10.0).round() / 10.0);
    println!("{report}");
    runtime.shutdown_timeout(Duration::from_secs(1));
}
