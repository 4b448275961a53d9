//! Replays every input in `fuzz/regressions/<target>/` (crashes that `scripts/fuzz.sh`
//! found and saved) through the same checks as the fuzz target of that name
//! (`llm_cache::fuzzing`), so a fixed crash stays fixed without a nightly toolchain.

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;

use llm_cache::fuzzing::{
    embeddings_decode, envelope_decode, key_canonical, sse_parse, stream_assemble,
};

/// The replay for each fuzz target; a new target adds an arm here.
fn replay_for(target: &str) -> Option<fn(&[u8])> {
    match target {
        "envelope_decode" => Some(envelope_decode),
        "sse_parse" => Some(sse_parse),
        "stream_assemble" => Some(stream_assemble),
        "key_canonical" => Some(key_canonical),
        "embeddings_decode" => Some(embeddings_decode),
        _ => None,
    }
}

#[test]
fn fuzz_regressions_replay_clean() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let Ok(targets) = fs::read_dir(&root) else {
        eprintln!(
            "no {} (fuzz/ is not packaged); nothing to replay",
            root.display()
        );
        return;
    };
    let mut failures = Vec::new();
    let mut replayed = 0;
    for dir in targets {
        let dir = dir.expect("read fuzz/regressions").path();
        if !dir.is_dir() {
            continue;
        }
        let target = dir.file_name().unwrap().to_string_lossy().into_owned();
        let Some(replay) = replay_for(&target) else {
            eprintln!("skipping fuzz/regressions/{target}: no replay for this target");
            continue;
        };
        let mut inputs: Vec<_> = fs::read_dir(&dir)
            .expect("read regression dir")
            .map(|e| e.expect("read regression entry").path())
            .filter(|p| p.is_file() && !p.file_name().unwrap().to_string_lossy().starts_with('.'))
            .collect();
        inputs.sort();
        for input in inputs {
            let data = fs::read(&input).expect("read regression input");
            replayed += 1;
            if panic::catch_unwind(AssertUnwindSafe(|| replay(&data))).is_err() {
                failures.push(input.display().to_string());
            }
        }
    }
    eprintln!("replayed {replayed} fuzz regression inputs");
    assert!(
        failures.is_empty(),
        "fuzz regressions failed: {failures:#?}"
    );
}
