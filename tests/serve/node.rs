//! The HTTP front with the official `openai` Node SDK, installed under the build directory
//! by `scripts/node-sdk.sh` (run here when it is missing; it fails loudly, never skips).
//! The scenarios of tests/node/sdk_check.mjs run in one Node process against a router
//! served in-process on a loopback port, with `OPENAI_API_KEY` a caller key.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::front;
use crate::sdk::Sdk;
use crate::support::upstream::MockUpstream;
use serde_json::json;

const KEY_A1: &str = "sk-caller-a1-0123456789";

/// The SDK's node_modules, made by the script when the SDK does not load from it.
fn node_modules() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("node-sdk");
    let modules = dir.join("node_modules");
    let ready = std::process::Command::new("node")
        .args(["-e", "require('openai')"])
        .env("NODE_PATH", &modules)
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/node-sdk.sh");
        let status = std::process::Command::new(&script)
            .arg(&dir)
            .stdout(Stdio::null())
            .status()
            .expect("run scripts/node-sdk.sh");
        assert!(status.success(), "scripts/node-sdk.sh failed: {status}");
    }
    modules
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_openai_node_sdk_through_the_front() {
    let modules = node_modules();
    let mock = MockUpstream::start().await;
    let (_cache, front) = front::keyed(&mock, None).await;
    let modules = modules.to_str().unwrap();
    let mut sdk = Sdk::start(
        Path::new("node"),
        "tests/node/sdk_check.mjs",
        &front,
        KEY_A1,
        &[("LLM_CACHE_NODE_MODULES", modules)],
    );

    let chat = sdk.run("chat", &[]).await;
    assert_eq!(chat["statuses"], json!(["miss", "hit-l1"]), "{chat}");
    assert!(
        chat["text"].as_str().unwrap().ends_with("node hello"),
        "{chat}"
    );
    let stream = sdk.run("chat_stream", &[]).await;
    assert_eq!(stream["statuses"], json!(["miss", "hit-l1"]), "{stream}");
    assert!(stream["usage"].as_u64().unwrap() > 0, "{stream}");
    assert_eq!(mock.calls_to("/v1/chat/completions"), 2, "one call each");

    let embeddings = sdk.run("embeddings", &[]).await;
    assert_eq!(
        embeddings["statuses"],
        json!(["miss", "hit-l1"]),
        "{embeddings}"
    );
    assert_eq!(embeddings["dims"], 8, "{embeddings}");
    assert_eq!(mock.calls_to("/v1/embeddings"), 1);

    crate::bodies::check_sdk_bodies(&mut sdk, &mock).await;
}
