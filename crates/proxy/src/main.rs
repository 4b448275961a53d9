//! `llm-cache-proxy`: an OpenAI-compatible caching proxy. Point any OpenAI SDK's base URL
//! at it; repeats are answered from the in-process L1 and the shared Redis L2, and
//! identical concurrent requests cost one upstream call. Flags and environment are listed
//! by `--help`; docs/http-front.md says how to run it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use llm_cache_core::{LlmCache, OpenAiCompatible, RetryPolicy};
use llm_cache_serve::CallerKeys;
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

/// An OpenAI-compatible caching proxy: POST /v1/chat/completions (JSON and streamed),
/// POST /v1/embeddings, /v1/responses, /v1/completions, GET /v1/models,
/// POST /v1/cache/invalidate, /livez, /health, /stats, /metrics, /dashboard. Callers authenticate
/// with caller keys bound to namespaces (--caller-keys-file, --caller-key), or forward their
/// own provider key (--pass-through), or nobody authenticates (--open, for a private
/// network).
#[derive(Debug, Parser)]
#[command(name = "llm-cache-proxy", version)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "LLM_CACHE_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// The provider's OpenAI-compatible base URL (chat misses go to its /chat/completions,
    /// embeddings to its /embeddings, GET /v1/models to its /models). Its host, path and
    /// query are part of every key.
    #[arg(
        long,
        env = "LLM_CACHE_UPSTREAM_URL",
        default_value = "https://api.openai.com/v1"
    )]
    upstream_url: String,

    /// The provider key the proxy sends (Authorization: Bearer). Prefer the environment
    /// variable or --upstream-key-file: a flag's value is visible to other local users.
    #[arg(long, env = "OPENAI_API_KEY", hide_env_values = true)]
    upstream_key: Option<String>,

    /// Read the provider key from this file (one line; surrounding whitespace ignored).
    #[arg(
        long,
        env = "LLM_CACHE_UPSTREAM_KEY_FILE",
        conflicts_with = "upstream_key"
    )]
    upstream_key_file: Option<PathBuf>,

    /// Forward each caller's own credential headers (Authorization, api-key,
    /// OpenAI-Organization, OpenAI-Project...) to the provider and scope the cache by
    /// their SHA-256, instead of holding a provider key: two keys never share an answer.
    #[arg(long, env = "LLM_CACHE_PASS_THROUGH")]
    pass_through: bool,

    /// With --pass-through: another request header that carries a credential, forwarded
    /// and in the key scope (repeatable). Headers whose names contain auth, key, token,
    /// secret or cookie (ocp-apim-subscription-key, x-goog-api-key...) are credentials
    /// already.
    #[arg(long = "credential-header", value_name = "NAME")]
    credential_headers: Vec<String>,

    /// File of accepted caller keys, one per line: `<namespace> <key | sha256:<hex>>
    /// [allow=refresh,bypass,no-store,invalidate|all]` (# comments). Keys share answers only
    /// when bound to the same namespace; refresh, bypass, no-store and POST
    /// /v1/cache/invalidate (of the key's own namespace) need `allow=`.
    #[arg(long, env = "LLM_CACHE_CALLER_KEYS_FILE")]
    caller_keys_file: Option<PathBuf>,

    /// One accepted caller key, as a line of the caller-keys file (repeatable; in the
    /// environment, lines separated by `;`).
    #[arg(
        long = "caller-key",
        env = "LLM_CACHE_CALLER_KEYS",
        hide_env_values = true,
        value_delimiter = ';'
    )]
    caller_keys: Vec<String>,

    /// Accept every caller without a key (all directives allowed): only behind a network
    /// boundary or a gateway that authenticates. POST /v1/cache/invalidate then needs the
    /// admin key (--admin-key-file); without one it is refused.
    #[arg(long, env = "LLM_CACHE_OPEN")]
    open: bool,

    /// The admin key: /health, /stats, /metrics (and the dashboard's numbers) then need
    /// `Authorization: Bearer <admin key>` (/livez stays open, for load balancers); in --open mode it is the key that may invalidate
    /// (POST /v1/cache/invalidate). Prefer the environment variable or --admin-key-file.
    #[arg(long, env = "LLM_CACHE_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,

    /// Read the admin key from this file (one line; surrounding whitespace ignored).
    #[arg(long, env = "LLM_CACHE_ADMIN_KEY_FILE", conflicts_with = "admin_key")]
    admin_key_file: Option<PathBuf>,

    /// Namespace every request is bound to in --open and --pass-through modes
    /// (x-llm-cache-namespace nests inside it).
    #[arg(long, env = "LLM_CACHE_NAMESPACE", default_value = "")]
    namespace: String,

    /// Redis URL for the shared L2 (redis:// or rediss://); without any Redis option the
    /// cache is L1-only.
    #[arg(long, env = "LLM_CACHE_REDIS_URL")]
    redis: Option<String>,

    /// Redis Sentinel address (host:port; repeatable), with --sentinel-master.
    #[arg(
        long = "redis-sentinel",
        env = "LLM_CACHE_REDIS_SENTINELS",
        value_delimiter = ','
    )]
    redis_sentinels: Vec<String>,

    /// The master name Sentinel monitors.
    #[arg(long, env = "LLM_CACHE_SENTINEL_MASTER", default_value = "mymaster")]
    sentinel_master: String,

    /// Redis Cluster seed node (host:port; repeatable).
    #[arg(
        long = "redis-cluster",
        env = "LLM_CACHE_REDIS_CLUSTER",
        value_delimiter = ','
    )]
    redis_cluster: Vec<String>,

    /// Password of the Redis data nodes reached through Sentinel or Cluster.
    #[arg(long, env = "LLM_CACHE_REDIS_PASSWORD", hide_env_values = true)]
    redis_password: Option<String>,

    /// Prefix of every Redis key.
    #[arg(long, env = "LLM_CACHE_KEY_PREFIX", default_value = "ai:cache")]
    key_prefix: String,

    /// L1 bound in bytes of process memory (0 disables L1).
    #[arg(long, env = "LLM_CACHE_L1_MAX_BYTES", default_value_t = 256 << 20)]
    l1_max_bytes: u64,

    /// Longest time an answer stays in L1, in seconds.
    #[arg(long, env = "LLM_CACHE_L1_TTL_SECS", default_value_t = 600)]
    l1_ttl_secs: u64,

    /// Lifetime of an answer in Redis, in seconds.
    #[arg(long, env = "LLM_CACHE_L2_TTL_SECS", default_value_t = 86_400)]
    l2_ttl_secs: u64,

    /// Largest request body accepted, in bytes (larger: 413).
    #[arg(long, env = "LLM_CACHE_BODY_LIMIT", default_value_t = llm_cache_serve::DEFAULT_BODY_LIMIT)]
    body_limit: usize,

    /// Deadline of one upstream attempt, in seconds (for a stream: its headers, then each
    /// pause between reads).
    #[arg(long, env = "LLM_CACHE_UPSTREAM_TIMEOUT_SECS", default_value_t = 120)]
    upstream_timeout_secs: u64,

    /// Upstream attempts per miss (connect errors, timeouts, 5xx, 429 without Retry-After
    /// are retried). The SDKs retry too, and their retries coalesce: keep it low.
    #[arg(long, env = "LLM_CACHE_UPSTREAM_ATTEMPTS", default_value_t = 2)]
    upstream_attempts: u32,

    /// Longest Retry-After the proxy waits out itself, in seconds; a longer one goes back
    /// to the caller at once with its Retry-After (default 0: the caller's SDK waits).
    #[arg(long, env = "LLM_CACHE_MAX_RETRY_AFTER_SECS", default_value_t = 0)]
    max_retry_after_secs: u64,

    /// Serve Prometheus metrics at GET /metrics (needs a build with the `prometheus`
    /// feature).
    #[arg(long, env = "LLM_CACHE_METRICS")]
    metrics: bool,

    /// Longest wait for a request's head, and for the next request on an idle HTTP/1
    /// keep-alive connection, in seconds; then the connection is closed.
    #[arg(long, env = "LLM_CACHE_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    header_timeout_secs: u64,

    /// Longest pause while a request body arrives, in seconds; then the answer is 408.
    #[arg(long, env = "LLM_CACHE_BODY_TIMEOUT_SECS", default_value_t = 30)]
    body_timeout_secs: u64,

    /// HTTP/2 keep-alive ping interval, in seconds: a connection that does not answer is
    /// closed (HTTP/1 keep-alive connections use --header-timeout-secs between requests).
    #[arg(long, env = "LLM_CACHE_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    idle_timeout_secs: u64,

    /// Connections open at once; more are closed at once, with a warning (at most one a
    /// second). Keep it under the process's file-descriptor limit (`ulimit -n`).
    #[arg(long, env = "LLM_CACHE_MAX_CONNECTIONS", default_value_t = 10_000)]
    max_connections: usize,

    /// How long a shutdown (SIGTERM, ctrl-c) waits for in-flight requests, in seconds.
    #[arg(long, env = "LLM_CACHE_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    shutdown_grace_secs: u64,

    /// Log level on stderr: error, warn, info, debug, trace (default info). Without it,
    /// `RUST_LOG` sets the filter when it is set, in its own syntax (`llm_cache_core=debug,info`).
    /// Keys are never logged. Colours only when stderr is a terminal.
    #[arg(long, env = "LLM_CACHE_LOG")]
    log_level: Option<LevelFilter>,
}

/// How long the shutdown waits for the cache's pending Redis writes and lease releases.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let logs = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let rust_log = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty());
    match (args.log_level, rust_log) {
        (None, Some(filter)) => match EnvFilter::try_new(&filter) {
            Ok(filter) => logs.with_env_filter(filter).init(),
            Err(e) => {
                eprintln!("llm-cache-proxy: RUST_LOG is not a filter ({e}); logging at info");
                logs.with_max_level(LevelFilter::INFO).init();
            }
        },
        (level, _) => logs
            .with_max_level(level.unwrap_or(LevelFilter::INFO))
            .init(),
    }
    match run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("llm-cache-proxy: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let callers = caller_keys(&args)?;
    let modes = [callers.is_some(), args.pass_through, args.open];
    if modes.iter().filter(|m| **m).count() != 1 {
        return Err("choose one way for callers to authenticate: caller keys \
                    (--caller-keys-file / --caller-key), --pass-through, or --open"
            .into());
    }
    let upstream_key = match &args.upstream_key_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("--upstream-key-file {}: {e}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => args.upstream_key.clone(),
    };
    if !args.pass_through && upstream_key.as_deref().is_none_or(str::is_empty) {
        tracing::warn!(
            "no provider key (OPENAI_API_KEY or --upstream-key-file): calls go upstream without one"
        );
    }
    let admin_key = match &args.admin_key_file {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("--admin-key-file {}: {e}", path.display()))?,
        ),
        None => args.admin_key.clone(),
    };
    let retry = RetryPolicy::default()
        .max_attempts(args.upstream_attempts)
        .max_retry_after(Duration::from_secs(args.max_retry_after_secs));
    let timeout = Duration::from_secs(args.upstream_timeout_secs);

    #[cfg(feature = "prometheus")]
    let metrics = if args.metrics {
        Some(llm_cache_core::prometheus::install()?)
    } else {
        None
    };
    #[cfg(not(feature = "prometheus"))]
    if args.metrics {
        return Err("--metrics: this build has no `prometheus` feature".into());
    }

    // The cache's own upstream is never called: the router sends every miss to the
    // provider configured below (with the held key, or the caller's credentials).
    let mut cache = LlmCache::builder()
        .upstream(OpenAiCompatible::new(args.upstream_url.clone()))
        .l1_max_bytes(args.l1_max_bytes)
        .l1_ttl(Duration::from_secs(args.l1_ttl_secs))
        .l2_ttl(Duration::from_secs(args.l2_ttl_secs))
        .key_prefix(args.key_prefix.clone());
    let redis_shown;
    if let Some(url) = &args.redis {
        cache = cache.redis(url.clone());
        redis_shown = "redis".to_string();
    } else if !args.redis_sentinels.is_empty() {
        cache = cache.sentinel(args.sentinel_master.clone(), args.redis_sentinels.clone());
        redis_shown = format!("sentinel ({} addresses)", args.redis_sentinels.len());
    } else if !args.redis_cluster.is_empty() {
        cache = cache.cluster(args.redis_cluster.clone());
        redis_shown = format!("cluster ({} seeds)", args.redis_cluster.len());
    } else {
        redis_shown = "none (L1 only)".to_string();
    }
    if let Some(password) = &args.redis_password {
        cache = cache.redis_password(password.clone());
    }
    let cache = cache.build().await?;

    let mut front = llm_cache_serve::builder(cache.clone())
        .upstream_url(args.upstream_url.clone())
        .retry(retry)
        .request_timeout(timeout)
        .pass_through_credentials(args.pass_through)
        .credential_headers(args.credential_headers.iter().cloned())
        .namespace(args.namespace.clone())
        .body_limit(args.body_limit);
    if let Some(key) = upstream_key.filter(|k| !k.is_empty() && !args.pass_through) {
        front = front.upstream_key(key);
    }
    let keys = callers.as_ref().map_or(0, CallerKeys::len);
    if let Some(callers) = callers {
        front = front.callers(callers);
    }
    let admin_shown = if admin_key.is_some() { "set" } else { "none" };
    if let Some(key) = &admin_key {
        front = front.admin_key(key);
    }
    #[cfg(feature = "prometheus")]
    if let Some(handle) = metrics {
        front = front.metrics(handle);
    }
    let app = front.build()?;

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("--listen {}: {e}", args.listen))?;
    let mode = if args.pass_through {
        "pass-through credentials".to_string()
    } else if args.open {
        "open (no caller keys)".to_string()
    } else {
        format!("{keys} caller keys")
    };
    tracing::info!(
        listen = %listener.local_addr()?,
        upstream = %shown_url(&args.upstream_url),
        redis = %redis_shown,
        mode = %mode,
        admin_key = %admin_shown,
        "llm-cache-proxy listening"
    );
    // A line on stdout for scripts and tests: the address actually bound (port 0 works).
    println!("listening on http://{}", listener.local_addr()?);

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let limits = llm_cache_serve::ServeLimits {
        header_read_timeout: Duration::from_secs(args.header_timeout_secs),
        body_read_timeout: Duration::from_secs(args.body_timeout_secs),
        idle_timeout: Duration::from_secs(args.idle_timeout_secs),
        max_connections: args.max_connections,
    };
    let server = llm_cache_serve::serve(listener, app, limits, async move {
        let mut stop = stop_rx;
        let _ = stop.changed().await;
    });
    let mut server = std::pin::pin!(server);
    tokio::select! {
        served = &mut server => return Ok(served?),
        () = shutdown_signal() => {}
    }
    tracing::info!("shutting down: waiting for in-flight requests");
    let _ = stop_tx.send(true);
    match tokio::time::timeout(Duration::from_secs(args.shutdown_grace_secs), server).await {
        Ok(served) => served?,
        Err(_) => tracing::warn!("in-flight requests still running after the shutdown grace"),
    }
    // Write the answers still queued for Redis and release held leases before exiting, so
    // that other instances neither miss them nor wait on this one's leases.
    match cache.close(CLOSE_TIMEOUT).await {
        Ok(()) => tracing::info!("cache closed: pending writes flushed, leases released"),
        Err(e) => tracing::warn!(error = %e, "cache close incomplete"),
    }
    tracing::info!("stopped");
    Ok(())
}

/// The caller keys from the file and the flags; `None` when neither gives any.
fn caller_keys(args: &Args) -> Result<Option<CallerKeys>, Box<dyn std::error::Error>> {
    let mut text = String::new();
    if let Some(path) = &args.caller_keys_file {
        text = std::fs::read_to_string(path)
            .map_err(|e| format!("--caller-keys-file {}: {e}", path.display()))?;
        text.push('\n');
    }
    for line in &args.caller_keys {
        text.push_str(line);
        text.push('\n');
    }
    let keys = CallerKeys::parse(&text)?;
    Ok((!keys.is_empty()).then_some(keys))
}

/// SIGTERM or ctrl-c.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}

/// The upstream URL fit for a log line: scheme, host, port and path only.
fn shown_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}{}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port().map(|p| format!(":{p}")).unwrap_or_default(),
            u.path()
        ),
        Err(_) => "(unparsable URL)".to_string(),
    }
}
