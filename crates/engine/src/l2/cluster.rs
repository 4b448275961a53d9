//! The Redis Cluster store: the redis crate's cluster connection (slot routing, MOVED/ASK,
//! topology refresh), made lazily in the background, plus what it lacks for a cache: a
//! node that fails is marked down for a cool-down, and its keys fail at once as
//! [`L2Error::NodeDown`] (a miss), while the other nodes' keys keep hitting. The guard's
//! breaker, which would stop using the whole cluster, does not count those failures. An
//! error reply (OOM, a script error) says the node is up: it is never a reason to mark it
//! down. With `rediss://` seeds every node is reached over TLS, with the same certificates.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use redis::{Client, ConnectionInfo, Value};

use super::lazy::Lazy;
use super::tls::{self, TlsSettings};
use super::{L2Error, Link, RemoteStore, Subscription, commands, inspect};
use crate::error::{Error, Result, redact_url};

/// How long one attempt to reach the cluster may take (in the background).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Slot-map refreshes after failures are at most this frequent.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// How long `INFO` or a bounded `SCAN` may take on one primary (stats, not requests).
const INSPECT_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) struct ClusterStore {
    shared: Arc<Shared>,
}

struct Shared {
    client: ClusterClient,
    /// Seeds first, then the masters last seen in the slot map: where to subscribe.
    seeds: Vec<ConnectionInfo>,
    password: Option<String>,
    described: String,
    conn: Lazy<ClusterConnection>,
    /// Each operation's own deadline, a little shorter than the guard's, so a hung node
    /// is noticed here (and marked down) rather than counted against the whole cluster.
    op_timeout: Duration,
    /// How long a failed node's keys skip Redis.
    cooldown: Duration,
    slots: RwLock<SlotMap>,
    last_refresh_ms: AtomicU64,
    started: Instant,
    down: Mutex<HashMap<String, Instant>>,
}

/// Which master serves which slot range, as `host:port`.
#[derive(Default)]
struct SlotMap {
    ranges: Vec<(u16, u16, String)>,
}

impl SlotMap {
    fn node_of(&self, slot: u16) -> Option<&str> {
        let i = self.ranges.partition_point(|(_, end, _)| *end < slot);
        self.ranges
            .get(i)
            .filter(|(start, _, _)| *start <= slot)
            .map(|(_, _, node)| node.as_str())
    }

    fn masters(&self) -> Vec<String> {
        let mut m: Vec<String> = self.ranges.iter().map(|(_, _, n)| n.clone()).collect();
        m.sort();
        m.dedup();
        m
    }
}

/// The cluster slot of `key` (CRC16/XMODEM mod 16384), honouring `{hash tags}`.
pub(crate) fn slot(key: &[u8]) -> u16 {
    let key = match key.iter().position(|b| *b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|b| *b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    let mut crc: u16 = 0;
    for &b in key {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

impl ClusterStore {
    /// Prepare the client for `seeds` (already validated); no connection is made here.
    pub fn open(
        seeds: Vec<ConnectionInfo>,
        certs: &TlsSettings,
        shown: &[String],
        deadline: Duration,
        cooldown: Duration,
    ) -> Result<Self> {
        let password = seeds
            .first()
            .and_then(|s| s.redis_settings().password().map(str::to_owned));
        let mut builder = ClusterClient::builder(seeds.clone())
            .connection_timeout(CONNECT_TIMEOUT.min(deadline * 20))
            .retries(2)
            .min_retry_wait(1)
            .max_retry_wait(20)
            .tcp_settings(TcpSettings::default().set_nodelay(true));
        if let Some(p) = &password {
            builder = builder.password(p);
        }
        if let Some(first) = seeds.first() {
            builder = tls::cluster_tls(builder, first, certs);
        }
        let client = builder.build().map_err(|e| {
            Error::config(
                "cluster",
                format!("cannot use the seed nodes: {:?}", e.kind()),
            )
        })?;
        let shown: Vec<String> = shown.iter().map(|s| redact_url(s)).collect();
        Ok(ClusterStore {
            shared: Arc::new(Shared {
                client,
                seeds,
                password,
                described: format!("cluster {}", shown.join(",")),
                conn: Lazy::new(),
                op_timeout: deadline.mul_f64(0.9),
                cooldown,
                slots: RwLock::new(SlotMap::default()),
                last_refresh_ms: AtomicU64::new(0),
                started: Instant::now(),
                down: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn connect_in_background(&self) {
        Shared::spawn_connect(&self.shared);
    }

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

    /// Run `op` for `key` on the node that owns it, unless that node is marked down.
    async fn run<T, F, Fut>(&self, key: Option<&str>, op: F) -> Result<T, L2Error>
    where
        F: FnOnce(ClusterConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let shared = &self.shared;
        let node = key.and_then(|k| shared.node_of(k));
        if let Some(node) = &node
            && shared.is_down(node)
        {
            return Err(L2Error::NodeDown(node.clone()));
        }
        let conn = shared.connection()?;
        match tokio::time::timeout(shared.op_timeout, op(conn)).await {
            Ok(Ok(v)) => Ok(v),
            // A redirection the client could not follow (the slot moved, or its new owner
            // is down) refuses nothing: this key misses until the slot map is refreshed,
            // and nothing else changes (no node marked down, no lease refusal).
            Ok(Err(e)) if is_redirection(&e) => {
                shared.refresh_slots_soon();
                Err(L2Error::NodeDown(format!(
                    "redirected: {}",
                    super::reply_text(&e)
                )))
            }
            // An error reply says the node is up: not a reason to mark it down.
            Ok(Err(e)) if super::refused_by_server(&e) => {
                Err(L2Error::Command(super::reply_text(&e)))
            }
            Ok(Err(e)) => Err(shared.node_failed(node, e.to_string())),
            Err(_) => {
                Err(shared.node_failed(node, format!("no answer within {:?}", shared.op_timeout)))
            }
        }
    }
}

/// Whether `e` is a `MOVED` or `ASK` reply the client gave up following.
fn is_redirection(e: &redis::RedisError) -> bool {
    matches!(e.code(), Some("MOVED" | "ASK"))
}

impl Shared {
    fn node_of(&self, key: &str) -> Option<String> {
        let map = self.slots.read().expect("lock poisoned");
        map.node_of(slot(key.as_bytes())).map(str::to_owned)
    }

    fn is_down(&self, node: &str) -> bool {
        let down = self.down.lock().expect("lock poisoned");
        down.get(node).is_some_and(|until| Instant::now() < *until)
    }

    /// Mark the key's node down (when known) and pick the error the guard should see.
    fn node_failed(self: &Arc<Self>, node: Option<String>, why: String) -> L2Error {
        self.refresh_slots_soon();
        match node {
            Some(node) => {
                let first = self
                    .down
                    .lock()
                    .expect("lock poisoned")
                    .insert(node.clone(), Instant::now() + self.cooldown)
                    .is_none_or(|until| until <= Instant::now());
                if first {
                    tracing::warn!(node = %node, error = %why, cooldown = ?self.cooldown,
                        "redis cluster node failed: its keys miss until the cool-down ends");
                }
                L2Error::NodeDown(format!("{node}: {why}"))
            }
            None => L2Error::Connection(why),
        }
    }

    fn current(&self) -> Option<ClusterConnection> {
        self.conn.current().map(|(_, c)| c)
    }

    /// The connection, or at once why there is none (never waits for an attempt).
    fn connection(self: &Arc<Self>) -> Result<ClusterConnection, L2Error> {
        let (_, conn) = self.conn.link(|| Self::attempt(self))?;
        Ok(conn)
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
            let attempt =
                tokio::time::timeout(CONNECT_TIMEOUT, shared.client.get_async_connection());
            let result = match attempt.await {
                Ok(Ok(conn)) => {
                    if let Err(e) = shared.load_slots(conn.clone()).await {
                        tracing::debug!(error = %e, "cannot read the cluster's slot map yet");
                    }
                    tracing::debug!(redis = %shared.described, "connected to the redis cluster");
                    Ok(conn)
                }
                Ok(Err(e)) => {
                    let msg = e.to_string();
                    tracing::debug!(redis = %shared.described, error = %msg, "redis cluster connect failed");
                    Err(msg)
                }
                Err(_) => Err(format!(
                    "no cluster node answered within {CONNECT_TIMEOUT:?}"
                )),
            };
            shared.conn.finish(result);
        });
    }

    /// Read `CLUSTER SLOTS` (from any reachable node) into the slot map.
    async fn load_slots(&self, mut conn: ClusterConnection) -> Result<(), String> {
        let reply = tokio::time::timeout(
            CONNECT_TIMEOUT,
            redis::cmd("CLUSTER")
                .arg("SLOTS")
                .query_async::<Value>(&mut conn),
        )
        .await
        .map_err(|_| "CLUSTER SLOTS not answered in time".to_string())?
        .map_err(|e| e.to_string())?;
        let mut ranges = parse_slots(&reply);
        if ranges.is_empty() {
            return Err("CLUSTER SLOTS gave no ranges".into());
        }
        ranges.sort_by_key(|r| r.0);
        self.slots.write().expect("lock poisoned").ranges = ranges;
        Ok(())
    }

    /// Refresh the slot map in the background, at most once per [`REFRESH_EVERY`].
    fn refresh_slots_soon(self: &Arc<Self>) {
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_refresh_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < REFRESH_EVERY.as_millis() as u64
            || self
                .last_refresh_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let Some(conn) = self.current() else { return };
        let shared = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = shared.load_slots(conn).await {
                tracing::debug!(error = %e, "cluster slot map refresh failed");
            }
        });
    }

    /// The masters of the slot map (those not marked down), with credentials.
    fn masters(&self) -> Vec<ConnectionInfo> {
        let masters = self.slots.read().expect("lock poisoned").masters();
        masters
            .iter()
            .filter(|m| !self.is_down(m))
            .filter_map(|m| self.node_info(m))
            .collect()
    }

    /// How to reach the node at `host:port`, with the seeds' credentials and TLS.
    fn node_info(&self, node: &str) -> Option<ConnectionInfo> {
        let (host, port) = node.rsplit_once(':')?;
        let port = port.parse::<u16>().ok()?;
        super::topology::with_auth(
            tls::node_like(host.to_owned(), port, self.seeds.first()?),
            self.password.as_deref(),
        )
        .ok()
    }

    /// The masters of the slot map that do not answer a `PING` on a connection of their own
    /// within the operation deadline, whether or not they are marked down.
    async fn masters_down(&self) -> Vec<String> {
        let masters = self.slots.read().expect("lock poisoned").masters();
        let checks = masters.into_iter().map(|node| async move {
            let Some(info) = self.node_info(&node) else {
                return Some(node);
            };
            let ping = async {
                let client = Client::open(info)?;
                let mut conn = client.get_multiplexed_async_connection().await?;
                inspect::ping(&mut conn).await
            };
            match tokio::time::timeout(self.op_timeout, ping).await {
                Ok(Ok(())) => None,
                _ => Some(node),
            }
        });
        futures_util::future::join_all(checks)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Where to subscribe: the masters in the slot map, then the seeds.
    fn subscribe_candidates(&self) -> Vec<ConnectionInfo> {
        let mut out = self.masters();
        out.extend(self.seeds.iter().cloned());
        out
    }

    /// Run `op` on every master over its own short-lived connection; the answers of those
    /// that answered in time, and whether every one did.
    async fn on_each_master<T, F, Fut>(&self, op: F) -> Result<(Vec<T>, bool), L2Error>
    where
        F: Fn(redis::aio::MultiplexedConnection) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let masters = self.masters();
        if masters.is_empty() {
            return Err(L2Error::Connection("no cluster master known".into()));
        }
        let (mut out, mut all, mut last) = (Vec::new(), true, None);
        for info in masters {
            let one = async {
                let client = Client::open(info)?;
                let conn = client.get_multiplexed_async_connection().await?;
                op(conn).await
            };
            match tokio::time::timeout(INSPECT_TIMEOUT, one).await {
                Ok(Ok(v)) => out.push(v),
                Ok(Err(e)) => {
                    all = false;
                    last = Some(e.to_string());
                }
                Err(_) => {
                    all = false;
                    last = Some(format!("no answer within {INSPECT_TIMEOUT:?}"));
                }
            }
        }
        if out.is_empty() {
            return Err(L2Error::Connection(last.unwrap_or_default()));
        }
        Ok((out, all))
    }
}

/// `CLUSTER SLOTS`: `[[start, end, [host, port, id, ...], replicas...], ...]`.
fn parse_slots(reply: &Value) -> Vec<(u16, u16, String)> {
    let Value::Array(entries) = reply else {
        return Vec::new();
    };
    let int = |v: &Value| match v {
        Value::Int(n) => u16::try_from(*n).ok(),
        _ => None,
    };
    let text = |v: &Value| match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    entries
        .iter()
        .filter_map(|e| {
            let Value::Array(parts) = e else { return None };
            let start = int(parts.first()?)?;
            let end = int(parts.get(1)?)?;
            let Value::Array(master) = parts.get(2)? else {
                return None;
            };
            let host = text(master.first()?)?;
            let port = int(master.get(1)?)?;
            Some((start, end, format!("{host}:{port}")))
        })
        .collect()
}

impl RemoteStore for ClusterStore {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Vec<u8>>, L2Error>> {
        Box::pin(self.run(Some(key), move |mut c| async move {
            commands::get(&mut c, key).await
        }))
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Vec<u8>,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), L2Error>> {
        Box::pin(self.run(Some(key), move |mut c| async move {
            commands::set(&mut c, key, value, ttl).await
        }))
    }

    fn unlink<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<(), L2Error>> {
        Box::pin(self.run(Some(key), move |mut c| async move {
            commands::unlink(&mut c, key).await
        }))
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

    fn ping(&self) -> BoxFuture<'_, Result<(), L2Error>> {
        Box::pin(self.run(None, |mut c| async move { inspect::ping(&mut c).await }))
    }

    fn nodes_down(&self) -> BoxFuture<'_, Vec<String>> {
        Box::pin(self.shared.masters_down())
    }

    /// Every reachable primary's `INFO`, concatenated.
    fn info(&self) -> BoxFuture<'_, Result<String, L2Error>> {
        Box::pin(async move {
            let (all, _) = self
                .shared
                .on_each_master(|mut c| async move { inspect::info(&mut c).await })
                .await?;
            Ok(all.join("\n"))
        })
    }

    /// The sum over the primaries; incomplete when one of them did not answer.
    fn count_keys<'a>(
        &'a self,
        pattern: &'a str,
        limit: u64,
        marker_len: Option<usize>,
    ) -> BoxFuture<'a, Result<inspect::KeyCount, L2Error>> {
        Box::pin(async move {
            let (all, every) = self
                .shared
                .on_each_master(|mut c| async move {
                    inspect::count_keys(&mut c, pattern, limit, marker_len).await
                })
                .await?;
            let total = all.into_iter().fold(
                inspect::KeyCount {
                    complete: true,
                    ..Default::default()
                },
                inspect::KeyCount::add,
            );
            Ok(inspect::KeyCount {
                complete: total.complete && every,
                ..total
            })
        })
    }

    fn get_or_lease<'a>(
        &'a self,
        key: &'a str,
        marker: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, L2Error>> {
        Box::pin(self.run(Some(key), move |mut c| async move {
            commands::get_or_lease(&mut c, key, marker, ttl).await
        }))
    }

    fn exists<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, L2Error>> {
        Box::pin(self.run(Some(key), move |mut c| async move {
            commands::exists(&mut c, key).await
        }))
    }

    fn release<'a>(
        &'a self,
        key: &'a str,
        token: &'a [u8],
    ) -> BoxFuture<'a, Result<bool, L2Error>> {
        Box::pin(self.run(Some(key), move |mut c| async move {
            commands::release(&mut c, key, token).await
        }))
    }

    fn renew<'a>(
        &'a self,
        key: &'a str,
        token: &'a [u8],
        ttl: Duration,
    ) -> BoxFuture<'a, Result<bool, L2Error>> {
        Box::pin(self.run(Some(key), move |mut c| async move {
            commands::renew(&mut c, key, token, ttl).await
        }))
    }

    fn expire_stale_marker<'a>(
        &'a self,
        key: &'a str,
        ttl: Duration,
        is_marker: fn(&[u8]) -> bool,
    ) -> BoxFuture<'a, Result<bool, L2Error>> {
        Box::pin(self.run(Some(key), move |mut c| async move {
            commands::expire_stale_marker(&mut c, key, ttl, is_marker).await
        }))
    }

    fn publish<'a>(
        &'a self,
        channel: &'a str,
        message: &'a [u8],
    ) -> BoxFuture<'a, Result<(), L2Error>> {
        // Classic PUBLISH reaches subscribers on every node of the cluster.
        Box::pin(self.run(None, move |mut c| async move {
            commands::publish(&mut c, channel, message).await
        }))
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
        Box::pin(self.run(Some(key), move |mut c| async move {
            commands::hset_publish(&mut c, key, field, value, channel, message, fresh).await
        }))
    }

    fn load_generations<'a>(
        &'a self,
        key: &'a str,
        fresh: u64,
        all: bool,
    ) -> BoxFuture<'a, Result<super::Counts, L2Error>> {
        Box::pin(self.run(Some(key), move |mut c| async move {
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
        Box::pin(
            self.run(keys.first().map(String::as_str), move |mut c| async move {
                commands::hset_capped(&mut c, keys, field, value, cap, now_ms, ttl).await
            }),
        )
    }

    fn hgetall_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<super::Hashes, L2Error>> {
        Box::pin(
            self.run(keys.first().map(String::as_str), move |mut c| async move {
                commands::hgetall_many(&mut c, keys).await
            }),
        )
    }

    fn mget<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Option<Vec<u8>>>, L2Error>> {
        Box::pin(
            self.run(keys.first().map(String::as_str), move |mut c| async move {
                commands::mget(&mut c, keys).await
            }),
        )
    }

    fn hdel<'a>(
        &'a self,
        key: &'a str,
        fields: &'a [Vec<u8>],
    ) -> BoxFuture<'a, Result<(), L2Error>> {
        Box::pin(self.run(Some(key), move |mut c| async move {
            commands::hdel(&mut c, key, fields).await
        }))
    }

    fn subscribe<'a>(
        &'a self,
        channel: &'a str,
        timeout: Duration,
    ) -> BoxFuture<'a, Result<Subscription, L2Error>> {
        Box::pin(async move {
            let mut last = L2Error::Connection("no cluster node to subscribe on".into());
            for info in self.shared.subscribe_candidates() {
                let client = Client::open(info).map_err(|e| L2Error::Connection(e.to_string()))?;
                match Subscription::open(&client, channel, timeout).await {
                    Ok(sub) => return Ok(sub),
                    Err(e) => last = e,
                }
            }
            Err(last)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from `CLUSTER KEYSLOT`.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"{user1000}.following"), 3443);
        assert_eq!(slot(b"foo{}{bar}"), 8363);
        assert_eq!(slot(b"foo{{bar}}zap"), 4015);
        assert_eq!(slot(b"{}x"), 10595);
        assert_eq!(slot(b"foo{bar}{zap}"), 5061);
        assert_eq!(slot(b"ai:cache:0123"), 1498);
    }

    #[test]
    fn slot_map_lookup() {
        let map = SlotMap {
            ranges: vec![
                (0, 5460, "a:1".into()),
                (5461, 10922, "b:2".into()),
                (10923, 16383, "c:3".into()),
            ],
        };
        assert_eq!(map.node_of(0), Some("a:1"));
        assert_eq!(map.node_of(5461), Some("b:2"));
        assert_eq!(map.node_of(16383), Some("c:3"));
        assert_eq!(map.masters(), vec!["a:1", "b:2", "c:3"]);
        assert_eq!(SlotMap::default().node_of(7), None);
    }
}
