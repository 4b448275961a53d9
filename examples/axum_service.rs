//! An axum service that shares one `LlmCache` through its state: `POST /chat` takes an
//! OpenAI-style chat request, answers it through the cache and says how in `x-llm-cache`
//! (`hit-l1`, `hit-l2`, `miss`, `coalesced` or `bypass`).
//!
//! ```text
//! OPENAI_API_KEY=sk-... cargo run --example axum_service     # REDIS_URL=... for an L2
//! curl -si localhost:3000/chat -H 'content-type: application/json' \
//!     -d '{"model":"gpt-4.1-mini","messages":[{"role":"user","content":"Hi"}]}'
//! ```
//!
//! `OPENAI_BASE_URL` names another OpenAI-compatible API; `LISTEN_ADDR` the address
//! (default 127.0.0.1:3000). Without `OPENAI_API_KEY` it says what to set and exits.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use llm_cache::{CacheStatus, ChatRequest, LlmCache, OpenAiCompatible};

fn header_value(status: CacheStatus) -> &'static str {
    match status {
        CacheStatus::HitL1 => "hit-l1",
        CacheStatus::HitL2 => "hit-l2",
        CacheStatus::Miss => "miss",
        CacheStatus::Coalesced => "coalesced",
        CacheStatus::Bypass => "bypass",
        other => other.as_str(), // `CacheStatus` is `#[non_exhaustive]`
    }
}

/// `LlmCache` is cheap to clone (an `Arc` inside): every handler shares one cache.
async fn chat(State(cache): State<LlmCache>, body: Bytes) -> Response {
    // `from_json` also enforces the crate's request limits (nesting depth...).
    let request = match ChatRequest::from_json(&body) {
        Ok(request) => request,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    match cache.chat(&request).await {
        Ok(answer) => {
            let mut response = Json(answer.value()).into_response();
            let value = HeaderValue::from_static(header_value(answer.status()));
            response.headers_mut().insert("x-llm-cache", value);
            response
        }
        Err(e) if e.is_invalid_request() => {
            (StatusCode::BAD_REQUEST, e.to_string()).into_response()
        }
        // Credentials never appear in the crate's errors, so the text is safe to return.
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()).into_response(),
    }
}

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

    let app = Router::new().route("/chat", post(chat)).with_state(cache);
    let addr = std::env::var("LISTEN_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{addr}/chat");
    axum::serve(listener, app).await?;
    Ok(())
}
