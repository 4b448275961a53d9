//! The async-openai layer's figures for the load benchmark: an L1 hit and an L2 hit through
//! async-openai's `Client` with the layer, next to the same hit through `LlmCache::chat`, in
//! the same run. The difference is the price of HTTP-level types (a `reqwest::Response`
//! made by hand, async-openai's serialization and parsing), not of the cache.
//!
//! A child module of `benches/load.rs` (it uses its `drive`, `Sample`, `request` and
//! `build`). To include it, in load.rs:
//!
//! ```text
//! #[cfg(feature = "async-openai")]
//! #[path = "async_openai_figures.rs"]
//! mod async_openai_figures;
//!
//! // in main's `runtime.block_on(async { .. })`, after the miss overhead:
//! #[cfg(feature = "async-openai")]
//! let async_openai = async_openai_figures::figures(budget.run, &redis.url()).await;
//! #[cfg(not(feature = "async-openai"))]
//! let async_openai = Value::Null;
//! // and `"async_openai": async_openai,` in the report's `json!`.
//! ```
//!
//! and run it with `cargo bench --bench load --features async-openai`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::middleware::ReqwestService;
use async_openai::types::chat::CreateChatCompletionRequest;
use llm_cache::async_openai::AsyncOpenAiLayer;
use llm_cache::{LlmCache, OpenAiCompatible, RetryPolicy};
use serde_json::{Value, json};

use super::support::upstream::MockUpstream;
use super::{Sample, build, drive, request};

/// A client whose stack is the layer over reqwest (no retries: every call here is a hit).
fn client(layer: AsyncOpenAiLayer, base_url: &str) -> Client<OpenAIConfig> {
    let config = OpenAIConfig::new()
        .with_api_base(base_url)
        .with_api_key("sk-bench");
    Client::with_config(config).with_http_service(
        tower::ServiceBuilder::new()
            .layer(layer)
            .service(ReqwestService::new(reqwest::Client::new())),
    )
}

/// Wait until the warm-up's answer is in Redis: written now, or already there (an L2 hit).
async fn wait_for_l2_write(cache: &LlmCache) {
    let start = Instant::now();
    while cache.stats().cache.l2_writes + cache.stats().cache.l2_hits < 1 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no L2 write: {:?}",
            cache.stats()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One tier's figures: through the layer and through `chat`, and the p50 difference.
fn compare(mut layer: Sample, mut chat: Sample) -> Value {
    let overhead = layer.percentile_ns(0.50) as f64 - chat.percentile_ns(0.50) as f64;
    json!({
        "via_async_openai_layer": layer.report(),
        "via_llm_cache_chat": chat.report(),
        "layer_overhead_p50_us": (overhead / 10.0).round() / 100.0,
    })
}

/// L1 and L2 hits through the layer and through `chat`, one caller each, `run` per figure.
pub(crate) async fn figures(run: Duration, redis_url: &str) -> Value {
    let mock = MockUpstream::start().await;
    let ours = request(9_000_000);
    let theirs: Arc<CreateChatCompletionRequest> = Arc::new(
        ours.clone()
            .try_into()
            .expect("the bench request fits async-openai's type"),
    );
    let ours = Arc::new(ours);
    let mut out = json!({});
    for (tier, l1_bytes) in [("l1_hit", 256u64 << 20), ("l2_hit", 0)] {
        let layer = AsyncOpenAiLayer::build(
            LlmCache::builder()
                .redis(redis_url)
                .l1_max_bytes(l1_bytes)
                .l2_deadline(Duration::from_millis(500)),
        )
        .await
        .expect("build the layer");
        let cache = layer.cache().clone();
        let client = Arc::new(client(layer, &mock.base_url()));
        client
            .chat()
            .create((*theirs).clone())
            .await
            .expect("warm the layer");
        if l1_bytes == 0 {
            wait_for_l2_write(&cache).await;
        }
        let via_layer = {
            let (client, theirs) = (Arc::clone(&client), Arc::clone(&theirs));
            drive(1, run, move |_, _| {
                let (client, theirs) = (Arc::clone(&client), Arc::clone(&theirs));
                async move {
                    client
                        .chat()
                        .create((*theirs).clone())
                        .await
                        .expect("a hit");
                }
            })
            .await
        };

        let upstream = Arc::new(
            OpenAiCompatible::new(mock.base_url())
                .api_key("sk-bench")
                .retry(RetryPolicy::none()),
        );
        let direct = Arc::new(build(upstream, Some(redis_url), l1_bytes).await);
        direct.chat(&ours).await.expect("warm chat");
        if l1_bytes == 0 {
            wait_for_l2_write(&direct).await;
        }
        let via_chat = {
            let (direct, ours) = (Arc::clone(&direct), Arc::clone(&ours));
            drive(1, run, move |_, _| {
                let (direct, ours) = (Arc::clone(&direct), Arc::clone(&ours));
                async move {
                    direct.chat(&ours).await.expect("a hit");
                }
            })
            .await
        };
        out[tier] = compare(via_layer, via_chat);
    }
    out["upstream_calls"] = json!(mock.calls());
    out
}
