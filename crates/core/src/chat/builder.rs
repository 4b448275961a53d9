//! `LlmCacheBuilder`: the upstream, the key rules, prices, the temperature rule and the
//! streaming knobs, on top of the tiers' own knobs (`config_setters!`). `build()` validates
//! every knob and names the bad one; it never makes a network call of its own.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::chat::LlmCache;
use crate::chat::StoredAnswer;
use crate::chat::key::KeyOptions;
use crate::chat::pricing::PriceTable;
use crate::chat::savings::DEFAULT_MAX_MODEL_LABELS;
use crate::chat::stream_flight::StreamSettings;
use crate::chat::weight::ChatCodec;
use crate::embeddings::{self, Embeddings, StoredEmbedding};
use crate::error::{Error, Result};
use crate::request::EncodingFormat;
use crate::semantic::{Semantic, SemanticConfig};
use crate::tiered::TieredCache;
use crate::tiered::builder::config_setters;
use crate::tiered::codec::Hooks;
use crate::tiered::config::{Config, positive};
use crate::tiered::stats::Counters;
use crate::upstream::Upstream;

/// The default of [`LlmCacheBuilder::stream_deadline`]: how long a streamed flight may last.
pub const DEFAULT_STREAM_DEADLINE: Duration = Duration::from_secs(30 * 60);
/// Configures an [`LlmCache`]: the upstream, the tiers (the same knobs as
/// [`TieredCacheBuilder`](crate::TieredCacheBuilder)), the key rules, prices and the temperature rule.
///
/// Its L1 holds answers decoded (a hit is a reference-count increment, never a decode),
/// compacted when they are fetched or read from Redis, and charged against
/// [`l1_max_bytes`](Self::l1_max_bytes) by what they hold in memory: a 2 KB answer costs
/// about 2.9 KB of process memory, one in OpenAI's full shape about 4.8 KB more than its
/// JSON (each of its extra JSON objects is a map node of about 640 bytes).
///
/// ```
/// use std::time::Duration;
/// use llm_cache_core::LlmCache;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let builder = LlmCache::builder()
///     .l1_max_bytes(128 << 20)
///     .l1_ttl(Duration::from_secs(300))
///     .max_cacheable_temperature(0.5) // hotter requests bypass the cache
///     .stream_chunk_chars(32);
/// // Nothing is checked before `build()`, which names the bad knob: here the missing
/// // upstream (`.upstream(OpenAiCompatible::new(base_url))`, or an `Upstream` of your own).
/// let err = builder.build().await.unwrap_err();
/// assert!(err.is_config() && err.to_string().contains("`upstream`"));
/// # }
/// ```
#[must_use]
pub struct LlmCacheBuilder {
    pub(crate) config: Config,
    upstream: Option<Arc<dyn Upstream>>,
    key_options: KeyOptions,
    prices: PriceTable,
    max_cacheable_temperature: Option<f64>,
    streaming: StreamSettings,
    max_model_labels: usize,
    embeddings: embeddings::Settings,
    embeddings_l1_max_bytes: u64,
    semantic: Option<SemanticConfig>,
}

impl fmt::Debug for LlmCacheBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LlmCacheBuilder")
            .field("config", &self.config)
            .field("upstream", &self.upstream.as_ref().map(|_| "set"))
            .field("key_options", &self.key_options)
            .field("max_cacheable_temperature", &self.max_cacheable_temperature)
            .field("max_model_labels", &self.max_model_labels)
            .field("embeddings", &self.embeddings)
            .field("embeddings_l1_max_bytes", &self.embeddings_l1_max_bytes)
            .field("semantic", &self.semantic)
            .finish_non_exhaustive()
    }
}

impl Default for LlmCacheBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl LlmCacheBuilder {
    /// A builder with the defaults of docs/operations.md's configuration table and no upstream yet.
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
            max_model_labels: DEFAULT_MAX_MODEL_LABELS,
            embeddings: embeddings::Settings::default(),
            embeddings_l1_max_bytes: embeddings::DEFAULT_L1_MAX_BYTES,
            semantic: None,
        }
    }

    crate::tiered::setters! {
        /// The provider to ask on a miss: [`OpenAiCompatible`](crate::OpenAiCompatible) or any
        /// [`Upstream`] of your own. Required.
        pub fn upstream(upstream: impl Upstream) { upstream = Some(Arc::new(upstream)) }

        /// An upstream already shared elsewhere.
        pub fn upstream_arc(upstream: Arc<dyn Upstream>) { upstream = Some(upstream) }

        /// How requests become keys: ignored transport fields, opt-in text normalization.
        pub fn key_options(options: KeyOptions) { key_options = options }

        /// Prices used to report dollars saved. Default: the built-in 2026 table.
        pub fn prices(prices: PriceTable) { prices = prices }

        /// Do not cache requests whose temperature is above `max` (they go straight to the
        /// upstream). Default: cache every temperature.
        pub fn max_cacheable_temperature(max: f64) { max_cacheable_temperature = Some(max) }

        /// Characters of text per chunk when a cached answer is replayed as a stream; 0 sends
        /// each text in one chunk. Default 16.
        pub fn stream_chunk_chars(chars: usize) { streaming.chunk_chars = chars }

        /// When every consumer of a live upstream stream goes away, stop reading it (nothing
        /// is stored). Default false: the stream is read to the end and stored, because its
        /// tokens are paid for either way.
        pub fn abort_abandoned_streams(yes: bool) { streaming.abort_abandoned = yes }

        /// The longest a streamed flight may take, from its start to the stream's last chunk;
        /// default [`DEFAULT_STREAM_DEADLINE`] (30 min). A stream outlives the
        /// `waiter_deadline` (which bounds callers waiting on a flight for a whole answer):
        /// its consumers get chunks as they come, for as long as this allows. When it is
        /// reached, the upstream stream is dropped, every consumer of the flight gets a
        /// `Timeout` error after the chunks it already has, and nothing is stored.
        pub fn stream_deadline(deadline: Duration) { streaming.deadline = deadline }

        /// How many models get counters and series of their own (default
        /// [`DEFAULT_MAX_MODEL_LABELS`], 64): every new `model` string a caller sends would
        /// otherwise add series and memory that are never freed. Past the cap, further models
        /// are counted under `model="other"` ([`OTHER_MODELS`](crate::OTHER_MODELS)), in
        /// [`LlmStats::per_model`](crate::LlmStats::per_model) and in the exported series;
        /// their dollars saved still use their own price. A model named `other` is counted
        /// there too. Models keep their place once seen: the first ones seen win.
        pub fn max_model_labels(n: usize) { max_model_labels = n }

        /// The most inputs one upstream `/embeddings` call carries (default
        /// [`DEFAULT_MAX_EMBEDDING_INPUTS_PER_CALL`](crate::DEFAULT_MAX_EMBEDDING_INPUTS_PER_CALL),
        /// 2,048, OpenAI's limit): a request's missing inputs are split into calls of at most
        /// this many, made at once.
        pub fn max_embedding_inputs_per_call(n: usize) { embeddings.max_inputs_per_call = n }

        /// The `encoding_format` the cache asks the upstream for when it fetches embeddings,
        /// whatever format the caller asked for (each caller gets its own). Default
        /// [`EncodingFormat::Base64`]: exact f32 values in a quarter of the bytes of their
        /// text. Set [`EncodingFormat::Float`] for an upstream that refuses `base64`; numbers
        /// that are not exactly f32 are then kept as f64 (8 bytes each).
        pub fn embeddings_upstream_format(format: EncodingFormat) {
            embeddings.upstream_format = format
        }

        /// The most process memory the in-process tier of embedding vectors may hold, bounded
        /// like [`l1_max_bytes`](Self::l1_max_bytes) and in addition to it (default
        /// [`DEFAULT_EMBEDDINGS_L1_MAX_BYTES`](crate::DEFAULT_EMBEDDINGS_L1_MAX_BYTES), 64 MiB,
        /// about 10,000 vectors of 1,536 dimensions); 0 keeps no vector in process (Redis
        /// only).
        pub fn embeddings_l1_max_bytes(bytes: u64) { embeddings_l1_max_bytes = bytes }

        /// Enable the semantic cache (off by default): after an exact miss, a request that
        /// opts in with [`CacheControl::semantic`](crate::CacheControl::semantic) may be
        /// answered with the entry of an earlier request of the same exact scope whose last
        /// user message means the same, as the embedding model and the lexical guard judge
        /// it. See docs/semantic.md.
        pub fn semantic(config: SemanticConfig) { semantic = Some(config) }
    }

    config_setters!();

    /// Validate every knob and build the cache. Succeeds when Redis is down: the cache
    /// then runs L1-only and starts using Redis when it answers. Needs a Tokio runtime.
    pub async fn build(self) -> Result<LlmCache> {
        let upstream = self.upstream.clone().ok_or_else(|| {
            Error::config("upstream", "required: give the provider to call on a miss")
        })?;
        self.build_parts(upstream).await
    }

    /// Build the cache; without an upstream, `no_upstream` stands in for it (an HTTP
    /// layer that brings its upstream with every request: the cache's own `chat` then
    /// answers `no_upstream`'s error).
    #[doc(hidden)]
    pub async fn build_or(self, no_upstream: Arc<dyn Upstream>) -> Result<LlmCache> {
        let upstream = self.upstream.clone().unwrap_or(no_upstream);
        self.build_parts(upstream).await
    }

    async fn build_parts(self, upstream: Arc<dyn Upstream>) -> Result<LlmCache> {
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
        if self.max_model_labels == 0 {
            return Err(Error::config(
                "max_model_labels",
                "must be at least 1 (further models are counted as \"other\")",
            ));
        }
        if self.embeddings_l1_max_bytes != 0 && self.embeddings_l1_max_bytes < 4096 {
            return Err(Error::config(
                "embeddings_l1_max_bytes",
                format!(
                    "{} is too small: 0 keeps no vector in process, otherwise give at least 4096",
                    self.embeddings_l1_max_bytes
                ),
            ));
        }
        if self.embeddings.max_inputs_per_call == 0 {
            return Err(Error::config(
                "max_embedding_inputs_per_call",
                "must be at least 1",
            ));
        }
        if let Some(Err((knob, why))) = self.semantic.as_ref().map(SemanticConfig::check) {
            return Err(Error::config(knob, why));
        }
        self.config.validate()?;
        let counters = Arc::new(Counters::default());
        let l2 = self.config.open_l2(&counters).await?;
        // Vectors have a tier of their own (same Redis, prefix and breaker; their own L1
        // bound and compact codec); their keys use the chat tier's namespace generations.
        let mut vectors_config = self.config.clone();
        vectors_config.l1_max_bytes = self.embeddings_l1_max_bytes;
        // f32 vectors barely compress (lz4 saves a few percent): never spend the CPU.
        vectors_config.compression_threshold = usize::MAX;
        let vectors = TieredCache::<StoredEmbedding>::from_parts_with(
            vectors_config,
            l2.clone(),
            Arc::new(Counters::sibling()),
            Hooks {
                codec: Arc::new(embeddings::EmbeddingCodec),
                weigher: Some(Arc::new(embeddings::weigh)),
            },
        );
        vectors.settle().await;
        let embeddings = Embeddings::new(vectors, self.embeddings);
        let bodies = TieredCache::<crate::bodies::StoredBody>::from_parts_with(
            self.config.clone(),
            l2.clone(),
            Arc::new(Counters::sibling()),
            Hooks::default(),
        );
        bodies.settle().await;
        let bodies = crate::bodies::BodyCache::new(bodies);
        // Answers are weighed by what they hold in memory, and compacted once decoded.
        let hooks = Hooks {
            codec: Arc::new(ChatCodec),
            weigher: Some(Arc::new(|answer: &StoredAnswer, _| answer.weight())),
        };
        let tiers =
            TieredCache::<StoredAnswer>::from_parts_with(self.config, l2.clone(), counters, hooks);
        tiers.settle().await;
        let cache = LlmCache::from_parts(
            (tiers, embeddings, bodies),
            upstream,
            self.key_options,
            self.prices,
            self.max_cacheable_temperature,
            self.streaming,
            self.max_model_labels,
        );
        let semantic = self.semantic.map(|c| {
            // The chat tier's Redis (if any) and keyspace, which the semantic index shares.
            let (l2, keyspace) = cache.tiers().l2_parts();
            Semantic::new(c, l2.map(|l2| (Arc::clone(l2), keyspace.clone())))
        });
        Ok(cache.with_semantic(semantic).publish_with_tiers())
    }
}
