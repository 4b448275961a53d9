//! An axum service that nests the cache's OpenAI-compatible front under `/llm`: point any
//! OpenAI SDK at `http://127.0.0.1:3000/llm/v1` and repeats are answered from cache, with
//! `x-llm-cache` (`hit-l1`, `hit-l2`, `miss`, `coalesced`, `bypass`) saying how.
//!
//! ```text
//! OPENAI_API_KEY=sk-... cargo run --example axum_service --features axum   # REDIS_URL=... for an L2
//! curl -si localhost:3000/llm/v1/chat/completions -H 'content-type: application/json' \
//!     -d '{"model":"gpt-4.1-mini","messages":[{"role":"user","content":"Hi"}]}'
//! ```
//!
//! `OPENAI_BASE_URL` names another OpenAI-compatible API; `LISTEN_ADDR` the address
//! (default 127.0.0.1:3000). Without `OPENAI_API_KEY` it says what to set and exits.
//! `llm_cache::serve::router` is open to every caller: put it behind your service's own
//! authentication, or use `llm_cache::serve::builder(cache).callers(..)` (or the
//! `llm-cache-proxy` binary) for caller keys.

use axum::Router;
use axum::routing::get;
use llm_cache::{LlmCache, OpenAiCompatible};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let Ok(api_key) = std::env::var("OPENAI_API_KEY") else {
        println!("Set OPENAI_API_KEY (and OPENAI_BASE_URL, REDIS_URL, LISTEN_ADDR if needed).");
        return Ok(());
    };
    let base_url =
        std::env::var("OPENAI_BASE_URL").unwrap_or_else(|_| "https://api.openai.com/v1".into());
    let mut builder =
        LlmCache::builder().upstream(OpenAiCompatible::new(base_url).api_key(api_key));
    if let Ok(url) = std::env::var("REDIS_URL") {
        builder = builder.redis(url);
    }
    let cache = builder.build().await?;

    let app = Router::new()
        .route("/", get(|| async { "my service" }))
        .nest("/llm", llm_cache::serve::router(cache));
    let addr = std::env::var("LISTEN_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{addr}/llm/v1");
    axum::serve(listener, app).await?;
    Ok(())
}
