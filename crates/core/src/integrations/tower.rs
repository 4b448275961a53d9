//! tower for everyone: [`LlmCache`] is a `tower::Service<ChatRequest>` (so timeouts,
//! concurrency and rate limits compose in front of it), and [`TowerUpstream`] turns any
//! `tower::Service<ChatRequest, Response = ChatResponse>` into an [`Upstream`] (so a stack
//! of the user's own answers the misses). It must not change what `chat` does.

use std::fmt;
use std::task::{Context, Poll};

use crate::Cached;
use crate::LlmCache;
use crate::error::{Error, ErrorKind, Result};
use crate::request::{ChatRequest, ChatResponse};
use crate::upstream::{BoxFuture, Upstream};

/// `call` is [`LlmCache::chat`]: always ready, cheap to clone (the cache is shared). Put
/// `tower` middleware in front of it to bound callers; the cache itself still collapses
/// identical requests into one upstream call.
impl tower::Service<ChatRequest> for LlmCache {
    type Response = Cached<ChatResponse>;
    type Error = Error;
    type Future = BoxFuture<'static, Result<Cached<ChatResponse>>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: ChatRequest) -> Self::Future {
        let cache = self.clone();
        Box::pin(async move { cache.chat(&request).await })
    }
}

/// An [`Upstream`] that asks a tower service: each call clones the service, waits until it
/// is ready, and calls it. Its errors become the crate's [`Error`]: an `Error` the service
/// returned (boxed) is kept as it is, anything else is kind `Upstream` with its message.
///
/// ```
/// # #[cfg(feature = "tower")] {
/// use llm_cache_core::{ChatMessage, ChatResponse, Choice, LlmCache, TowerUpstream};
/// # async fn run() -> llm_cache_core::Result<()> {
/// // Any tower service of chat requests: a router, a client stack, a test double.
/// let echo = tower::util::BoxCloneSyncService::new(tower::service_fn(
///     |r: llm_cache_core::ChatRequest| async move {
///         Ok::<_, llm_cache_core::Error>(ChatResponse {
///             choices: vec![Choice {
///                 message: ChatMessage::assistant(r.messages[0].text().unwrap_or_default()),
///                 ..Default::default()
///             }],
///             ..Default::default()
///         })
///     },
/// ));
/// let cache = LlmCache::builder().upstream(TowerUpstream::new(echo)).build().await?;
/// # Ok(()) }
/// # }
/// ```
#[derive(Clone)]
pub struct TowerUpstream<S> {
    service: S,
}

impl<S> TowerUpstream<S> {
    /// Wrap `service`.
    pub fn new(service: S) -> Self {
        TowerUpstream { service }
    }

    /// The service inside.
    pub fn get_ref(&self) -> &S {
        &self.service
    }
}

impl<S> fmt::Debug for TowerUpstream<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TowerUpstream").finish_non_exhaustive()
    }
}

impl<S> Upstream for TowerUpstream<S>
where
    S: tower::Service<ChatRequest, Response = ChatResponse> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse>> {
        let mut service = self.service.clone();
        let request = request.clone();
        Box::pin(async move {
            std::future::poll_fn(|cx| service.poll_ready(cx))
                .await
                .map_err(service_error)?;
            service.call(request).await.map_err(service_error)
        })
    }
}

/// A service's error as the crate's: kept when it is one, else wrapped.
pub(crate) fn service_error(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    let boxed = e.into();
    match boxed.downcast::<Error>() {
        Ok(own) => *own,
        Err(other) => Error::new(ErrorKind::Upstream, other.to_string()),
    }
}
