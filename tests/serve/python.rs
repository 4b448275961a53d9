//! The HTTP front with the official `openai` Python SDK, installed into a virtualenv under
//! the build directory by `scripts/python-sdk.sh` (run here when the venv is missing; it
//! fails loudly, never skips). The scenarios of tests/python/sdk_check.py run in one Python
//! process against a router served in-process on a loopback port, with `OPENAI_API_KEY` a
//! caller key, and the mock upstream counts the calls.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::front;
use crate::sdk::Sdk;
use crate::support::upstream::{MockReply, MockUpstream};
use serde_json::json;

const KEY_A1: &str = "sk-caller-a1-0123456789";
const KEY_A2: &str = "sk-caller-a2-0123456789";
const KEY_B1: &str = "sk-caller-b1-0123456789";

/// The venv's python, made by the script when it is missing (once: the tests of this file
/// run at the same time).
fn python() -> PathBuf {
    static PYTHON: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PYTHON.get_or_init(make_python).clone()
}

fn make_python() -> PathBuf {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_openai_python_sdk_through_the_front() {
    let python = python();
    let mock = MockUpstream::start().await;
    let (_cache, front) = front::keyed(&mock, None).await;
    let mut sdk = Sdk::start(&python, "tests/python/sdk_check.py", &front, KEY_A1, &[]);

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

/// The routes users moved to (issue 25, item 6): `responses.create`, JSON and streamed,
/// and `completions.create`, each answered from cache the second time, as it came.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_python_sdks_responses_and_completions_through_the_front() {
    let python = python();
    let mock = MockUpstream::start().await;
    let (_cache, front) = front::keyed(&mock, None).await;
    let mut sdk = Sdk::start(&python, "tests/python/sdk_check.py", &front, KEY_A1, &[]);
    crate::bodies::check_sdk_bodies(&mut sdk, &mock).await;
}
