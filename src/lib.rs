#![doc = include_str!("crate-docs.md")]
#![warn(missing_docs)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

// The facade: every path of the workspace's crates under one name. The crates, bottom up:
// llm-cache-engine (the generic tiers), llm-cache-core (the LLM layer), llm-cache-serve
// (the HTTP front) and llm-cache-async-openai (the async-openai layer); the crate graph is
// what keeps the engine free of the layers above it.
pub use llm_cache_core::*;

#[cfg(feature = "async-openai")]
#[cfg_attr(docsrs, doc(cfg(feature = "async-openai")))]
#[doc(inline)]
pub use llm_cache_async_openai as async_openai;
#[cfg(feature = "serve")]
#[cfg_attr(docsrs, doc(cfg(feature = "serve")))]
#[doc(inline)]
pub use llm_cache_serve as serve;

// The README's and the guides' Rust blocks are doc tests, as they were when the README was
// the crate docs: `cargo test --doc --all-features` runs them.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
mod readme {}
#[cfg(doctest)]
#[doc = include_str!("../docs/operations.md")]
mod operations_guide {}
#[cfg(doctest)]
#[doc = include_str!("../docs/embeddings.md")]
mod embeddings_guide {}
#[cfg(doctest)]
#[doc = include_str!("../docs/semantic.md")]
mod semantic_guide {}
#[cfg(doctest)]
#[doc = include_str!("../docs/async-openai.md")]
mod async_openai_guide {}
#[cfg(doctest)]
#[doc = include_str!("../docs/http-front.md")]
mod http_front_guide {}
