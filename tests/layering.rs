//! The shape of `src/`, checked by reading the sources: the rooms' arrows point down only,
//! and no file grows past [`MAX_LINES`].
//!
//! The generic engine (`src/tiered/`) must know nothing of the LLM layer: no path into
//! `chat`, `stream`, `upstream`, `request` (or the rooms to come: `embeddings`, `semantic`,
//! `integrations`), not through `super::` either, and no LLM type through the crate root's
//! re-exports (`crate::ChatResponse`, `crate::LlmCache`...), which are read from `lib.rs`
//! so a new one is covered without editing this test. `stream/` and `upstream/` sit below
//! `chat/` and beside the engine, and must not reach into either.
//!
//! Why a test that reads the sources rather than a workspace of crates (where the compiler
//! would enforce the arrows): it is lighter. The crate stays one crate, one `Cargo.toml`,
//! one version to publish; every public path (`llm_cache::TieredCache`,
//! `llm_cache::envelope`, `llm_cache::stream::*`...) stays where users and the docs' doc
//! tests find it; and the engine keeps its `pub(crate)` seams (stats, the guarded L2) that
//! a separate crate would have to make public. The price is that the check is textual: it
//! catches a path written in the code or its docs, which is how every import is written.

use std::fs;
use std::path::{Path, PathBuf};

/// No source file, unit tests included, may be longer than this.
const MAX_LINES: usize = 800;

/// The rooms the engine must never name.
const ABOVE_THE_ENGINE: [&str; 10] = [
    "serve",
    "chat",
    "stream",
    "upstream",
    "request",
    "embeddings",
    "semantic",
    "integrations",
    "prometheus",
    "fuzzing",
];

/// The rooms `stream/` and `upstream/` must never name (besides each other, in the case of
/// `stream/`, which sits below `upstream/`).
const ABOVE_STREAM_AND_UPSTREAM: [&str; 8] = [
    "serve",
    "chat",
    "tiered",
    "embeddings",
    "semantic",
    "integrations",
    "prometheus",
    "fuzzing",
];

/// The rooms `embeddings/` must never name: it sits below `chat/`, which hands it the key
/// scope, the upstream and the options, and beside the engine, which it uses.
const ABOVE_EMBEDDINGS: [&str; 6] = [
    "chat",
    "semantic",
    "integrations",
    "serve",
    "prometheus",
    "fuzzing",
];

/// The rooms the wire types (`request/`) must never name: they are the bottom layer.
const ABOVE_REQUEST: [&str; 10] = [
    "chat",
    "tiered",
    "stream",
    "upstream",
    "embeddings",
    "semantic",
    "integrations",
    "serve",
    "prometheus",
    "fuzzing",
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn shown(path: &Path) -> String {
    path.strip_prefix(env!("CARGO_MANIFEST_DIR"))
        .unwrap_or(path)
        .display()
        .to_string()
}

fn is_ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Whether `line` holds `needle` as a whole path (not followed by more of an identifier:
/// `crate::stream` must not match `crate::streams`).
fn mentions(line: &str, needle: &str) -> bool {
    line.match_indices(needle).any(|(at, _)| {
        let before = line[..at].chars().next_back();
        let after = line[at + needle.len()..].chars().next();
        !before.is_some_and(is_ident_char) && !after.is_some_and(is_ident_char)
    })
}

/// The names `lib.rs` re-exports from the rooms in `rooms` (`pub use chat::{LlmCache, ..}`
/// gives `LlmCache`...), aliases and `self` left out.
fn reexports_from(rooms: &[&str]) -> Vec<String> {
    let lib = fs::read_to_string(src().join("lib.rs")).expect("src/lib.rs");
    let mut names = Vec::new();
    for statement in lib.split(';') {
        // Drop the comments and attributes that precede the statement.
        let code: String = statement
            .lines()
            .filter(|l| {
                let l = l.trim_start();
                !(l.starts_with("//") || l.starts_with("#["))
            })
            .collect::<Vec<_>>()
            .join(" ");
        let Some(path) = code.trim().strip_prefix("pub use ") else {
            continue;
        };
        let room = path.split("::").next().unwrap_or("").trim();
        if !rooms.contains(&room) {
            continue;
        }
        let tail = match path.find('{') {
            Some(open) => &path[open + 1..path.rfind('}').unwrap_or(path.len())],
            None => path.rsplit("::").next().unwrap_or(""),
        };
        for item in tail.split(',') {
            let item = item.trim();
            let name = item.rsplit("::").next().unwrap_or("").trim();
            let name = name.split(" as ").last().unwrap_or("").trim();
            if !name.is_empty() && name != "self" && name.chars().all(is_ident_char) {
                names.push(name.to_string());
            }
        }
    }
    names.sort();
    names.dedup();
    names
}

/// Every line of the files under `room` that names one of `rooms` (as `crate::x` or
/// `super::x`) or one of `names` through the crate root, as `file:line: text`.
fn violations(room: &str, rooms: &[&str], names: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for file in rust_files(&src().join(room)) {
        let text = fs::read_to_string(&file).expect("source file");
        for (n, line) in text.lines().enumerate() {
            let mut bad: Vec<String> = Vec::new();
            for r in rooms {
                for needle in [format!("crate::{r}"), format!("super::{r}")] {
                    if mentions(line, &needle) {
                        bad.push(needle);
                    }
                }
            }
            for name in names {
                let needle = format!("crate::{name}");
                if mentions(line, &needle) {
                    bad.push(needle);
                }
            }
            // `use crate::{A, b::C}`: the names inside the braces, on this line.
            if let Some(at) = line.find("crate::{") {
                let group = &line[at + "crate::{".len()..];
                let group = &group[..group.find('}').unwrap_or(group.len())];
                for item in group.split(',') {
                    let head = item.trim().split("::").next().unwrap_or("").trim();
                    if rooms.contains(&head) || names.iter().any(|n| n == head) {
                        bad.push(format!("crate::{{{head}}}"));
                    }
                }
            }
            if !bad.is_empty() {
                found.push(format!(
                    "{}:{}: names {}: {}",
                    shown(&file),
                    n + 1,
                    bad.join(", "),
                    line.trim()
                ));
            }
        }
    }
    found
}

#[test]
fn the_engine_knows_nothing_of_the_llm_layer() {
    let llm_names = reexports_from(&ABOVE_THE_ENGINE);
    assert!(
        llm_names.iter().any(|n| n == "LlmCache") && llm_names.iter().any(|n| n == "ChatResponse"),
        "lib.rs's re-exports were not read: {llm_names:?}"
    );
    let found = violations("tiered", &ABOVE_THE_ENGINE, &llm_names);
    assert!(
        found.is_empty(),
        "src/tiered/ must not depend on the LLM layer (move the type down, or the code up):\n{}",
        found.join("\n")
    );
}

#[test]
fn stream_and_upstream_do_not_reach_up() {
    let mut found = violations("stream", &ABOVE_STREAM_AND_UPSTREAM, &[]);
    found.extend(violations("stream", &["upstream"], &[]));
    found.extend(violations("upstream", &ABOVE_STREAM_AND_UPSTREAM, &[]));
    assert!(
        found.is_empty(),
        "src/stream/ and src/upstream/ sit below chat/ and beside tiered/:\n{}",
        found.join("\n")
    );
}

#[test]
fn embeddings_sit_below_chat_and_the_wire_types_below_everything() {
    let chat_names = reexports_from(&["chat"]);
    assert!(chat_names.iter().any(|n| n == "LlmCache"), "{chat_names:?}");
    let mut found = violations("embeddings", &ABOVE_EMBEDDINGS, &chat_names);
    found.extend(violations("request", &ABOVE_REQUEST, &[]));
    // The HTTP-level parts sit on top: chat/ never names them.
    found.extend(violations(
        "chat",
        &["serve", "integrations"],
        &reexports_from(&["serve", "integrations"]),
    ));
    assert!(
        found.is_empty(),
        "src/embeddings/ sits below chat/, chat/ below serve/ and integrations/, src/request/ below every room:\n{}",
        found.join("\n")
    );
}

#[test]
fn no_source_file_is_too_long() {
    let too_long: Vec<String> = rust_files(&src())
        .into_iter()
        .filter_map(|file| {
            let lines = fs::read_to_string(&file)
                .expect("source file")
                .lines()
                .count();
            (lines > MAX_LINES).then(|| format!("{}: {lines} lines", shown(&file)))
        })
        .collect();
    assert!(
        too_long.is_empty(),
        "split these along a real seam (at most {MAX_LINES} lines, unit tests included):\n{}",
        too_long.join("\n")
    );
}

#[test]
fn the_checks_catch_what_they_should() {
    assert!(mentions("use crate::chat::LlmCache;", "crate::chat"));
    assert!(mentions("use super::super::chat::x;", "super::chat"));
    assert!(!mentions("use crate::streams;", "crate::stream"));
    assert!(!mentions("use crate::tiered::stream_x;", "crate::stream"));
    assert!(mentions(
        "/// see [`x`](crate::LlmCache)",
        "crate::LlmCache"
    ));
    assert!(!mentions("crate::LlmCacheBuilder", "crate::LlmCache"));
}
