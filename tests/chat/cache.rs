//! `LlmCache` end to end: real redis-server, mock OpenAI-compatible upstream over HTTP.

use llm_cache_test_support as support;

use std::time::Duration;

use llm_cache::{
    CacheControl, CacheStatus, ChatMessage, ChatRequest, LlmCache, OpenAiCompatible, RetryPolicy,
};
use support::eventually;
use support::redis::RedisServer;
use support::upstream::{MockReply, MockUpstream, expected_content};

const WAIT: Duration = Duration::from_secs(10);

fn request(prompt: &str) -> ChatRequest {
    ChatRequest::new("gpt-4.1")
        .message(ChatMessage::system("You are terse."))
        .message(ChatMessage::user(prompt))
}

fn upstream(mock: &MockUpstream) -> OpenAiCompatible {
    OpenAiCompatible::new(mock.base_url())
        .api_key("sk-test-secret-key")
        .retry(RetryPolicy::none())
}

async fn cache(mock: &MockUpstream, redis: Option<&RedisServer>) -> LlmCache {
    let mut b = LlmCache::builder()
        .upstream(upstream(mock))
        .l2_deadline(Duration::from_millis(250));
    if let Some(r) = redis {
        b = b.redis(r.url());
    }
    b.build().await.expect("build")
}

#[tokio::test]
async fn miss_then_l1_hit_then_l2_hit_from_another_instance() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let a = cache(&mock, Some(&redis)).await;
    let req = request("What is a cache?");

    let first = a.chat(&req).await.unwrap();
    assert_eq!(first.status(), CacheStatus::Miss);
    assert_eq!(first.text().unwrap(), expected_content(&req));
    assert_eq!(first.digest().to_hex().len(), 64);
    let second = a.chat(&req).await.unwrap();
    assert_eq!(second.status(), CacheStatus::HitL1);
    assert_eq!(
        second.value(),
        first.value(),
        "the provider's JSON, unchanged"
    );
    assert_eq!(mock.calls(), 1);

    eventually("L2 write", WAIT, || a.stats().cache.l2_writes == 1).await;
    let b = cache(&mock, Some(&redis)).await;
    let third = b.chat(&req).await.unwrap();
    assert_eq!(third.status(), CacheStatus::HitL2);
    assert_eq!(third.value(), first.value());
    assert_eq!(mock.calls(), 1);

    // Stored JSON carries no cache-specific fields.
    let json = serde_json::to_value(third.value()).unwrap();
    let text = json.to_string();
    assert!(
        !text.contains("cache_hit") && !text.contains("_cache"),
        "{text}"
    );
}

#[tokio::test]
async fn savings_are_counted_per_model() {
    let mock = MockUpstream::start().await;
    let c = cache(&mock, None).await;
    let req = request("price me");
    let miss = c.chat(&req).await.unwrap();
    let usage = miss.usage.clone().unwrap();
    for _ in 0..3 {
        c.chat(&req).await.unwrap();
    }
    let s = c.stats();
    let tokens = usage.prompt_tokens + usage.completion_tokens;
    assert_eq!(s.tokens_saved, 3 * tokens);
    // gpt-4.1 at $8.00 per million tokens, input and output alike.
    let expected = 3.0 * tokens as f64 * 8.0 / 1e6;
    assert!(
        (s.cost_saved_usd - expected).abs() < 1e-9,
        "{} vs {expected}",
        s.cost_saved_usd
    );
    let m = &s.per_model["gpt-4.1"];
    assert_eq!((m.hits, m.misses, m.tokens_saved), (3, 1, 3 * tokens));
    assert_eq!(s.upstream_calls, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_of_100_over_10_distinct_costs_10_calls_in_order() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let c = cache(&mock, Some(&redis)).await;
    let requests: Vec<ChatRequest> = (0..100).map(|i| request(&format!("q{}", i % 10))).collect();
    let results = c.batch(&requests, 8).await;
    assert_eq!(results.len(), 100);
    for (req, res) in requests.iter().zip(&results) {
        let got = res.as_ref().unwrap();
        assert_eq!(got.text().unwrap(), expected_content(req));
    }
    assert_eq!(mock.calls(), 10);
    let statuses: Vec<CacheStatus> = results
        .iter()
        .map(|r| r.as_ref().unwrap().status())
        .collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == CacheStatus::Miss).count(),
        10
    );
}

#[tokio::test]
async fn namespaces_never_share_answers() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let c = cache(&mock, Some(&redis)).await;
    let req = request("tenant secret?");
    let t1 = CacheControl::new().namespace("tenant-1");
    let t2 = CacheControl::new().namespace("tenant-2");
    let a = c.chat_with(&req, &t1).await.unwrap();
    let b = c.chat_with(&req, &t2).await.unwrap();
    assert_eq!(
        (a.status(), b.status()),
        (CacheStatus::Miss, CacheStatus::Miss)
    );
    assert_ne!(a.digest(), b.digest());
    assert_ne!(a.id, b.id, "each tenant got its own upstream answer");
    assert_eq!(c.chat_with(&req, &t1).await.unwrap().id, a.id);
    assert_eq!(c.chat_with(&req, &t2).await.unwrap().id, b.id);
    assert_eq!(
        c.chat(&req).await.unwrap().status(),
        CacheStatus::Miss,
        "global is its own namespace"
    );
    assert_eq!(mock.calls(), 3);
}

#[tokio::test]
async fn refresh_no_store_ttl_and_bypass() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let c = cache(&mock, Some(&redis)).await;
    let req = request("control me");
    let first = c.chat(&req).await.unwrap();

    let refreshed = c
        .chat_with(&req, &CacheControl::new().refresh(true))
        .await
        .unwrap();
    assert_eq!(refreshed.status(), CacheStatus::Miss);
    assert_ne!(refreshed.id, first.id);
    assert_eq!(
        c.chat(&req).await.unwrap().id,
        refreshed.id,
        "refresh stored the new answer"
    );

    let other = request("do not keep");
    let ns = c
        .chat_with(&other, &CacheControl::new().no_store(true))
        .await
        .unwrap();
    assert_eq!(ns.status(), CacheStatus::Miss);
    let again = c.chat(&other).await.unwrap();
    assert_eq!(again.status(), CacheStatus::Miss, "no_store stored nothing");

    let bypassed = c
        .chat_with(&req, &CacheControl::new().bypass(true))
        .await
        .unwrap();
    assert_eq!(bypassed.status(), CacheStatus::Bypass);
    assert_ne!(bypassed.id, refreshed.id);
    assert_eq!(
        c.chat(&req).await.unwrap().id,
        refreshed.id,
        "bypass stored nothing"
    );
    assert_eq!(c.stats().bypassed, 1);

    let short = request("short lived");
    c.chat_with(&short, &CacheControl::new().ttl(Duration::from_millis(300)))
        .await
        .unwrap();
    eventually("L2 write", WAIT, || c.stats().cache.l2_writes >= 3).await;
    let mut conn = redis.conn().await;
    let key = c
        .tiers()
        .l2_key(&c.digest_with(&short, &CacheControl::new()));
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(pttl > 0 && pttl <= 300, "ttl reached redis: {pttl}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        c.chat(&short).await.unwrap().status(),
        CacheStatus::Miss,
        "expired"
    );
}

#[tokio::test]
async fn errors_are_not_cached_and_reach_the_caller_with_status() {
    let mock = MockUpstream::start().await;
    let c = cache(&mock, None).await;
    let req = request("fail first");
    mock.push_reply(MockReply::openai_error(400, "bad things in your prompt"));
    let e = c.chat(&req).await.unwrap_err();
    assert_eq!(e.status(), Some(400));
    assert!(e.to_string().contains("bad things in your prompt"), "{e}");
    assert!(!format!("{e} {e:?}").contains("sk-test-secret-key"));
    let ok = c.chat(&req).await.unwrap();
    assert_eq!(ok.status(), CacheStatus::Miss);
    assert_eq!(mock.calls(), 2);

    mock.push_reply(MockReply::Body("{not json at all".into()));
    let e = c.chat(&request("garbage body")).await.unwrap_err();
    assert!(
        e.is_upstream() && e.to_string().contains("{not json"),
        "{e}"
    );
    mock.push_reply(MockReply::Body(r#"{"id":"x","choices":[]}"#.into()));
    let e = c.chat(&request("no choices")).await.unwrap_err();
    assert!(e.is_upstream(), "{e}");
    assert_eq!(
        c.chat(&request("no choices")).await.unwrap().status(),
        CacheStatus::Miss
    );
}

#[tokio::test]
async fn bad_requests_are_rejected_before_any_call() {
    let mock = MockUpstream::start().await;
    let c = cache(&mock, None).await;
    let no_model = ChatRequest::new("").message(ChatMessage::user("hi"));
    let e = c.chat(&no_model).await.unwrap_err();
    assert!(
        e.is_invalid_request() && e.message().contains("model"),
        "{e}"
    );
    let no_messages = ChatRequest::new("gpt-4.1");
    let e = c.chat(&no_messages).await.unwrap_err();
    assert!(e.message().contains("messages"), "{e}");
    let no_role = ChatRequest::new("gpt-4.1").message(ChatMessage::new("", "hi"));
    let e = c.chat(&no_role).await.unwrap_err();
    assert!(e.message().contains("messages[0].role"), "{e}");
    assert_eq!(mock.calls(), 0);
}

#[tokio::test]
async fn temperature_rule_skips_the_cache_above_the_limit() {
    let mock = MockUpstream::start().await;
    let c = LlmCache::builder()
        .upstream(upstream(&mock))
        .max_cacheable_temperature(0.5)
        .build()
        .await
        .unwrap();
    let hot = request("be creative").temperature(0.9);
    assert_eq!(c.chat(&hot).await.unwrap().status(), CacheStatus::Bypass);
    assert_eq!(c.chat(&hot).await.unwrap().status(), CacheStatus::Bypass);
    let cold = request("be exact").temperature(0.2);
    assert_eq!(c.chat(&cold).await.unwrap().status(), CacheStatus::Miss);
    assert_eq!(c.chat(&cold).await.unwrap().status(), CacheStatus::HitL1);
    assert_eq!(mock.calls(), 3);
}

#[tokio::test]
async fn oversized_answers_are_served_not_stored() {
    let mock = MockUpstream::start().await;
    let c = LlmCache::builder()
        .upstream(upstream(&mock))
        .max_entry_bytes(64)
        .build()
        .await
        .unwrap();
    let req = request("a long answer please");
    assert_eq!(c.chat(&req).await.unwrap().status(), CacheStatus::Miss);
    assert_eq!(c.chat(&req).await.unwrap().status(), CacheStatus::Miss);
    assert_eq!(c.stats().cache.oversized, 2);
}

#[tokio::test]
async fn invalidate_forgets_the_answer() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let c = cache(&mock, Some(&redis)).await;
    let req = request("forget me");
    let ns = CacheControl::new().namespace("t");
    c.chat_with(&req, &ns).await.unwrap();
    eventually("L2 write", WAIT, || c.stats().cache.l2_writes == 1).await;
    c.invalidate_with(&req, &ns).await.unwrap();
    assert_eq!(
        c.chat_with(&req, &ns).await.unwrap().status(),
        CacheStatus::Miss
    );
    assert_eq!(mock.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_identical_chats_cost_one_call() {
    let mock = MockUpstream::start().await;
    mock.hold_answers();
    let c = cache(&mock, None).await;
    let req = request("stampede");
    let handles: Vec<_> = (0..200)
        .map(|_| {
            let (c, req) = (c.clone(), req.clone());
            tokio::spawn(async move { c.chat(&req).await })
        })
        .collect();
    mock.wait_for_calls(1).await;
    eventually("all attached", WAIT, || c.stats().cache.coalesced == 199).await;
    mock.release_all();
    for h in handles {
        assert_eq!(
            h.await.unwrap().unwrap().text().unwrap(),
            expected_content(&req)
        );
    }
    assert_eq!(mock.calls(), 1);
    assert_eq!(c.tiers().inflight(), 0);
}

#[tokio::test]
async fn builder_requires_an_upstream_and_validates_it() {
    let e = LlmCache::builder().build().await.unwrap_err();
    assert!(e.is_config() && e.message().contains("upstream"), "{e}");
    let e = LlmCache::builder()
        .upstream(OpenAiCompatible::new("not a url"))
        .build()
        .await
        .unwrap_err();
    assert!(e.is_config() && e.message().contains("base_url"), "{e}");
    let e = LlmCache::builder()
        .upstream(OpenAiCompatible::new("http://127.0.0.1:1/v1"))
        .max_cacheable_temperature(f64::NAN)
        .build()
        .await
        .unwrap_err();
    assert!(e.message().contains("max_cacheable_temperature"), "{e}");
}
