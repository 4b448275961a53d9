//! Two `llm-cache-proxy` processes sharing one Redis: the second answers from L2, a cold
//! key asked at both at once costs one upstream call (the lease), and SIGTERM lets a
//! request in flight finish before the process exits. Keys never reach the logs.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llm_cache_test_support::redis::RedisServer;
use llm_cache_test_support::upstream::MockUpstream;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const PROVIDER_KEY: &str = "sk-provider-PROC-0123456789";
const CALLER_KEY: &str = "sk-caller-proc-0123456789";
const WAIT: Duration = Duration::from_secs(20);

struct Proxy {
    child: Child,
    url: String,
    /// Everything logged so far (stderr), read as it comes.
    logs: Arc<Mutex<String>>,
    stderr: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start(mock: &MockUpstream, redis: &RedisServer) -> Proxy {
        Proxy::start_with(mock, redis, &["--log-level", "debug"], &[]).await
    }

    /// A proxy with these extra flags and environment variables (`RUST_LOG` is removed
    /// unless given here, so the test does not depend on the caller's environment).
    async fn start_with(
        mock: &MockUpstream,
        redis: &RedisServer,
        flags: &[&str],
        env: &[(&str, &str)],
    ) -> Proxy {
        let mut command = Command::new(env!("CARGO_BIN_EXE_llm-cache-proxy"));
        command.env_remove("RUST_LOG").env_remove("LLM_CACHE_LOG");
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command
            .args(["--listen", "127.0.0.1:0"])
            .args(flags)
            .args(["--upstream-url", &mock.base_url()])
            .args(["--redis", &redis.url()])
            .args(["--caller-key", &format!("team-a {CALLER_KEY}")])
            .env("OPENAI_API_KEY", PROVIDER_KEY)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn llm-cache-proxy");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .expect("the proxy says where it listens")
            .unwrap()
            .expect("a line on stdout");
        let url = line
            .strip_prefix("listening on ")
            .expect("listening on <url>")
            .to_string();
        let mut err = BufReader::new(child.stderr.take().unwrap()).lines();
        let logs = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&logs);
        let stderr = tokio::spawn(async move {
            while let Ok(Some(line)) = err.next_line().await {
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        Proxy {
            child,
            url,
            logs,
            stderr,
        }
    }

    fn ask(&self, prompt: &str) -> impl Future<Output = reqwest::Response> + 'static {
        ask(self.url.clone(), prompt.to_string())
    }

    async fn inflight(&self) -> u64 {
        let stats: Value = reqwest::get(format!("{}/stats", self.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        stats["cache"]["inflight"].as_u64().unwrap()
    }

    /// Send SIGTERM.
    fn sigterm(&self) {
        let pid = self.child.id().unwrap().to_string();
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(killed.success());
    }

    fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Wait for the process to exit: its status and everything it logged.
    async fn exited(mut self) -> (std::process::ExitStatus, String) {
        let status = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("the proxy exits after SIGTERM")
            .unwrap();
        (&mut self.stderr).await.unwrap();
        (status, self.logs())
    }
}

async fn ask(url: String, prompt: String) -> reqwest::Response {
    let body = json!({"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": prompt}]});
    reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", url))
        .bearer_auth(CALLER_KEY)
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn status(response: &reqwest::Response) -> &str {
    response.headers()["x-llm-cache"].to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_proxies_share_redis_and_one_shuts_down_gracefully() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let a = Proxy::start(&mock, &redis).await;
    let b = Proxy::start(&mock, &redis).await;

    let first = a.ask("shared").await;
    assert_eq!(status(&first), "miss");
    let text = first.text().await.unwrap();
    // The write to Redis is in the background: ask B until it hits L2.
    let start = std::time::Instant::now();
    loop {
        let answer = b.ask("shared").await;
        if status(&answer) == "hit-l2" {
            assert_eq!(answer.text().await.unwrap(), text);
            break;
        }
        assert!(start.elapsed() < WAIT, "B never found A's answer in Redis");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(mock.calls(), 1);

    // A cold key at both at once: one leads the call, the other waits on its lease.
    mock.hold_answers();
    let (ra, rb) = (a.ask("cold"), b.ask("cold"));
    let both = tokio::spawn(async move { tokio::join!(ra, rb) });
    mock.wait_for_calls(2).await;
    let start = std::time::Instant::now();
    while a.inflight().await == 0 || b.inflight().await == 0 {
        assert!(
            start.elapsed() < WAIT,
            "both proxies should have the key in flight"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    mock.release_all();
    let (ra, rb) = both.await.unwrap();
    let mut statuses = [status(&ra).to_string(), status(&rb).to_string()];
    statuses.sort();
    assert_eq!(
        statuses,
        ["hit-l2", "miss"],
        "one fetched, the other read it from Redis"
    );
    assert_eq!(ra.text().await.unwrap(), rb.text().await.unwrap());
    assert_eq!(
        mock.calls(),
        2,
        "a cold key at both proxies cost one upstream call"
    );

    // SIGTERM while a request is held at the mock: it is answered, then the process exits.
    mock.hold_answers();
    let url = a.url.clone();
    let in_flight = tokio::spawn(async move {
        reqwest::Client::new()
            .post(format!("{url}/v1/chat/completions"))
            .bearer_auth(CALLER_KEY)
            .json(&json!({"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "last"}]}))
            .send()
            .await
    });
    mock.wait_for_calls(3).await;
    a.sigterm();
    let logs = Arc::clone(&a.logs);
    llm_cache_test_support::eventually("the proxy logs that it is shutting down", WAIT, || {
        logs.lock().unwrap().contains("shutting down")
    })
    .await;
    mock.release_all();
    let answered = in_flight.await.unwrap().expect("answered, not cut");
    assert_eq!(answered.status(), 200);
    let (exit, logs) = a.exited().await;
    assert!(exit.success(), "{exit}: {logs}");
    assert!(logs.contains("shutting down"), "{logs}");
    // It closed the cache before exiting: the last answer is in Redis, no lease is left.
    assert!(logs.contains("cache closed"), "{logs}");
    assert_eq!(redis.leases_held("ai:cache"), 0);
    let after = b.ask("last").await;
    assert_eq!(status(&after), "hit-l2", "the answer A wrote while closing");
    assert_eq!(mock.calls(), 3);
    let logs = logs + &b.logs();
    for secret in [PROVIDER_KEY, CALLER_KEY] {
        assert!(!logs.contains(secret), "a key in the logs");
    }
    // stderr is a pipe here, not a terminal: no colour codes (issue 25, defect 5).
    assert!(
        !logs.contains('\u{1b}'),
        "ANSI escapes on a non-terminal: {logs:?}"
    );
}

/// `RUST_LOG` sets the log filter when `--log-level` is not given (issue 25, defect 5):
/// a DEBUG line of the cache's own appears with `RUST_LOG=llm_cache_core=debug`, and not at
/// the default level; `--log-level` given explicitly still wins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_log_sets_the_filter_unless_log_level_is_given() {
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let answered = |p: &Proxy| p.logs().contains("answered");
    let with_rust_log =
        Proxy::start_with(&mock, &redis, &[], &[("RUST_LOG", "llm_cache_core=debug")]).await;
    assert_eq!(with_rust_log.ask("rust-log").await.status(), 200);
    llm_cache_test_support::eventually("the DEBUG line of the request", WAIT, || {
        answered(&with_rust_log)
    })
    .await;
    let default = Proxy::start_with(&mock, &redis, &[], &[]).await;
    let overridden = Proxy::start_with(
        &mock,
        &redis,
        &["--log-level", "info"],
        &[("RUST_LOG", "llm_cache_core=debug")],
    )
    .await;
    for p in [&default, &overridden] {
        assert_eq!(p.ask("rust-log").await.status(), 200);
    }
    // Both answered (a hit each); stop them so that every line they wrote is read.
    for p in [default, overridden] {
        p.sigterm();
        let (exit, logs) = p.exited().await;
        assert!(exit.success(), "{exit}: {logs}");
        assert!(
            logs.contains("shutting down"),
            "INFO lines still there: {logs}"
        );
        assert!(!logs.contains("answered"), "no DEBUG line at info: {logs}");
    }
}

/// Read from `stream` until the server closes it (or resets it): what it wrote first.
async fn until_closed(stream: &mut tokio::net::TcpStream, what: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let read = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let seen = String::from_utf8_lossy(&seen).into_owned();
    assert!(
        read.is_ok(),
        "{what}: still open after {WAIT:?}; read {seen:?}"
    );
    seen
}

async fn connect(proxy: &Proxy) -> tokio::net::TcpStream {
    let addr = proxy.url.strip_prefix("http://").unwrap();
    tokio::net::TcpStream::connect(addr).await.unwrap()
}

/// Issue 25, defect 1: a head or a body sent too slowly and an idle keep-alive connection are
/// dropped after the configured timeouts (before: all still open after 45 s).
#[tokio::test(flavor = "multi_thread")]
async fn slow_heads_slow_bodies_and_idle_connections_are_dropped() {
    use tokio::io::AsyncWriteExt;
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let flags = ["--header-timeout-secs", "1", "--body-timeout-secs", "1"];
    let proxy = Proxy::start_with(&mock, &redis, &flags, &[]).await;

    let mut slow_head = connect(&proxy).await;
    slow_head
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n")
        .await
        .unwrap();
    let seen = until_closed(&mut slow_head, "a head that never ends").await;
    assert!(
        seen.is_empty() || seen.starts_with("HTTP/1.1 408"),
        "{seen}"
    );

    let mut slow_body = connect(&proxy).await;
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {CALLER_KEY}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"model\""
    );
    slow_body.write_all(head.as_bytes()).await.unwrap();
    let seen = until_closed(&mut slow_body, "a body that never ends").await;
    assert!(seen.starts_with("HTTP/1.1 408"), "{seen}");
    assert!(seen.contains("request_timeout"), "OpenAI-shaped: {seen}");

    let mut idle = connect(&proxy).await;
    idle.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    let seen = until_closed(&mut idle, "an idle keep-alive connection").await;
    assert!(
        seen.starts_with("HTTP/1.1 200"),
        "answered, then closed: {seen}"
    );
    assert_eq!(mock.calls(), 0, "nothing went upstream");
}

/// Issue 25, defect 1: over --max-connections a new connection is closed at once with a
/// warning (before: it waited, and at the descriptor limit locked out even /health).
#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_limit_are_shed_with_a_warning() {
    use tokio::io::AsyncWriteExt;
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let proxy = Proxy::start_with(&mock, &redis, &["--max-connections", "2"], &[]).await;
    let health = b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = connect(&proxy).await;
        c.write_all(health).await.unwrap();
        let mut buf = [0u8; 12];
        tokio::io::AsyncReadExt::read_exact(&mut c, &mut buf)
            .await
            .unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(c);
    }
    let mut extra = connect(&proxy).await;
    let _ = extra.write_all(health).await;
    let seen = until_closed(&mut extra, "a connection over the limit").await;
    assert!(
        seen.is_empty() || seen.starts_with("HTTP/1.1 503"),
        "{seen}"
    );
    llm_cache_test_support::eventually("the shedding warning", WAIT, || {
        proxy.logs().contains("connection limit reached")
    })
    .await;
    assert!(!proxy.logs().contains(CALLER_KEY));
    drop(held.pop());
    // Once under the limit again, /health answers (the slot is freed when the server sees
    // the close, so retry until then).
    let url = format!("{}/health", proxy.url);
    llm_cache_test_support::topology::eventually_async("/health under the limit", WAIT, || {
        let url = url.clone();
        async move {
            let client = reqwest::Client::builder().build().unwrap();
            matches!(client.get(&url).send().await, Ok(r) if r.status() == 200)
        }
    })
    .await;
}

#[tokio::test]
async fn the_admin_key_guards_the_operator_routes_and_invalidation_needs_the_permission() {
    const ADMIN_KEY: &str = "adm-proc-SECRET-0123456789";
    const OPS_KEY: &str = "sk-caller-ops-0123456789";
    let redis = RedisServer::start();
    let mock = MockUpstream::start().await;
    let ops_line = format!("team-a {OPS_KEY} allow=invalidate");
    let proxy = Proxy::start_with(
        &mock,
        &redis,
        &[
            "--log-level",
            "debug",
            "--metrics",
            "--caller-key",
            &ops_line,
        ],
        &[("LLM_CACHE_ADMIN_KEY", ADMIN_KEY)],
    )
    .await;
    let http = reqwest::Client::new();
    for path in ["/health", "/stats", "/metrics"] {
        let url = format!("{}{path}", proxy.url);
        assert_eq!(http.get(&url).send().await.unwrap().status(), 401, "{path}");
        let right = http.get(&url).bearer_auth(ADMIN_KEY).send().await.unwrap();
        assert_eq!(right.status(), 200, "{path}");
    }
    assert_eq!(status(&proxy.ask("invalidated").await), "miss");
    assert_eq!(status(&proxy.ask("invalidated").await), "hit-l1");
    let body = json!({"chat": {"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "invalidated"}]}});
    let invalidate = |key: &'static str| {
        http.post(format!("{}/v1/cache/invalidate", proxy.url))
            .bearer_auth(key)
            .json(&body)
            .send()
    };
    assert_eq!(invalidate(CALLER_KEY).await.unwrap().status(), 403);
    assert_eq!(invalidate(OPS_KEY).await.unwrap().status(), 200);
    assert_eq!(status(&proxy.ask("invalidated").await), "miss");
    proxy.sigterm();
    let (exit, logs) = proxy.exited().await;
    assert!(exit.success(), "{exit}: {logs}");
    assert!(logs.contains("admin_key=set"), "{logs}");
    for secret in [ADMIN_KEY, OPS_KEY, CALLER_KEY, PROVIDER_KEY] {
        assert!(!logs.contains(secret), "a key in the logs: {logs}");
    }
}
