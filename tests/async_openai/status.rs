//! The cache status for async-openai's typed API, which drops response headers:
//! `observe` (the outcomes of the calls a future makes) and the layer's `on_outcome` hook,
//! with the real client against the mock upstream and real Redis.

use llm_cache_test_support as support;

use std::sync::{Arc, Mutex};

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::middleware::ReqwestService;
use async_openai::types::chat::CreateChatCompletionRequest;
use async_openai::types::embeddings::CreateEmbeddingRequest;
use futures_util::StreamExt;
use llm_cache::async_openai::{AsyncOpenAiLayer, CacheOutcome, observe};
use llm_cache::{CacheStatus, LlmCache};
use serde_json::json;
use support::redis::RedisServer;
use support::upstream::{MockReply, MockUpstream};
use tower::ServiceBuilder;

fn client_of(layer: &AsyncOpenAiLayer, mock: &MockUpstream) -> Client<OpenAIConfig> {
    let config = OpenAIConfig::new()
        .with_api_base(mock.base_url())
        .with_api_key("sk-status-test");
    Client::with_config(config).with_http_service(
        ServiceBuilder::new()
            .layer(layer.clone())
            .service(ReqwestService::new(reqwest::Client::new())),
    )
}

fn chat(prompt: &str) -> CreateChatCompletionRequest {
    serde_json::from_value(json!({
        "model": "gpt-4.1-mini",
        "messages": [{"role": "user", "content": prompt}],
        "temperature": 0.0
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_gives_each_calls_status_and_age_across_tiers_and_processes() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let layer = AsyncOpenAiLayer::build(LlmCache::builder().redis(redis.url()))
        .await
        .unwrap();
    let client = client_of(&layer, &mock);

    let (answer, seen) = observe(client.chat().create(chat("observed"))).await;
    answer.unwrap();
    let miss = seen.last().expect("an outcome");
    assert_eq!(miss.status, CacheStatus::Miss);
    assert!(!miss.streamed);
    assert_eq!(seen.outcomes().len(), 1);

    let (answer, seen) = observe(client.chat().create(chat("observed"))).await;
    answer.unwrap();
    assert_eq!(seen.status(), Some(CacheStatus::HitL1));

    // A second layer on the same Redis, with an empty L1 (as another process): L2.
    let other = AsyncOpenAiLayer::build(LlmCache::builder().redis(redis.url()))
        .await
        .unwrap();
    let (answer, seen) = observe(client_of(&other, &mock).chat().create(chat("observed"))).await;
    answer.unwrap();
    assert_eq!(seen.status(), Some(CacheStatus::HitL2));
    assert_eq!(mock.calls(), 1);

    // Several calls in one future: every outcome, in order.
    let (_, seen) = observe(async {
        client.chat().create(chat("first of two")).await.unwrap();
        client.chat().create(chat("first of two")).await.unwrap();
    })
    .await;
    let statuses: Vec<_> = seen.outcomes().iter().map(|o| o.status).collect();
    assert_eq!(statuses, [CacheStatus::Miss, CacheStatus::HitL1]);

    // Nested: the inner call is the inner observation's alone.
    let ((inner, ()), outer) = observe(async {
        let inner = observe(client.chat().create(chat("nested"))).await.1;
        (inner, ())
    })
    .await;
    assert_eq!(inner.status(), Some(CacheStatus::Miss));
    assert!(outer.outcomes().is_empty(), "{outer:?}");

    // Outside `observe` nothing is recorded and nothing fails.
    client.chat().create(chat("unobserved")).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_embeddings_coalesced_calls_and_the_hook_report_too() {
    let mock = MockUpstream::start().await;
    let hooked: Arc<Mutex<Vec<CacheOutcome>>> = Arc::default();
    let record = Arc::clone(&hooked);
    let layer = AsyncOpenAiLayer::builder(LlmCache::builder())
        .on_outcome(move |o| record.lock().unwrap().push(*o))
        .build()
        .await
        .unwrap();
    let client = client_of(&layer, &mock);

    // A stream: its outcome is known when the stream starts; a replay is a hit.
    for expected in [CacheStatus::Miss, CacheStatus::HitL1] {
        let mut request = chat("streamed");
        request.stream = Some(true);
        let (stream, seen) = observe(client.chat().create_stream(request)).await;
        let mut stream = stream.unwrap();
        while let Some(chunk) = stream.next().await {
            chunk.unwrap();
        }
        let outcome = seen.last().expect("an outcome");
        assert_eq!(outcome.status, expected);
        assert!(outcome.streamed);
    }

    // Embeddings, input by input: one cached, one new makes `Partial`.
    let embed = |inputs: &[&str]| -> CreateEmbeddingRequest {
        serde_json::from_value(json!({"model": "text-embedding-3-small", "input": inputs})).unwrap()
    };
    client.embeddings().create(embed(&["a"])).await.unwrap();
    let (answer, seen) = observe(client.embeddings().create(embed(&["a", "b"]))).await;
    assert_eq!(answer.unwrap().data.len(), 2);
    assert_eq!(seen.status(), Some(CacheStatus::Partial));

    // Concurrent identical calls in one future: one miss, the rest coalesced.
    mock.hold_answers();
    let calls_before = mock.calls();
    let (answers, seen) = observe(async {
        let chats: Vec<_> = (0..5).map(|_| client.chat()).collect();
        let calls = chats.iter().map(|c| c.create(chat("five at once")));
        let all = futures_util::future::join_all(calls);
        let release = async {
            mock.wait_for_calls(calls_before + 1).await;
            mock.release_all();
        };
        tokio::join!(all, release).0
    })
    .await;
    assert!(answers.into_iter().all(|a| a.is_ok()));
    let mut statuses: Vec<_> = seen.outcomes().iter().map(|o| o.status.as_str()).collect();
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        ["coalesced"; 4]
            .into_iter()
            .chain(["miss"])
            .collect::<Vec<_>>()
    );
    assert_eq!(mock.calls(), calls_before + 1);

    // Passed through untouched, or failed upstream: no outcome.
    let (listed, seen) = observe(client.models().list()).await;
    listed.unwrap();
    assert!(seen.outcomes().is_empty(), "{seen:?}");
    mock.push_reply(MockReply::status(400));
    let (failed, seen) = observe(client.chat().create(chat("refused"))).await;
    assert!(failed.is_err());
    assert!(seen.outcomes().is_empty(), "{seen:?}");

    // The hook saw every answer the layer made, observed or not.
    let hooked: Vec<_> = hooked.lock().unwrap().iter().map(|o| o.status).collect();
    assert_eq!(hooked.len(), 2 + 2 + 5, "{hooked:?}");
    assert_eq!(hooked[..2], [CacheStatus::Miss, CacheStatus::HitL1]);
}
