//! Integrations with other crates, each behind its feature: `tower` (a `Service` over
//! [`LlmCache`](crate::LlmCache) and an [`Upstream`](crate::Upstream) over any `Service`)
//! and `async-openai` (a caching layer for its client's HTTP stack, and type conversions).
//! They sit on top of `chat/` and speak only through its public and `pub(crate)` surface;
//! nothing below them may import them.

#[cfg(feature = "async-openai")]
pub mod async_openai;
#[cfg(any(feature = "async-openai", feature = "axum"))]
pub(crate) mod headers;
#[cfg(feature = "tower")]
pub(crate) mod tower;
