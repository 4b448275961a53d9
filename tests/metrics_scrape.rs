//! `/metrics` over real HTTP after a scripted workload: hits, misses and dollars saved are
//! exactly what `stats()` says, and every documented series is there. The recorder is
//! process-global, so this binary holds this one test and nothing else records into it.

use llm_cache_test_support as support;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::Duration;

use llm_cache::{
    CacheControl, CacheStatus, ChatMessage, ChatRequest, LlmCache, OpenAiCompatible, RetryPolicy,
};
use support::eventually;
use support::redis::RedisServer;
use support::upstream::{MockReply, MockUpstream};

const WAIT: Duration = Duration::from_secs(10);

fn request(model: &str, prompt: &str) -> ChatRequest {
    ChatRequest::new(model)
        .message(ChatMessage::system("You are terse."))
        .message(ChatMessage::user(prompt))
}

/// One sample of the exposition text: the series name and its labels, sorted.
type Series = (String, Vec<(String, String)>);

/// Parse `name{a="x",b="y"} value` lines; comments and blank lines are skipped.
fn parse(text: &str) -> BTreeMap<Series, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("`series value`");
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("a number: {line}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let rest = rest.strip_suffix('}').expect("closing brace");
                let mut labels: Vec<(String, String)> = rest
                    .split("\",")
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv.split_once("=\"").expect("label=\"value\"");
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                labels.sort();
                (name.to_string(), labels)
            }
            None => (series.to_string(), Vec::new()),
        };
        out.insert((name, labels), value);
    }
    out
}

struct Scrape(BTreeMap<Series, f64>);

impl Scrape {
    /// The value of `name` with exactly these labels; panics when the series is missing.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let mut labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        labels.sort();
        *self
            .0
            .get(&(name.to_string(), labels.clone()))
            .unwrap_or_else(|| panic!("series {name}{labels:?} missing from /metrics"))
    }
}

async fn scrape(addr: SocketAddr) -> (String, Scrape) {
    let response = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .expect("GET /metrics");
    assert!(response.status().is_success());
    let text = response.text().await.unwrap();
    let parsed = parse(&text);
    (text, Scrape(parsed))
}

fn free_port() -> SocketAddr {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn scrape_matches_stats_after_a_scripted_workload() {
    let addr = free_port();
    let handle = llm_cache::prometheus::serve(addr).expect("install the recorder");
    assert!(
        llm_cache::prometheus::serve(free_port()).is_err(),
        "a second recorder is refused"
    );

    let redis =
        RedisServer::start_with_args(&["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"]);
    let mock = MockUpstream::start().await;
    let client = OpenAiCompatible::new(mock.base_url())
        .api_key("sk-test")
        .retry(
            RetryPolicy::default()
                .max_attempts(2)
                .base_delay(Duration::from_millis(1)),
        );
    let upstream_stats = client.stats();
    let cache = LlmCache::builder()
        .upstream(client)
        .redis(redis.url())
        .l2_deadline(Duration::from_millis(500))
        .build()
        .await
        .unwrap();

    // gpt-4.1: 4 misses, then L1 hits. A lookup is timed when the hit count mixed with a
    // byte of its key is a multiple of 64, and keys hold the namespace generations'
    // random incarnation: 64 hits in a row of one key meet every residue, so the l1_get
    // sample fires whatever the key's bytes.
    let gpt: Vec<ChatRequest> = (0..4)
        .map(|i| request("gpt-4.1", &format!("q{i}")))
        .collect();
    for r in &gpt {
        assert_eq!(cache.chat(r).await.unwrap().status(), CacheStatus::Miss);
    }
    for _ in 0..40 {
        for r in &gpt {
            assert_eq!(cache.chat(r).await.unwrap().status(), CacheStatus::HitL1);
        }
    }
    for _ in 0..64 {
        assert_eq!(
            cache.chat(&gpt[0]).await.unwrap().status(),
            CacheStatus::HitL1
        );
    }
    // L2 hits: L1 emptied once every write has landed.
    eventually("L2 writes", WAIT, || cache.stats().cache.l2_writes == 4).await;
    cache.tiers().clear_l1();
    for r in &gpt[..3] {
        assert_eq!(cache.chat(r).await.unwrap().status(), CacheStatus::HitL2);
    }
    // Coalesced: four callers of one new request while the upstream holds its answer.
    mock.hold_answers();
    let burst = request("claude-sonnet-4.5", "burst");
    let callers: Vec<_> = (0..4)
        .map(|_| {
            let (cache, burst) = (cache.clone(), burst.clone());
            tokio::spawn(async move { cache.chat(&burst).await.unwrap().status() })
        })
        .collect();
    mock.wait_for_calls(1).await;
    eventually("3 waiters", WAIT, || cache.stats().cache.coalesced == 3).await;
    mock.release_all();
    let mut statuses = Vec::new();
    for c in callers {
        statuses.push(c.await.unwrap());
    }
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == CacheStatus::Coalesced)
            .count(),
        3
    );
    // An unpriced model: hits, no dollars.
    let local = request("local-llama", "free");
    cache.chat(&local).await.unwrap();
    cache.chat(&local).await.unwrap();
    // A retried call, a failed one (both attempts 500), a bypass.
    mock.push_reply(MockReply::status(500));
    cache.chat(&request("gpt-4.1", "retried")).await.unwrap();
    mock.push_reply(MockReply::status(500));
    mock.push_reply(MockReply::status(500));
    assert!(cache.chat(&request("gpt-4.1", "fails")).await.is_err());
    cache
        .chat_with(&gpt[0], &CacheControl::new().bypass(true))
        .await
        .unwrap();
    // A corrupt entry in Redis: counted, removed, fetched anew.
    let corrupt = request("gpt-4.1", "corrupt");
    let key = cache
        .tiers()
        .l2_key(&cache.digest_with(&corrupt, &CacheControl::new()));
    redis.redis_cli(&["SET", &key, "not an envelope"]);
    assert_eq!(
        cache.chat(&corrupt).await.unwrap().status(),
        CacheStatus::Miss
    );

    // Let background writes land, settle L1, then read both sides.
    let writes = cache.stats().cache.fetches - cache.stats().cache.fetch_errors;
    eventually("every L2 write", WAIT, || {
        cache.stats().cache.l2_writes == writes
    })
    .await;
    cache.tiers().run_pending_tasks().await;
    let stats = cache.stats();
    let (text, m) = scrape(addr).await;

    // Hits and misses per model, cost saved to the nano-dollar, tokens.
    let mut tier_sums = [0.0; 3];
    for (model, saved) in &stats.per_model {
        let hits: Vec<f64> = ["l1", "l2", "coalesced"]
            .iter()
            .map(|tier| m.get("ai_cache_hits_total", &[("model", model), ("tier", tier)]))
            .collect();
        for (sum, h) in tier_sums.iter_mut().zip(&hits) {
            *sum += h;
        }
        assert_eq!(hits.iter().sum::<f64>(), saved.hits as f64, "{model} hits");
        assert_eq!(
            m.get("ai_cache_misses_total", &[("model", model)]),
            saved.misses as f64,
            "{model} misses"
        );
        assert_eq!(
            m.get("ai_api_cost_saved_dollars", &[("model", model)]),
            saved.cost_saved_usd,
            "{model} dollars, exactly"
        );
        assert_eq!(
            m.get("ai_cache_tokens_saved_total", &[("model", model)]),
            saved.tokens_saved as f64,
            "{model} tokens"
        );
    }
    assert_eq!(stats.per_model.len(), 3);
    assert!(stats.per_model["gpt-4.1"].cost_saved_usd > 0.0);
    assert_eq!(stats.per_model["local-llama"].cost_saved_usd, 0.0);
    assert_eq!(tier_sums[0], stats.cache.l1_hits as f64, "tier l1");
    assert_eq!(tier_sums[1], stats.cache.l2_hits as f64, "tier l2");
    assert_eq!(tier_sums[2], stats.cache.coalesced as f64, "tier coalesced");
    assert_eq!((stats.cache.l2_hits, stats.cache.coalesced), (3, 3));
    assert_eq!(m.get("ai_cache_coalesced_total", &[]), 3.0);

    // Upstream outcomes, as the client counted them.
    let (calls, retries, errors) = (
        upstream_stats.calls() as f64,
        upstream_stats.retries() as f64,
        upstream_stats.errors() as f64,
    );
    assert_eq!(
        m.get("ai_upstream_requests_total", &[("outcome", "retried")]),
        retries
    );
    assert_eq!(
        m.get("ai_upstream_requests_total", &[("outcome", "error")]),
        errors
    );
    assert_eq!(
        m.get("ai_upstream_requests_total", &[("outcome", "ok")]),
        calls - retries - errors
    );
    assert_eq!((retries, errors), (2.0, 1.0));

    // L2 trouble by kind, L1 size, flights, breaker.
    for kind in ["timeout", "connection", "command", "dropped_write"] {
        assert_eq!(
            m.get("ai_cache_l2_errors_total", &[("kind", kind)]),
            0.0,
            "{kind}"
        );
    }
    assert_eq!(
        m.get("ai_cache_l2_errors_total", &[("kind", "corrupt")]),
        1.0
    );
    assert_eq!(stats.cache.corrupt_entries, 1);
    assert_eq!(
        m.get("ai_cache_size_bytes", &[]),
        stats.cache.l1_bytes as f64
    );
    assert_eq!(
        m.get("ai_cache_l1_entries", &[]),
        stats.cache.l1_entries as f64
    );
    assert!(stats.cache.l1_bytes > 0);
    assert_eq!(m.get("ai_cache_inflight", &[]), 0.0);
    assert_eq!(m.get("ai_cache_breaker_state", &[("state", "closed")]), 1.0);
    assert_eq!(m.get("ai_cache_breaker_openings_total", &[]), 0.0);
    assert_eq!(stats.cache.breaker_openings, 0);
    for operation in ["write", "lease"] {
        assert_eq!(
            m.get("ai_cache_l2_refused_total", &[("operation", operation)]),
            0.0
        );
    }
    for state in ["open", "half_open", "disabled"] {
        assert_eq!(m.get("ai_cache_breaker_state", &[("state", state)]), 0.0);
    }

    // Latency: every operation, with the configured buckets (1 µs .. 30 s).
    for op in ["l1_get", "l2_get", "l2_set", "upstream", "total"] {
        let count = m.get("ai_cache_latency_seconds_count", &[("operation", op)]);
        assert!(count > 0.0, "{op} has samples");
        assert!(m.get("ai_cache_latency_seconds_sum", &[("operation", op)]) > 0.0);
        for le in ["0.000001", "0.00025", "30", "+Inf"] {
            m.get(
                "ai_cache_latency_seconds_bucket",
                &[("operation", op), ("le", le)],
            );
        }
        assert_eq!(
            m.get(
                "ai_cache_latency_seconds_bucket",
                &[("operation", op), ("le", "+Inf")]
            ),
            count
        );
    }
    assert_eq!(
        m.get(
            "ai_cache_latency_seconds_count",
            &[("operation", "upstream")]
        ),
        stats.upstream_calls as f64,
        "one upstream sample per call the cache made (retries inside a call)"
    );
    assert!(
        text.contains("# TYPE ai_cache_latency_seconds histogram"),
        "{text}"
    );
    assert!(text.contains("# HELP ai_cache_hits_total"), "described");

    // The handle renders the same series.
    assert!(handle.render().contains("ai_cache_hits_total{"));
}
