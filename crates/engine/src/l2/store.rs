//! The connection seam: one [`Connection`] over every topology (one server, the master the
//! sentinels name, a Cluster), and the [`Store`] that makes it in the background, remakes
//! it after it breaks and runs commands on it. Only what really differs per topology is
//! here (and in cluster.rs): how to connect, how a failure reads, and what goes to each
//! node (`INFO`, `SCAN`, a `PING` per master, where to subscribe). No command ever waits for
//! a connection (neither on the redis crate's own reconnect nor on ours): without one it
//! starts the background attempt and fails at once as not connected. TCP_NODELAY always;
//! TLS for `rediss://`.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use redis::{AsyncConnectionConfig, Client, Cmd, IntoConnectionInfo, Pipeline, RedisFuture};
use redis::{RedisResult, Value};
use tokio_util::task::AbortOnDropHandle;

use super::cluster::Cluster;
use super::inspect::{self, KeyCount};
use super::lazy::Lazy;
use super::sentinel::{Resolver, watch_switches};
use super::tls::{self, TlsSettings};
use super::{L2Error, Link, Subscription};
use crate::error::{Error, Result, redact_url};

/// How long a background connection attempt may take. Commands never wait for it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to the cache's Redis, whatever its topology: what every command runs on
/// (see [`Guarded::run`](super::Guarded::run)). A cheap handle: clones share the connection.
#[derive(Clone)]
pub enum Connection {
    /// One server, or the master the sentinels name.
    Server(MultiplexedConnection),
    /// A Redis Cluster: each command goes to the node of its key's slot.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Server(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Server(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Server(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// The configured Redis and the one connection in use.
pub(crate) struct Store {
    shared: Arc<Shared>,
    /// Sentinel only: the task following `+switch-master`, stopped with the store.
    _watcher: Option<AbortOnDropHandle<()>>,
}

struct Shared {
    target: Target,
    /// The address with any password redacted, for logs and errors.
    described: String,
    conn: Lazy<Connection>,
}

/// Where connections go.
enum Target {
    /// One fixed server (boxed: a TLS client's connection info is large).
    Server(Box<Client>),
    /// Whatever the sentinels name as master.
    Sentinel(Arc<Resolver>),
    Cluster(Arc<Cluster>),
}

impl Store {
    /// One server at `url`, with the builder's TLS certificates for `rediss://`; no
    /// connection is made here.
    pub fn server(url: &str, certs: &TlsSettings) -> Result<Self> {
        let described = redact_url(url);
        let bad = |what: &str, e: redis::RedisError| {
            let why = e.to_string().replace(url, &described);
            Error::config("redis_url", format!("`{described}`{what}: {why}"))
        };
        let info = url
            .into_connection_info()
            .map_err(|e| bad(" is not a valid Redis URL", e))?;
        let info = tls::with_certs(info, certs).map_err(|e| bad("", e))?;
        let info = info.set_tcp_settings(TcpSettings::default().set_nodelay(true));
        tls::prepare(std::slice::from_ref(&info), &described);
        let client = Client::open(info).map_err(|e| bad(" is not usable", e))?;
        Ok(Store::new(Target::Server(Box::new(client)), described))
    }

    /// The master the sentinels name; it follows failovers.
    pub fn sentinel(resolver: Arc<Resolver>, sentinels: &[String]) -> Self {
        let shown: Vec<String> = sentinels.iter().map(|s| redact_url(s)).collect();
        let described = format!(
            "sentinel master `{}` via {}",
            resolver.master_name(),
            shown.join(",")
        );
        let mut store = Store::new(Target::Sentinel(Arc::clone(&resolver)), described);
        let shared = Arc::downgrade(&store.shared);
        let watch = watch_switches(resolver, move || {
            if let Some(shared) = shared.upgrade() {
                shared.conn.reset();
                Shared::spawn_connect(&shared);
            }
        });
        store._watcher = Some(AbortOnDropHandle::new(tokio::spawn(watch)));
        store
    }

    /// A Cluster (see cluster.rs).
    pub fn cluster(cluster: Cluster, shown: &[String]) -> Self {
        let shown: Vec<String> = shown.iter().map(|s| redact_url(s)).collect();
        let described = format!("cluster {}", shown.join(","));
        Store::new(Target::Cluster(Arc::new(cluster)), described)
    }

    fn new(target: Target, described: String) -> Self {
        Store {
            shared: Arc::new(Shared {
                target,
                described,
                conn: Lazy::new(),
            }),
            _watcher: None,
        }
    }

    /// Start connecting in the background and wait up to `wait` for it (so the first
    /// requests find a connection); why not, when there is none by then.
    pub async fn connect(&self, wait: Duration) -> Result<(), Option<String>> {
        let shared = &self.shared;
        let up = shared.conn.wait(|| Shared::spawn_connect(shared));
        match tokio::time::timeout(wait, up).await {
            Ok(true) => Ok(()),
            _ => Err(shared.conn.last_error()),
        }
    }

    /// Run `op` on the connection: for a Cluster, on the node of `key` unless it is marked
    /// down. Errors classified (see [`L2Error`]); a broken connection is dropped and a new
    /// one started.
    pub async fn run<T, F, Fut>(&self, key: Option<&str>, op: F) -> Result<T, L2Error>
    where
        F: FnOnce(Connection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let shared = &self.shared;
        if let Target::Cluster(cluster) = &shared.target {
            let node = cluster.owner_up(key)?;
            let (_, conn) = shared.link()?;
            let outcome = tokio::time::timeout(cluster.op_timeout, op(conn.clone())).await;
            return cluster.outcome(node, &conn, outcome);
        }
        let (generation, conn) = shared.link()?;
        op(conn).await.map_err(|e| {
            // READONLY: the node was demoted in a failover; connect again (through the
            // sentinels, which name the new master).
            let broken = e.is_connection_dropped()
                || e.is_io_error()
                || e.is_unrecoverable_error()
                || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly);
            if broken {
                // Reported by the first command that finds it broken; the others ran on a
                // connection already gone. Its replacement starts now.
                if !shared.conn.reset_if(generation) {
                    return L2Error::NotConnected;
                }
                Shared::spawn_connect(shared);
                L2Error::Connection(e.to_string())
            } else if super::refused_by_server(&e) {
                L2Error::Command(super::reply_text(&e))
            } else {
                L2Error::NotServing(super::reply_text(&e))
            }
        })
    }

    /// `keys` (by index) in groups that one multi-key command may read: all of them for a
    /// single server, one group per node for a Cluster as far as the slot map knows (keys
    /// whose node is not known yet form a group of their own). Never talks to Redis.
    pub(crate) fn by_node(&self, keys: &[String]) -> Vec<Vec<usize>> {
        let Target::Cluster(cluster) = &self.shared.target else {
            return vec![(0..keys.len()).collect()];
        };
        let mut groups: Vec<(Option<String>, Vec<usize>)> = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let node = cluster.node_of_key(key);
            match groups.iter_mut().find(|(n, _)| *n == node) {
                Some((_, group)) => group.push(i),
                None => groups.push((node, vec![i])),
            }
        }
        groups.into_iter().map(|(_, group)| group).collect()
    }

    /// Drop the current connection and start making a new one in the background (used when
    /// the breaker opens: a half-open or stalled connection must not be reused forever).
    pub fn reset(&self) {
        self.shared.conn.reset();
        Shared::spawn_connect(&self.shared);
    }

    /// Whether a connection is up; without one, start making one in the background unless
    /// an attempt is under way. Never waits.
    pub fn link(&self) -> Link {
        let shared = &self.shared;
        let link = shared.conn.link(|| Shared::attempt(shared));
        link.map_or_else(|why| why, |_| Link::Up)
    }

    /// The address with any password redacted, for logs and errors.
    pub fn describe(&self) -> &str {
        &self.shared.described
    }

    /// The nodes that do not answer now (a Cluster's masters, each pinged on its own);
    /// empty for a single server, whose state the guarded `PING` gives.
    pub async fn nodes_down(&self) -> Vec<String> {
        match &self.shared.target {
            Target::Cluster(cluster) => cluster.masters_down().await,
            _ => Vec::new(),
        }
    }

    /// The server's `INFO` text; a Cluster's every reachable primary's, concatenated
    /// (`redis_stats()` sums their numbers).
    pub async fn info(&self) -> Result<String, L2Error> {
        match &self.shared.target {
            Target::Cluster(cluster) => {
                let (all, _) = cluster.on_each_master(inspect::info).await?;
                Ok(all.join("\n"))
            }
            _ => self.run(None, inspect::info).await,
        }
    }

    /// Keys matching `pattern` (see [`inspect::count_keys`]); a Cluster's summed over its
    /// primaries, incomplete when one of them did not answer.
    pub async fn count_keys(
        &self,
        pattern: &str,
        limit: u64,
        marker_len: Option<usize>,
    ) -> Result<KeyCount, L2Error> {
        let Target::Cluster(cluster) = &self.shared.target else {
            let count = move |c| inspect::count_keys(c, pattern, limit, marker_len);
            return self.run(None, count).await;
        };
        let count = move |c| inspect::count_keys(c, pattern, limit, marker_len);
        let (all, every) = cluster.on_each_master(count).await?;
        let complete = KeyCount {
            complete: every,
            ..KeyCount::default()
        };
        Ok(all.into_iter().fold(complete, KeyCount::add))
    }

    /// Subscribe to `channel` on a node of the store, bounded by `timeout`. Not guarded:
    /// the subscription lives until its connection goes away.
    pub async fn subscribe(
        &self,
        channel: &str,
        timeout: Duration,
    ) -> Result<Subscription, L2Error> {
        let client = match &self.shared.target {
            Target::Server(client) => (**client).clone(),
            Target::Sentinel(resolver) => {
                tokio::time::timeout(timeout, resolver.master_client())
                    .await
                    .map_err(|_| L2Error::Connection("no sentinel answered in time".into()))?
                    .map_err(L2Error::Connection)?
                    .0
            }
            Target::Cluster(cluster) => return cluster.subscribe(channel, timeout).await,
        };
        Subscription::open(&client, channel, timeout).await
    }
}

impl Shared {
    /// The connection in use, or at once why there is none.
    fn link(self: &Arc<Self>) -> Result<(u64, Connection), L2Error> {
        Ok(self.conn.link(|| Self::attempt(self))?)
    }

    /// Start an attempt, unless one is under way.
    fn spawn_connect(this: &Arc<Self>) {
        if this.conn.begin() {
            Self::attempt(this);
        }
    }

    /// Make the attempt [`Lazy::begin`] allowed, in the background.
    fn attempt(this: &Arc<Self>) {
        let shared = Arc::clone(this);
        tokio::spawn(async move {
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                // The guard's deadline bounds every command; the crate's own must not fire
                // first nor hold a command for seconds.
                .set_response_timeout(None);
            let result = match &shared.target {
                Target::Server(client) => client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await
                    .map(Connection::Server)
                    .map_err(|e| e.to_string()),
                Target::Sentinel(resolver) => {
                    resolver.connect(&config).await.map(Connection::Server)
                }
                Target::Cluster(cluster) => cluster.connect().await,
            };
            match &result {
                Ok(_) => tracing::debug!(redis = %shared.described, "connected to redis"),
                Err(msg) => {
                    tracing::debug!(redis = %shared.described, error = %msg, "redis connect failed");
                }
            }
            shared.conn.finish(result);
        });
    }
}
