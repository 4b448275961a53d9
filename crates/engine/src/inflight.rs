//! Single-flight: at most one flight per digest at a time, shared by every caller that
//! misses meanwhile. The map entry is owned by the flight's leader handle; its drop removes
//! the entry only when the generation still matches, so a cancelled, panicked or replaced
//! leader can never leave a stuck entry, remove a newer flight, or strand a waiter. A leader
//! dropped before it has an outcome abandons the flight: its waiters are told to try again
//! (one of them then leads), never handed an error that nobody's work produced.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use tokio::sync::Notify;

use crate::digest::{Digest, DigestHasherBuilder};
use crate::error::Result;

/// What a flight delivers to every caller attached to it: one value or one error, or word
/// that its leader went away before it had either.
enum State<T> {
    Pending,
    Done(Result<T>),
    Abandoned,
}

/// One flight's outcome, shared by its leader and its waiters: set once, then announced.
/// (Lighter than a `watch` channel, whose eight-way notifier every L2 hit would pay for.)
struct Flight<T> {
    state: Mutex<State<T>>,
    settled: Notify,
}

impl<T> Flight<T> {
    fn new() -> Arc<Self> {
        Arc::new(Flight {
            state: Mutex::new(State::Pending),
            settled: Notify::new(),
        })
    }

    fn settle(&self, state: State<T>) {
        *crate::sync::lock(&self.state) = state;
        self.settled.notify_waiters();
    }
}

struct Slot<T> {
    generation: u64,
    flight: Arc<Flight<T>>,
}

pub(crate) struct Inflight<T> {
    flights: DashMap<Digest, Slot<T>, DigestHasherBuilder>,
    next_generation: AtomicU64,
}

/// Either lead the flight for a digest or wait on the one already running.
pub(crate) enum Join<T: Clone> {
    Leader(Leader<T>),
    Waiter(Waiter<T>),
}

/// The right and the duty to complete one flight.
pub(crate) struct Leader<T: Clone> {
    inflight: Arc<Inflight<T>>,
    digest: Digest,
    generation: u64,
    flight: Arc<Flight<T>>,
    outcome: Option<Result<T>>,
}

/// A caller attached to a flight.
pub(crate) struct Waiter<T> {
    flight: Arc<Flight<T>>,
}

impl<T: Clone + Send + Sync + 'static> Inflight<T> {
    pub fn new() -> Arc<Self> {
        Arc::new(Inflight {
            flights: DashMap::with_hasher(DigestHasherBuilder),
            next_generation: AtomicU64::new(1),
        })
    }

    /// Join the running flight for `digest`, or start one. With `replace`, always start a new
    /// flight and let later callers join it instead of the old one (refresh requests must
    /// not share an answer that was looked up before they asked).
    pub fn join_or_lead(self: &Arc<Self>, digest: Digest, replace: bool) -> Join<T> {
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let flight = match self.flights.entry(digest) {
            Entry::Occupied(mut e) => {
                if !replace {
                    return Join::Waiter(Waiter {
                        flight: Arc::clone(&e.get().flight),
                    });
                }
                let flight = Flight::new();
                e.insert(Slot {
                    generation,
                    flight: Arc::clone(&flight),
                });
                flight
            }
            Entry::Vacant(e) => {
                let flight = Flight::new();
                e.insert(Slot {
                    generation,
                    flight: Arc::clone(&flight),
                });
                flight
            }
        };
        Join::Leader(Leader {
            inflight: Arc::clone(self),
            digest,
            generation,
            flight,
            outcome: None,
        })
    }
}

impl<T> Inflight<T> {
    /// Flights in progress now.
    pub fn len(&self) -> usize {
        self.flights.len()
    }

    /// Detach the flight for `digest`, if any: its callers still get its outcome, later
    /// callers start a new flight. After an invalidation, an answer looked up before it
    /// (possibly already published, its entry not yet removed) must not be handed out.
    pub fn detach(&self, digest: &Digest) {
        self.flights.remove(digest);
    }
}

impl<T: Clone + Send + Sync + 'static> Leader<T> {
    /// A waiter on this leader's own flight.
    pub fn waiter(&self) -> Waiter<T> {
        Waiter {
            flight: Arc::clone(&self.flight),
        }
    }

    /// Retire the flight, then publish the outcome to every waiter attached to it.
    pub fn complete(mut self, outcome: Result<T>) {
        self.outcome = Some(outcome);
        // Drop does the rest.
    }
}

impl<T: Clone> Drop for Leader<T> {
    fn drop(&mut self) {
        // Remove before publishing: a caller that arrives after the outcome is known must
        // never join this flight (it would receive an error it did not cause, or an answer
        // looked up before it asked). Waiters already attached hold receivers, which see
        // the outcome sent below; a later caller finds the filled tier or starts anew.
        self.inflight
            .flights
            .remove_if(&self.digest, |_, slot| slot.generation == self.generation);
        let state = match self.outcome.take() {
            Some(outcome) => State::Done(outcome),
            // Cancelled before it had an outcome (the caller leading in its own task went
            // away, or the runtime shut down): the waiters take over.
            None => State::Abandoned,
        };
        self.flight.settle(state);
    }
}

impl<T: Clone> Waiter<T> {
    /// Wait for the flight's outcome; `None` when the flight was abandoned before it had
    /// one, and the caller should join or lead a flight anew.
    pub async fn wait(self) -> Option<Result<T>> {
        loop {
            // Registered before the state is read, so a settle in between still wakes us.
            let notified = self.flight.settled.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match &*crate::sync::lock(&self.flight.state) {
                State::Pending => {}
                State::Done(outcome) => return Some(outcome.clone()),
                State::Abandoned => return None,
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> Digest {
        Digest::from_bytes([n; 32])
    }

    #[tokio::test]
    async fn second_caller_waits_and_sees_the_value() {
        let inf = Inflight::<u32>::new();
        let Join::Leader(leader) = inf.join_or_lead(d(1), false) else {
            panic!("first caller must lead")
        };
        let Join::Waiter(w) = inf.join_or_lead(d(1), false) else {
            panic!("second caller must wait")
        };
        assert_eq!(inf.len(), 1);
        leader.complete(Ok(7));
        assert_eq!(inf.len(), 0);
        assert_eq!(w.wait().await.unwrap().unwrap(), 7);
    }

    #[tokio::test]
    async fn dropped_leader_hands_the_flight_to_its_waiters() {
        let inf = Inflight::<u32>::new();
        let Join::Leader(leader) = inf.join_or_lead(d(2), false) else {
            panic!()
        };
        let Join::Waiter(w) = inf.join_or_lead(d(2), false) else {
            panic!()
        };
        drop(leader);
        assert!(
            w.wait().await.is_none(),
            "an abandoned flight tells its waiters to try again"
        );
        assert_eq!(inf.len(), 0);
        assert!(matches!(inf.join_or_lead(d(2), false), Join::Leader(_)));
    }

    #[tokio::test]
    async fn an_error_outcome_reaches_every_waiter() {
        let inf = Inflight::<u32>::new();
        let Join::Leader(leader) = inf.join_or_lead(d(4), false) else {
            panic!()
        };
        let waiters: Vec<_> = (0..3)
            .map(|_| match inf.join_or_lead(d(4), false) {
                Join::Waiter(w) => w,
                Join::Leader(_) => panic!("the flight is running"),
            })
            .collect();
        leader.complete(Err(crate::error::Error::fetch_msg("no")));
        for w in waiters {
            assert_eq!(w.wait().await.unwrap().unwrap_err().message(), "no");
        }
    }

    #[tokio::test]
    async fn replaced_leader_does_not_remove_the_newer_flight() {
        let inf = Inflight::<u32>::new();
        let Join::Leader(old) = inf.join_or_lead(d(3), false) else {
            panic!()
        };
        let Join::Leader(new) = inf.join_or_lead(d(3), true) else {
            panic!("replace must lead")
        };
        old.complete(Ok(1));
        assert_eq!(
            inf.len(),
            1,
            "the newer flight must survive the old one's completion"
        );
        let Join::Waiter(w) = inf.join_or_lead(d(3), false) else {
            panic!()
        };
        new.complete(Ok(2));
        assert_eq!(w.wait().await.unwrap().unwrap(), 2);
        assert_eq!(inf.len(), 0);
    }
}
