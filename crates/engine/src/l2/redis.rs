//! The Redis store: one multiplexed connection (TCP_NODELAY; TLS for `rediss://`), made
//! lazily in the background and remade after it breaks. No operation ever waits for a
//! connection (neither on the redis crate's own reconnect nor on ours): without one it starts
//! the background attempt and fails at once as not connected.

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::aio::MultiplexedConnection;
use redis::io::tcp::TcpSettings;
use redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, RedisError};

use super::lazy::Lazy;
use super::sentinel::{Resolver, watch_switches};
use super::tls::{self, TlsSettings};
use super::{L2Error, Link, RemoteStore, Subscription, commands, inspect};
use crate::error::{Error, Result, redact_url};

/// How long a background connection attempt may take. Operations never wait for it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct RedisStore {
    shared: Arc<Shared>,
    /// Sentinel only: the task following `+switch-master`, stopped with the store.
    watcher: Option<tokio::task::JoinHandle<()>>,
}

/// Where connections go: one fixed server, or whatever the sentinels name as master.
enum Target {
    /// Boxed: a TLS client's connection info is large, and `Sentinel` is one pointer.
    Fixed(Box<Client>),
    Sentinel(Arc<Resolver>),
}

struct Shared {
    target: Target,
    config: AsyncConnectionConfig,
    described: String,
    conn: Lazy<MultiplexedConnection>,
}

impl RedisStore {
    /// Validate `url` and prepare the client (with the builder's TLS certificates for a
    /// `rediss://` URL); no connection is made here.
    pub fn open(url: &str, certs: &TlsSettings) -> Result<Self> {
        let described = redact_url(url);
        let info = url.into_connection_info().map_err(|e| {
            Error::config(
                "redis_url",
                format!(
                    "`{described}` is not a valid Redis URL: {}",
                    redact_err(&e, url)
                ),
            )
        })?;
        let info = tls::with_certs(info, certs).map_err(|e| {
            Error::config(
                "redis_url",
                format!("`{described}`: {}", redact_err(&e, url)),
            )
        })?;
        let info = info.set_tcp_settings(TcpSettings::default().set_nodelay(true));
        tls::prepare(std::slice::from_ref(&info), &described);
        let client = Client::open(info).map_err(|e| {
            Error::config(
                "redis_url",
                format!("`{described}` is not usable: {}", redact_err(&e, url)),
            )
        })?;
        Ok(RedisStore::with_target(
            Target::Fixed(Box::new(client)),
            described,
        ))
    }

    /// A store for the master the sentinels name; it follows failovers.
    pub fn open_sentinel(resolver: Arc<Resolver>, sentinels: &[String]) -> Self {
        let shown: Vec<String> = sentinels.iter().map(|s| redact_url(s)).collect();
        let described = format!(
            "sentinel master `{}` via {}",
            resolver.master_name(),
            shown.join(",")
        );
        let mut store = RedisStore::with_target(Target::Sentinel(Arc::clone(&resolver)), described);
        let shared = Arc::downgrade(&store.shared);
        store.watcher = Some(tokio::spawn(watch_switches(resolver, move || {
            if let Some(shared) = shared.upgrade() {
                shared.conn.reset();
                Shared::spawn_connect(&shared);
            }
        })));
        store
    }

    fn with_target(target: Target, described: String) -> Self {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            // The guard's deadline bounds every operation; the crate's own must not fire first
            // nor hold a command for seconds.
            .set_response_timeout(None);
        RedisStore {
            watcher: None,
            shared: Arc::new(Shared {
                target,
                config,
                described,
                conn: Lazy::new(),
            }),
        }
    }

    /// Start connecting now (used by `build()` so the first request finds a connection).
    pub fn connect_in_background(&self) {
        Shared::spawn_connect(&self.shared);
    }

    /// Wait up to `wait` for a connection; true when there is one.
    pub async fn wait_connected(&self, wait: Duration) -> bool {
        let shared = &self.shared;
        tokio::time::timeout(wait, shared.conn.wait(|| Shared::spawn_connect(shared)))
            .await
            .unwrap_or(false)
    }

    /// Why the last connection attempt failed, if it did (for the start-up WARN).
    pub fn last_connect_error(&self) -> Option<String> {
        self.shared.conn.last_error()
    }

    async fn run<T, F, Fut>(&self, op: F) -> Result<T, L2Error>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let shared = &self.shared;
        let (generation, conn) = shared.conn.link(|| Shared::attempt(shared))?;
        match op(conn).await {
            Ok(v) => Ok(v),
            Err(e) => {
                // READONLY: the node was demoted in a failover; connect again (through the
                // sentinels, which name the new master).
                let broken = e.is_connection_dropped()
                    || e.is_io_error()
                    || e.is_unrecoverable_error()
                    || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly);
                if broken {
                    // Reported by the first operation that finds it broken; the others ran
                    // on a connection already gone. Its replacement starts now.
                    if !shared.conn.reset_if(generation) {
                        return Err(L2Error::NotConnected);
                    }
                    Shared::spawn_connect(shared);
                    Err(L2Error::Connection(redact_err(&e, "")))
                } else if super::refused_by_server(&e) {
                    Err(L2Error::Command(super::reply_text(&e)))
                } else {
                    Err(L2Error::NotServing(super::reply_text(&e)))
                }
            }
        }
    }
}

fn redact_err(e: &RedisError, url: &str) -> String {
    let text = e.to_string();
    if url.is_empty() {
        text
    } else {
        text.replace(url, &redact_url(url))
    }
}

impl Shared {
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
            let result = match &shared.target {
                Target::Fixed(client) => client
                    .get_multiplexed_async_connection_with_config(&shared.config)
                    .await
                    .map_err(|e| redact_err(&e, "")),
                Target::Sentinel(resolver) => resolver.connect(&shared.config).await,
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

impl RemoteStore for RedisStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, L2Error>> {
        Box::pin(self.run(move |mut c| async move { commands::get(&mut c, key).await }))
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), L2Error>> {
        Box::pin(self.run(move |mut c| async move { commands::set(&mut c, key, value, ttl).await }))
    }

    fn unlink<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), L2Error>> {
        Box::pin(self.run(move |mut c| async move { commands::unlink(&mut c, key).await }))
    }

    fn reset(&self) {
        self.shared.conn.reset();
        Shared::spawn_connect(&self.shared);
    }

    fn link(&self) -> Link {
        let shared = &self.shared;
        match shared.conn.link(|| Shared::attempt(shared)) {
            Ok(_) => Link::Up,
            Err(link) => link,
        }
    }

    fn describe(&self) -> &str {
        &self.shared.described
    }

    // What health() and redis_stats() read: PING, INFO, a bounded SCAN.
    fn ping(&self) -> BoxFuture<'_, Result<(), L2Error>> {
        Box::pin(self.run(|mut c| async move { inspect::ping(&mut c).await }))
    }

    fn info(&self) -> BoxFuture<'_, Result<String, L2Error>> {
        Box::pin(self.run(|mut c| async move { inspect::info(&mut c).await }))
    }

    fn count_keys<'a>(
        &'a self,
        pattern: &'a str,
        limit: u64,
        marker_len: Option<usize>,
    ) -> BoxFuture<'a, Result<inspect::KeyCount, L2Error>> {
        Box::pin(self.run(move |mut c| async move {
            inspect::count_keys(&mut c, pattern, limit, marker_len).await
        }))
    }

    // Leases, invalidation and namespace generations: what lets instances act as one.
    fn get_or_lease<'a>(
        &'a self,
        key: &'a str,
        marker: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, L2Error>> {
        Box::pin(self.run(move |mut c| async move {
            commands::get_or_lease(&mut c, key, marker, ttl).await
        }))
    }

    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, L2Error>> {
        Box::pin(self.run(move |mut c| async move { commands::exists(&mut c, key).await }))
    }

    fn release<'a>(
        &'a self,
        key: &'a str,
        token: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, L2Error>> {
        Box::pin(self.run(move |mut c| async move { commands::release(&mut c, key, token).await }))
    }

    fn renew<'a>(
        &'a self,
        key: &'a str,
        token: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, L2Error>> {
        Box::pin(
            self.run(move |mut c| async move { commands::renew(&mut c, key, token, ttl).await }),
        )
    }

    fn expire_stale_marker<'a>(
        &'a self,
        key: &'a str,
        ttl: Duration,
        is_marker: fn(&[u8]) -> bool,
    ) -> BoxFuture<'a, Result<bool, L2Error>> {
        Box::pin(self.run(move |mut c| async move {
            commands::expire_stale_marker(&mut c, key, ttl, is_marker).await
        }))
    }

    fn publish<'a>(
        &'a self,
        channel: &'a str,
        message: &'a [u8],
    ) -> BoxFuture<'a, Result<(), L2Error>> {
        Box::pin(
            self.run(move |mut c| async move { commands::publish(&mut c, channel, message).await }),
        )
    }

    fn hset_publish<'a>(
        &'a self,
        key: &'a str,
        field: &'a [u8],
        value: u64,
        channel: &'a str,
        message: &'a [u8],
        fresh: u64,
    ) -> BoxFuture<'a, Result<u64, L2Error>> {
        Box::pin(self.run(move |mut c| async move {
            commands::hset_publish(&mut c, key, field, value, channel, message, fresh).await
        }))
    }

    fn load_generations<'a>(
        &'a self,
        key: &'a str,
        fresh: u64,
        all: bool,
    ) -> BoxFuture<'a, Result<super::Counts, L2Error>> {
        Box::pin(self.run(move |mut c| async move {
            commands::load_generations(&mut c, key, fresh, all).await
        }))
    }

    fn hset_capped<'a>(
        &'a self,
        keys: &'a [String],
        field: &'a [u8],
        value: &'a [u8],
        cap: usize,
        now_ms: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), L2Error>> {
        Box::pin(self.run(move |mut c| async move {
            commands::hset_capped(&mut c, keys, field, value, cap, now_ms, ttl).await
        }))
    }

    fn hgetall_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<super::Hashes, L2Error>> {
        Box::pin(self.run(move |mut c| async move { commands::hgetall_many(&mut c, keys).await }))
    }

    fn mget<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Option<Vec<u8>>>, L2Error>> {
        Box::pin(self.run(move |mut c| async move { commands::mget(&mut c, keys).await }))
    }

    fn hdel<'a>(
        &'a self,
        key: &'a str,
        fields: &'a [Vec<u8>],
    ) -> BoxFuture<'a, Result<(), L2Error>> {
        Box::pin(self.run(move |mut c| async move { commands::hdel(&mut c, key, fields).await }))
    }

    fn subscribe<'a>(
        &'a self,
        channel: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Subscription, L2Error>> {
        Box::pin(async move {
            let client = match &self.shared.target {
                Target::Fixed(client) => (**client).clone(),
                Target::Sentinel(resolver) => {
                    tokio::time::timeout(timeout, resolver.master_client())
                        .await
                        .map_err(|_| L2Error::Connection("no sentinel answered in time".into()))?
                        .map_err(L2Error::Connection)?
                        .0
                }
            };
            Subscription::open(&client, channel, timeout).await
        })
    }
}

impl Drop for RedisStore {
    fn drop(&mut self) {
        if let Some(watcher) = &self.watcher {
            watcher.abort();
        }
    }
}
