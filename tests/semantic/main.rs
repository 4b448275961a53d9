//! The opt-in semantic cache end to end: real redis-server, the mock upstream over HTTP
//! embedding by hashed bag of words (blind to negation and order, so the lexical guard is
//! what is tested). A paraphrase is a semantic hit; each must-refuse class is refused; the
//! scope is exact; two instances share entries through Redis; invalidation reaches them;
//! Redis down skips the lookup and requests still succeed; a streamed hit replays; and the
//! labelled pairs through the whole cache.

mod guard;
mod model;
mod pairs;
use llm_cache_test_support as support;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use llm_cache::{
    CacheControl, CacheStatus, ChatMessage, ChatRequest, LlmCache, OpenAiCompatible, RetryPolicy,
    SemanticConfig,
};
use support::bow::bag_of_words;
use support::eventually;
use support::redis::RedisServer;
use support::upstream::{MockReply, MockUpstream, expected_content};

const WAIT: Duration = Duration::from_secs(10);
const DIMS: usize = 512;
const EMBEDDER: &str = "text-embedding-test";

fn request(prompt: &str) -> ChatRequest {
    ChatRequest::new("gpt-4.1")
        .message(ChatMessage::system("You are terse."))
        .message(ChatMessage::user(prompt))
}

fn semantic() -> CacheControl {
    CacheControl::new().semantic(true)
}

async fn mock() -> MockUpstream {
    let mock = MockUpstream::start().await;
    mock.set_embedder(|text| bag_of_words(text, DIMS));
    mock
}

async fn cache(mock: &MockUpstream, redis: Option<&RedisServer>) -> LlmCache {
    let mut b = LlmCache::builder()
        .upstream(
            OpenAiCompatible::new(mock.base_url())
                .api_key("sk-test")
                .retry(RetryPolicy::none()),
        )
        .l2_deadline(Duration::from_millis(250))
        .semantic(SemanticConfig::new(EMBEDDER));
    if let Some(r) = redis {
        b = b.redis(r.url());
    }
    b.build().await.expect("build")
}

/// Ask `prompt` and wait until its answer is indexed (the index is written behind).
async fn ask_and_index(cache: &LlmCache, req: &ChatRequest, control: &CacheControl) {
    let before = cache.stats().semantic.indexed;
    let out = cache.chat_with(req, control).await.expect("first ask");
    assert_eq!(out.status(), CacheStatus::Miss);
    eventually("indexed", WAIT, || cache.stats().semantic.indexed > before).await;
}

/// Poll an async condition (another instance's state has no signal of its own here).
async fn until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(start.elapsed() < WAIT, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paraphrase_hits_and_changed_questions_refuse() {
    let (mock, redis) = (mock().await, RedisServer::start());
    let a = cache(&mock, Some(&redis)).await;
    let original = request("What is the capital of France?");
    ask_and_index(&a, &original, &semantic()).await;
    let first = a.chat(&original).await.unwrap();
    let calls = mock.calls();

    let para = request("Could you please tell me what the capital of France is?");
    // Not opted in: an exact miss.
    let plain = a
        .chat_with(&para, &CacheControl::new().no_store(true))
        .await
        .unwrap();
    assert_eq!(plain.status(), CacheStatus::Miss);
    let hit = a.chat_with(&para, &semantic()).await.unwrap();
    assert_eq!(hit.status(), CacheStatus::HitSemantic);
    assert_eq!(hit.status().as_str(), "semantic");
    assert_eq!(hit.matched_digest(), Some(first.digest()));
    assert_ne!(hit.digest(), first.digest());
    // The prompt as written is embedded: the model's cosine, not 1.0.
    let similarity = hit.similarity().unwrap();
    assert!((0.7..=1.0).contains(&similarity), "{similarity}");
    assert_eq!(hit.text().unwrap(), expected_content(&original));
    assert_eq!(
        mock.calls(),
        calls + 2,
        "upstream: the non-opted-in request, and the paraphrase's embedding (as written)"
    );

    let refusals = a.stats().semantic.guard_refusals;
    for (class, base, changed) in [
        (
            "negation",
            "Is it safe to eat raw eggs?",
            "Is it not safe to eat raw eggs?",
        ),
        (
            "antonym",
            "How do I turn on dark mode?",
            "How do I turn off dark mode?",
        ),
        ("number", "What is 2+2?", "What is 2+3?"),
        (
            "entity",
            "What is the capital of Austria?",
            "What is the capital of Australia?",
        ),
        ("unit", "Convert 5 km to miles.", "Convert 5 km to meters."),
        (
            "word order",
            "Convert Celsius to Fahrenheit.",
            "Convert Fahrenheit to Celsius.",
        ),
    ] {
        ask_and_index(&a, &request(base), &semantic()).await;
        let out = a.chat_with(&request(changed), &semantic()).await.unwrap();
        assert_eq!(out.status(), CacheStatus::Miss, "{class}: {changed}");
        assert_eq!(out.text().unwrap(), expected_content(&request(changed)));
    }
    assert!(a.stats().semantic.guard_refusals >= refusals + 5);
    assert!(a.stats().semantic.hits >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scope_is_everything_but_the_last_user_text() {
    let mock = mock().await;
    let a = cache(&mock, None).await;
    let q = "What is the capital of France?";
    let para = "What's the capital of France";
    ask_and_index(&a, &request(q), &semantic()).await;
    let hit = a.chat_with(&request(para), &semantic()).await.unwrap();
    assert_eq!(hit.status(), CacheStatus::HitSemantic);

    let variants = [
        (
            "system prompt",
            ChatRequest::new("gpt-4.1")
                .message(ChatMessage::system("You are verbose."))
                .message(ChatMessage::user(para)),
            semantic(),
        ),
        (
            "model",
            ChatRequest::new("gpt-4.1-mini")
                .message(ChatMessage::system("You are terse."))
                .message(ChatMessage::user(para)),
            semantic(),
        ),
        ("temperature", request(para).temperature(0.3), semantic()),
        (
            "earlier turn",
            ChatRequest::new("gpt-4.1")
                .message(ChatMessage::system("You are terse."))
                .message(ChatMessage::user("Hi"))
                .message(ChatMessage::new("assistant", "Hello"))
                .message(ChatMessage::user(para)),
            semantic(),
        ),
        ("namespace", request(para), semantic().namespace("tenant-2")),
    ];
    for (what, req, control) in variants {
        let out = a.chat_with(&req, &control).await.unwrap();
        assert_eq!(out.status(), CacheStatus::Miss, "another {what} never hits");
    }
    // The last message is not a user text: never looked up.
    let ineligible = a.stats().semantic.ineligible;
    let assistant_last = request(q).message(ChatMessage::new("assistant", "Paris"));
    let out = a.chat_with(&assistant_last, &semantic()).await.unwrap();
    assert_eq!(out.status(), CacheStatus::Miss);
    assert_eq!(a.stats().semantic.ineligible, ineligible + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_entries_and_invalidation_reaches_both() {
    let (mock, redis) = (mock().await, RedisServer::start());
    let (a, b) = (
        cache(&mock, Some(&redis)).await,
        cache(&mock, Some(&redis)).await,
    );
    let original = request("How many legs does a spider have?");
    let para = request("how many legs does a spider have");
    ask_and_index(&a, &original, &semantic()).await;
    eventually("answer in Redis", WAIT, || a.stats().cache.l2_writes >= 1).await;
    let hit = b
        .chat_with(&para, &semantic().no_store(true))
        .await
        .unwrap();
    assert_eq!(hit.status(), CacheStatus::HitSemantic, "through Redis");
    let digest = hit.matched_digest().unwrap();

    a.invalidate(&original).await.unwrap();
    until("b dropped the entry from its L1", || async {
        b.tiers().get(&digest).await.is_none()
    })
    .await;
    for (name, c) in [("a", &a), ("b", &b)] {
        let out = c
            .chat_with(&para, &semantic().no_store(true))
            .await
            .unwrap();
        assert_eq!(out.status(), CacheStatus::Miss, "{name} after invalidate");
    }

    // A namespace: its generation is in the scope, so invalidating it orphans every
    // candidate at once.
    let ns = semantic().namespace("tenant-7");
    ask_and_index(&a, &original, &ns).await;
    eventually("answer in Redis", WAIT, || a.stats().cache.l2_writes >= 2).await;
    let hit = b
        .chat_with(&para, &ns.clone().no_store(true))
        .await
        .unwrap();
    assert_eq!(hit.status(), CacheStatus::HitSemantic);
    let before = b.digest_with(&para, &ns);
    a.invalidate_namespace("tenant-7").await.unwrap();
    eventually("b saw the new generation", WAIT, || {
        b.digest_with(&para, &ns) != before
    })
    .await;
    for (name, c) in [("a", &a), ("b", &b)] {
        let out = c
            .chat_with(&para, &ns.clone().no_store(true))
            .await
            .unwrap();
        assert_eq!(
            out.status(),
            CacheStatus::Miss,
            "{name} after invalidate_namespace"
        );
    }
}

/// A fresh question on `cache` (opted in, not stored): a miss; whether it left the Redis
/// index unread.
async fn fresh_miss_skipped_redis(cache: &LlmCache, prompt: &str) -> bool {
    let before = cache.stats().semantic.redis_current;
    let out = cache
        .chat_with(&request(prompt), &semantic().no_store(true))
        .await
        .unwrap();
    assert_eq!(out.status(), CacheStatus::Miss, "{prompt}");
    cache.stats().semantic.redis_current > before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_made_every_insert_leaves_redis_unread_until_another_inserts() {
    let (mock, redis) = (mock().await, RedisServer::start());
    let (a, b) = (
        cache(&mock, Some(&redis)).await,
        cache(&mock, Some(&redis)).await,
    );
    let spider = request("How many legs does a spider have?");
    ask_and_index(&a, &spider, &semantic()).await;
    ask_and_index(
        &a,
        &request("What is the boiling point of water?"),
        &semantic(),
    )
    .await;
    // A made every insert of the scope and holds them all: its misses leave Redis unread.
    assert!(fresh_miss_skipped_redis(&a, "Which planet is closest to the sun?").await);
    let para = request("how many legs does a spider have");
    let hit = a
        .chat_with(&para, &semantic().no_store(true))
        .await
        .unwrap();
    assert_eq!(hit.status(), CacheStatus::HitSemantic, "from A's own index");
    // B, which holds nothing, reads Redis.
    assert!(!fresh_miss_skipped_redis(&b, "Which planet is closest to the sun?").await);

    // Invalidated on A: gone from both indexes, and A still holds all Redis holds.
    a.invalidate(&spider).await.unwrap();
    for (name, c) in [("a", &a), ("b", &b)] {
        let out = c
            .chat_with(&para, &semantic().no_store(true))
            .await
            .unwrap();
        assert_eq!(out.status(), CacheStatus::Miss, "{name} after invalidate");
    }
    assert!(fresh_miss_skipped_redis(&a, "Who painted the Mona Lisa?").await);

    // B inserts into the scope: A no longer holds all of it, reads Redis, finds B's entry.
    ask_and_index(
        &b,
        &request("What is the capital city of Australia?"),
        &semantic(),
    )
    .await;
    eventually("answer in Redis", WAIT, || b.stats().cache.l2_writes >= 1).await;
    let hit = a
        .chat_with(
            &request("Hi!  What is the capital city of Australia?  Thanks!"),
            &semantic().no_store(true),
        )
        .await
        .unwrap();
    assert_eq!(
        hit.status(),
        CacheStatus::HitSemantic,
        "B's entry, found by A"
    );
    assert!(!fresh_miss_skipped_redis(&a, "Who painted the Mona Lisa?").await);
    // A's own insert after B's does not make A current again.
    ask_and_index(&a, &request("How tall is Mount Everest?"), &semantic()).await;
    assert!(!fresh_miss_skipped_redis(&a, "Who wrote Hamlet?").await);
    // Nor does a cleared in-process index, on a scope of its own.
    let other = |p: &str| {
        ChatRequest::new("gpt-4.1")
            .message(ChatMessage::system("You are verbose."))
            .message(ChatMessage::user(p))
    };
    let (indexed, written) = (a.stats().semantic.indexed, a.stats().cache.l2_writes);
    a.chat_with(&other("How many legs does a spider have?"), &semantic())
        .await
        .unwrap();
    eventually("indexed", WAIT, || a.stats().semantic.indexed > indexed).await;
    eventually("answer in Redis", WAIT, || {
        a.stats().cache.l2_writes > written
    })
    .await;
    a.clear_l1();
    let hit = a
        .chat_with(
            &other("how many legs does a spider have"),
            &semantic().no_store(true),
        )
        .await
        .unwrap();
    assert_eq!(
        hit.status(),
        CacheStatus::HitSemantic,
        "from Redis after clear_l1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_skips_the_redis_index_and_requests_succeed() {
    let (mock, mut redis) = (mock().await, RedisServer::start());
    let a = cache(&mock, Some(&redis)).await;
    let original = request("Why is the sky blue?");
    ask_and_index(&a, &original, &semantic()).await;
    redis.kill();
    // The in-process index still serves this instance.
    let hit = a
        .chat_with(&request("Why is the sky blue"), &semantic())
        .await
        .unwrap();
    assert_eq!(hit.status(), CacheStatus::HitSemantic);
    // A new question: the Redis index is skipped, the answer comes from upstream.
    let out = a
        .chat_with(&request("What causes rainbows?"), &semantic())
        .await
        .unwrap();
    assert_eq!(out.status(), CacheStatus::Miss);
    assert!(a.stats().semantic.redis_skipped >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_request_replays_a_semantic_hit_and_a_streamed_miss_is_indexed() {
    let mock = mock().await;
    let a = cache(&mock, None).await;
    let original = request("Explain how photosynthesis works.");
    let mut live = a.chat_stream_with(&original, &semantic()).await.unwrap();
    assert_eq!(live.status(), CacheStatus::Miss);
    while let Some(chunk) = live.next().await {
        chunk.unwrap();
    }
    eventually("streamed miss indexed", WAIT, || {
        a.stats().semantic.indexed == 1
    })
    .await;
    let para = request("Could you explain how photosynthesis works, please?");
    let mut replay = a.chat_stream_with(&para, &semantic()).await.unwrap();
    assert_eq!(replay.status(), CacheStatus::HitSemantic);
    assert!(replay.matched_digest().is_some());
    let mut text = String::new();
    while let Some(chunk) = replay.next().await {
        let chunk = chunk.unwrap();
        for choice in &chunk.choices {
            if let Some(t) = choice.delta.content.as_deref() {
                text.push_str(t);
            }
        }
    }
    assert_eq!(text, expected_content(&original));
}

/// The labelled pairs through the whole cache (embeddings path, index, guard), one
/// namespace per pair: no must-refuse pair served, every whitespace variant served. Prints served/pairs per class.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_labelled_pairs_through_the_cache() {
    let mock = mock().await;
    let a = cache(&mock, None).await;
    let mut by_class: BTreeMap<String, (usize, usize, bool)> = BTreeMap::new();
    let mut false_hits = Vec::new();
    // Misses indexed behind their answers so far: a pair's `b` that misses is indexed too,
    // and `ask_and_index` must not take that late write for its own `a`'s.
    let mut to_index = 0;
    for (i, pair) in pairs::pairs().into_iter().enumerate() {
        let (class, serve) = (pair.class.as_str(), pair.serve);
        let control = semantic().namespace(format!("pair-{i}"));
        eventually("the earlier misses indexed", WAIT, || {
            a.stats().semantic.indexed >= to_index
        })
        .await;
        ask_and_index(&a, &request(&pair.a), &control).await;
        to_index += 1;
        let ineligible = a.stats().semantic.ineligible;
        let out = a.chat_with(&request(&pair.b), &control).await.unwrap();
        if out.status() == CacheStatus::Miss && a.stats().semantic.ineligible == ineligible {
            to_index += 1;
        }
        let served = out.status() == CacheStatus::HitSemantic;
        let t = by_class.entry(class.to_owned()).or_insert((0, 0, serve));
        t.0 += 1;
        t.1 += usize::from(served);
        if served && !serve {
            false_hits.push(format!("{class}\t{}\t{}", pair.a, pair.b));
        }
    }
    for (class, (pairs, served, _)) in &by_class {
        println!("{class:>15}: {served}/{pairs} served");
    }
    assert!(
        false_hits.is_empty(),
        "must-refuse pairs served: {false_hits:#?}"
    );
    let (pairs, served, _) = by_class["whitespace"];
    assert_eq!(served, pairs, "every whitespace variant served");
}

/// In a Cluster, a scope's index keys share one slot: the second instance (no in-process
/// index: `l1_index_bytes(0)`) finds the first one's entries through one node's pipeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_serves_the_redis_index_from_one_slot() {
    let cluster = support::topology::RedisCluster::start();
    let mock = mock().await;
    let build = |index_bytes: u64| {
        LlmCache::builder()
            .upstream(OpenAiCompatible::new(mock.base_url()).retry(RetryPolicy::none()))
            .cluster(cluster.addrs())
            .l2_deadline(Duration::from_millis(250))
            .semantic(SemanticConfig::new(EMBEDDER).l1_index_bytes(index_bytes))
            .build()
    };
    let a = build(1 << 20).await.expect("build");
    let b = build(0).await.expect("build");
    for i in 0..5 {
        let q = format!("What is the tallest mountain in range {i}?");
        ask_and_index(&a, &request(&q), &semantic()).await;
    }
    eventually("answers in Redis", WAIT, || a.stats().cache.l2_writes >= 5).await;
    for i in 0..5 {
        let para = format!("what's the tallest mountain in range {i}");
        let out = b.chat_with(&request(&para), &semantic()).await.unwrap();
        assert_eq!(out.status(), CacheStatus::HitSemantic, "{para}");
    }
    assert_eq!(b.stats().semantic.redis_skipped, 0);
}

/// The opt-in audit against a real redis-server and the mock: every semantic hit (fraction
/// 1.0) is served at once, and in the background asks the upstream again (a paid call,
/// counted) and compares the answers: agreed (same words, cosine of their embeddings
/// above the rule), disagreed (another answer), failed (the upstream errs). The counts
/// are in `stats().semantic` and in `ai_cache_semantic_audits_total{outcome}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audit_compares_a_fresh_answer_with_the_one_served() {
    #[cfg(feature = "prometheus")]
    let metrics = llm_cache::prometheus::install().expect("the only recorder of this binary");
    let (mock, redis) = (mock().await, RedisServer::start());
    let audited = LlmCache::builder()
        .upstream(
            OpenAiCompatible::new(mock.base_url())
                .api_key("sk-test")
                .retry(RetryPolicy::none()),
        )
        .redis(redis.url())
        .l2_deadline(Duration::from_millis(250))
        .semantic(SemanticConfig::new(EMBEDDER).audit(1.0))
        .build()
        .await
        .expect("build");
    let original = request("What is the capital of France?");
    ask_and_index(&audited, &original, &semantic()).await;
    let served = expected_content(&original);
    let answer = |content: &str| {
        serde_json::json!({
            "id": "chatcmpl-audit", "object": "chat.completion", "created": 1,
            "model": "gpt-4.1",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": "stop"}],
        })
        .to_string()
    };
    let cases = [
        // The same answer but for its last character: agreed by the embeddings' cosine.
        (
            "What's the capital of France?",
            MockReply::Body(answer(served.trim_end_matches('?'))),
            (1, 0, 0),
        ),
        (
            "Hi, what is the capital of France?",
            MockReply::Body(answer("Bananas grow on large herbaceous plants.")),
            (1, 1, 0),
        ),
        (
            "What is the capital of France",
            MockReply::status(500),
            (1, 1, 1),
        ),
    ];
    for (i, (prompt, reply, (agreed, disagreed, failed))) in cases.into_iter().enumerate() {
        // The prompt's own embedding first, so that the scripted reply is the audit's.
        audited
            .embeddings(&llm_cache::EmbeddingRequest::new(EMBEDDER, prompt))
            .await
            .expect("embedding");
        let (paid, chats) = (
            audited.stats().upstream_calls,
            mock.calls_to("/v1/chat/completions"),
        );
        mock.push_reply(reply);
        let hit = audited
            .chat_with(&request(prompt), &semantic())
            .await
            .unwrap();
        assert_eq!(hit.status(), CacheStatus::HitSemantic, "{prompt}");
        assert_eq!(hit.text().unwrap(), served, "the hit is served as found");
        eventually("audited", WAIT, || {
            audited.stats().semantic.audited > i as u64
        })
        .await;
        let s = audited.stats();
        assert_eq!(
            (
                s.semantic.agreed,
                s.semantic.disagreed,
                s.semantic.audit_failed
            ),
            (agreed, disagreed, failed),
            "{prompt}"
        );
        assert_eq!(
            mock.calls_to("/v1/chat/completions"),
            chats + 1,
            "one chat call per audit"
        );
        // Counted as paid, with the answers' embeddings when it compared them.
        assert!(s.upstream_calls > paid, "an audit is a paid call");
    }
    assert_eq!(audited.stats().semantic.audited, 3);
    #[cfg(feature = "prometheus")]
    {
        let text = metrics.render();
        for outcome in ["agreed", "disagreed", "failed"] {
            let series = format!("ai_cache_semantic_audits_total{{outcome=\"{outcome}\"}} 1");
            assert!(text.contains(&series), "{series} in:\n{text}");
        }
    }
    // Off by default: no audit, no extra call.
    let quiet = cache(&mock, None).await;
    ask_and_index(&quiet, &original, &semantic()).await;
    let hit = quiet
        .chat_with(&request("What's the capital of France?"), &semantic())
        .await
        .unwrap();
    assert_eq!(hit.status(), CacheStatus::HitSemantic);
    assert_eq!(quiet.stats().semantic.audited, 0);
}
