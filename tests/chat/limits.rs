//! Nothing a caller passes may abort the process: a request that nests arrays and objects
//! deeper than `MAX_REQUEST_DEPTH` is refused with `InvalidRequest` by every entry point,
//! before it is copied, keyed or sent; one at the limit is served. Every call runs on a
//! worker of a default multi-thread runtime (2 MiB stacks), in whatever build `cargo test`
//! makes (debug by default, where frames are largest).
//!
//! Requests thousands of levels deep used to overflow the worker's stack (SIGABRT), which
//! takes the whole test binary down; those run in a child process (this binary run again
//! with one test selected), and the parent checks that the child exited cleanly.

use llm_cache_test_support as support;

use std::process::Command;

use futures_util::StreamExt;
use llm_cache::{
    CacheControl, CacheStatus, ChatMessage, ChatRequest, Content, LlmCache, MAX_REQUEST_DEPTH,
    OpenAiCompatible, RetryPolicy, ToolCall,
};
use serde_json::Value;
use support::upstream::{MockUpstream, expected_content};

/// Set in the child process: the test it names runs its deep requests.
const CHILD_ENV: &str = "LLM_CACHE_LIMITS_CHILD";

/// Where a caller's JSON sits in a request, and how many levels of the request lie above
/// it (the request body is level 1).
#[derive(Clone, Copy, Debug)]
enum Spot {
    /// An unknown top-level parameter.
    Param,
    /// `tools`, a JSON schema nested inside.
    Tools,
    /// `response_format`.
    ResponseFormat,
    /// A content part of a user message.
    ContentPart,
    /// An unknown field of an assistant's tool call's function.
    ToolCallFunction,
}

impl Spot {
    const ALL: [Spot; 5] = [
        Spot::Param,
        Spot::Tools,
        Spot::ResponseFormat,
        Spot::ContentPart,
        Spot::ToolCallFunction,
    ];

    fn above(self) -> usize {
        match self {
            Spot::Param | Spot::Tools | Spot::ResponseFormat => 1,
            Spot::ContentPart => 4,
            Spot::ToolCallFunction => 6,
        }
    }

    /// The field the error names.
    fn field(self) -> &'static str {
        match self {
            Spot::Param => "`vendor_knob`",
            Spot::Tools => "`tools`",
            Spot::ResponseFormat => "`response_format`",
            Spot::ContentPart => "`messages[0].content[1]`",
            Spot::ToolCallFunction => "`messages[1].tool_calls[0].function.deep`",
        }
    }

    /// A request whose JSON nests exactly `depth` levels, the deepest at this spot.
    fn request(self, prompt: &str, depth: usize) -> ChatRequest {
        let value = nested(depth - self.above());
        let r = ChatRequest::new("gpt-4.1").message(ChatMessage::user(prompt));
        match self {
            Spot::Param => r.param("vendor_knob", value),
            // The array of tools is one level, so the value goes one level further in.
            Spot::Tools => r.param("tools", Value::Array(vec![unwrap_one(value)])),
            Spot::ResponseFormat => r.param("response_format", value),
            Spot::ContentPart => {
                let mut r = r;
                r.messages[0].content = Some(Content::Parts(vec![
                    serde_json::json!({"type": "text", "text": prompt}),
                    value,
                ]));
                r
            }
            Spot::ToolCallFunction => {
                let mut call = ToolCall {
                    id: "call_1".into(),
                    ..Default::default()
                };
                call.function.name = "f".into();
                call.function.extra.insert("deep".into(), value);
                let mut assistant = ChatMessage::assistant("");
                assistant.tool_calls = Some(vec![call]);
                r.message(assistant)
            }
        }
    }
}

/// `levels` levels of arrays and objects (objects every other level) around `1`, built
/// without recursion.
fn nested(levels: usize) -> Value {
    (0..levels).fold(Value::from(1), |inner, i| {
        if i % 2 == 0 {
            Value::Array(vec![inner])
        } else {
            let mut map = serde_json::Map::new();
            map.insert("k".into(), inner);
            Value::Object(map)
        }
    })
}

/// The value one level inside `v` (`nested(n)` -> `nested(n - 1)`).
fn unwrap_one(v: Value) -> Value {
    match v {
        Value::Array(mut items) => items.pop().unwrap_or(Value::Null),
        Value::Object(mut map) => map.remove("k").unwrap_or(Value::Null),
        other => other,
    }
}

/// Drops a value of any depth one level at a time: its own drop recurses once per level.
fn dismantle(mut v: Value) {
    while matches!(v, Value::Array(_) | Value::Object(_)) {
        v = unwrap_one(v);
    }
}

/// Drops a request of any depth (see [`dismantle`]).
fn dismantle_request(mut r: ChatRequest) {
    for (_, v) in std::mem::take(&mut r.extra) {
        if let Value::Array(items) = v {
            items.into_iter().for_each(dismantle);
        } else {
            dismantle(v);
        }
    }
    for m in &mut r.messages {
        if let Some(Content::Parts(parts)) = m.content.take() {
            parts.into_iter().for_each(dismantle);
        }
        for call in m.tool_calls.take().into_iter().flatten() {
            call.function
                .extra
                .into_iter()
                .for_each(|(_, v)| dismantle(v));
        }
    }
}

async fn cache(mock: &MockUpstream) -> LlmCache {
    LlmCache::builder()
        .upstream(OpenAiCompatible::new(mock.base_url()).retry(RetryPolicy::none()))
        .build()
        .await
        .unwrap()
}

fn assert_refused(e: &llm_cache::Error, spot: Spot) {
    assert!(e.is_invalid_request(), "{spot:?}: {e}");
    assert!(
        e.message().contains("MAX_REQUEST_DEPTH") && e.message().contains(spot.field()),
        "{spot:?}: the error names the limit and the field: {e}"
    );
}

/// Runs `$call`, an expression of `$r: &ChatRequest`, on a worker thread of the current
/// (multi-thread) runtime; evaluates to its output and the request, handed back so the
/// test can take it apart. What `$call` uses is moved into the task.
macro_rules! on_worker {
    ($request:expr, |$r:ident| async $body:block $(,)?) => {
        on_worker!($request, |$r| async $body.await)
    };
    ($request:expr, |$r:ident| $call:expr $(,)?) => {{
        let request: ChatRequest = $request;
        tokio::spawn(async move {
            let $r = &request;
            let out = $call;
            (out, request)
        })
        .await
        .expect("the call panicked")
    }};
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_serves_at_the_limit_and_refuses_past_it() {
    let mock = MockUpstream::start().await;
    let cache = cache(&mock).await;
    for spot in Spot::ALL {
        let prompt = format!("chat {spot:?}");
        let fits = spot.request(&prompt, MAX_REQUEST_DEPTH);
        let expected = expected_content(&fits);
        let c = cache.clone();
        let (out, _) = on_worker!(fits, |r| c.chat(r).await);
        let out = out.unwrap_or_else(|e| panic!("{spot:?} at the limit: {e}"));
        assert_eq!(out.status(), CacheStatus::Miss);
        assert_eq!(out.value().text().as_deref(), Some(expected.as_str()));

        let calls = mock.calls();
        let c = cache.clone();
        let deeper = spot.request(&prompt, MAX_REQUEST_DEPTH + 1);
        let (out, _) = on_worker!(deeper, |r| c.chat(r).await);
        assert_refused(&out.unwrap_err(), spot);
        assert_eq!(mock.calls(), calls, "{spot:?}: no upstream call");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_with_serves_at_the_limit_and_refuses_past_it() {
    let mock = MockUpstream::start().await;
    let cache = cache(&mock).await;
    for spot in Spot::ALL {
        let prompt = format!("chat_with {spot:?}");
        let c = cache.clone();
        let (out, _) = on_worker!(spot.request(&prompt, MAX_REQUEST_DEPTH), |r| async {
            let control = CacheControl::new().namespace("tenant-1");
            c.chat_with(r, &control).await
        },);
        assert_eq!(out.unwrap().status(), CacheStatus::Miss, "{spot:?}");

        let calls = mock.calls();
        let c = cache.clone();
        let (out, _) = on_worker!(spot.request(&prompt, MAX_REQUEST_DEPTH + 1), |r| async {
            let control = CacheControl::new().namespace("tenant-1");
            c.chat_with(r, &control).await
        },);
        assert_refused(&out.unwrap_err(), spot);
        assert_eq!(mock.calls(), calls, "{spot:?}: no upstream call");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_stream_serves_at_the_limit_and_refuses_past_it() {
    let mock = MockUpstream::start().await;
    let cache = cache(&mock).await;
    for spot in Spot::ALL {
        let prompt = format!("stream {spot:?}");
        let fits = spot.request(&prompt, MAX_REQUEST_DEPTH);
        let expected = expected_content(&fits);
        let c = cache.clone();
        let (text, _) = on_worker!(fits, |r| async {
            let stream = c.chat_stream(r).await?;
            assert_eq!(stream.status(), CacheStatus::Miss);
            let chunks: Vec<_> = stream.collect().await;
            let mut text = String::new();
            for chunk in chunks {
                for choice in chunk?.choices {
                    text.extend(choice.delta.content);
                }
            }
            Ok::<_, llm_cache::Error>(text)
        });
        assert_eq!(text.unwrap(), expected, "{spot:?}");

        let calls = mock.stream_calls();
        let c = cache.clone();
        let (out, _) = on_worker!(spot.request(&prompt, MAX_REQUEST_DEPTH + 1), |r| c
            .chat_stream(r)
            .await
            .map(|s| s.status()),);
        assert_refused(&out.unwrap_err(), spot);
        assert_eq!(mock.stream_calls(), calls, "{spot:?}: no upstream call");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_refuses_only_the_requests_past_the_limit() {
    let mock = MockUpstream::start().await;
    let cache = cache(&mock).await;
    for spot in Spot::ALL {
        let prompt = format!("batch {spot:?}");
        let requests = vec![
            spot.request(&prompt, MAX_REQUEST_DEPTH),
            spot.request(&prompt, MAX_REQUEST_DEPTH + 1),
            spot.request(&prompt, MAX_REQUEST_DEPTH),
        ];
        let calls = mock.calls();
        let c = cache.clone();
        let results = tokio::spawn(async move { c.batch(&requests, 4).await })
            .await
            .unwrap();
        assert_eq!(results.len(), 3);
        assert_eq!(results[0].as_ref().unwrap().status(), CacheStatus::Miss);
        assert_refused(results[1].as_ref().unwrap_err(), spot);
        assert_eq!(
            results[2].as_ref().unwrap().status(),
            CacheStatus::Coalesced
        );
        assert_eq!(
            mock.calls(),
            calls + 1,
            "{spot:?}: one call for the valid pair"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidate_accepts_the_limit_and_refuses_past_it() {
    let mock = MockUpstream::start().await;
    let cache = cache(&mock).await;
    for spot in Spot::ALL {
        let prompt = format!("invalidate {spot:?}");
        let c = cache.clone();
        let (statuses, _) = on_worker!(spot.request(&prompt, MAX_REQUEST_DEPTH), |r| async {
            let first = c.chat(r).await.unwrap().status();
            c.invalidate(r).await.unwrap();
            let again = c.chat(r).await.unwrap().status();
            (first, again)
        },);
        // Invalidated: the second ask went upstream again.
        assert_eq!(statuses, (CacheStatus::Miss, CacheStatus::Miss), "{spot:?}");

        let c = cache.clone();
        let (out, _) = on_worker!(spot.request(&prompt, MAX_REQUEST_DEPTH + 1), |r| c
            .invalidate(r)
            .await,);
        assert_refused(&out.unwrap_err(), spot);
    }
}

/// The child's work: requests thousands and 100,000 levels deep, at every spot, through
/// every entry point, each on a runtime worker; all refused, none sent. Does nothing
/// unless run by [`deep_requests_never_abort_the_process`].
#[test]
fn child_refuses_deep_requests() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mock = MockUpstream::start().await;
        let cache = cache(&mock).await;
        for depth in [3_000, 100_000] {
            for spot in Spot::ALL {
                let deep = move || spot.request("deep", depth);
                let c = cache.clone();
                let (out, r) = on_worker!(deep(), |r| async { c.chat(r).await.map(|_| ()) });
                assert_refused(&out.unwrap_err(), spot);
                dismantle_request(r);

                let c = cache.clone();
                let (out, r) = on_worker!(deep(), |r| async {
                    c.chat_with(r, &CacheControl::new().namespace("t"))
                        .await
                        .map(|_| ())
                });
                assert_refused(&out.unwrap_err(), spot);
                dismantle_request(r);

                let c = cache.clone();
                let (out, r) = on_worker!(deep(), |r| async { c.chat_stream(r).await.map(|_| ()) });
                assert_refused(&out.unwrap_err(), spot);
                dismantle_request(r);

                let c = cache.clone();
                let (out, r) = on_worker!(deep(), |r| c.invalidate(r).await);
                assert_refused(&out.unwrap_err(), spot);
                dismantle_request(r);

                let c = cache.clone();
                let (results, requests) = tokio::spawn(async move {
                    let requests = vec![deep()];
                    (c.batch(&requests, 2).await, requests)
                })
                .await
                .unwrap();
                assert_refused(results[0].as_ref().unwrap_err(), spot);
                requests.into_iter().for_each(dismantle_request);
            }
        }
        assert_eq!(mock.calls(), 0, "no deep request reached the upstream");
        println!("child: every deep request was refused");
    });
}

/// Runs [`child_refuses_deep_requests`] in a child process, so that a stack overflow
/// (which aborts the process) fails this test instead of killing the test binary.
#[test]
fn deep_requests_never_abort_the_process() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "limits::child_refuses_deep_requests",
            "--nocapture",
        ])
        .args(["--test-threads", "1"])
        .env(CHILD_ENV, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the child exited with {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("child: every deep request was refused"),
        "the child did not run its test\n{stdout}"
    );
}
