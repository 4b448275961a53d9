//! `GET /health`, `/stats` and `/metrics`: what an operator reads, behind the admin key
//! when one is set. Counts and states only: never a key, a credential, a prompt or a Redis
//! password.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::Front;
use super::errors::ApiError;
use super::operator;

/// The Redis tier's state; 200 whatever it is (Redis is an optimisation), `"ok"` says
/// whether an operator has something to look at.
/// `GET /livez`: 200 `{"ok": true}` while the process answers, for a load balancer's
/// probe; never behind the admin key, and it says nothing else (not even Redis's state:
/// Redis is optional, and that is `/health`'s).
pub(super) async fn livez() -> Response {
    Json(json!({"ok": true})).into_response()
}

pub(super) async fn health(State(front): State<Arc<Front>>, headers: HeaderMap) -> Response {
    if let Err(e) = operator::guard(front.admin_key.as_ref(), &headers) {
        return e.into_response();
    }
    let health = front.cache.health().await;
    Json(json!({
        "ok": health.is_ok(),
        "l2": health.l2.as_str(),
        "breaker": health.breaker.as_str(),
        "redis": health.redis,
        "nodes_down": health.nodes_down,
        "last_error": health.last_error,
    }))
    .into_response()
}

/// [`LlmStats`](llm_cache_core::LlmStats) as JSON.
pub(super) async fn stats(State(front): State<Arc<Front>>, headers: HeaderMap) -> Response {
    if let Err(e) = operator::guard(front.admin_key.as_ref(), &headers) {
        return e.into_response();
    }
    Json(front.cache.stats()).into_response()
}

/// The Prometheus exposition text, when the router was given a handle.
pub(super) async fn metrics(State(front): State<Arc<Front>>, headers: HeaderMap) -> Response {
    if let Err(e) = operator::guard(front.admin_key.as_ref(), &headers) {
        return e.into_response();
    }
    #[cfg(feature = "prometheus")]
    if let Some(handle) = &front.metrics {
        // The counters' series are published from them once a second and by `stats()`:
        // publish now, so the scrape agrees with `/stats` read just before it.
        let _ = front.cache.stats();
        return (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4",
            )],
            handle.render(),
        )
            .into_response();
    }
    let _ = &front;
    ApiError::new(
        StatusCode::NOT_FOUND,
        "metrics are not served here (build with the `prometheus` feature and give the \
         router a Prometheus handle; the proxy: --metrics)",
    )
    .code("unknown_url")
    .into_response()
}
