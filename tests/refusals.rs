//! A Redis that answers with an error reply is up: a full Redis (`maxmemory` reached under
//! `noeviction`, every write refused with `OOM`) and a failing script must not turn the cache
//! L1-only. Reads go on, refused writes and leases are counted, the breaker never opens
//! (counted with `breaker_openings`), and every request succeeds.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use llm_cache::{BreakerState, CacheStatus, ChatMessage, ChatRequest, LlmCache, OpenAiCompatible};
use support::eventually;
use support::redis::RedisServer;
use support::upstream::{MockUpstream, expected_content};

const WAIT: Duration = Duration::from_secs(10);

/// Every WARN logged in this test binary (both tests share it: count what is yours).
fn warnings() -> Arc<Mutex<Vec<u8>>> {
    static LOG: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    Arc::clone(LOG.get_or_init(|| {
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || Sink(Arc::clone(&sink)))
            .init();
        log
    }))
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn lines_with(log: &Mutex<Vec<u8>>, needle: &str) -> usize {
    String::from_utf8_lossy(&log.lock().unwrap())
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

fn request(prompt: &str) -> ChatRequest {
    ChatRequest::new("gpt-4.1")
        .message(ChatMessage::system("You are terse."))
        .message(ChatMessage::user(prompt))
}

/// A cache without L1 (every read goes to Redis), leases on, a breaker that opens after
/// three failures in a row.
async fn cache(url: &str, mock: &MockUpstream) -> LlmCache {
    LlmCache::builder()
        .upstream(OpenAiCompatible::new(mock.base_url()))
        .redis(url)
        .l1_max_bytes(0)
        .leases(true)
        .breaker_threshold(3)
        .breaker_cooldown(Duration::from_millis(200))
        .build()
        .await
        .expect("build the cache")
}

async fn ask(cache: &LlmCache, prompt: &str) -> CacheStatus {
    let req = request(prompt);
    let out = cache.chat(&req).await.expect("every request succeeds");
    assert_eq!(out.text(), Some(expected_content(&req)), "{prompt}");
    out.status()
}

#[tokio::test]
async fn a_full_redis_keeps_serving_reads_and_never_opens_the_breaker() {
    let log = warnings();
    let redis = RedisServer::start_with_args(&["--maxmemory-policy", "noeviction"]);
    let mock = MockUpstream::start().await;
    let cache = cache(&redis.url(), &mock).await;

    // Entries written while Redis had room.
    let old: Vec<String> = (0..20)
        .map(|i| format!("written before the fill {i}"))
        .collect();
    for prompt in &old {
        assert_eq!(ask(&cache, prompt).await, CacheStatus::Miss);
    }
    eventually("the entries are in redis", WAIT, || {
        cache.stats().cache.l2_writes >= 20
    })
    .await;

    // Fill it, then set maxmemory below what it holds: every write is refused with OOM.
    let mut raw = redis.conn().await;
    for i in 0..32 {
        let _: () = redis::cmd("SET")
            .arg(format!("filler:{i}"))
            .arg(vec![b'x'; 64 << 10])
            .query_async(&mut raw)
            .await
            .expect("room for the filler");
    }
    redis.redis_cli(&["CONFIG", "SET", "maxmemory", "1mb"]);
    let refused: redis::RedisResult<()> = redis::cmd("SET")
        .arg("probe")
        .arg("x")
        .query_async(&mut raw)
        .await;
    let refused = refused.expect_err("redis is full");
    assert_eq!(refused.code(), Some("OOM"), "{refused}");

    let before = cache.stats().cache;
    let calls_before = mock.calls();
    // Misses first, all at once as under load (each tries a lease and a write, both
    // refused), then the old entries.
    for round in 0..3 {
        let new: Vec<ChatRequest> = (0..10)
            .map(|i| request(&format!("asked once Redis was full {round}-{i}")))
            .collect();
        for (req, out) in new.iter().zip(cache.batch(&new, 10).await) {
            let out = out.expect("every request succeeds");
            assert_eq!(out.status(), CacheStatus::Miss);
            assert_eq!(out.text(), Some(expected_content(req)));
        }
        for prompt in &old {
            assert_eq!(
                ask(&cache, prompt).await,
                CacheStatus::HitL2,
                "round {round}: `{prompt}` was written before the fill and must still be read from Redis ({:?})",
                cache.stats().cache
            );
        }
    }
    // The background writes (refused) have run.
    eventually("the refused writes are counted", WAIT, || {
        cache.stats().cache.l2_writes_refused - before.l2_writes_refused >= 30
    })
    .await;
    let s = cache.stats().cache;
    assert_eq!(
        s.breaker_openings - before.breaker_openings,
        0,
        "the breaker opened for a Redis that answers: {s:?}"
    );
    assert_eq!(s.breaker, BreakerState::Closed);
    assert_eq!(s.l2_writes, before.l2_writes, "nothing could be written");
    assert_eq!(s.leases_refused - before.leases_refused, 30, "{s:?}");
    assert_eq!(
        s.l2_skipped, before.l2_skipped,
        "nothing was skipped: {s:?}"
    );
    assert_eq!(mock.calls() - calls_before, 30, "one call per new prompt");
    // Sixty refusals, one WARN that names the cause.
    assert_eq!(
        lines_with(&log, "redis is full and refuses writes"),
        1,
        "{}",
        String::from_utf8_lossy(&log.lock().unwrap())
    );
    assert_eq!(lines_with(&log, "cause=\"OOM\""), 1);
}

#[tokio::test]
async fn a_script_error_does_not_open_the_breaker() {
    let redis = RedisServer::start();
    // A user that may do everything but HSET: the script that sets a namespace's generation
    // fails inside Redis, with an error reply, every time.
    redis.redis_cli(&[
        "ACL", "SETUSER", "cache", "on", ">pw", "~*", "&*", "+@all", "-hset",
    ]);
    let url = format!("redis://cache:pw@127.0.0.1:{}", redis.port());
    let mock = MockUpstream::start().await;
    let cache = cache(&url, &mock).await;
    let old: Vec<String> = (0..5)
        .map(|i| format!("before the script errors {i}"))
        .collect();
    for prompt in &old {
        ask(&cache, prompt).await;
    }
    eventually("the entries are in redis", WAIT, || {
        cache.stats().cache.l2_writes >= 5
    })
    .await;

    let before = cache.stats().cache;
    for i in 0..10 {
        let e = cache
            .invalidate_namespace(&format!("tenant-{i}"))
            .await
            .expect_err("the script fails");
        assert!(e.to_string().contains("redis"), "{e}");
    }
    for prompt in &old {
        assert_eq!(ask(&cache, prompt).await, CacheStatus::HitL2, "{prompt}");
    }
    let s = cache.stats().cache;
    assert_eq!(
        s.breaker_openings - before.breaker_openings,
        0,
        "script errors opened the breaker: {s:?}"
    );
    assert_eq!(s.breaker, BreakerState::Closed);
    assert_eq!(
        s.l2_errors - before.l2_errors,
        10,
        "each error is counted: {s:?}"
    );
}

/// A user that may read but not `SET` (an ACL like many shared Redis setups hand out): the
/// lookup that takes a lease is refused with `NOPERM`, so the cache reads with a plain
/// `GET` (hits go on), its misses fetch without a lease (counted), and the breaker stays
/// closed.
#[tokio::test]
async fn a_user_who_may_not_set_still_reads_and_fetches_without_leases() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let writer = cache(&redis.url(), &mock).await;
    let old: Vec<String> = (0..5)
        .map(|i| format!("written by the owner {i}"))
        .collect();
    for prompt in &old {
        ask(&writer, prompt).await;
    }
    eventually("the entries are in redis", WAIT, || {
        writer.stats().cache.l2_writes >= 5
    })
    .await;
    redis.redis_cli(&[
        "ACL", "SETUSER", "reader", "on", ">pw", "~*", "&*", "+@all", "-set",
    ]);
    let url = format!("redis://reader:pw@127.0.0.1:{}", redis.port());
    let reader = cache(&url, &mock).await;
    for prompt in &old {
        assert_eq!(ask(&reader, prompt).await, CacheStatus::HitL2, "{prompt}");
    }
    let calls = mock.calls();
    for i in 0..3 {
        assert_eq!(
            ask(&reader, &format!("new to the reader {i}")).await,
            CacheStatus::Miss
        );
    }
    assert_eq!(mock.calls() - calls, 3);
    let s = reader.stats().cache;
    assert_eq!(s.leases_refused, 3, "each miss went without a lease: {s:?}");
    assert_eq!(s.breaker_openings, 0, "{s:?}");
    assert_eq!(s.breaker, BreakerState::Closed);
    assert_eq!(s.l2_hits, 5, "{s:?}");
}
