//! The per-input path of embeddings: every input of a request is its own cache entry, and
//! only the inputs missing from every tier go upstream, together, in as few calls as the
//! per-call maximum allows. It owns the input keys, the compact stored form of a vector,
//! the sharing of a call's tokens among its inputs, and the answer's assembly, where each
//! vector is put at its own input's index and nowhere else. It never names the chat layer:
//! `chat/` hands it the request's key scope, the upstream and the fetch options.

mod stored;
mod usage;

use std::ops::Deref;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures_util::future::join_all;
use sha2::{Digest as _, Sha256};

pub(crate) use self::stored::{EmbeddingCodec, StoredEmbedding, weigh};
use crate::CacheStatus;
use crate::error::{Error, ErrorKind, Result};
use crate::request::{
    Embedding, EmbeddingInput, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage, EncodingFormat,
    InputItem, Vector,
};
use crate::tiered::digest::Digest;
use crate::tiered::stats::Stats;
use crate::tiered::{Cached, FetchOptions, TieredCache, now_ms};
use crate::upstream::Upstream;

/// The default of the builder's `max_embedding_inputs_per_call`: OpenAI's limit on inputs
/// per `/embeddings` request.
pub const DEFAULT_MAX_INPUTS_PER_CALL: usize = 2048;

/// The default of the builder's `embeddings_l1_max_bytes`: 64 MiB, about 10,000 vectors of
/// 1,536 dimensions.
pub const DEFAULT_L1_MAX_BYTES: u64 = 64 << 20;

/// How the per-input path calls the upstream.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub max_inputs_per_call: usize,
    /// The `encoding_format` asked of the upstream (whatever the caller asked for).
    pub upstream_format: EncodingFormat,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            max_inputs_per_call: DEFAULT_MAX_INPUTS_PER_CALL,
            upstream_format: EncodingFormat::Base64,
        }
    }
}

/// What every input's key holds besides the input: a digest of the rest of the request
/// (model, dimensions, unknown parameters), the namespace and any route scope, made by the
/// chat layer; and the namespace's generation.
pub(crate) struct Scope {
    pub base: [u8; 32],
    pub generation: u64,
}

/// Separates input digests from every other digest the crate makes.
const INPUT_DOMAIN: &[u8] = b"llm-cache/embedding-input";

/// The digest of one input: SHA-256 over the framed domain, the scope's base, the input's
/// kind and the input, then scoped by the namespace's generation.
pub(crate) fn input_digest(scope: &Scope, item: InputItem<'_>) -> Digest {
    let mut h = Sha256::new();
    h.update((INPUT_DOMAIN.len() as u64).to_be_bytes());
    h.update(INPUT_DOMAIN);
    h.update(scope.base);
    match item {
        InputItem::Text(t) => {
            h.update([0u8]);
            h.update((t.len() as u64).to_be_bytes());
            h.update(t.as_bytes());
        }
        InputItem::Tokens(ids) => {
            h.update([1u8]);
            h.update((ids.len() as u64).to_be_bytes());
            for id in ids {
                h.update(id.to_le_bytes());
            }
        }
    }
    let digest = Digest::from_bytes(h.finalize().into());
    crate::tiered::invalidation::scoped(digest, scope.generation)
}

llm_cache_engine::counters! {
    /// What the embeddings path has done since the cache was built. Inputs are counted one
    /// by one: a request of 100 inputs, 80 of them cached, is 80 hits and 20 fetched.
    #[derive(Debug, Clone, PartialEq, serde::Serialize)]
    #[non_exhaustive]
    pub struct EmbeddingStats;
    struct Counters {
        counters {
            /// Requests answered or failed (bypassed ones included).
            requests,
            /// Inputs in those requests.
            inputs,
            /// Inputs served from this instance's memory.
            hits_l1,
            /// Inputs served from Redis.
            hits_l2,
            /// Inputs answered by another caller's fetch (or repeated in one request).
            coalesced,
            /// Inputs fetched for the request that asked for them.
            fetched,
            /// `/embeddings` calls made to the upstream (bypasses included).
            upstream_calls,
            /// Inputs sent in those calls.
            upstream_inputs,
            /// Tokens of the inputs served from cache (each input's share of the call that
            /// fetched it).
            tokens_saved,
            /// Requests that failed.
            failed,
            /// Requests whose every input came from cache (or another caller's fetch): each
            /// saved an upstream call.
            requests_from_cache,
        }
        gauges {
            /// The vectors' tier: L1 entries and bytes, L2 reads, writes and errors, leases.
            /// (Its `misses` and `fetches` count inputs, one per missing input.)
            cache: Stats,
        }
        extra {}
    }
}

/// An embeddings answer and where each of its vectors came from.
#[derive(Debug, Clone)]
pub struct CachedEmbeddings {
    response: EmbeddingResponse,
    status: CacheStatus,
    statuses: Vec<CacheStatus>,
    tokens: Vec<u32>,
    created_at_ms: u64,
}

impl CachedEmbeddings {
    /// Where the answer came from as a whole: `HitL1` when every input was in memory,
    /// `HitL2` or `Coalesced` when none was fetched, `Miss` when every input was fetched,
    /// `Partial` when some were, `Bypass` for a bypassed request. An input repeated in
    /// the request counts once: two copies of one fetched input are a `Miss`, even though
    /// [`input_statuses`](Self::input_statuses) shows the second as `Coalesced`.
    pub fn status(&self) -> CacheStatus {
        self.status
    }

    /// Where each input's vector came from, in input order.
    pub fn input_statuses(&self) -> &[CacheStatus] {
        &self.statuses
    }

    /// How long ago the oldest of its vectors was fetched; zero when all are fresh.
    pub fn age(&self) -> Duration {
        Duration::from_millis(now_ms().saturating_sub(self.created_at_ms))
    }

    /// Tokens of the inputs served from cache (what this request did not pay for).
    pub fn tokens_saved(&self) -> u64 {
        self.statuses
            .iter()
            .zip(&self.tokens)
            .filter(|(s, _)| s.is_hit())
            .map(|(_, &t)| u64::from(t))
            .sum()
    }

    /// The response.
    pub fn response(&self) -> &EmbeddingResponse {
        &self.response
    }

    /// The response, owned.
    pub fn into_response(self) -> EmbeddingResponse {
        self.response
    }

    /// Each input's status and token share, in input order (for the savings counters).
    pub(crate) fn per_input(&self) -> impl Iterator<Item = (CacheStatus, u32)> + '_ {
        self.statuses
            .iter()
            .copied()
            .zip(self.tokens.iter().copied())
    }
}

impl Deref for CachedEmbeddings {
    type Target = EmbeddingResponse;
    fn deref(&self) -> &EmbeddingResponse {
        &self.response
    }
}

/// An input owned by a fetch (which outlives the caller's request).
enum OwnedItem {
    Text(String),
    Tokens(Vec<u32>),
}

impl OwnedItem {
    fn of(item: InputItem<'_>) -> Self {
        match item {
            InputItem::Text(t) => OwnedItem::Text(t.to_string()),
            InputItem::Tokens(t) => OwnedItem::Tokens(t.to_vec()),
        }
    }

    fn item(&self) -> InputItem<'_> {
        match self {
            OwnedItem::Text(t) => InputItem::Text(t),
            OwnedItem::Tokens(t) => InputItem::Tokens(t),
        }
    }
}

/// The embeddings tier and its counters.
pub(crate) struct Embeddings {
    tiers: TieredCache<StoredEmbedding>,
    settings: Settings,
    counters: Arc<Counters>,
}

impl Embeddings {
    pub(crate) fn new(tiers: TieredCache<StoredEmbedding>, settings: Settings) -> Self {
        Embeddings {
            tiers,
            settings,
            counters: Arc::default(),
        }
    }

    pub(crate) fn tiers(&self) -> &TieredCache<StoredEmbedding> {
        &self.tiers
    }

    /// Answer `request` input by input (see the module docs). `request` is validated.
    pub(crate) async fn answer(
        &self,
        request: &EmbeddingRequest,
        upstream: &Arc<dyn Upstream>,
        scope: &Scope,
        options: &FetchOptions,
    ) -> Result<CachedEmbeddings> {
        let c = &self.counters;
        c.requests.fetch_add(1, Relaxed);
        let out = self.answer_inputs(request, upstream, scope, options).await;
        match &out {
            Ok(answer) => {
                c.inputs.fetch_add(answer.statuses.len() as u64, Relaxed);
                if !answer.statuses.is_empty() && answer.statuses.iter().all(|s| s.is_hit()) {
                    c.requests_from_cache.fetch_add(1, Relaxed);
                }
                for (status, tokens) in answer.per_input() {
                    let counter = match status {
                        CacheStatus::HitL1 => &c.hits_l1,
                        CacheStatus::HitL2 => &c.hits_l2,
                        CacheStatus::Coalesced => &c.coalesced,
                        _ => &c.fetched,
                    };
                    counter.fetch_add(1, Relaxed);
                    if status.is_hit() {
                        c.tokens_saved.fetch_add(u64::from(tokens), Relaxed);
                    }
                }
            }
            Err(_) => {
                c.inputs.fetch_add(request.input.len() as u64, Relaxed);
                c.failed.fetch_add(1, Relaxed);
            }
        }
        out
    }

    async fn answer_inputs(
        &self,
        request: &EmbeddingRequest,
        upstream: &Arc<dyn Upstream>,
        scope: &Scope,
        options: &FetchOptions,
    ) -> Result<CachedEmbeddings> {
        let items = request.input.items();
        let digests: Vec<Digest> = items.iter().map(|i| input_digest(scope, *i)).collect();
        let mut found: Vec<Option<Cached<StoredEmbedding>>> = vec![None; items.len()];
        let mut missing = Vec::new();
        for (i, digest) in digests.iter().enumerate() {
            // A refresh reads no tier.
            let hit = match options.refresh {
                false => self.tiers.get(digest).await,
                true => None,
            };
            match hit {
                Some(hit) => found[i] = Some(hit),
                None => missing.push(i),
            }
        }
        if !missing.is_empty() {
            let owned: Arc<Vec<OwnedItem>> =
                Arc::new(missing.iter().map(|&i| OwnedItem::of(items[i])).collect());
            let mut template = request.clone();
            template.input = EmbeddingInput::Texts(Vec::new());
            template.encoding_format = Some(self.settings.upstream_format);
            let fetch = Fetch {
                upstream: Arc::clone(upstream),
                template: Arc::new(template),
                items: owned,
                max_per_call: self.settings.max_inputs_per_call,
                counters: Arc::clone(&self.counters),
            };
            let wanted: Vec<Digest> = missing.iter().map(|&i| digests[i]).collect();
            let fetched = self
                .tiers
                .get_or_fetch_many_after_l1(&wanted, options, move |positions| {
                    let fetch = fetch.clone();
                    async move { fetch.run(positions).await }
                })
                .await;
            for (&i, result) in missing.iter().zip(fetched) {
                found[i] = Some(result?);
            }
        }
        let found: Vec<Cached<StoredEmbedding>> = found
            .into_iter()
            .map(|f| f.expect("every input answered"))
            .collect();
        Ok(assemble(request.format(), &found, &digests))
    }

    /// A bypassed request: sent upstream as it is (the caller's format), stored nowhere.
    pub(crate) async fn bypass(
        &self,
        request: &EmbeddingRequest,
        upstream: &Arc<dyn Upstream>,
    ) -> Result<CachedEmbeddings> {
        let c = &self.counters;
        let n = request.input.len();
        c.requests.fetch_add(1, Relaxed);
        c.inputs.fetch_add(n as u64, Relaxed);
        c.upstream_calls.fetch_add(1, Relaxed);
        c.upstream_inputs.fetch_add(n as u64, Relaxed);
        let out = match upstream.embeddings(request).await {
            Ok(response) => response.into_ordered(n),
            Err(e) => Err(e),
        };
        let mut response = match out {
            Ok(response) => response,
            Err(e) => {
                c.failed.fetch_add(1, Relaxed);
                return Err(e);
            }
        };
        let format = request.format();
        for e in &mut response.data {
            e.embedding = e.embedding.with_format(format);
        }
        Ok(CachedEmbeddings {
            response,
            status: CacheStatus::Bypass,
            statuses: vec![CacheStatus::Bypass; n],
            tokens: vec![0; n],
            created_at_ms: now_ms(),
        })
    }

    /// Remove every input of `request` from both tiers (and other instances' L1).
    pub(crate) async fn invalidate(&self, request: &EmbeddingRequest, scope: &Scope) -> Result<()> {
        let mut first_error = None;
        for item in request.input.items() {
            if let Err(e) = self.tiers.invalidate(&input_digest(scope, item)).await {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    pub(crate) fn stats(&self) -> EmbeddingStats {
        self.counters.snapshot(self.tiers.stats())
    }
}

/// The response for inputs answered by `found` (in input order, keyed by `digests`),
/// vectors in `format`.
fn assemble(
    format: EncodingFormat,
    found: &[Cached<StoredEmbedding>],
    digests: &[Digest],
) -> CachedEmbeddings {
    let statuses: Vec<CacheStatus> = found.iter().map(|c| c.status().into()).collect();
    // A repeated input joins its first occurrence's flight (`Coalesced`, so that its
    // tokens are charged once): the whole answer's status goes by each distinct input.
    let mut seen = std::collections::HashSet::with_capacity(digests.len());
    let distinct: Vec<CacheStatus> = statuses
        .iter()
        .zip(digests)
        .filter(|(_, d)| seen.insert(**d))
        .map(|(s, _)| *s)
        .collect();
    let tokens: Vec<u32> = found.iter().map(|c| c.value().tokens).collect();
    let charged: u64 = statuses
        .iter()
        .zip(&tokens)
        .filter(|(s, _)| **s == CacheStatus::Miss)
        .map(|(_, &t)| u64::from(t))
        .sum();
    let data = found
        .iter()
        .enumerate()
        .map(|(index, c)| Embedding {
            object: "embedding".to_string(),
            index,
            embedding: Vector::from_values(Arc::clone(&c.value().values), format),
        })
        .collect();
    let model = found
        .first()
        .map(|c| c.value().model.to_string())
        .unwrap_or_default();
    let created_at_ms = found
        .iter()
        .map(|c| c.created_at_ms())
        .min()
        .unwrap_or_else(now_ms);
    CachedEmbeddings {
        response: EmbeddingResponse {
            object: "list".to_string(),
            data,
            model,
            usage: EmbeddingUsage {
                prompt_tokens: charged,
                total_tokens: charged,
            },
            extra: Default::default(),
        },
        status: summary(&distinct),
        statuses,
        tokens,
        created_at_ms,
    }
}

/// The status of a whole answer from its inputs' (see [`CachedEmbeddings::status`]).
fn summary(statuses: &[CacheStatus]) -> CacheStatus {
    let fetched = statuses.iter().filter(|s| **s == CacheStatus::Miss).count();
    if fetched == statuses.len() {
        CacheStatus::Miss
    } else if fetched > 0 {
        CacheStatus::Partial
    } else if statuses.iter().all(|s| *s == CacheStatus::HitL1) {
        CacheStatus::HitL1
    } else if statuses.contains(&CacheStatus::HitL2) {
        CacheStatus::HitL2
    } else {
        CacheStatus::Coalesced
    }
}

/// The fetch of a request's missing inputs: what it needs, owned.
#[derive(Clone)]
struct Fetch {
    upstream: Arc<dyn Upstream>,
    /// The request without its inputs, asking for the upstream format.
    template: Arc<EmbeddingRequest>,
    /// The inputs the engine may ask for, by position.
    items: Arc<Vec<OwnedItem>>,
    max_per_call: usize,
    counters: Arc<Counters>,
}

impl Fetch {
    /// The vectors of the inputs at `positions`: one upstream call per
    /// `max_per_call` of them, all at once; a failed call fails its inputs only.
    async fn run(&self, positions: Vec<usize>) -> Vec<Result<StoredEmbedding>> {
        let calls = positions
            .chunks(self.max_per_call.max(1))
            .map(|chunk| self.call(chunk));
        join_all(calls).await.into_iter().flatten().collect()
    }

    async fn call(&self, chunk: &[usize]) -> Vec<Result<StoredEmbedding>> {
        let items: Vec<InputItem<'_>> = chunk.iter().map(|&p| self.items[p].item()).collect();
        self.counters.upstream_calls.fetch_add(1, Relaxed);
        self.counters
            .upstream_inputs
            .fetch_add(items.len() as u64, Relaxed);
        match self.call_inputs(&items).await {
            Ok(entries) => entries.into_iter().map(Ok).collect(),
            Err(e) => chunk.iter().map(|_| Err(e.clone())).collect(),
        }
    }

    async fn call_inputs(&self, items: &[InputItem<'_>]) -> Result<Vec<StoredEmbedding>> {
        let input = EmbeddingInput::from_items(items).ok_or_else(|| {
            Error::new(
                ErrorKind::InvalidRequest,
                "`input`: mixes texts and token lists",
            )
        })?;
        let mut request = (*self.template).clone();
        request.input = input;
        let response = self
            .upstream
            .embeddings(&request)
            .await?
            .into_ordered(items.len())?;
        let weights: Vec<u64> = items.iter().map(InputItem::weight).collect();
        let shares = usage::apportion(response.usage.prompt_tokens, &weights);
        let model: Box<str> = response.model.as_str().into();
        Ok(response
            .data
            .into_iter()
            .zip(shares)
            .map(|(e, tokens)| StoredEmbedding {
                values: Arc::clone(e.embedding.values()),
                tokens,
                model: model.clone(),
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_partial_only_when_some_inputs_were_fetched() {
        use CacheStatus::*;
        assert_eq!(summary(&[Miss, Miss]), Miss);
        assert_eq!(summary(&[Miss, HitL1]), Partial);
        assert_eq!(summary(&[Coalesced, Miss]), Partial);
        assert_eq!(summary(&[HitL1, HitL1]), HitL1);
        assert_eq!(summary(&[HitL1, HitL2, Coalesced]), HitL2);
        assert_eq!(summary(&[HitL1, Coalesced]), Coalesced);
    }

    #[test]
    fn input_keys_tell_texts_from_tokens_and_follow_the_scope() {
        let scope = Scope {
            base: [1; 32],
            generation: 0,
        };
        let text = input_digest(&scope, InputItem::Text("ab"));
        assert_ne!(text, input_digest(&scope, InputItem::Tokens(&[97, 98])));
        assert_ne!(text, input_digest(&scope, InputItem::Text("ab ")));
        let other = Scope {
            base: [2; 32],
            generation: 0,
        };
        assert_ne!(text, input_digest(&other, InputItem::Text("ab")));
        let later = Scope {
            base: [1; 32],
            generation: 7,
        };
        assert_ne!(text, input_digest(&later, InputItem::Text("ab")));
    }
}
