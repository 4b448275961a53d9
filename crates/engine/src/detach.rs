//! [`Detached`]: a future polled in its caller's task that, dropped before it is done, goes
//! on in a task of its own. A miss's fetch runs this way: no task hop and no cross-thread
//! wake-up on the common path (a caller that waits for its own fetch), and still a fetch
//! that is paid for fills the tiers and answers its waiters when its caller goes away.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// See the module docs.
pub(crate) struct Detached<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    /// `None` once it has been polled to its end.
    future: Option<Pin<Box<F>>>,
}

impl<F> Detached<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    pub(crate) fn new(future: F) -> Self {
        Detached {
            future: Some(Box::pin(future)),
        }
    }
}

impl<F> Future for Detached<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // `Detached` is `Unpin`: its future is boxed.
        let this = self.get_mut();
        let future = this
            .future
            .as_mut()
            .expect("a Detached future polled after it completed");
        let out = future.as_mut().poll(cx);
        if out.is_ready() {
            this.future = None;
        }
        out
    }
}

impl<F> Drop for Detached<F>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn drop(&mut self) {
        // Unfinished: the rest runs in a task of its own (the box keeps the future where
        // it was pinned). Outside a runtime (one shutting down) it is dropped, as a
        // spawned task would be.
        if let Some(future) = self.future.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(future);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn a_finished_future_answers_its_caller_and_a_dropped_one_goes_on() {
        assert_eq!(Detached::new(async { 7 }).await, 7);

        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done) = tokio::sync::oneshot::channel::<()>();
        let finished = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&finished);
        let work = Detached::new(async move {
            wait.await.expect("go");
            flag.store(true, Ordering::SeqCst);
            done_tx.send(()).expect("done");
        });
        // Its caller gives up while it waits...
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(1), work)
                .await
                .is_err()
        );
        // ...and it still runs to its end, in a task of its own.
        go.send(()).expect("the detached future is alive");
        done.await.expect("it finished");
        assert!(finished.load(Ordering::SeqCst));
    }
}
