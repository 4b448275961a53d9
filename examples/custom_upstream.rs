//! Bring your own client: implement `Upstream` (here a canned one that counts its calls,
//! so it runs with no network) and put `LlmCache` in front of it. Ten identical requests
//! at once cost one call; a later one is an L1 hit; a stream of a cached answer is replayed.
//!
//! ```text
//! cargo run --example custom_upstream
//! ```
//!
//! A real implementation wraps a vendor SDK or an internal router the same way: map its
//! answer to a `ChatResponse` (with `usage`, so the cache can count what it saved) and its
//! failures to `llm_cache::Error`. `chat_stream` has a default that replays `chat`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use llm_cache::{
    BoxFuture, CacheStatus, ChatMessage, ChatRequest, ChatResponse, Choice, LlmCache, Result,
    Upstream, Usage,
};

/// Answers every request by repeating its last message, after 50 ms, and counts its calls.
#[derive(Default)]
struct Canned {
    calls: AtomicU64,
}

impl Upstream for Canned {
    fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(50)).await;
            let asked = request
                .messages
                .last()
                .and_then(|m| m.text())
                .unwrap_or_default();
            Ok(ChatResponse {
                model: request.model.clone(),
                choices: vec![Choice {
                    message: ChatMessage::assistant(format!("You said: {asked}")),
                    finish_reason: Some("stop".into()),
                    ..Default::default()
                }],
                usage: Some(Usage {
                    prompt_tokens: 12,
                    completion_tokens: 8,
                    total_tokens: 20,
                    ..Default::default()
                }),
                ..Default::default()
            })
        })
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let upstream = Arc::new(Canned::default());
    let cache = LlmCache::builder()
        .upstream(Arc::clone(&upstream)) // `Arc<U>` is an `Upstream` too: keep a handle
        .build()
        .await?;
    let request = ChatRequest::new("gpt-4.1").message(ChatMessage::user("hello, cache"));

    // Ten identical requests at once: one leader calls the upstream, nine join its flight.
    let answers = futures_util::future::join_all((0..10).map(|_| cache.chat(&request))).await;
    let mut statuses = Vec::new();
    for answer in answers {
        statuses.push(answer?.status().as_str());
    }
    println!("10 concurrent requests: {statuses:?}");
    println!(
        "upstream calls so far: {}",
        upstream.calls.load(Ordering::Relaxed)
    );

    let again = cache.chat(&request).await?;
    assert_eq!(again.status(), CacheStatus::HitL1);
    println!(
        "later request: {:?}: {}",
        again.status(),
        again.text().unwrap_or_default()
    );

    // The cached answer replayed as `chat.completion.chunk`s.
    let mut stream = cache.chat_stream(&request).await?;
    print!("streamed ({}):", stream.status().as_str());
    while let Some(chunk) = stream.next().await {
        for choice in chunk?.choices {
            print!("{}", choice.delta.content.unwrap_or_default());
        }
    }
    println!();

    let stats = cache.stats();
    println!(
        "upstream calls: {}, coalesced: {}, L1 hits: {}, tokens saved: {}",
        upstream.calls.load(Ordering::Relaxed),
        stats.cache.coalesced,
        stats.cache.l1_hits,
        stats.tokens_saved
    );
    Ok(())
}
