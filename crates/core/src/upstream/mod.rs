//! The upstream: the [`Upstream`] trait (bring your own client) and, with the default
//! `openai` feature, `OpenAiCompatible` (in `upstream/openai/`), a reqwest client for any
//! OpenAI-compatible `/chat/completions` endpoint, with retries. Nothing here may put an API
//! key in an error, a log line or `Debug` output.

use std::sync::Arc;

use futures_util::StreamExt;

use crate::error::{Error, ErrorKind, Result};
use crate::request::{ChatRequest, ChatResponse, EmbeddingRequest, EmbeddingResponse};
use crate::stream::{ChatChunk, ReplayOptions, replay};

#[cfg(feature = "openai")]
mod openai;
#[cfg(feature = "openai")]
#[doc(hidden)]
pub use openai::error_chain;
#[cfg(feature = "openai")]
#[doc(hidden)]
pub use openai::{CREDENTIAL_HEADERS, is_credential_header, is_scoped_credential};
#[cfg(feature = "openai")]
pub use openai::{OpenAiCompatible, RawAnswer, RetryPolicy, UpstreamStats};

/// Upstream calls by outcome (`ok`, `error`, `retried`).
pub(crate) const UPSTREAM_REQUESTS: &str = "ai_upstream_requests_total";

/// Describe the upstream series to the recorder installed now.
pub(crate) fn describe_series() {
    metrics::describe_counter!(
        UPSTREAM_REQUESTS,
        metrics::Unit::Count,
        "Upstream calls by outcome: ok, error (after all attempts), retried (extra attempts)"
    );
}

/// A boxed, `Send` future: what [`Upstream::chat`] returns (re-exported from `futures-util`,
/// so an implementation needs no extra dependency).
pub use futures_util::future::BoxFuture;

/// A streamed answer, chunk by chunk: what [`Upstream::chat_stream`] returns. An `Err` is
/// the stream's last item (the upstream failed or the stream was cut off).
pub type ChunkStream = futures_util::stream::BoxStream<'static, Result<ChatChunk>>;

/// Anything that answers a chat request: the cache calls it on a miss.
///
/// [`OpenAiCompatible`] is the built-in implementation. Bring your own client (a vendor
/// SDK, a router, a test double) by implementing `chat`; errors should use the crate's
/// [`Error`](crate::Error) so they reach every waiter of a flight unchanged: an HTTP error
/// as [`Error::upstream_status`](crate::Error::upstream_status), with
/// [`with_retry_after`](crate::Error::with_retry_after) for a `Retry-After`.
///
/// ```
/// use llm_cache_core::{BoxFuture, ChatMessage, ChatRequest, ChatResponse, Choice, Result, Upstream};
///
/// /// Answers every request with the text of its last message.
/// struct Echo;
///
/// impl Upstream for Echo {
///     fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse>> {
///         Box::pin(async move {
///             let text = request.messages.last().and_then(|m| m.text()).unwrap_or_default();
///             Ok(ChatResponse {
///                 model: request.model.clone(),
///                 choices: vec![Choice {
///                     message: ChatMessage::assistant(text),
///                     finish_reason: Some("stop".into()),
///                     ..Default::default()
///                 }],
///                 ..Default::default()
///             })
///         })
///     }
/// }
///
/// # futures_util::FutureExt::now_or_never(async {
/// let request = ChatRequest::new("m").message(ChatMessage::user("hi"));
/// assert_eq!(Echo.chat(&request).await?.text().as_deref(), Some("hi"));
/// # Ok::<(), llm_cache_core::Error>(())
/// # }).unwrap().unwrap();
/// ```
pub trait Upstream: Send + Sync + 'static {
    /// Answer `request`. Called once per flight, never for a cache hit.
    fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse>>;

    /// Answer `request` as a stream of chunks that ends with a usage chunk when the
    /// upstream reports usage (the cache needs it whatever the caller's `stream_options`).
    /// The future resolves once the stream has started, so errors before the first chunk
    /// (and their retries) end the call; an error after that is the stream's last item.
    ///
    /// The default calls [`Upstream::chat`] and replays its answer with
    /// [`replay`](crate::stream::replay) (`include_usage` on), so a client that cannot
    /// stream still can be streamed from.
    fn chat_stream<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<ChunkStream>> {
        Box::pin(async move {
            let response = self.chat(request).await?;
            let options = ReplayOptions {
                include_usage: true,
                ..ReplayOptions::default()
            };
            let chunks = replay(&response, &options);
            Ok(futures_util::stream::iter(chunks.into_iter().map(Ok)).boxed())
        })
    }

    /// The vectors of `request`'s inputs (an OpenAI-compatible `/embeddings` call). The
    /// cache calls it on a miss with only the inputs it lacks, at most
    /// [`max_embedding_inputs_per_call`](crate::LlmCacheBuilder::max_embedding_inputs_per_call)
    /// of them, and checks the answer: exactly one non-empty vector per input, each at its
    /// input's `index`. Vectors may come as numbers or as base64 (little-endian f32),
    /// whatever `encoding_format` asked.
    ///
    /// The default answers an [`Unsupported`](crate::ErrorKind::Unsupported) error: an
    /// upstream of your own that only chats need not implement it.
    fn embeddings<'a>(
        &'a self,
        request: &'a EmbeddingRequest,
    ) -> BoxFuture<'a, Result<EmbeddingResponse>> {
        let _ = request;
        Box::pin(async {
            Err(Error::new(
                ErrorKind::Unsupported,
                "this upstream does not implement embeddings (Upstream::embeddings)",
            ))
        })
    }

    /// Check the configuration without any network call, so a builder can report a bad
    /// knob from `build()` instead of from the first request. The default accepts.
    fn validate(&self) -> Result<()> {
        Ok(())
    }
}

impl<U: Upstream + ?Sized> Upstream for Arc<U> {
    fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse>> {
        (**self).chat(request)
    }

    fn chat_stream<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<ChunkStream>> {
        (**self).chat_stream(request)
    }

    fn embeddings<'a>(
        &'a self,
        request: &'a EmbeddingRequest,
    ) -> BoxFuture<'a, Result<EmbeddingResponse>> {
        (**self).embeddings(request)
    }

    fn validate(&self) -> Result<()> {
        (**self).validate()
    }
}
