//! What an operator sees: `redis_stats()` against a real server, the start-up warning about
//! Redis settings that refuse cache writes, `health()` through a Redis outage, and tracing
//! output that never shows a prompt or an API key. No metrics recorder here (that is
//! `tests/metrics_scrape.rs`, its own process): these tests run in parallel.

use llm_cache_test_support as support;

use std::cell::RefCell;
use std::io::Write;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use llm_cache::{
    BreakerState, CacheControl, ChatMessage, ChatRequest, L2Health, LlmCache, OpenAiCompatible,
    RetryPolicy,
};
use support::eventually;
use support::redis::RedisServer;
use support::upstream::{MockReply, MockUpstream};
use tracing_subscriber::filter::dynamic_filter_fn;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::layer::{Layer, SubscriberExt};

const WAIT: Duration = Duration::from_secs(10);

fn request(prompt: &str) -> ChatRequest {
    ChatRequest::new("gpt-4.1")
        .message(ChatMessage::system("You are terse."))
        .message(ChatMessage::user(prompt))
}

fn upstream(mock: &MockUpstream, key: &str) -> OpenAiCompatible {
    OpenAiCompatible::new(mock.base_url())
        .api_key(key)
        .retry(RetryPolicy::none())
}

thread_local! {
    /// Where this thread's log lines go while a test captures them.
    static CAPTURE: RefCell<Option<Buffer>> = const { RefCell::new(None) };
}

type Buffer = Arc<Mutex<Vec<u8>>>;

/// What this thread logs, at every level, one line per event and per closed span, while it
/// lives. Tests run on current-thread runtimes, so every task a test spawns logs on its
/// thread. One global subscriber serves the whole binary: a thread-local one
/// (`set_default`) misses events when tests run in parallel, because tracing caches each
/// callsite's interest process-wide.
struct Captured(Buffer);

impl Captured {
    fn start() -> Captured {
        static GLOBAL: Once = Once::new();
        GLOBAL.call_once(|| {
            let layer = tracing_subscriber::fmt::layer()
                .with_writer(ThreadWriter)
                .with_ansi(false)
                .without_time()
                .with_span_events(FmtSpan::CLOSE)
                // Decided per event (a dynamic filter is never cached per callsite).
                .with_filter(dynamic_filter_fn(|_, _| {
                    CAPTURE.with(|c| c.borrow().is_some())
                }));
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
                .expect("no other global subscriber in this binary");
        });
        let buffer = Buffer::default();
        CAPTURE.with(|c| *c.borrow_mut() = Some(Arc::clone(&buffer)));
        Captured(buffer)
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Lines at INFO, WARN or ERROR (the level is the line's first word).
    fn at_info_or_above(&self) -> Vec<String> {
        self.text()
            .lines()
            .map(str::trim_start)
            .filter(|l| {
                let level = l.split_whitespace().next().unwrap_or("");
                matches!(level, "INFO" | "WARN" | "ERROR")
            })
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Captured {
    fn drop(&mut self) {
        CAPTURE.with(|c| *c.borrow_mut() = None);
    }
}

/// Writes to the capture of the thread that logs, if any.
struct ThreadWriter;

struct LineSink(Option<Buffer>);

impl Write for LineSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(b) = &self.0 {
            b.lock().unwrap().extend_from_slice(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for ThreadWriter {
    type Writer = LineSink;

    fn make_writer(&'a self) -> LineSink {
        LineSink(CAPTURE.with(|c| c.borrow().clone()))
    }
}

#[tokio::test]
async fn redis_stats_counts_the_cache_keys_and_reads_info() {
    let redis =
        RedisServer::start_with_args(&["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"]);
    let mock = MockUpstream::start().await;
    let cache = LlmCache::builder()
        .upstream(upstream(&mock, "sk-test"))
        .redis(redis.url())
        .key_prefix("obs:stats")
        .l2_deadline(Duration::from_millis(250))
        .build()
        .await
        .unwrap();

    const ENTRIES: u64 = 25;
    for i in 0..ENTRIES {
        cache
            .chat(&request(&format!("question {i}")))
            .await
            .unwrap();
    }
    eventually("every L2 write", WAIT, || {
        cache.stats().cache.l2_writes == ENTRIES
    })
    .await;
    // Keys that are not the cache's, also one that only shares the prefix's start.
    redis.redis_cli(&["SET", "other:key", "1"]);
    redis.redis_cli(&["SET", "obs:statsX:1", "1"]);
    // L2 hits after L1 is emptied: Redis counts keyspace hits.
    cache.tiers().clear_l1();
    for i in 0..5 {
        cache
            .chat(&request(&format!("question {i}")))
            .await
            .unwrap();
    }
    assert_eq!(cache.stats().cache.l2_hits, 5);

    let stats = cache.redis_stats().await.unwrap();
    assert_eq!(stats.keys, ENTRIES, "{stats:?}");
    assert!(stats.keys_exact, "{stats:?}");
    // The two foreign keys and the generations record (made when the cache first loads it).
    assert_eq!(stats.db_keys, ENTRIES + 3);
    assert_eq!(stats.maxmemory, 64 << 20);
    assert_eq!(stats.maxmemory_policy, "allkeys-lru");
    assert!(stats.evicts_when_full());
    assert!(
        stats.used_memory > 0 && !stats.used_memory_human.is_empty(),
        "{stats:?}"
    );
    assert!(stats.keyspace_hits >= 5, "{stats:?}");
    assert!(
        stats.keyspace_misses >= ENTRIES,
        "every first ask was an L2 miss: {stats:?}"
    );
    assert!(stats.hit_rate() > 0.0 && stats.hit_rate() < 1.0);
    assert_eq!(stats.evicted_keys, 0);
    assert_eq!(stats.nodes, 1);
    assert!(!stats.redis_version.is_empty());
    // Reading statistics is not cache traffic.
    assert_eq!(cache.stats().cache.l2_errors, 0);
}

#[tokio::test]
async fn redis_stats_count_is_bounded() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let cache = LlmCache::builder()
        .upstream(upstream(&mock, "sk-test"))
        .redis(redis.url())
        .build()
        .await
        .unwrap();
    // 5,000 entry-shaped keys under the prefix, written behind the cache's back.
    let mut conn = redis.conn().await;
    let mut pipe = redis::pipe();
    for i in 0..5_000 {
        pipe.cmd("SET")
            .arg(format!("ai:cache:{{{i:064}}}"))
            .arg("x")
            .ignore();
    }
    pipe.query_async::<()>(&mut conn).await.unwrap();

    let bounded = cache.redis_stats_scanning(1_000).await.unwrap();
    assert!(
        !bounded.keys_exact,
        "one SCAN step cannot see 5,000 keys: {bounded:?}"
    );
    assert!(bounded.keys < 5_000, "{bounded:?}");
    // And the generations record.
    assert_eq!(bounded.db_keys, 5_001);
    let full = cache.redis_stats().await.unwrap();
    assert!(full.keys_exact);
    assert_eq!(full.keys, 5_000);
}

#[tokio::test]
async fn redis_stats_of_an_l1_only_cache_is_an_error() {
    let mock = MockUpstream::start().await;
    let cache = LlmCache::builder()
        .upstream(upstream(&mock, "sk-test"))
        .build()
        .await
        .unwrap();
    let err = cache.redis_stats().await.unwrap_err();
    assert!(err.is_config(), "{err}");
    let health = cache.health().await;
    assert_eq!(health.l2, L2Health::Disabled);
    assert!(health.is_ok());
}

#[tokio::test]
async fn start_up_warns_when_redis_would_refuse_writes_once_full() {
    let captured = Captured::start();
    let unsafe_redis =
        RedisServer::start_with_args(&["--maxmemory", "64mb", "--maxmemory-policy", "noeviction"]);
    let safe_redis =
        RedisServer::start_with_args(&["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"]);
    let mock = MockUpstream::start().await;
    let build = |url: String| {
        LlmCache::builder()
            .upstream(upstream(&mock, "sk-test"))
            .redis(url)
            .build()
    };
    let unsafe_cache = build(unsafe_redis.url()).await.unwrap();
    let safe_cache = build(safe_redis.url()).await.unwrap();

    let checked = |redis: &RedisServer| {
        let needle = format!("redis configuration checked redis={}", redis.url());
        captured.text().contains(&needle)
    };
    eventually("both start-up checks", WAIT, || {
        checked(&unsafe_redis) && checked(&safe_redis)
    })
    .await;
    let warnings: Vec<String> = captured
        .at_info_or_above()
        .into_iter()
        .filter(|l| l.starts_with("WARN") && l.contains("maxmemory"))
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "one warning, for the noeviction server: {warnings:#?}"
    );
    assert!(warnings[0].contains("noeviction"), "{}", warnings[0]);
    assert!(warnings[0].contains(&unsafe_redis.url()), "{}", warnings[0]);
    drop((unsafe_cache, safe_cache));
}

#[tokio::test]
async fn start_up_warns_when_redis_has_no_maxmemory() {
    let captured = Captured::start();
    let redis = RedisServer::start(); // no maxmemory, noeviction: redis-server's defaults
    let mock = MockUpstream::start().await;
    let _cache = LlmCache::builder()
        .upstream(upstream(&mock, "sk-test"))
        .redis(redis.url())
        .build()
        .await
        .unwrap();
    eventually("the no-maxmemory warning", WAIT, || {
        captured
            .at_info_or_above()
            .iter()
            .any(|l| l.starts_with("WARN") && l.contains("redis has no maxmemory"))
    })
    .await;
}

#[tokio::test]
async fn health_goes_up_down_and_up_again_without_showing_the_password() {
    // The cache logs in as an ACL user with a password (the default user stays open so the
    // harness can PING); the user is made again after the restart.
    let mut redis = RedisServer::start();
    let add_user = |redis: &RedisServer| {
        redis.redis_cli(&[
            "ACL",
            "SETUSER",
            "cache",
            "on",
            ">s3cret-pw",
            "~*",
            "&*",
            "+@all",
        ]);
    };
    add_user(&redis);
    let url = format!("redis://cache:s3cret-pw@127.0.0.1:{}", redis.port());
    let mock = MockUpstream::start().await;
    let cache = LlmCache::builder()
        .upstream(upstream(&mock, "sk-test"))
        .redis(&url)
        .l2_deadline(Duration::from_millis(200))
        .breaker_threshold(3)
        .breaker_cooldown(Duration::from_millis(300))
        .build()
        .await
        .unwrap();

    let up = cache.health().await;
    assert_eq!(up.l2, L2Health::Up, "{up}");
    assert!(up.is_ok());
    assert_eq!(up.breaker, BreakerState::Closed);
    assert_eq!(up.last_error, None);
    let shown = up.redis.clone().unwrap();
    assert!(
        shown.contains("***") && !shown.contains("s3cret-pw"),
        "{shown}"
    );

    redis.kill();
    let down = cache.health().await;
    assert_eq!(down.l2, L2Health::Down, "{down}");
    assert!(!down.is_ok());
    // Traffic keeps being served; its L2 failures open the breaker.
    let mut i = 0;
    loop {
        cache
            .chat(&request(&format!("during the outage {i}")))
            .await
            .unwrap();
        i += 1;
        if cache.stats().cache.breaker == BreakerState::Open {
            break;
        }
        assert!(i < 50, "the breaker never opened");
    }
    let open = cache.health().await;
    assert_eq!(open.l2, L2Health::BreakerOpen, "{open}");
    let last = open.last_error.clone().expect("a last error");
    assert!(open.last_error_at.is_some());
    assert!(
        !last.contains("s3cret-pw") && !open.to_string().contains("s3cret-pw"),
        "{open}"
    );

    redis.restart();
    add_user(&redis);
    // Once the cool-down is over, traffic (or health() itself) probes and closes the breaker.
    let mut up_again = cache.health().await;
    for j in 0..200 {
        if up_again.l2 == L2Health::Up {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        cache
            .chat(&request(&format!("after the restart {j}")))
            .await
            .unwrap();
        up_again = cache.health().await;
    }
    assert_eq!(up_again.l2, L2Health::Up, "{up_again}");
    assert_eq!(up_again.breaker, BreakerState::Closed);
    // The outage stays on record for the operator.
    assert!(up_again.last_error.is_some());
}

#[tokio::test]
async fn no_prompt_and_no_api_key_at_info_or_above() {
    const PROMPT: &str = "PROMPT-CANARY what is my account number 4242";
    const KEY: &str = "sk-test-KEY-CANARY-0123456789";
    let captured = Captured::start();
    let mut redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let cache = LlmCache::builder()
        .upstream(
            OpenAiCompatible::new(mock.base_url()).api_key(KEY).retry(
                RetryPolicy::default()
                    .max_attempts(2)
                    .base_delay(Duration::from_millis(1)),
            ),
        )
        .redis(redis.url())
        .l2_deadline(Duration::from_millis(200))
        .breaker_threshold(2)
        .breaker_cooldown(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    let req = request(PROMPT);

    // Miss, hit, a stream, a bypass; an upstream error (retried, then failing); Redis gone
    // (connection errors, breaker open); a corrupt entry.
    cache.chat(&req).await.unwrap();
    cache.chat(&req).await.unwrap();
    let _stream = cache
        .chat_stream(&request(&format!("{PROMPT} streamed")))
        .await
        .unwrap();
    cache
        .chat_with(&req, &CacheControl::new().bypass(true))
        .await
        .unwrap();
    mock.push_reply(MockReply::openai_error(
        500,
        &format!("mock echo: {PROMPT}"),
    ));
    mock.push_reply(MockReply::openai_error(
        500,
        &format!("mock echo: {PROMPT}"),
    ));
    let failed = request(&format!("{PROMPT} failing"));
    assert!(cache.chat(&failed).await.is_err());
    eventually("L2 writes", WAIT, || cache.stats().cache.l2_writes >= 2).await;
    let corrupt = request(&format!("{PROMPT} corrupt"));
    let digest = cache.digest_with(&corrupt, &CacheControl::new());
    redis.redis_cli(&["SET", &cache.tiers().l2_key(&digest), "garbage"]);
    cache.chat(&corrupt).await.unwrap();
    redis.kill();
    for i in 0..6 {
        cache
            .chat(&request(&format!("{PROMPT} outage {i}")))
            .await
            .unwrap();
    }
    let _ = cache.health().await;
    redis.restart();
    tokio::time::sleep(Duration::from_millis(250)).await;
    for i in 0..3 {
        cache
            .chat(&request(&format!("{PROMPT} back {i}")))
            .await
            .unwrap();
    }

    let text = captured.text();
    let loud = captured.at_info_or_above();
    assert!(
        loud.iter().any(|l| l.contains("circuit breaker open")),
        "the outage was logged at WARN: {loud:#?}"
    );
    assert!(
        loud.iter().any(|l| l.contains("corrupt cache entry")),
        "{loud:#?}"
    );
    for line in &loud {
        assert!(
            !line.contains("PROMPT-CANARY"),
            "a prompt at INFO or above: {line}"
        );
        assert!(
            !line.contains("account number"),
            "a prompt at INFO or above: {line}"
        );
    }
    assert!(
        !text.contains("KEY-CANARY"),
        "the API key was logged (at some level)"
    );
    // The request spans are there at DEBUG, with the short key and no prompt (a flight's
    // span, inside its leader's, closes first).
    let chat_spans: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("DEBUG") && l.contains("llm_cache.chat{") && l.ends_with("close"))
        .filter(|l| !l.contains("llm_cache.flight{"))
        .collect();
    assert!(
        chat_spans
            .iter()
            .any(|l| l.contains("status=\"hit\"") && l.contains("tier=\"l1\"")),
        "{chat_spans:#?}"
    );
    let incomplete: Vec<&&str> = chat_spans
        .iter()
        .filter(|l| !(l.contains("key=") && l.contains("latency_us=")))
        .collect();
    assert!(incomplete.is_empty(), "{incomplete:#?}");
    assert!(
        text.lines()
            .any(|l| l.contains("llm_cache.flight{") && l.contains("upstream_attempts=2")),
        "the failing flight records its two attempts"
    );
}

/// The demo, built with the `prometheus` feature, serves `/metrics` while it runs: scraped
/// over HTTP once its JSON report is out, the hit counters match the report.
#[test]
fn demo_serves_metrics_with_metrics_addr() {
    use std::io::{BufRead, BufReader, Read};
    use std::net::{Ipv4Addr, TcpListener, TcpStream};
    use std::process::{Command, Stdio};

    let demo = support::examples::binary("demo");

    let addr = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = Command::new(&demo)
        .args(["--requests", "300", "--latency-ms", "5:20", "--json"])
        .args([
            "--metrics-addr",
            &addr.to_string(),
            "--metrics-linger",
            "20",
        ])
        .env_remove("REDIS_URL")
        .env_remove("OPENAI_BASE_URL")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run the demo");
    let mut report = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut report)
        .unwrap();
    let scrape = (|| {
        let mut conn = TcpStream::connect(addr)?;
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n")?;
        let mut text = String::new();
        conn.read_to_string(&mut text)?;
        Ok::<_, std::io::Error>(text)
    })();
    let _ = child.kill();
    let _ = child.wait();
    let text = scrape.expect("scrape the demo's /metrics");
    let report: serde_json::Value = serde_json::from_str(report.trim()).expect("the JSON report");
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{series} missing:\n{text}"))
    };
    let model = report["model"].as_str().unwrap_or("gpt-4.1");
    for (tier, field) in [
        ("l1", "l1_hits"),
        ("l2", "l2_hits"),
        ("coalesced", "coalesced"),
    ] {
        let series = format!("ai_cache_hits_total{{model=\"{model}\",tier=\"{tier}\"}}");
        assert_eq!(
            value(&series),
            report[field].as_u64().unwrap() as f64,
            "{series}"
        );
    }
    let misses = format!("ai_cache_misses_total{{model=\"{model}\"}}");
    assert_eq!(value(&misses), report["misses"].as_u64().unwrap() as f64);
    assert!(text.contains("ai_cache_latency_seconds_bucket{operation=\"total\",le=\"30\"}"));
    assert!(
        value("ai_cache_breaker_state{state=\"disabled\"}") == 1.0,
        "L1-only demo"
    );
}
