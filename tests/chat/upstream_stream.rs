//! `Upstream::chat_stream` against the mock upstream over real HTTP: chunks arrive as they
//! are sent, assemble into the answer `chat` gives, and a stream that fails says so.

use llm_cache_test_support as support;

use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use llm_cache::stream::{Assembler, ChatChunk};
use llm_cache::{
    BoxFuture, ChatMessage, ChatRequest, ChatResponse, Choice, ChunkStream, ErrorKind,
    OpenAiCompatible, Result, RetryPolicy, Upstream, UpstreamStats, Usage,
};
use serde_json::json;
use support::upstream::{MockReply, MockUpstream, expected_content, expected_tool_calls};

const KEY: &str = "sk-test-DO-NOT-LEAK-7c1d0e5a93";
/// The longest a test waits for a chunk that should come at once.
const PROMPT: Duration = Duration::from_secs(5);

fn request(text: &str) -> ChatRequest {
    ChatRequest::new("gpt-4.1")
        .message(ChatMessage::system("be brief"))
        .message(ChatMessage::user(text))
        .temperature(0.2)
}

fn client(mock: &MockUpstream) -> OpenAiCompatible {
    OpenAiCompatible::new(mock.base_url()).api_key(KEY).retry(
        RetryPolicy::default()
            .base_delay(Duration::from_millis(5))
            .max_delay(Duration::from_millis(20)),
    )
}

fn counts(stats: &UpstreamStats) -> (u64, u64, u64) {
    (stats.calls(), stats.retries(), stats.errors())
}

/// The next item, failing the test if it does not come promptly.
async fn next(stream: &mut ChunkStream) -> Option<Result<ChatChunk>> {
    tokio::time::timeout(PROMPT, stream.next())
        .await
        .expect("the next chunk comes promptly")
}

/// Every item up to the end of the stream.
async fn drain(mut stream: ChunkStream) -> Vec<Result<ChatChunk>> {
    let mut items = Vec::new();
    while let Some(item) = next(&mut stream).await {
        items.push(item);
    }
    items
}

/// The chunks of a stream that must succeed.
async fn chunks(stream: ChunkStream) -> Vec<ChatChunk> {
    drain(stream)
        .await
        .into_iter()
        .collect::<Result<_>>()
        .expect("every chunk is Ok")
}

fn assemble(chunks: &[ChatChunk]) -> ChatResponse {
    let mut assembler = Assembler::new();
    for chunk in chunks {
        assembler.push(chunk).expect("a chunk assembles");
    }
    assembler.finish().expect("the stream is a whole answer")
}

#[tokio::test]
async fn chunks_arrive_while_the_upstream_is_still_sending() {
    let mock = MockUpstream::start().await;
    mock.hold_stream_after(3);
    let client = client(&mock);
    let req = request("tell me a long story, slowly");

    let mut stream = client.chat_stream(&req).await.expect("the stream starts");
    mock.wait_for_streamed_chunks(3).await;
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(
            next(&mut stream)
                .await
                .expect("a chunk")
                .expect("an Ok chunk"),
        );
    }
    // The mock is still holding the rest: the client yielded what had arrived.
    assert_eq!(mock.streamed_chunks(), 3);
    assert!(stream.next().now_or_never().is_none(), "no 4th chunk yet");
    assert_eq!(got[0].choices[0].delta.role.as_deref(), Some("assistant"));

    mock.release_stream();
    got.extend(chunks(stream).await);

    assert!(got.len() > 5, "the answer came in pieces: {}", got.len());
    let streamed = assemble(&got);
    assert_eq!(streamed.text(), Some(expected_content(&req)));
    assert_eq!(streamed.choices[0].finish_reason.as_deref(), Some("stop"));
    assert_eq!(streamed.system_fingerprint.as_deref(), Some("fp_mock"));
    // The same answer as `chat` (but for the per-call id and time).
    let whole = client.chat(&req).await.unwrap();
    assert_eq!(streamed.choices, whole.choices);
    assert_eq!(streamed.usage, whole.usage);
    assert!(streamed.usage.as_ref().is_some_and(|u| u.total_tokens > 0));
    assert_eq!((mock.calls(), mock.stream_calls()), (2, 1));
    assert_eq!(counts(&client.stats()), (2, 0, 0));
}

#[tokio::test]
async fn the_request_streams_with_usage_and_keeps_other_stream_options() {
    let mock = MockUpstream::start().await;
    let client = client(&mock);
    let mut req = request("count my tokens");
    req.stream_options = Some(json!({"include_usage": false, "x_vendor_flag": "keep"}));

    let got = chunks(client.chat_stream(&req).await.unwrap()).await;

    let sent = mock.last_request().unwrap();
    assert_eq!(sent.body["stream"], json!(true));
    assert_eq!(
        sent.body["stream_options"],
        json!({"include_usage": true, "x_vendor_flag": "keep"})
    );
    assert_eq!(sent.header("accept"), Some("text/event-stream"));
    assert_eq!(
        sent.header("authorization"),
        Some(format!("Bearer {KEY}").as_str())
    );
    let last = got.last().unwrap();
    assert!(last.choices.is_empty() && last.usage.is_some(), "{last:?}");
}

#[tokio::test]
async fn a_cut_stream_ends_with_an_error_after_the_chunks_that_arrived() {
    let mock = MockUpstream::start().await;
    mock.push_reply(MockReply::StreamCut { after: 4 });
    let client = client(&mock);

    let items = drain(client.chat_stream(&request("cut me")).await.unwrap()).await;

    assert_eq!(items.len(), 5, "{items:?}");
    assert!(items[..4].iter().all(Result::is_ok));
    let e = items[4].as_ref().unwrap_err();
    // A broken connection, not a clean end without `[DONE]`.
    assert_eq!(e.kind(), ErrorKind::Connect, "{e}");
    assert!(e.message().contains("cut off after 4 chunks"), "{e}");
    assert!(!format!("{e} {e:?}").contains(KEY));
    // The body had started: no retry.
    assert_eq!(mock.calls(), 1);
    assert_eq!(counts(&client.stats()), (1, 0, 1));
}

#[tokio::test]
async fn a_body_that_ends_before_done_is_an_error() {
    let mock = MockUpstream::start().await;
    let chunk = json!({"id": "c", "object": "chat.completion.chunk", "model": "m",
        "choices": [{"index": 0, "delta": {"content": "partial"}, "finish_reason": null}]});
    mock.push_reply(MockReply::Sse(format!("data: {chunk}\n\n")));
    let client = client(&mock);

    let items = drain(client.chat_stream(&request("no done")).await.unwrap()).await;

    assert_eq!(items.len(), 2, "{items:?}");
    let e = items[1].as_ref().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Upstream, "{e}");
    assert!(e.message().contains("cut off after 1 chunks"), "{e}");
}

#[tokio::test]
async fn an_error_event_carries_the_provider_message_without_the_key() {
    let mock = MockUpstream::start().await;
    let role = json!({"id": "c", "object": "chat.completion.chunk", "model": "m",
        "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": null}]});
    let error = json!({"error": {"message": format!("overloaded; key {KEY} paused"),
        "type": "server_error"}});
    mock.push_reply(MockReply::Sse(format!(
        "data: {role}\n\ndata: {error}\n\ndata: [DONE]\n\n"
    )));
    let client = client(&mock);

    let items = drain(client.chat_stream(&request("busy?")).await.unwrap()).await;

    assert_eq!(items.len(), 2, "{items:?}");
    let e = items[1].as_ref().unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Upstream);
    assert!(e.message().contains("overloaded; key *** paused"), "{e}");
    assert!(!format!("{e} {e:?}").contains(KEY));
    assert_eq!(counts(&client.stats()), (1, 0, 1));
}

#[tokio::test]
async fn a_429_before_the_stream_is_retried_after_retry_after() {
    let mock = MockUpstream::start().await;
    mock.push_reply(MockReply::rate_limited("1"));
    let client = client(&mock);
    let req = request("later, then stream");

    let got = chunks(client.chat_stream(&req).await.expect("the retry streams")).await;

    assert_eq!(assemble(&got).text(), Some(expected_content(&req)));
    let arrivals = mock.requests();
    assert_eq!((arrivals.len(), mock.stream_calls()), (2, 2));
    let gap = arrivals[1].at - arrivals[0].at;
    assert!(gap >= Duration::from_secs(1), "retried after {gap:?}");
    assert_eq!(counts(&client.stats()), (2, 1, 0));
}

#[tokio::test]
async fn a_400_before_the_stream_is_the_call_error() {
    let mock = MockUpstream::start().await;
    mock.push_reply(MockReply::openai_error(400, "no streaming for you"));
    let client = client(&mock);

    let e = match client.chat_stream(&request("please")).await {
        Ok(_) => panic!("a 400 must not start a stream"),
        Err(e) => e,
    };

    assert_eq!(
        (e.status(), e.message()),
        (Some(400), "no streaming for you")
    );
    assert_eq!(mock.calls(), 1);
    assert_eq!(counts(&client.stats()), (1, 0, 1));
}

#[tokio::test]
async fn tool_call_pieces_assemble_into_the_calls() {
    let mock = MockUpstream::start().await;
    mock.push_reply(MockReply::StreamToolCalls);
    let client = client(&mock);
    let req = request("weather and time in Paris?");

    let got = chunks(client.chat_stream(&req).await.unwrap()).await;

    // The arguments came in pieces, the calls taking turns.
    let pieces: Vec<u32> = got
        .iter()
        .flat_map(|c| &c.choices)
        .flat_map(|c| c.delta.tool_calls.iter().flatten())
        .filter(|t| t.function.as_ref().and_then(|f| f.arguments.as_deref()) != Some(""))
        .map(|t| t.index)
        .collect();
    assert!(pieces.len() > 6, "{pieces:?}");
    assert!(pieces.windows(2).any(|w| w[1] < w[0]), "{pieces:?}");
    let answer = assemble(&got);
    let choice = &answer.choices[0];
    assert_eq!(choice.finish_reason.as_deref(), Some("tool_calls"));
    let calls: Vec<(String, String)> = choice
        .message
        .tool_calls
        .iter()
        .flatten()
        .map(|c| (c.function.name.clone(), c.function.arguments.clone()))
        .collect();
    assert_eq!(calls, expected_tool_calls(&req));
    let ids: Vec<&str> = choice
        .message
        .tool_calls
        .iter()
        .flatten()
        .map(|c| c.id.as_str())
        .collect();
    assert_eq!(ids, ["call_mock_0", "call_mock_1", "call_mock_2"]);
    for (_, arguments) in &calls {
        serde_json::from_str::<serde_json::Value>(arguments).expect("arguments are JSON");
    }
    assert!(answer.usage.is_some());
}

#[tokio::test]
async fn a_stall_between_reads_times_out_but_a_long_stream_does_not() {
    let mock = MockUpstream::start().await;
    let client = client(&mock).request_timeout(Duration::from_millis(500));

    // Longer than request_timeout in all, with short pauses: no deadline cuts it.
    mock.set_chunk_interval(Duration::from_millis(100));
    let started = std::time::Instant::now();
    let req = request("a stream slower than request_timeout in all");
    let got = chunks(client.chat_stream(&req).await.unwrap()).await;
    assert!(started.elapsed() > Duration::from_millis(500));
    assert_eq!(assemble(&got).text(), Some(expected_content(&req)));

    // A stream that stops sending: Timeout after the chunks that came.
    mock.set_chunk_interval(Duration::ZERO);
    mock.hold_stream_after(2);
    let items = drain(client.chat_stream(&request("stall")).await.unwrap()).await;
    mock.release_stream();
    assert_eq!(items.len(), 3, "{items:?}");
    let e = items[2].as_ref().unwrap_err();
    assert!(e.is_timeout(), "{e}");
    assert!(e.message().contains("after 2 chunks"), "{e}");
}

#[tokio::test]
async fn no_headers_within_request_timeout_is_retried_then_a_timeout() {
    let mock = MockUpstream::start().await;
    mock.push_reply(MockReply::Hang);
    mock.push_reply(MockReply::Hang);
    let client = client(&mock)
        .request_timeout(Duration::from_millis(300))
        .retry(
            RetryPolicy::default()
                .max_attempts(2)
                .base_delay(Duration::ZERO),
        );

    let e = match client.chat_stream(&request("anyone?")).await {
        Ok(_) => panic!("a hung upstream must not start a stream"),
        Err(e) => e,
    };

    assert!(e.is_timeout(), "{e}");
    assert_eq!(mock.calls(), 2);
    assert_eq!(counts(&client.stats()), (2, 1, 1));
}

#[tokio::test]
async fn a_json_answer_to_a_stream_request_is_replayed() {
    let mock = MockUpstream::start().await;
    let answer = json!({"id": "x", "object": "chat.completion", "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "not streamed"},
            "finish_reason": "stop"}]});
    mock.push_reply(MockReply::Body(answer.to_string()));
    let client = client(&mock);

    let got = chunks(client.chat_stream(&request("stream?")).await.unwrap()).await;

    assert_eq!(assemble(&got).text().as_deref(), Some("not streamed"));
}

/// A client that cannot stream: only `chat`.
struct Plain;

impl Upstream for Plain {
    fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse>> {
        Box::pin(async move {
            Ok(ChatResponse {
                id: "plain-1".into(),
                object: "chat.completion".into(),
                created: 1_700_000_000,
                model: request.model.clone(),
                choices: vec![Choice {
                    message: ChatMessage::assistant("a plain answer, replayed in chunks"),
                    finish_reason: Some("stop".into()),
                    ..Default::default()
                }],
                usage: Some(Usage {
                    prompt_tokens: 3,
                    completion_tokens: 7,
                    total_tokens: 10,
                    ..Default::default()
                }),
                ..Default::default()
            })
        })
    }
}

#[tokio::test]
async fn a_client_without_streaming_is_streamed_by_replay() {
    let req = request("hi");
    let upstream: Arc<dyn Upstream> = Arc::new(Plain);

    let got = chunks(upstream.chat_stream(&req).await.unwrap()).await;

    assert!(got.len() > 3, "replayed in pieces: {}", got.len());
    let last = got.last().unwrap();
    assert!(last.choices.is_empty() && last.usage.is_some(), "{last:?}");
    assert_eq!(assemble(&got), Plain.chat(&req).await.unwrap());
}
