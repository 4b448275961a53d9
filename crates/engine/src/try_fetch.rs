//! `try_get_or_fetch`: the fetch function returns an error type of its own, and its callers
//! get that error back as it was (shared behind an `Arc`, as moka's `try_get_with` does),
//! apart from the cache's own errors.

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use futures_util::FutureExt;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::TieredCache;
use crate::cached::{Cached, FetchOptions};
use crate::digest::Digest;
use crate::error::{Error, ErrorKind};

/// Why [`TieredCache::try_get_or_fetch`] gave no value.
#[derive(Debug)]
#[non_exhaustive]
pub enum TryFetchError<E> {
    /// The fetch function's own error. Every caller of the flight gets the same `Arc`;
    /// errors are never cached, the next call fetches again.
    Fetch(Arc<E>),
    /// The cache's own: the fetch panicked (`FetchAborted`), or this caller waited past
    /// its `waiter_deadline` (`Timeout`).
    Cache(Error),
}

impl<E> Clone for TryFetchError<E> {
    fn clone(&self) -> Self {
        match self {
            TryFetchError::Fetch(e) => TryFetchError::Fetch(Arc::clone(e)),
            TryFetchError::Cache(e) => TryFetchError::Cache(e.clone()),
        }
    }
}

impl<E: fmt::Display> fmt::Display for TryFetchError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TryFetchError::Fetch(e) => write!(f, "fetch failed: {e}"),
            TryFetchError::Cache(e) => e.fmt(f),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for TryFetchError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TryFetchError::Fetch(e) => Some(&**e),
            TryFetchError::Cache(e) => Some(e),
        }
    }
}

/// The fetch's own error, carried through the flight as the source of a `Fetch` error.
struct Own<E>(Arc<E>);

impl<E: fmt::Display> fmt::Display for Own<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<E: fmt::Debug> fmt::Debug for Own<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl<E: std::error::Error + 'static> std::error::Error for Own<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

impl<V> TieredCache<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// [`get_or_fetch_with`](Self::get_or_fetch_with) for a fetch function with an error
    /// type of its own: its error comes back as [`TryFetchError::Fetch`], the same `Arc`
    /// for every caller of the flight; the cache's own errors as [`TryFetchError::Cache`].
    /// Everything else (single-flight, leases, fail-open L2, cancellation) is as
    /// [`get_or_fetch`](Self::get_or_fetch).
    ///
    /// ```
    /// use llm_cache_engine::{Digest, FetchOptions, TieredCache, TryFetchError};
    ///
    /// #[derive(Debug)]
    /// struct NotFound(u32);
    /// impl std::fmt::Display for NotFound {
    ///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
    ///         write!(f, "no user {}", self.0)
    ///     }
    /// }
    /// impl std::error::Error for NotFound {}
    ///
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let cache: TieredCache<String> = TieredCache::builder().build().await?;
    /// let key = Digest::of(b"user:7");
    /// let out = cache
    ///     .try_get_or_fetch(key, &FetchOptions::default(), || async { Err(NotFound(7)) })
    ///     .await;
    /// match out {
    ///     Err(TryFetchError::Fetch(e)) => assert_eq!(e.0, 7),
    ///     other => panic!("{other:?}"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn try_get_or_fetch<F, Fut, E>(
        &self,
        digest: Digest,
        options: &FetchOptions,
        fetch: F,
    ) -> Result<Cached<V>, TryFetchError<E>>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<V, E>> + Send + 'static,
        E: std::error::Error + Send + Sync + 'static,
    {
        let wrapped = move || {
            fetch().map(|out| {
                out.map_err(|e| {
                    let own = Own(Arc::new(e));
                    Error::new(ErrorKind::Fetch, own.to_string()).with_source(own)
                })
            })
        };
        self.get_or_fetch_with(digest, options, wrapped)
            .await
            .map_err(|e| {
                let own = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<Own<E>>());
                match own {
                    Some(own) => TryFetchError::Fetch(Arc::clone(&own.0)),
                    None => TryFetchError::Cache(e),
                }
            })
    }
}
