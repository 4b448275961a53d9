//! `Config`: every knob of the tiers, with its default, validated in one place so that
//! `build()` names the bad knob. Shared by the builders and the stores; it must never show a
//! Redis URL with its password, nor hold anything that belongs to a layer above the engine.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::envelope::MacKeys;
use crate::error::{Error, Result, redact_url};
use crate::l2::{Guarded, Topology};
use crate::stats::Counters;

/// Largest value Redis accepts as one string.
const REDIS_MAX_VALUE: usize = 512 << 20;

/// The validated settings shared by the tiers.
#[derive(Clone)]
#[doc(hidden)]
pub struct Config {
    pub l1_max_bytes: u64,
    pub l1_ttl: Duration,
    pub l2_ttl: Duration,
    pub key_prefix: String,
    pub redis_url: Option<String>,
    pub l2_deadline: Duration,
    pub breaker_threshold: u32,
    pub breaker_cooldown: Duration,
    pub max_entry_bytes: usize,
    pub compression_threshold: usize,
    pub waiter_deadline: Duration,
    pub l2_write_concurrency: usize,
    /// Secrets that sign and verify L2 entries (HMAC-SHA256); empty: unsigned entries.
    pub mac_keys: MacKeys,
    /// Why the secrets given to `mac_secrets` were refused (reported by `build()`).
    pub mac_keys_error: Option<String>,
    /// How long cached entries are served while invalidations cannot be heard.
    pub unsynced_grace: Duration,
    /// Sentinel / Cluster, leases, invalidation channel (scale-out).
    pub topology: Topology,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            l1_max_bytes: 256 << 20,
            l1_ttl: Duration::from_secs(600),
            l2_ttl: Duration::from_secs(24 * 3600),
            key_prefix: "ai:cache".into(),
            redis_url: None,
            l2_deadline: Duration::from_millis(50),
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_secs(2),
            max_entry_bytes: 4 << 20,
            compression_threshold: 1024,
            waiter_deadline: Duration::from_secs(300),
            l2_write_concurrency: 256,
            mac_keys: MacKeys::none(),
            mac_keys_error: None,
            unsynced_grace: Duration::from_secs(5),
            topology: Topology::default(),
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("l1_max_bytes", &self.l1_max_bytes)
            .field("l1_ttl", &self.l1_ttl)
            .field("l2_ttl", &self.l2_ttl)
            .field("key_prefix", &self.key_prefix)
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("l2_deadline", &self.l2_deadline)
            .field("breaker_threshold", &self.breaker_threshold)
            .field("breaker_cooldown", &self.breaker_cooldown)
            .field("max_entry_bytes", &self.max_entry_bytes)
            .field("compression_threshold", &self.compression_threshold)
            .field("waiter_deadline", &self.waiter_deadline)
            .field("l2_write_concurrency", &self.l2_write_concurrency)
            .field("mac_keys", &self.mac_keys)
            .field("unsynced_grace", &self.unsynced_grace)
            .field("topology", &self.topology)
            .finish()
    }
}

#[doc(hidden)]
pub fn positive(knob: &str, d: Duration) -> Result<()> {
    if d.is_zero() {
        return Err(Error::config(knob, "must be greater than zero"));
    }
    Ok(())
}

impl Config {
    #[doc(hidden)]
    pub fn validate(&self) -> Result<()> {
        positive("l1_ttl", self.l1_ttl)?;
        positive("l2_ttl", self.l2_ttl)?;
        if self.l2_ttl < Duration::from_millis(1) {
            return Err(Error::config("l2_ttl", "must be at least 1 ms"));
        }
        positive("l2_deadline", self.l2_deadline)?;
        if self.l2_deadline > Duration::from_secs(60) {
            return Err(Error::config(
                "l2_deadline",
                format!(
                    "{:?} is too long: Redis is an optimisation, keep it in the tens of milliseconds",
                    self.l2_deadline
                ),
            ));
        }
        positive("breaker_cooldown", self.breaker_cooldown)?;
        positive("waiter_deadline", self.waiter_deadline)?;
        positive("unsynced_grace", self.unsynced_grace)?;
        if self.breaker_threshold == 0 {
            return Err(Error::config("breaker_threshold", "must be at least 1"));
        }
        if self.l2_write_concurrency == 0 {
            return Err(Error::config("l2_write_concurrency", "must be at least 1"));
        }
        if self.max_entry_bytes == 0 || self.max_entry_bytes > REDIS_MAX_VALUE {
            return Err(Error::config(
                "max_entry_bytes",
                format!(
                    "{} is out of range: 1 ..= {REDIS_MAX_VALUE}",
                    self.max_entry_bytes
                ),
            ));
        }
        if self.l1_max_bytes != 0 && self.l1_max_bytes < 4096 {
            return Err(Error::config(
                "l1_max_bytes",
                format!(
                    "{} is too small: 0 disables L1, otherwise give at least 4096",
                    self.l1_max_bytes
                ),
            ));
        }
        if let Some(why) = &self.mac_keys_error {
            return Err(Error::config("mac_secrets", why.clone()));
        }
        crate::keyspace::validate_prefix(&self.key_prefix)
            .map_err(|why| Error::config("key_prefix", why))?;
        crate::l2::validate_topology(self)?;
        Ok(())
    }

    /// Open the Redis store when a URL is set; the connection is made in the background.
    #[doc(hidden)]
    pub async fn open_l2(&self, counters: &Arc<Counters>) -> Result<Option<Arc<Guarded>>> {
        // One server, a Sentinel master or a Cluster; connected in the background, with a
        // moment's wait so the first requests find a connection.
        let Some(store) = crate::l2::open_store(self).await? else {
            return Ok(None);
        };
        let l2 = Arc::new(Guarded::new(
            store,
            self.l2_deadline,
            self.breaker_threshold,
            self.breaker_cooldown,
            Arc::clone(counters),
        ));
        // Warn (in the background) when Redis would refuse cache writes once full.
        crate::redis_stats::check_config_in_background(&l2);
        Ok(Some(l2))
    }
}
