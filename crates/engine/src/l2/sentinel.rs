//! Redis Sentinel: find the master by name, check that it really is the master, and follow
//! failovers. The redis crate asks the sentinels only when it connects and does not follow
//! `+switch-master`, so this module does: the store connects through [`Resolver::connect`]
//! (after a broken connection or a READONLY reply it connects again, which asks again), and
//! [`watch_switches`] drops the connection as soon as a sentinel announces a new master.
//! With `rediss://` sentinels, the master is reached over TLS too, with the same certificates.
//! Nothing here may block a request: every step has a short timeout.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, ConnectionInfo, Value};

use super::pubsub::Subscription;
use super::tls;
use super::topology::with_auth;

/// How long one sentinel may take to connect and answer.
const SENTINEL_TIMEOUT: Duration = Duration::from_secs(1);
/// Pause before asking the next sentinel for `+switch-master` after losing one.
const WATCH_RETRY: Duration = Duration::from_millis(250);

/// Finds the current master of one Sentinel-managed group.
pub(crate) struct Resolver {
    master: String,
    sentinels: Vec<ConnectionInfo>,
    /// Password of the master and replicas (not of the sentinels).
    node_password: Option<String>,
    /// The sentinel to ask first: the last one that answered.
    next: AtomicUsize,
}

impl Resolver {
    pub fn new(
        master: String,
        sentinels: Vec<ConnectionInfo>,
        node_password: Option<String>,
    ) -> Self {
        Resolver {
            master,
            sentinels,
            node_password,
            next: AtomicUsize::new(0),
        }
    }

    pub fn master_name(&self) -> &str {
        &self.master
    }

    /// The master's address as the first sentinel that knows it reports it.
    async fn master_addr(&self) -> Result<(String, u16), String> {
        let n = self.sentinels.len();
        let start = self.next.load(Ordering::Relaxed);
        let mut why = Vec::new();
        for i in 0..n {
            let idx = (start + i) % n;
            let sentinel = self.sentinels[idx].addr().to_string();
            match tokio::time::timeout(SENTINEL_TIMEOUT, self.ask(idx)).await {
                Ok(Ok(Some(addr))) => {
                    self.next.store(idx, Ordering::Relaxed);
                    return Ok(addr);
                }
                Ok(Ok(None)) => why.push(format!("{sentinel}: does not know `{}`", self.master)),
                Ok(Err(e)) => why.push(format!("{sentinel}: {e}")),
                Err(_) => why.push(format!("{sentinel}: no answer in {SENTINEL_TIMEOUT:?}")),
            }
        }
        Err(format!(
            "no sentinel gave the master `{}`: {}",
            self.master,
            why.join("; ")
        ))
    }

    async fn ask(&self, idx: usize) -> redis::RedisResult<Option<(String, u16)>> {
        let client = Client::open(self.sentinels[idx].clone())?;
        let mut c = client
            .get_multiplexed_async_connection_with_config(&short_config())
            .await?;
        redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master)
            .query_async(&mut c)
            .await
    }

    /// A client for the node the sentinels name as master now (not yet checked), reached the
    /// way the sentinels are: TLS (same mode and certificates) when they use it.
    pub async fn master_client(&self) -> Result<(Client, String), String> {
        let (host, port) = self.master_addr().await?;
        let info = with_auth(
            tls::node_like(host.clone(), port, &self.sentinels[0]),
            self.node_password.as_deref(),
        )
        .map_err(|e| e.to_string())?;
        let client = Client::open(info).map_err(|e| e.to_string())?;
        Ok((client, format!("{host}:{port}")))
    }

    /// A connection to the master, checked with `ROLE`: right after a failover a sentinel
    /// may still name the old master, which may be back as a replica.
    pub async fn connect(
        &self,
        config: &AsyncConnectionConfig,
    ) -> Result<MultiplexedConnection, String> {
        let (client, addr) = self.master_client().await?;
        let mut conn = client
            .get_multiplexed_async_connection_with_config(config)
            .await
            .map_err(|e| format!("master {addr}: {e}"))?;
        let role = tokio::time::timeout(
            SENTINEL_TIMEOUT,
            redis::cmd("ROLE").query_async::<Vec<Value>>(&mut conn),
        )
        .await
        .map_err(|_| format!("master {addr}: ROLE not answered in {SENTINEL_TIMEOUT:?}"))?
        .map_err(|e| format!("master {addr}: ROLE: {e}"))?;
        match role.first() {
            Some(Value::BulkString(r)) if r.as_slice() == b"master" => Ok(conn),
            other => Err(format!(
                "{addr} is not the master of `{}` yet (ROLE says {other:?})",
                self.master
            )),
        }
    }
}

fn short_config() -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(SENTINEL_TIMEOUT))
        .set_response_timeout(Some(SENTINEL_TIMEOUT))
}

/// Listen for `+switch-master` on one sentinel at a time (moving to the next when it goes
/// away) and call `on_switch` when our master changes. Runs until aborted.
pub(crate) async fn watch_switches(resolver: Arc<Resolver>, on_switch: impl Fn() + Send + 'static) {
    let prefix = format!("{} ", resolver.master);
    let mut idx = 0;
    loop {
        let info = resolver.sentinels[idx % resolver.sentinels.len()].clone();
        idx += 1;
        let Ok(client) = Client::open(info) else {
            continue;
        };
        match Subscription::open(&client, "+switch-master", SENTINEL_TIMEOUT).await {
            Ok(mut sub) => {
                while let Some(msg) = sub.next().await {
                    // "<master name> <old ip> <old port> <new ip> <new port>"
                    if msg.starts_with(prefix.as_bytes()) {
                        tracing::info!(
                            master = %resolver.master,
                            announcement = %String::from_utf8_lossy(&msg),
                            "sentinel switched the master: reconnecting"
                        );
                        on_switch();
                    }
                }
                // A switch missed meanwhile still shows: the old master's connections are
                // killed when it is demoted, and writes to it answer READONLY.
            }
            Err(e) => {
                tracing::debug!(error = %e, "cannot watch a sentinel for +switch-master");
            }
        }
        tokio::time::sleep(WATCH_RETRY).await;
    }
}
