//! Any axum router served in-process on a free loopback port, with a shutdown the test
//! triggers (the HTTP front of `llm_cache::serve` in the serve tests and the proxy bench).

use std::net::SocketAddr;

use axum::Router;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A router served on `127.0.0.1:<free port>` until [`Served::begin_shutdown`] or drop.
pub struct Served {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Served {
    pub async fn start(app: Router) -> Served {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Served {
            addr,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The SDKs' base URL: `http://127.0.0.1:<port>/v1`.
    pub fn v1(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Start a graceful shutdown: no new connections; in-flight requests finish.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Wait until the server has stopped (after [`begin_shutdown`](Self::begin_shutdown)).
    pub async fn stopped(mut self) {
        self.begin_shutdown();
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
