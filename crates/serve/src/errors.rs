//! The front's own error answers: the fallback route and a known path with another method.
//! Errors as OpenAI-shaped answers are [`ApiError`](llm_cache_core::tiered::http::ApiError)
//! (in the engine, so that the crate's [`Error`](crate::error::Error) is an axum response).

use axum::http::StatusCode;

pub use llm_cache_core::tiered::http::ApiError;

/// The fallback route.
pub(super) async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no route {}: this front serves POST /v1/chat/completions, POST /v1/embeddings, \
             POST /v1/responses, POST /v1/completions, GET /v1/models, POST /v1/cache/invalidate, \
             /livez, /health, /stats, /metrics and /dashboard",
            uri.path()
        ),
    )
    .code("unknown_url")
}

/// A known path with another method.
pub(super) async fn method_not_allowed(
    method: axum::http::Method,
    uri: axum::http::Uri,
) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not served on {}", uri.path()),
    )
    .code("method_not_allowed")
}
