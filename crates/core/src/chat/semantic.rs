//! `LlmCache`'s side of the opt-in semantic cache: which requests qualify (the last
//! message a plain-text user message, cacheable), their exact scope digest (everything but
//! that text, namespace and generation, a layer's route scope), the embedding through the
//! cache's own embeddings path, and serving a match from the tiers by its entry's digest.
//! The index and the guard are `semantic/`.

use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest as _, Sha256};

use super::key::{self, put_framed};
use super::{CacheControl, LlmCache, Route};
use crate::request::{ChatRequest, ChatResponse, Content, EmbeddingRequest};
use std::sync::atomic::Ordering::Relaxed;

use crate::Cached;
use crate::semantic::{AuditOutcome, Counters, Semantic, cosine};
use crate::tiered::digest::Digest;

/// Separates semantic scope digests from every other digest.
const SCOPE_DOMAIN: &[u8] = b"llm-cache/semantic-scope";
/// Separates the route scope of semantic embeddings from the route's own.
const EMBED_DOMAIN: &[u8] = b"llm-cache/semantic-embeddings\0";

/// What a semantic lookup that found nothing leaves for the miss to index.
pub(crate) struct Pending {
    pub(crate) semantic: Arc<Semantic>,
    pub(crate) scope: Digest,
    pub(crate) text: String,
    pub(crate) vector: Vec<f32>,
}

/// The outcome of the semantic step before a flight.
pub(crate) enum Before {
    /// Serve this (an exact L2 hit, or a semantic hit).
    Served(Cached<ChatResponse>),
    /// Go on to the flight; index its answer if it is fetched.
    Miss(Option<Pending>),
}

impl LlmCache {
    /// Attach the semantic index to a cache just built.
    pub(crate) fn with_semantic(mut self, semantic: Option<Semantic>) -> Self {
        Arc::get_mut(&mut self.inner)
            .expect("a cache just built has no other handle")
            .semantic = semantic.map(Arc::new);
        self
    }

    /// The semantic scope of `request` and its last user text, when it qualifies: the last
    /// message is a user message of plain text. Everything else (model, system prompt,
    /// earlier turns, tools, every parameter, the last message's other fields) is in the
    /// scope, with the namespace, its generation and the route's scope.
    pub(crate) fn semantic_scope<'r>(
        &self,
        request: &'r ChatRequest,
        control: &CacheControl,
        route: &Route,
    ) -> Option<(Digest, &'r str)> {
        let last = request.messages.last()?;
        let Some(Content::Text(text)) = &last.content else {
            return None;
        };
        if last.role != "user" {
            return None;
        }
        let mut scoped = request.clone();
        scoped.messages.last_mut()?.content = None;
        let canonical = key::canonical_json(&scoped, self.key_options());
        let mut frame = Vec::with_capacity(64);
        put_framed(&mut frame, SCOPE_DOMAIN);
        put_framed(&mut frame, route.scope.as_deref().unwrap_or_default());
        let digest = key::derive_scoped(&canonical, &control.namespace, &frame);
        let mut h = Sha256::new();
        h.update(SCOPE_DOMAIN);
        h.update(digest.as_bytes());
        let digest = Digest::from_bytes(h.finalize().into());
        let generation = self.inner.tiers.generation(&control.namespace);
        Some((
            crate::tiered::invalidation::scoped(digest, generation),
            text,
        ))
    }

    /// After an exact L1 miss of a request that opted in: the exact entry in Redis, else a
    /// semantic match served from the tiers by its entry's digest (a match whose entry is
    /// gone is dropped from the index and the next one is tried). Anything that fails
    /// (no embedding, Redis down) is a miss: the request goes on as usual.
    pub(crate) async fn semantic_before(
        &self,
        semantic: &Arc<Semantic>,
        request: &ChatRequest,
        control: &CacheControl,
        route: &Route,
        digest: Digest,
    ) -> Before {
        let Some((scope, text)) = self.semantic_scope(request, control, route) else {
            Counters::incr(&semantic.counters.ineligible);
            return Before::Miss(None);
        };
        if let Some(hit) = self.inner.tiers.fetch_stored(&digest).await {
            return Before::Served(Cached::answer(hit));
        }
        // Sent once the exact entry is known missing (an exact hit sends nothing more), so
        // that its round trip passes during the embedding call; awaited only if the
        // in-process index finds nothing.
        let ahead = semantic.read_ahead(scope);
        let canonical = semantic.canonical(text);
        // The prompt as written, not the canonical text: the model must see what the guard
        // set aside too, or every pair the guard merges would score 1.0.
        let embedded = if canonical.is_empty() {
            None
        } else {
            self.semantic_embedding(semantic, text, control, route)
                .await
        };
        let Some(vector) = embedded else {
            Counters::incr(&semantic.counters.ineligible);
            return Before::Miss(None);
        };
        for m in semantic.find(scope, &canonical, &vector, ahead).await {
            if m.entry == digest {
                continue;
            }
            match self.inner.tiers.fetch_stored(&m.entry).await {
                Some(entry) => {
                    let entry = Cached::answer(entry);
                    Counters::incr(&semantic.counters.hits);
                    if semantic.sample_audit() {
                        self.semantic_audit(semantic, request, control, route, entry.value());
                    }
                    return Before::Served(Cached::matched(entry, digest, m.similarity));
                }
                None => semantic.forget(scope, m.entry).await,
            }
        }
        Before::Miss(Some(Pending {
            semantic: Arc::clone(semantic),
            scope,
            text: text.to_owned(),
            vector,
        }))
    }

    /// Audit a semantic hit in the background: ask the upstream `request` again (a paid
    /// call, counted), and record whether its answer agrees with `served` (equal texts, or
    /// embeddings at least `audit_agreement` apart by cosine). Never on the caller's path;
    /// the fresh answer is not stored (the hit's entry still answers).
    fn semantic_audit(
        &self,
        semantic: &Arc<Semantic>,
        request: &ChatRequest,
        control: &CacheControl,
        route: &Route,
        served: &ChatResponse,
    ) {
        let cache = self.clone();
        let semantic = Arc::clone(semantic);
        let upstream = Arc::clone(route.upstream(&self.inner.upstream));
        let request = request.clone();
        let control = CacheControl::new().namespace(control.namespace.clone());
        let route = route.clone();
        let served = served.text();
        tokio::spawn(async move {
            cache.inner.upstream_calls.fetch_add(1, Relaxed);
            let fresh = match upstream.chat(&request).await {
                Ok(response) => response.text(),
                Err(e) => {
                    tracing::debug!(error_kind = ?e.kind(), "semantic audit: the upstream call failed");
                    None
                }
            };
            let outcome = match (served, fresh) {
                (Some(a), Some(b)) if a.trim() == b.trim() => AuditOutcome::Agreed,
                (Some(a), Some(b)) => {
                    let (va, vb) = tokio::join!(
                        cache.semantic_embedding(&semantic, &a, &control, &route),
                        cache.semantic_embedding(&semantic, &b, &control, &route)
                    );
                    match (va, vb) {
                        (Some(va), Some(vb)) => {
                            let similarity = cosine(&va, &vb);
                            if similarity >= semantic.config.audit_agreement {
                                AuditOutcome::Agreed
                            } else {
                                tracing::debug!(
                                    similarity,
                                    "semantic audit: the fresh answer disagrees with the one served"
                                );
                                AuditOutcome::Disagreed
                            }
                        }
                        _ => AuditOutcome::Failed,
                    }
                }
                _ => AuditOutcome::Failed,
            };
            semantic.record_audit(outcome);
        });
    }

    /// The vector of `text` (the prompt as written) through the cache's embeddings path
    /// (cached per input, single-flight), in the request's namespace, from the route's
    /// embedder when the config says so and the route has one; `None` when the call fails.
    async fn semantic_embedding(
        &self,
        semantic: &Semantic,
        text: &str,
        control: &CacheControl,
        route: &Route,
    ) -> Option<Vec<f32>> {
        let config = &semantic.config;
        let mut request = EmbeddingRequest::new(config.model.clone(), text);
        if let Some(d) = config.dimensions {
            request = request.dimensions(d);
        }
        let embed_control = CacheControl::new().namespace(control.namespace.clone());
        let answer = match route.embedder.as_ref().filter(|_| config.embed_via_route) {
            Some(embedder) => {
                // Keyed in a space of the route's own (its upstream and credentials).
                let mut scope = EMBED_DOMAIN.to_vec();
                scope.extend_from_slice(route.scope.as_deref().unwrap_or_default());
                let via = Route {
                    scope: Some(scope.into()),
                    upstream: Some(Arc::clone(embedder)),
                    embedder: None,
                };
                self.embeddings_routed(&request, &embed_control, &via).await
            }
            None => self.embeddings_with(&request, &embed_control).await,
        };
        match answer {
            Ok(out) => out.data.first().map(|e| e.embedding.to_f32_vec()),
            Err(e) => {
                // The kind only: the error text may quote the prompt.
                tracing::debug!(error_kind = ?e.kind(), "semantic embedding failed; exact cache only");
                None
            }
        }
    }

    /// Index the answer a miss fetched under `digest`, in the background.
    pub(crate) fn semantic_index(&self, pending: Pending, digest: Digest, ttl: Option<Duration>) {
        (self.semantic_later(pending, digest, ttl))();
    }

    /// [`semantic_index`](Self::semantic_index), to run when the answer has landed (a
    /// streamed miss, once its stream is complete).
    pub(crate) fn semantic_later(
        &self,
        pending: Pending,
        digest: Digest,
        ttl: Option<Duration>,
    ) -> impl FnOnce() + Send + 'static {
        let (l1_ttl, l2_ttl) = self.inner.tiers.ttls();
        let l2_ttl = ttl.unwrap_or(l2_ttl);
        let l1_ttl = l1_ttl.min(l2_ttl);
        move || {
            tokio::spawn(async move {
                let Pending {
                    semantic,
                    scope,
                    text,
                    vector,
                } = pending;
                semantic
                    .insert(scope, digest, &text, vector, l1_ttl, l2_ttl)
                    .await;
            });
        }
    }

    /// After `invalidate`: drop the request's index record here and in Redis (other
    /// instances drop theirs at their next match, which finds the entry gone).
    pub(crate) async fn semantic_unindex(
        &self,
        request: &ChatRequest,
        control: &CacheControl,
        route: &Route,
        digest: Digest,
    ) {
        if let Some(semantic) = &self.inner.semantic
            && let Some((scope, _)) = self.semantic_scope(request, control, route)
        {
            semantic.remove(scope, digest).await;
        }
    }
}
