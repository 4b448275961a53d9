//! Replays every input in `fuzz/regressions/<target>/` (crashes that `scripts/fuzz.sh`
//! found and saved) through the same checks as the fuzz target of that name, so a fixed
//! crash stays fixed without a nightly toolchain.

use std::fs;
use std::panic::{self, AssertUnwindSafe};
use std::path::Path;

use llm_cache::envelope;
use llm_cache::stream::{Assembler, ReplayOptions, SseEvent, SseParser, parse_chunk, replay};
use xxhash_rust::xxh3::xxh3_64;

/// The replay for each fuzz target; a new target adds an arm here.
fn replay_for(target: &str) -> Option<fn(&[u8])> {
    match target {
        "envelope_decode" => Some(envelope_decode),
        "sse_parse" => Some(sse_parse),
        "stream_assemble" => Some(stream_assemble),
        _ => None,
    }
}

/// Mirrors `fuzz/fuzz_targets/envelope_decode.rs`.
fn envelope_decode(data: &[u8]) {
    fn check(bytes: &[u8]) {
        let Ok(env) = envelope::decode(bytes) else {
            return;
        };
        if env.flags.is_compressed() {
            let again = envelope::encode(&env.payload, env.created_at_ms, env.ttl_ms, 0);
            let back = envelope::decode(&again).expect("re-encoded envelope must decode");
            assert_eq!(back.payload, env.payload);
            assert_eq!(
                (back.created_at_ms, back.ttl_ms),
                (env.created_at_ms, env.ttl_ms)
            );
        } else {
            let again = envelope::encode(&env.payload, env.created_at_ms, env.ttl_ms, usize::MAX);
            assert_eq!(
                again, bytes,
                "raw envelope did not re-encode to the same bytes"
            );
        }
    }
    check(data);
    let mut sealed = data.to_vec();
    sealed.extend_from_slice(&xxh3_64(data).to_le_bytes());
    check(&sealed);
}

/// Mirrors `fuzz/fuzz_targets/sse_parse.rs`.
fn sse_parse(data: &[u8]) {
    type Outcome = (Vec<SseEvent>, Result<Option<SseEvent>, String>);
    fn run(limit: usize, pieces: &[&[u8]]) -> Outcome {
        let mut parser = SseParser::with_limit(limit);
        let mut events = Vec::new();
        for piece in pieces {
            if let Err(e) = parser.push_into(piece, &mut events) {
                return (events, Err(e.to_string()));
            }
        }
        (events, Ok(parser.finish()))
    }
    let (control, stream) = data.split_at(data.len().min(3));
    let cut = match control {
        [a, b, ..] => usize::from(u16::from_le_bytes([*a, *b])) % (stream.len() + 1),
        _ => 0,
    };
    let limit = match control.get(2) {
        Some(&b) if b < 128 => usize::from(b) + 1,
        _ => usize::MAX,
    };
    let whole = run(limit, &[stream]);
    let (head, tail) = stream.split_at(cut);
    assert_eq!(run(limit, &[head, tail]), whole, "cut at {cut}");
    let bytewise: Vec<&[u8]> = stream.chunks(1).collect();
    assert_eq!(run(limit, &bytewise), whole, "byte by byte");
}

/// Mirrors `fuzz/fuzz_targets/stream_assemble.rs`.
fn stream_assemble(data: &[u8]) {
    let mut parser = SseParser::new();
    let Ok(events) = parser.push(data) else {
        return;
    };
    let mut assembler = Assembler::new();
    for event in &events {
        if let Ok(Some(chunk)) = parse_chunk(&event.data) {
            let _ = assembler.push(&chunk);
        }
    }
    let Ok(response) = assembler.finish() else {
        return;
    };
    let options = ReplayOptions {
        chunk_chars: data.first().map_or(1, |&b| usize::from(b % 32)),
        include_usage: true,
    };
    let mut again = Assembler::new();
    for chunk in replay(&response, &options) {
        again.push(&chunk).expect("a replayed chunk must assemble");
    }
    let again = again.finish().expect("a replayed stream must finish");
    assert_eq!(
        again, response,
        "replay did not assemble back into the response"
    );
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
