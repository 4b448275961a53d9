#![doc = include_str!("../README.md")]
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
