//! A Redis that answers with an error reply is up: a full Redis (`maxmemory` reached under
//! `noeviction`, every write refused with `OOM`) and a failing script must not turn the cache
//! L1-only. Reads go on, refused writes and leases are counted, the breaker never opens
//! (counted with `breaker_openings`), and every request succeeds.

use llm_cache_test_support as support;

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

/// An ACL user that may do everything but subscribe: invalidations from other instances
/// cannot reach this one. `health()` says so (`degraded`, naming NOPERM), one WARN says
/// what the cache does then, and requests still succeed.
#[tokio::test]
async fn a_user_who_may_not_subscribe_is_reported_degraded_and_warned_once() {
    let log = warnings();
    let redis = RedisServer::start();
    redis.redis_cli(&[
        "ACL",
        "SETUSER",
        "nosub",
        "on",
        ">pw",
        "~*",
        "&*",
        "+@all",
        "-subscribe",
    ]);
    let url = format!("redis://nosub:pw@127.0.0.1:{}", redis.port());
    let mock = MockUpstream::start().await;
    let cache = cache(&url, &mock).await;
    ask(&cache, "asked without a subscription").await;
    let health = cache.health().await;
    assert_eq!(health.l2, llm_cache::L2Health::Degraded, "{health}");
    let why = health.invalidation.clone().unwrap_or_default();
    assert!(why.starts_with("NOPERM"), "{health}");
    assert!(health.to_string().contains("NOPERM"), "{health}");
    assert!(!cache.tiers().invalidation_subscribed());
    // The subscription is retried (the ACL may be fixed); the WARN is not repeated.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        lines_with(&log, "refuses the invalidation subscription (NOPERM"),
        1,
        "{}",
        String::from_utf8_lossy(&log.lock().unwrap())
    );
    // Once the user may subscribe, the cache becomes current and is up again.
    redis.redis_cli(&["ACL", "SETUSER", "nosub", "+subscribe"]);
    eventually("the subscription once allowed", WAIT, || {
        cache.tiers().invalidation_subscribed()
    })
    .await;
    let health = cache.health().await;
    assert_eq!(health.l2, llm_cache::L2Health::Up, "{health}");
    assert_eq!(health.invalidation, None);
}

/// A wrong password: the start-up WARN names the cause, never the password.
#[tokio::test]
async fn a_wrong_password_is_named_at_start_up() {
    let log = warnings();
    let redis = RedisServer::start();
    redis.redis_cli(&[
        "ACL",
        "SETUSER",
        "cache",
        "on",
        ">right-pw",
        "~*",
        "&*",
        "+@all",
    ]);
    let url = format!("redis://cache:wrong-pw-7f3a@127.0.0.1:{}", redis.port());
    let mock = MockUpstream::start().await;
    let cache = cache(&url, &mock).await;
    ask(&cache, "asked with a wrong password").await;
    let text = String::from_utf8_lossy(&log.lock().unwrap()).into_owned();
    let port = format!(":{}", redis.port());
    let line = text
        .lines()
        .find(|l| l.contains("not reachable yet") && l.contains(&port))
        .unwrap_or_else(|| panic!("no start-up WARN for this server:\n{text}"));
    assert!(line.contains("authentication failed"), "{line}");
    assert!(!text.contains("wrong-pw-7f3a"), "{text}");
}

/// The operations guide's ACL line, exactly as written (read out of docs/operations.md), with
/// a password.
fn readme_acl_user(password: &str) -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md"))
            .expect("docs/operations.md");
    let start = readme
        .find("`ACL SETUSER llm-cache")
        .expect("the operations guide's ACL line");
    let rest = &readme[start + 1..];
    let line = &rest[..rest.find('`').expect("the ACL line's closing backtick")];
    line.split_whitespace()
        .skip(1)
        .map(|w| w.replace("PASSWORD", password))
        .collect()
}

/// Two instances log in as the ACL user of docs/operations.md and use everything the cache
/// does with Redis: chat, streams, embeddings, the semantic index, invalidation, namespace
/// invalidation, `redis_stats` and `health`. Everything is shared through L2 and nothing
/// is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_acl_user_can_do_everything_the_cache_does() {
    use futures_util::StreamExt;
    use llm_cache::{CacheControl, EmbeddingRequest, SemanticConfig};
    let redis = RedisServer::start();
    let mut acl = vec!["ACL".to_owned()];
    acl.extend(readme_acl_user("readme-pw"));
    let acl: Vec<&str> = acl.iter().map(String::as_str).collect();
    assert_eq!(redis.redis_cli(&acl), "OK");
    let url = format!("redis://llm-cache:readme-pw@127.0.0.1:{}", redis.port());
    let mock = MockUpstream::start().await;
    mock.set_embedder(|text| support::bow::bag_of_words(text, 64));
    let instance = || {
        LlmCache::builder()
            .upstream(OpenAiCompatible::new(mock.base_url()).api_key("sk-test"))
            .redis(&url)
            .l2_deadline(Duration::from_millis(250))
            .semantic(SemanticConfig::new("text-embedding-test"))
            .build()
    };
    let (a, b) = (instance().await.unwrap(), instance().await.unwrap());
    for c in [&a, &b] {
        assert!(c.tiers().invalidation_subscribed());
    }
    let written = |c: &LlmCache, n: u64| {
        let c = c.clone();
        move || c.stats().cache.l2_writes >= n
    };

    // Chat, and a stream: fetched by one, read from Redis by the other.
    assert_eq!(ask(&a, "plain chat").await, CacheStatus::Miss);
    let streamed = request("streamed chat");
    let mut s = a.chat_stream(&streamed).await.unwrap();
    while let Some(chunk) = s.next().await {
        chunk.unwrap();
    }
    eventually("both writes", WAIT, written(&a, 2)).await;
    assert_eq!(ask(&b, "plain chat").await, CacheStatus::HitL2);
    let replay = b.chat_stream(&streamed).await.unwrap();
    assert_eq!(replay.status(), CacheStatus::HitL2);

    // Embeddings.
    let texts = EmbeddingRequest::new("text-embedding-3-small", vec!["one", "two"]);
    assert_eq!(
        a.embeddings(&texts).await.unwrap().status(),
        CacheStatus::Miss
    );
    support::topology::eventually_async("b reads the vectors from Redis", WAIT, || async {
        b.embeddings(&texts).await.unwrap().status() == CacheStatus::HitL2
    })
    .await;

    // The semantic index in Redis: indexed by one, a paraphrase hits on the other.
    let semantic = CacheControl::new().semantic(true);
    let indexed = a.stats().semantic.indexed;
    let original = request("What is the capital of France?");
    a.chat_with(&original, &semantic).await.unwrap();
    eventually("indexed", WAIT, || a.stats().semantic.indexed > indexed).await;
    let para = request("Could you please tell me what the capital of France is?");
    let hit = b.chat_with(&para, &semantic).await.unwrap();
    assert_eq!(hit.status(), CacheStatus::HitSemantic);

    // Invalidation reaches the other's L1; a namespace bump reaches the other instance.
    let plain = request("plain chat");
    assert_eq!(b.chat(&plain).await.unwrap().status(), CacheStatus::HitL1);
    a.invalidate(&plain).await.unwrap();
    support::topology::eventually_async("b drops the invalidated entry", WAIT, || async {
        let d = b.digest_with(&plain, &CacheControl::new());
        b.tiers().get(&d).await.is_none()
    })
    .await;
    let tenant = CacheControl::new().namespace("t");
    let before = b.digest_with(&plain, &tenant);
    a.invalidate_namespace("t").await.unwrap();
    eventually("the bump reaches b", WAIT, || {
        b.digest_with(&plain, &tenant) != before
    })
    .await;

    // Every key the cache wrote has a TTL except the generations record, so a volatile-*
    // eviction policy (the advice of docs/operations.md) can never evict the record.
    let keys = redis.redis_cli(&["KEYS", "*"]);
    assert!(keys.lines().any(|k| k.starts_with("ai:cache:v{")), "{keys}");
    for key in keys.lines() {
        let ttl: i64 = redis.redis_cli(&["PTTL", key]).parse().unwrap();
        if key == "ai:cache:generations" {
            assert_eq!(ttl, -1, "the record never expires");
        } else {
            assert!(ttl > 0, "{key} has no TTL ({ttl})");
        }
    }
    let stats = a
        .redis_stats()
        .await
        .expect("redis_stats with the documented user");
    assert!(stats.generations_key && stats.keys >= 2, "{stats:?}");
    for (name, c) in [("a", &a), ("b", &b)] {
        let health = c.health().await;
        assert_eq!(health.l2, llm_cache::L2Health::Up, "{name}: {health}");
        let s = c.stats().cache;
        assert_eq!(
            (s.l2_errors, s.l2_writes_refused, s.leases_refused),
            (0, 0, 0),
            "{name}: refused with the documented user: {s:?} {health}"
        );
    }
}
