//! Quick start: an L1-only (in-process) cache in front of an OpenAI-compatible API.
//! The same question asked twice costs one upstream call; the second answer is an L1 hit.
//!
//! ```text
//! OPENAI_API_KEY=sk-... cargo run --example quick_start
//! OPENAI_BASE_URL=http://127.0.0.1:11434/v1 OPENAI_API_KEY=unused OPENAI_MODEL=llama3.2 \
//!     cargo run --example quick_start        # any OpenAI-compatible server (here Ollama)
//! ```
//!
//! Without `OPENAI_API_KEY` it says what to set and exits without calling anything.

use std::time::{Duration, Instant};

use llm_cache::{ChatMessage, ChatRequest, LlmCache, OpenAiCompatible};

#[tokio::main]
async fn main() -> llm_cache::Result<()> {
    let Ok(api_key) = std::env::var("OPENAI_API_KEY") else {
        println!("Set OPENAI_API_KEY (and OPENAI_BASE_URL for an API other than OpenAI's).");
        return Ok(());
    };
    let base_url =
        std::env::var("OPENAI_BASE_URL").unwrap_or_else(|_| "https://api.openai.com/v1".into());
    let model = std::env::var("OPENAI_MODEL").unwrap_or_else(|_| "gpt-4.1-mini".into());

    // No `redis(...)`: the cache lives in this process only.
    let cache = LlmCache::builder()
        .upstream(OpenAiCompatible::new(base_url).api_key(api_key))
        .l1_max_bytes(64 << 20)
        .l1_ttl(Duration::from_secs(600))
        .build()
        .await?;

    let request = ChatRequest::new(model)
        .message(ChatMessage::system("Answer in one sentence."))
        .message(ChatMessage::user("What is a cache?"))
        .temperature(0.0);

    for attempt in 1..=2 {
        let started = Instant::now();
        let answer = cache.chat(&request).await?;
        println!(
            "#{attempt}: {:?} in {:?}: {}",
            answer.status(),
            started.elapsed(),
            answer.text().unwrap_or_default()
        );
    }

    let stats = cache.stats();
    println!(
        "upstream calls: {}, hit ratio: {:.2}, tokens saved: {}",
        stats.upstream_calls,
        stats.cache.hit_ratio(),
        stats.tokens_saved
    );
    Ok(())
}
