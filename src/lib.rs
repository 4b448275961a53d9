#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod builder;
mod cache;
mod digest;
pub mod envelope;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod health;
mod inflight;
mod invalidation;
pub mod key;
mod keyspace;
mod l1;
mod l2;
mod lease;
mod metrics;
mod policy;
mod pricing;
#[cfg(feature = "prometheus")]
pub mod prometheus;
mod redis_stats;
mod request;
pub mod stream;
mod tiered;
mod upstream;

pub use digest::Digest;
pub use error::{Error, ErrorKind, Result};
pub use request::{
    ChatMessage, ChatRequest, ChatResponse, Choice, Content, Extra, FunctionCall,
    MAX_REQUEST_DEPTH, ToolCall, Usage,
};

// --- envelope re-exports (owned by envelope.rs) ---
pub use envelope::{Envelope, EnvelopeError};
// --- key re-exports (owned by key.rs) ---
pub use key::{KEY_FORMAT_VERSION, KeyOptions};
// --- upstream/pricing re-exports (owned by upstream.rs, pricing.rs) ---
pub use pricing::{ModelPrice, PriceTable};
pub use upstream::ChunkStream;
pub use upstream::{BoxFuture, Upstream};
#[cfg(feature = "openai")]
pub use upstream::{OpenAiCompatible, RetryPolicy, UpstreamStats};

pub use builder::{DEFAULT_STREAM_DEADLINE, LlmCacheBuilder, TieredCacheBuilder};
pub use cache::{CachedStream, LlmCache, LlmStats, ModelSavings};
pub use metrics::{BreakerState, Stats};
pub use policy::CacheControl;
// --- observability re-exports (owned by health.rs, redis_stats.rs) ---
pub use health::{Health, L2Health};
pub use redis_stats::{DEFAULT_SCAN_LIMIT, RedisStats};
pub use tiered::{CacheStatus, Cached, FetchOptions, TieredCache};
