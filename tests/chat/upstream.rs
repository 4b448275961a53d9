//! `OpenAiCompatible` against the mock upstream over real HTTP: retries, `Retry-After`,
//! error mapping, timeouts, and that the API key never leaks.

use llm_cache_test_support as support;

use std::sync::Arc;
use std::time::Duration;

use llm_cache::{
    ChatMessage, ChatRequest, ErrorKind, OpenAiCompatible, RetryPolicy, Upstream, UpstreamStats,
};
use support::upstream::{MockReply, MockUpstream, expected_content};

const KEY: &str = "sk-test-DO-NOT-LEAK-4f2a9c7e1b";

fn request(text: &str) -> ChatRequest {
    ChatRequest::new("gpt-4.1")
        .message(ChatMessage::system("be brief"))
        .message(ChatMessage::user(text))
        .temperature(0.2)
}

/// A client for `mock` with short backoffs, so tests spend their time on what they check.
fn client(mock: &MockUpstream) -> OpenAiCompatible {
    OpenAiCompatible::new(mock.base_url())
        .api_key(KEY)
        .retry(fast_retry())
}

fn fast_retry() -> RetryPolicy {
    RetryPolicy::default()
        .base_delay(Duration::from_millis(5))
        .max_delay(Duration::from_millis(20))
}

fn assert_no_key(shown: &str) {
    assert!(!shown.contains(KEY), "the API key leaked: {shown}");
}

fn counts(stats: &UpstreamStats) -> (u64, u64, u64) {
    (stats.calls(), stats.retries(), stats.errors())
}

#[tokio::test]
async fn a_500_is_retried_and_the_next_answer_returned() {
    let mock = MockUpstream::start().await;
    mock.push_reply(MockReply::status(500));
    let client = client(&mock);
    let req = request("hello");

    let answer = client.chat(&req).await.expect("the retry succeeds");

    assert_eq!(mock.calls(), 2);
    assert_eq!(answer.text(), Some(expected_content(&req)));
    assert_eq!(answer.choices[0].finish_reason.as_deref(), Some("stop"));
    assert!(answer.usage.as_ref().is_some_and(|u| u.total_tokens > 0));
    assert_eq!(counts(&client.stats()), (2, 1, 0));
}

#[tokio::test]
async fn retry_after_is_honoured_between_arrivals() {
    let mock = MockUpstream::start().await;
    mock.push_reply(MockReply::rate_limited("1"));
    let client = client(&mock);

    client
        .chat(&request("later"))
        .await
        .expect("the retry succeeds");

    let arrivals = mock.requests();
    assert_eq!(arrivals.len(), 2);
    let gap = arrivals[1].at - arrivals[0].at;
    assert!(
        gap >= Duration::from_secs(1),
        "retried {gap:?} after a 429 with Retry-After: 1"
    );
}

#[tokio::test]
async fn retry_after_beyond_the_cap_ends_the_call_without_retrying() {
    let mock = MockUpstream::start().await;
    mock.push_reply(MockReply::rate_limited("120"));
    let client = client(&mock);

    let e = client.chat(&request("much later")).await.unwrap_err();

    assert_eq!(mock.calls(), 1);
    assert_eq!(e.status(), Some(429));
    assert_eq!(e.retry_after(), Some(Duration::from_secs(120)));
}

#[tokio::test]
async fn a_400_is_not_retried_and_carries_the_provider_message() {
    let mock = MockUpstream::start().await;
    let message = "Invalid value for 'temperature': must be at most 2.";
    mock.push_reply(MockReply::openai_error(400, message));
    let client = client(&mock);

    let e = client.chat(&request("hot")).await.unwrap_err();

    assert_eq!(mock.calls(), 1);
    assert_eq!(e.kind(), ErrorKind::Upstream);
    assert_eq!(e.status(), Some(400));
    assert_eq!(e.message(), message);
    assert_eq!(counts(&client.stats()), (1, 0, 1));
}

#[tokio::test]
async fn a_hung_upstream_times_out_on_every_attempt() {
    let mock = MockUpstream::start().await;
    mock.push_reply(MockReply::Hang);
    mock.push_reply(MockReply::Hang);
    let client = client(&mock)
        .request_timeout(Duration::from_millis(300))
        .retry(fast_retry().max_attempts(2));

    let e = client.chat(&request("anyone?")).await.unwrap_err();

    assert_eq!(e.kind(), ErrorKind::Timeout, "{e}");
    assert!(e.is_timeout());
    assert_eq!(mock.calls(), 2);
    assert_no_key(&format!("{e} {e:?}"));
}

#[tokio::test]
async fn the_key_is_sent_as_a_bearer_token_and_never_shown() {
    let mock = MockUpstream::start().await;
    // Some providers echo the key they were given in their error text.
    mock.push_reply(MockReply::openai_error(
        401,
        &format!("Incorrect API key provided: {KEY}."),
    ));
    let client = client(&mock).header("OpenAI-Organization", "org-test");

    let e = client.chat(&request("who am i")).await.unwrap_err();

    let sent = mock.last_request().unwrap();
    assert_eq!(sent.path, "/v1/chat/completions");
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(sent.header("openai-organization"), Some("org-test"));
    assert_eq!(e.status(), Some(401));
    assert!(e.message().starts_with("Incorrect API key provided"), "{e}");
    assert_no_key(&format!("{e}"));
    assert_no_key(&format!("{e:?}"));
    assert_no_key(&format!("{client:?}"));
    assert!(format!("{client:?}").contains(r#"api_key: "***""#));
}

#[tokio::test]
async fn connect_errors_are_retried_and_do_not_show_the_key() {
    // A port that was just free: nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = OpenAiCompatible::new(format!("http://127.0.0.1:{port}/v1?tenant=a"))
        .api_key(KEY)
        .retry(fast_retry().max_attempts(2));

    let e = client.chat(&request("hello?")).await.unwrap_err();

    assert_eq!(e.kind(), ErrorKind::Connect, "{e}");
    assert!(e.is_upstream());
    assert!(e.message().contains(&format!("127.0.0.1:{port}")), "{e}");
    assert!(
        !e.message().contains("tenant=a"),
        "the query is not shown: {e}"
    );
    assert_eq!(counts(&client.stats()), (2, 1, 1));
    assert_no_key(&format!("{e}"));
    assert_no_key(&format!("{e:?}"));
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        assert_no_key(&format!("{cause} {cause:?}"));
        source = cause.source();
    }
}

#[tokio::test]
async fn a_2xx_body_that_is_not_json_is_an_upstream_error() {
    let mock = MockUpstream::start().await;
    mock.push_reply(MockReply::Body(
        "<html><body>502 Bad Gateway from the proxy</body></html>".into(),
    ));
    let client = client(&mock);

    let e = client.chat(&request("hi")).await.unwrap_err();

    assert_eq!(mock.calls(), 1);
    assert_eq!(e.kind(), ErrorKind::Upstream);
    assert!(e.to_string().contains("<html><body>502 Bad Gateway"), "{e}");
}

#[tokio::test]
async fn three_503s_end_the_call_after_exactly_three_attempts() {
    let mock = MockUpstream::start().await;
    for _ in 0..3 {
        mock.push_reply(MockReply::status(503));
    }
    mock.push_reply(MockReply::Answer); // never reached
    let client = client(&mock);

    let e = client.chat(&request("busy?")).await.unwrap_err();

    assert_eq!(mock.calls(), 3);
    assert_eq!(e.status(), Some(503));
    assert_eq!(counts(&client.stats()), (3, 2, 1));
}

#[tokio::test]
async fn stream_fields_are_removed_from_the_body() {
    let mock = MockUpstream::start().await;
    let mut req = request("stream me").param("max_tokens", 64);
    req.stream = Some(true);
    req.stream_options = Some(serde_json::json!({"include_usage": true}));
    let client = client(&mock);

    let answer = client.chat(&req).await.unwrap();

    let body = mock.last_request().unwrap().body;
    assert!(body.get("stream").is_none() && body.get("stream_options").is_none());
    assert_eq!(body["max_tokens"], 64);
    assert_eq!(body["messages"][1]["content"], "stream me");
    assert_eq!(answer.text(), Some(expected_content(&req)));
}

#[tokio::test]
async fn works_behind_an_arc_dyn_upstream() {
    let mock = MockUpstream::start().await;
    let shared: Arc<dyn Upstream> = Arc::new(client(&mock));
    shared.validate().unwrap();
    let answer = Arc::clone(&shared).chat(&request("dyn")).await.unwrap();
    assert_eq!(answer.text(), Some(expected_content(&request("dyn"))));
}

#[tokio::test]
async fn the_mock_holds_answers_until_released() {
    let mock = MockUpstream::start().await;
    mock.hold_answers();
    let client = Arc::new(client(&mock));
    let (done, mut answers) = tokio::sync::mpsc::unbounded_channel();
    for i in 0..3 {
        let (client, done) = (Arc::clone(&client), done.clone());
        tokio::spawn(async move {
            let _ = done.send(client.chat(&request(&format!("q{i}"))).await);
        });
    }

    mock.wait_for_calls(3).await;
    assert_eq!(mock.held(), 3);
    mock.release(1);
    answers
        .recv()
        .await
        .unwrap()
        .expect("a released answer arrives");
    assert_eq!(mock.held(), 2);
    assert!(answers.try_recv().is_err(), "held answers stay held");
    mock.release_all();
    for _ in 0..2 {
        answers
            .recv()
            .await
            .unwrap()
            .expect("released answers arrive");
    }
    assert_eq!(mock.calls(), 3);
}

#[tokio::test]
async fn the_mock_fault_mode_is_repeatable() {
    let mock = MockUpstream::start().await;
    mock.fail_ratio(0.2, 0.1, Some(0));
    let client = OpenAiCompatible::new(mock.base_url()).retry(RetryPolicy::none());
    let mut outcomes = Vec::new();
    for i in 0..50 {
        let status = match client.chat(&request(&format!("n{i}"))).await {
            Ok(_) => 200,
            Err(e) => e.status().unwrap(),
        };
        outcomes.push(status);
    }
    let count = |s| outcomes.iter().filter(|&&o| o == s).count();
    assert_eq!((count(500), count(429), count(200)), (10, 5, 35));
}

#[tokio::test]
async fn a_callers_http_client_is_used_with_its_default_headers() {
    let mock = MockUpstream::start().await;
    let mut defaults = reqwest::header::HeaderMap::new();
    defaults.insert("x-shared-client", "pool-7".parse().unwrap());
    // Ours wins over the client's default header of the same name.
    defaults.insert("openai-organization", "org-client".parse().unwrap());
    let shared = reqwest::Client::builder()
        .default_headers(defaults)
        .user_agent("shared-client/1")
        .build()
        .unwrap();
    let client = client(&mock)
        .header("OpenAI-Organization", "org-ours")
        .http_client(shared.clone());

    let answer = client.chat(&request("shared pool")).await.unwrap();
    assert_eq!(
        answer.text(),
        Some(expected_content(&request("shared pool")))
    );
    let mut chunks = client.chat_stream(&request("shared stream")).await.unwrap();
    while let Some(chunk) = futures_util::StreamExt::next(&mut chunks).await {
        chunk.unwrap();
    }

    let sent = mock.requests();
    assert_eq!(sent.len(), 2);
    for (sent, accept) in sent.iter().zip(["application/json", "text/event-stream"]) {
        assert_eq!(sent.header("x-shared-client"), Some("pool-7"));
        assert_eq!(sent.header("user-agent"), Some("shared-client/1"));
        assert_eq!(sent.header("openai-organization"), Some("org-ours"));
        assert_eq!(sent.headers.get_all("accept").iter().count(), 1);
        assert_eq!(sent.header("accept"), Some(accept));
        assert_eq!(
            sent.header("authorization"),
            Some(format!("Bearer {KEY}").as_str())
        );
    }
    assert!(format!("{client:?}").contains("http_client: Some"));
    assert_no_key(&format!("{client:?}"));
}

#[tokio::test]
async fn our_request_timeout_wins_over_a_callers_client_timeout() {
    let mock = MockUpstream::start().await;
    mock.set_delay(Duration::from_millis(400));
    // The client alone would give up after 100 ms; ours allows 5 s.
    let shared = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .unwrap();
    let client = client(&mock)
        .http_client(shared)
        .request_timeout(Duration::from_secs(5))
        .retry(fast_retry().max_attempts(1));

    client.chat(&request("patience")).await.unwrap();
}
