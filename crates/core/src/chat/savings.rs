//! What the cache saved, per model: hits, misses, tokens and dollars, as the `LlmStats`
//! snapshot and as `metrics` series published from the same counters (with the chat tier's,
//! once a second and on every `stats()`). Counting is a relaxed atomic add on counters made
//! when a model is first seen: it must never take a lock on the hit path.

use std::collections::{BTreeMap, HashMap};

use dashmap::mapref::entry::Entry;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};

use metrics::{Gauge, Unit};

use super::{Inner, LlmCache};
use crate::CacheStatus;
use crate::chat::pricing::ModelPrice;
use crate::embeddings::EmbeddingStats;
use crate::request::{ChatResponse, Usage};
use crate::semantic::SemanticStats;
use crate::tiered::stats::{Published, Stats};

/// Answers served without a call, by model and tier (`l1`, `l2`, `coalesced`, `semantic`).
pub(crate) const HITS: &str = "ai_cache_hits_total";
/// Answers that cost an upstream call, by model (failed fetches are not answers: see
/// `ModelSavings::misses`).
pub(crate) const MISSES: &str = "ai_cache_misses_total";
/// Dollars the hits would have cost, by model: a running total.
pub(crate) const COST_SAVED: &str = "ai_api_cost_saved_dollars";
/// Tokens of the answers served from cache, by model.
pub(crate) const TOKENS_SAVED: &str = "ai_cache_tokens_saved_total";

/// Describe the series of the LLM layer (and those of the upstream it calls) to the
/// recorder installed now.
pub(crate) fn describe() {
    metrics::describe_counter!(
        HITS,
        Unit::Count,
        "Answers served without an upstream call, by model and tier (l1, l2, coalesced, semantic)"
    );
    metrics::describe_counter!(
        MISSES,
        Unit::Count,
        "Answers that cost an upstream call, by model (failed fetches are not counted)"
    );
    metrics::describe_gauge!(
        COST_SAVED,
        "Dollars the answers served from cache would have cost, by model (running total)"
    );
    metrics::describe_counter!(
        TOKENS_SAVED,
        Unit::Count,
        "Tokens (prompt + completion) of the answers served from cache, by model"
    );
    crate::upstream::describe_series();
}

/// Dollars are counted in nano-dollars so that a relaxed atomic add can do it.
const NANOS_PER_DOLLAR: f64 = 1e9;

/// What the cache saved for one model.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct ModelSavings {
    /// Answers served without paying for a call (L1, L2, coalesced).
    pub hits: u64,
    /// Answers for this model that cost an upstream call of the caller's own flight: one
    /// per `chat`/`batch` call that returned [`CacheStatus::Miss`], and one per
    /// `chat_stream` whose own flight started streaming (a stream cut later still counts).
    /// Exported as `ai_cache_misses_total{model}`.
    ///
    /// Not counted: a fetch that failed (the caller got an error), or whose caller was
    /// cancelled or gave up at the waiter deadline first, although the engine's
    /// `LlmStats::cache.misses` counts those flights; and bypassed requests (in
    /// `LlmStats::bypassed`). So the sum over models is at most `cache.misses`.
    pub misses: u64,
    /// Tokens (prompt + completion) of the answers served from cache.
    pub tokens_saved: u64,
    /// Dollars those tokens would have cost, by the price table.
    pub cost_saved_usd: f64,
}

/// A snapshot of an [`LlmCache`]'s counters. Serialises (serde) as an object of its
/// fields, `per_model` as an object keyed by model.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct LlmStats {
    /// The tiers' counters (hits per tier, misses, coalesced, L2 trouble...).
    pub cache: Stats,
    /// Requests that did not use the cache (bypass, or above the temperature rule).
    pub bypassed: u64,
    /// Calls made to the upstream (misses, refreshes, bypasses).
    pub upstream_calls: u64,
    /// Upstream calls the cache saved: chat answers served without one (from L1, L2, a
    /// flight already running, or a semantic match), embeddings requests whose every
    /// input was cached (`embeddings.requests_from_cache`), and stored bodies
    /// (`/responses`, `/completions`) served from a tier or a flight (`bodies`).
    pub upstream_calls_saved: u64,
    /// Tokens of all answers served from cache.
    pub tokens_saved: u64,
    /// Dollars those answers would have cost.
    pub cost_saved_usd: f64,
    /// The same, per requested model.
    pub per_model: BTreeMap<String, ModelSavings>,
    /// The semantic cache's counters (all zero unless the builder enabled it).
    pub semantic: SemanticStats,
    /// The embeddings path's counters (inputs by tier, upstream calls; its tier's own
    /// `cache` counters); the inputs' hits, tokens and dollars are in `per_model` too.
    pub embeddings: EmbeddingStats,
    /// The stored-body tier's counters (`/responses` and `/completions`, through the HTTP
    /// front or the async-openai layer; see [`LlmCache::bodies`]).
    pub bodies: Stats,
}

/// The label under which models past [`max_model_labels`] are counted.
///
/// [`max_model_labels`]: crate::LlmCacheBuilder::max_model_labels
pub const OTHER_MODELS: &str = "other";

/// The default of [`LlmCacheBuilder::max_model_labels`](crate::LlmCacheBuilder::max_model_labels).
pub const DEFAULT_MAX_MODEL_LABELS: usize = 64;

/// The counters of one model, and the series labelled with it published from them
/// ([`publish`](Self::publish)).
pub(super) struct ModelCounters {
    /// The model's price (`None` for [`OTHER_MODELS`], whose models keep their own).
    price: Option<ModelPrice>,
    /// Answers served without a call, by tier (`l1`, `l2`, `coalesced`, `semantic`).
    hits: [Published; 4],
    /// Of `hits`, the chat answers (the rest are embedding inputs): each saved a call.
    answers_saved: AtomicU64,
    misses: Published,
    tokens: Published,
    nano_dollars: AtomicU64,
    /// `ai_api_cost_saved_dollars`, set to the total of `cost_nanos`.
    cost: Gauge,
    /// Nano-dollars saved for this model by every cache in the process, so the gauge can
    /// be set to an exact total (`stats()` divides the same integer the same way).
    cost_nanos: Arc<AtomicU64>,
    /// How much of `nano_dollars` is in `cost_nanos`.
    cost_published: AtomicU64,
}

impl LlmCache {
    /// A snapshot of the counters, with tokens and dollars saved overall and per model.
    pub fn stats(&self) -> LlmStats {
        let inner = &self.inner;
        // First, as it publishes the series (this layer's too) that a scrape then reads.
        let cache = inner.tiers.stats();
        let mut per_model = BTreeMap::new();
        let (mut tokens, mut nanos, mut answers_saved) = (0u64, 0u64, 0u64);
        for entry in inner.models.iter() {
            let c = entry.value();
            answers_saved += c.answers_saved.load(Relaxed);
            let t = c.tokens.load(Relaxed);
            let n = c.nano_dollars.load(Relaxed);
            tokens += t;
            nanos += n;
            per_model.insert(
                entry.key().clone(),
                ModelSavings {
                    hits: c.hits.iter().map(|h| h.load(Relaxed)).sum(),
                    misses: c.misses.load(Relaxed),
                    tokens_saved: t,
                    cost_saved_usd: n as f64 / NANOS_PER_DOLLAR,
                },
            );
        }
        let semantic = inner
            .semantic
            .as_ref()
            .map(|s| s.stats())
            .unwrap_or_default();
        let embeddings = self.embedding_stats();
        let bodies = inner.bodies.stats();
        LlmStats {
            bypassed: inner.bypassed.load(Relaxed),
            upstream_calls: inner.upstream_calls.load(Relaxed)
                + embeddings.upstream_calls
                + bodies.fetches,
            upstream_calls_saved: answers_saved
                + embeddings.requests_from_cache
                + bodies.l1_hits
                + bodies.l2_hits
                + bodies.coalesced,
            cache,
            tokens_saved: tokens,
            cost_saved_usd: nanos as f64 / NANOS_PER_DOLLAR,
            per_model,
            semantic,
            embeddings,
            bodies,
        }
    }
}

/// The counters a request's answer is accounted on, and the price of its own model (a
/// model counted under [`OTHER_MODELS`] keeps its price).
#[derive(Clone)]
pub(super) struct ModelHandle {
    counters: Arc<ModelCounters>,
    price: Option<ModelPrice>,
}

impl Inner {
    /// The counters of `model`: its own while fewer than `max_model_labels` models have
    /// some, else those of [`OTHER_MODELS`], so callers cannot grow the series without bound.
    pub(super) fn model(&self, model: &str) -> ModelHandle {
        // The common case: a model already counted, priced when it was first seen.
        if let Some(c) = self.models.get(model) {
            let (counters, price) = (Arc::clone(&c), c.price);
            return ModelHandle { counters, price };
        }
        if model != OTHER_MODELS && self.model_labels.load(Relaxed) < self.max_model_labels {
            match self.models.entry(model.to_string()) {
                Entry::Occupied(e) => {
                    let (counters, price) = (Arc::clone(e.get()), e.get().price);
                    return ModelHandle { counters, price };
                }
                Entry::Vacant(e) => {
                    // Reserved under the shard's lock, so the cap is never passed.
                    let reserved = self
                        .model_labels
                        .fetch_update(Relaxed, Relaxed, |n| {
                            (n < self.max_model_labels).then_some(n + 1)
                        })
                        .is_ok();
                    if reserved {
                        let price = self.prices.price(model);
                        let counters = Arc::new(ModelCounters::new(model, price));
                        let counters = Arc::clone(e.insert(counters).value());
                        return ModelHandle { counters, price };
                    }
                }
            }
        }
        // Past the cap: shared counters (no lock), the model's own price (a lookup).
        ModelHandle {
            counters: self.other_models(),
            price: self.prices.price(model),
        }
    }

    fn other_models(&self) -> Arc<ModelCounters> {
        Arc::clone(self.other_models.get_or_init(|| {
            let counters = Arc::new(ModelCounters::new(OTHER_MODELS, None));
            self.models
                .insert(OTHER_MODELS.to_string(), Arc::clone(&counters));
            counters
        }))
    }
}

impl ModelHandle {
    /// An answer served without a call (`status`: from where), and what it saved.
    pub(super) fn saved(&self, status: CacheStatus, response: &ChatResponse) {
        self.counters.answers_saved.fetch_add(1, Relaxed);
        self.counters
            .saved(status, response.usage.as_ref(), self.price.as_ref());
    }

    /// An answer (or one input of an embeddings request) served without a call, worth
    /// `usage`.
    pub(super) fn saved_usage(&self, status: CacheStatus, usage: Option<&Usage>) {
        self.counters.saved(status, usage, self.price.as_ref());
    }

    /// An answer that cost an upstream call.
    pub(super) fn missed(&self) {
        self.counters.missed();
    }
}

impl ModelCounters {
    fn new(model: &str, price: Option<ModelPrice>) -> Self {
        let model = || model.to_string();
        let hits = |tier: &'static str| {
            Published::new(metrics::counter!(HITS, "model" => model(), "tier" => tier))
        };
        ModelCounters {
            price,
            hits: [hits("l1"), hits("l2"), hits("coalesced"), hits("semantic")],
            answers_saved: AtomicU64::new(0),
            misses: Published::new(metrics::counter!(MISSES, "model" => model())),
            tokens: Published::new(metrics::counter!(TOKENS_SAVED, "model" => model())),
            nano_dollars: AtomicU64::new(0),
            cost: metrics::gauge!(COST_SAVED, "model" => model()),
            cost_nanos: cost_cell(&model()),
            cost_published: AtomicU64::new(0),
        }
    }

    /// An answer served without a call (`status`: from where), and what it saved at `price`.
    fn saved(&self, status: CacheStatus, usage: Option<&Usage>, price: Option<&ModelPrice>) {
        let tier = match status {
            CacheStatus::HitL2 => 1,
            CacheStatus::Coalesced => 2,
            CacheStatus::HitSemantic => 3,
            _ => 0,
        };
        self.hits[tier].fetch_add(1, Relaxed);
        let Some(usage) = usage else {
            return;
        };
        let tokens = usage.prompt_tokens.saturating_add(usage.completion_tokens);
        self.tokens.fetch_add(tokens, Relaxed);
        if let Some(price) = price {
            let dollars = price.cost(usage);
            if dollars.is_finite() && dollars > 0.0 {
                let nanos = (dollars * NANOS_PER_DOLLAR).round() as u64;
                self.nano_dollars.fetch_add(nanos, Relaxed);
            }
        }
    }

    /// An answer that cost an upstream call.
    fn missed(&self) {
        self.misses.fetch_add(1, Relaxed);
    }

    /// Publish the model's series from its counters (see [`Inner::publish`]).
    fn publish(&self) {
        let counts = self.hits.iter().chain([&self.misses, &self.tokens]);
        counts.for_each(Published::publish);
        let now = self.nano_dollars.load(Relaxed);
        let before = self.cost_published.fetch_max(now, SeqCst);
        if now <= before {
            return;
        }
        self.cost_nanos.fetch_add(now - before, SeqCst);
        // Set, then check nobody added meanwhile: whoever sets last has seen the final total.
        loop {
            let total = self.cost_nanos.load(SeqCst);
            self.cost.set(total as f64 / NANOS_PER_DOLLAR);
            if self.cost_nanos.load(SeqCst) == total {
                break;
            }
        }
    }
}

/// Nano-dollars saved per model, process-wide (one cell per model name ever seen).
fn cost_cell(model: &str) -> Arc<AtomicU64> {
    static CELLS: OnceLock<Mutex<HashMap<String, Arc<AtomicU64>>>> = OnceLock::new();
    let mut cells = crate::tiered::sync::lock(CELLS.get_or_init(Default::default));
    Arc::clone(cells.entry(model.to_string()).or_default())
}

impl LlmCache {
    /// Publish this layer's series with the chat tier's (see [`Inner::publish`]). Last in
    /// `build()`: the weak handle it keeps would stop `with_semantic` changing the cache.
    pub(super) fn publish_with_tiers(self) -> Self {
        let layer = Arc::downgrade(&self.inner);
        self.inner.tiers.counters().also_publish(move || {
            if let Some(inner) = layer.upgrade() {
                inner.publish();
            }
        });
        self
    }
}

impl Inner {
    /// Publish this layer's series from its counters (the models', the semantic audits'):
    /// with the chat tier's own, once a second and on every `stats()`.
    pub(super) fn publish(&self) {
        for model in self.models.iter() {
            model.value().publish();
        }
        if let Some(semantic) = &self.semantic {
            semantic.counters.publish_counts();
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::request::{ChatMessage, ChatRequest, ChatResponse, Choice, Usage};
    use crate::upstream::{BoxFuture, Upstream};
    use crate::{LlmCache, Result};

    struct Fixed;

    impl Upstream for Fixed {
        fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse>> {
            Box::pin(async move {
                Ok(ChatResponse {
                    model: request.model.clone(),
                    choices: vec![Choice {
                        message: ChatMessage::assistant("hi"),
                        finish_reason: Some("stop".into()),
                        ..Default::default()
                    }],
                    usage: Some(Usage {
                        prompt_tokens: 3,
                        completion_tokens: 4,
                        ..Default::default()
                    }),
                    ..Default::default()
                })
            })
        }
    }

    #[tokio::test]
    async fn stats_serialize_to_json() {
        let cache = LlmCache::builder().upstream(Fixed).build().await.unwrap();
        let request = ChatRequest::new("m").message(ChatMessage::user("hello"));
        cache.chat(&request).await.unwrap();
        cache.chat(&request).await.unwrap();
        let json = serde_json::to_value(cache.stats()).unwrap();
        assert_eq!(json["cache"]["misses"], 1);
        assert_eq!(json["cache"]["l1_hits"], 1);
        assert_eq!(json["cache"]["breaker"], "disabled");
        assert_eq!(json["upstream_calls"], 1);
        assert_eq!(json["upstream_calls_saved"], 1, "the hit cost no call");
        assert_eq!(json["embeddings"]["requests"], 0);
        assert_eq!(json["tokens_saved"], 7);
        assert_eq!(json["per_model"]["m"]["hits"], 1);
        assert_eq!(json["per_model"]["m"]["misses"], 1);
    }

    struct Failing;

    impl Upstream for Failing {
        fn chat<'a>(&'a self, _: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse>> {
            Box::pin(async { Err(crate::Error::fetch_msg("down")) })
        }
    }

    /// What the fields document: the engine counts the flight that fetched, the model's
    /// `misses` only answers.
    #[tokio::test]
    async fn a_failed_fetch_is_an_engine_miss_but_not_a_model_miss() {
        let cache = LlmCache::builder().upstream(Failing).build().await.unwrap();
        let request = ChatRequest::new("m").message(ChatMessage::user("hello"));
        assert!(cache.chat(&request).await.is_err());
        let stats = cache.stats();
        assert_eq!((stats.cache.misses, stats.cache.fetch_errors), (1, 1));
        assert_eq!(stats.per_model["m"].misses, 0);
    }
}
