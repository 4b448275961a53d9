//! The LLM layer of llm-cache on the generic engine ([`llm_cache_engine`]): OpenAI-compatible
//! requests and answers, canonical keys, [`LlmCache`] (chat completions, streamed or not,
//! embeddings input by input, the opt-in semantic cache) and the built-in reqwest upstream
//! [`OpenAiCompatible`]. Most users depend on the `llm-cache` crate, which re-exports this
//! one; the paths are the same.
#![warn(missing_docs)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// The rooms; arrows point down only: chat -> stream, upstream, request, embeddings,
// semantic; upstream -> stream, request; stream -> request. The engine is a crate below.
pub mod bodies;
mod cached;
#[doc(hidden)]
pub mod chat;
#[doc(hidden)]
pub mod embeddings;
// The fuzz targets' checks: public for `fuzz/` and tests/fuzz_regressions.rs only.
#[doc(hidden)]
pub mod fuzzing;
#[doc(hidden)]
pub mod integrations;
#[cfg(feature = "prometheus")]
pub mod prometheus;
#[doc(hidden)]
pub mod replay_log;
#[doc(hidden)]
pub mod request;
pub mod semantic;
pub mod stream;
#[doc(hidden)]
pub mod upstream;

/// The generic engine under the LLM layer (the `llm-cache-engine` crate): [`TieredCache`]
/// answers with its own [`engine::Cached`] and [`engine::CacheStatus`], which have no
/// name for this layer's `Partial` and `HitSemantic`; they turn into [`Cached`] and
/// [`CacheStatus`] with `From`, and the statuses compare with `==` across the two.
pub use llm_cache_engine as engine;
// The engine under the name the rooms were written against.
#[doc(hidden)]
pub use llm_cache_engine as tiered;
#[doc(hidden)]
pub use llm_cache_engine::error;

pub use cached::{CacheStatus, Cached};
pub use llm_cache_engine::{
    BreakerState, Codec, DEFAULT_SCAN_LIMIT, Digest, Error, ErrorKind, FetchOptions, Health,
    JsonCodec, L2Health, Redis, RedisStats, Result, Stats, TieredCache, TieredCacheBuilder,
    TryFetchError, Weigher, default_weight,
};
// The Redis storage format: public for the fuzz crate and the tests, not semver-stable API.
#[doc(hidden)]
pub use llm_cache_engine::envelope;
#[doc(hidden)]
pub use llm_cache_engine::{Envelope, EnvelopeError};

// The semantic cache's items at the root as before; documented in `semantic`.
#[doc(hidden)]
pub use semantic::{
    Canonical, DEFAULT_AUDIT_AGREEMENT, DEFAULT_BUCKET_CAP, DEFAULT_MAX_CANDIDATES,
    DEFAULT_MAX_TYPOS, DEFAULT_SEMANTIC_L1_BYTES, DEFAULT_SEMANTIC_THRESHOLD, DEFAULT_TYPO_MIN_LEN,
    GuardVerdict, LexicalGuard, Refusal, SemanticConfig, SemanticStats,
};
#[doc(hidden)]
pub use stream::ChatChunk;
pub use upstream::ChunkStream;
pub use upstream::{BoxFuture, Upstream};
#[cfg(feature = "openai")]
pub use upstream::{OpenAiCompatible, RetryPolicy, UpstreamStats};

#[cfg(feature = "tower")]
pub use integrations::tower::TowerUpstream;

pub use chat::StoredAnswer;
pub use chat::key;
#[doc(no_inline)]
pub use chat::key::{KEY_FORMAT_VERSION, KeyOptions};
pub use chat::{
    CacheControl, CachedStream, DEFAULT_MAX_MODEL_LABELS, DEFAULT_STREAM_DEADLINE, LlmCache,
    LlmCacheBuilder, LlmStats, ModelPrice, ModelSavings, OTHER_MODELS, PriceTable, Route,
};
pub use embeddings::{
    CachedEmbeddings, DEFAULT_L1_MAX_BYTES as DEFAULT_EMBEDDINGS_L1_MAX_BYTES,
    DEFAULT_MAX_INPUTS_PER_CALL as DEFAULT_MAX_EMBEDDING_INPUTS_PER_CALL, EmbeddingStats,
};
pub use request::{ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse};
// The wire types at the root as before; documented in `types`.
#[doc(hidden)]
pub use request::{
    ChatMessage, Choice, Content, Embedding, EmbeddingInput, EmbeddingUsage, EncodingFormat, Extra,
    FunctionCall, InputItem, MAX_REQUEST_DEPTH, ToolCall, Usage, Vector,
};

/// The OpenAI wire types: requests and answers (every field they do not name is kept, so a
/// request is forwarded and keyed whole), their parts, embeddings' vectors, and a streamed
/// answer's chunks.
pub mod types {
    pub use crate::request::{
        ChatMessage, ChatRequest, ChatResponse, Choice, Content, Embedding, EmbeddingInput,
        EmbeddingRequest, EmbeddingResponse, EmbeddingUsage, EncodingFormat, Extra, FunctionCall,
        InputItem, MAX_REQUEST_DEPTH, ToolCall, Usage, Vector,
    };
    pub use crate::stream::ChatChunk;
}
