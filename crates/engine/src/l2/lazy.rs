//! The one connection a store uses, made in the background and replaced when it breaks.
//! Operations never wait for a connection: they take the one there is, or start an attempt
//! (unless one is under way) and fail at once as not connected. Each failed attempt is
//! reported once, to the caller that starts the next one, so the breaker counts attempts,
//! not the operations that found no connection. A connection that failed is dropped by
//! generation, so a late failure never drops a newer connection.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use tokio::sync::Notify;

use super::Link;

pub(crate) struct Lazy<C> {
    /// The connection in use and its generation.
    current: RwLock<Option<(u64, C)>>,
    generation: AtomicU64,
    connecting: AtomicBool,
    connect_done: Notify,
    /// Why the last attempt failed, until someone reports it (by starting the next one).
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
        crate::sync::read(&self.current).clone()
    }

    /// The connection in use; without one, `Err` at once: [`Link::Connecting`] when an
    /// attempt is under way or `start` (which must make one and end it with
    /// [`finish`](Self::finish)) was just called, [`Link::Failed`] when the attempt before
    /// it failed (reported to this caller only).
    pub fn link(&self, start: impl FnOnce()) -> Result<(u64, C), Link> {
        if let Some(c) = self.current() {
            return Ok(c);
        }
        if !self.begin() {
            return Err(Link::Connecting);
        }
        // An attempt may have ended between the first look and `begin`.
        if let Some(c) = self.current() {
            self.connecting.store(false, Ordering::Release);
            return Ok(c);
        }
        let failed = crate::sync::lock(&self.last_error).take();
        start();
        Err(failed.map_or(Link::Connecting, Link::Failed))
    }

    /// Why the last attempt failed, if it did, without taking it from the next caller of
    /// [`link`](Self::link) (for the start-up WARN).
    pub fn last_error(&self) -> Option<String> {
        crate::sync::lock(&self.last_error).clone()
    }

    /// Wait for a connection: call `start` (which should begin an attempt through
    /// [`begin`](Self::begin)) and wait for the attempt under way to end. For start-up only:
    /// operations use [`link`](Self::link), which never waits.
    pub async fn wait(&self, start: impl FnOnce()) -> bool {
        if self.current().is_some() {
            return true;
        }
        // Registered before the second look, so an attempt ending in between still wakes us.
        let done = self.connect_done.notified();
        tokio::pin!(done);
        done.as_mut().enable();
        if self.current().is_some() {
            return true;
        }
        start();
        done.await;
        self.current().is_some()
    }

    /// True when the caller should make an attempt now (none is under way); it must then
    /// end it with [`finish`](Self::finish).
    pub fn begin(&self) -> bool {
        !self.connecting.swap(true, Ordering::AcqRel)
    }

    /// End the attempt [`begin`](Self::begin) allowed: keep the connection it made, or its
    /// error for the next caller of [`link`](Self::link); wake those waiting.
    pub fn finish(&self, attempt: Result<C, String>) {
        let failed = match attempt {
            Ok(conn) => {
                let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
                *crate::sync::write(&self.current) = Some((generation, conn));
                None
            }
            Err(msg) => Some(msg),
        };
        *crate::sync::lock(&self.last_error) = failed;
        self.connecting.store(false, Ordering::Release);
        self.connect_done.notify_waiters();
    }

    /// Drop the connection of `generation`, if it is still the one in use; true when this
    /// call dropped it (so one broken connection is reported once, however many operations
    /// were running on it).
    pub fn reset_if(&self, generation: u64) -> bool {
        let mut cur = crate::sync::write(&self.current);
        if cur.as_ref().is_some_and(|(g, _)| *g == generation) {
            *cur = None;
            return true;
        }
        false
    }

    /// Drop the connection in use, whatever it is.
    pub fn reset(&self) {
        *crate::sync::write(&self.current) = None;
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
        let (first, _) = lazy.link(|| panic!("connected already")).unwrap();
        assert!(lazy.begin());
        lazy.finish(Ok("second"));
        assert!(!lazy.reset_if(first));
        assert_eq!(lazy.current().map(|(_, c)| c), Some("second"));
        let (second, _) = lazy.current().unwrap();
        assert!(lazy.reset_if(second), "dropped by this call");
        assert!(!lazy.reset_if(second), "and only once");
        assert!(lazy.current().is_none());
    }

    #[tokio::test]
    async fn operations_never_wait_and_each_failed_attempt_is_reported_once() {
        let lazy = Lazy::<&str>::new();
        let started = std::cell::Cell::new(0);
        let start = || started.set(started.get() + 1);
        // No connection: the first caller starts an attempt, the others find it under way.
        assert_eq!(lazy.link(start).unwrap_err(), Link::Connecting);
        assert_eq!(lazy.link(start).unwrap_err(), Link::Connecting);
        assert_eq!(started.get(), 1);
        lazy.finish(Err("refused".into()));
        // The attempt failed: the next caller hears it and starts another one.
        assert_eq!(
            lazy.link(start).unwrap_err(),
            Link::Failed("refused".into())
        );
        assert_eq!(lazy.link(start).unwrap_err(), Link::Connecting);
        assert_eq!(started.get(), 2);
        lazy.finish(Ok("up"));
        assert_eq!(lazy.link(start).map(|(_, c)| c), Ok("up"));
        assert_eq!(started.get(), 2);
    }

    #[tokio::test]
    async fn a_start_up_wait_sees_the_attempt_end() {
        let lazy = Lazy::<&str>::new();
        let ok = lazy
            .wait(|| {
                assert!(lazy.begin());
                lazy.finish(Err("refused".into()));
            })
            .await;
        // The attempt ended before the wait began: the waiter still sees its outcome.
        assert!(!ok);
        assert_eq!(
            lazy.link(|| {}).unwrap_err(),
            Link::Failed("refused".into())
        );
    }
}
