//! The `prometheus` feature: install a Prometheus recorder for the `metrics` facade, with the
//! buckets `ai_cache_latency_seconds` needs, and serve it over HTTP or render it on demand.
//! An application that already installs a recorder needs none of this, and nothing in the
//! cache may depend on it: the cache records into whichever recorder is installed when it
//! is built.
//!
//! ```no_run
//! # async fn run() -> llm_cache_core::Result<()> {
//! // First the recorder, then the cache: the cache takes its metric handles when built.
//! let metrics = llm_cache_core::prometheus::serve("127.0.0.1:9000".parse().unwrap())?;
//! let cache = llm_cache_core::LlmCache::builder()
//!     .upstream(llm_cache_core::OpenAiCompatible::new("https://api.openai.com/v1"))
//!     .build()
//!     .await?;
//! // `curl http://127.0.0.1:9000/metrics`, or render the same text yourself:
//! let text = metrics.render();
//! # let _ = (cache, text); Ok(()) }
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use metrics_exporter_prometheus::{BuildError, Matcher};
pub use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::error::{Error, Result};
use crate::tiered::stats::LATENCY;

/// Buckets of `ai_cache_latency_seconds`, in seconds: 1 µs to 30 s, three per decade, so an
/// L1 hit (a few hundred ns to a few µs), a Redis round trip (~100 µs to ms) and an upstream
/// call (hundreds of ms to tens of s) each land in buckets of their own.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_001,
    0.000_002_5,
    0.000_005,
    0.000_01,
    0.000_025,
    0.000_05,
    0.000_1,
    0.000_25,
    0.000_5,
    0.001,
    0.002_5,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
];

/// How often the recorder drains histogram samples when no exporter task does it.
const UPKEEP: Duration = Duration::from_secs(5);

fn build_error(e: BuildError) -> Error {
    Error::config("prometheus", e)
}

/// A [`PrometheusBuilder`] with [`LATENCY_BUCKETS`] set for `ai_cache_latency_seconds`. Add
/// your own settings (global labels, an allow-list of scrapers, buckets of your own
/// histograms) and install it yourself, or use [`serve`] / [`install`].
pub fn builder() -> PrometheusBuilder {
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(LATENCY.to_string()), LATENCY_BUCKETS)
        .expect("LATENCY_BUCKETS is not empty")
}

/// Install a Prometheus recorder as the process's global `metrics` recorder and serve it over
/// HTTP on `addr` (`GET /metrics`; the listener answers every path but `/health` with the
/// exposition text). Returns a handle that renders the same text.
///
/// Call it before building the cache, inside a Tokio runtime. Errors (kind `Config`) when
/// `addr` cannot be bound or a recorder is already installed.
pub fn serve(addr: SocketAddr) -> Result<PrometheusHandle> {
    serve_with(builder(), addr)
}

/// [`serve`] with a builder of your own (start from [`builder`] to keep the buckets).
pub fn serve_with(builder: PrometheusBuilder, addr: SocketAddr) -> Result<PrometheusHandle> {
    let (recorder, exporter) = builder
        .with_http_listener(addr)
        .build()
        .map_err(build_error)?;
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| Error::config("prometheus", e))?;
    tokio::spawn(async move {
        if let Err(e) = exporter.await {
            tracing::warn!(%addr, error = ?e, "the /metrics listener stopped");
        }
    });
    Ok(handle)
}

/// Install a Prometheus recorder as the global `metrics` recorder without any listener:
/// serve `handle.render()` from your own HTTP server. Histogram samples are drained every
/// 5 s in the background (a Tokio task inside a runtime, a thread otherwise).
pub fn install() -> Result<PrometheusHandle> {
    let recorder = builder().build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).map_err(|e| Error::config("prometheus", e))?;
    let upkeep = handle.clone();
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(UPKEEP).await;
                upkeep.run_upkeep();
            }
        });
    } else {
        std::thread::Builder::new()
            .name("llm-cache-metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP);
                    upkeep.run_upkeep();
                }
            })
            .map_err(|e| Error::config("prometheus", format!("cannot start upkeep: {e}")))?;
    }
    Ok(handle)
}
