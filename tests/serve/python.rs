//! The HTTP front with the official `openai` Python SDK, installed into a virtualenv under
//! the build directory by `scripts/python-sdk.sh` (run here when the venv is missing; it
//! fails loudly, never skips). The scenarios of tests/python/sdk_check.py run in one Python
//! process against a router served in-process on a loopback port, with `OPENAI_API_KEY` a
//! caller key, and the mock upstream counts the calls.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::front;
use crate::support::served::Served;
use crate::support::upstream::{MockReply, MockUpstream};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

const KEY_A1: &str = "sk-caller-a1-0123456789";
const KEY_A2: &str = "sk-caller-a2-0123456789";
const KEY_B1: &str = "sk-caller-b1-0123456789";

/// The venv's python, made by the script when it is missing.
fn python() -> PathBuf {
    let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-sdk");
    let python = venv.join("bin/python");
    let ready = python.exists()
        && std::process::Command::new(&python)
            .args(["-c", "import openai"])
            .status()
            .is_ok_and(|s| s.success());
    if !ready {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/python-sdk.sh");
        let status = std::process::Command::new(&script)
            .arg(&venv)
            .stdout(Stdio::null())
            .status()
            .expect("run scripts/python-sdk.sh");
        assert!(status.success(), "scripts/python-sdk.sh failed: {status}");
    }
    python
}

/// One Python process running tests/python/sdk_check.py's scenarios as they are sent
/// (`--serve`): Python and the SDK are loaded once.
struct Sdk {
    child: Child,
    stdin: ChildStdin,
    lines: Lines<BufReader<ChildStdout>>,
}

impl Sdk {
    fn start(python: &Path, front: &Served) -> Sdk {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/sdk_check.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg("--serve")
            .env("LLM_CACHE_BASE_URL", front.v1())
            .env("OPENAI_API_KEY", KEY_A1)
            .env_remove("OPENAI_BASE_URL")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run python");
        let stdin = child.stdin.take().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Sdk {
            child,
            stdin,
            lines,
        }
    }

    /// Start scenario `name` with `args`.
    async fn send(&mut self, name: &str, args: &[&str]) {
        let line = format!("{name} {}\n", args.join(" "));
        self.stdin.write_all(line.as_bytes()).await.unwrap();
        self.stdin.flush().await.unwrap();
    }

    /// The result of the scenario sent last; fails the test with Python's traceback.
    async fn result(&mut self) -> Value {
        let line = match self.lines.next_line().await.unwrap() {
            Some(line) => line,
            None => panic!("python exited: {:?}", self.child.wait().await),
        };
        let value: Value = serde_json::from_str(&line).expect("one JSON line");
        if let Some(failed) = value.get("failed") {
            panic!(
                "the scenario failed in Python:\n{}",
                failed.as_str().unwrap_or_default()
            );
        }
        value
    }

    async fn run(&mut self, name: &str, args: &[&str]) -> Value {
        self.send(name, args).await;
        self.result().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_openai_python_sdk_through_the_front() {
    let python = python();
    let mock = MockUpstream::start().await;
    let (_cache, front) = front::keyed(&mock, None).await;
    let mut sdk = Sdk::start(&python, &front);

    let create = sdk.run("create", &[]).await;
    assert_eq!(create["statuses"], json!(["miss", "hit-l1"]), "{create}");
    assert!(create["text"].as_str().unwrap().ends_with("python hello"));
    assert_eq!(mock.calls(), 1, "the second call was answered from cache");

    let stream = sdk.run("stream", &[]).await;
    assert!(stream["usage"].as_u64().unwrap() > 0, "{stream}");
    assert_eq!(stream["status_after"], "hit-l1", "{stream}");
    assert_eq!(mock.calls(), 2, "one call for the streamed question");

    // Held at the mock until both questions' calls arrived: every SDK call joins them.
    mock.hold_answers();
    sdk.send("concurrent", &[]).await;
    mock.wait_for_calls(4).await;
    mock.release_all();
    let result = sdk.result().await;
    assert_eq!(result["answers"], 40, "{result}");
    assert_eq!(
        mock.calls(),
        4,
        "20 + 20 concurrent identical calls made two"
    );

    let tenants = sdk.run("tenants", &[KEY_A1, KEY_A2, KEY_B1]).await;
    assert_eq!(
        tenants["statuses"],
        json!(["miss", "miss", "hit-l1"]),
        "{tenants}"
    );
    assert_eq!(mock.calls(), 6);

    mock.push_reply(MockReply::rate_limited("7"));
    mock.push_reply(MockReply::Status {
        code: 400,
        body: json!({"error": {"message": "`max_tokens` is too large", "type": "invalid_request_error",
            "param": "max_tokens", "code": null}})
        .to_string(),
        retry_after: None,
    });
    let errors = sdk.run("errors", &[]).await;
    assert_eq!(
        errors["rate_limit"],
        json!({"status": 429, "retry_after": "7", "type": "rate_limit_error"}),
        "{errors}"
    );
    assert_eq!(
        errors["bad_request"],
        json!({"status": 400, "message": "`max_tokens` is too large", "param": "max_tokens"}),
        "{errors}"
    );
    assert_eq!(errors["unauthorized"]["status"], 401, "{errors}");
    assert_eq!(mock.calls(), 8, "the refused key reached nothing");

    let embeddings = sdk.run("embeddings", &[]).await;
    assert_eq!(
        embeddings["statuses"],
        json!(["miss", "partial"]),
        "{embeddings}"
    );
    assert_eq!(embeddings["dims"], 8, "{embeddings}");
    assert_eq!(
        mock.calls_to("/v1/embeddings"),
        2,
        "the float request was a hit"
    );
}
