//! `POST /v1/cache/invalidate`: remove a cached answer (by the request body that made it:
//! chat completions, embeddings, Responses API, completions) or every answer of the
//! caller's namespace, over HTTP. Who may: a caller key with
//! `allow=invalidate`, in its own namespace only; in pass-through mode the caller's own
//! credentials for a body (only what they can read) and the admin key for the namespace;
//! in open mode the admin key only, and nobody without one. It must never reach another
//! namespace's or another credential's entries.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use super::Front;
use super::chat::{admit, control, read_body};
use super::errors::ApiError;
use super::provider::Endpoint;
use crate::error::{Error, ErrorKind};
use crate::request::{ChatRequest, EmbeddingRequest};
use llm_cache_core::bodies::{BodyEndpoint, BodyPlan, BodyRequest};

/// What a request asks to invalidate.
enum Target {
    /// The answer of this `/v1/chat/completions` body.
    Chat(Value),
    /// The vectors of this `/v1/embeddings` body's inputs.
    Embeddings(Value),
    /// The stored answers (JSON and streamed) of this `/v1/responses` or `/v1/completions`
    /// body.
    Body(BodyEndpoint, Value),
    /// Every answer and vector of the caller's namespace.
    Namespace,
}

impl Target {
    fn name(&self) -> &'static str {
        match self {
            Target::Chat(_) => "chat",
            Target::Embeddings(_) => "embeddings",
            Target::Body(BodyEndpoint::Responses, _) => "responses",
            Target::Body(BodyEndpoint::Completions, _) => "completions",
            Target::Namespace => "namespace",
        }
    }
}

pub(super) async fn invalidate(State(front): State<Arc<Front>>, request: Request) -> Response {
    answer(&front, request).await.into_response()
}

async fn answer(front: &Front, request: Request) -> Result<Response, ApiError> {
    let headers = request.headers().clone();
    // Refused before the body is read, unless the target decides (pass-through mode).
    may_invalidate(front, &headers, None)?;
    let body = read_body(request, front.body_limit).await?;
    let target = target(&body)?;
    may_invalidate(front, &headers, Some(&target))?;
    let cache = &front.cache;
    let (done, inputs) = match &target {
        Target::Chat(body) => {
            let chat = ChatRequest::from_json(&to_bytes(body)).map_err(|e| ApiError::from(&e))?;
            let (control, route) = admit(front, &headers, Endpoint::Chat)?;
            (cache.invalidate_routed(&chat, &control, &route).await, None)
        }
        Target::Embeddings(body) => {
            let embed =
                EmbeddingRequest::from_json(&to_bytes(body)).map_err(|e| ApiError::from(&e))?;
            let (control, route) = admit(front, &headers, Endpoint::Embeddings)?;
            let done = cache
                .invalidate_embeddings_routed(&embed, &control, &route)
                .await;
            (done, Some(embed.input.len()))
        }
        Target::Body(endpoint, body) => {
            let BodyPlan::Cached(request) = BodyRequest::plan(*endpoint, &to_bytes(body)) else {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "this body is never cached (a Responses API request with a `conversation` \
                     or `background: true`): there is nothing to invalidate",
                )
                .code("invalid_invalidation"));
            };
            let control = control(front, &headers)?;
            let Some(provider) = &front.provider else {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "this front has no upstream URL, so it stores no such answers",
                )
                .code("unknown_url"));
            };
            let (_, credentials) = provider.body_client(front.pass_through, &headers)?;
            // The JSON and the streamed answer to one question are stored apart: both go.
            let mut done = Ok(());
            for shape in ["json", "sse"] {
                let scope = provider.body_scope(*endpoint, &credentials, shape);
                let digest = request.digest(cache, &control, &scope);
                let removed = cache.bodies().tiers().invalidate(&digest).await;
                done = done.and(removed);
            }
            (done, None)
        }
        Target::Namespace => {
            // The namespace the caller's requests are bound to (and nested in, with
            // `x-llm-cache-namespace`): never another caller's.
            let (control, _) = admit(front, &headers, Endpoint::Chat)?;
            let namespace = control.namespace_str().to_string();
            (cache.invalidate_namespace(&namespace).await, None)
        }
    };
    done.map_err(|e| incomplete(&e))?;
    tracing::info!(what = target.name(), "cache invalidated over HTTP");
    let mut out = json!({"object": "cache.invalidation", "invalidated": target.name()});
    if let Some(n) = inputs {
        out["inputs"] = json!(n);
    }
    Ok(Json(out).into_response())
}

/// Whether the caller may invalidate (`target`: once the body says what; `None`: before it
/// is read, refusing early whoever may not invalidate anything).
fn may_invalidate(
    front: &Front,
    headers: &HeaderMap,
    target: Option<&Target>,
) -> Result<(), ApiError> {
    if let Some(callers) = &front.callers {
        let caller = callers.authenticate(headers)?;
        if !caller.may_invalidate() {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "this caller key may not invalidate (its line in the caller keys needs \
                 `allow=invalidate`)",
            )
            .code("invalidation_not_allowed"));
        }
        return Ok(());
    }
    let admin_needed = match target {
        // A body's entry is keyed by the caller's own credentials there: they only remove
        // what they can read. A namespace is everybody's.
        _ if !front.pass_through => true,
        Some(Target::Namespace) => true,
        _ => false,
    };
    if !admin_needed {
        return Ok(());
    }
    match &front.admin_key {
        Some(key) => key.check(headers),
        None => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "invalidation over HTTP is off on this front: it needs caller keys with \
             `allow=invalidate`, or an admin key (the proxy: --admin-key-file)",
        )
        .code("invalidation_disabled")),
    }
}

/// The body's one target: `{"chat": {...}}`, `{"embeddings": {...}}`, `{"responses": {...}}`,
/// `{"completions": {...}}` or `{"namespace": true}`.
fn target(body: &[u8]) -> Result<Target, ApiError> {
    let bad =
        |why: String| ApiError::new(StatusCode::BAD_REQUEST, why).code("invalid_invalidation");
    let fields: Map<String, Value> = serde_json::from_slice(body).map_err(|e| {
        bad(format!(
            "the body is not a JSON object ({e}): send {{\"chat\": <a chat completions body>}}, \
             {{\"embeddings\": <an embeddings body>}}, {{\"responses\": <a Responses API \
             body>}}, {{\"completions\": <a completions body>}} or {{\"namespace\": true}}"
        ))
    })?;
    let mut fields = fields.into_iter();
    let (Some((name, value)), None) = (fields.next(), fields.next()) else {
        return Err(bad(
            "give exactly one of `chat`, `embeddings`, `responses`, `completions` or `namespace`"
                .to_string(),
        ));
    };
    match (name.as_str(), value) {
        ("chat", body @ Value::Object(_)) => Ok(Target::Chat(body)),
        ("embeddings", body @ Value::Object(_)) => Ok(Target::Embeddings(body)),
        ("responses", body @ Value::Object(_)) => Ok(Target::Body(BodyEndpoint::Responses, body)),
        ("completions", body @ Value::Object(_)) => {
            Ok(Target::Body(BodyEndpoint::Completions, body))
        }
        ("namespace", Value::Bool(true)) => Ok(Target::Namespace),
        ("namespace", _) => Err(bad(
            "`namespace` takes `true`: the namespace is the caller's own (its key's, with \
             `x-llm-cache-namespace` nested in it), never named in the body"
                .to_string(),
        )),
        ("chat" | "embeddings" | "responses" | "completions", _) => {
            Err(bad(format!("`{name}` takes the request body as an object")))
        }
        (other, _) => Err(bad(format!(
            "unknown field `{}` (give one of `chat`, `embeddings`, `responses`, `completions` \
             or `namespace`)",
            other.chars().take(40).collect::<String>()
        ))),
    }
}

fn to_bytes(value: &Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

/// A failed invalidation: 503 when Redis did not confirm it (this instance's L1 has dropped
/// the entries either way; retry), else as the error says.
fn incomplete(e: &Error) -> ApiError {
    if e.kind() == ErrorKind::Redis {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "removed from this instance's memory, but Redis did not confirm the \
                 invalidation ({e}): other instances may still serve it; retry"
            ),
        )
        .code("invalidation_incomplete");
    }
    ApiError::from(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_names_one_target() {
        assert!(matches!(
            target(br#"{"chat": {"model": "m", "messages": []}}"#),
            Ok(Target::Chat(_))
        ));
        assert!(matches!(
            target(br#"{"embeddings": {"model": "m", "input": "x"}}"#),
            Ok(Target::Embeddings(_))
        ));
        assert!(matches!(
            target(br#"{"namespace": true}"#),
            Ok(Target::Namespace)
        ));
        assert!(matches!(
            target(br#"{"responses": {"model": "m", "input": "x"}}"#),
            Ok(Target::Body(BodyEndpoint::Responses, _))
        ));
        assert!(matches!(
            target(br#"{"completions": {"model": "m", "prompt": "x"}}"#),
            Ok(Target::Body(BodyEndpoint::Completions, _))
        ));
        for (bad, says) in [
            (&br#"{"namespace": "team-b"}"#[..], "takes `true`"),
            (br#"{"chat": {}, "namespace": true}"#, "exactly one"),
            (br#"{}"#, "exactly one"),
            (br#"{"chat": "hello"}"#, "as an object"),
            (br#"{"everything": true}"#, "unknown field `everything`"),
            (b"not json", "not a JSON object"),
        ] {
            let Err(e) = target(bad) else {
                panic!("{} was taken", String::from_utf8_lossy(bad))
            };
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
            let body = e.body();
            assert_eq!(body["error"]["code"], "invalid_invalidation");
            let message = body["error"]["message"].as_str().unwrap();
            assert!(message.contains(says), "{message}");
        }
    }
}
