//! Every knob of the cache, with its default, validated in one place. `build()` returns
//! an error that names the bad knob; a Redis URL is only ever shown with its password hidden.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cache::{LlmCache, StreamSettings};
use crate::envelope::MacKeys;
use crate::error::{Error, Result, redact_url};
use crate::key::KeyOptions;
use crate::l2::{Guarded, Topology};
use crate::metrics::Counters;
use crate::pricing::PriceTable;
use crate::request::ChatResponse;
use crate::tiered::TieredCache;
use crate::upstream::Upstream;

/// The default of [`LlmCacheBuilder::stream_deadline`]: how long a streamed flight may last.
pub const DEFAULT_STREAM_DEADLINE: Duration = Duration::from_secs(30 * 60);

/// Largest value Redis accepts as one string.
const REDIS_MAX_VALUE: usize = 512 << 20;

/// The validated settings shared by the tiers.
#[derive(Clone)]
pub(crate) struct Config {
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

fn positive(knob: &str, d: Duration) -> Result<()> {
    if d.is_zero() {
        return Err(Error::config(knob, "must be greater than zero"));
    }
    Ok(())
}

impl Config {
    pub(crate) fn validate(&self) -> Result<()> {
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
    pub(crate) async fn open_l2(&self, counters: &Arc<Counters>) -> Result<Option<Arc<Guarded>>> {
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

/// The knobs shared by [`TieredCacheBuilder`] and `LlmCacheBuilder`, written once.
macro_rules! config_setters {
    () => {
        /// L1 bound in bytes (encoded size of each value plus a fixed overhead); 0 disables L1.
        /// Default 256 MiB.
        pub fn l1_max_bytes(mut self, bytes: u64) -> Self {
            self.config.l1_max_bytes = bytes;
            self
        }

        /// Longest time an entry stays in L1; never longer than its remaining L2 life.
        /// Default 10 min.
        pub fn l1_ttl(mut self, ttl: Duration) -> Self {
            self.config.l1_ttl = ttl;
            self
        }

        /// Lifetime of an entry in Redis. Default 24 h.
        pub fn l2_ttl(mut self, ttl: Duration) -> Self {
            self.config.l2_ttl = ttl;
            self
        }

        /// Prefix of every Redis key: entries are `{prefix}:{<sha256 hex>}` (the braces are a
        /// Cluster hash tag, shared by the entry's lease `{prefix}:{<hex>}.lease`), with
        /// `{prefix}:generations` and the channel `{prefix}:invalidate` beside them. Default
        /// `ai:cache`. 1 to 128 bytes, no whitespace, control characters or braces (`build()`
        /// says which): with this layout no two distinct prefixes can share a key.
        pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
            self.config.key_prefix = prefix.into();
            self
        }

        /// How long cached entries (L1, and L2 under the namespace generations it knows) are
        /// served while this instance cannot hear invalidations although Redis is partly
        /// reachable: its subscription is lost, or the namespace generations cannot be read
        /// (in a Cluster, the node that holds them is down). Counted from when the entry was
        /// stored or the instance stopped hearing, whichever is later; past it the cache
        /// fetches instead (`Stats::unsynced_skips`). When Redis is wholly away L1 is kept
        /// (nobody can invalidate). When the instance hears again it clears its L1.
        /// Default 5 s.
        pub fn unsynced_grace(mut self, grace: Duration) -> Self {
            self.config.unsynced_grace = grace;
            self
        }

        /// Sign every L2 entry with HMAC-SHA256 and accept only entries that verify, for a
        /// Redis that writers you do not trust can reach. The first secret signs; all of them
        /// verify, so a secret is rotated by putting the new one first and dropping the old
        /// one once its entries have expired (`l2_ttl`). Each secret needs at least 16 bytes
        /// (32 random bytes recommended). Instances with different secrets see each other's
        /// entries as misses. Secrets never appear in `Debug` output or errors.
        ///
        /// Without secrets an entry is still bound to its key by a checksum (a value copied
        /// under another key is a miss), but anyone who can write to Redis can forge one.
        /// With them, they cannot; they can still write back an older genuine entry under
        /// its own key (after an `invalidate`, say) until it expires.
        pub fn mac_secrets<I, S>(mut self, secrets: I) -> Self
        where
            I: IntoIterator<Item = S>,
            S: AsRef<[u8]>,
        {
            match crate::envelope::MacKeys::new(secrets) {
                Ok(keys) => {
                    self.config.mac_keys = keys;
                    self.config.mac_keys_error = None;
                }
                Err(why) => self.config.mac_keys_error = Some(why),
            }
            self
        }

        /// Redis URL: `redis://[user:password@]host:port[/db]`, or over TLS
        /// `rediss://[user:password@]host:port[/db]` (needs the `tls` feature, on by default:
        /// without it `build()` fails naming the URL). TLS checks the server's certificate against the
        /// system's roots, or [`redis_tls_root_ca`](Self::redis_tls_root_ca);
        /// `rediss://...#insecure` checks nothing (tests only). Without a URL the cache is
        /// L1-only.
        pub fn redis(mut self, url: impl Into<String>) -> Self {
            self.config.redis_url = Some(url.into());
            self
        }

        /// Trust these CA certificates (PEM, one or more) for `rediss://` addresses instead
        /// of the system's roots: a private CA, or a self-signed server certificate. Used for
        /// the server, the sentinels and their master, and every Cluster node. Needs the `tls`
        /// feature and a `rediss://` address.
        pub fn redis_tls_root_ca(mut self, pem: impl Into<Vec<u8>>) -> Self {
            self.config.topology.tls.root_ca = Some(pem.into());
            self
        }

        /// Present this client certificate chain and its private key (PEM) on every
        /// `rediss://` connection, for servers that require one (`tls-auth-clients yes`).
        /// The key is never shown, in errors or in `Debug`. Needs the `tls` feature and a
        /// `rediss://` address.
        pub fn redis_tls_client_cert(
            mut self,
            cert_pem: impl Into<Vec<u8>>,
            key_pem: impl Into<Vec<u8>>,
        ) -> Self {
            self.config.topology.tls.client_cert = Some((cert_pem.into(), key_pem.into()));
            self
        }

        /// Deadline of every L2 operation; past it the operation counts as failed and the
        /// request goes on without L2. Default 50 ms.
        pub fn l2_deadline(mut self, deadline: Duration) -> Self {
            self.config.l2_deadline = deadline;
            self
        }

        /// Consecutive L2 failures that open the circuit breaker. Default 5.
        pub fn breaker_threshold(mut self, failures: u32) -> Self {
            self.config.breaker_threshold = failures;
            self
        }

        /// How long an open breaker skips L2 before letting one probe through. Default 2 s.
        pub fn breaker_cooldown(mut self, cooldown: Duration) -> Self {
            self.config.breaker_cooldown = cooldown;
            self
        }

        /// Largest encoded value that is stored; larger ones are served but not cached.
        /// Default 4 MiB.
        pub fn max_entry_bytes(mut self, bytes: usize) -> Self {
            self.config.max_entry_bytes = bytes;
            self
        }

        /// Values at least this large are lz4-compressed in Redis (when that makes them
        /// smaller). Default 1 KiB.
        pub fn compression_threshold(mut self, bytes: usize) -> Self {
            self.config.compression_threshold = bytes;
            self
        }

        /// How long a caller waits for a flight before it gives up with a timeout error (the
        /// flight itself goes on). Default 300 s.
        pub fn waiter_deadline(mut self, deadline: Duration) -> Self {
            self.config.waiter_deadline = deadline;
            self
        }

        /// Background L2 writes allowed at once; writes beyond it are dropped and counted.
        /// Default 256.
        pub fn l2_write_concurrency(mut self, writes: usize) -> Self {
            self.config.l2_write_concurrency = writes;
            self
        }

        /// Use the master that Redis Sentinel monitors under `master_name`, found through any
        /// of `sentinels` (`host:port`, or `redis://[:password@]host:port`). The cache asks
        /// again after a failover. With `rediss://` sentinels (feature `tls`) the master is
        /// reached over TLS too. Instead of [`redis`](Self::redis) or
        /// [`cluster`](Self::cluster).
        pub fn sentinel<I, S>(mut self, master_name: impl Into<String>, sentinels: I) -> Self
        where
            I: IntoIterator<Item = S>,
            S: Into<String>,
        {
            self.config.topology.sentinel_master = Some(master_name.into());
            self.config.topology.sentinels = sentinels.into_iter().map(Into::into).collect();
            self
        }

        /// Password of the sentinels themselves (`requirepass` in sentinel.conf), for those
        /// whose address carries none.
        pub fn sentinel_password(mut self, password: impl Into<String>) -> Self {
            self.config.topology.sentinel_password = Some(password.into());
            self
        }

        /// Use a Redis Cluster, found through any of `seed_nodes` (`host:port` or
        /// `redis://[:password@]host:port`; `rediss://` for TLS to every node, feature `tls`).
        /// A node that is down makes only its own keys miss. Instead of
        /// [`redis`](Self::redis) or [`sentinel`](Self::sentinel).
        pub fn cluster<I, S>(mut self, seed_nodes: I) -> Self
        where
            I: IntoIterator<Item = S>,
            S: Into<String>,
        {
            self.config.topology.cluster_nodes = seed_nodes.into_iter().map(Into::into).collect();
            self
        }

        /// Password of the Redis data nodes reached through [`sentinel`](Self::sentinel) or
        /// [`cluster`](Self::cluster). (With [`redis`](Self::redis), put it in the URL.)
        pub fn redis_password(mut self, password: impl Into<String>) -> Self {
            self.config.topology.redis_password = Some(password.into());
            self
        }

        /// Single-flight across instances: on an L2 miss, the flight takes a lease in Redis
        /// and the other instances wait for its value instead of calling the upstream too.
        /// Default true (has effect only with Redis).
        pub fn leases(mut self, yes: bool) -> Self {
            self.config.topology.leases = yes;
            self
        }

        /// Life of a lease; its holder renews it every third of it while it fetches, so this
        /// is how long the other instances wait after a holder dies before one of them
        /// fetches instead. Default 10 s.
        pub fn lease_ttl(mut self, ttl: Duration) -> Self {
            self.config.topology.lease_ttl = ttl;
            self
        }

        /// Listen on the invalidation channel (`{prefix}:invalidate`) so that what another
        /// instance invalidates leaves this instance's L1 too, and namespace generations
        /// bumped elsewhere are followed. Turn it off only for an instance that never needs
        /// either: it then keeps serving what others invalidated until its TTLs pass.
        /// Default true (has effect only with Redis).
        pub fn subscribe_invalidations(mut self, yes: bool) -> Self {
            self.config.topology.invalidation = yes;
            self
        }
    };
}
/// Configures a [`TieredCache`]. Every setter takes and returns the builder; nothing is
/// checked until [`build`](Self::build), which names the first bad knob.
#[must_use]
pub struct TieredCacheBuilder<V> {
    pub(crate) config: Config,
    _value: PhantomData<fn() -> V>,
}

impl<V> fmt::Debug for TieredCacheBuilder<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TieredCacheBuilder")
            .field("config", &self.config)
            .finish()
    }
}

impl<V> Default for TieredCacheBuilder<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> TieredCacheBuilder<V> {
    /// A builder with the defaults listed in the README's configuration table.
    pub fn new() -> Self {
        TieredCacheBuilder {
            config: Config::default(),
            _value: PhantomData,
        }
    }

    config_setters!();
}

impl<V> TieredCacheBuilder<V>
where
    V: Serialize + DeserializeOwned + Send + Sync + 'static,
{
    /// Validate every knob and build the cache. Succeeds when Redis is down: the cache
    /// then runs L1-only and starts using Redis when it answers. Needs a Tokio runtime.
    pub async fn build(self) -> Result<TieredCache<V>> {
        self.config.validate()?;
        let counters = Arc::new(Counters::default());
        let l2 = self.config.open_l2(&counters).await?;
        let cache = TieredCache::from_parts(self.config, l2, counters);
        cache.settle().await;
        Ok(cache)
    }
}

/// Configures an [`LlmCache`]: the upstream, the tiers (the same knobs as
/// [`TieredCacheBuilder`]), the key rules, prices and the temperature rule.
#[must_use]
pub struct LlmCacheBuilder {
    pub(crate) config: Config,
    upstream: Option<Arc<dyn Upstream>>,
    key_options: KeyOptions,
    prices: PriceTable,
    max_cacheable_temperature: Option<f64>,
    streaming: StreamSettings,
}

impl fmt::Debug for LlmCacheBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmCacheBuilder")
            .field("config", &self.config)
            .field("upstream", &self.upstream.as_ref().map(|_| "set"))
            .field("key_options", &self.key_options)
            .field("max_cacheable_temperature", &self.max_cacheable_temperature)
            .finish_non_exhaustive()
    }
}

impl Default for LlmCacheBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl LlmCacheBuilder {
    /// A builder with the README's defaults and no upstream yet.
    pub fn new() -> Self {
        LlmCacheBuilder {
            config: Config::default(),
            upstream: None,
            key_options: KeyOptions::default(),
            prices: PriceTable::default(),
            max_cacheable_temperature: None,
            streaming: StreamSettings {
                chunk_chars: 16,
                abort_abandoned: false,
                deadline: DEFAULT_STREAM_DEADLINE,
            },
        }
    }

    /// The provider to ask on a miss: [`OpenAiCompatible`](crate::OpenAiCompatible) or any
    /// [`Upstream`] of your own. Required.
    pub fn upstream(mut self, upstream: impl Upstream) -> Self {
        self.upstream = Some(Arc::new(upstream));
        self
    }

    /// An upstream already shared elsewhere.
    pub fn upstream_arc(mut self, upstream: Arc<dyn Upstream>) -> Self {
        self.upstream = Some(upstream);
        self
    }

    /// How requests become keys: ignored transport fields, opt-in text normalization.
    pub fn key_options(mut self, options: KeyOptions) -> Self {
        self.key_options = options;
        self
    }

    /// Prices used to report dollars saved. Default: the built-in 2026 table.
    pub fn prices(mut self, prices: PriceTable) -> Self {
        self.prices = prices;
        self
    }

    /// Do not cache requests whose temperature is above `max` (they go straight to the
    /// upstream). Default: cache every temperature.
    pub fn max_cacheable_temperature(mut self, max: f64) -> Self {
        self.max_cacheable_temperature = Some(max);
        self
    }

    /// Characters of text per chunk when a cached answer is replayed as a stream; 0 sends
    /// each text in one chunk. Default 16.
    pub fn stream_chunk_chars(mut self, chars: usize) -> Self {
        self.streaming.chunk_chars = chars;
        self
    }

    /// When every consumer of a live upstream stream goes away, stop reading it (nothing
    /// is stored). Default false: the stream is read to the end and stored, because its
    /// tokens are paid for either way.
    pub fn abort_abandoned_streams(mut self, yes: bool) -> Self {
        self.streaming.abort_abandoned = yes;
        self
    }

    /// The longest a streamed flight may take, from its start to the stream's last chunk;
    /// default [`DEFAULT_STREAM_DEADLINE`] (30 min). A stream outlives the
    /// `waiter_deadline` (which bounds callers waiting on a flight for a whole answer):
    /// its consumers get chunks as they come, for as long as this allows. When it is
    /// reached, the upstream stream is dropped, every consumer of the flight gets a
    /// `Timeout` error after the chunks it already has, and nothing is stored.
    pub fn stream_deadline(mut self, deadline: Duration) -> Self {
        self.streaming.deadline = deadline;
        self
    }

    config_setters!();

    /// Validate every knob and build the cache. Succeeds when Redis is down: the cache
    /// then runs L1-only and starts using Redis when it answers. Needs a Tokio runtime.
    pub async fn build(self) -> Result<LlmCache> {
        let upstream = self.upstream.ok_or_else(|| {
            Error::config("upstream", "required: give the provider to call on a miss")
        })?;
        upstream.validate()?;
        if let Some(t) = self.max_cacheable_temperature
            && !(t.is_finite() && t >= 0.0)
        {
            return Err(Error::config(
                "max_cacheable_temperature",
                format!("{t} is not a temperature (give a finite number >= 0)"),
            ));
        }
        positive("stream_deadline", self.streaming.deadline)?;
        self.config.validate()?;
        let counters = Arc::new(Counters::default());
        let l2 = self.config.open_l2(&counters).await?;
        let tiers = TieredCache::<ChatResponse>::from_parts(self.config, l2, counters);
        tiers.settle().await;
        Ok(LlmCache::from_parts(
            tiers,
            upstream,
            self.key_options,
            self.prices,
            self.max_cacheable_temperature,
            self.streaming,
        ))
    }
}
