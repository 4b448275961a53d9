//! The demo's command line: its flags, their defaults and `--help`, parsed by hand.

use std::net::SocketAddr;
use std::time::Duration;

pub(crate) const USAGE: &str = "\
Run a chat workload through llm-cache and report what the cache saved.

Usage: cargo run --release --example demo -- [OPTIONS]

Options:
  --requests N         requests to send (default 2000)
  --distinct D         distinct prompts to draw from (default 200)
  --concurrency C      requests in flight at most (default 64)
  --model NAME         model to ask for (default gpt-4.1; with --embeddings
                       text-embedding-3-small)
  --seed S             seed of the workload; the same seed sends the same requests (default 42)
  --zipf S             exponent of the Zipf popularity of prompts (default 1.1)
  --latency-ms MIN:MAX how long the stub upstream takes per answer (default 300:1500)
  --redis URL          use Redis as L2 (default: $REDIS_URL; without either: L1 only)
  --l2-deadline-ms MS  deadline of each Redis operation (default 50)
  --stream             send every request through chat_stream and read it to the end;
                       the report adds time to first token per status, and checks each
                       assembled answer against the non-streamed one (the stub streams
                       SSE: first chunk after 30% of its latency, the content over the rest)
  --embeddings         run a re-indexing workload through LlmCache::embeddings instead:
                       every document re-embedded on each pass, ~20% of its chunks edited
                       between passes; reports inputs requested vs sent upstream, tokens and
                       dollars saved, and checks every vector against the stub's
  --documents N        (--embeddings) documents in the corpus (default 40)
  --chunks N           (--embeddings) chunks per document (default 50)
  --passes N           (--embeddings) indexing passes (default 5)
  --change-rate R      (--embeddings) share of chunks edited between passes (default 0.2)
  --dims N             (--embeddings) dimensions of each vector (default 1536)
  --json               print the report as one JSON object on stdout (no progress bar)
  --metrics-addr ADDR  serve Prometheus metrics on http://ADDR/metrics while the demo runs
                       (build with --features prometheus)
  --metrics-linger S   keep serving /metrics for S seconds after the report (default 0)
  -h, --help           print this help

Environment:
  OPENAI_BASE_URL      send misses to this OpenAI-compatible API instead of the local stub
                       (real calls, real cost), authenticated with OPENAI_API_KEY
  REDIS_URL            as --redis

Run it twice against the same Redis: the second run starts with an empty L1 and is
answered from Redis.";

#[derive(Debug, Clone)]
pub(crate) struct Args {
    pub(crate) requests: usize,
    pub(crate) distinct: usize,
    pub(crate) concurrency: usize,
    pub(crate) model: String,
    pub(crate) seed: u64,
    pub(crate) zipf: f64,
    pub(crate) latency_ms: (u64, u64),
    pub(crate) redis: Option<String>,
    pub(crate) l2_deadline_ms: u64,
    pub(crate) json: bool,
    pub(crate) stream: bool,
    pub(crate) metrics_addr: Option<SocketAddr>,
    pub(crate) metrics_linger: Duration,
    pub(crate) embeddings: bool,
    /// Whether `--model` was given (else `--embeddings` uses an embedding model).
    pub(crate) model_set: bool,
    pub(crate) documents: usize,
    pub(crate) chunks: usize,
    pub(crate) passes: usize,
    pub(crate) change_rate: f64,
    pub(crate) dims: usize,
}

impl Args {
    /// The model of `--embeddings` requests.
    pub(crate) fn embedding_model(&self) -> String {
        if self.model_set {
            self.model.clone()
        } else {
            "text-embedding-3-small".into()
        }
    }
}

impl Default for Args {
    fn default() -> Self {
        Args {
            requests: 2000,
            distinct: 200,
            concurrency: 64,
            model: "gpt-4.1".into(),
            seed: 42,
            zipf: 1.1,
            latency_ms: (300, 1500),
            redis: None,
            l2_deadline_ms: 50,
            json: false,
            stream: false,
            metrics_addr: None,
            metrics_linger: Duration::ZERO,
            embeddings: false,
            model_set: false,
            documents: 40,
            chunks: 50,
            passes: 5,
            change_rate: 0.2,
            dims: 1536,
        }
    }
}

pub(crate) enum ArgError {
    Help,
    Bad(String),
}

pub(crate) fn parse_args(argv: impl IntoIterator<Item = String>) -> Result<Args, ArgError> {
    let mut args = Args {
        redis: std::env::var("REDIS_URL")
            .ok()
            .filter(|u| !u.trim().is_empty()),
        ..Args::default()
    };
    let mut argv = argv.into_iter();
    while let Some(arg) = argv.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = |name: &str| -> Result<String, ArgError> {
            inline
                .clone()
                .or_else(|| argv.next())
                .ok_or_else(|| ArgError::Bad(format!("{name} needs a value")))
        };
        match flag.as_str() {
            "-h" | "--help" => return Err(ArgError::Help),
            "--json" if inline.is_none() => args.json = true,
            "--stream" if inline.is_none() => args.stream = true,
            "--embeddings" if inline.is_none() => args.embeddings = true,
            "--documents" => args.documents = positive("--documents", &value("--documents")?)?,
            "--chunks" => args.chunks = positive("--chunks", &value("--chunks")?)?,
            "--passes" => args.passes = positive("--passes", &value("--passes")?)?,
            "--dims" => args.dims = positive("--dims", &value("--dims")?)?,
            "--change-rate" => {
                let s = value("--change-rate")?;
                args.change_rate = s
                    .parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| bad("--change-rate", &s, "is not a share in 0..=1"))?;
            }
            "--requests" => args.requests = positive("--requests", &value("--requests")?)?,
            "--distinct" => args.distinct = positive("--distinct", &value("--distinct")?)?,
            "--concurrency" => {
                args.concurrency = positive("--concurrency", &value("--concurrency")?)?;
            }
            "--model" => {
                let m = value("--model")?;
                if m.trim().is_empty() {
                    return Err(bad("--model", &m, "must not be empty"));
                }
                args.model = m;
                args.model_set = true;
            }
            "--seed" => {
                let s = value("--seed")?;
                args.seed = s
                    .parse()
                    .map_err(|_| bad("--seed", &s, "is not a whole number"))?;
            }
            "--zipf" => {
                let s = value("--zipf")?;
                args.zipf = s
                    .parse::<f64>()
                    .ok()
                    .filter(|z| z.is_finite() && (0.0..=10.0).contains(z))
                    .ok_or_else(|| bad("--zipf", &s, "is not an exponent in 0..=10"))?;
            }
            "--latency-ms" => {
                let s = value("--latency-ms")?;
                args.latency_ms = latency_range(&s)?;
            }
            "--redis" => {
                let url = value("--redis")?;
                if url.trim().is_empty() {
                    return Err(bad("--redis", &url, "must not be empty"));
                }
                args.redis = Some(url);
            }
            "--l2-deadline-ms" => {
                let s = value("--l2-deadline-ms")?;
                args.l2_deadline_ms = positive("--l2-deadline-ms", &s)? as u64;
            }
            "--metrics-addr" => {
                let s = value("--metrics-addr")?;
                let addr = s.parse::<SocketAddr>().map_err(|_| {
                    bad(
                        "--metrics-addr",
                        &s,
                        "is not an address such as 127.0.0.1:9000",
                    )
                })?;
                if !cfg!(feature = "prometheus") {
                    return Err(ArgError::Bad(
                        "--metrics-addr needs the `prometheus` feature: \
                         cargo run --release --features prometheus --example demo -- --metrics-addr ADDR"
                            .into(),
                    ));
                }
                args.metrics_addr = Some(addr);
            }
            "--metrics-linger" => {
                let s = value("--metrics-linger")?;
                let secs = s
                    .parse::<u64>()
                    .map_err(|_| bad("--metrics-linger", &s, "is not a whole number of seconds"))?;
                args.metrics_linger = Duration::from_secs(secs);
            }
            _ => return Err(ArgError::Bad(format!("unknown argument `{arg}`"))),
        }
    }
    Ok(args)
}

pub(crate) fn bad(flag: &str, value: &str, why: &str) -> ArgError {
    ArgError::Bad(format!("invalid value for {flag}: `{value}` {why}"))
}

pub(crate) fn positive(flag: &str, value: &str) -> Result<usize, ArgError> {
    value
        .parse::<usize>()
        .ok()
        .filter(|&n| n > 0)
        .ok_or_else(|| bad(flag, value, "is not a positive whole number"))
}

pub(crate) fn latency_range(value: &str) -> Result<(u64, u64), ArgError> {
    let why = "is not MIN:MAX in milliseconds with MIN <= MAX (e.g. 300:1500)";
    let (min, max) = value
        .split_once(':')
        .ok_or_else(|| bad("--latency-ms", value, why))?;
    match (min.trim().parse::<u64>(), max.trim().parse::<u64>()) {
        (Ok(min), Ok(max)) if min <= max && max <= 600_000 => Ok((min, max)),
        _ => Err(bad("--latency-ms", value, why)),
    }
}
