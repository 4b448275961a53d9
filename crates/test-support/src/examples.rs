//! The workspace's example binaries, for tests that run one as its user does.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;

/// The flags `scripts/test.sh` builds the tests with: an example built with the same ones
/// is already up to date there (`cargo test` builds the examples), so this costs nothing.
/// With any other flags Cargo would resolve other features for the shared dependencies
/// and rebuild dozens of crates inside a running test.
pub const BUILD_FLAGS: &[&str] = &["--workspace", "--all-features"];

/// The example `name`, built (once per test process, and never older than its source) in
/// the profile of the test that asks: `target/<profile>/examples/<name>`. Every feature is
/// on, so one binary serves every test (the demo's `--metrics-addr` needs `prometheus`).
pub fn binary(name: &str) -> PathBuf {
    static BUILT: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());
    let mut built = BUILT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(path) = built.get(name) {
        return path.clone();
    }
    let path = build(name);
    built.insert(name.to_owned(), path.clone());
    path
}

fn build(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/<profile>/deps/<test>-<hash> -> target/<profile>
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("a test binary lives in target/<profile>/deps");
    let mut command = Command::new(env!("CARGO"));
    command
        .args(["build", "--quiet", "--example", name])
        .args(BUILD_FLAGS)
        .arg("--manifest-path")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml"));
    if profile_dir.file_name().is_some_and(|p| p == "release") {
        command.arg("--release");
    }
    let status = command
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo build --example {name}: {e}"));
    assert!(
        status.success(),
        "cargo build --example {name} {BUILD_FLAGS:?} failed: {status}"
    );
    let bin = profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(bin.exists(), "no {name} binary at {}", bin.display());
    bin
}
