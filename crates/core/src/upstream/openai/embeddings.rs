//! `POST {base}/embeddings` with the same client, headers, retries and masking as chat.

use bytes::Bytes;
use reqwest::Url;

use super::errors::quote_body;
use super::retry::Failure;
use super::{OpenAiCompatible, Ready, SNIPPET_BYTES};
use crate::error::{Error, ErrorKind, Result};
use crate::request::{EmbeddingRequest, EmbeddingResponse};

/// The embeddings endpoint next to the chat endpoint `chat` (`.../chat/completions`):
/// `.../embeddings`, with the same query (an `api-version`).
pub(super) fn endpoint(chat: &Url) -> Url {
    super::raw::endpoint(chat, "embeddings")
}

impl OpenAiCompatible {
    pub(super) async fn send_embeddings(
        &self,
        request: &EmbeddingRequest,
    ) -> Result<EmbeddingResponse> {
        let ready = self.ready()?;
        let body = super::serialise(request)?;
        self.with_retries(|| self.attempt_embeddings(ready, body.clone()))
            .await
    }

    async fn attempt_embeddings(
        &self,
        ready: &Ready,
        body: Bytes,
    ) -> Result<EmbeddingResponse, Failure> {
        let url = &ready.embeddings_endpoint;
        let bytes = self.attempt_json(ready, url, body).await?;
        serde_json::from_slice::<EmbeddingResponse>(&bytes).map_err(|e| {
            let quoted = quote_body(&bytes[..bytes.len().min(4 * SNIPPET_BYTES)], &ready.mask)
                .unwrap_or_default();
            Failure::fatal(Error::new(
                ErrorKind::Upstream,
                format!(
                    "answer is not an embeddings list ({}); body starts: {quoted}",
                    ready.scrub(&e.to_string())
                ),
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embeddings_endpoint_sits_beside_chat_and_keeps_the_query() {
        let e = |chat: &str| endpoint(&Url::parse(chat).unwrap()).to_string();
        assert_eq!(
            e("https://h/v1/chat/completions"),
            "https://h/v1/embeddings"
        );
        assert_eq!(
            e("https://h/openai/deployments/d/chat/completions?api-version=2024-10-21"),
            "https://h/openai/deployments/d/embeddings?api-version=2024-10-21"
        );
    }
}
