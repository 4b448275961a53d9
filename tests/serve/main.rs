//! The HTTP front (`llm_cache::serve`) over real HTTP on loopback, against the mock
//! upstream: hits, streams, single-flight, tenants, caller keys and pass-through
//! credentials, the upstream's errors, bad input at the edge, graceful shutdown, the admin
//! routes, and the real async-openai client pointed at it.

mod bodies;
mod dashboard;
mod front;
#[cfg(feature = "prometheus")]
mod metrics_cap;
mod node;
mod ops;
mod python;
mod sdk;

use llm_cache_test_support as support;

use std::sync::{Arc, Mutex, OnceLock};

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::middleware::ReqwestService;
use async_openai::types::chat::CreateChatCompletionRequest;
use front::{CALLER_KEYS, PROVIDER_KEY};
use futures_util::StreamExt;
use llm_cache::{ChatRequest, LlmCache};
use serde_json::{Value, json};
use support::embeddings::{DEFAULT_DIMS, expected_embedding};
use support::served::Served;
use support::upstream::{MockReply, MockUpstream, expected_content};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;

const KEY_A1: &str = "sk-caller-a1-0123456789";
const KEY_A2: &str = "sk-caller-a2-0123456789";
const KEY_B1: &str = "sk-caller-b1-0123456789";
const KEY_ADMIN: &str = "sk-caller-admin-01234567";

fn chat(prompt: &str) -> Value {
    json!({
        "model": "gpt-4.1-mini",
        "messages": [{"role": "system", "content": "Be terse."}, {"role": "user", "content": prompt}],
        "temperature": 0.0
    })
}

fn expected(body: &Value) -> String {
    expected_content(&serde_json::from_value::<ChatRequest>(body.clone()).unwrap())
}

fn streamed(mut body: Value, usage: bool) -> Value {
    body["stream"] = json!(true);
    if usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

/// POST `body` to the front's chat completions as `key` with extra `headers`.
async fn post(
    front: &Served,
    key: Option<&str>,
    body: &Value,
    headers: &[(&str, &str)],
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("{}/chat/completions", front.v1()))
        .json(body);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

fn cache_status(response: &reqwest::Response) -> String {
    response.headers()["x-llm-cache"]
        .to_str()
        .unwrap()
        .to_string()
}

async fn content(response: reqwest::Response) -> String {
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    body["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The text of an SSE answer and its chunks; checks it ends with `[DONE]`.
async fn sse(response: reqwest::Response) -> (String, Vec<Value>) {
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let text = response.text().await.unwrap();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").unwrap())
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"), "{text}");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let said = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    (said, chunks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeats_are_hits_and_streams_replay_the_same_answer() {
    let mock = MockUpstream::start().await;
    let (_cache, front) = front::keyed(&mock, None).await;
    let body = chat("hello");

    let first = post(&front, Some(KEY_A1), &body, &[]).await;
    assert_eq!(cache_status(&first), "miss");
    assert_eq!(first.headers()["age"], "0");
    assert_eq!(content(first).await, expected(&body));
    let again = post(&front, Some(KEY_A1), &body, &[]).await;
    assert_eq!(cache_status(&again), "hit-l1");
    assert_eq!(content(again).await, expected(&body));
    assert_eq!(mock.calls(), 1);
    let sent = mock.last_request().unwrap();
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Bearer {PROVIDER_KEY}").as_str()),
        "the provider key goes upstream, never the caller's"
    );

    // The stream replays the stored answer: same text; usage only when asked for.
    let replay = post(&front, Some(KEY_A1), &streamed(body.clone(), false), &[]).await;
    assert_eq!(cache_status(&replay), "hit-l1");
    let (text, chunks) = sse(replay).await;
    assert_eq!(text, expected(&body));
    assert!(chunks.iter().all(|c| c["usage"].is_null()), "{chunks:?}");
    let (_, chunks) =
        sse(post(&front, Some(KEY_A1), &streamed(body.clone(), true), &[]).await).await;
    assert!(
        chunks.last().unwrap()["usage"]["total_tokens"].is_number(),
        "{chunks:?}"
    );
    assert_eq!(mock.calls(), 1);

    // A streamed miss, then the same question not streamed: one call, the same text.
    let other = chat("streamed first");
    let live = post(&front, Some(KEY_A1), &streamed(other.clone(), false), &[]).await;
    assert_eq!(cache_status(&live), "miss");
    let (text, _) = sse(live).await;
    assert_eq!(text, expected(&other));
    assert_eq!(
        content(post(&front, Some(KEY_A1), &other, &[]).await).await,
        text
    );
    assert_eq!(mock.calls(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_identical_requests_cost_one_upstream_call() {
    let mock = MockUpstream::start().await;
    let (_cache, front) = front::keyed(&mock, None).await;
    let front = Arc::new(front);
    for stream in [false, true] {
        let body = chat(&format!("stampede stream={stream}"));
        let sent = if stream {
            streamed(body.clone(), true)
        } else {
            body.clone()
        };
        mock.hold_answers();
        let calls: Vec<_> = (0..20)
            .map(|_| {
                let (front, sent) = (Arc::clone(&front), sent.clone());
                tokio::spawn(async move { post(&front, Some(KEY_A1), &sent, &[]).await })
            })
            .collect();
        mock.wait_for_calls(if stream { 2 } else { 1 }).await;
        mock.release_all();
        for call in calls {
            let response = call.await.unwrap();
            let text = if stream {
                sse(response).await.0
            } else {
                content(response).await
            };
            assert_eq!(text, expected(&body));
        }
    }
    assert_eq!(mock.calls(), 2, "one upstream call per question");
}

#[tokio::test]
async fn tenants_are_isolated_by_their_keys_namespace() {
    let mock = MockUpstream::start().await;
    let (_cache, front) = front::keyed(&mock, None).await;
    let body = chat("tenant question");
    assert_eq!(
        cache_status(&post(&front, Some(KEY_A1), &body, &[]).await),
        "miss"
    );
    // Another key of the same namespace shares the answer; another namespace does not.
    assert_eq!(
        cache_status(&post(&front, Some(KEY_A2), &body, &[]).await),
        "hit-l1"
    );
    assert_eq!(
        cache_status(&post(&front, Some(KEY_B1), &body, &[]).await),
        "miss"
    );
    // A header namespace nests inside the key's: team-b naming "team-a" reaches nothing.
    let ns = [("x-llm-cache-namespace", "team-a")];
    assert_eq!(
        cache_status(&post(&front, Some(KEY_B1), &body, &ns).await),
        "miss"
    );
    assert_eq!(
        cache_status(&post(&front, Some(KEY_B1), &body, &ns).await),
        "hit-l1"
    );
    assert_eq!(mock.calls(), 3);
    // The control headers never reach the upstream.
    assert!(
        mock.requests()
            .iter()
            .all(|r| r.header("x-llm-cache-namespace").is_none())
    );
}

#[tokio::test]
async fn directives_that_spend_the_budget_need_the_keys_permission() {
    let mock = MockUpstream::start().await;
    let (_cache, front) = front::keyed(&mock, None).await;
    let body = chat("budget");
    post(&front, Some(KEY_ADMIN), &body, &[]).await;
    for directive in ["refresh", "bypass", "no-store"] {
        let refused = post(
            &front,
            Some(KEY_A1),
            &body,
            &[("x-llm-cache-control", directive)],
        )
        .await;
        assert_eq!(refused.status(), 403, "{directive}");
        let e: Value = refused.json().await.unwrap();
        assert_eq!(e["error"]["code"], "directive_not_allowed");
    }
    assert_eq!(mock.calls(), 1);
    let refreshed = post(
        &front,
        Some(KEY_ADMIN),
        &body,
        &[("x-llm-cache-control", "refresh")],
    )
    .await;
    assert_eq!(cache_status(&refreshed), "miss");
    let bypassed = post(
        &front,
        Some(KEY_ADMIN),
        &body,
        &[("x-llm-cache-control", "bypass")],
    )
    .await;
    assert_eq!(cache_status(&bypassed), "bypass");
    assert_eq!(mock.calls(), 3);
}

#[tokio::test]
async fn upstream_errors_keep_their_status_type_code_and_retry_after() {
    let mock = MockUpstream::start().await;
    let (cache, front) = front::keyed(&mock, None).await;
    mock.push_reply(MockReply::rate_limited("7"));
    let limited = post(&front, Some(KEY_A1), &chat("limited"), &[]).await;
    assert_eq!(limited.status(), 429);
    assert_eq!(limited.headers()["retry-after"], "7");
    assert_eq!(limited.headers()["retry-after-ms"], "7000");
    let e: Value = limited.json().await.unwrap();
    assert_eq!(e["error"]["type"], "rate_limit_error");
    assert_eq!(e["error"]["message"], "mock: rate limit reached");
    assert_eq!(
        mock.calls(),
        1,
        "a Retry-After goes back to the caller, not waited out here"
    );

    mock.push_reply(MockReply::Status {
        code: 400,
        body: json!({"error": {"message": "`temperature` must be at most 2", "type": "invalid_request_error",
            "param": "temperature", "code": "invalid_value"}})
        .to_string(),
        retry_after: None,
    });
    let bad = post(&front, Some(KEY_A1), &chat("bad"), &[]).await;
    assert_eq!(bad.status(), 400);
    let e: Value = bad.json().await.unwrap();
    assert_eq!(
        e,
        json!({"error": {"message": "`temperature` must be at most 2", "type": "invalid_request_error",
            "param": "temperature", "code": "invalid_value"}})
    );
    // A provider quoting the key it was sent: the caller never sees the held key.
    mock.push_reply(MockReply::EchoCredential {
        code: 401,
        header: "authorization".into(),
        plain: false,
    });
    let echoed = post(&front, Some(KEY_A1), &chat("echo"), &[]).await;
    assert_eq!(echoed.status(), 401);
    let text = echoed.text().await.unwrap();
    assert!(
        !text.contains(PROVIDER_KEY) && text.contains("***"),
        "{text}"
    );

    // Errors are never stored: the same questions are asked again.
    assert_eq!(
        cache_status(&post(&front, Some(KEY_A1), &chat("limited"), &[]).await),
        "miss"
    );
    assert_eq!(cache.stats().cache.misses, 4);
}

#[tokio::test]
async fn an_error_in_the_middle_of_a_stream_is_an_error_event() {
    let mock = MockUpstream::start().await;
    let (_cache, front) = front::keyed(&mock, None).await;
    mock.push_reply(MockReply::StreamCut { after: 2 });
    let response = post(&front, Some(KEY_A1), &streamed(chat("cut"), false), &[]).await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    let last = text.trim_end().rsplit("\n\n").next().unwrap();
    let event: Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
    assert!(event["error"]["message"].is_string(), "{text}");
    assert!(!text.contains("[DONE]"), "{text}");
    // Not stored.
    let again = post(&front, Some(KEY_A1), &chat("cut"), &[]).await;
    assert_eq!(cache_status(&again), "miss");
}

type Buffer = Arc<Mutex<Vec<u8>>>;

/// Every log line of this test binary, at TRACE (one global subscriber).
fn logs() -> Buffer {
    static LOGS: OnceLock<Buffer> = OnceLock::new();
    Arc::clone(LOGS.get_or_init(|| {
        let buffer = Buffer::default();
        let layer = tracing_subscriber::fmt::layer()
            .with_writer(Sink(Arc::clone(&buffer)))
            .with_ansi(false);
        let subscriber = tracing_subscriber::registry()
            .with(layer)
            .with(tracing_subscriber::filter::LevelFilter::TRACE);
        tracing::subscriber::set_global_default(subscriber).expect("one subscriber");
        buffer
    }))
}

struct Sink(Buffer);

impl std::io::Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Sink {
    type Writer = Sink;
    fn make_writer(&'a self) -> Sink {
        Sink(Arc::clone(&self.0))
    }
}

/// A JSON body under any Content-Type but JSON is refused before anything is read, keyed or
/// paid for: a web page can send such a POST across origins without a preflight (issue 25,
/// defect 2). Chat and embeddings alike; JSON with a charset, or `+json`, is accepted.
#[tokio::test]
async fn a_json_body_under_another_content_type_is_refused_with_415_and_costs_nothing() {
    let redis = support::redis::RedisServer::start();
    let mock = MockUpstream::start().await;
    let (cache, front) = front::keyed(&mock, Some(&redis.url())).await;
    let bodies = [
        (
            "chat/completions",
            serde_json::to_vec(&chat("csrf")).unwrap(),
        ),
        (
            "embeddings",
            serde_json::to_vec(&json!({"model": "text-embedding-3-small", "input": ["csrf"]}))
                .unwrap(),
        ),
        ("responses", br#"{"model": "m", "input": "csrf"}"#.to_vec()),
        (
            "completions",
            br#"{"model": "m", "prompt": "csrf"}"#.to_vec(),
        ),
    ];
    let types = [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("text/html"),
        Some("application/xml"),
        Some("multipart/form-data; boundary=x"),
        Some("application/jsonx"),
        None,
    ];
    for (path, body) in &bodies {
        for content_type in types {
            let mut r = reqwest::Client::new()
                .post(format!("{}/{path}", front.v1()))
                .bearer_auth(KEY_A1)
                .body(body.clone());
            if let Some(t) = content_type {
                r = r.header("content-type", t);
            }
            let r = r.send().await.unwrap();
            assert_eq!(r.status().as_u16(), 415, "{path} {content_type:?}");
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "unsupported_media_type", "{body}");
            assert_eq!(body["error"]["type"], "invalid_request_error", "{body}");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains("application/json"), "{message}");
        }
    }
    assert_eq!(mock.calls(), 0, "nothing reached the upstream");
    let stats = cache.stats();
    assert_eq!(stats.upstream_calls, 0);
    assert_eq!(stats.cache.misses, 0);
    assert_eq!(stats.cache.l1_entries, 0, "nothing stored in L1");
    assert_eq!(stats.cache.l2_writes, 0, "nothing written to Redis");
    // JSON with a charset, and a `+json` type, are JSON.
    for content_type in [
        "application/json; charset=utf-8",
        "application/vnd.api+json",
    ] {
        let r = reqwest::Client::new()
            .post(format!("{}/chat/completions", front.v1()))
            .bearer_auth(KEY_A1)
            .header("content-type", content_type)
            .body(bodies[0].1.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200, "{content_type}");
    }
    assert_eq!(mock.calls(), 1, "the second JSON request was a hit");
}

#[tokio::test]
async fn bad_input_at_the_edge_is_a_clear_4xx_and_nothing_is_stored_or_logged() {
    let logs = logs();
    let mock = MockUpstream::start().await;
    let cache = front::cache_on(&mock, None).await;
    let app = llm_cache::serve::builder(cache.clone())
        .upstream_url(mock.base_url())
        .upstream_key(PROVIDER_KEY)
        .callers(llm_cache::serve::CallerKeys::parse(CALLER_KEYS).unwrap())
        .body_limit(64 << 10)
        .build()
        .unwrap();
    let front = Served::start(app).await;
    let raw = |key: Option<&'static str>, body: Vec<u8>| {
        let mut r = reqwest::Client::new()
            .post(format!("{}/chat/completions", front.v1()))
            .header("content-type", "application/json")
            .body(body);
        if let Some(key) = key {
            r = r.bearer_auth(key);
        }
        r.send()
    };
    let check = |status: u16, code: Option<&'static str>, says: &'static str| {
        move |(got, body): (u16, Value)| {
            assert_eq!(got, status, "{body}");
            assert!(body["error"]["type"].is_string(), "{body}");
            if let Some(code) = code {
                assert_eq!(body["error"]["code"], code, "{body}");
            }
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains(says), "{message}");
            for key in [KEY_A1, "sk-wrong-0123456789", PROVIDER_KEY] {
                assert!(!message.contains(key), "{message}");
            }
        }
    };
    async fn read(r: reqwest::Result<reqwest::Response>) -> (u16, Value) {
        let r = r.unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }
    let ok_body = serde_json::to_vec(&chat("edge")).unwrap();
    check(401, Some("missing_api_key"), "no caller key")(
        read(raw(None, ok_body.clone()).await).await,
    );
    check(401, Some("invalid_api_key"), "not accepted")(
        read(raw(Some("sk-wrong-0123456789"), ok_body.clone()).await).await,
    );
    check(400, Some("invalid_request"), "")(
        read(raw(Some(KEY_A1), b"{\"model\": \"m\", ".to_vec()).await).await,
    );
    let huge = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(100 << 10)
    );
    check(413, Some("request_too_large"), "65536 bytes")(
        read(raw(Some(KEY_A1), huge.into_bytes()).await).await,
    );
    let deep = format!(
        r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}],"metadata":{}1{}}}"#,
        "[".repeat(200),
        "]".repeat(200)
    );
    check(400, Some("invalid_request"), "")(read(raw(Some(KEY_A1), deep.into_bytes()).await).await);
    check(400, Some("invalid_cache_control"), "x-llm-cache-ttl")(
        read(
            reqwest::Client::new()
                .post(format!("{}/chat/completions", front.v1()))
                .bearer_auth(KEY_A1)
                .header("x-llm-cache-ttl", "soon")
                .json(&chat("edge"))
                .send()
                .await,
        )
        .await,
    );
    assert_eq!(mock.calls(), 0, "nothing reached the upstream");
    let stats = cache.stats();
    assert_eq!(stats.upstream_calls, 0);
    assert_eq!(stats.cache.l1_entries, 0, "nothing stored");
    assert_eq!(stats.cache.misses, 0);
    let stats = reqwest::get(format!("{}/stats", front.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).to_string();
    for secret in [KEY_A1, "sk-wrong-0123456789", PROVIDER_KEY] {
        assert!(!logged.contains(secret), "a key in the logs");
        assert!(!stats.contains(secret), "a key in /stats");
    }
}

/// A front in pass-through mode over `mock`, with `configure` applied to its builder.
async fn pass_through_front(
    mock: &MockUpstream,
    configure: impl FnOnce(llm_cache::serve::ServeBuilder) -> llm_cache::serve::ServeBuilder,
) -> Served {
    let cache = front::cache_on(mock, None).await;
    let builder = llm_cache::serve::builder(cache)
        .upstream_url(mock.base_url())
        .pass_through_credentials(true);
    Served::start(configure(builder).build().unwrap()).await
}

#[tokio::test]
async fn pass_through_forwards_the_callers_credentials_and_scopes_by_them() {
    let mock = MockUpstream::start().await;
    let front = pass_through_front(&mock, |b| b).await;
    let body = chat("mine");
    let one = "sk-user-one-0123456789";
    assert_eq!(
        cache_status(&post(&front, Some(one), &body, &[]).await),
        "miss"
    );
    assert_eq!(
        mock.last_request().unwrap().header("authorization"),
        Some(format!("Bearer {one}").as_str())
    );
    assert_eq!(
        cache_status(&post(&front, Some(one), &body, &[]).await),
        "hit-l1"
    );
    assert_eq!(
        cache_status(&post(&front, Some("sk-user-two-0123456789"), &body, &[]).await),
        "miss"
    );
    let org = [("openai-organization", "org-2")];
    assert_eq!(
        cache_status(&post(&front, Some(one), &body, &org).await),
        "miss"
    );
    assert_eq!(mock.calls(), 3);
    assert_eq!(
        mock.last_request().unwrap().header("openai-organization"),
        Some("org-2")
    );
    let anonymous = post(&front, None, &body, &[]).await;
    assert_eq!(anonymous.status(), 401);
    assert_eq!(mock.calls(), 3);
}

/// Behind an API gateway the key travels in a header of the gateway's own: a caller that
/// differs only there gets its own answer, and the header is forwarded (issue 25, defect 4).
#[tokio::test]
async fn pass_through_scopes_by_gateway_and_configured_credential_headers() {
    let mock = MockUpstream::start().await;
    let front = pass_through_front(&mock, |b| b.credential_header("X-Tenant-Pass")).await;
    let key = "sk-shared-key-0123456789";
    let mut calls = 0;
    for name in [
        "ocp-apim-subscription-key",
        "x-goog-api-key",
        "x-tenant-pass",
    ] {
        let body = chat(&format!("behind a gateway: {name}"));
        for (value, expected) in [("gw-one", "miss"), ("gw-two", "miss"), ("gw-one", "hit-l1")] {
            let sent = post(&front, Some(key), &body, &[(name, value)]).await;
            assert_eq!(cache_status(&sent), expected, "{name}={value}");
            if expected == "miss" {
                calls += 1;
                assert_eq!(
                    mock.last_request().unwrap().header(name),
                    Some(value),
                    "{name} forwarded"
                );
            }
        }
        assert_eq!(mock.calls(), calls, "{name}");
    }
    // A header that is no credential changes nothing.
    let body = chat("an ordinary header");
    post(&front, Some(key), &body, &[("x-request-id", "r1")]).await;
    let again = post(&front, Some(key), &body, &[("x-request-id", "r2")]).await;
    assert_eq!(cache_status(&again), "hit-l1");
}

#[tokio::test]
async fn models_health_and_stats() {
    let mock = MockUpstream::start().await;
    let (_cache, front) = front::keyed(&mock, None).await;
    let http = reqwest::Client::new();
    let models = http
        .get(format!("{}/models", front.v1()))
        .bearer_auth(KEY_A1)
        .send()
        .await
        .unwrap();
    assert_eq!(models.status(), 200);
    let list: Value = models.json().await.unwrap();
    assert_eq!(list["data"][0]["id"], "mock-model");
    let sent = mock.last_request().unwrap();
    assert_eq!(sent.path, "/v1/models");
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Bearer {PROVIDER_KEY}").as_str())
    );
    let refused = http
        .get(format!("{}/models", front.v1()))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    post(&front, Some(KEY_A1), &chat("counted"), &[]).await;
    let health: Value = front::get_json(&front, "/health").await;
    assert_eq!(health["ok"], true);
    assert_eq!(health["l2"], "disabled");
    let stats: Value = front::get_json(&front, "/stats").await;
    assert_eq!(stats["upstream_calls"], 1, "{stats}");
    assert_eq!(stats["cache"]["misses"], 1, "{stats}");
    let missing = reqwest::get(format!("{}/v1/nothing", front.url()))
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let e: Value = missing.json().await.unwrap();
    assert_eq!(e["error"]["code"], "unknown_url");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_shutdown_lets_in_flight_requests_finish() {
    let mock = MockUpstream::start().await;
    let (_cache, mut front) = front::keyed(&mock, None).await;
    mock.hold_answers();
    let url = format!("{}/chat/completions", front.v1());
    let body = chat("in flight");
    let sent = body.clone();
    let in_flight = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .bearer_auth(KEY_A1)
            .json(&sent)
            .send()
            .await
    });
    mock.wait_for_calls(1).await;
    front.begin_shutdown();
    mock.release_all();
    let response = in_flight.await.unwrap().expect("answered, not cut");
    assert_eq!(content(response).await, expected(&body));
    front.stopped().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_async_openai_client_works_through_the_front() {
    let mock = MockUpstream::start().await;
    let (_cache, front) = front::keyed(&mock, None).await;
    let client = Client::with_config(
        OpenAIConfig::new()
            .with_api_base(front.v1())
            .with_api_key(KEY_A1),
    );
    let request: CreateChatCompletionRequest =
        serde_json::from_value(chat("async-openai")).unwrap();
    let first = client.chat().create(request.clone()).await.unwrap();
    let second = client.chat().create(request.clone()).await.unwrap();
    assert_eq!(
        serde_json::to_value(&first).unwrap(),
        serde_json::to_value(&second).unwrap()
    );
    let said = first.choices[0].message.content.clone().unwrap();
    assert_eq!(said, expected(&chat("async-openai")));

    let mut stream_request = request.clone();
    stream_request.stream = Some(true);
    let mut stream = client.chat().create_stream(stream_request).await.unwrap();
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        if let Some(delta) = chunk.choices.first().and_then(|c| c.delta.content.clone()) {
            text.push_str(&delta);
        }
    }
    assert_eq!(text, said);
    assert_eq!(mock.calls(), 1);

    // async-openai's default client waits out a Retry-After and tries again; without its
    // retry layer the 429 reaches the caller as async-openai's own API error.
    let no_retry = Client::with_config(
        OpenAIConfig::new()
            .with_api_base(front.v1())
            .with_api_key(KEY_A1),
    )
    .with_http_service(ReqwestService::new(reqwest::Client::new()));
    mock.push_reply(MockReply::rate_limited("7"));
    let limited: CreateChatCompletionRequest = serde_json::from_value(chat("limited")).unwrap();
    match no_retry.chat().create(limited).await {
        Err(OpenAIError::ApiError(e)) => {
            assert_eq!(e.status_code.as_u16(), 429, "{e:?}");
            assert_eq!(
                e.api_error.r#type.as_deref(),
                Some("rate_limit_error"),
                "{e:?}"
            );
        }
        other => panic!("expected the 429 as an API error, got {other:?}"),
    }
    let refused = Client::with_config(
        OpenAIConfig::new()
            .with_api_base(front.v1())
            .with_api_key("sk-nobody-0123"),
    );
    match refused.chat().create(request).await {
        Err(OpenAIError::ApiError(e)) => assert_eq!(e.status_code.as_u16(), 401),
        other => panic!("expected a 401, got {other:?}"),
    }
}

#[tokio::test]
async fn embeddings_go_input_by_input() {
    let mock = MockUpstream::start().await;
    let (_cache, front) = front::keyed(&mock, None).await;
    let embed = |input: Value, key: &'static str| {
        reqwest::Client::new()
            .post(format!("{}/embeddings", front.v1()))
            .bearer_auth(key)
            .json(&json!({"model": "text-embedding-3-small", "input": input}))
            .send()
    };
    let first = embed(json!(["alpha", "beta"]), KEY_A1).await.unwrap();
    assert_eq!(cache_status(&first), "miss");
    let body: Value = first.json().await.unwrap();
    let alpha = body["data"][0]["embedding"].clone();
    assert_eq!(
        serde_json::from_value::<Vec<f32>>(alpha.clone()).unwrap(),
        expected_embedding(&json!("alpha"), DEFAULT_DIMS)
    );
    let partial = embed(json!(["gamma", "alpha"]), KEY_A2).await.unwrap();
    assert_eq!(cache_status(&partial), "partial");
    assert_eq!(
        support::embeddings::inputs_of(&mock.last_request().unwrap().body),
        vec![json!("gamma")],
        "only the missing input went upstream"
    );
    let body: Value = partial.json().await.unwrap();
    assert_eq!(body["data"][1]["embedding"], alpha);
    assert_eq!(body["data"][1]["index"], 1);
    let hit = embed(json!("beta"), KEY_A1).await.unwrap();
    assert_eq!(cache_status(&hit), "hit-l1");
    // Another namespace's key shares nothing.
    assert_eq!(
        cache_status(&embed(json!("beta"), KEY_B1).await.unwrap()),
        "miss"
    );
    assert_eq!(mock.calls_to("/v1/embeddings"), 3);
}

/// The Prometheus recorder of this binary: process-global, so installed once and shared
/// by the two tests that read it (each reads only series its own caches write).
#[cfg(feature = "prometheus")]
fn recorder() -> llm_cache::prometheus::PrometheusHandle {
    static HANDLE: OnceLock<llm_cache::prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| llm_cache::prometheus::install().expect("install the recorder"))
        .clone()
}

#[cfg(feature = "prometheus")]
#[tokio::test]
async fn metrics_are_served_from_the_handle() {
    // Before the cache is built: its series register with the recorder installed then.
    let handle = recorder();
    let mock = MockUpstream::start().await;
    let cache = front::cache_on(&mock, None).await;
    let front = Served::start(
        llm_cache::serve::builder(cache)
            .metrics(handle)
            .build()
            .unwrap(),
    )
    .await;
    // A model no other test of this binary names: a miss, then an L1 hit.
    let mut body = chat("measured");
    body["model"] = json!("measured-by-the-scrape");
    for want in ["miss", "hit-l1"] {
        assert_eq!(cache_status(&post(&front, None, &body, &[]).await), want);
    }
    let metrics = reqwest::get(format!("{}/metrics", front.url()))
        .await
        .unwrap();
    assert_eq!(metrics.status(), 200);
    let text = metrics.text().await.unwrap();
    assert!(text.contains("ai_cache_"), "{text}");
    // The series are published from the counters: `/metrics` publishes before it renders,
    // so a scrape right after the requests agrees with `stats()`, not a second later.
    for series in [
        r#"ai_cache_hits_total{model="measured-by-the-scrape",tier="l1"} 1"#,
        r#"ai_cache_misses_total{model="measured-by-the-scrape"} 1"#,
    ] {
        assert!(text.lines().any(|l| l == series), "{series} in:\n{text}");
    }
}

/// One upstream: with `SemanticConfig::embed_via_route`, a semantic lookup through the
/// front embeds with the front's own upstream client (its URL and held key), not with the
/// cache's builder upstream (a second mock here, never called).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_semantic_lookup_embeds_through_the_fronts_upstream() {
    let (upstream, builders) = (MockUpstream::start().await, MockUpstream::start().await);
    upstream.set_embedder(|text| support::bow::bag_of_words(text, 512));
    let cache = LlmCache::builder()
        .upstream(llm_cache::OpenAiCompatible::new(builders.base_url()))
        .semantic(llm_cache::SemanticConfig::new("text-embedding-test").embed_via_route(true))
        .build()
        .await
        .unwrap();
    let app = llm_cache::serve::builder(cache.clone())
        .upstream_url(upstream.base_url())
        .upstream_key(PROVIDER_KEY)
        .callers(llm_cache::serve::CallerKeys::parse(CALLER_KEYS).unwrap())
        .build()
        .unwrap();
    let front = Served::start(app).await;
    let semantic = [("x-llm-cache-control", "semantic")];
    let first = post(
        &front,
        Some(KEY_ADMIN),
        &chat("How do I reset my password?"),
        &semantic,
    )
    .await;
    assert_eq!(cache_status(&first), "miss");
    support::eventually("indexed", std::time::Duration::from_secs(10), || {
        cache.stats().semantic.indexed == 1
    })
    .await;
    let hit = post(
        &front,
        Some(KEY_ADMIN),
        &chat("Hi, how do I reset my password"),
        &semantic,
    )
    .await;
    assert_eq!(cache_status(&hit), "hit-semantic");
    assert_eq!(builders.calls(), 0, "the builder's upstream is never asked");
    let embeds: Vec<_> = upstream
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/embeddings")
        .collect();
    assert_eq!(
        embeds.len(),
        2,
        "each prompt embedded once, by the front's client"
    );
    for r in &embeds {
        assert_eq!(
            r.header("authorization"),
            Some(format!("Bearer {PROVIDER_KEY}").as_str())
        );
    }
}
