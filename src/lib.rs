#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![forbid(unsafe_code)]

// The rooms; arrows point down only: chat -> tiered, stream, upstream, request; upstream ->
// stream, request; stream -> request. See the README's "Architecture" and tests/layering.rs.
mod chat;
mod embeddings;
mod error;
#[cfg(any(feature = "tower", feature = "async-openai", feature = "axum"))]
mod integrations;
// The fuzz targets' checks: public for `fuzz/` and tests/engine/fuzz_regressions.rs only.
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "prometheus")]
pub mod prometheus;
mod request;
mod semantic;
#[cfg(feature = "axum")]
pub mod serve;
pub mod stream;
mod tiered;
mod upstream;

pub use error::{Error, ErrorKind, Result};

pub use tiered::digest::Digest;
// The Redis storage format: public for the fuzz crate and the tests, not semver-stable API.
#[doc(hidden)]
pub use tiered::envelope;
#[doc(hidden)]
pub use tiered::envelope::{Envelope, EnvelopeError};
pub use tiered::health::{Health, L2Health};
pub use tiered::redis_stats::{DEFAULT_SCAN_LIMIT, RedisStats};
pub use tiered::stats::{BreakerState, Stats};
pub use tiered::{
    CacheStatus, Cached, Codec, FetchOptions, JsonCodec, TieredCache, TieredCacheBuilder, Weigher,
    default_weight,
};

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

#[cfg(feature = "async-openai")]
pub use integrations::async_openai;
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
