#!/usr/bin/env bash
# Run every cargo-fuzz target for SECONDS each. A crash is copied into
# fuzz/regressions/<target>/ (replayed by tests/engine/fuzz_regressions.rs) and fails the run.
# Stable toolchain: cargo-fuzz needs nightly flags, hence RUSTC_BOOTSTRAP=1.
set -euo pipefail

if [[ $# -ne 1 || ! $1 =~ ^[0-9]+$ ]]; then
    echo "usage: $0 SECONDS" >&2
    exit 2
fi
seconds=$1

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export RUSTC_BOOTSTRAP=1

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

mapfile -t targets < <(cargo fuzz list)
if [[ ${#targets[@]} -eq 0 ]]; then
    echo "no fuzz targets" >&2
    exit 1
fi

# The targets are built with FUZZ_CODEGEN_UNITS codegen units (default 16: cargo-fuzz's own
# default of 1 builds the crate on one core, more than twice the wall time here, for runs a
# few per cent faster; set 1 for long runs). FUZZ_JOBS targets run at once (default: one per
# CPU); each one's log is kept and its last lines printed.
build_flags=(--codegen-units "${FUZZ_CODEGEN_UNITS:-16}")
jobs=${FUZZ_JOBS:-$(nproc)}

# One build for every target; each `cargo fuzz run` below then finds it up to date.
cargo fuzz build "${build_flags[@]}"

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

# One target: its run's exit status goes to $logs/<target>.status, its output to .log.
fuzz_one() {
    local target=$1
    local corpus=fuzz/corpus/$target
    local regressions=fuzz/regressions/$target
    mkdir -p "$corpus" "$regressions" "fuzz/artifacts/$target"
    # Past crashes and committed seeds (fuzz/seeds/<target>/) start the run as read-only
    # corpora, with fuzz/dicts/<target>.dict when there is one; new inputs go to $corpus.
    local extra=() flags=()
    [[ -d fuzz/seeds/$target ]] && extra+=("fuzz/seeds/$target")
    [[ -f fuzz/dicts/$target.dict ]] && flags+=("-dict=fuzz/dicts/$target.dict")
    local status=0
    cargo fuzz run "${build_flags[@]}" "$target" "$corpus" "$regressions" "${extra[@]}" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 "${flags[@]}" >"$logs/$target.log" 2>&1 ||
        status=$?
    echo "$status" >"$logs/$target.status"
}

running=0
for target in "${targets[@]}"; do
    if ((running >= jobs)); then
        wait -n || true
        running=$((running - 1))
    fi
    touch "$logs/$target.marker"
    echo "== fuzzing $target for ${seconds}s"
    fuzz_one "$target" &
    running=$((running + 1))
done
wait

failed=()
for target in "${targets[@]}"; do
    status=$(cat "$logs/$target.status" 2>/dev/null || echo "no status")
    if [[ $status == 0 ]]; then
        echo "== $target: clean; the end of its log:"
        tail -n 4 "$logs/$target.log"
        continue
    fi
    echo "== $target failed ($status); its whole log:" >&2
    cat "$logs/$target.log" >&2
    failed+=("$target")
    found=0
    regressions=fuzz/regressions/$target
    while IFS= read -r -d '' artifact; do
        cp "$artifact" "$regressions/"
        echo "saved $regressions/$(basename "$artifact")" >&2
        found=1
    done < <(find "fuzz/artifacts/$target" -type f -newer "$logs/$target.marker" -print0)
    if [[ $found -eq 0 ]]; then
        echo "$target failed without leaving an artifact" >&2
    fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzzing failed: ${failed[*]}" >&2
    exit 1
fi
echo "fuzzing clean: ${targets[*]}"
