//! `ReplayLog<T, O, A>`: the log of one streamed flight, shared by every consumer of a key.
//! Items are appended as they arrive; each consumer reads the log from the start, so a late
//! joiner gets every item already seen, then the live ones; the flight ends once, well (with
//! an answer `A`) or with the error every consumer gets after the items it saw. `O` is where
//! the flight's items come from (a miss, an L2 hit...), set once by whoever starts it.
//!
//! The chat stream flight (`chat::stream_flight`, items are chunks, the answer the assembled
//! completion) and the async-openai layer's streamed bodies (items are byte parts) are both
//! this log. Its only lock is held to copy one item out.

use std::hash::{BuildHasher, Hash};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::watch;

use crate::error::{Error, ErrorKind, Result};

/// See the module docs.
pub struct ReplayLog<T, O, A> {
    log: Mutex<Inner<T, O, A>>,
    progress: watch::Sender<u64>,
    consumers: AtomicUsize,
}

struct Inner<T, O, A> {
    items: Vec<T>,
    /// `Some` once the flight ended: `Ok` after the last item, or the error every consumer
    /// gets after the items it saw.
    end: Option<Result<()>>,
    origin: Option<O>,
    /// The answer, once the flight ended well.
    answer: Option<A>,
}

fn dropped() -> Error {
    Error::new(ErrorKind::FetchAborted, "the stream flight was dropped")
}

impl<T: Clone, O: Clone, A: Clone> ReplayLog<T, O, A> {
    /// An empty log, not ended.
    pub fn new() -> Arc<Self> {
        Arc::new(ReplayLog {
            log: Mutex::new(Inner {
                items: Vec::new(),
                end: None,
                origin: None,
                answer: None,
            }),
            progress: watch::Sender::new(0),
            consumers: AtomicUsize::new(0),
        })
    }

    /// The flight of `key` in `flights` to join (`false`), or a new one there that this
    /// caller leads (`true`): on a refresh, or when the one there already failed (it is
    /// about to leave the map).
    pub fn join<K: Eq + Hash, S: BuildHasher + Clone>(
        flights: &DashMap<K, Arc<Self>, S>,
        key: K,
        refresh: bool,
    ) -> (Arc<Self>, bool) {
        match flights.entry(key) {
            Entry::Occupied(e) if !refresh && !e.get().failed() => (Arc::clone(e.get()), false),
            entry => {
                let flight = Self::new();
                entry.insert(Arc::clone(&flight));
                (flight, true)
            }
        }
    }

    fn log(&self) -> MutexGuard<'_, Inner<T, O, A>> {
        crate::tiered::sync::lock(&self.log)
    }

    fn bump(&self) {
        self.progress.send_modify(|v| *v += 1);
    }

    /// Record where the flight's items come from; the first caller wins.
    pub fn set_origin(&self, origin: O) {
        self.log().origin.get_or_insert(origin);
    }

    /// Append an item and wake every consumer. Ignored after the end.
    pub fn push(&self, item: T) {
        {
            let mut log = self.log();
            if log.end.is_some() {
                return;
            }
            log.items.push(item);
        }
        self.bump();
    }

    /// True when items were pushed.
    pub fn has_items(&self) -> bool {
        !self.log().items.is_empty()
    }

    /// End the flight; the first end wins.
    pub fn finish(&self, end: Result<A>) {
        {
            let mut log = self.log();
            if log.end.is_some() {
                return;
            }
            match end {
                Ok(answer) => {
                    log.answer = Some(answer);
                    log.end = Some(Ok(()));
                }
                Err(e) => log.end = Some(Err(e)),
            }
        }
        self.bump();
    }

    /// True once the flight ended with an error.
    pub fn failed(&self) -> bool {
        matches!(self.log().end, Some(Err(_)))
    }

    /// Consumers attached now: readers not yet dropped, and holds.
    pub fn consumers(&self) -> usize {
        self.consumers.load(Ordering::Acquire)
    }

    /// Count a caller that waits on this flight without reading its items, so that the
    /// flight is not given up under it.
    pub fn hold(self: &Arc<Self>) -> Hold<T, O, A> {
        self.consumers.fetch_add(1, Ordering::AcqRel);
        Hold(Arc::clone(self))
    }

    /// Wait until the flight has a first item or has ended; its origin (`unset` when none
    /// was recorded), or the error when it ended before any item.
    pub async fn first(&self, unset: O) -> Result<O> {
        let mut rx = self.progress.subscribe();
        loop {
            {
                let log = self.log();
                if !log.items.is_empty() || matches!(log.end, Some(Ok(()))) {
                    return Ok(log.origin.clone().unwrap_or(unset));
                }
                if let Some(Err(e)) = &log.end {
                    return Err(e.clone());
                }
            }
            if rx.changed().await.is_err() {
                return Err(dropped());
            }
        }
    }

    /// A reader of the whole log from the start, counted as a consumer until dropped.
    pub fn reader(self: &Arc<Self>) -> Reader<T, O, A> {
        self.consumers.fetch_add(1, Ordering::AcqRel);
        Reader {
            rx: self.progress.subscribe(),
            log: Arc::clone(self),
            next: 0,
            done: false,
        }
    }
}

/// Reads a [`ReplayLog`] from its first item; see [`ReplayLog::reader`].
pub struct Reader<T, O, A> {
    log: Arc<ReplayLog<T, O, A>>,
    rx: watch::Receiver<u64>,
    next: usize,
    done: bool,
}

/// What a [`Reader`] reads next.
pub enum Next<T, A> {
    /// An item.
    Item(T),
    /// The flight ended well, with this answer; nothing follows.
    End(Option<A>),
    /// The flight ended with this error; nothing follows.
    Failed(Error),
}

impl<T: Clone, O: Clone, A: Clone> Reader<T, O, A> {
    /// The next item, waiting for it; `None` after the end was read.
    pub async fn next(&mut self) -> Option<Next<T, A>> {
        loop {
            if self.done {
                return None;
            }
            self.rx.mark_unchanged();
            {
                let log = self.log.log();
                if let Some(item) = log.items.get(self.next) {
                    self.next += 1;
                    return Some(Next::Item(item.clone()));
                }
                match &log.end {
                    Some(Ok(())) => {
                        self.done = true;
                        return Some(Next::End(log.answer.clone()));
                    }
                    Some(Err(e)) => {
                        self.done = true;
                        return Some(Next::Failed(e.clone()));
                    }
                    None => {}
                }
            }
            if self.rx.changed().await.is_err() {
                self.done = true;
                return Some(Next::Failed(dropped()));
            }
        }
    }
}

impl<T, O, A> Drop for Reader<T, O, A> {
    fn drop(&mut self) {
        self.log.consumers.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A waiter counted as a consumer until dropped; see [`ReplayLog::hold`].
pub struct Hold<T, O, A>(Arc<ReplayLog<T, O, A>>);

impl<T, O, A> Drop for Hold<T, O, A> {
    fn drop(&mut self) {
        self.0.consumers.fetch_sub(1, Ordering::AcqRel);
    }
}
