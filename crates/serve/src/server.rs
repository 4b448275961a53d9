//! Serving a router with connection limits (issue 25, defect 1): hyper-util's server with a
//! timer, so a head or body that arrives too slowly and an idle keep-alive connection are
//! dropped, and a connection limit that sheds the excess with a (rate-limited) log line
//! instead of running the process out of file descriptors. Never logs a request.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How long a client may take, and how many connections may be open at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeLimits {
    /// The longest wait for a complete request head, and (HTTP/1) for the next request on an
    /// idle keep-alive connection; then the connection is closed.
    pub header_read_timeout: Duration,
    /// The longest wait for the next piece of a request body; then reading the body fails.
    pub body_read_timeout: Duration,
    /// The HTTP/2 keep-alive ping interval: a connection whose peer does not answer a ping
    /// within `header_read_timeout` is closed (HTTP/1 uses the header timeout between
    /// requests). Not yet a close of an HTTP/2 connection that answers pings but sends nothing.
    pub idle_timeout: Duration,
    /// Connections open at once; one more is closed at once, with a warning in the log.
    pub max_connections: usize,
}

impl ServeLimits {
    /// An error naming the first limit that is zero (a zero timeout would close every
    /// connection at once).
    fn check(&self) -> io::Result<()> {
        let zero = [
            ("header_read_timeout", self.header_read_timeout.is_zero()),
            ("body_read_timeout", self.body_read_timeout.is_zero()),
            ("idle_timeout", self.idle_timeout.is_zero()),
            ("max_connections", self.max_connections == 0),
        ];
        match zero.iter().find(|(_, zero)| *zero) {
            Some((name, _)) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the serve limit {name} must be more than 0"),
            )),
            None => Ok(()),
        }
    }
}

impl Default for ServeLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
        }
    }
}

/// Serves `router` on `listener` under `limits` until `shutdown` completes, then waits for
/// the connections still open to finish their requests (in-flight streams are drained).
///
/// # Errors
///
/// Only when a limit is 0; a failed `accept` is logged and retried.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    limits.check()?;
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.idle_timeout))
        .keep_alive_timeout(limits.header_read_timeout);
    let builder = Arc::new(builder);
    let shed = Arc::new(ShedLog::default());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, _peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // EMFILE and the like: wait a little rather than spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            shed.note(limits.max_connections);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let body_timeout = limits.body_read_timeout;
        let app = router.clone();
        let service =
            hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                let request = request.map(|body| Body::new(SlowBody::new(body, body_timeout)));
                let mut app = app.clone();
                async move { tower_service::Service::call(&mut app, request).await }
            });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _ = connection.await;
            drop(slot);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// One warning per second at most when connections are shed, with the count since the last.
#[derive(Default)]
struct ShedLog {
    shed: AtomicU64,
    last: std::sync::Mutex<Option<Instant>>,
}

impl ShedLog {
    fn note(&self, limit: usize) {
        self.shed.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|at| at.elapsed() < Duration::from_secs(1)) {
            return;
        }
        *last = Some(Instant::now());
        let shed = self.shed.swap(0, Ordering::Relaxed);
        tracing::warn!(
            limit,
            shed,
            "connection limit reached: closing new connections (see --max-connections)"
        );
    }
}

/// A request body whose next frame must arrive within `timeout`.
struct SlowBody {
    inner: hyper::body::Incoming,
    timeout: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl SlowBody {
    fn new(inner: hyper::body::Incoming, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

impl HttpBody for SlowBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = tokio::time::Instant::now() + this.timeout;
                this.deadline.as_mut().reset(next);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimedOut(this.timeout).into()))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The error of a body whose next piece did not come in time (the front answers 408).
#[derive(Debug)]
pub(crate) struct BodyTimedOut(Duration);

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the request body came too slowly: nothing for {} s (the body read timeout)",
            self.0.as_secs_f64()
        )
    }
}

impl std::error::Error for BodyTimedOut {}

/// The timeout in `error`'s cause chain, if reading the body timed out.
pub(crate) fn body_timed_out<'a>(
    error: &'a (dyn std::error::Error + 'static),
) -> Option<&'a BodyTimedOut> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(timeout) = e.downcast_ref::<BodyTimedOut>() {
            return Some(timeout);
        }
        cause = e.source();
    }
    None
}
