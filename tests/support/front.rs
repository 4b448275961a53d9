//! The HTTP front (`llm_cache::serve`) served in-process on a free loopback port, with a
//! shutdown the test triggers, and the caller keys the serve tests use.

use std::net::SocketAddr;

use axum::Router;
use llm_cache::LlmCache;
use llm_cache::serve::CallerKeys;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::upstream::MockUpstream;

/// The provider key the front holds in the tests.
pub const PROVIDER_KEY: &str = "sk-provider-HELD-0123456789";

/// Caller keys: two for team-a, one for team-b, and team-a's admin allowed every directive.
pub const CALLER_KEYS: &str = "\
# namespace  key                      permissions
team-a       sk-caller-a1-0123456789
team-a       sk-caller-a2-0123456789
team-b       sk-caller-b1-0123456789
team-a       sk-caller-admin-01234567 allow=all
";

/// A router served on `127.0.0.1:<free port>` until [`Served::shutdown`] or drop.
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

/// A cache (Redis when `redis` is given) and a front on `mock` holding [`PROVIDER_KEY`],
/// accepting [`CALLER_KEYS`].
pub async fn keyed(mock: &MockUpstream, redis: Option<&str>) -> (LlmCache, Served) {
    let mut builder = LlmCache::builder();
    if let Some(url) = redis {
        builder = builder.redis(url);
    }
    let cache = builder
        .upstream(llm_cache::OpenAiCompatible::new(mock.base_url()))
        .build()
        .await
        .unwrap();
    let app = llm_cache::serve::builder(cache.clone())
        .upstream_url(mock.base_url())
        .upstream_key(PROVIDER_KEY)
        .callers(CallerKeys::parse(CALLER_KEYS).unwrap())
        .build()
        .unwrap();
    (cache, Served::start(app).await)
}
