//! `POST /v1/embeddings`: input by input, only the missing inputs sent upstream (in one
//! call), `x-llm-cache: partial` when some inputs came from cache and some were fetched.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};

use super::Front;
use super::chat::{admit, read_body};
use super::errors::ApiError;
use super::provider::Endpoint;
use crate::request::EmbeddingRequest;

pub(super) async fn embeddings(State(front): State<Arc<Front>>, request: Request) -> Response {
    answer(&front, request).await.into_response()
}

async fn answer(front: &Front, request: Request) -> Result<Response, ApiError> {
    let (control, route) = admit(front, request.headers(), Endpoint::Embeddings)?;
    let body = read_body(request, front.body_limit).await?;
    let embed = EmbeddingRequest::from_json(&body).map_err(|e| ApiError::from(&e))?;
    embed.validate().map_err(|e| ApiError::from(&e))?;
    let out = front
        .cache
        .embeddings_routed(&embed, &control, &route)
        .await;
    let out = out.map_err(|e| ApiError::from(&e))?;
    Ok(IntoResponse::into_response(out))
}
