//! Integrations with other crates, each behind its feature: `tower` (a `Service` over
//! [`LlmCache`](crate::LlmCache) and an [`Upstream`](crate::Upstream) over any `Service`)
//! and `http` (the headers the async-openai layer and the HTTP front share). The layer and
//! the front themselves are crates of their own (llm-cache-async-openai, llm-cache-serve).

#[cfg(feature = "async-openai")]
pub mod async_openai_convert;
#[cfg(feature = "axum")]
mod axum;
#[cfg(feature = "http")]
pub mod headers;
#[cfg(feature = "tower")]
pub mod tower;
