//! A TCP proxy on loopback between the cache and Redis, with the network faults a real
//! deployment sees: every connection dropped at once, connections stalled half-open (the
//! socket stays up, nothing is forwarded), slow connects (as on a loaded host), and replies
//! sliced into writes of 1 to 7 bytes.
//! It only ever connects to the address it was given (a test's own redis-server), and it
//! stops, closing every connection, when dropped.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle, JoinSet};

/// A proxy listening on `127.0.0.1:<free port>` that forwards to one target.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    acceptor: JoinHandle<()>,
    /// The proxy's own thread and runtime, so that its hops cost what a network's do
    /// rather than queueing behind the load a test runs on its own runtime.
    runtime: Option<tokio::runtime::Runtime>,
}

struct Shared {
    target: SocketAddr,
    /// `true` while stalled: nothing is forwarded and new connections are held unconnected.
    stalled: watch::Sender<bool>,
    /// Replies (target to client) are written in pieces of 1 to 7 bytes.
    slice: AtomicBool,
    /// Milliseconds a new connection waits before it is connected to the target.
    connect_delay_ms: AtomicU64,
    /// Milliseconds each forwarded piece waits, either way (a round trip pays it twice).
    latency_ms: AtomicU64,
    /// One handle per live connection, so `drop_all` can close them all.
    connections: Mutex<Vec<AbortHandle>>,
    accepted: AtomicU64,
    dropped: AtomicU64,
    reply_bytes: AtomicU64,
    reply_writes: AtomicU64,
}

impl Proxy {
    /// Start a proxy to `target` on a free loopback port, on a thread of its own.
    pub fn start(target: SocketAddr) -> Proxy {
        assert!(
            target.ip().is_loopback(),
            "the proxy only forwards to loopback"
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("test-proxy")
            .enable_all()
            .build()
            .expect("the proxy's runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let addr = listener.local_addr().expect("proxy address");
        let shared = Arc::new(Shared {
            target,
            stalled: watch::channel(false).0,
            slice: AtomicBool::new(false),
            connect_delay_ms: AtomicU64::new(0),
            latency_ms: AtomicU64::new(0),
            connections: Mutex::new(Vec::new()),
            accepted: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            reply_bytes: AtomicU64::new(0),
            reply_writes: AtomicU64::new(0),
        });
        let acceptor = {
            let _inside = runtime.enter();
            let listener = TcpListener::from_std(listener).expect("a tokio listener");
            runtime.spawn(accept_loop(listener, Arc::clone(&shared)))
        };
        Proxy {
            addr,
            shared,
            acceptor,
            runtime: Some(runtime),
        }
    }

    /// `redis://127.0.0.1:<proxy port>`: give this to the cache instead of Redis' own URL.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// The proxy's listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Close every connection now (both sides see the socket closed); new ones are
    /// accepted as usual.
    pub fn drop_all(&self) -> usize {
        let live: Vec<AbortHandle> = std::mem::take(&mut *self.shared.connections.lock().unwrap());
        let n = live.iter().filter(|h| !h.is_finished()).count();
        for handle in live {
            handle.abort();
        }
        self.shared.dropped.fetch_add(n as u64, Ordering::Relaxed);
        n
    }

    /// Stall (`true`) or resume (`false`). A stalled proxy keeps every socket open but
    /// forwards nothing either way, and accepts new connections without connecting them
    /// to the target: a half-open peer, as after a network partition. Bytes read while
    /// stalled are forwarded on resume.
    pub fn stall(&self, on: bool) {
        self.shared.stalled.send_replace(on);
    }

    /// Make every new connection wait `delay` before it reaches the target (its handshake
    /// with Redis waits too), like a connect on a loaded host; live connections are untouched.
    pub fn connect_delay(&self, delay: std::time::Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.shared.connect_delay_ms.store(ms, Ordering::Relaxed);
    }

    /// Delay every forwarded piece by `one_way` in each direction, on live connections
    /// too: a link of `2 * one_way` round trip, like a Redis in another region.
    pub fn latency(&self, one_way: std::time::Duration) {
        let ms = u64::try_from(one_way.as_millis()).unwrap_or(u64::MAX);
        self.shared.latency_ms.store(ms, Ordering::Relaxed);
    }

    /// Write replies (target to client) in pieces of 1 to 7 bytes, each its own write.
    pub fn slice_replies(&self, on: bool) {
        self.shared.slice.store(on, Ordering::Relaxed);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Connections closed by [`Proxy::drop_all`] so far.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Reply bytes forwarded, and the writes they took.
    pub fn reply_traffic(&self) -> (u64, u64) {
        (
            self.shared.reply_bytes.load(Ordering::Relaxed),
            self.shared.reply_writes.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.drop_all();
        if let Some(runtime) = self.runtime.take() {
            // Also fine from inside a test's own runtime, unlike a plain drop.
            runtime.shutdown_background();
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let _ = client.set_nodelay(true);
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        let task = tokio::spawn(serve(client, Arc::clone(&shared)));
        let mut live = shared.connections.lock().unwrap();
        live.retain(|h| !h.is_finished());
        live.push(task.abort_handle());
    }
}

/// One proxied connection; returns (closing both sockets) when either side closes.
async fn serve(client: TcpStream, shared: Arc<Shared>) {
    let mut stalled = shared.stalled.subscribe();
    if stalled.wait_for(|s| !*s).await.is_err() {
        return;
    }
    let delay = shared.connect_delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    let Ok(target) = TcpStream::connect(shared.target).await else {
        return;
    };
    let _ = target.set_nodelay(true);
    let (client_rx, client_tx) = client.into_split();
    let (target_rx, target_tx) = target.into_split();
    let mut pumps = JoinSet::new();
    pumps.spawn(pump(client_rx, target_tx, Arc::clone(&shared), false));
    pumps.spawn(pump(target_rx, client_tx, shared, true));
    // Either direction ending ends the connection; the JoinSet aborts the other on drop,
    // and so does aborting this task.
    pumps.join_next().await;
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, shared: Arc<Shared>, reply: bool) {
    let mut stalled = shared.stalled.subscribe();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stalled.wait_for(|s| !*s).await.is_err() {
            return;
        }
        let latency = shared.latency_ms.load(Ordering::Relaxed);
        if latency > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(latency)).await;
        }
        let data = &buf[..n];
        let written = if reply && shared.slice.load(Ordering::Relaxed) {
            let mut writes = 0;
            let mut rest = data;
            while !rest.is_empty() {
                let take = rand::random_range(1..=7usize).min(rest.len());
                if to.write_all(&rest[..take]).await.is_err() {
                    return;
                }
                rest = &rest[take..];
                writes += 1;
                // Let the reader see each piece on its own.
                tokio::task::yield_now().await;
            }
            writes
        } else {
            if to.write_all(data).await.is_err() {
                return;
            }
            1
        };
        if reply {
            shared.reply_bytes.fetch_add(n as u64, Ordering::Relaxed);
            shared.reply_writes.fetch_add(written, Ordering::Relaxed);
        }
    }
}
