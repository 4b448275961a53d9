//! The async-openai layer with the real async-openai `Client` against the mock upstream over
//! HTTP, and real Redis: hits, single-flight, streams, credential scoping, errors,
//! pass-through, embeddings and the Responses API, and a second process sharing Redis.

use llm_cache_test_support as support;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::ReqwestService;
use async_openai::middleware::retry::OpenAIRetryLayer;
use async_openai::traits::RequestOptionsBuilder;
use async_openai::types::chat::{CreateChatCompletionRequest, CreateChatCompletionResponse};
use futures_util::StreamExt;
use llm_cache::LlmCache;
use llm_cache::async_openai::AsyncOpenAiLayer;
use serde_json::{Value, json};
use support::redis::RedisServer;
use support::upstream::{MockReply, MockUpstream};
use tokio::io::{AsyncBufReadExt, BufReader};
use tower::ServiceBuilder;

const WAIT: Duration = Duration::from_secs(20);

type Seen = Arc<Mutex<Vec<String>>>;

/// A client whose stack is: record `x-llm-cache` -> the cache layer -> async-openai's
/// retry layer (`retries` attempts) -> reqwest.
fn client_with(
    layer: &AsyncOpenAiLayer,
    config: OpenAIConfig,
    retries: usize,
) -> (Client<OpenAIConfig>, Seen) {
    let seen: Seen = Arc::default();
    let record = Arc::clone(&seen);
    let service = ServiceBuilder::new()
        .map_response(move |r: reqwest::Response| {
            let status = r
                .headers()
                .get("x-llm-cache")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_string();
            record.lock().unwrap().push(status);
            r
        })
        .layer(layer.clone())
        .layer(OpenAIRetryLayer::new(retries))
        .service(ReqwestService::new(reqwest::Client::new()));
    (Client::with_config(config).with_http_service(service), seen)
}

fn config(mock: &MockUpstream, key: &str) -> OpenAIConfig {
    OpenAIConfig::new()
        .with_api_base(mock.base_url())
        .with_api_key(key)
}

fn client(layer: &AsyncOpenAiLayer, mock: &MockUpstream) -> (Client<OpenAIConfig>, Seen) {
    client_with(layer, config(mock, "sk-test-one"), 0)
}

async fn layer(redis: Option<&RedisServer>) -> AsyncOpenAiLayer {
    let mut builder = LlmCache::builder();
    if let Some(redis) = redis {
        builder = builder.redis(redis.url());
    }
    AsyncOpenAiLayer::build(builder).await.expect("build layer")
}

fn chat(prompt: &str) -> CreateChatCompletionRequest {
    serde_json::from_value(json!({
        "model": "gpt-4.1-mini",
        "messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": prompt}],
        "temperature": 0.0
    }))
    .unwrap()
}

fn last(seen: &Seen) -> String {
    seen.lock().unwrap().last().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_identical_call_is_a_hit_and_200_concurrent_calls_make_one() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let layer = layer(Some(&redis)).await;
    let (client, seen) = client(&layer, &mock);

    let first = client.chat().create(chat("hello")).await.unwrap();
    assert_eq!(last(&seen), "miss");
    let second = client.chat().create(chat("hello")).await.unwrap();
    assert_eq!(last(&seen), "hit-l1");
    assert_eq!(mock.calls(), 1);
    assert_eq!(
        serde_json::to_value(&first).unwrap(),
        serde_json::to_value(&second).unwrap()
    );
    assert!(
        first.choices[0]
            .message
            .content
            .as_deref()
            .unwrap()
            .contains("hello")
    );

    mock.hold_answers();
    let calls: Vec<_> = (0..200)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { client.chat().create(chat("stampede")).await })
        })
        .collect();
    mock.wait_for_calls(2).await;
    mock.release_all();
    let mut ids = Vec::new();
    for call in calls {
        ids.push(call.await.unwrap().expect("answered").id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every caller got the one answer");
    assert_eq!(
        mock.calls(),
        2,
        "200 concurrent identical calls made one upstream call"
    );
    let stats = layer.cache().stats();
    assert!(stats.cache.misses >= 2, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn streams_are_replayed_and_20_concurrent_streams_make_one_call() {
    let mock = MockUpstream::start().await;
    let layer = layer(None).await;
    let (client, seen) = client(&layer, &mock);

    let text = |request: CreateChatCompletionRequest| {
        let client = client.clone();
        async move {
            let mut request = request;
            request.stream = Some(true);
            let mut stream = client.chat().create_stream(request).await.unwrap();
            let mut text = String::new();
            let mut finish = None;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.expect("a chunk");
                for choice in chunk.choices {
                    text.push_str(choice.delta.content.as_deref().unwrap_or(""));
                    if choice.finish_reason.is_some() {
                        finish = choice.finish_reason;
                    }
                }
            }
            (text, format!("{finish:?}"))
        }
    };
    let live = text(chat("stream me")).await;
    assert_eq!(last(&seen), "miss");
    let replayed = text(chat("stream me")).await;
    assert_eq!(last(&seen), "hit-l1");
    assert_eq!(live, replayed);
    assert!(live.0.contains("stream me"), "{live:?}");
    assert_eq!(mock.calls(), 1);
    // The non-streamed answer is the same stored one.
    let whole = client.chat().create(chat("stream me")).await.unwrap();
    assert_eq!(whole.choices[0].message.content.as_deref(), Some(&*live.0));
    assert_eq!(mock.calls(), 1);
    // The upstream was asked for usage, whatever the caller asked.
    let sent = mock.last_request().unwrap();
    assert_eq!(sent.body["stream_options"]["include_usage"], true);

    mock.hold_answers();
    let streams: Vec<_> = (0..20)
        .map(|_| tokio::spawn(text(chat("twenty streams"))))
        .collect();
    mock.wait_for_calls(2).await;
    mock.release_all();
    let mut texts = Vec::new();
    for s in streams {
        texts.push(s.await.unwrap());
    }
    texts.dedup();
    assert_eq!(texts.len(), 1);
    assert!(texts[0].0.contains("twenty streams"));
    assert_eq!(
        mock.calls(),
        2,
        "20 concurrent identical streams made one call"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_never_share_answers_unless_configured() {
    let mock = MockUpstream::start().await;
    let layer = layer(None).await;
    let one = client_with(&layer, config(&mock, "sk-key-one"), 0).0;
    let two = client_with(&layer, config(&mock, "sk-key-two"), 0).0;
    let org_a = client_with(&layer, config(&mock, "sk-key-one").with_org_id("org-a"), 0).0;
    let org_b = client_with(&layer, config(&mock, "sk-key-one").with_org_id("org-b"), 0).0;
    let proj = client_with(
        &layer,
        config(&mock, "sk-key-one").with_project_id("proj-x"),
        0,
    )
    .0;
    for (i, c) in [&one, &two, &org_a, &org_b, &proj].into_iter().enumerate() {
        c.chat().create(chat("same question")).await.unwrap();
        assert_eq!(mock.calls(), i + 1, "client {i} got its own answer");
    }
    one.chat().create(chat("same question")).await.unwrap();
    assert_eq!(mock.calls(), 5, "the first key's answer is still its own");
    // No key, organization or project reached a Redis key or a log: only its digest did.

    let shared = AsyncOpenAiLayer::builder(LlmCache::builder())
        .share_across_credentials(true)
        .build()
        .await
        .unwrap();
    let a = client_with(&shared, config(&mock, "sk-key-one"), 0).0;
    let b = client_with(&shared, config(&mock, "sk-key-two"), 0).0;
    a.chat().create(chat("shared")).await.unwrap();
    b.chat().create(chat("shared")).await.unwrap();
    assert_eq!(
        mock.calls(),
        6,
        "configured to share: one call for both keys"
    );
}

/// Behind an API gateway the key travels in a header of the gateway's own: clients that
/// differ only there never share an answer (issue 25, defect 4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_and_configured_credential_headers_keep_answers_apart() {
    let mock = MockUpstream::start().await;
    let gateway = AsyncOpenAiLayer::builder(LlmCache::builder())
        .credential_header("X-Tenant-Pass")
        .build()
        .await
        .unwrap();
    let mut calls = 0;
    for name in [
        "ocp-apim-subscription-key",
        "x-goog-api-key",
        "x-tenant-pass",
    ] {
        let with = |value: &str| {
            let config = config(&mock, "sk-same-key")
                .with_header(name, value)
                .unwrap();
            client_with(&gateway, config, 0).0
        };
        let (one, two, one_again) = (with("gw-one"), with("gw-two"), with("gw-one"));
        let prompt = format!("behind a gateway: {name}");
        one.chat().create(chat(&prompt)).await.unwrap();
        two.chat().create(chat(&prompt)).await.unwrap();
        calls += 2;
        assert_eq!(mock.calls(), calls, "{name}: two values, two answers");
        one_again.chat().create(chat(&prompt)).await.unwrap();
        assert_eq!(mock.calls(), calls, "{name}: the same value shares");
    }
    // Without the configured name, that header is no credential: one answer.
    let plain = layer(None).await;
    let with = |value: &str| {
        let config = config(&mock, "sk-same-key")
            .with_header("x-tenant-pass", value)
            .unwrap();
        client_with(&plain, config, 0).0
    };
    with("a").chat().create(chat("unconfigured")).await.unwrap();
    with("b").chat().create(chat("unconfigured")).await.unwrap();
    assert_eq!(mock.calls(), calls + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_errors_reach_the_caller_as_async_openai_errors_and_are_not_cached() {
    let mock = MockUpstream::start().await;
    let layer = layer(None).await;
    let (client, _) = client(&layer, &mock);

    mock.push_reply(MockReply::openai_error(500, "mock: upstream broke"));
    match client.chat().create(chat("fails")).await {
        Err(OpenAIError::ApiError(e)) => {
            assert_eq!(e.status_code.as_u16(), 500);
            assert!(e.api_error.message.contains("upstream broke"), "{e:?}");
        }
        other => panic!("expected the upstream's 500: {other:?}"),
    }
    // Not cached: the next identical call reaches the upstream and succeeds.
    client.chat().create(chat("fails")).await.unwrap();
    assert_eq!(mock.calls(), 2);

    // A 429, with async-openai's retry layer inside the cache: retried there, then given up.
    let (retrying, _) = client_with(&layer, config(&mock, "sk-test-one"), 1);
    mock.push_reply(MockReply::rate_limited("0"));
    mock.push_reply(MockReply::rate_limited("0"));
    match retrying.chat().create(chat("rate limited")).await {
        Err(OpenAIError::ApiError(e)) => assert_eq!(e.status_code.as_u16(), 429),
        other => panic!("expected the upstream's 429: {other:?}"),
    }
    assert_eq!(mock.calls(), 4, "one retry inside the cache layer");
    retrying.chat().create(chat("rate limited")).await.unwrap();
    assert_eq!(mock.calls(), 5, "the 429 was not cached");

    // A stream refused before its first chunk: the caller's `create_stream` fails so.
    let mut streamed = chat("streamed failure");
    streamed.stream = Some(true);
    mock.push_reply(MockReply::openai_error(500, "mock: no stream"));
    match client.chat().create_stream(streamed.clone()).await {
        Err(OpenAIError::ApiError(e)) => assert_eq!(e.status_code.as_u16(), 500),
        Err(other) => panic!("expected the upstream's 500: {other:?}"),
        Ok(_) => panic!("expected the upstream's 500, got a stream"),
    }
    // A stream cut in the middle: the caller sees the cut, nothing is stored.
    mock.push_reply(MockReply::StreamCut { after: 2 });
    let mut cut = client.chat().create_stream(streamed.clone()).await.unwrap();
    let mut failed = false;
    while let Some(chunk) = cut.next().await {
        failed |= chunk.is_err();
    }
    assert!(failed, "the cut reached the caller");
    let calls = mock.calls();
    let mut whole = client.chat().create_stream(streamed).await.unwrap();
    while let Some(chunk) = whole.next().await {
        chunk.expect("the next stream is whole");
    }
    assert_eq!(mock.calls(), calls + 1, "the cut stream was not stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_models_and_deletes_pass_through_byte_for_byte() {
    use async_openai::types::files::{CreateFileRequest, FileInput, FilePurpose};
    let mock = MockUpstream::start().await;
    let layer = layer(None).await;
    let (client, _) = client(&layer, &mock);

    let content: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    for round in 1..=2 {
        let upload = CreateFileRequest {
            file: FileInput::from_vec_u8("upload.bin".into(), content.clone()),
            purpose: FilePurpose::Assistants,
            expires_after: None,
        };
        let file = client.files().create(upload).await.unwrap();
        let sent = mock.last_request().unwrap();
        assert_eq!(sent.path, "/v1/files");
        assert!(
            sent.header("content-type")
                .unwrap()
                .starts_with("multipart/form-data")
        );
        let raw = &sent.raw;
        assert!(
            raw.windows(content.len()).any(|w| w == &content[..]),
            "the file's bytes arrived unchanged"
        );
        assert_eq!(mock.calls_to("/v1/files"), round);
        assert_eq!(file.id, format!("file-{}", mock.calls()));

        client.models().list().await.unwrap();
        assert_eq!(
            mock.calls_to("/v1/models"),
            round,
            "GET /models never cached"
        );
        client.files().delete(&file.id).await.unwrap();
        let sent = mock.last_request().unwrap();
        assert_eq!(sent.method, "DELETE");
        assert!(sent.raw.is_empty());
    }
    assert!(
        mock.requests()
            .iter()
            .all(|r| r.header("authorization") == Some("Bearer sk-test-one")),
        "credentials forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_and_responses_are_cached_and_replayed() {
    use async_openai::types::embeddings::CreateEmbeddingRequest;
    use async_openai::types::responses::CreateResponse;
    let mock = MockUpstream::start().await;
    let layer = layer(None).await;
    let (client, seen) = client(&layer, &mock);

    let embed: CreateEmbeddingRequest =
        serde_json::from_value(json!({"model": "text-embedding-3-small", "input": ["a", "b"]}))
            .unwrap();
    let first = client.embeddings().create(embed.clone()).await.unwrap();
    let second = client.embeddings().create(embed).await.unwrap();
    assert_eq!(last(&seen), "hit-l1");
    assert_eq!(first.data.len(), 2);
    let (first, second) = (
        serde_json::to_value(&first).unwrap(),
        serde_json::to_value(&second).unwrap(),
    );
    assert_eq!(first["data"], second["data"]);
    assert_eq!(first["model"], second["model"]);
    // usage says what each call was charged: nothing for the second.
    assert_eq!(first["usage"]["prompt_tokens"], 2);
    assert_eq!(second["usage"]["prompt_tokens"], 0);
    assert_eq!(mock.calls_to("/v1/embeddings"), 1);

    let ask: CreateResponse =
        serde_json::from_value(json!({"model": "gpt-4.1-mini", "input": "hi there"})).unwrap();
    let r1 = client.responses().create(ask.clone()).await.unwrap();
    let r2 = client.responses().create(ask.clone()).await.unwrap();
    assert_eq!(r1.id, r2.id);
    assert_eq!(mock.calls_to("/v1/responses"), 1);
    // previous_response_id is part of the key.
    let follow: CreateResponse = serde_json::from_value(
        json!({"model": "gpt-4.1-mini", "input": "hi there", "previous_response_id": r1.id}),
    )
    .unwrap();
    client.responses().create(follow).await.unwrap();
    assert_eq!(mock.calls_to("/v1/responses"), 2);
    // A conversation depends on server state: never cached.
    let in_conv: CreateResponse = serde_json::from_value(
        json!({"model": "gpt-4.1-mini", "input": "hi there", "conversation": "conv_1"}),
    )
    .unwrap();
    client.responses().create(in_conv.clone()).await.unwrap();
    client.responses().create(in_conv).await.unwrap();
    assert_eq!(mock.calls_to("/v1/responses"), 4);

    // A Responses stream: its typed events stored and replayed as they came.
    let events = |request: CreateResponse| {
        let client = client.clone();
        async move {
            let mut request = request;
            request.stream = Some(true);
            let mut stream = client.responses().create_stream(request).await.unwrap();
            let mut seen = Vec::new();
            while let Some(event) = stream.next().await {
                seen.push(serde_json::to_value(event.expect("an event")).unwrap());
            }
            seen
        }
    };
    let live = events(ask.clone()).await;
    let replayed = events(ask).await;
    assert_eq!(live.len(), 2);
    assert_eq!(live, replayed);
    assert_eq!(mock.calls_to("/v1/responses"), 5);
    assert_eq!(last(&seen), "hit-l1");
    // Responses only: embeddings are counted by `embedding_stats`.
    assert!(layer.body_stats().l1_hits >= 2, "{:?}", layer.body_stats());
    assert_eq!(layer.cache().embedding_stats().hits_l1, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_headers_steer_the_cache_and_are_not_forwarded() {
    let mock = MockUpstream::start().await;
    let layer = layer(None).await;
    let (client, seen) = client(&layer, &mock);
    let with = |name: &'static str, value: &'static str| {
        let client = client.clone();
        async move {
            client
                .chat()
                .header(name, value)
                .unwrap()
                .create(chat("steered"))
                .await
        }
    };
    with("x-llm-cache-namespace", "tenant-a").await.unwrap();
    with("x-llm-cache-namespace", "tenant-b").await.unwrap();
    assert_eq!(mock.calls(), 2, "namespaces never share");
    with("x-llm-cache-namespace", "tenant-a").await.unwrap();
    assert_eq!((mock.calls(), last(&seen).as_str()), (2, "hit-l1"));
    with("x-llm-cache-control", "bypass").await.unwrap();
    assert_eq!((mock.calls(), last(&seen).as_str()), (3, "bypass"));
    with("x-llm-cache-control", "refresh").await.unwrap();
    assert_eq!((mock.calls(), last(&seen).as_str()), (4, "miss"));
    assert!(
        mock.requests().iter().all(|r| r
            .headers
            .keys()
            .all(|k| !k.as_str().starts_with("x-llm-cache"))),
        "control headers are stripped"
    );
    // `semantic` is understood; on a cache built without a semantic index it changes
    // nothing (the exact entry answers). An unknown directive is refused, named.
    with("x-llm-cache-control", "semantic").await.unwrap();
    assert_eq!((mock.calls(), last(&seen).as_str()), (4, "hit-l1"));
    match with("x-llm-cache-control", "cache-everything").await {
        Err(OpenAIError::InvalidArgument(why)) => {
            assert!(why.contains("cache-everything"), "{why}")
        }
        other => panic!("an unknown directive must be refused: {other:?}"),
    }
    assert!(matches!(
        with("x-llm-cache-ttl", "soon").await,
        Err(OpenAIError::InvalidArgument(_))
    ));
    assert_eq!(mock.calls(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn responses_streams_share_one_upstream_stream_and_incomplete_ones_are_not_stored() {
    use async_openai::types::responses::CreateResponse;
    let mock = MockUpstream::start().await;
    let layer = layer(None).await;
    let (client, seen) = client(&layer, &mock);
    let events = |input: &'static str| {
        let client = client.clone();
        async move {
            let request: CreateResponse = serde_json::from_value(
                json!({"model": "gpt-4.1-mini", "input": input, "stream": true}),
            )
            .unwrap();
            let mut stream = client.responses().create_stream(request).await.unwrap();
            let mut out = Vec::new();
            while let Some(event) = stream.next().await {
                out.push(serde_json::to_value(event.expect("an event")).unwrap());
            }
            out
        }
    };
    mock.hold_answers();
    let streams: Vec<_> = (0..20).map(|_| tokio::spawn(events("together"))).collect();
    mock.wait_for_calls(1).await;
    mock.release_all();
    let mut all = Vec::new();
    for s in streams {
        all.push(s.await.unwrap());
    }
    assert_eq!(all[0].len(), 2);
    all.dedup();
    assert_eq!(all.len(), 1, "every stream got the same events");
    assert_eq!(
        mock.calls_to("/v1/responses"),
        1,
        "20 streams, one upstream stream"
    );

    // A stream that ends with `response.failed` reaches the caller as it came, unstored.
    let failed = json!({"type": "response.failed", "sequence_number": 0, "response":
        {"id": "resp_f", "object": "response", "created_at": 0, "model": "gpt-4.1-mini",
         "status": "failed", "output": []}});
    mock.push_reply(MockReply::Sse(format!(
        "event: response.failed\ndata: {failed}\n\n"
    )));
    let got = events("fails").await;
    assert_eq!(got, vec![failed]);
    assert_eq!(last(&seen), "miss");
    let again = events("fails").await;
    assert_eq!(
        again.len(),
        2,
        "the next call reached the upstream: {again:?}"
    );
    assert_eq!(mock.calls_to("/v1/responses"), 3);
}

/// The layer builds the caller's request once to look at it and hands that build to the
/// inner service: an upload is not built twice; a retry inside still rebuilds.
#[tokio::test]
async fn the_request_is_built_once_unless_an_inner_retry_rebuilds_it() {
    use async_openai::middleware::HttpRequestFactory;
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    use tower::{Layer, ServiceExt};
    let mock = MockUpstream::start().await;
    let layer = layer(None).await;
    let builds = Arc::new(AtomicUsize::new(0));
    let factory = |url: String| {
        let builds = Arc::clone(&builds);
        HttpRequestFactory::new(move || {
            builds.fetch_add(1, SeqCst);
            let url = url.clone();
            async move { Ok(reqwest::Client::new().get(url).build()?) }
        })
    };
    let plain = layer.layer(ReqwestService::new(reqwest::Client::new()));
    let models = format!("{}/models", mock.base_url());
    let response = plain
        .clone()
        .oneshot(factory(models.clone()))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        builds.load(SeqCst),
        1,
        "built once, not once to look and once to send"
    );

    let retrying =
        layer.layer(OpenAIRetryLayer::new(1).layer(ReqwestService::new(reqwest::Client::new())));
    mock.push_reply(MockReply::status(500));
    let response = retrying.oneshot(factory(models)).await.unwrap();
    assert_eq!(response.status(), 200, "the retry got the second answer");
    assert_eq!(builds.load(SeqCst), 3, "the retry rebuilt the request");
}

/// The child side of [`a_second_process_sharing_redis_gets_an_l2_hit`].
#[test]
fn child_process_client() {
    let (Ok(redis_url), Ok(base)) = (
        std::env::var("LLM_CACHE_CHILD_REDIS"),
        std::env::var("LLM_CACHE_CHILD_UPSTREAM"),
    ) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async move {
        let layer = AsyncOpenAiLayer::build(LlmCache::builder().redis(redis_url))
            .await
            .unwrap();
        let config = OpenAIConfig::new()
            .with_api_base(base)
            .with_api_key("sk-test-one");
        let (client, seen) = client_with(&layer, config, 0);
        let answer: CreateChatCompletionResponse = client
            .chat()
            .create(chat("across processes"))
            .await
            .unwrap();
        println!("child: {} {}", last(&seen), answer.id);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_sharing_redis_gets_an_l2_hit() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let layer = layer(Some(&redis)).await;
    let (client, _) = client(&layer, &mock);
    let answer = client
        .chat()
        .create(chat("across processes"))
        .await
        .unwrap();
    // The L2 write is in the background: wait until Redis holds the entry.
    let entries = || {
        let mut c = redis::Client::open(redis.url())
            .unwrap()
            .get_connection()
            .unwrap();
        redis::cmd("DBSIZE").query::<u64>(&mut c).unwrap()
    };
    support::eventually("the entry in Redis", WAIT, || entries() > 0).await;

    let exe = std::env::current_exe().unwrap();
    let mut child = tokio::process::Command::new(exe)
        .args([
            "--exact",
            "layer::child_process_client",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("LLM_CACHE_CHILD_REDIS", redis.url())
        .env("LLM_CACHE_CHILD_UPSTREAM", mock.base_url())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            // libtest prints the test's name on the same line first.
            if let Some(at) = line.find("child: ") {
                return line[at + "child: ".len()..].to_string();
            }
        }
        panic!("the child printed no answer");
    })
    .await
    .unwrap();
    assert_eq!(line, format!("hit-l2 {}", answer.id));
    assert!(child.wait().await.unwrap().success());
    assert_eq!(mock.calls(), 1);
}

/// Not through the layer: `LlmCache` as a tower service, and a tower service as its upstream.
#[tokio::test]
async fn llm_cache_is_a_tower_service_and_takes_one_as_upstream() {
    use llm_cache::{ChatMessage, ChatRequest, ChatResponse, Choice, TowerUpstream};
    use tower::{Service, ServiceExt};
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let echo = tower::service_fn(move |r: ChatRequest| {
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            Ok::<_, llm_cache::Error>(ChatResponse {
                choices: vec![Choice {
                    message: ChatMessage::assistant(r.messages[0].text().unwrap_or_default()),
                    ..Default::default()
                }],
                ..Default::default()
            })
        }
    });
    let mut cache = LlmCache::builder()
        .upstream(TowerUpstream::new(echo))
        .build()
        .await
        .unwrap();
    let ask = ChatRequest::new("m").message(ChatMessage::user("echo"));
    let first = cache
        .ready()
        .await
        .unwrap()
        .call(ask.clone())
        .await
        .unwrap();
    let limited = tower::ServiceBuilder::new()
        .concurrency_limit(1)
        .service(cache.clone());
    let second = limited.oneshot(ask).await.unwrap();
    assert_eq!(first.text().as_deref(), Some("echo"));
    assert_eq!(second.status(), llm_cache::CacheStatus::HitL1);
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    let _: Value = json!(null);
}

/// A replayed chat stream says how old its answer is (`age`), as a JSON answer does; a
/// stream fetched now says 0.
#[tokio::test]
async fn a_replayed_stream_carries_its_age() {
    let mock = MockUpstream::start().await;
    let layer = layer(None).await;
    /// `x-llm-cache` and `age` of each response.
    type Headers = Vec<(String, Option<String>)>;
    let seen: Arc<Mutex<Headers>> = Arc::default();
    let record = Arc::clone(&seen);
    let service = ServiceBuilder::new()
        .map_response(move |r: reqwest::Response| {
            let header = |name: &str| {
                r.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let status = header("x-llm-cache").unwrap_or_default();
            record.lock().unwrap().push((status, header("age")));
            r
        })
        .layer(layer.clone())
        .service(ReqwestService::new(reqwest::Client::new()));
    let client = Client::with_config(config(&mock, "sk-test-one")).with_http_service(service);
    for _ in 0..2 {
        let mut request = chat("how old is this stream");
        request.stream = Some(true);
        let mut stream = client.chat().create_stream(request).await.unwrap();
        while let Some(chunk) = stream.next().await {
            chunk.expect("a chunk");
        }
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen[0], ("miss".to_owned(), Some("0".to_owned())));
    assert_eq!(seen[1].0, "hit-l1");
    let age: u64 = seen[1]
        .1
        .as_deref()
        .expect("an age header")
        .parse()
        .unwrap();
    assert!(age < 3_600, "{age}");
    assert_eq!(mock.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_go_input_by_input_through_the_layer() {
    use async_openai::types::embeddings::CreateEmbeddingRequest;
    use support::embeddings::{DEFAULT_DIMS, expected_embedding};
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let layer = layer(Some(&redis)).await;
    let (client, seen) = client(&layer, &mock);
    let embed = |inputs: Value| -> CreateEmbeddingRequest {
        serde_json::from_value(json!({"model": "text-embedding-3-small", "input": inputs})).unwrap()
    };
    client
        .embeddings()
        .create(embed(json!(["a", "b"])))
        .await
        .unwrap();
    assert_eq!(last(&seen), "miss");
    let out = client
        .embeddings()
        .create(embed(json!(["c", "b", "a", "c"])))
        .await
        .unwrap();
    assert_eq!(last(&seen), "partial");
    let calls = mock.embedding_calls();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[1],
        vec![json!("c")],
        "only the new input went upstream"
    );
    for (i, text) in ["c", "b", "a", "c"].iter().enumerate() {
        assert_eq!(out.data[i].index as usize, i);
        assert_eq!(
            out.data[i].embedding,
            expected_embedding(&json!(text), DEFAULT_DIMS),
            "input {i}"
        );
    }
    // The layer asked the upstream for base64 and the caller still got floats; a base64
    // caller gets the same values from the same entries.
    assert_eq!(mock.requests()[1].body["encoding_format"], "base64");
    let mut base64_request = embed(json!(["a", "b"]));
    base64_request.encoding_format = Some(async_openai::types::embeddings::EncodingFormat::Base64);
    let b64 = client
        .embeddings()
        .create_base64(base64_request)
        .await
        .unwrap();
    assert_eq!(last(&seen), "hit-l1");
    let decoded: Vec<f32> = b64.data[0].embedding.clone().into();
    assert_eq!(decoded, expected_embedding(&json!("a"), DEFAULT_DIMS));
    // Another API key is another credential scope: nothing shared.
    let (other, other_seen) = client_with(&layer, config(&mock, "sk-test-two"), 0);
    other
        .embeddings()
        .create(embed(json!(["a"])))
        .await
        .unwrap();
    assert_eq!(last(&other_seen), "miss");
    assert_eq!(mock.embedding_calls().len(), 3);
    let stats = layer.cache().embedding_stats();
    assert_eq!((stats.upstream_calls, stats.upstream_inputs), (3, 4));
}

/// `x-llm-cache-control: semantic` through the layer: a paraphrase of an answered question
/// is a semantic hit (`hit-semantic`), and without the directive it is an exact miss. The
/// embeddings come from the builder's own upstream (the mock, with a bag-of-words
/// embedder that is blind to case and punctuation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_semantic_directive_reaches_the_cache() {
    use llm_cache::{OpenAiCompatible, RetryPolicy, SemanticConfig};
    let mock = MockUpstream::start().await;
    mock.set_embedder(|text| support::bow::bag_of_words(text, 512));
    let builder = LlmCache::builder()
        .upstream(OpenAiCompatible::new(mock.base_url()).retry(RetryPolicy::none()))
        .semantic(SemanticConfig::new("text-embedding-test"));
    let layer = AsyncOpenAiLayer::build(builder).await.unwrap();
    let (client, seen) = client(&layer, &mock);
    let mut semantic = reqwest::header::HeaderMap::new();
    semantic.insert("x-llm-cache-control", "semantic".parse().unwrap());
    client
        .chat()
        .headers(semantic.clone())
        .create(chat("How do I reset my password?"))
        .await
        .unwrap();
    assert_eq!(last(&seen), "miss");
    support::eventually("the answer indexed", WAIT, || {
        layer.cache().stats().semantic.indexed == 1
    })
    .await;
    let out = client
        .chat()
        .headers(semantic)
        .create(chat("Hi, how do I reset my password"))
        .await
        .unwrap();
    assert_eq!(last(&seen), "hit-semantic");
    assert!(
        out.choices[0]
            .message
            .content
            .as_deref()
            .unwrap()
            .contains("How do I reset my password?"),
        "the first question's answer"
    );
    client
        .chat()
        .create(chat("Hi, how do I reset my password"))
        .await
        .unwrap();
    assert_eq!(last(&seen), "miss", "no directive: exact only");
}

/// One upstream: a layer's cache built without an upstream of its own embeds its semantic
/// lookups through the layer's route with `SemanticConfig::embed_via_route` (the client's
/// base URL and key, at `/embeddings` beside `/chat/completions`). Without the option
/// it has nothing to embed with: the lookup is skipped (`ineligible`), an exact miss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_semantic_lookup_embeds_through_the_layers_route() {
    use llm_cache::SemanticConfig;
    let mock = MockUpstream::start().await;
    mock.set_embedder(|text| support::bow::bag_of_words(text, 512));
    let mut semantic = reqwest::header::HeaderMap::new();
    semantic.insert("x-llm-cache-control", "semantic".parse().unwrap());
    for via_route in [true, false] {
        let builder = LlmCache::builder()
            .semantic(SemanticConfig::new("text-embedding-test").embed_via_route(via_route));
        let layer = AsyncOpenAiLayer::build(builder).await.unwrap();
        let (client, seen) = client(&layer, &mock);
        let ask = |prompt: &'static str| {
            let (client, semantic) = (client.clone(), semantic.clone());
            async move {
                client
                    .chat()
                    .headers(semantic)
                    .create(chat(prompt))
                    .await
                    .unwrap()
            }
        };
        ask("How do I reset my password?").await;
        assert_eq!(last(&seen), "miss");
        if !via_route {
            ask("Hi, how do I reset my password").await;
            assert_eq!(last(&seen), "miss", "nothing to embed with");
            assert_eq!(layer.cache().stats().semantic.ineligible, 2);
            continue;
        }
        support::eventually("the answer indexed", WAIT, || {
            layer.cache().stats().semantic.indexed == 1
        })
        .await;
        ask("Hi, how do I reset my password").await;
        assert_eq!(last(&seen), "hit-semantic");
        let embeds: Vec<_> = mock
            .requests()
            .into_iter()
            .filter(|r| r.path == "/v1/embeddings")
            .collect();
        assert_eq!(
            embeds.len(),
            2,
            "each prompt embedded once, through the layer"
        );
        for r in &embeds {
            assert_eq!(r.header("authorization"), Some("Bearer sk-test-one"));
            assert!(
                r.headers
                    .keys()
                    .all(|k| !k.as_str().starts_with("x-llm-cache"))
            );
            assert_eq!(r.body["model"], "text-embedding-test");
        }
    }
}

/// An upstream nobody listens on: the error the caller gets keeps its cause ("connection
/// refused"), not only reqwest's "error sending request" (issue 25, defect 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_error_keeps_its_cause() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let layer = layer(None).await;
    let config = OpenAIConfig::new()
        .with_api_base(format!("http://127.0.0.1:{port}/v1"))
        .with_api_key("sk-test-one");
    let (client, _) = client_with(&layer, config, 0);
    let e = client.chat().create(chat("nobody home")).await.unwrap_err();
    let shown = e.to_string().to_lowercase();
    assert!(shown.contains("refused"), "{shown}");
    assert!(!shown.contains("sk-test-one"), "{shown}");
}
