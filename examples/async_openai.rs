//! Already using async-openai? An ordinary async-openai program, plus the one line that
//! puts the cache in its HTTP stack. The same question asked twice costs one upstream call.
//!
//! ```text
//! OPENAI_API_KEY=sk-... cargo run --example async_openai --features async-openai
//! OPENAI_BASE_URL=http://127.0.0.1:11434/v1 OPENAI_API_KEY=unused OPENAI_MODEL=llama3.2 \
//!     cargo run --example async_openai --features async-openai   # any compatible server
//! REDIS_URL=redis://127.0.0.1:6379 ...                            # share it across processes
//! ```
//!
//! Without `OPENAI_API_KEY` it says what to set and exits without calling anything.
//!
//! The recommended stack: the cache outside, async-openai's retry layer inside, so only
//! misses are retried (a hit never waits on a backoff), and a 429 or 500 that survives the
//! retries reaches the program as async-openai's own error, never stored.
//! (`with_http_service` replaces the client's built-in retries, so put them back here.)

use std::time::Instant;

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::middleware::ReqwestService;
use async_openai::middleware::retry::OpenAIRetryLayer;
use async_openai::types::chat::{
    ChatCompletionRequestSystemMessage, ChatCompletionRequestUserMessage,
    CreateChatCompletionRequestArgs,
};
use llm_cache::LlmCache;
use llm_cache::async_openai::{AsyncOpenAiLayer, observe};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Ok(api_key) = std::env::var("OPENAI_API_KEY") else {
        println!("Set OPENAI_API_KEY (and OPENAI_BASE_URL for an API other than OpenAI's).");
        return Ok(());
    };
    let base_url =
        std::env::var("OPENAI_BASE_URL").unwrap_or_else(|_| "https://api.openai.com/v1".into());
    let model = std::env::var("OPENAI_MODEL").unwrap_or_else(|_| "gpt-4.1-mini".into());
    let mut cache = LlmCache::builder();
    if let Ok(redis) = std::env::var("REDIS_URL") {
        cache = cache.redis(redis);
    }

    let config = OpenAIConfig::new()
        .with_api_base(base_url)
        .with_api_key(api_key);
    let client = Client::with_config(config).with_http_service(
        tower::ServiceBuilder::new()
            .layer(AsyncOpenAiLayer::build(cache).await?) // <- the one line
            .layer(OpenAIRetryLayer::default())
            .service(ReqwestService::new(reqwest::Client::new())),
    );

    // From here on: async-openai as usual.
    let request = CreateChatCompletionRequestArgs::default()
        .model(model)
        .messages([
            ChatCompletionRequestSystemMessage::from("Answer in one sentence.").into(),
            ChatCompletionRequestUserMessage::from("What is a cache?").into(),
        ])
        .temperature(0.0)
        .build()?;
    for attempt in 1..=2 {
        let started = Instant::now();
        // `observe` hands back what the typed API drops: where the answer came from.
        let (answer, seen) = observe(client.chat().create(request.clone())).await;
        let answer = answer?;
        let status = seen.status().map_or("not cached".into(), |s| s.to_string());
        println!(
            "#{attempt} in {:?} ({status}): {}",
            started.elapsed(),
            answer.choices[0].message.content.as_deref().unwrap_or("")
        );
    }
    Ok(())
}
