//! A mock OpenAI-compatible upstream over real HTTP on loopback. It records every request,
//! answers deterministically (so a test can tell what a request should get back), and can
//! be scripted to fail, hang, delay, or hold answers until the test releases them.
//!
//! What a call gets, in order: the next [`MockReply`] pushed with
//! [`MockUpstream::push_reply`]; else, in fault mode ([`MockUpstream::fail_ratio`]), a
//! 500 or 429 when the call counter says so; else the default answer
//! ([`expected_content`]). The reply is chosen when the request arrives; the gate and the
//! delay apply after that, to every reply. Streaming (SSE) is meant to slot in as more
//! `MockReply` variants rendered by `respond` (which sees the body, so it can honour
//! `stream: true`), reusing `default_answer` for the content.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use llm_cache::ChatRequest;
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

/// How long [`MockUpstream::wait_for_calls`] waits before failing the test.
const WAIT_LIMIT: Duration = Duration::from_secs(10);

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

struct Shared {
    requests: Mutex<Vec<RecordedRequest>>,
    arrived: Notify,
    script: Mutex<VecDeque<MockReply>>,
    delay: Mutex<Duration>,
    faults: Mutex<Option<Faults>>,
    /// `Some` while answers are held; a closed semaphore lets everyone through.
    gate: Mutex<Option<Arc<Semaphore>>>,
    held: AtomicUsize,
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
        let shared = Arc::new(Shared {
            requests: Mutex::new(Vec::new()),
            arrived: Notify::new(),
            script: Mutex::new(VecDeque::new()),
            delay: Mutex::new(Duration::ZERO),
            faults: Mutex::new(None),
            gate: Mutex::new(None),
            held: AtomicUsize::new(0),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(handle))
            .fallback(not_found)
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind mock upstream");
        let addr = listener.local_addr().expect("mock upstream address");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        MockUpstream {
            addr,
            shared,
            server,
        }
    }

    /// `http://127.0.0.1:<port>/v1`, the base URL to give the client.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Requests received so far (on the chat route).
    pub fn calls(&self) -> usize {
        self.shared.requests.lock().unwrap().len()
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
    }
}

/// The content of the mock's default answer to `request`:
/// `answer:<xxh3 of the request as sent, without stream fields> <last user message>`.
pub fn expected_content(request: &ChatRequest) -> String {
    let (canonical, request) = canonical(request);
    let last_user = request
        .messages
        .iter()
        .rev()
        .find(|m| m.role == "user")
        .and_then(|m| m.text())
        .unwrap_or_default();
    format!(
        "answer:{:016x} {last_user}",
        xxhash_rust::xxh3::xxh3_64(canonical.as_bytes())
    )
}

/// The request without transport fields, and its JSON text.
fn canonical(request: &ChatRequest) -> (String, ChatRequest) {
    let mut request = request.clone();
    request.stream = None;
    request.stream_options = None;
    let text = serde_json::to_string(&request).expect("a request serialises");
    (text, request)
}

/// The default answer's JSON; `call` (1-based) makes the `id` differ between calls, so a
/// test can tell a fresh upstream answer from a cached one.
fn default_answer(request: &ChatRequest, call: usize) -> Value {
    let (canonical, _) = canonical(request);
    let content = expected_content(request);
    let prompt_tokens = (canonical.chars().count() as u64 / 4).max(1);
    let completion_tokens = (content.chars().count() as u64 / 4).max(1);
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    json!({
        "id": format!("chatcmpl-mock-{call}"),
        "object": "chat.completion",
        "created": created,
        "model": request.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "stop"
        }],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens
        }
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
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let call = {
        let mut requests = shared.requests.lock().unwrap();
        requests.push(RecordedRequest {
            at: Instant::now(),
            path: uri.path().to_string(),
            headers,
            body: body.clone(),
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
    respond(reply, &body, call).await
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

async fn respond(reply: MockReply, body: &Value, call: usize) -> Response {
    match reply {
        MockReply::Answer => match serde_json::from_value::<ChatRequest>(body.clone()) {
            Ok(request) => axum::Json(default_answer(&request, call)).into_response(),
            Err(e) => json_response(
                StatusCode::BAD_REQUEST,
                openai_error_body(400, &format!("mock: not a chat request: {e}")),
            ),
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
    }
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
