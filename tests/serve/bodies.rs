//! `POST /v1/responses` and `POST /v1/completions` through the front (issue 25, item 6):
//! answers stored as they came and replayed byte for byte, `previous_response_id` in the
//! key, server-state requests passed through, incomplete answers never stored, and the
//! async-openai layer's keys (a body it stored is a hit here). Also the checks the Python
//! and Node SDK tests share.

use crate::front::{self, PROVIDER_KEY};
use crate::sdk::Sdk;
use crate::support::served::Served;
use crate::support::upstream::{MockReply, MockUpstream};
use serde_json::{Value, json};

const KEY_A1: &str = "sk-caller-a1-0123456789";

/// POST `body` (raw bytes) to the front's `/v1/{path}` as team-a's first caller.
async fn post_raw(front: &Served, path: &str, body: Vec<u8>) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}/{path}", front.v1()))
        .bearer_auth(KEY_A1)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

async fn post(front: &Served, path: &str, body: &Value) -> reqwest::Response {
    post_raw(front, path, serde_json::to_vec(body).unwrap()).await
}

/// The `x-llm-cache` header and the body's bytes.
async fn said(response: reqwest::Response) -> (String, String) {
    assert_eq!(response.status(), 200);
    let status = response.headers()["x-llm-cache"].to_str().unwrap().into();
    (status, response.text().await.unwrap())
}

fn ask(input: &str) -> Value {
    json!({"model": "gpt-4.1-mini", "input": input})
}

#[tokio::test]
async fn a_responses_answer_is_replayed_byte_for_byte_and_previous_response_id_is_in_the_key() {
    let mock = MockUpstream::start().await;
    let (_cache, front) = front::keyed(&mock, None).await;
    let first = post(&front, "responses", &ask("json")).await;
    assert_eq!(first.headers()["age"], "0");
    let (status, miss) = said(first).await;
    assert_eq!(status, "miss");
    // Another key order and spacing is the same question.
    let respelled = br#"{ "input": "json",  "model": "gpt-4.1-mini" }"#.to_vec();
    let (status, hit) = said(post_raw(&front, "responses", respelled).await).await;
    assert_eq!((status.as_str(), hit.as_str()), ("hit-l1", miss.as_str()));
    assert_eq!(mock.calls_to("/v1/responses"), 1);
    let sent = mock.last_request().unwrap();
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Bearer {PROVIDER_KEY}").as_str())
    );

    let follow =
        |id: &str| json!({"model": "gpt-4.1-mini", "input": "json", "previous_response_id": id});
    for (id, expected) in [("resp_a", "miss"), ("resp_b", "miss"), ("resp_a", "hit-l1")] {
        let (status, _) = said(post(&front, "responses", &follow(id)).await).await;
        assert_eq!(status, expected, "{id}");
    }
    assert_eq!(mock.calls_to("/v1/responses"), 3);

    // Another namespace's key shares nothing; a directive needs the key's permission.
    let other = reqwest::Client::new()
        .post(format!("{}/responses", front.v1()))
        .bearer_auth("sk-caller-b1-0123456789")
        .json(&ask("json"))
        .send()
        .await
        .unwrap();
    assert_eq!(said(other).await.0, "miss");
    let refresh = reqwest::Client::new()
        .post(format!("{}/responses", front.v1()))
        .bearer_auth(KEY_A1)
        .header("x-llm-cache-control", "refresh")
        .json(&ask("json"))
        .send()
        .await
        .unwrap();
    assert_eq!(refresh.status(), 403);
    assert_eq!(mock.calls_to("/v1/responses"), 4);
}

#[tokio::test]
async fn a_responses_stream_is_replayed_byte_for_byte_and_an_incomplete_one_is_not_stored() {
    let mock = MockUpstream::start().await;
    let (_cache, front) = front::keyed(&mock, None).await;
    let mut body = ask("streamed");
    body["stream"] = json!(true);
    let live = post(&front, "responses", &body).await;
    assert_eq!(live.headers()["content-type"], "text/event-stream");
    let (status, live) = said(live).await;
    assert_eq!(status, "miss");
    assert!(live.contains("event: response.completed"), "{live}");
    let (status, replay) = said(post(&front, "responses", &body).await).await;
    assert_eq!(
        (status.as_str(), replay.as_str()),
        ("hit-l1", live.as_str())
    );
    assert_eq!(mock.calls_to("/v1/responses"), 1);

    // Cut before `response.completed`: handed on as it came, never stored.
    let cut = "event: response.created\ndata: {\"type\":\"response.created\"}\n\n";
    body["input"] = json!("cut");
    for _ in 0..2 {
        mock.push_reply(MockReply::Sse(cut.into()));
        let (status, text) = said(post(&front, "responses", &body).await).await;
        assert_eq!((status.as_str(), text.as_str()), ("miss", cut));
    }
    // A JSON answer that is not `completed` neither.
    let incomplete = json!({"id": "resp_x", "object": "response", "status": "incomplete"});
    for _ in 0..2 {
        mock.push_reply(MockReply::Body(incomplete.to_string()));
        let (status, text) = said(post(&front, "responses", &ask("incomplete")).await).await;
        assert_eq!(status, "miss");
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), incomplete);
    }
    assert_eq!(mock.calls_to("/v1/responses"), 5);
}

#[tokio::test]
async fn background_and_conversation_requests_pass_through_uncached() {
    let mock = MockUpstream::start().await;
    let (_cache, front) = front::keyed(&mock, None).await;
    let background = json!({"model": "gpt-4.1-mini", "input": "later", "background": true});
    let conversation = json!({"model": "gpt-4.1-mini", "input": "more", "conversation": "conv_1"});
    for body in [&background, &background, &conversation, &conversation] {
        let (status, text) = said(post(&front, "responses", body).await).await;
        assert_eq!(status, "bypass");
        assert!(text.contains("resp_mock_"), "{text}");
    }
    assert_eq!(mock.calls_to("/v1/responses"), 4, "every one went upstream");
    // Errors keep the front's shapes: a body that is no JSON object is a 400.
    let bad = post_raw(&front, "responses", b"[1, 2]".to_vec()).await;
    assert_eq!(bad.status(), 400);
    let e: Value = bad.json().await.unwrap();
    assert_eq!(e["error"]["code"], "invalid_request", "{e}");
    assert_eq!(mock.calls_to("/v1/responses"), 4);
}

#[tokio::test]
async fn completions_are_cached_json_and_streamed() {
    let mock = MockUpstream::start().await;
    let (_cache, front) = front::keyed(&mock, None).await;
    let mut body =
        json!({"model": "gpt-3.5-turbo-instruct", "prompt": "complete me", "max_tokens": 8});
    let (status, miss) = said(post(&front, "completions", &body).await).await;
    assert_eq!(status, "miss");
    let answer: Value = serde_json::from_str(&miss).unwrap();
    assert!(answer["choices"][0]["text"].is_string(), "{answer}");
    let (status, hit) = said(post(&front, "completions", &body).await).await;
    assert_eq!((status.as_str(), hit.as_str()), ("hit-l1", miss.as_str()));

    body["stream"] = json!(true);
    let (status, live) = said(post(&front, "completions", &body).await).await;
    assert_eq!(status, "miss");
    assert!(live.trim_end().ends_with("data: [DONE]"), "{live}");
    let (status, replay) = said(post(&front, "completions", &body).await).await;
    assert_eq!(
        (status.as_str(), replay.as_str()),
        ("hit-l1", live.as_str())
    );
    // The miss asked for usage (the key ignores `stream_options`): a caller who asks gets
    // the usage chunk, one who did not never sees it.
    let sent = &mock.last_request().unwrap().body;
    assert_eq!(sent["stream_options"]["include_usage"], true, "{sent}");
    assert!(!live.contains("\"choices\":[]"), "{live}");
    body["stream_options"] = json!({"include_usage": true});
    let (status, with_usage) = said(post(&front, "completions", &body).await).await;
    assert_eq!(status, "hit-l1");
    assert!(with_usage.contains("\"usage\":{"), "{with_usage}");
    assert_eq!(mock.calls_to("/v1/completions"), 2);
}

/// One key for one request: an answer the async-openai layer stored in Redis is an L2 hit
/// through a front on the same Redis, namespace and provider key.
#[cfg(feature = "async-openai")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_stored_through_the_async_openai_layer_is_a_hit_through_the_front() {
    use async_openai::config::OpenAIConfig;
    use async_openai::types::responses::CreateResponse;
    use llm_cache::async_openai::AsyncOpenAiLayer;

    let redis = crate::support::redis::RedisServer::start();
    let mock = MockUpstream::start().await;
    // team-a: the namespace the front binds KEY_A1 to.
    let layer = AsyncOpenAiLayer::builder(llm_cache::LlmCache::builder().redis(redis.url()))
        .namespace("team-a")
        .build()
        .await
        .unwrap();
    let service = tower::ServiceBuilder::new().layer(layer.clone()).service(
        async_openai::middleware::ReqwestService::new(reqwest::Client::new()),
    );
    let config = OpenAIConfig::new()
        .with_api_base(mock.base_url())
        .with_api_key(PROVIDER_KEY);
    let client = async_openai::Client::with_config(config).with_http_service(service);
    let request: CreateResponse = serde_json::from_value(ask("shared")).unwrap();
    let stored = client.responses().create(request).await.unwrap();
    assert_eq!(mock.calls_to("/v1/responses"), 1);
    // Written to Redis in the background: wait until Redis holds the entry.
    let entries = || {
        let c = redis::Client::open(redis.url()).unwrap();
        let mut c = c.get_connection().unwrap();
        redis::cmd("DBSIZE").query::<u64>(&mut c).unwrap()
    };
    let wait = std::time::Duration::from_secs(20);
    crate::support::eventually("the entry in Redis", wait, || entries() > 0).await;

    let (_cache, front) = front::keyed(&mock, Some(&redis.url())).await;
    // The request exactly as the layer sent it.
    let sent = mock.last_request().unwrap().raw.to_vec();
    let (status, text) = said(post_raw(&front, "responses", sent).await).await;
    assert_eq!(status, "hit-l2");
    let answer: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(answer["id"], json!(stored.id));
    assert_eq!(mock.calls_to("/v1/responses"), 1);
}

/// The SDK scenarios `responses`, `responses_stream` and `completions` (Python and Node
/// alike): each answered from cache the second time, as it came.
pub async fn check_sdk_bodies(sdk: &mut Sdk, mock: &MockUpstream) {
    let before = mock.calls_to("/v1/responses");
    let json = sdk.run("responses", &[]).await;
    assert_eq!(json["statuses"], json!(["miss", "hit-l1"]), "{json}");
    assert_eq!(json["status"], "completed", "{json}");
    let stream = sdk.run("responses_stream", &[]).await;
    assert_eq!(stream["statuses"], json!(["miss", "hit-l1"]), "{stream}");
    assert_eq!(
        stream["types"],
        json!(["response.created", "response.completed"]),
        "{stream}"
    );
    assert_eq!(mock.calls_to("/v1/responses"), before + 2, "one call each");

    let completions = sdk.run("completions", &[]).await;
    assert_eq!(
        completions["statuses"],
        json!(["miss", "hit-l1"]),
        "{completions}"
    );
    assert_eq!(
        completions["stream_statuses"],
        json!(["miss", "hit-l1"]),
        "{completions}"
    );
    assert_eq!(mock.calls_to("/v1/completions"), 2, "one call each");
}
