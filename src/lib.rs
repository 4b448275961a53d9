#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![forbid(unsafe_code)]

mod builder;
mod digest;
mod envelope;
mod error;
mod inflight;
mod key;
mod l1;
mod l2;
mod metrics;
mod pricing;
mod request;
mod tiered;
mod upstream;

pub use digest::Digest;
pub use error::{Error, ErrorKind, Result};
pub use request::{
    ChatMessage, ChatRequest, ChatResponse, Choice, Content, Extra, FunctionCall, ToolCall, Usage,
};

// --- envelope re-exports (owned by envelope.rs) ---
// --- key re-exports (owned by key.rs) ---
// --- upstream/pricing re-exports (owned by upstream.rs, pricing.rs) ---
