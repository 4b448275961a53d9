//! `LlmCache`'s embeddings methods: the request's key scope (its canonical JSON without
//! the inputs, the namespace and its generation, a layer's route scope), the per-request
//! policy (bypass), and the savings per model. The per-input work is `embeddings/`.

use std::sync::atomic::Ordering::Relaxed;

use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};

use super::key::{self, KEY_FORMAT_VERSION};
use super::{CacheControl, LlmCache, Route};
use crate::CacheStatus;
use crate::embeddings::{CachedEmbeddings, EmbeddingStats, Scope, input_digest};
use crate::error::Result;
use crate::request::{EmbeddingRequest, Usage};
use crate::tiered::digest::Digest;

/// Separates the request part of input keys from every other digest.
const REQUEST_DOMAIN: &[u8] = b"llm-cache/embedding-request";

impl LlmCache {
    /// The vectors of `request`'s inputs, each input answered from cache when it can be:
    /// see [`embeddings_with`](Self::embeddings_with).
    ///
    /// # Errors
    ///
    /// As [`embeddings_with`](Self::embeddings_with).
    pub async fn embeddings(&self, request: &EmbeddingRequest) -> Result<CachedEmbeddings> {
        self.embeddings_with(request, &CacheControl::default())
            .await
    }

    /// The vectors of `request`'s inputs, input by input: each input (a text or a list of
    /// token ids) is its own cache entry, keyed by the input and everything that can
    /// change its vector (model, `dimensions`, unknown parameters, the namespace), not by
    /// the batch, `encoding_format` or `user`.
    ///
    /// - Only the inputs missing from every tier go upstream, in one call (split at
    ///   [`max_embedding_inputs_per_call`](crate::LlmCacheBuilder::max_embedding_inputs_per_call)),
    ///   and every vector comes back at its own input's `index`, in order.
    /// - An input repeated in the request is fetched once; concurrent requests sharing an
    ///   input fetch it once (one flight per input, and with Redis one lease per input
    ///   across instances).
    /// - `usage` is what the upstream charged for this request: the shares of the inputs
    ///   this request fetched (see [`CachedEmbeddings`] for the sharing rule); the inputs
    ///   served from cache count as tokens and dollars saved in [`stats`](Self::stats).
    /// - Vectors are stored as f32 bytes and written in the format the request asks for:
    ///   a `float` and a `base64` request for the same input share one entry.
    ///
    /// `control` works as for chat: namespace, TTL, refresh, no-store, bypass (one call
    /// with the request as it is, nothing stored).
    ///
    /// # Errors
    ///
    /// `InvalidRequest` when the request fails [`EmbeddingRequest::validate`], before
    /// anything else. The upstream's error when a call for this request's missing inputs
    /// failed (or its answer was not one vector per input, each at its own index):
    /// nothing is stored for those inputs, the inputs already cached stay cached, and the
    /// next request fetches them again. `Unsupported` when the upstream has no
    /// embeddings. `Timeout` past the waiter deadline.
    ///
    /// # Cancellation
    ///
    /// As [`chat_with`](Self::chat_with): an upstream call already made runs on and fills
    /// the cache.
    pub async fn embeddings_with(
        &self,
        request: &EmbeddingRequest,
        control: &CacheControl,
    ) -> Result<CachedEmbeddings> {
        request.validate()?;
        self.embeddings_routed(request, control, &Route::OWN).await
    }

    /// [`embeddings_with`](Self::embeddings_with) for an HTTP-level layer (see
    /// [`Route`]): its upstream on a miss, its scope in every input's key.
    pub async fn embeddings_routed(
        &self,
        request: &EmbeddingRequest,
        control: &CacheControl,
        route: &Route,
    ) -> Result<CachedEmbeddings> {
        let inner = &self.inner;
        let upstream = route.upstream(&inner.upstream);
        if control.bypass {
            inner.bypassed.fetch_add(1, Relaxed);
            return inner.embeddings.bypass(request, upstream).await;
        }
        let scope = self.embedding_scope(request, control, route);
        let out = inner
            .embeddings
            .answer(request, upstream, &scope, &control.fetch)
            .await?;
        let counters = inner.model(&request.model);
        for (status, tokens) in out.per_input() {
            if status.is_hit() {
                let usage = Usage {
                    prompt_tokens: u64::from(tokens),
                    ..Usage::default()
                };
                counters.saved_usage(status, Some(&usage));
            } else if status == CacheStatus::Miss {
                counters.missed();
            }
        }
        Ok(out)
    }

    /// The digest each input of `request` is cached under in the control's namespace, in
    /// input order (`tiers().l2_key(&d)` is its Redis key: vectors share the key prefix).
    ///
    /// # Errors
    ///
    /// `InvalidRequest` as for [`embeddings_with`](Self::embeddings_with).
    pub fn embedding_digests_with(
        &self,
        request: &EmbeddingRequest,
        control: &CacheControl,
    ) -> Result<Vec<Digest>> {
        request.validate()?;
        let scope = self.embedding_scope(request, control, &Route::OWN);
        Ok(request
            .input
            .items()
            .into_iter()
            .map(|item| input_digest(&scope, item))
            .collect())
    }

    /// Remove the cached vector of every input of `request` (in the control's namespace)
    /// from both tiers, and from the other instances' L1.
    ///
    /// # Errors
    ///
    /// `InvalidRequest` as for [`embeddings_with`](Self::embeddings_with); `Redis` as for
    /// [`invalidate_with`](Self::invalidate_with), after trying every input.
    pub async fn invalidate_embeddings_with(
        &self,
        request: &EmbeddingRequest,
        control: &CacheControl,
    ) -> Result<()> {
        self.invalidate_embeddings_routed(request, control, &Route::OWN)
            .await
    }

    /// [`invalidate_embeddings_with`](Self::invalidate_embeddings_with) for an HTTP-level
    /// layer: the vectors [`embeddings_routed`](Self::embeddings_routed) stored for the
    /// inputs of `request` on `route` are removed.
    ///
    /// # Errors
    ///
    /// As [`invalidate_embeddings_with`](Self::invalidate_embeddings_with).
    pub async fn invalidate_embeddings_routed(
        &self,
        request: &EmbeddingRequest,
        control: &CacheControl,
        route: &Route,
    ) -> Result<()> {
        request.validate()?;
        let scope = self.embedding_scope(request, control, route);
        self.inner.embeddings.invalidate(request, &scope).await
    }

    /// What the embeddings path has done: inputs by tier, upstream calls and inputs sent,
    /// tokens saved. (Dollars saved are in [`stats`](Self::stats), per model.)
    pub fn embedding_stats(&self) -> EmbeddingStats {
        self.inner.embeddings.stats()
    }

    /// Drop every answer and every vector this instance holds in memory, and the
    /// in-process semantic index (Redis is left alone).
    pub fn clear_l1(&self) {
        self.inner.tiers.clear_l1();
        self.inner.embeddings.tiers().clear_l1();
        if let Some(semantic) = &self.inner.semantic {
            semantic.clear_local();
        }
    }

    /// Apply the pending L1 work of every tier now: evictions, expirations and what
    /// [`clear_l1`](Self::clear_l1) left to remove (moka removes lazily, so without this the
    /// next requests pay for dropping the cleared entries), so that counts are exact.
    pub async fn run_pending_tasks(&self) {
        self.inner.tiers.run_pending_tasks().await;
        self.inner.embeddings.tiers().run_pending_tasks().await;
    }

    /// What every input key of `request` holds besides the input: SHA-256 over the framed
    /// domain, the key format version, the namespace, the route's scope and the canonical
    /// JSON of the request without `input`, `encoding_format` and `user` (the same rules
    /// as chat keys, ignored fields included); and the namespace's generation.
    fn embedding_scope(
        &self,
        request: &EmbeddingRequest,
        control: &CacheControl,
        route: &Route,
    ) -> Scope {
        let mut rest = Map::new();
        rest.insert("model".into(), Value::String(request.model.clone()));
        if let Some(d) = request.dimensions {
            rest.insert("dimensions".into(), Value::from(d));
        }
        for (name, value) in &request.extra {
            rest.insert(name.clone(), value.clone());
        }
        let canonical = key::canonical_value(&Value::Object(rest), &self.inner.key_options);
        let mut buf = Vec::with_capacity(96 + canonical.len());
        key::put_framed(&mut buf, REQUEST_DOMAIN);
        buf.extend_from_slice(&KEY_FORMAT_VERSION.to_be_bytes());
        key::put_framed(&mut buf, control.namespace.as_bytes());
        match &route.scope {
            None => buf.push(0),
            Some(scope) => {
                buf.push(1);
                key::put_framed(&mut buf, scope);
            }
        }
        key::put_framed(&mut buf, &canonical);
        Scope {
            base: Sha256::digest(&buf).into(),
            generation: self.inner.tiers.generation(&control.namespace),
        }
    }
}
