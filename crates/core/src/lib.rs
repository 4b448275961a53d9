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
pub mod request;
#[doc(hidden)]
pub mod semantic;
pub mod stream;
#[doc(hidden)]
pub mod upstream;

// The engine under the names the rooms were written against.
#[doc(hidden)]
pub use llm_cache_engine as tiered;
#[doc(hidden)]
pub use llm_cache_engine::error;

pub use llm_cache_engine::{
    BreakerState, CacheStatus, Cached, Codec, DEFAULT_SCAN_LIMIT, Digest, Error, ErrorKind,
    FetchOptions, Health, JsonCodec, L2Health, RedisStats, Result, Stats, TieredCache,
    TieredCacheBuilder, Weigher, default_weight,
};
// The Redis storage format: public for the fuzz crate and the tests, not semver-stable API.
#[doc(hidden)]
pub use llm_cache_engine::envelope;
#[doc(hidden)]
pub use llm_cache_engine::{Envelope, EnvelopeError};

pub use semantic::{
    Canonical, DEFAULT_AUDIT_AGREEMENT, DEFAULT_BUCKET_CAP, DEFAULT_MAX_CANDIDATES,
    DEFAULT_MAX_TYPOS, DEFAULT_SEMANTIC_L1_BYTES, DEFAULT_SEMANTIC_THRESHOLD, DEFAULT_TYPO_MIN_LEN,
    GuardVerdict, LexicalGuard, Refusal, SemanticConfig, SemanticStats,
};
pub use stream::ChatChunk;
pub use upstream::ChunkStream;
pub use upstream::{BoxFuture, Upstream};
#[cfg(feature = "openai")]
pub use upstream::{OpenAiCompatible, RetryPolicy, UpstreamStats};

#[cfg(feature = "tower")]
pub use integrations::tower::TowerUpstream;

pub use chat::key;
#[doc(no_inline)]
pub use chat::key::{KEY_FORMAT_VERSION, KeyOptions};
pub use chat::{
    CacheControl, CachedStream, DEFAULT_MAX_MODEL_LABELS, DEFAULT_STREAM_DEADLINE, LlmCache,
    LlmCacheBuilder, LlmStats, ModelPrice, ModelSavings, OTHER_MODELS, PriceTable,
};
pub use embeddings::{
    CachedEmbeddings, DEFAULT_L1_MAX_BYTES as DEFAULT_EMBEDDINGS_L1_MAX_BYTES,
    DEFAULT_MAX_INPUTS_PER_CALL as DEFAULT_MAX_EMBEDDING_INPUTS_PER_CALL, EmbeddingStats,
};
pub use request::{
    ChatMessage, ChatRequest, ChatResponse, Choice, Content, Embedding, EmbeddingInput,
    EmbeddingRequest, EmbeddingResponse, EmbeddingUsage, EncodingFormat, Extra, FunctionCall,
    InputItem, MAX_REQUEST_DEPTH, ToolCall, Usage, Vector,
};
