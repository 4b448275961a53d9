//! How the cache reaches Redis (one server, a Sentinel-managed master, or a Cluster, over
//! TCP or TLS) and the scale-out settings that go with it (leases, the invalidation channel).
//! Validated in `build()`; a password or a private key is never shown, in errors or `Debug`.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::io::tcp::TcpSettings;
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisResult};

use super::cluster::Cluster;
use super::sentinel::Resolver;
use super::store::Store;
use super::tls::{self, TlsSettings};
use crate::config::Config;
use crate::error::{Error, Result, redact_url};

/// The scale-out knobs of the builder.
#[derive(Clone)]
#[doc(hidden)]
pub struct Topology {
    /// Sentinel: the monitored master's name and the sentinels' addresses.
    pub sentinel_master: Option<String>,
    pub sentinels: Vec<String>,
    pub sentinel_password: Option<String>,
    /// Cluster: seed nodes (any reachable one is enough).
    pub cluster_nodes: Vec<String>,
    /// Password of the data nodes found through Sentinel or Cluster.
    pub redis_password: Option<String>,
    /// Single-flight across instances through leases in Redis.
    pub leases: bool,
    pub lease_ttl: Duration,
    /// Whether `lease_ttl` was set by hand; otherwise it follows the L2 deadline (see
    /// [`default_lease_ttl`]).
    pub lease_ttl_set: bool,
    /// Listen on the invalidation channel and drop what other instances invalidate.
    pub invalidation: bool,
    /// CA and client certificate for `rediss://` addresses (feature `redis-tls`).
    pub tls: TlsSettings,
}

impl Default for Topology {
    fn default() -> Self {
        Topology {
            sentinel_master: None,
            sentinels: Vec::new(),
            sentinel_password: None,
            cluster_nodes: Vec::new(),
            redis_password: None,
            leases: true,
            lease_ttl: default_lease_ttl(Duration::from_millis(50)),
            lease_ttl_set: false,
            invalidation: true,
            tls: TlsSettings::default(),
        }
    }
}

/// The lease's life unless set by hand: short, so that a holder that stops renewing loses
/// it quickly (2 s), but at least four L2 deadlines, so that a renewal fits in time.
#[doc(hidden)]
pub fn default_lease_ttl(l2_deadline: Duration) -> Duration {
    Duration::from_secs(2).max(l2_deadline * 4)
}

fn hidden(p: &Option<String>) -> Option<&'static str> {
    p.as_ref().map(|_| "***")
}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |v: &[String]| v.iter().map(|a| redact_url(a)).collect::<Vec<_>>();
        f.debug_struct("Topology")
            .field("sentinel_master", &self.sentinel_master)
            .field("sentinels", &redacted(&self.sentinels))
            .field("sentinel_password", &hidden(&self.sentinel_password))
            .field("cluster_nodes", &redacted(&self.cluster_nodes))
            .field("redis_password", &hidden(&self.redis_password))
            .field("leases", &self.leases)
            .field("lease_ttl", &self.lease_ttl)
            .field("invalidation", &self.invalidation)
            .field("tls", &self.tls)
            .finish()
    }
}

/// `host:port` or `redis[s]://[user:password@]host:port[/db]` to connection info, with
/// `password` when the address carries none, the builder's TLS certificates, and TCP_NODELAY.
fn node_info(
    knob: &str,
    addr: &str,
    password: Option<&str>,
    certs: &TlsSettings,
) -> Result<ConnectionInfo> {
    let shown = redact_url(addr);
    // Errors show the redis error's kind only: its detail may quote the URL's password.
    tls::check_supported(knob, addr)?;
    let info = if addr.contains("://") {
        addr.into_connection_info().map_err(|e| {
            Error::config(
                knob,
                format!("`{shown}` is not a valid Redis URL: {:?}", e.kind()),
            )
        })?
    } else {
        let (host, port) = addr.rsplit_once(':').ok_or_else(|| {
            Error::config(
                knob,
                format!("`{shown}` is not `host:port` or a redis:// URL"),
            )
        })?;
        let port: u16 = port
            .parse()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| Error::config(knob, format!("`{shown}`: bad port")))?;
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(Error::config(knob, format!("`{shown}`: bad host")));
        }
        (host, port)
            .into_connection_info()
            .expect("a host and a port always make connection info")
    };
    if !matches!(
        info.addr(),
        ConnectionAddr::Tcp(..) | ConnectionAddr::TcpTls { .. }
    ) {
        return Err(Error::config(
            knob,
            format!("`{shown}`: only TCP and TLS addresses are supported here"),
        ));
    }
    let info = tls::with_certs(info, certs)
        .map_err(|e| Error::config(knob, format!("`{shown}`: {:?}", e.kind())))?;
    with_auth(Ok(info), password).map_err(|e| Error::config(knob, format!("{:?}", e.kind())))
}

/// Every address of one store must use the same scheme (and the same `#insecure`): the
/// nodes found at run time are reached the way the configured ones are.
fn same_tls(knob: &str, infos: &[ConnectionInfo]) -> Result<()> {
    if infos
        .windows(2)
        .any(|w| tls::mode(&w[0]) != tls::mode(&w[1]))
    {
        return Err(Error::config(
            knob,
            "the addresses mix TLS and plain TCP (or `#insecure` and verified TLS): give them \
             all the same scheme",
        ));
    }
    Ok(())
}

/// Fill in credentials the address does not carry, and set TCP_NODELAY.
pub(crate) fn with_auth(
    info: RedisResult<ConnectionInfo>,
    password: Option<&str>,
) -> RedisResult<ConnectionInfo> {
    let info = info?;
    let mut redis = info.redis_settings().clone();
    if redis.password().is_none()
        && let Some(p) = password
    {
        redis = redis.set_password(p);
    }
    Ok(info
        .set_redis_settings(redis)
        .set_tcp_settings(TcpSettings::default().set_nodelay(true)))
}

fn non_empty_password(knob: &str, p: &Option<String>) -> Result<()> {
    if p.as_ref().is_some_and(String::is_empty) {
        return Err(Error::config(
            knob,
            "must not be empty (leave it unset for no password)",
        ));
    }
    Ok(())
}

/// Check the scale-out knobs; the error names the first bad one.
pub(crate) fn validate(config: &Config) -> Result<()> {
    let t = &config.topology;
    let sentinel = t.sentinel_master.is_some();
    let cluster = !t.cluster_nodes.is_empty();
    let url = config.redis_url.is_some();
    if [url, sentinel, cluster].iter().filter(|m| **m).count() > 1 {
        let knob = if sentinel { "sentinel" } else { "cluster" };
        return Err(Error::config(
            knob,
            "give one of `redis`, `sentinel` and `cluster`, not several",
        ));
    }
    if let Some(url) = &config.redis_url {
        tls::check_supported("redis_url", url)?;
    }
    // The certificates first, so a bad one is named as such, not as a bad address.
    let any_tls = config.redis_url.iter().any(|u| tls::is_tls(u))
        || (sentinel && t.sentinels.iter().any(|s| tls::is_tls(s)))
        || t.cluster_nodes.iter().any(|n| tls::is_tls(n));
    tls::validate(&t.tls, any_tls)?;
    non_empty_password("sentinel_password", &t.sentinel_password)?;
    non_empty_password("redis_password", &t.redis_password)?;
    if let Some(master) = &t.sentinel_master {
        if master.is_empty() || master.contains(|c: char| c.is_whitespace() || c.is_control()) {
            return Err(Error::config(
                "sentinel",
                format!("master name {master:?} is empty or contains whitespace"),
            ));
        }
        if t.sentinels.is_empty() {
            return Err(Error::config(
                "sentinel",
                "give at least one sentinel address",
            ));
        }
        let infos = t
            .sentinels
            .iter()
            .map(|s| node_info("sentinel", s, None, &t.tls))
            .collect::<Result<Vec<_>>>()?;
        same_tls("sentinel", &infos)?;
    } else if t.sentinel_password.is_some() {
        return Err(Error::config("sentinel_password", "set without `sentinel`"));
    }
    if cluster {
        let infos = t
            .cluster_nodes
            .iter()
            .map(|n| node_info("cluster", n, None, &t.tls))
            .collect::<Result<Vec<_>>>()?;
        same_tls("cluster", &infos)?;
    }
    if t.redis_password.is_some() && !(sentinel || cluster) {
        return Err(Error::config(
            "redis_password",
            "is for `sentinel` and `cluster`; with `redis(url)` put the password in the URL",
        ));
    }
    if t.lease_ttl < Duration::from_millis(100) || t.lease_ttl > Duration::from_secs(3600) {
        return Err(Error::config(
            "lease_ttl",
            format!("{:?} is out of range: 100 ms ..= 1 h", t.lease_ttl),
        ));
    }
    // Only leases need renewing in time: with them off, any deadline goes.
    if t.leases && t.lease_ttl < config.l2_deadline * 4 {
        return Err(Error::config(
            "lease_ttl",
            format!(
                "{:?} is too short for the l2_deadline of {:?}: give at least 4 times it, so a lease can be renewed in time",
                t.lease_ttl, config.l2_deadline
            ),
        ));
    }
    Ok(())
}

/// Open the configured store (none when no Redis is configured) and start connecting in
/// the background; wait a moment so the first requests find a connection. A Redis that is
/// down does not fail the build: the cache runs L1-only until it answers.
pub(crate) async fn open_store(config: &Config) -> Result<Option<Store>> {
    let t = &config.topology;
    let (store, what) = if let Some(url) = &config.redis_url {
        (Store::server(url, &t.tls)?, "redis")
    } else if let Some(master) = &t.sentinel_master {
        let sentinels = t
            .sentinels
            .iter()
            .map(|s| node_info("sentinel", s, t.sentinel_password.as_deref(), &t.tls))
            .collect::<Result<Vec<_>>>()?;
        tls::prepare(&sentinels, &format!("sentinel master `{master}`"));
        let resolver = Resolver::new(master.clone(), sentinels, t.redis_password.clone());
        let store = Store::sentinel(Arc::new(resolver), &t.sentinels);
        (store, "the sentinels' master")
    } else if !t.cluster_nodes.is_empty() {
        let nodes = t
            .cluster_nodes
            .iter()
            .map(|n| node_info("cluster", n, t.redis_password.as_deref(), &t.tls))
            .collect::<Result<Vec<_>>>()?;
        tls::prepare(&nodes, "cluster");
        let (deadline, cooldown) = (config.l2_deadline, config.breaker_cooldown);
        let cluster = Cluster::open(nodes, &t.tls, deadline, cooldown)?;
        (
            Store::cluster(cluster, &t.cluster_nodes),
            "the redis cluster",
        )
    } else {
        return Ok(None);
    };
    let wait = config.l2_deadline.max(Duration::from_millis(200));
    if let Err(error) = store.connect(wait).await {
        let cause = start_up_cause(error);
        tracing::warn!(redis = %store.describe(), cause = %cause, "{what} is not reachable yet: running L1-only until it answers");
    }
    Ok(Some(store))
}

/// What the start-up WARN says about why Redis is not usable yet: authentication failures
/// named as such (the server's reply says which, never the password), any other error as
/// the driver gave it (URLs redacted), or that no attempt has ended yet.
fn start_up_cause(error: Option<String>) -> String {
    let Some(error) = error else {
        return "no answer yet (connecting in the background)".into();
    };
    let error = crate::health::redact_urls_in(&error);
    let auth = [
        "WRONGPASS",
        "NOAUTH",
        "invalid username-password",
        "AuthenticationFailed",
        "invalid password",
    ];
    if auth.iter().any(|needle| error.contains(needle)) {
        format!("authentication failed (check the user name and password): {error}")
    } else {
        error
    }
}

#[cfg(test)]
mod cause_tests {
    use super::start_up_cause;

    #[test]
    fn authentication_failures_are_named() {
        let said = start_up_cause(Some(
            "WRONGPASS: invalid username-password pair or user is disabled.".into(),
        ));
        assert!(said.starts_with("authentication failed"), "{said}");
        assert!(start_up_cause(None).contains("no answer yet"));
        assert_eq!(
            start_up_cause(Some("Connection refused".into())),
            "Connection refused"
        );
    }
}
