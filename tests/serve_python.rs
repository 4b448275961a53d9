//! The HTTP front with the official `openai` Python SDK, installed into a virtualenv under
//! the build directory by `scripts/python-sdk.sh` (run here when the venv is missing; it
//! fails loudly, never skips). Each scenario of tests/python/sdk_check.py runs against a
//! router served in-process on a loopback port, with `OPENAI_API_KEY` a caller key, and
//! the mock upstream counts the calls.

mod support;

use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{Value, json};
use support::front::{self, Served};
use support::upstream::{MockReply, MockUpstream};

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

/// Run one scenario against `front` and read its JSON.
async fn scenario(python: &Path, front: &Served, name: &str, args: &[&str]) -> Value {
    run(
        python.to_path_buf(),
        front.v1(),
        name.to_string(),
        args.iter().map(|a| a.to_string()).collect(),
    )
    .await
}

/// [`scenario`] with owned arguments, to run in a task of its own.
async fn run(python: PathBuf, base_url: String, name: String, args: Vec<String>) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/sdk_check.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .arg(&name)
        .args(args)
        .env("LLM_CACHE_BASE_URL", base_url)
        .env("OPENAI_API_KEY", KEY_A1)
        .env_remove("OPENAI_BASE_URL")
        .kill_on_drop(true)
        .output()
        .await
        .expect("run python");
    assert!(
        out.status.success(),
        "scenario {name} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(stdout.lines().last().unwrap_or_default()).expect("one JSON line")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_openai_python_sdk_through_the_front() {
    let python = python();
    let mock = MockUpstream::start().await;
    let (_cache, front) = front::keyed(&mock, None).await;

    let create = scenario(&python, &front, "create", &[]).await;
    assert_eq!(create["statuses"], json!(["miss", "hit-l1"]), "{create}");
    assert!(create["text"].as_str().unwrap().ends_with("python hello"));
    assert_eq!(mock.calls(), 1, "the second call was answered from cache");

    let stream = scenario(&python, &front, "stream", &[]).await;
    assert!(stream["usage"].as_u64().unwrap() > 0, "{stream}");
    assert_eq!(stream["status_after"], "hit-l1", "{stream}");
    assert_eq!(mock.calls(), 2, "one call for the streamed question");

    // Held at the mock until both questions' calls arrived: every SDK call joins them.
    mock.hold_answers();
    let concurrent = tokio::spawn(run(python.clone(), front.v1(), "concurrent".into(), vec![]));
    mock.wait_for_calls(4).await;
    mock.release_all();
    let result = concurrent.await.unwrap();
    assert_eq!(result["answers"], 40, "{result}");
    assert_eq!(
        mock.calls(),
        4,
        "20 + 20 concurrent identical calls made two"
    );

    let tenants = scenario(&python, &front, "tenants", &[KEY_A1, KEY_A2, KEY_B1]).await;
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
    let errors = scenario(&python, &front, "errors", &[]).await;
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

    let embeddings = scenario(&python, &front, "embeddings", &[]).await;
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
