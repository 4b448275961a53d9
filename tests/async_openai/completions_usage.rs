//! Streamed legacy completions and their usage chunk (issue 25, defect 3). The key ignores
//! `stream_options`, so one stored stream answers callers who asked for usage and callers
//! who did not: each must get the stream the upstream would have sent them, in whichever
//! order they come, from L1, from Redis, or coalesced onto one upstream stream.

use llm_cache_test_support as support;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::middleware::ReqwestService;
use async_openai::types::completions::{CreateCompletionRequest, CreateCompletionResponse};
use futures_util::StreamExt;
use llm_cache::CacheStatus;
use llm_cache::LlmCache;
use llm_cache::async_openai::{AsyncOpenAiLayer, observe};
use serde_json::json;
use std::time::Duration;
use support::redis::RedisServer;
use support::upstream::{MockReply, MockUpstream};
use tower::ServiceBuilder;

async fn layer(redis: &RedisServer) -> AsyncOpenAiLayer {
    AsyncOpenAiLayer::build(LlmCache::builder().redis(redis.url()))
        .await
        .expect("build layer")
}

fn client(layer: &AsyncOpenAiLayer, mock: &MockUpstream) -> Client<OpenAIConfig> {
    let service = ServiceBuilder::new()
        .layer(layer.clone())
        .service(ReqwestService::new(reqwest::Client::new()));
    let config = OpenAIConfig::new()
        .with_api_base(mock.base_url())
        .with_api_key("sk-test-usage");
    Client::with_config(config).with_http_service(service)
}

/// One streamed completion: its chunks and how the layer answered it.
async fn stream(
    client: &Client<OpenAIConfig>,
    prompt: &str,
    usage: Option<bool>,
) -> (Vec<CreateCompletionResponse>, CacheStatus) {
    let mut body = json!({"model": "gpt-3.5-turbo-instruct", "prompt": prompt, "stream": true});
    if let Some(usage) = usage {
        body["stream_options"] = json!({"include_usage": usage});
    }
    let request: CreateCompletionRequest = serde_json::from_value(body).unwrap();
    let (chunks, observed) = observe(async {
        let mut events = client.completions().create_stream(request).await.unwrap();
        let mut chunks = Vec::new();
        while let Some(chunk) = events.next().await {
            chunks.push(chunk.expect("a chunk"));
        }
        chunks
    })
    .await;
    let outcomes = observed.outcomes();
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    (chunks, outcomes[0].status)
}

/// Wait until `n` answers are in Redis (and so in L1): a caller's stream ends at `[DONE]`,
/// before the layer stores what it saw.
async fn stored(layer: &AsyncOpenAiLayer, n: u64) {
    support::eventually("the answers stored", Duration::from_secs(20), || {
        layer.body_stats().l2_writes >= n
    })
    .await;
}

/// The text of a stream, from `choices[0]` of every chunk that has one.
fn text(chunks: &[CreateCompletionResponse]) -> String {
    chunks
        .iter()
        .filter_map(|c| c.choices.first())
        .map(|c| c.text.as_str())
        .collect()
}

/// What a caller who asked for usage must see: every chunk but the last has a choice, and
/// the last has none and carries the usage.
fn assert_with_usage(chunks: &[CreateCompletionResponse], what: &str) {
    let (last, rest) = chunks.split_last().expect("chunks");
    assert!(
        last.choices.is_empty() && last.usage.is_some(),
        "{what}: the last chunk is the usage chunk: {last:?}"
    );
    assert!(rest.iter().all(|c| !c.choices.is_empty()), "{what}");
}

/// What a caller who did not ask must see: no chunk without a choice, no usage.
fn assert_without_usage(chunks: &[CreateCompletionResponse], what: &str) {
    assert!(!chunks.is_empty(), "{what}: no chunks");
    for chunk in chunks {
        assert!(
            !chunk.choices.is_empty() && chunk.usage.is_none(),
            "{what}: a chunk without a choice or with usage: {chunk:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_caller_gets_the_usage_chunk_it_asked_for_in_either_order() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let layer = layer(&redis).await;
    let client = client(&layer, &mock);

    // Stored by a caller who did not ask, then asked for: the usage is there.
    let (first, status) = stream(&client, "not asked first", None).await;
    assert_eq!(status, CacheStatus::Miss);
    assert_without_usage(&first, "the miss, not asked");
    stored(&layer, 1).await;
    let sent = mock.last_request().unwrap().body;
    assert_eq!(
        sent["stream_options"]["include_usage"], true,
        "the miss asks the upstream for usage: {sent}"
    );
    let (second, status) = stream(&client, "not asked first", Some(true)).await;
    assert_eq!(status, CacheStatus::HitL1);
    assert_with_usage(&second, "the L1 hit, asked");
    assert_eq!(text(&first), text(&second));
    let (third, _) = stream(&client, "not asked first", Some(false)).await;
    assert_without_usage(&third, "the L1 hit, include_usage false");

    // Stored by a caller who asked, then not asked for: no extra chunk.
    let (first, status) = stream(&client, "asked first", Some(true)).await;
    assert_eq!(status, CacheStatus::Miss);
    assert_with_usage(&first, "the miss, asked");
    stored(&layer, 2).await;
    let (second, status) = stream(&client, "asked first", None).await;
    assert_eq!(status, CacheStatus::HitL1);
    assert_without_usage(&second, "the L1 hit, not asked");
    assert_eq!(
        mock.calls_to("/v1/completions"),
        2,
        "one upstream call per prompt"
    );

    // From Redis, in a second process's layer: both shapes again.
    let other = self::client(&self::layer(&redis).await, &mock);
    let (from_l2, status) = stream(&other, "asked first", None).await;
    assert_eq!(status, CacheStatus::HitL2);
    assert_without_usage(&from_l2, "the L2 hit, not asked");
    let (from_l2, status) = stream(&other, "not asked first", Some(true)).await;
    assert_eq!(status, CacheStatus::HitL2);
    assert_with_usage(&from_l2, "the L2 hit, asked");
    assert_eq!(mock.calls_to("/v1/completions"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coalesced_callers_share_one_stream_each_in_its_own_shape() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let layer = layer(&redis).await;
    let client = client(&layer, &mock);

    mock.hold_answers();
    let callers: Vec<_> = [None, Some(true), Some(false), Some(true), None, Some(true)]
        .into_iter()
        .map(|usage| {
            let client = client.clone();
            tokio::spawn(async move { (usage, stream(&client, "together", usage).await) })
        })
        .collect();
    mock.wait_for_calls(1).await;
    mock.release_all();
    for caller in callers {
        let (usage, (chunks, _)) = caller.await.unwrap();
        if usage == Some(true) {
            assert_with_usage(&chunks, "coalesced, asked");
        } else {
            assert_without_usage(&chunks, "coalesced, not asked");
        }
    }
    assert_eq!(
        mock.calls_to("/v1/completions"),
        1,
        "six callers, one stream"
    );
    stored(&layer, 1).await;

    // An upstream that ignores `include_usage`: stored as it came, and replayed without a
    // usage chunk to a caller who asks (what the upstream itself would have sent), not
    // fetched again on every call.
    mock.push_reply(MockReply::Sse(
        "data: {\"id\":\"c\",\"object\":\"text_completion\",\"created\":0,\"model\":\"m\",\
         \"choices\":[{\"text\":\"plain\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"stop\"}]}\n\n\
         data: [DONE]\n\n"
            .into(),
    ));
    let (plain, status) = stream(&client, "no usage upstream", None).await;
    assert_eq!(
        (text(&plain).as_str(), status),
        ("plain", CacheStatus::Miss)
    );
    stored(&layer, 2).await;
    let (again, status) = stream(&client, "no usage upstream", Some(true)).await;
    assert_eq!(
        (text(&again).as_str(), status),
        ("plain", CacheStatus::HitL1)
    );
    assert_without_usage(&again, "an upstream without usage");
    assert_eq!(mock.calls_to("/v1/completions"), 2);
}
