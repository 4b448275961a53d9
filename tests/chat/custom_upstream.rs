//! An `Upstream` of the caller's own can say "HTTP 429, retry after 3 s", and every caller
//! of `LlmCache::chat` sees exactly that; the error is not cached.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use llm_cache::{
    BoxFuture, ChatMessage, ChatRequest, ChatResponse, Error, ErrorKind, LlmCache, Result, Upstream,
};

/// Answers every request with a 429 and `Retry-After: 3`, slowly enough that concurrent
/// callers share the flight.
struct RateLimited {
    calls: Arc<AtomicUsize>,
}

impl Upstream for RateLimited {
    fn chat<'a>(&'a self, _: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(100)).await;
            Err(Error::upstream_status(429, "rate limited: slow down")
                .with_retry_after(Duration::from_secs(3)))
        })
    }
}

fn assert_rate_limited(e: &Error) {
    assert_eq!(e.kind(), ErrorKind::Upstream, "{e:?}");
    assert!(e.is_upstream());
    assert!(e.is_rate_limited());
    assert_eq!(e.status(), Some(429));
    assert_eq!(e.retry_after(), Some(Duration::from_secs(3)));
    assert_eq!(e.message(), "rate limited: slow down");
}

#[tokio::test]
async fn a_custom_upstreams_429_and_retry_after_reach_every_caller_uncached() {
    let calls = Arc::new(AtomicUsize::new(0));
    let cache = LlmCache::builder()
        .upstream(RateLimited {
            calls: Arc::clone(&calls),
        })
        .build()
        .await
        .unwrap();
    let request = ChatRequest::new("m").message(ChatMessage::user("hello"));

    // Two concurrent callers: one flight, one call, the same error for both.
    let (a, b) = tokio::join!(cache.chat(&request), cache.chat(&request));
    assert_rate_limited(&a.unwrap_err());
    assert_rate_limited(&b.unwrap_err());
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Errors are never cached: the next call asks the upstream again.
    assert_rate_limited(&cache.chat(&request).await.unwrap_err());
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(cache.tiers().inflight(), 0);
}
