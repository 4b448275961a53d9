//! Embeddings, input by input, against a real redis-server and the mock upstream over
//! HTTP (a deterministic vector per input): partial hits with every vector at its own
//! index, single-flight per input (in one process and across instances), float and base64
//! from one entry, failures that store nothing, usage and savings, and a property test.

use llm_cache_test_support as support;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use base64::Engine as _;
use llm_cache::{
    CacheControl, CacheStatus, EmbeddingRequest, EncodingFormat, ErrorKind, LlmCache,
    OpenAiCompatible, RetryPolicy,
};
use proptest::prelude::*;
use serde_json::{Value, json};
use support::embeddings::{expected_embedding, tokens_of};
use support::redis::RedisServer;
use support::upstream::{MockReply, MockUpstream};

const MODEL: &str = "text-embedding-3-small";
const DIMS: usize = 8;

async fn instance(mock: &MockUpstream, redis: Option<&RedisServer>) -> LlmCache {
    let mut b = LlmCache::builder()
        .upstream(OpenAiCompatible::new(mock.base_url()).retry(RetryPolicy::none()))
        .lease_ttl(Duration::from_secs(5))
        // A loaded test machine must not turn a Redis read into a (legitimate) miss.
        .l2_deadline(Duration::from_secs(1));
    if let Some(r) = redis {
        b = b.redis(r.url());
    }
    b.build().await.expect("build")
}

fn texts(items: &[&str]) -> EmbeddingRequest {
    EmbeddingRequest::new(MODEL, items.to_vec())
}

/// The vector the mock gives `text`, as f32.
fn expected(text: &str) -> Vec<f32> {
    expected_embedding(&json!(text), DIMS)
}

/// Every vector of `out` is its own input's, at its own index.
fn assert_vectors(req: &EmbeddingRequest, out: &llm_cache::CachedEmbeddings) {
    let items = match &req.input {
        llm_cache::EmbeddingInput::Texts(t) => t.clone(),
        llm_cache::EmbeddingInput::Text(t) => vec![t.clone()],
        other => panic!("texts only here: {other:?}"),
    };
    assert_eq!(out.data.len(), items.len());
    for (i, (e, text)) in out.data.iter().zip(&items).enumerate() {
        assert_eq!(e.index, i);
        assert_eq!(
            e.embedding.to_f32_vec(),
            expected(text),
            "input {i}: {text}"
        );
    }
}

/// The distinct inputs the mock received, over all calls.
fn sent(mock: &MockUpstream) -> Vec<String> {
    mock.embedding_calls()
        .into_iter()
        .flatten()
        .map(|v| v.as_str().expect("text input").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partly_cached_shuffled_batch_with_repeats_sends_only_its_new_inputs_once() {
    let (mock, redis) = (MockUpstream::start().await, RedisServer::start());
    let cache = instance(&mock, Some(&redis)).await;
    let first = cache.embeddings(&texts(&["a", "b", "c"])).await.unwrap();
    assert_eq!(first.status(), CacheStatus::Miss);
    assert_eq!(mock.embedding_calls().len(), 1);

    let req = texts(&["x", "c", "a", "y", "x", "b", "z", "y", "a"]);
    let out = cache.embeddings(&req).await.unwrap();
    assert_vectors(&req, &out);
    assert_eq!(out.status(), CacheStatus::Partial);
    let calls = mock.embedding_calls();
    assert_eq!(calls.len(), 2, "the new inputs go in one call");
    let new: Vec<&str> = calls[1].iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(new.len(), 3, "each new input once: {new:?}");
    assert_eq!(
        new.iter().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from(["x", "y", "z"])
    );
    use CacheStatus::*;
    assert_eq!(
        out.input_statuses(),
        &[
            Miss, HitL1, HitL1, Miss, Coalesced, HitL1, Miss, Coalesced, HitL1
        ]
    );
    // usage is what this request was charged: its three new inputs.
    let charged: u64 = ["x", "y", "z"].iter().map(|t| tokens_of(&json!(t))).sum();
    assert_eq!(out.usage.prompt_tokens, charged);
    assert_eq!(out.usage.total_tokens, charged);
    // And all of it from memory now.
    let again = cache.embeddings(&req).await.unwrap();
    assert_eq!(again.status(), CacheStatus::HitL1);
    assert_eq!(again.usage.prompt_tokens, 0);
    assert_vectors(&req, &again);
    assert_eq!(mock.embedding_calls().len(), 2);
    let stats = cache.embedding_stats();
    assert_eq!((stats.requests, stats.inputs), (3, 21));
    assert_eq!((stats.upstream_calls, stats.upstream_inputs), (2, 6));
}

#[tokio::test]
async fn a_batch_of_one_new_input_repeated_is_a_miss_charged_once() {
    let mock = MockUpstream::start().await;
    let cache = instance(&mock, None).await;
    let out = cache.embeddings(&texts(&["q", "q", "q"])).await.unwrap();
    assert_eq!(out.status(), CacheStatus::Miss, "nothing was cached");
    use CacheStatus::*;
    assert_eq!(out.input_statuses(), &[Miss, Coalesced, Coalesced]);
    assert_eq!(out.usage.prompt_tokens, tokens_of(&json!("q")));
    assert_eq!(mock.embedding_calls().len(), 1);
    // A repeat of a cached input beside a new one is still partial.
    let mixed = cache.embeddings(&texts(&["r", "q", "r"])).await.unwrap();
    assert_eq!(mixed.status(), CacheStatus::Partial);
    let again = cache.embeddings(&texts(&["q", "q"])).await.unwrap();
    assert_eq!(again.status(), CacheStatus::HitL1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vectors_count_their_own_redis_timeouts_skips_and_openings() {
    let (mock, redis) = (MockUpstream::start().await, RedisServer::start());
    let cache = LlmCache::builder()
        .upstream(OpenAiCompatible::new(mock.base_url()).retry(RetryPolicy::none()))
        .redis(redis.url())
        .l2_deadline(Duration::from_millis(100))
        .breaker_threshold(2)
        .breaker_cooldown(Duration::from_secs(600))
        .waiter_deadline(Duration::from_secs(20))
        .build()
        .await
        .expect("build");
    cache.embeddings(&texts(&["warm"])).await.unwrap();
    let before = cache.embedding_stats().cache;
    let chat_before = cache.stats().cache;
    redis.pause();
    // Every request succeeds (L1 and upstream); its vectors' lookups time out until the
    // breaker opens, then are skipped.
    for i in 0..20 {
        let req = texts(&[&format!("while paused {i}")]);
        let out = cache.embeddings(&req).await.unwrap();
        assert_vectors(&req, &out);
        let now = cache.embedding_stats().cache;
        if now.breaker_openings > before.breaker_openings && now.l2_skipped > before.l2_skipped {
            break;
        }
    }
    redis.resume();
    let after = cache.embedding_stats().cache;
    assert!(
        after.l2_timeouts + after.l2_errors > before.l2_timeouts + before.l2_errors,
        "the vectors' failed lookups are theirs: {after:?}"
    );
    assert!(after.l2_skipped > before.l2_skipped, "{after:?}");
    // One breaker, opened once, counted once: by the vectors, unless a chat-tier
    // operation of its own failed then too.
    let chat = cache.stats().cache;
    let opened = after.breaker_openings - before.breaker_openings;
    assert_eq!(
        opened + chat.breaker_openings - chat_before.breaker_openings,
        1,
        "vectors {after:?} chat {chat:?}"
    );
    if chat.l2_timeouts + chat.l2_errors == chat_before.l2_timeouts + chat_before.l2_errors {
        assert_eq!(opened, 1, "the opening their failures caused: {after:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_overlapping_batches_fetch_each_input_once() {
    let (mock, redis) = (MockUpstream::start().await, RedisServer::start());
    mock.set_delay(Duration::from_millis(30));
    let cache = instance(&mock, Some(&redis)).await;
    let words: Vec<String> = (0..40).map(|i| format!("chunk-{i}")).collect();
    let tasks: Vec<_> = (0..50)
        .map(|b| {
            let cache = cache.clone();
            // Each batch: 12 inputs from a window that overlaps its neighbours'.
            let batch: Vec<String> = (0..12)
                .map(|k| words[(b * 3 + k * 2) % 40].clone())
                .collect();
            tokio::spawn(async move {
                let req = EmbeddingRequest::new(MODEL, batch);
                let out = cache.embeddings(&req).await.unwrap();
                assert_vectors(&req, &out);
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for input in sent(&mock) {
        *counts.entry(input).or_default() += 1;
    }
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        repeated.is_empty(),
        "inputs fetched more than once: {repeated:?}"
    );
    assert_eq!(counts.len(), 40, "every distinct input fetched");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn float_and_base64_share_entries_and_a_second_instance_reads_them_from_redis() {
    let (mock, redis) = (MockUpstream::start().await, RedisServer::start());
    let one = instance(&mock, Some(&redis)).await;
    let float = texts(&["alpha", "beta"]).encoding_format(EncodingFormat::Float);
    let b64 = texts(&["beta", "alpha"]).encoding_format(EncodingFormat::Base64);
    let out = one.embeddings(&float).await.unwrap();
    let asked = &mock.requests()[0].body;
    assert_eq!(
        asked["encoding_format"], "base64",
        "the cache asks for base64"
    );
    let json = serde_json::to_value(out.response()).unwrap();
    for (i, text) in ["alpha", "beta"].iter().enumerate() {
        let want: Vec<f64> = expected(text).iter().map(|&x| f64::from(x)).collect();
        assert_eq!(
            json["data"][i]["embedding"],
            json!(want),
            "float as printed"
        );
    }
    let out = one.embeddings(&b64).await.unwrap();
    assert_eq!(out.status(), CacheStatus::HitL1);
    let json = serde_json::to_value(out.response()).unwrap();
    for (i, text) in ["beta", "alpha"].iter().enumerate() {
        let bytes: Vec<u8> = expected(text)
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let want = base64::engine::general_purpose::STANDARD.encode(bytes);
        assert_eq!(
            json["data"][i]["embedding"],
            json!(want),
            "base64 byte-identical"
        );
    }
    assert_eq!(mock.embedding_calls().len(), 1);

    let two = instance(&mock, Some(&redis)).await;
    redis.redis_cli(&["CONFIG", "RESETSTAT"]);
    let out = two.embeddings(&float).await.unwrap();
    assert_eq!(out.status(), CacheStatus::HitL2);
    assert_vectors(&float, &out);
    assert_eq!(mock.embedding_calls().len(), 1);
    // The batch's inputs were read with one MGET, not a GET each.
    let commands = redis.data_commands();
    assert!(
        commands.contains(&"mget=1".to_string()) && !commands.iter().any(|c| c.starts_with("get=")),
        "{commands:?}"
    );
    // Stored compactly: a key per input, f32 bytes not JSON text.
    let digests = two
        .embedding_digests_with(&float, &CacheControl::default())
        .unwrap();
    let mut conn = redis.sync_conn();
    for d in digests {
        let len: usize = redis::cmd("STRLEN")
            .arg(two.tiers().l2_key(&d))
            .query(&mut conn)
            .unwrap();
        assert!(
            len > DIMS * 4 && len < DIMS * 4 + 200,
            "entry of {len} bytes"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_call_fails_the_request_stores_nothing_for_its_inputs_and_is_retried_next_time() {
    let (mock, redis) = (MockUpstream::start().await, RedisServer::start());
    let cache = instance(&mock, Some(&redis)).await;
    cache.embeddings(&texts(&["kept"])).await.unwrap();
    mock.push_reply(MockReply::openai_error(503, "mock: overloaded"));
    let req = texts(&["kept", "lost-1", "lost-2"]);
    let err = cache.embeddings(&req).await.unwrap_err();
    assert_eq!((err.kind(), err.status()), (ErrorKind::Upstream, Some(503)));
    let digests = cache
        .embedding_digests_with(&req, &CacheControl::default())
        .unwrap();
    // The failed inputs' leases are released in the background; then their keys are gone.
    let mut conn = redis.sync_conn();
    let keys: Vec<String> = digests[1..]
        .iter()
        .map(|d| cache.tiers().l2_key(d))
        .collect();
    support::eventually(
        "the failed inputs' leases released",
        Duration::from_secs(5),
        || {
            keys.iter().all(|k| {
                !redis::cmd("EXISTS")
                    .arg(k)
                    .query::<bool>(&mut conn)
                    .unwrap()
            })
        },
    )
    .await;
    assert_eq!(
        redis.leases_held("ai:cache"),
        0,
        "nothing stored, no lease left"
    );
    let out = cache.embeddings(&req).await.unwrap();
    assert_vectors(&req, &out);
    assert_eq!(
        out.input_statuses()[0],
        CacheStatus::HitL1,
        "the cached input stayed"
    );
    let last = mock.embedding_calls().pop().unwrap();
    assert_eq!(last, vec![json!("lost-1"), json!("lost-2")]);
    assert_eq!(cache.embedding_stats().failed, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_batch_stores_the_calls_that_succeeded_and_fails_with_the_one_that_did_not() {
    let mock = MockUpstream::start().await;
    let cache = LlmCache::builder()
        .upstream(OpenAiCompatible::new(mock.base_url()).retry(RetryPolicy::none()))
        .max_embedding_inputs_per_call(2)
        .build()
        .await
        .unwrap();
    mock.hold_answers();
    mock.push_reply(MockReply::openai_error(500, "mock: one call fails"));
    let req = texts(&["p", "q", "r", "s", "t"]);
    let task = {
        let (cache, req) = (cache.clone(), req.clone());
        tokio::spawn(async move { cache.embeddings(&req).await })
    };
    mock.wait_for_calls(3).await;
    assert!(mock.embedding_calls().iter().all(|c| c.len() <= 2));
    mock.release_all();
    let err = task.await.unwrap().unwrap_err();
    assert_eq!(err.status(), Some(500));
    let before = mock.embedding_calls().len();
    let out = cache.embeddings(&req).await.unwrap();
    assert_vectors(&req, &out);
    let retried = &mock.embedding_calls()[before..];
    assert_eq!(retried.len(), 1, "only the failed call's inputs again");
    assert!(retried[0].len() <= 2 && !retried[0].is_empty());
    assert_eq!(out.status(), CacheStatus::Partial);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_asking_for_the_same_new_inputs_at_once_cost_one_call() {
    let (mock, redis) = (MockUpstream::start().await, RedisServer::start());
    let (one, two) = (
        instance(&mock, Some(&redis)).await,
        instance(&mock, Some(&redis)).await,
    );
    mock.hold_answers();
    let req = texts(&["shared-1", "shared-2", "shared-3"]);
    let a = {
        let (c, r) = (one.clone(), req.clone());
        tokio::spawn(async move { c.embeddings(&r).await })
    };
    mock.wait_for_calls(1).await;
    // The second instance finds the first one's leases and waits for its values.
    let b = {
        let (c, r) = (two.clone(), req.clone());
        tokio::spawn(async move { c.embeddings(&r).await })
    };
    // Three lookups that took the leases, then the second instance's (it polls with the
    // same command) that found them.
    support::eventually(
        "the second instance finds the leases",
        Duration::from_secs(5),
        || {
            let sets = redis
                .data_commands()
                .iter()
                .find_map(|c| c.strip_prefix("set=").map(|n| n.parse::<u64>().unwrap()))
                .unwrap_or(0);
            redis.leases_held("ai:cache") == 3 && sets >= 6
        },
    )
    .await;
    mock.release_all();
    let (a, b) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
    assert_vectors(&req, &a);
    assert_vectors(&req, &b);
    assert_eq!(a.status(), CacheStatus::Miss);
    assert_eq!(b.status(), CacheStatus::HitL2);
    assert_eq!(mock.embedding_calls().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_follow_model_dimensions_parameters_and_namespace_but_not_format_or_user() {
    let mock = MockUpstream::start().await;
    let cache = instance(&mock, None).await;
    let base = texts(&["same"]);
    cache.embeddings(&base).await.unwrap();
    let mut shared = base.clone().encoding_format(EncodingFormat::Base64);
    shared.user = Some("someone".into());
    assert_eq!(
        cache.embeddings(&shared).await.unwrap().status(),
        CacheStatus::HitL1
    );
    let others = [
        EmbeddingRequest::new("text-embedding-3-large", vec!["same"]),
        base.clone().dimensions(4),
        base.clone().param("truncate", "END"),
    ];
    for (i, other) in others.iter().enumerate() {
        let out = cache.embeddings(other).await.unwrap();
        assert_eq!(out.status(), CacheStatus::Miss, "variant {i}");
    }
    let tenant = CacheControl::new().namespace("tenant-a");
    let out = cache.embeddings_with(&base, &tenant).await.unwrap();
    assert_eq!(out.status(), CacheStatus::Miss, "namespaces do not share");
    // dimensions reach the upstream and shape the vector.
    let short = cache.embeddings(&base.clone().dimensions(4)).await.unwrap();
    assert_eq!(short.data[0].embedding.len(), 4);
    // Invalidation: one request's inputs, and a whole namespace.
    cache
        .invalidate_embeddings_with(&base, &CacheControl::default())
        .await
        .unwrap();
    assert_eq!(
        cache.embeddings(&base).await.unwrap().status(),
        CacheStatus::Miss
    );
    cache.invalidate_namespace("tenant-a").await.unwrap();
    let out = cache.embeddings_with(&base, &tenant).await.unwrap();
    assert_eq!(out.status(), CacheStatus::Miss);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_answers_and_bad_requests_are_errors_that_store_nothing() {
    let mock = MockUpstream::start().await;
    let cache = instance(&mock, None).await;
    // An upstream that answers one index twice: an error, never a wrong vector.
    let twice = json!({"object": "list", "model": MODEL, "usage": {"prompt_tokens": 2, "total_tokens": 2},
        "data": [{"object": "embedding", "index": 0, "embedding": [0.5]},
                 {"object": "embedding", "index": 0, "embedding": [0.25]}]});
    mock.push_reply(MockReply::Body(twice.to_string()));
    let req = texts(&["one", "two"]);
    let err = cache.embeddings(&req).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Upstream);
    assert!(err.to_string().contains("index 0 twice"), "{err}");
    let short = json!({"object": "list", "model": MODEL, "data": [{"object": "embedding", "index": 0, "embedding": [0.5]}]});
    mock.push_reply(MockReply::Body(short.to_string()));
    let err = cache.embeddings(&req).await.unwrap_err();
    assert!(err.to_string().contains("1 vectors for 2 inputs"), "{err}");
    let out = cache.embeddings(&req).await.unwrap();
    assert_eq!(out.status(), CacheStatus::Miss, "nothing was stored");
    assert_vectors(&req, &out);

    for (bad, field) in [
        (EmbeddingRequest::new(MODEL, Vec::<String>::new()), "input"),
        (texts(&["ok", ""]), "input[1]"),
        (texts(&["ok"]).dimensions(0), "dimensions"),
        (EmbeddingRequest::new("", vec!["x"]), "model"),
    ] {
        let err = cache.embeddings(&bad).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidRequest);
        assert!(err.to_string().contains(&format!("`{field}`")), "{err}");
    }
    let err = EmbeddingRequest::from_json(br#"{"model":"m","input":[1,"x"]}"#).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidRequest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_an_f32_cannot_hold_are_kept_exactly_and_token_inputs_work() {
    let mock = MockUpstream::start().await;
    let cache = instance(&mock, None).await;
    let precise = json!({"object": "list", "model": MODEL, "usage": {"prompt_tokens": 3, "total_tokens": 3},
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.3333333333333333, 1e-300]}]});
    mock.push_reply(MockReply::Body(precise.to_string()));
    let req = texts(&["precise"]).encoding_format(EncodingFormat::Float);
    cache.embeddings(&req).await.unwrap();
    let out = cache.embeddings(&req).await.unwrap();
    assert_eq!(out.status(), CacheStatus::HitL1);
    let json = serde_json::to_value(out.response()).unwrap();
    assert_eq!(
        json["data"][0]["embedding"],
        json!([0.1, -0.3333333333333333, 1e-300])
    );
    // base64 holds f32: the values rounded to f32, as the upstream itself would send.
    let b64 = cache
        .embeddings(&req.clone().encoding_format(EncodingFormat::Base64))
        .await
        .unwrap();
    assert_eq!(
        b64.data[0].embedding.to_f32_vec(),
        vec![0.1f32, -0.333_333_34, 0.0]
    );

    let tokens = EmbeddingRequest::new(MODEL, vec![vec![1u32, 2, 3], vec![4, 5]]);
    let out = cache.embeddings(&tokens).await.unwrap();
    assert_eq!(
        out.data[0].embedding.to_f32_vec(),
        expected_embedding(&json!([1, 2, 3]), DIMS)
    );
    assert_eq!(
        out.data[1].embedding.to_f32_vec(),
        expected_embedding(&json!([4, 5]), DIMS)
    );
    assert_eq!(out.usage.prompt_tokens, 5);
    let one = EmbeddingRequest::new(MODEL, vec![4u32, 5]);
    assert_eq!(
        cache.embeddings(&one).await.unwrap().status(),
        CacheStatus::HitL1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_inputs_count_their_share_of_tokens_and_dollars() {
    let mock = MockUpstream::start().await;
    let cache = instance(&mock, None).await;
    let long = "x".repeat(400); // 100 tokens at the mock's rate
    let req = EmbeddingRequest::new(MODEL, vec![long.clone(), "abcd".into()]);
    cache.embeddings(&req).await.unwrap();
    let hit = cache
        .embeddings(&EmbeddingRequest::new(MODEL, vec![long]))
        .await
        .unwrap();
    // The call was charged 101 tokens for 404 bytes: the long input's share is 100.
    assert_eq!(hit.tokens_saved(), 100);
    let stats = cache.stats();
    let model = &stats.per_model[MODEL];
    assert_eq!((model.hits, model.misses, model.tokens_saved), (1, 2, 100));
    assert!((model.cost_saved_usd - 100.0 * 0.02 / 1e6).abs() < 1e-12);
    assert_eq!(stats.upstream_calls, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_without_embeddings_says_so() {
    struct ChatOnly;
    impl llm_cache::Upstream for ChatOnly {
        fn chat<'a>(
            &'a self,
            _: &'a llm_cache::ChatRequest,
        ) -> llm_cache::BoxFuture<'a, llm_cache::Result<llm_cache::ChatResponse>> {
            Box::pin(async { Err(llm_cache::Error::fetch_msg("unused")) })
        }
    }
    let cache = LlmCache::builder()
        .upstream(ChatOnly)
        .build()
        .await
        .unwrap();
    let err = cache.embeddings(&texts(&["x"])).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(err.to_string().contains("embeddings"), "{err}");
}

/// The property: whatever was cached before, a batch's answer is what the upstream gives
/// for the whole batch (order, indices, values), and the upstream never sees a cached
/// input.
#[test]
fn any_batch_over_any_cache_state_answers_like_the_upstream() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (mock, redis) = rt.block_on(async { (MockUpstream::start().await, RedisServer::start()) });
    let cache = rt.block_on(instance(&mock, Some(&redis)));
    let alphabet = ["a", "b", "c", "d", "e", "f"];
    let case = std::sync::atomic::AtomicU32::new(0);
    let config = ProptestConfig {
        cases: 32,
        ..ProptestConfig::default()
    };
    proptest!(config, |(
        warm in proptest::collection::vec(0usize..6, 0..6),
        batch in proptest::collection::vec(0usize..6, 1..12),
        l1_cleared in any::<bool>(),
    )| {
        let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let control = CacheControl::new().namespace(format!("case-{n}"));
        let words = |ix: &[usize]| ix.iter().map(|&i| alphabet[i].to_string()).collect::<Vec<_>>();
        rt.block_on(async {
            if !warm.is_empty() {
                cache.embeddings_with(&EmbeddingRequest::new(MODEL, words(&warm)), &control).await.unwrap();
            }
            if l1_cleared {
                // Redis writes go behind the answer: emptying L1 before they land would
                // leave the warm inputs cached nowhere (what failed once under load).
                cache.flush(Duration::from_secs(30)).await.unwrap();
                cache.clear_l1();
            }
        });
        let before = mock.embedding_calls().len();
        let req = EmbeddingRequest::new(MODEL, words(&batch));
        let out = rt.block_on(cache.embeddings_with(&req, &control)).unwrap();
        let expected_json = support::embeddings::answer(
            &json!({"model": MODEL, "input": words(&batch)}), None);
        let got = serde_json::to_value(out.response()).unwrap();
        prop_assert_eq!(&got["data"], &expected_json["data"]);
        let warm_set: BTreeSet<usize> = warm.iter().copied().collect();
        let seen: Vec<Value> = mock.embedding_calls()[before..].iter().flatten().cloned().collect();
        for input in &seen {
            let i = alphabet.iter().position(|a| json!(a) == *input).unwrap();
            prop_assert!(!warm_set.contains(&i), "a cached input went upstream: {}", input);
        }
        let distinct_new: BTreeSet<usize> = batch.iter().copied().filter(|i| !warm_set.contains(i)).collect();
        prop_assert_eq!(seen.len(), distinct_new.len());
    });
}
