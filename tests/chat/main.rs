//! `LlmCache` and the built-in OpenAI-compatible client against the mock upstream, one
//! binary: chat and streams through the cache, the client alone, credentials never shown
//! (one global tracing subscriber), keys, limits, a custom upstream, embeddings, and the
//! README's demo run as its compiled example.

mod cache;
mod credentials;
mod custom_upstream;
mod demo;
mod embeddings;
mod keys;
mod limits;
mod llm_stream;
mod upstream;
mod upstream_stream;
