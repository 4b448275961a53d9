//! `TieredCacheBuilder`, and the `config_setters!` macro that writes the tiers' knobs once
//! for every builder that sits on the engine. Setters never fail; nothing is checked until
//! `build()`, which must name the first bad knob before it opens any connection.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::TieredCache;
use crate::codec::{Codec, Hooks, JsonCodec, Weigher};
use crate::config::Config;
use crate::error::Result;
use crate::stats::Counters;

/// Builder setters that store their argument and return the builder:
/// `pub fn name(arg: T) { field.path = value }` is `pub fn name(mut self, arg: T) -> Self`,
/// which sets `self.field.path = value` and returns `self`, or `self.then()` when written
/// `{ field.path = value; self.then() }`. Attributes (docs, `#[must_use]`) are kept.
#[doc(hidden)]
#[macro_export]
macro_rules! setters {
    ($(
        $(#[$attr:meta])*
        $vis:vis fn $name:ident($arg:ident: $ty:ty) {
            $($field:tt).+ = $value:expr $(; self.$then:ident())?
        }
    )*) => {
        $(
            $(#[$attr])*
            $vis fn $name(mut self, $arg: $ty) -> Self {
                self.$($field).+ = $value;
                self $(.$then())?
            }
        )*
    };
}

/// The knobs of the tiers, written once for [`TieredCacheBuilder`] and every builder of a
/// layer on the engine (whose struct has a `config: Config` field).
#[doc(hidden)]
#[macro_export]
macro_rules! config_setters {
    () => {
        $crate::setters! {
            /// L1 bound in bytes of process memory; 0 disables L1. Default 256 MiB.
            ///
            /// L1 holds each value decoded, behind an `Arc`, so that a hit hands it out
            /// without decoding (holding only its encoded bytes would make every hit decode).
            /// Each entry is charged what it holds: the value as the weigher counts it (the LLM
            /// cache holds most answers as one arena of their strings and counts that; an
            /// answer held whole, its structs, every string and vector at its capacity, each
            /// JSON map's nodes and each allocation's rounding), plus the entry's own cost (key
            /// and moka's per-entry structures, about 380 bytes), plus 1/16 for what the
            /// allocator keeps but cannot reuse while L1 evicts and fills. Filled far past the
            /// bound, with glibc's allocator, the process grows by about the bound
            /// (tests/engine/l1_memory.rs checks 1.2, for answers of 70 bytes to 50 KB, filled
            /// from one thread); filled from several runtime threads at once, by up to about
            /// 1.4 times for the largest answers, because glibc keeps a heap (arena) per thread
            /// and each keeps freed room the others cannot use (`MALLOC_ARENA_MAX=2` or another
            /// allocator narrows it).
            pub fn l1_max_bytes(bytes: u64) { config.l1_max_bytes = bytes }

            /// Longest time an entry stays in L1; never longer than its remaining L2 life.
            /// Default 10 min.
            pub fn l1_ttl(ttl: Duration) { config.l1_ttl = ttl }

            /// Lifetime of an entry in Redis. Default 24 h.
            pub fn l2_ttl(ttl: Duration) { config.l2_ttl = ttl }

            /// Prefix of every Redis key: entries are `{prefix}:{<sha256 hex>}` (the braces are a
            /// Cluster hash tag; the same key holds the lease marker while a flight fetches the
            /// entry), with `{prefix}:generations`, the channel `{prefix}:invalidate` and the
            /// keys a layer above names with `Keyspace::layer_key` beside them. Default
            /// `ai:cache`. 1 to 128 bytes, no whitespace, control characters or braces (`build()`
            /// says which): with this layout no two distinct prefixes can share a key.
            pub fn key_prefix(prefix: impl Into<String>) { config.key_prefix = prefix.into() }

            /// How long cached entries (L1, and L2 under the namespace generations it knows) are
            /// served while this instance cannot hear invalidations although Redis is partly
            /// reachable: its subscription is lost, or the namespace generations cannot be read
            /// (in a Cluster, the node that holds them is down). Counted from when the entry was
            /// stored or the instance stopped hearing, whichever is later; past it the cache
            /// fetches instead (`Stats::unsynced_skips`). When Redis is wholly away L1 is kept
            /// (nobody can invalidate). When the instance hears again it clears its L1.
            /// Default 5 s.
            pub fn unsynced_grace(grace: Duration) { config.unsynced_grace = grace }
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
            match $crate::envelope::MacKeys::new(secrets) {
                Ok(keys) => {
                    self.config.mac_keys = keys;
                    self.config.mac_keys_error = None;
                }
                Err(why) => self.config.mac_keys_error = Some(why),
            }
            self
        }

        /// Redis URL: `redis://[user:password@]host:port[/db]`, or over TLS
        /// `rediss://[user:password@]host:port[/db]` (needs the `redis-tls` feature, on by default in `llm-cache`:
        /// without it `build()` fails naming the URL). TLS checks the server's certificate against the
        /// system's roots, or [`redis_tls_root_ca`](Self::redis_tls_root_ca);
        /// `rediss://...#insecure` checks nothing (tests only). Without a URL the cache is
        /// L1-only.
        ///
        /// Takes a URL, or a [`Redis`]($crate::Redis) value for any topology, checked when
        /// it is made: `Redis::url(..)`, `Redis::sentinel(..)`, `Redis::cluster(..)`. Giving
        /// two topologies (this and [`sentinel`](Self::sentinel), say) fails `build()`,
        /// naming them.
        pub fn redis(mut self, redis: impl Into<$crate::Redis>) -> Self {
            redis.into().apply(&mut self.config);
            self
        }

        $crate::setters! {
            /// Trust these CA certificates (PEM, one or more) for `rediss://` addresses instead
            /// of the system's roots: a private CA, or a self-signed server certificate. Used for
            /// the server, the sentinels and their master, and every Cluster node. Needs the
            /// `redis-tls` feature and a `rediss://` address.
            pub fn redis_tls_root_ca(pem: impl Into<Vec<u8>>) {
                config.topology.tls.root_ca = Some(pem.into())
            }
        }

        /// Present this client certificate chain and its private key (PEM) on every
        /// `rediss://` connection, for servers that require one (`tls-auth-clients yes`).
        /// The key is never shown, in errors or in `Debug`. Needs the `redis-tls` feature and a
        /// `rediss://` address.
        pub fn redis_tls_client_cert(
            mut self,
            cert_pem: impl Into<Vec<u8>>,
            key_pem: impl Into<Vec<u8>>,
        ) -> Self {
            self.config.topology.tls.client_cert = Some((cert_pem.into(), key_pem.into()));
            self
        }

        /// Deadline of every L2 operation on a request's path; past it the operation counts
        /// as failed and the request goes on without L2. Default 50 ms. Work on no
        /// request's path (writes behind, lease renewals and releases) gets ten times it, at
        /// least 500 ms, and its timeouts do not open the breaker.
        pub fn l2_deadline(mut self, deadline: Duration) -> Self {
            self.config.l2_deadline = deadline;
            if !self.config.topology.lease_ttl_set {
                self.config.topology.lease_ttl = $crate::l2::default_lease_ttl(deadline);
            }
            self
        }

        $crate::setters! {
            /// Consecutive L2 failures that open the circuit breaker. Default 5.
            pub fn breaker_threshold(failures: u32) { config.breaker_threshold = failures }

            /// How long an open breaker skips L2 before letting one probe through. Default 2 s.
            pub fn breaker_cooldown(cooldown: Duration) { config.breaker_cooldown = cooldown }

            /// Largest encoded value that is stored; larger ones are served but not cached.
            /// Default 4 MiB.
            pub fn max_entry_bytes(bytes: usize) { config.max_entry_bytes = bytes }

            /// Values at least this large are lz4-compressed in Redis (when that makes them
            /// smaller). Default 1 KiB.
            pub fn compression_threshold(bytes: usize) { config.compression_threshold = bytes }

            /// How long a caller waits for a flight before it gives up with a timeout error (the
            /// flight itself goes on). Default 300 s.
            pub fn waiter_deadline(deadline: Duration) { config.waiter_deadline = deadline }

            /// Background L2 writes allowed at once. Writes beyond it wait their turn in the
            /// background (a batch's in waves), up to 16 times as many queued or running; only
            /// past that is a write dropped and counted (`Stats::dropped_writes`). A write that
            /// finds Redis skipped or slow is tried again for up to 10 s. Default 256.
            pub fn l2_write_concurrency(writes: usize) { config.l2_write_concurrency = writes }
        }

        /// Use the master that Redis Sentinel monitors under `master_name`, found through any
        /// of `sentinels` (`host:port`, or `redis://[:password@]host:port`). The cache asks
        /// again after a failover. With `rediss://` sentinels (feature `redis-tls`) the master is
        /// reached over TLS too. Instead of [`redis`](Self::redis) or
        /// [`cluster`](Self::cluster); the same as `redis(Redis::sentinel(..)?)`, checked at
        /// `build()`.
        pub fn sentinel<I, S>(mut self, master_name: impl Into<String>, sentinels: I) -> Self
        where
            I: IntoIterator<Item = S>,
            S: Into<String>,
        {
            self.config.topology.sentinel_master = Some(master_name.into());
            self.config.topology.sentinels = sentinels.into_iter().map(Into::into).collect();
            self
        }

        $crate::setters! {
            /// Password of the sentinels themselves (`requirepass` in sentinel.conf), for those
            /// whose address carries none.
            pub fn sentinel_password(password: impl Into<String>) {
                config.topology.sentinel_password = Some(password.into())
            }
        }

        /// Use a Redis Cluster, found through any of `seed_nodes` (`host:port` or
        /// `redis://[:password@]host:port`; `rediss://` for TLS to every node, feature `redis-tls`).
        /// A node that is down makes only its own keys miss. Instead of
        /// [`redis`](Self::redis) or [`sentinel`](Self::sentinel); the same as
        /// `redis(Redis::cluster(..)?)`, checked at `build()`.
        pub fn cluster<I, S>(mut self, seed_nodes: I) -> Self
        where
            I: IntoIterator<Item = S>,
            S: Into<String>,
        {
            self.config.topology.cluster_nodes = seed_nodes.into_iter().map(Into::into).collect();
            self
        }

        $crate::setters! {
            /// Password of the Redis data nodes reached through [`sentinel`](Self::sentinel) or
            /// [`cluster`](Self::cluster). (With [`redis`](Self::redis), put it in the URL.)
            pub fn redis_password(password: impl Into<String>) {
                config.topology.redis_password = Some(password.into())
            }

            /// Single-flight across instances: on an L2 miss, the flight takes a lease in Redis
            /// and the other instances wait for its value instead of calling the upstream too.
            /// Default true (has effect only with Redis).
            pub fn leases(yes: bool) { config.topology.leases = yes }
        }

        /// Life of a lease; its holder renews it every third of it while it fetches, so this
        /// is the longest the other instances wait after a holder stops renewing (it died,
        /// was killed, lost its link or its breaker opened) before one of them fetches
        /// instead. A marker without an expiry, or living longer than this, is cut to it by
        /// the first waiter. Default 2 s (or four `l2_deadline`s when that is longer).
        pub fn lease_ttl(mut self, ttl: Duration) -> Self {
            self.config.topology.lease_ttl = ttl;
            self.config.topology.lease_ttl_set = true;
            self
        }

        $crate::setters! {
            /// Listen on the invalidation channel (`{prefix}:invalidate`) so that what another
            /// instance invalidates leaves this instance's L1 too, and namespace generations
            /// bumped elsewhere are followed. Turn it off only for an instance that never needs
            /// either: it then keeps serving what others invalidated until its TTLs pass.
            /// Default true (has effect only with Redis).
            pub fn subscribe_invalidations(yes: bool) { config.topology.invalidation = yes }
        }
    };
}
pub use crate::config_setters;

/// Configures a [`TieredCache`]. Every setter takes and returns the builder; nothing is
/// checked until [`build`](Self::build), which names the first bad knob.
///
/// ```
/// use std::time::Duration;
/// use llm_cache_engine::TieredCache;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> llm_cache_engine::Result<()> {
/// let thumbnails = TieredCache::<Vec<u8>>::builder()
///     .l1_max_bytes(64 << 20)
///     .l1_ttl(Duration::from_secs(60))
///     .key_prefix("thumbs") // with `.redis(url)`: entries are `thumbs:{<hex>}`
///     .build()
///     .await?;
/// assert_eq!(thumbnails.inflight(), 0);
///
/// let err = TieredCache::<Vec<u8>>::builder().key_prefix("a{b}").build().await.unwrap_err();
/// assert!(err.is_config() && err.to_string().contains("`key_prefix`"));
/// # Ok(())
/// # }
/// ```
#[must_use]
pub struct TieredCacheBuilder<V> {
    pub(crate) config: Config,
    codec: Option<Arc<dyn Codec<V>>>,
    weigher: Option<Weigher<V>>,
    _value: PhantomData<fn() -> V>,
}

impl<V> fmt::Debug for TieredCacheBuilder<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let set = |yes: bool| if yes { "custom" } else { "default" };
        f.debug_struct("TieredCacheBuilder")
            .field("config", &self.config)
            .field("codec", &set(self.codec.is_some()))
            .field("weigher", &set(self.weigher.is_some()))
            .finish()
    }
}

impl<V> Default for TieredCacheBuilder<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V> TieredCacheBuilder<V> {
    /// A builder with the defaults listed in docs/operations.md's configuration table.
    pub fn new() -> Self {
        TieredCacheBuilder {
            config: Config::default(),
            codec: None,
            weigher: None,
            _value: PhantomData,
        }
    }

    crate::setters! {
        /// How values are encoded into their L2 payload and decoded back. Default
        /// [`JsonCodec`] (serde_json). Called only on fills and L2 reads, never
        /// on an L1 hit. Every instance sharing a key prefix must use the same codec: an entry
        /// that does not decode is a miss, removed from Redis (see [`Codec`]).
        pub fn codec(codec: impl Codec<V>) { codec = Some(Arc::new(codec)) }
    }

    /// What a value costs in memory while L1 holds it, from the value and the length of its
    /// encoded payload (uncompressed): its `Arc` allocation and everything it owns on the
    /// heap (see [`Weigher`]); the engine adds the entry's own cost and
    /// charges the sum against [`l1_max_bytes`](Self::l1_max_bytes). Default
    /// [`default_weight`](crate::default_weight): the `Arc` allocation plus the encoded
    /// length. Use it when the encoded length is a poor measure of the heap a value holds
    /// (structs with many fields, maps, spare capacity). Called when a value enters L1 (a
    /// fill or an L2 hit), never on an L1 hit; it should be cheap and must not panic.
    pub fn weigher<F>(mut self, weigher: F) -> Self
    where
        F: Fn(&V, usize) -> u32 + Send + Sync + 'static,
    {
        self.weigher = Some(Arc::new(weigher));
        self
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
        let hooks = Hooks {
            codec: self.codec.unwrap_or_else(|| Arc::new(JsonCodec)),
            weigher: self.weigher,
        };
        let cache = TieredCache::from_parts_with(self.config, l2, counters, hooks);
        cache.settle().await;
        Ok(cache)
    }
}
