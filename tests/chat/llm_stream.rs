//! `LlmCache::chat_stream` end to end: one upstream stream per key however many consumers,
//! live chunks before the stream ends, faithful replay on hits, nothing stored from a
//! broken stream. Mock upstream over real HTTP with a chunk gate; real Redis where a second
//! instance matters.

use llm_cache_test_support as support;

use std::time::Duration;

use futures_util::StreamExt;
use llm_cache::stream::{Assembler, ChatChunk};
use llm_cache::{
    CacheControl, CacheStatus, ChatMessage, ChatRequest, ChatResponse, LlmCache, OpenAiCompatible,
    RetryPolicy,
};
use serde_json::json;
use support::eventually;
use support::redis::RedisServer;
use support::upstream::{MockReply, MockUpstream, expected_content, expected_tool_calls};

const WAIT: Duration = Duration::from_secs(10);

fn request(prompt: &str) -> ChatRequest {
    ChatRequest::new("gpt-4.1").message(ChatMessage::user(prompt))
}

fn with_usage(r: ChatRequest) -> ChatRequest {
    ChatRequest {
        stream: Some(true),
        stream_options: Some(json!({"include_usage": true})),
        ..r
    }
}

async fn cache_with(mock: &MockUpstream, redis: Option<&RedisServer>, abort: bool) -> LlmCache {
    let mut b = LlmCache::builder()
        .upstream(
            OpenAiCompatible::new(mock.base_url())
                .api_key("sk-stream-secret")
                .retry(RetryPolicy::none()),
        )
        .stream_chunk_chars(5)
        .abort_abandoned_streams(abort);
    if let Some(r) = redis {
        b = b.redis(r.url());
    }
    b.build().await.unwrap()
}

async fn cache(mock: &MockUpstream) -> LlmCache {
    cache_with(mock, None, false).await
}

async fn collect(stream: llm_cache::CachedStream) -> (Vec<ChatChunk>, Option<llm_cache::Error>) {
    let mut chunks = Vec::new();
    let mut s = stream;
    while let Some(item) = s.next().await {
        match item {
            Ok(c) => chunks.push(c),
            Err(e) => return (chunks, Some(e)),
        }
    }
    (chunks, None)
}

/// The stored answer as a consumer that did not ask for usage sees it.
fn without_usage(r: &ChatResponse) -> ChatResponse {
    ChatResponse {
        usage: None,
        ..r.clone()
    }
}

fn assemble(chunks: &[ChatChunk]) -> ChatResponse {
    let mut a = Assembler::new();
    for c in chunks {
        a.push(c).unwrap();
    }
    a.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_streams_share_one_upstream_stream() {
    let mock = MockUpstream::start().await;
    mock.hold_stream_after(2);
    let c = cache(&mock).await;
    let req = request("stream to fifty of you");
    let first = c.chat_stream(&req).await.unwrap();
    assert_eq!(first.status(), CacheStatus::Miss);
    let mut joiners = Vec::new();
    for _ in 0..49 {
        let (c, req) = (c.clone(), req.clone());
        joiners.push(tokio::spawn(async move {
            let s = c.chat_stream(&req).await.unwrap();
            assert_eq!(s.status(), CacheStatus::Coalesced);
            collect(s).await
        }));
    }
    eventually("49 streams joined", WAIT, || {
        c.stats().cache.coalesced == 49
    })
    .await;
    // The first consumer reads live chunks while the mock still holds back the rest.
    let mut first = first;
    let chunk = first.next().await.unwrap().unwrap();
    assert_eq!(chunk.choices[0].delta.role.as_deref(), Some("assistant"));
    mock.wait_for_streamed_chunks(2).await;
    assert_eq!(
        mock.streamed_chunks(),
        2,
        "the mock is still holding back the rest"
    );
    mock.release_stream();
    let (mut rest, err) = collect(first).await;
    assert!(err.is_none());
    rest.insert(0, chunk);
    let answer = assemble(&rest);
    assert_eq!(answer.text().unwrap(), expected_content(&req));
    for j in joiners {
        let (chunks, err) = j.await.unwrap();
        assert!(err.is_none(), "{err:?}");
        assert_eq!(
            assemble(&chunks),
            answer,
            "every consumer gets identical content"
        );
    }
    assert_eq!(mock.calls(), 1);
    assert_eq!(mock.stream_calls(), 1);
    // The assembled answer now serves both kinds of request.
    assert_eq!(c.chat(&req).await.unwrap().status(), CacheStatus::HitL1);
    let stored = c.chat(&req).await.unwrap();
    assert_eq!(without_usage(stored.value()), answer);
    assert!(
        stored.usage.is_some(),
        "the cache asked upstream for usage, for accounting"
    );
    assert_eq!(mock.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_joiner_and_non_stream_caller_during_the_stream() {
    let mock = MockUpstream::start().await;
    mock.hold_stream_after(4);
    let c = cache(&mock).await;
    let req = request("late joiners welcome");
    let early = c.chat_stream(&req).await.unwrap();
    mock.wait_for_streamed_chunks(4).await;
    let (c2, r2) = (c.clone(), req.clone());
    let plain = tokio::spawn(async move { c2.chat(&r2).await });
    let late = c.chat_stream(&req).await.unwrap();
    assert_eq!(late.status(), CacheStatus::Coalesced);
    // Two joins: the late stream's (counted already) and the plain chat's.
    eventually("the plain chat joined the flight", WAIT, || {
        c.stats().cache.coalesced >= 2
    })
    .await;
    mock.release_stream();
    let (early_chunks, e1) = collect(early).await;
    let (late_chunks, e2) = collect(late).await;
    assert!(e1.is_none() && e2.is_none());
    assert_eq!(early_chunks, late_chunks, "the late joiner got every chunk");
    let plain = plain.await.unwrap().unwrap();
    assert_eq!(plain.status(), CacheStatus::Coalesced);
    assert_eq!(without_usage(plain.value()), assemble(&early_chunks));
    assert_eq!(mock.calls(), 1);
    // Afterwards both are hits.
    assert_eq!(c.chat(&req).await.unwrap().status(), CacheStatus::HitL1);
    let replayed = c.chat_stream(&req).await.unwrap();
    assert_eq!(replayed.status(), CacheStatus::HitL1);
    let (chunks, _) = collect(replayed).await;
    assert_eq!(assemble(&chunks), without_usage(plain.value()));
    assert_eq!(mock.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_stream_stores_nothing_and_every_consumer_errors() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let c = cache_with(&mock, Some(&redis), false).await;
    let req = request("this one breaks");
    mock.push_reply(MockReply::StreamCut { after: 3 });
    mock.hold_stream_after(2);
    let a = c.chat_stream(&req).await.unwrap();
    let b = c.chat_stream(&req).await.unwrap();
    mock.release_stream();
    let (ca, ea) = collect(a).await;
    let (cb, eb) = collect(b).await;
    assert!(ea.is_some() && eb.is_some(), "both consumers see the error");
    assert_eq!(ca, cb);
    assert!(!ca.is_empty());
    let s = c.stats();
    assert_eq!(s.cache.fetch_errors, 1);
    assert!(
        c.tiers()
            .fetch_stored(&c.digest_with(&req, &CacheControl::new()))
            .await
            .is_none()
    );
    // The next request goes upstream again, and succeeds.
    let again = c.chat_stream(&req).await.unwrap();
    assert_eq!(again.status(), CacheStatus::Miss);
    let (chunks, err) = collect(again).await;
    assert!(err.is_none());
    assert_eq!(assemble(&chunks).text().unwrap(), expected_content(&req));
    assert_eq!(mock.calls(), 2);
}

#[tokio::test]
async fn tool_call_streams_assemble_and_replay() {
    let mock = MockUpstream::start().await;
    let c = cache(&mock).await;
    let req = request("call some tools");
    mock.push_reply(MockReply::StreamToolCalls);
    let (live, err) = collect(c.chat_stream(&req).await.unwrap()).await;
    assert!(err.is_none());
    let answer = assemble(&live);
    let calls: Vec<(String, String)> = answer.choices[0]
        .message
        .tool_calls
        .as_ref()
        .unwrap()
        .iter()
        .map(|t| (t.function.name.clone(), t.function.arguments.clone()))
        .collect();
    assert_eq!(calls, expected_tool_calls(&req));
    assert_eq!(
        answer.choices[0].finish_reason.as_deref(),
        Some("tool_calls")
    );
    let replay = c.chat_stream(&req).await.unwrap();
    assert_eq!(replay.status(), CacheStatus::HitL1);
    let (replayed, _) = collect(replay).await;
    assert_eq!(assemble(&replayed), answer);
    // Tool calls are replayed as indexed deltas: name first, then the arguments.
    let first_delta = replayed
        .iter()
        .flat_map(|c| c.choices.iter())
        .flat_map(|ch| ch.delta.tool_calls.iter().flatten())
        .next()
        .unwrap();
    assert!(first_delta.function.as_ref().unwrap().name.is_some());
    assert_eq!(mock.calls(), 1);
}

#[tokio::test]
async fn replay_keeps_ids_and_usage_only_when_asked() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let a = cache_with(&mock, Some(&redis), false).await;
    let req = request("unicode ✓ 日本語 🎉 please");
    let (live, _) = collect(a.chat_stream(&with_usage(req.clone())).await.unwrap()).await;
    let last = live.last().unwrap();
    assert!(
        last.choices.is_empty() && last.usage.is_some(),
        "usage chunk when asked"
    );
    let original = assemble(&live);
    eventually("L2 write", WAIT, || a.stats().cache.l2_writes == 1).await;

    // Another instance: an L2 hit, replayed.
    let b = cache_with(&mock, Some(&redis), false).await;
    let hit = b.chat_stream(&req).await.unwrap();
    assert_eq!(hit.status(), CacheStatus::HitL2);
    let (chunks, _) = collect(hit).await;
    assert!(
        chunks.iter().all(|c| c.usage.is_none()),
        "no usage chunk unless asked"
    );
    for c in &chunks {
        assert_eq!(c.id, original.id);
        assert_eq!(c.model, original.model);
        assert_eq!(c.created, original.created);
        assert_eq!(c.system_fingerprint, original.system_fingerprint);
        assert_eq!(c.object, "chat.completion.chunk");
    }
    let text: String = chunks
        .iter()
        .filter_map(|c| c.choices.first()?.delta.content.clone())
        .collect();
    assert_eq!(
        text,
        original.text().unwrap(),
        "deltas concatenate to the content"
    );
    let with = b.chat_stream(&with_usage(req.clone())).await.unwrap();
    let (chunks, _) = collect(with).await;
    assert_eq!(chunks.last().unwrap().usage, original.usage);
    assert_eq!(mock.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_streams_are_read_to_the_end_and_stored() {
    let mock = MockUpstream::start().await;
    mock.hold_stream_after(2);
    let c = cache(&mock).await;
    let req = request("nobody is listening");
    let s = c.chat_stream(&req).await.unwrap();
    drop(s);
    mock.release_stream();
    eventually("stored after every consumer left", WAIT, || {
        c.stats().cache.misses == 1 && c.tiers().inflight() == 0
    })
    .await;
    assert_eq!(c.chat(&req).await.unwrap().status(), CacheStatus::HitL1);
    assert_eq!(mock.calls(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_option_stops_an_abandoned_stream_and_stores_nothing() {
    let mock = MockUpstream::start().await;
    mock.hold_stream_after(2);
    let c = cache_with(&mock, None, true).await;
    let req = request("abort me");
    let s = c.chat_stream(&req).await.unwrap();
    mock.wait_for_streamed_chunks(2).await;
    drop(s);
    mock.release_stream();
    eventually("the flight ended", WAIT, || c.tiers().inflight() == 0).await;
    assert_eq!(c.stats().cache.fetch_errors, 1);
    assert_eq!(c.chat(&req).await.unwrap().status(), CacheStatus::Miss);
    assert_eq!(mock.calls(), 2);
}

#[tokio::test]
async fn bypass_streams_straight_from_upstream() {
    let mock = MockUpstream::start().await;
    let c = cache(&mock).await;
    let req = request("bypass stream");
    let s = c
        .chat_stream_with(&req, &CacheControl::new().bypass(true))
        .await
        .unwrap();
    assert_eq!(s.status(), CacheStatus::Bypass);
    let (chunks, err) = collect(s).await;
    assert!(err.is_none());
    assert!(chunks.iter().all(|c| c.usage.is_none()));
    assert_eq!(assemble(&chunks).text().unwrap(), expected_content(&req));
    assert_eq!(
        c.chat(&req).await.unwrap().status(),
        CacheStatus::Miss,
        "bypass stored nothing"
    );
}

#[tokio::test]
async fn an_error_before_any_chunk_is_returned_by_chat_stream() {
    let mock = MockUpstream::start().await;
    let c = cache(&mock).await;
    mock.push_reply(MockReply::openai_error(400, "no streaming for you"));
    let e = c.chat_stream(&request("x")).await.unwrap_err();
    assert_eq!(e.status(), Some(400));
    assert!(!format!("{e:?}").contains("sk-stream-secret"));
    assert_eq!(c.tiers().inflight(), 0);
}

/// A cache whose waiter and stream deadlines are given, L1-only, no retries.
async fn cache_with_deadlines(mock: &MockUpstream, waiter: Duration, stream: Duration) -> LlmCache {
    LlmCache::builder()
        .upstream(OpenAiCompatible::new(mock.base_url()).retry(RetryPolicy::none()))
        .waiter_deadline(waiter)
        .stream_deadline(stream)
        .build()
        .await
        .unwrap()
}

/// The text a consumer read.
fn text_of(chunks: &[ChatChunk]) -> String {
    chunks
        .iter()
        .flat_map(|c| &c.choices)
        .filter_map(|c| c.delta.content.as_deref())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_longer_than_the_waiter_deadline_reaches_every_consumer_and_is_stored() {
    let mock = MockUpstream::start().await;
    // Held for as long as the test likes, then 100 ms between chunks: in all, the stream
    // lasts well past the 300 ms waiter deadline, and well within the stream deadline.
    mock.hold_stream_after(1);
    mock.set_chunk_interval(Duration::from_millis(100));
    let c = cache_with_deadlines(&mock, Duration::from_millis(300), WAIT).await;
    let req = request("a long answer, streamed slowly to every consumer");
    let leader = c.chat_stream(&req).await.unwrap();
    assert_eq!(leader.status(), CacheStatus::Miss);
    let joiners = [
        c.chat_stream(&req).await.unwrap(),
        c.chat_stream(&req).await.unwrap(),
    ];
    for j in &joiners {
        assert_eq!(j.status(), CacheStatus::Coalesced);
    }
    mock.release_stream();
    let expected = expected_content(&req);
    let consumers = std::iter::once(leader).chain(joiners);
    let reads = futures_util::future::join_all(consumers.map(collect)).await;
    for (i, (chunks, error)) in reads.iter().enumerate() {
        assert!(error.is_none(), "consumer {i} got {error:?}");
        assert_eq!(
            text_of(chunks),
            expected,
            "consumer {i} got the whole stream"
        );
    }
    assert_eq!(mock.stream_calls(), 1);
    // Stored: asked again, in either form, it is a hit.
    assert_eq!(c.chat(&req).await.unwrap().status(), CacheStatus::HitL1);
    let again = c.chat_stream(&req).await.unwrap();
    assert_eq!(again.status(), CacheStatus::HitL1);
    assert_eq!(text_of(&collect(again).await.0), expected);
    assert_eq!(mock.calls(), 1);
    assert_eq!(c.stats().cache.waiter_timeouts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_past_the_stream_deadline_errors_for_every_consumer_and_stores_nothing() {
    let mock = MockUpstream::start().await;
    // Held after its first chunk until the test is done: it can only end by the deadline.
    mock.hold_stream_after(1);
    let c = cache_with_deadlines(&mock, WAIT, Duration::from_millis(300)).await;
    let req = request("a stream that never ends");
    let leader = c.chat_stream(&req).await.unwrap();
    let joiner = c.chat_stream(&req).await.unwrap();
    assert_eq!(joiner.status(), CacheStatus::Coalesced);
    let digest = leader.digest();
    for (i, (chunks, error)) in [collect(leader).await, collect(joiner).await]
        .into_iter()
        .enumerate()
    {
        assert_eq!(
            chunks.len(),
            1,
            "consumer {i} got the chunk sent before the cut"
        );
        let e = error.unwrap_or_else(|| panic!("consumer {i}: the stream ended without error"));
        assert!(e.is_timeout(), "consumer {i}: {e}");
        assert!(e.message().contains("stream_deadline"), "consumer {i}: {e}");
    }
    assert!(c.tiers().get(&digest).await.is_none(), "nothing is stored");
    mock.release_stream();
    // The next ask goes upstream again.
    let again = c.chat_stream(&req).await.unwrap();
    assert_eq!(again.status(), CacheStatus::Miss);
    drop(again);
    assert_eq!(mock.stream_calls(), 2);
}

#[tokio::test]
async fn a_zero_stream_deadline_is_refused_by_name() {
    let mock = MockUpstream::start().await;
    let e = LlmCache::builder()
        .upstream(OpenAiCompatible::new(mock.base_url()))
        .stream_deadline(Duration::ZERO)
        .build()
        .await
        .unwrap_err();
    assert!(
        e.is_config() && e.message().contains("stream_deadline"),
        "{e}"
    );
}
