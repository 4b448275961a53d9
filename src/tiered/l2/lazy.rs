//! The one connection a store uses, made in the background and replaced when it breaks.
//! Operations never wait on the redis crate's own reconnect: they take the connection there
//! is, or wait (under their own deadline) for the attempt under way; a connection that
//! failed is dropped by generation, so a late failure never drops a newer connection.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};

use tokio::sync::Notify;

use super::L2Error;

pub(crate) struct Lazy<C> {
    /// The connection in use and its generation.
    current: RwLock<Option<(u64, C)>>,
    generation: AtomicU64,
    connecting: AtomicBool,
    connect_done: Notify,
    last_error: Mutex<Option<String>>,
}

impl<C: Clone> Lazy<C> {
    pub fn new() -> Self {
        Lazy {
            current: RwLock::new(None),
            generation: AtomicU64::new(0),
            connecting: AtomicBool::new(false),
            connect_done: Notify::new(),
            last_error: Mutex::new(None),
        }
    }

    /// The connection in use, with its generation.
    pub fn current(&self) -> Option<(u64, C)> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The connection in use; without one, call `start` (which should begin an attempt
    /// through [`begin`](Self::begin)) and wait for the attempt under way to end.
    pub async fn get(&self, start: impl FnOnce()) -> Result<(u64, C), L2Error> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        // Registered before the second look, so an attempt ending in between still wakes us.
        let done = self.connect_done.notified();
        tokio::pin!(done);
        done.as_mut().enable();
        if let Some(c) = self.current() {
            return Ok(c);
        }
        start();
        done.await;
        self.current().ok_or_else(|| {
            let last = self
                .last_error
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            L2Error::Connection(last.unwrap_or_else(|| "not connected".into()))
        })
    }

    /// True when the caller should make an attempt now (none is under way); it must then
    /// end it with [`finish`](Self::finish).
    pub fn begin(&self) -> bool {
        !self.connecting.swap(true, Ordering::AcqRel)
    }

    /// End the attempt [`begin`](Self::begin) allowed: keep the connection it made, or its
    /// error for the operations that waited on it; wake them.
    pub fn finish(&self, attempt: Result<C, String>) {
        match attempt {
            Ok(conn) => {
                let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
                *self.current.write().unwrap_or_else(PoisonError::into_inner) =
                    Some((generation, conn));
                *self
                    .last_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = None;
            }
            Err(msg) => {
                *self
                    .last_error
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner) = Some(msg);
            }
        }
        self.connecting.store(false, Ordering::Release);
        self.connect_done.notify_waiters();
    }

    /// Drop the connection of `generation`, if it is still the one in use.
    pub fn reset_if(&self, generation: u64) {
        let mut cur = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if cur.as_ref().is_some_and(|(g, _)| *g == generation) {
            *cur = None;
        }
    }

    /// Drop the connection in use, whatever it is.
    pub fn reset(&self) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_connection_is_dropped_only_by_its_own_generation() {
        let lazy = Lazy::<&str>::new();
        assert!(lazy.begin());
        assert!(!lazy.begin(), "one attempt at a time");
        lazy.finish(Ok("first"));
        let (first, _) = lazy.get(|| panic!("connected already")).await.unwrap();
        assert!(lazy.begin());
        lazy.finish(Ok("second"));
        lazy.reset_if(first);
        assert_eq!(lazy.current().map(|(_, c)| c), Some("second"));
        lazy.reset();
        assert!(lazy.current().is_none());
    }

    #[tokio::test]
    async fn a_waiter_gets_the_attempts_error() {
        let lazy = Lazy::<&str>::new();
        let got = lazy
            .get(|| {
                assert!(lazy.begin());
                lazy.finish(Err("refused".into()));
            })
            .await;
        // The attempt ended before the wait began: the waiter still sees its outcome.
        assert!(matches!(got, Err(L2Error::Connection(m)) if m == "refused"));
    }
}
