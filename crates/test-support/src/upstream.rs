//! A mock OpenAI-compatible upstream over real HTTP on loopback. It records every request,
//! answers deterministically (so a test can tell what a request should get back), and can
//! be scripted to fail, hang, delay, or hold answers until the test releases them.
//!
//! What a call gets, in order: the next [`MockReply`] pushed with
//! [`MockUpstream::push_reply`]; else, in fault mode ([`MockUpstream::fail_ratio`]), a
//! 500 or 429 when the call counter says so; else the default answer
//! ([`expected_content`]). The reply is chosen when the request arrives; the gate and the
//! delay apply after that, to every reply.
//!
//! A request with `"stream": true` gets the default answer as a `text/event-stream`, one
//! chunk per HTTP write: a role chunk, the content in pieces of 8 characters, a finish
//! chunk, a usage chunk when `stream_options.include_usage` is set, then `[DONE]`. A test
//! can hold every stream after its first n chunks ([`MockUpstream::hold_stream_after`]) and
//! wait until the mock has sent k chunks ([`MockUpstream::wait_for_streamed_chunks`]).
//!
//! [`MockUpstream::start_realistic`] starts one whose default answers take as long as a
//! model's instead ([`crate::realistic`]).

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::serve::ListenerExt;
use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::realistic::Realistic;

/// How long [`MockUpstream::wait_for_calls`] waits before failing the test.
const WAIT_LIMIT: Duration = Duration::from_secs(10);
/// Characters of text (content, tool-call arguments) per streamed chunk.
const PIECE_CHARS: usize = 8;
/// The `system_fingerprint` of every answer.
const FINGERPRINT: &str = "fp_mock";

/// A scripted answer for one call.
#[derive(Debug, Clone)]
pub enum MockReply {
    /// The default deterministic answer (useful between scripted failures).
    Answer,
    /// An HTTP status with a raw body and an optional `Retry-After` header value.
    Status {
        /// The HTTP status code.
        code: u16,
        /// The body, sent as is with `content-type: application/json`.
        body: String,
        /// The `Retry-After` value, e.g. `"1"` or an HTTP date.
        retry_after: Option<String>,
    },
    /// A 200 with this raw body (e.g. invalid JSON).
    Body(String),
    /// Never answer: the request stays open until the client gives up.
    Hang,
    /// The default stream, cut after `after` chunks: the connection is aborted, so the
    /// client sees a broken body rather than a clean end. Sent as a stream even when the
    /// request does not ask for one.
    StreamCut {
        /// Chunks sent (the role chunk included) before the cut.
        after: usize,
    },
    /// Three tool calls ([`expected_tool_calls`]) whose arguments arrive in pieces,
    /// interleaved by call, then `finish_reason: "tool_calls"`. A request that does not
    /// stream gets the same calls as one JSON completion.
    StreamToolCalls,
    /// A 200 `text/event-stream` with this raw body, in one write (e.g. an error event, or
    /// no `[DONE]`).
    Sse(String),
    /// `code` refusing the credential of request header `header`, quoting it the way
    /// providers do ("Incorrect API key provided: sk-..."): the bare token, that is the
    /// value after an auth scheme such as `Bearer ` (the whole value when it has none).
    /// An OpenAI error body, or a `text/plain` body when `plain`.
    EchoCredential {
        /// The HTTP status code.
        code: u16,
        /// The request header whose credential is quoted.
        header: String,
        /// A plain-text body instead of JSON.
        plain: bool,
    },
}

impl MockReply {
    /// `code` with an OpenAI error body whose `error.message` is `message`.
    pub fn openai_error(code: u16, message: &str) -> Self {
        MockReply::Status {
            code,
            body: openai_error_body(code, message),
            retry_after: None,
        }
    }

    /// A 429 rate-limit error with `Retry-After: <retry_after>`.
    pub fn rate_limited(retry_after: &str) -> Self {
        MockReply::Status {
            code: 429,
            body: openai_error_body(429, "mock: rate limit reached"),
            retry_after: Some(retry_after.to_string()),
        }
    }

    /// `code` with an OpenAI error body and no `Retry-After`.
    pub fn status(code: u16) -> Self {
        Self::openai_error(code, &format!("mock: status {code}"))
    }
}

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// When it arrived (before any gate or delay).
    pub at: Instant,
    /// The request path, e.g. `/v1/chat/completions`.
    pub path: String,
    /// Every header as sent.
    pub headers: HeaderMap,
    /// The JSON body; `Value::Null` when it was not JSON.
    pub body: Value,
    /// The HTTP method.
    pub method: String,
    /// The body's bytes as they arrived.
    pub raw: Bytes,
}

impl RecordedRequest {
    /// A header's value as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A mock upstream listening on `127.0.0.1:<free port>`; stops when dropped.
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

pub(crate) struct Shared {
    requests: Mutex<Vec<RecordedRequest>>,
    arrived: Notify,
    script: Mutex<VecDeque<MockReply>>,
    delay: Mutex<Duration>,
    faults: Mutex<Option<Faults>>,
    /// `Some` while answers are held; a closed semaphore lets everyone through.
    gate: Mutex<Option<Arc<Semaphore>>>,
    held: AtomicUsize,
    /// `Some` while streams are held after their first `after` chunks.
    stream_gate: Mutex<Option<StreamGate>>,
    /// A pause before each streamed chunk after the first.
    chunk_interval: Mutex<Duration>,
    /// Chunks sent by every stream so far (`[DONE]` not counted).
    streamed: AtomicUsize,
    chunk_sent: Notify,
    /// Replaces the default embedder for texts (`set_embedder`).
    embedder: Mutex<Option<super::embeddings::Embedder>>,
    /// `Some` in the realistic mode (`start_realistic`).
    realistic: Option<Realistic>,
}

struct StreamGate {
    after: usize,
    /// Never has permits: closing it lets every held stream go.
    open: Arc<Semaphore>,
}

/// Fault mode: call `k` draws `x = frac((k + 1) * golden ratio)`, a low-discrepancy
/// sequence, so over any run of calls the shares of 500s and 429s match the ratios.
struct Faults {
    p500: f64,
    p429: f64,
    retry_after_secs: Option<u64>,
    counter: u64,
}

impl MockUpstream {
    /// Start a mock on a free loopback port.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Start a mock in the realistic mode ([`crate::realistic`]): its default answers take a
    /// latency in `mode`'s range, fixed by the prompt, with text and usage as long as a
    /// model's, streamed over that latency. Its sockets set `TCP_NODELAY`, so that chunk
    /// timing is not Nagle's.
    pub async fn start_realistic(mode: Realistic) -> Self {
        Self::start_with(Some(mode)).await
    }

    async fn start_with(realistic: Option<Realistic>) -> Self {
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            arrived: Notify::new(),
            script: Mutex::new(VecDeque::new()),
            delay: Mutex::new(Duration::ZERO),
            faults: Mutex::new(None),
            gate: Mutex::new(None),
            held: AtomicUsize::new(0),
            stream_gate: Mutex::new(None),
            chunk_interval: Mutex::new(Duration::ZERO),
            streamed: AtomicUsize::new(0),
            chunk_sent: Notify::new(),
            embedder: Mutex::new(None),
            realistic,
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(handle))
            .route("/v1/embeddings", post(other))
            .route("/v1/responses", post(other))
            .route("/v1/completions", post(other))
            .route("/v1/files", post(other))
            .route("/v1/files/{id}", axum::routing::delete(other))
            .route("/v1/models", axum::routing::get(other))
            .fallback(not_found)
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind mock upstream");
        let addr = listener.local_addr().expect("mock upstream address");
        // Streamed chunks are small writes: with Nagle's algorithm each one waits for the
        // last to be acknowledged, and the client delays that ACK by up to 40 ms.
        let nodelay = realistic.is_some();
        let listener = listener.tap_io(move |tcp| {
            if nodelay {
                let _ = tcp.set_nodelay(true);
            }
        });
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MockUpstream {
            addr,
            shared,
            server,
        }
    }

    /// The address it listens on (`127.0.0.1:<port>`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>/v1`, the base URL to give the client.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Requests received so far on `path` (e.g. `/v1/embeddings`).
    pub fn calls_to(&self, path: &str) -> usize {
        let requests = self.shared.requests.lock().unwrap();
        requests.iter().filter(|r| r.path == path).count()
    }

    /// Answer `/v1/embeddings` texts with `f(text)` instead of the default vectors.
    pub fn set_embedder(&self, f: impl Fn(&str) -> Vec<f32> + Send + Sync + 'static) {
        *self.shared.embedder.lock().unwrap() = Some(Arc::new(f));
    }

    /// The inputs of every `/v1/embeddings` call so far, call by call.
    pub fn embedding_calls(&self) -> Vec<Vec<Value>> {
        self.requests()
            .iter()
            .filter(|r| r.path == "/v1/embeddings")
            .map(|r| super::embeddings::inputs_of(&r.body))
            .collect()
    }

    /// Requests received so far (every route).
    pub fn calls(&self) -> usize {
        self.shared.requests.lock().unwrap().len()
    }

    /// Streaming requests (`"stream": true`) received so far.
    pub fn stream_calls(&self) -> usize {
        let requests = self.shared.requests.lock().unwrap();
        requests.iter().filter(|r| r.body["stream"] == true).count()
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// The last request received, if any.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        self.shared.requests.lock().unwrap().last().cloned()
    }

    /// Queue a scripted reply; queued replies are used first, in order.
    pub fn push_reply(&self, reply: MockReply) {
        self.shared.script.lock().unwrap().push_back(reply);
    }

    /// Delay every answer by `delay` (after the gate).
    pub fn set_delay(&self, delay: Duration) {
        *self.shared.delay.lock().unwrap() = delay;
    }

    /// Fail a share `p500` of calls with 500 and `p429` with 429 (with `Retry-After:
    /// <secs>` when given), decided by a call counter so a run is repeatable. Scripted
    /// replies still come first. `fail_ratio(0.0, 0.0, None)` turns faults off.
    pub fn fail_ratio(&self, p500: f64, p429: f64, retry_after_secs: Option<u64>) {
        assert!(
            (0.0..=1.0).contains(&p500) && (0.0..=1.0).contains(&p429) && p500 + p429 <= 1.0,
            "fail_ratio: ratios must be in 0..=1 and sum to at most 1"
        );
        *self.shared.faults.lock().unwrap() = Some(Faults {
            p500,
            p429,
            retry_after_secs,
            counter: 0,
        });
    }

    /// Hold every answer from now on until [`MockUpstream::release`] lets it go.
    pub fn hold_answers(&self) {
        let mut gate = self.shared.gate.lock().unwrap();
        if gate.is_none() {
            *gate = Some(Arc::new(Semaphore::new(0)));
        }
    }

    /// Let `n` held (or future held) answers go.
    pub fn release(&self, n: usize) {
        match &*self.shared.gate.lock().unwrap() {
            Some(gate) => gate.add_permits(n),
            None => panic!("release: answers are not held (call hold_answers first)"),
        }
    }

    /// Stop holding answers and let every held one go.
    pub fn release_all(&self) {
        if let Some(gate) = self.shared.gate.lock().unwrap().take() {
            gate.close();
        }
    }

    /// Answers waiting at the gate right now.
    pub fn held(&self) -> usize {
        self.shared.held.load(Ordering::SeqCst)
    }

    /// From now on, every stream sends its first `n` chunks and then waits until
    /// [`MockUpstream::release_stream`] (streams already past `n` chunks are not held).
    pub fn hold_stream_after(&self, n: usize) {
        let mut gate = self.shared.stream_gate.lock().unwrap();
        match gate.as_mut() {
            Some(gate) => gate.after = n,
            None => {
                *gate = Some(StreamGate {
                    after: n,
                    open: Arc::new(Semaphore::new(0)),
                });
            }
        }
    }

    /// Pause `interval` before each streamed chunk after the first (default none).
    pub fn set_chunk_interval(&self, interval: Duration) {
        *self.shared.chunk_interval.lock().unwrap() = interval;
    }

    /// Stop holding streams and let every held one send the rest.
    pub fn release_stream(&self) {
        if let Some(gate) = self.shared.stream_gate.lock().unwrap().take() {
            gate.open.close();
        }
    }

    /// Chunks sent by every stream so far (`[DONE]` not counted).
    pub fn streamed_chunks(&self) -> usize {
        self.shared.streamed.load(Ordering::SeqCst)
    }

    /// Wait until the mock has sent at least `k` chunks in all; panics after 10 s.
    pub async fn wait_for_streamed_chunks(&self, k: usize) {
        let wait = async {
            loop {
                let sent = self.shared.chunk_sent.notified();
                tokio::pin!(sent);
                sent.as_mut().enable();
                if self.streamed_chunks() >= k {
                    return;
                }
                sent.await;
            }
        };
        if tokio::time::timeout(WAIT_LIMIT, wait).await.is_err() {
            panic!(
                "wait_for_streamed_chunks({k}): only {} chunks sent in {WAIT_LIMIT:?}",
                self.streamed_chunks()
            );
        }
    }

    /// Wait until at least `n` requests have arrived; panics after 10 s.
    pub async fn wait_for_calls(&self, n: usize) {
        let wait = async {
            loop {
                let arrived = self.shared.arrived.notified();
                tokio::pin!(arrived);
                arrived.as_mut().enable();
                if self.calls() >= n {
                    return;
                }
                arrived.await;
            }
        };
        if tokio::time::timeout(WAIT_LIMIT, wait).await.is_err() {
            panic!(
                "wait_for_calls({n}): only {} requests arrived in {WAIT_LIMIT:?}",
                self.calls()
            );
        }
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.server.abort();
        self.release_all();
        self.release_stream();
    }
}

/// The content of the mock's default answer to `request` (a chat request as the client
/// sends it, e.g. an `llm_cache::ChatRequest`): `answer:<xxh3 of the request as sent,
/// without stream fields> <last user message>`.
pub fn expected_content(request: &impl Serialize) -> String {
    content_for(&as_sent(request))
}

/// The tool calls of [`MockReply::StreamToolCalls`] for `request`, as `(name, arguments)`;
/// the arguments are JSON text that depends on the request.
pub fn expected_tool_calls(request: &impl Serialize) -> Vec<(String, String)> {
    tool_calls_for(&as_sent(request))
}

/// `request` as the mock reads it off the wire: its JSON text parsed back (so that an f32
/// reads as the shortest decimal it prints as, not as its exact f64).
pub(crate) fn as_sent(request: &impl Serialize) -> Value {
    let text = serde_json::to_string(request).expect("a request serialises");
    serde_json::from_str(&text).expect("a request's JSON parses")
}

fn content_for(request: &Value) -> String {
    format!(
        "answer:{:016x} {}",
        xxhash_rust::xxh3::xxh3_64(canonical(request).as_bytes()),
        last_user_text(request)
    )
}

fn tool_calls_for(request: &Value) -> Vec<(String, String)> {
    let digest = format!(
        "{:016x}",
        xxhash_rust::xxh3::xxh3_64(canonical(request).as_bytes())
    );
    let last_user = last_user_text(request);
    vec![
        (
            "get_weather".to_string(),
            json!({"location": last_user, "unit": "celsius"}).to_string(),
        ),
        (
            "get_time".to_string(),
            json!({"tz": "Europe/Paris", "digest": digest}).to_string(),
        ),
        (
            "search_docs".to_string(),
            json!({"query": last_user, "limit": 3, "tags": ["mock", "ünïcode 🧪"]}).to_string(),
        ),
    ]
}

/// The text of the last user message (see [`message_text`]); empty when there is none.
pub(crate) fn last_user_text(request: &Value) -> String {
    let messages = request["messages"].as_array().map(Vec::as_slice);
    messages
        .unwrap_or_default()
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map_or_else(String::new, message_text)
}

/// A message's text: its content, or the `text` of its parts joined; empty without either.
pub(crate) fn message_text(message: &Value) -> String {
    match &message["content"] {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect(),
        _ => String::new(),
    }
}

/// The request's JSON text without its transport fields (`stream`, `stream_options`).
fn canonical(request: &Value) -> String {
    let mut request = request.clone();
    if let Some(fields) = request.as_object_mut() {
        fields.remove("stream");
        fields.remove("stream_options");
    }
    request.to_string()
}

/// A body the mock answers as a chat request: a JSON object whose `messages`, when given,
/// is an array (the error names what is wrong).
fn chat_request(body: &Value) -> Result<&Value, String> {
    match body {
        Value::Object(fields) => match fields.get("messages") {
            None | Some(Value::Array(_)) => Ok(body),
            Some(other) => Err(format!("messages is not an array: {other}")),
        },
        _ => Err(format!("not a JSON object: {body}")),
    }
}

/// The `model` a request names (empty when it names none).
fn model_of(request: &Value) -> &str {
    request["model"].as_str().unwrap_or_default()
}

pub(crate) fn streams(request: &Value) -> bool {
    request["stream"] == true
}

/// The default answer's JSON; `call` (1-based) makes the `id` differ between calls, so a
/// test can tell a fresh upstream answer from a cached one.
fn default_answer(request: &Value, call: usize) -> Value {
    let content = content_for(request);
    completion(request, call, &content, default_usage(request, &content))
}

/// The usage of the default answer `content` to `request`.
fn default_usage(request: &Value, content: &str) -> Value {
    let prompt_tokens = (canonical(request).chars().count() as u64 / 4).max(1);
    let completion_tokens = (content.chars().count() as u64 / 4).max(1);
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens
    })
}

/// A `chat.completion` answering `content` with `usage`.
pub(crate) fn completion(request: &Value, call: usize, content: &str, usage: Value) -> Value {
    json!({
        "id": format!("chatcmpl-mock-{call}"),
        "object": "chat.completion",
        "created": now_secs(),
        "model": model_of(request),
        "system_fingerprint": FINGERPRINT,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "stop"
        }],
        "usage": usage
    })
}

fn openai_error_body(code: u16, message: &str) -> String {
    let kind = match code {
        429 => "rate_limit_error",
        400..=499 => "invalid_request_error",
        _ => "server_error",
    };
    json!({"error": {"message": message, "type": kind, "param": null, "code": null}}).to_string()
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let raw = body;
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let call = {
        let mut requests = shared.requests.lock().unwrap();
        requests.push(RecordedRequest {
            at: Instant::now(),
            path: uri.path().to_string(),
            headers: headers.clone(),
            body: body.clone(),
            method: "POST".to_string(),
            raw,
        });
        requests.len()
    };
    shared.arrived.notify_waiters();
    let reply = shared.plan();

    let gate = shared.gate.lock().unwrap().clone();
    if let Some(gate) = gate {
        shared.held.fetch_add(1, Ordering::SeqCst);
        // A closed gate (release_all) lets everyone through.
        if let Ok(permit) = gate.acquire().await {
            permit.forget();
        }
        shared.held.fetch_sub(1, Ordering::SeqCst);
    }
    let delay = *shared.delay.lock().unwrap();
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    respond(reply, &body, &headers, call, &shared).await
}

impl Shared {
    fn plan(&self) -> MockReply {
        if let Some(reply) = self.script.lock().unwrap().pop_front() {
            return reply;
        }
        let mut faults = self.faults.lock().unwrap();
        if let Some(f) = faults.as_mut() {
            const GOLDEN: f64 = 0.618_033_988_749_894_9;
            f.counter += 1;
            let x = (f.counter as f64 * GOLDEN).fract();
            if x < f.p500 {
                return MockReply::openai_error(500, "mock: injected failure");
            }
            if x < f.p500 + f.p429 {
                return MockReply::Status {
                    code: 429,
                    body: openai_error_body(429, "mock: injected rate limit"),
                    retry_after: f.retry_after_secs.map(|s| s.to_string()),
                };
            }
        }
        MockReply::Answer
    }
}

async fn respond(
    reply: MockReply,
    body: &Value,
    headers: &HeaderMap,
    call: usize,
    shared: &Arc<Shared>,
) -> Response {
    let request = || chat_request(body);
    let not_a_request = |e: String| {
        json_response(
            StatusCode::BAD_REQUEST,
            openai_error_body(400, &format!("mock: not a chat request: {e}")),
        )
    };
    match reply {
        MockReply::Answer => match (request(), shared.realistic) {
            (Ok(request), Some(mode)) => mode.answer(shared, request, call).await,
            (Ok(request), None) if streams(request) => {
                let chunks = answer_chunks(request, call);
                sse_response(shared, chunks, Ending::Done, Vec::new())
            }
            (Ok(request), None) => axum::Json(default_answer(request, call)).into_response(),
            (Err(e), _) => not_a_request(e),
        },
        MockReply::Status {
            code,
            body,
            retry_after,
        } => {
            let status = StatusCode::from_u16(code).expect("a valid status code");
            let mut response = json_response(status, body);
            if let Some(after) = retry_after {
                response.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_str(&after).expect("a valid Retry-After value"),
                );
            }
            response
        }
        MockReply::Body(body) => json_response(StatusCode::OK, body),
        MockReply::Hang => std::future::pending().await,
        MockReply::StreamCut { after } => match request() {
            Ok(request) => {
                let mut chunks = answer_chunks(request, call);
                chunks.truncate(after);
                sse_response(shared, chunks, Ending::Cut, Vec::new())
            }
            Err(e) => not_a_request(e),
        },
        MockReply::StreamToolCalls => match request() {
            Ok(request) if streams(request) => {
                let chunks = tool_call_chunks(request, call);
                sse_response(shared, chunks, Ending::Done, Vec::new())
            }
            Ok(request) => axum::Json(tool_call_answer(request, call)).into_response(),
            Err(e) => not_a_request(e),
        },
        MockReply::Sse(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/event-stream")],
            body,
        )
            .into_response(),
        MockReply::EchoCredential {
            code,
            header: name,
            plain,
        } => {
            let value = headers
                .get(&name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            let token = match value.split_once(' ') {
                Some((_scheme, token)) => token.trim(),
                None => value,
            };
            let message = format!("Incorrect credential provided in {name}: {token}.");
            let status = StatusCode::from_u16(code).expect("a valid status code");
            if plain {
                (status, [(header::CONTENT_TYPE, "text/plain")], message).into_response()
            } else {
                json_response(status, openai_error_body(code, &message))
            }
        }
    }
}

/// How a mock stream ends after its chunks.
pub(crate) enum Ending {
    /// `data: [DONE]`, then the body ends cleanly.
    Done,
    /// The body fails, which aborts the connection.
    Cut,
}

/// A 200 event stream whose chunks are written one by one as the client reads them,
/// through the stream gate; chunk `i` no earlier than `due[i]` from now, when given.
pub(crate) fn sse_response(
    shared: &Arc<Shared>,
    chunks: Vec<Value>,
    ending: Ending,
    due: Vec<Duration>,
) -> Response {
    // Capacity 1: a chunk counts as sent once the server has taken the one before it.
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(1);
    let shared = Arc::clone(shared);
    let start = tokio::time::Instant::now();
    tokio::spawn(async move {
        for (i, chunk) in chunks.iter().enumerate() {
            let interval = *shared.chunk_interval.lock().unwrap();
            if i > 0 && !interval.is_zero() {
                tokio::time::sleep(interval).await;
            }
            if let Some(&at) = due.get(i) {
                tokio::time::sleep_until(start + at).await;
            }
            shared.stream_gate_wait(i).await;
            let event = Bytes::from(format!("data: {chunk}\n\n"));
            if tx.send(Ok(event)).await.is_err() {
                return; // the client went away
            }
            shared.streamed.fetch_add(1, Ordering::SeqCst);
            shared.chunk_sent.notify_waiters();
        }
        let last = match ending {
            Ending::Done => Ok(Bytes::from_static(b"data: [DONE]\n\n")),
            Ending::Cut => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "mock: stream cut",
            )),
        };
        let _ = tx.send(last).await;
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        let item = rx.recv().await?;
        Some((item, rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(body))
        .expect("a valid response")
}

impl Shared {
    /// Wait before chunk `i` (0-based) while streams are held after fewer chunks.
    async fn stream_gate_wait(&self, i: usize) {
        let open = match &*self.stream_gate.lock().unwrap() {
            Some(gate) if i >= gate.after => Arc::clone(&gate.open),
            _ => return,
        };
        // The semaphore never has permits: this returns when release_stream closes it.
        let _ = open.acquire().await;
    }
}

/// The fields every chunk of the stream for call `call` repeats.
fn chunk(request: &Value, call: usize, created: u64, choices: Value) -> Value {
    json!({
        "id": format!("chatcmpl-mock-{call}"),
        "object": "chat.completion.chunk",
        "created": created,
        "model": model_of(request),
        "system_fingerprint": FINGERPRINT,
        "choices": choices,
    })
}

pub(crate) fn include_usage(request: &Value) -> bool {
    request["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false)
}

/// The default answer as chunks (without `[DONE]`).
fn answer_chunks(request: &Value, call: usize) -> Vec<Value> {
    let content = content_for(request);
    let usage = default_usage(request, &content);
    text_chunks(request, call, pieces(&content), usage)
}

/// An answer of these content pieces as chunks: the role chunk, a chunk per piece, the
/// finish chunk and, when the request asks for it, the usage chunk (without `[DONE]`).
pub(crate) fn text_chunks(
    request: &Value,
    call: usize,
    pieces: Vec<String>,
    usage: Value,
) -> Vec<Value> {
    let created = now_secs();
    let mut chunks = vec![chunk(
        request,
        call,
        created,
        json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
    )];
    for piece in pieces {
        chunks.push(chunk(
            request,
            call,
            created,
            json!([{"index": 0, "delta": {"content": piece}, "finish_reason": null}]),
        ));
    }
    chunks.push(chunk(
        request,
        call,
        created,
        json!([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
    ));
    if include_usage(request) {
        let mut last = chunk(request, call, created, json!([]));
        last["usage"] = usage;
        chunks.push(last);
    }
    chunks
}

/// The usage of a tool-call answer.
fn tool_call_usage(request: &Value) -> Value {
    let prompt_tokens = (canonical(request).chars().count() as u64 / 4).max(1);
    let arguments: usize = tool_calls_for(request)
        .iter()
        .map(|(_, a)| a.chars().count())
        .sum();
    let completion_tokens = (arguments as u64 / 4).max(1);
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens
    })
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// [`MockReply::StreamToolCalls`] as chunks: every call opened, then the arguments in
/// pieces taking turns between calls, then the finish and usage chunks.
fn tool_call_chunks(request: &Value, call: usize) -> Vec<Value> {
    let created = now_secs();
    let calls = tool_calls_for(request);
    let delta = |delta: Value| json!([{"index": 0, "delta": delta, "finish_reason": null}]);
    let mut chunks = vec![chunk(
        request,
        call,
        created,
        delta(json!({"role": "assistant", "content": null})),
    )];
    for (i, (name, _)) in calls.iter().enumerate() {
        let opening = json!({"tool_calls": [{"index": i, "id": format!("call_mock_{i}"),
            "type": "function", "function": {"name": name, "arguments": ""}}]});
        chunks.push(chunk(request, call, created, delta(opening)));
    }
    let mut pieces: Vec<VecDeque<String>> = calls
        .iter()
        .map(|(_, arguments)| pieces(arguments).into())
        .collect();
    while pieces.iter().any(|p| !p.is_empty()) {
        for (i, left) in pieces.iter_mut().enumerate() {
            if let Some(piece) = left.pop_front() {
                let more = json!({"tool_calls": [{"index": i,
                    "function": {"arguments": piece}}]});
                chunks.push(chunk(request, call, created, delta(more)));
            }
        }
    }
    chunks.push(chunk(
        request,
        call,
        created,
        json!([{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]),
    ));
    if include_usage(request) {
        let mut last = chunk(request, call, created, json!([]));
        last["usage"] = tool_call_usage(request);
        chunks.push(last);
    }
    chunks
}

/// [`MockReply::StreamToolCalls`] for a request that does not stream.
fn tool_call_answer(request: &Value, call: usize) -> Value {
    let tool_calls: Vec<Value> = tool_calls_for(request)
        .into_iter()
        .enumerate()
        .map(|(i, (name, arguments))| {
            json!({"id": format!("call_mock_{i}"), "type": "function",
                "function": {"name": name, "arguments": arguments}})
        })
        .collect();
    json!({
        "id": format!("chatcmpl-mock-{call}"),
        "object": "chat.completion",
        "created": now_secs(),
        "model": model_of(request),
        "system_fingerprint": FINGERPRINT,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": null, "tool_calls": tool_calls},
            "finish_reason": "tool_calls"
        }],
        "usage": tool_call_usage(request)
    })
}

/// `text` cut into pieces of [`PIECE_CHARS`] characters.
fn pieces(text: &str) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars
        .chunks(PIECE_CHARS)
        .map(|piece| piece.iter().collect())
        .collect()
}

fn json_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn not_found(uri: Uri) -> Response {
    json_response(
        StatusCode::NOT_FOUND,
        openai_error_body(404, &format!("mock: no route for {}", uri.path())),
    )
}

/// The routes beyond chat (embeddings, responses, files, models): recorded like chat calls
/// (method and raw bytes too), held by [`MockUpstream::hold_answers`] like them, answered
/// deterministically, or by the next scripted [`MockReply::Status`] / [`MockReply::Sse`] /
/// [`MockReply::Body`] when one is queued.
async fn other(
    State(shared): State<Arc<Shared>>,
    method: axum::http::Method,
    uri: Uri,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let call = {
        let mut requests = shared.requests.lock().unwrap();
        requests.push(RecordedRequest {
            at: Instant::now(),
            path: uri.path().to_string(),
            headers: headers.clone(),
            body: body.clone(),
            method: method.to_string(),
            raw: raw.clone(),
        });
        requests.len()
    };
    shared.arrived.notify_waiters();
    let reply = shared.plan();
    let gate = shared.gate.lock().unwrap().clone();
    if let Some(gate) = gate {
        shared.held.fetch_add(1, Ordering::SeqCst);
        if let Ok(permit) = gate.acquire().await {
            permit.forget();
        }
        shared.held.fetch_sub(1, Ordering::SeqCst);
    }
    match reply {
        MockReply::Status {
            code,
            body,
            retry_after,
        } => {
            let mut response = json_response(StatusCode::from_u16(code).unwrap(), body);
            if let Some(after) = retry_after {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_str(&after).unwrap());
            }
            return response;
        }
        MockReply::Sse(text) => {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/event-stream")],
                text,
            )
                .into_response();
        }
        MockReply::Body(text) => return json_response(StatusCode::OK, text),
        _ => {}
    }
    let path = uri.path();
    let answer = if path == "/v1/embeddings" {
        if let Some(mode) = shared.realistic {
            tokio::time::sleep(mode.embeddings_latency()).await;
        }
        let embedder = shared.embedder.lock().unwrap().clone();
        super::embeddings::answer(&body, embedder.as_ref())
    } else if path == "/v1/responses" {
        let response = mock_response(&body, call);
        if body["stream"] == true {
            let mut in_progress = response.clone();
            in_progress["status"] = json!("in_progress");
            let text = format!(
                "event: response.created\ndata: {}\n\nevent: response.completed\ndata: {}\n\n",
                json!({"type": "response.created", "sequence_number": 0, "response": in_progress}),
                json!({"type": "response.completed", "sequence_number": 1, "response": response}),
            );
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/event-stream")],
                text,
            )
                .into_response();
        }
        response
    } else if path == "/v1/completions" {
        if body["stream"] == true {
            return (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/event-stream")],
                mock_completion_stream(&body, call),
            )
                .into_response();
        }
        mock_completion(&body, call)
    } else if path == "/v1/files" {
        json!({"id": format!("file-{call}"), "object": "file", "bytes": raw.len(),
            "created_at": 0, "filename": "upload.txt", "purpose": "assistants"})
    } else if let Some(id) = path.strip_prefix("/v1/files/") {
        json!({"id": id, "object": "file", "deleted": true})
    } else {
        json!({"object": "list", "data": [{"id": "mock-model", "object": "model",
            "created": 0, "owned_by": "mock"}]})
    };
    json_response(StatusCode::OK, answer.to_string())
}

/// The Responses API answer to `body`: completed, with the answer text in `metadata`.
fn mock_response(body: &Value, call: usize) -> Value {
    let h = xxhash_rust::xxh3::xxh3_64(body["input"].to_string().as_bytes());
    json!({"id": format!("resp_mock_{call}"), "object": "response", "created_at": 0,
        "model": body["model"], "status": "completed", "output": [],
        "metadata": {"answer": format!("answer:{h:016x}")}})
}

/// The legacy completions answer to `body`: its text is `answer:<hash of the prompt>`.
fn mock_completion(body: &Value, call: usize) -> Value {
    let h = xxhash_rust::xxh3::xxh3_64(body["prompt"].to_string().as_bytes());
    json!({"id": format!("cmpl-mock-{call}"), "object": "text_completion", "created": 0,
        "model": body["model"],
        "choices": [{"text": format!("answer:{h:016x}"), "index": 0, "logprobs": null,
            "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})
}

/// The same answer streamed as OpenAI streams it: two text chunks, then, when
/// `stream_options.include_usage` is true, `"usage": null` on each chunk and a last chunk
/// with empty `choices` and the usage; then `[DONE]`.
fn mock_completion_stream(body: &Value, call: usize) -> String {
    let whole = mock_completion(body, call);
    let text = whole["choices"][0]["text"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let usage = body["stream_options"]["include_usage"] == true;
    let (head, tail) = text.split_at(text.len() / 2);
    let mut out = String::new();
    for (part, finish) in [(head, Value::Null), (tail, json!("stop"))] {
        let mut chunk = json!({"id": whole["id"], "object": "text_completion", "created": 0,
            "model": body["model"],
            "choices": [{"text": part, "index": 0, "logprobs": null, "finish_reason": finish}]});
        if usage {
            chunk["usage"] = Value::Null;
        }
        out.push_str(&format!("data: {chunk}\n\n"));
    }
    if usage {
        let last = json!({"id": whole["id"], "object": "text_completion", "created": 0,
            "model": body["model"], "choices": [], "usage": whole["usage"]});
        out.push_str(&format!("data: {last}\n\n"));
    }
    out.push_str("data: [DONE]\n\n");
    out
}
