//! L1 + Redis (L2): two cache instances share one Redis, as two processes of a service
//! would. The first instance fetches the answer; the second, with an empty L1, gets it
//! from Redis without calling the upstream.
//!
//! ```text
//! REDIS_URL=redis://127.0.0.1:6379 OPENAI_API_KEY=sk-... cargo run --example with_redis
//! ```
//!
//! `OPENAI_BASE_URL` and `OPENAI_MODEL` as in `quick_start`. Without `REDIS_URL` or
//! `OPENAI_API_KEY` it says what to set and exits.

use std::time::Duration;

use llm_cache::{ChatMessage, ChatRequest, LlmCache, OpenAiCompatible};

async fn instance(redis_url: &str, base_url: &str, api_key: &str) -> llm_cache::Result<LlmCache> {
    LlmCache::builder()
        .upstream(OpenAiCompatible::new(base_url).api_key(api_key))
        .redis(redis_url)
        .key_prefix("example:with_redis")
        .l2_ttl(Duration::from_secs(3600))
        .build()
        .await
}

#[tokio::main]
async fn main() -> llm_cache::Result<()> {
    let (Ok(redis_url), Ok(api_key)) =
        (std::env::var("REDIS_URL"), std::env::var("OPENAI_API_KEY"))
    else {
        println!("Set REDIS_URL (e.g. redis://127.0.0.1:6379) and OPENAI_API_KEY.");
        return Ok(());
    };
    let base_url =
        std::env::var("OPENAI_BASE_URL").unwrap_or_else(|_| "https://api.openai.com/v1".into());
    let model = std::env::var("OPENAI_MODEL").unwrap_or_else(|_| "gpt-4.1-mini".into());

    let request = ChatRequest::new(model)
        .message(ChatMessage::user("Name one prime number above 100."))
        .temperature(0.0);

    let first = instance(&redis_url, &base_url, &api_key).await?;
    let answer = first.chat(&request).await?;
    println!("first instance:  {:?}", answer.status()); // Miss (or HitL2 on a re-run)
    // Redis writes happen in the background, off the request's path: wait for this one
    // (a real service never waits; the next request would simply miss).
    for _ in 0..100 {
        let s = first.stats().cache;
        if s.l2_writes + s.l2_errors + s.l2_timeouts + s.dropped_writes >= s.fetches {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let second = instance(&redis_url, &base_url, &api_key).await?;
    let again = second.chat(&request).await?;
    println!("second instance: {:?}", again.status()); // HitL2: no upstream call
    println!("answer: {}", again.text().unwrap_or_default());

    for (name, cache) in [("first", &first), ("second", &second)] {
        let stats = cache.stats();
        println!(
            "{name}: upstream calls {}, L1 hits {}, L2 hits {}, L2 errors {}, L2 writes {}",
            stats.upstream_calls,
            stats.cache.l1_hits,
            stats.cache.l2_hits,
            stats.cache.l2_errors,
            stats.cache.l2_writes
        );
    }
    Ok(())
}
