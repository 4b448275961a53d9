//! [`Redis`]: where the Redis tier lives, as one typed value (a server, a Sentinel-managed
//! master, or a Cluster) that checks its addresses when it is made, so that a combination
//! the tier cannot use (a Cluster *and* a Sentinel) cannot be written in one value.

use std::fmt;

use redis::IntoConnectionInfo;

use crate::config::Config;
use crate::error::{Error, Result, redact_url};

/// Where the cache's Redis tier lives. Give it to the builder's `redis(..)`:
///
/// ```
/// use llm_cache_engine::{Redis, TieredCache};
///
/// # fn build() -> Result<(), llm_cache_engine::Error> {
/// let one = Redis::url("redis://127.0.0.1:6379/0")?;
/// let failover = Redis::sentinel("mymaster", ["10.0.0.1:26379", "10.0.0.2:26379"])?
///     .password("data-node-secret");
/// let cluster = Redis::cluster(["redis://10.0.1.1:7000", "redis://10.0.1.2:7000"])?;
/// let builder = TieredCache::<String>::builder().redis(cluster);
/// # let _ = (one, failover, builder); Ok(()) }
/// # build().unwrap();
/// ```
///
/// Each constructor checks what it is given and names the bad input (its password hidden);
/// a plain string given to `redis(..)` is a [`Redis::url`] checked by `build()`. Passwords
/// are never shown, in errors or `Debug`.
#[derive(Clone, PartialEq, Eq)]
#[must_use]
pub struct Redis(Where);

#[derive(Clone, PartialEq, Eq)]
enum Where {
    Url(String),
    Sentinel {
        master: String,
        sentinels: Vec<String>,
        sentinel_password: Option<String>,
        password: Option<String>,
    },
    Cluster {
        nodes: Vec<String>,
        password: Option<String>,
    },
}

/// `addr` checked as a Redis address (`redis://`, `rediss://`, `valkey://`, `unix://`, or
/// `host:port`), or an error naming `knob` and the address without its password.
fn check(knob: &str, addr: &str) -> Result<()> {
    let url = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("redis://{addr}")
    };
    match url.as_str().into_connection_info() {
        Ok(_) => Ok(()),
        Err(e) => Err(Error::config(
            knob,
            format!(
                "`{}` is not a Redis address ({:?})",
                redact_url(addr),
                e.kind()
            ),
        )),
    }
}

fn addresses<I, S>(knob: &str, what: &str, addrs: I) -> Result<Vec<String>>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let addrs: Vec<String> = addrs.into_iter().map(Into::into).collect();
    if addrs.is_empty() {
        return Err(Error::config(
            knob,
            format!("needs at least one {what} address"),
        ));
    }
    for addr in &addrs {
        check(knob, addr)?;
    }
    Ok(addrs)
}

impl Redis {
    /// One server: `redis://[user:password@]host:port[/db]`, or over TLS
    /// `rediss://[user:password@]host:port[/db]` (feature `redis-tls`).
    ///
    /// # Errors
    ///
    /// `Config` naming the URL (password hidden) when it is not a Redis URL.
    pub fn url(url: impl Into<String>) -> Result<Redis> {
        let url = url.into();
        check("redis", &url)?;
        Ok(Redis(Where::Url(url)))
    }

    /// The master that Redis Sentinel monitors under `master_name`, found through any of
    /// `sentinels` (`host:port`, or `redis://[:password@]host:port`; `rediss://` for TLS to
    /// the sentinels and the master). The cache asks again after a failover.
    ///
    /// # Errors
    ///
    /// `Config` when the name is empty, no sentinel is given, or an address is not one.
    pub fn sentinel<I, S>(master_name: impl Into<String>, sentinels: I) -> Result<Redis>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let master = master_name.into();
        if master.trim().is_empty() {
            return Err(Error::config("sentinel", "the master's name is empty"));
        }
        let sentinels = addresses("sentinel", "sentinel", sentinels)?;
        Ok(Redis(Where::Sentinel {
            master,
            sentinels,
            sentinel_password: None,
            password: None,
        }))
    }

    /// A Redis Cluster, found through any of `seed_nodes` (`host:port` or
    /// `redis://[:password@]host:port`; `rediss://` for TLS to every node). A node that is
    /// down makes only its own keys miss.
    ///
    /// # Errors
    ///
    /// `Config` when no node is given or an address is not one.
    pub fn cluster<I, S>(seed_nodes: I) -> Result<Redis>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let nodes = addresses("cluster", "seed node", seed_nodes)?;
        Ok(Redis(Where::Cluster {
            nodes,
            password: None,
        }))
    }

    /// The password of the data nodes: the Sentinel's master and its replicas, or every
    /// Cluster node, for addresses that carry none. A [`Redis::url`] carries its own
    /// password: this one replaces it.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        let password = password.into();
        match &mut self.0 {
            Where::Url(url) => {
                if let Ok(mut parsed) = url::Url::parse(url)
                    && parsed.set_password(Some(&password)).is_ok()
                {
                    *url = parsed.to_string();
                }
            }
            Where::Sentinel { password: p, .. } | Where::Cluster { password: p, .. } => {
                *p = Some(password);
            }
        }
        self
    }

    /// The password of the sentinels themselves (`requirepass` in sentinel.conf), for
    /// sentinel addresses that carry none. Only a [`Redis::sentinel`] has sentinels: on the
    /// others it changes nothing.
    pub fn sentinel_password(mut self, password: impl Into<String>) -> Self {
        if let Where::Sentinel {
            sentinel_password, ..
        } = &mut self.0
        {
            *sentinel_password = Some(password.into());
        }
        self
    }

    /// Point `config` at this Redis. An address set before by another setter stays, and
    /// `build()` refuses the pair, naming it, as it always has.
    #[doc(hidden)]
    pub fn apply(self, config: &mut Config) {
        let t = &mut config.topology;
        match self.0 {
            Where::Url(url) => config.redis_url = Some(url),
            Where::Sentinel {
                master,
                sentinels,
                sentinel_password,
                password,
            } => {
                t.sentinel_master = Some(master);
                t.sentinels = sentinels;
                t.sentinel_password = sentinel_password;
                t.redis_password = password;
            }
            Where::Cluster { nodes, password } => {
                t.cluster_nodes = nodes;
                t.redis_password = password;
            }
        }
    }
}

/// A URL, checked by `build()`: `redis("redis://...")` as before.
impl From<&str> for Redis {
    fn from(url: &str) -> Self {
        Redis(Where::Url(url.to_string()))
    }
}

impl From<String> for Redis {
    fn from(url: String) -> Self {
        Redis(Where::Url(url))
    }
}

impl From<&String> for Redis {
    fn from(url: &String) -> Self {
        Redis(Where::Url(url.clone()))
    }
}

impl fmt::Debug for Redis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hidden = |p: &Option<String>| p.as_ref().map(|_| "***");
        let redacted = |v: &[String]| v.iter().map(|a| redact_url(a)).collect::<Vec<_>>();
        match &self.0 {
            Where::Url(url) => f.debug_tuple("Redis::url").field(&redact_url(url)).finish(),
            Where::Sentinel {
                master,
                sentinels,
                sentinel_password,
                password,
            } => f
                .debug_struct("Redis::sentinel")
                .field("master", master)
                .field("sentinels", &redacted(sentinels))
                .field("sentinel_password", &hidden(sentinel_password))
                .field("password", &hidden(password))
                .finish(),
            Where::Cluster { nodes, password } => f
                .debug_struct("Redis::cluster")
                .field("nodes", &redacted(nodes))
                .field("password", &hidden(password))
                .finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_constructor_checks_its_input_and_names_it() {
        assert!(Redis::url("redis://127.0.0.1:6379/0").is_ok());
        let e = Redis::url("http://u:hunter2@host").unwrap_err();
        let shown = e.to_string();
        assert!(
            shown.contains("redis") && !shown.contains("hunter2"),
            "{shown}"
        );
        let e = Redis::sentinel("", ["127.0.0.1:26379"]).unwrap_err();
        assert!(e.to_string().contains("master's name"), "{e}");
        let none: [&str; 0] = [];
        let e = Redis::sentinel("m", none).unwrap_err();
        assert!(e.to_string().contains("at least one sentinel"), "{e}");
        let e = Redis::cluster(none).unwrap_err();
        assert!(e.to_string().contains("at least one seed node"), "{e}");
        let e = Redis::cluster(["127.0.0.1:7000", "ftp://x:secret@h"]).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(Redis::cluster(["127.0.0.1:7000", "redis://127.0.0.1:7001"]).is_ok());
    }

    #[test]
    fn a_value_sets_its_topology_and_passwords_stay_hidden() {
        let mut config = Config::default();
        Redis::cluster(["127.0.0.1:7000"])
            .unwrap()
            .password("pw-77")
            .apply(&mut config);
        assert_eq!(config.redis_url, None);
        assert!(config.topology.sentinel_master.is_none());
        assert_eq!(config.topology.cluster_nodes, ["127.0.0.1:7000"]);
        assert_eq!(config.topology.redis_password.as_deref(), Some("pw-77"));
        let shown = format!(
            "{:?}",
            Redis::sentinel("m", ["redis://:s3nt@h:26379"])
                .unwrap()
                .sentinel_password("sp-1")
                .password("dp-2")
        );
        for secret in ["s3nt", "sp-1", "dp-2"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        let url = Redis::url("redis://127.0.0.1:6379")
            .unwrap()
            .password("new-pw");
        let mut config = Config::default();
        url.apply(&mut config);
        assert_eq!(
            config.redis_url.as_deref(),
            Some("redis://:new-pw@127.0.0.1:6379")
        );
    }
}
