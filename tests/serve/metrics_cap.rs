//! `max_model_labels`: past the cap, further models are counted under `model="other"`, in
//! `stats()` and in the Prometheus text. The recorder is process-global: this test shares
//! the serve binary's (`recorder()`), whose other caches never name the two models past
//! the cap.

use llm_cache::{
    BoxFuture, CacheStatus, ChatMessage, ChatRequest, ChatResponse, Choice, LlmCache, OTHER_MODELS,
    Result, Upstream, Usage,
};

/// Answers every request at once, echoing its model.
struct Echo;

impl Upstream for Echo {
    fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse>> {
        Box::pin(async move {
            Ok(ChatResponse {
                model: request.model.clone(),
                choices: vec![Choice {
                    message: ChatMessage::assistant("ok"),
                    finish_reason: Some("stop".into()),
                    ..Default::default()
                }],
                usage: Some(Usage {
                    prompt_tokens: 10,
                    completion_tokens: 5,
                    ..Default::default()
                }),
                ..Default::default()
            })
        })
    }
}

fn request(model: &str) -> ChatRequest {
    ChatRequest::new(model).message(ChatMessage::user("same question"))
}

#[tokio::test(flavor = "current_thread")]
async fn models_past_the_cap_are_counted_as_other() {
    let handle = super::recorder();

    let e = LlmCache::builder()
        .upstream(Echo)
        .max_model_labels(0)
        .build()
        .await
        .unwrap_err();
    assert!(
        e.is_config() && e.message().contains("max_model_labels"),
        "{e}"
    );

    let cache = LlmCache::builder()
        .upstream(Echo)
        .max_model_labels(2)
        .build()
        .await
        .unwrap();
    for model in ["gpt-4.1", "gpt-4.1-mini", "claude-sonnet-4.5", "model-four"] {
        assert_eq!(
            cache.chat(&request(model)).await.unwrap().status(),
            CacheStatus::Miss
        );
        assert_eq!(
            cache.chat(&request(model)).await.unwrap().status(),
            CacheStatus::HitL1
        );
    }
    // A model seen before the cap keeps its own counters.
    cache.chat(&request("gpt-4.1")).await.unwrap();

    let stats = cache.stats();
    let models: Vec<&str> = stats.per_model.keys().map(String::as_str).collect();
    assert_eq!(models, ["gpt-4.1", "gpt-4.1-mini", OTHER_MODELS]);
    assert_eq!(
        (
            stats.per_model["gpt-4.1"].hits,
            stats.per_model["gpt-4.1"].misses
        ),
        (2, 1)
    );
    let other = &stats.per_model[OTHER_MODELS];
    assert_eq!((other.hits, other.misses, other.tokens_saved), (2, 2, 30));
    // A model past the cap keeps its own price: claude-sonnet-4.5 is in the default table.
    assert!(other.cost_saved_usd > 0.0, "{other:?}");

    let text = handle.render();
    assert!(text.contains(r#"model="gpt-4.1""#), "{text}");
    assert!(text.contains(r#"model="gpt-4.1-mini""#), "{text}");
    assert!(text.contains(r#"model="other""#), "{text}");
    for absent in ["claude-sonnet-4.5", "model-four"] {
        assert!(
            !text.contains(absent),
            "{absent} has series of its own:\n{text}"
        );
    }
}
