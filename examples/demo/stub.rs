//! The stub upstream: an OpenAI-compatible `/chat/completions` on loopback that answers
//! each prompt after a latency fixed per prompt, whole or as SSE (and `/embeddings`, in
//! embeddings.rs). It never leaves loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt;
use axum::{Json, Router};
use futures_util::StreamExt;
use llm_cache::{ChatMessage, ChatRequest};
use serde_json::{Value, json};

use crate::workload::MAX_TOKENS;

/// Share of the stub's latency before the first chunk of a streamed answer; the content
/// streams over the rest.
pub(crate) const STUB_FIRST_CHUNK_SHARE: f64 = 0.3;
/// Words per content chunk of the stub's streams (a real model sends about one token).
pub(crate) const STUB_WORDS_PER_CHUNK: usize = 3;

pub(crate) struct Stub {
    pub(crate) latency_ms: (u64, u64),
    pub(crate) calls: AtomicU64,
    /// `/v1/embeddings` calls, and the inputs they carried.
    pub(crate) embedding_calls: AtomicU64,
    pub(crate) embedding_inputs: AtomicU64,
}

/// FNV-1a: stable across runs and Rust versions, so a prompt always takes as long.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Roughly four characters per token, as for English text.
pub(crate) fn tokens_of(text: &str) -> u64 {
    (text.chars().count() as u64).div_ceil(4)
}

/// What the stub answers to one request, streamed or not: the same text, usage and
/// latency, all fixed by the prompt.
pub(crate) struct StubReply {
    pub(crate) id: String,
    pub(crate) model: String,
    pub(crate) text: String,
    pub(crate) prompt_tokens: u64,
    pub(crate) completion_tokens: u64,
    /// How long the whole answer takes (streamed: until its finish chunk).
    pub(crate) latency: Duration,
}

impl StubReply {
    pub(crate) fn new(request: &ChatRequest, (min, max): (u64, u64)) -> Self {
        let prompt = request
            .messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .and_then(ChatMessage::text)
            .unwrap_or_default();
        let h = fnv1a(prompt.as_bytes());
        let max_tokens = request
            .extra
            .get("max_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(MAX_TOKENS)
            .max(1);
        // Longer answers take longer, as they do from a real model.
        let completion_tokens = (40 + h % 360).min(max_tokens);
        let latency = Duration::from_millis(min + (max - min) * (h % 360) / 359);
        let prompt_tokens = 3 + request
            .messages
            .iter()
            .map(|m| 4 + tokens_of(&m.text().unwrap_or_default()))
            .sum::<u64>();
        StubReply {
            id: format!("chatcmpl-stub-{h:016x}"),
            model: request.model.clone(),
            text: stub_answer(&prompt, completion_tokens),
            prompt_tokens,
            completion_tokens,
            latency,
        }
    }

    pub(crate) fn usage(&self) -> Value {
        json!({
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens
        })
    }

    /// The whole `chat.completion`.
    pub(crate) fn completion(&self, created: u64) -> Value {
        json!({
            "id": self.id,
            "object": "chat.completion",
            "created": created,
            "model": self.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": self.text},
                "finish_reason": "stop"
            }],
            "usage": self.usage()
        })
    }

    /// The `data:` of each event of the stream, and when it is due after the request came:
    /// a role chunk and the first piece of content after `STUB_FIRST_CHUNK_SHARE` of the
    /// latency, the other pieces evenly over the rest, the finish chunk at the latency,
    /// then the usage chunk (when asked for) and `[DONE]`.
    pub(crate) fn events(&self, created: u64, include_usage: bool) -> Vec<(Duration, String)> {
        let chunk = |choices: Value, usage: Option<Value>| {
            let mut c = json!({
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": self.model,
                "choices": choices,
            });
            if let Some(u) = usage {
                c["usage"] = u;
            }
            c.to_string()
        };
        let delta = |delta: Value, finish: Option<&str>| {
            let choice = json!({"index": 0, "delta": delta, "finish_reason": finish});
            json!([choice])
        };
        let first = self.latency.mul_f64(STUB_FIRST_CHUNK_SHARE);
        let streaming = self.latency - first;
        let words: Vec<&str> = self.text.split_inclusive(' ').collect();
        let pieces: Vec<String> = words
            .chunks(STUB_WORDS_PER_CHUNK)
            .map(|w| w.concat())
            .collect();
        let n = pieces.len().max(1) as u32;
        let mut events = vec![(
            first,
            chunk(
                delta(json!({"role": "assistant", "content": ""}), None),
                None,
            ),
        )];
        for (i, piece) in pieces.iter().enumerate() {
            let due = first + streaming * i as u32 / n;
            events.push((due, chunk(delta(json!({"content": piece}), None), None)));
        }
        events.push((self.latency, chunk(delta(json!({}), Some("stop")), None)));
        if include_usage {
            events.push((self.latency, chunk(json!([]), Some(self.usage()))));
        }
        events.push((self.latency, "[DONE]".to_string()));
        events
    }
}

pub(crate) async fn stub_completions(
    State(stub): State<Arc<Stub>>,
    Json(request): Json<ChatRequest>,
) -> Response {
    let came = tokio::time::Instant::now();
    stub.calls.fetch_add(1, Relaxed);
    let reply = StubReply::new(&request, stub.latency_ms);
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if request.stream != Some(true) {
        tokio::time::sleep(reply.latency).await;
        return Json(reply.completion(created)).into_response();
    }
    let include_usage = request
        .stream_options
        .as_ref()
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    // The headers go out at once, each event when it is due (a late one goes at once).
    let events = reply.events(created, include_usage);
    let body = futures_util::stream::iter(events).then(move |(due, data)| async move {
        tokio::time::sleep_until(came + due).await;
        Ok::<_, std::convert::Infallible>(format!("data: {data}\n\n"))
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// An answer about `tokens` tokens long.
pub(crate) fn stub_answer(prompt: &str, tokens: u64) -> String {
    const WORDS: &[&str] = &[
        "your", "order", "can", "be", "returned", "within", "thirty", "days", "from", "the",
        "account", "page", "and", "a", "human", "agent", "will", "follow", "up", "soon",
    ];
    let mut text = format!("(stub answer to \"{prompt}\")");
    let target = usize::try_from(tokens * 4).unwrap_or(usize::MAX);
    let mut i = fnv1a(prompt.as_bytes()) as usize;
    while text.len() < target {
        text.push(' ');
        text.push_str(WORDS[i % WORDS.len()]);
        i = i.wrapping_mul(31).wrapping_add(7);
    }
    text
}

pub(crate) async fn start_stub(latency_ms: (u64, u64)) -> std::io::Result<(SocketAddr, Arc<Stub>)> {
    let stub = Arc::new(Stub {
        latency_ms,
        calls: AtomicU64::new(0),
        embedding_calls: AtomicU64::new(0),
        embedding_inputs: AtomicU64::new(0),
    });
    let app = Router::new()
        .route("/v1/chat/completions", post(stub_completions))
        .route("/v1/embeddings", post(crate::embeddings::stub_embeddings))
        .with_state(Arc::clone(&stub));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // Streamed events are small writes: without TCP_NODELAY, Nagle's algorithm holds each
    // one until the last is acknowledged, and the client delays that ACK by up to 40 ms.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("demo: the stub upstream stopped: {e}");
        }
    });
    Ok((addr, stub))
}
