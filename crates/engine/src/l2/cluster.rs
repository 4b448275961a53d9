//! A Redis Cluster, what the connection seam (store.rs) needs beyond the redis crate's
//! cluster connection (slot routing, MOVED/ASK, topology refresh): a node that fails is
//! marked down for a cool-down, and its keys fail at once as [`L2Error::NodeDown`] (a
//! miss), while the other nodes' keys keep hitting. The guard's breaker, which would stop
//! using the whole cluster, does not count those failures. An error reply (OOM, a script
//! error) says the node is up: it is never a reason to mark it down. Per node: `INFO`,
//! `SCAN` and `PING` of each master, and where to subscribe. With `rediss://` seeds every
//! node is reached over TLS, with the same certificates.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use redis::io::tcp::TcpSettings;
use redis::{Client, ConnectionInfo, RedisResult, Value};

use super::store::Connection;
use super::tls::{self, TlsSettings};
use super::{L2Error, Subscription, inspect};
use crate::error::{Error, Result};

/// How long one attempt to reach the cluster (or to read its slot map) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Slot-map refreshes after failures are at most this frequent.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
/// How long `INFO` or a bounded `SCAN` may take on one primary (stats, not requests).
const INSPECT_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) struct Cluster {
    client: ClusterClient,
    /// Seeds first, then the masters last seen in the slot map: where to subscribe.
    seeds: Vec<ConnectionInfo>,
    password: Option<String>,
    /// Each command's own deadline, a little shorter than the guard's, so a hung node
    /// is noticed here (and marked down) rather than counted against the whole cluster.
    pub(super) op_timeout: Duration,
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

impl Cluster {
    /// Prepare the client for `seeds` (already validated); no connection is made here.
    pub fn open(
        seeds: Vec<ConnectionInfo>,
        certs: &TlsSettings,
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
        Ok(Cluster {
            client,
            seeds,
            password,
            op_timeout: deadline.mul_f64(0.9),
            cooldown,
            slots: RwLock::new(SlotMap::default()),
            last_refresh_ms: AtomicU64::new(0),
            started: Instant::now(),
            down: Mutex::new(HashMap::new()),
        })
    }

    /// One attempt to reach the cluster (in the background), then its slot map.
    pub async fn connect(&self) -> Result<Connection, String> {
        let attempt = self.client.get_async_connection();
        match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(Ok(conn)) => {
                let conn = Connection::Cluster(conn);
                if let Err(e) = self.load_slots(conn.clone()).await {
                    tracing::debug!(error = %e, "cannot read the cluster's slot map yet");
                }
                Ok(conn)
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!(
                "no cluster node answered within {CONNECT_TIMEOUT:?}"
            )),
        }
    }

    /// The node that owns `key`, when the slot map knows it.
    pub(crate) fn node_of_key(&self, key: &str) -> Option<String> {
        let map = crate::sync::read(&self.slots);
        map.node_of(slot(key.as_bytes())).map(str::to_owned)
    }

    /// The node that owns `key` (when known), or `NodeDown` when it is marked down.
    pub fn owner_up(&self, key: Option<&str>) -> Result<Option<String>, L2Error> {
        let node = key.and_then(|k| self.node_of_key(k));
        match node {
            Some(node) if self.is_down(&node) => Err(L2Error::NodeDown(node)),
            node => Ok(node),
        }
    }

    /// What a command on `node` (bounded by [`op_timeout`](Self::op_timeout)) comes to.
    pub fn outcome<T>(
        self: &Arc<Self>,
        node: Option<String>,
        conn: &Connection,
        outcome: Result<RedisResult<T>, tokio::time::error::Elapsed>,
    ) -> Result<T, L2Error> {
        match outcome {
            Ok(Ok(v)) => Ok(v),
            // A redirection the client could not follow (the slot moved, or its new owner
            // is down) refuses nothing: this key misses until the slot map is refreshed,
            // and nothing else changes (no node marked down, no lease refusal).
            Ok(Err(e)) if matches!(e.code(), Some("MOVED" | "ASK")) => {
                self.refresh_slots_soon(conn);
                Err(L2Error::NodeDown(format!(
                    "redirected: {}",
                    super::reply_text(&e)
                )))
            }
            // An error reply says the node is up: not a reason to mark it down.
            Ok(Err(e)) if super::refused_by_server(&e) => {
                Err(L2Error::Command(super::reply_text(&e)))
            }
            Ok(Err(e)) => Err(self.node_failed(node, conn, e.to_string())),
            Err(_) => {
                let why = format!("no answer within {:?}", self.op_timeout);
                Err(self.node_failed(node, conn, why))
            }
        }
    }

    fn is_down(&self, node: &str) -> bool {
        let down = crate::sync::lock(&self.down);
        down.get(node).is_some_and(|until| Instant::now() < *until)
    }

    /// Mark the key's node down (when known) and pick the error the guard should see.
    fn node_failed(
        self: &Arc<Self>,
        node: Option<String>,
        conn: &Connection,
        why: String,
    ) -> L2Error {
        self.refresh_slots_soon(conn);
        let Some(node) = node else {
            return L2Error::Connection(why);
        };
        let first = crate::sync::lock(&self.down)
            .insert(node.clone(), Instant::now() + self.cooldown)
            .is_none_or(|until| until <= Instant::now());
        if first {
            tracing::warn!(node = %node, error = %why, cooldown = ?self.cooldown,
                "redis cluster node failed: its keys miss until the cool-down ends");
        }
        L2Error::NodeDown(format!("{node}: {why}"))
    }

    /// Read `CLUSTER SLOTS` (from any reachable node) into the slot map.
    async fn load_slots(&self, mut conn: Connection) -> Result<(), String> {
        let slots = redis::cmd("CLUSTER").arg("SLOTS").to_owned();
        let reply = tokio::time::timeout(CONNECT_TIMEOUT, slots.query_async::<Value>(&mut conn))
            .await
            .map_err(|_| "CLUSTER SLOTS not answered in time".to_string())?
            .map_err(|e| e.to_string())?;
        let mut ranges = parse_slots(&reply);
        if ranges.is_empty() {
            return Err("CLUSTER SLOTS gave no ranges".into());
        }
        ranges.sort_by_key(|r| r.0);
        crate::sync::write(&self.slots).ranges = ranges;
        Ok(())
    }

    /// Refresh the slot map in the background, at most once per [`REFRESH_EVERY`].
    fn refresh_slots_soon(self: &Arc<Self>, conn: &Connection) {
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
        let (cluster, conn) = (Arc::clone(self), conn.clone());
        tokio::spawn(async move {
            if let Err(e) = cluster.load_slots(conn).await {
                tracing::debug!(error = %e, "cluster slot map refresh failed");
            }
        });
    }

    /// The masters of the slot map (those not marked down), with credentials.
    fn masters(&self) -> Vec<ConnectionInfo> {
        let masters = crate::sync::read(&self.slots).masters();
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
    /// within the command deadline, whether or not they are marked down.
    pub async fn masters_down(&self) -> Vec<String> {
        let masters = crate::sync::read(&self.slots).masters();
        let checks = masters.into_iter().map(|node| async move {
            let Some(info) = self.node_info(&node) else {
                return Some(node);
            };
            let ping = async {
                let client = Client::open(info)?;
                inspect::ping(client.get_multiplexed_async_connection().await?).await
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

    /// Run `op` on every master over its own short-lived connection; the answers of those
    /// that answered in time, and whether every one did.
    pub async fn on_each_master<T, F, Fut>(&self, op: F) -> Result<(Vec<T>, bool), L2Error>
    where
        F: Fn(MultiplexedConnection) -> Fut,
        Fut: Future<Output = RedisResult<T>>,
    {
        let masters = self.masters();
        if masters.is_empty() {
            return Err(L2Error::Connection("no cluster master known".into()));
        }
        let (mut out, mut all, mut last) = (Vec::new(), true, None);
        for info in masters {
            let one = async {
                let client = Client::open(info)?;
                op(client.get_multiplexed_async_connection().await?).await
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

    /// Subscribe on the first node that takes it: the masters in the slot map, then the
    /// seeds (classic `PUBLISH` reaches subscribers on every node).
    pub async fn subscribe(
        &self,
        channel: &str,
        timeout: Duration,
    ) -> Result<Subscription, L2Error> {
        let mut last = L2Error::Connection("no cluster node to subscribe on".into());
        for info in self.masters().into_iter().chain(self.seeds.iter().cloned()) {
            let client = Client::open(info).map_err(|e| L2Error::Connection(e.to_string()))?;
            match Subscription::open(&client, channel, timeout).await {
                Ok(sub) => return Ok(sub),
                Err(e) => last = e,
            }
        }
        Err(last)
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
