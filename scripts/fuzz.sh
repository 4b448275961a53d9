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

# One build for every target; each `cargo fuzz run` below then finds it up to date.
cargo fuzz build

marker=$(mktemp)
trap 'rm -f "$marker"' EXIT

failed=()
for target in "${targets[@]}"; do
    corpus=fuzz/corpus/$target
    regressions=fuzz/regressions/$target
    mkdir -p "$corpus" "$regressions" "fuzz/artifacts/$target"
    touch "$marker"
    echo "== fuzzing $target for ${seconds}s"
    # Past crashes and committed seeds (fuzz/seeds/<target>/) start the run as read-only
    # corpora, with fuzz/dicts/<target>.dict when there is one; new inputs go to $corpus.
    extra=()
    [[ -d fuzz/seeds/$target ]] && extra+=("fuzz/seeds/$target")
    flags=()
    [[ -f fuzz/dicts/$target.dict ]] && flags+=("-dict=fuzz/dicts/$target.dict")
    if cargo fuzz run "$target" "$corpus" "$regressions" "${extra[@]}" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 "${flags[@]}"; then
        continue
    fi
    failed+=("$target")
    found=0
    while IFS= read -r -d '' artifact; do
        cp "$artifact" "$regressions/"
        echo "saved $regressions/$(basename "$artifact")" >&2
        found=1
    done < <(find "fuzz/artifacts/$target" -type f -newer "$marker" -print0)
    if [[ $found -eq 0 ]]; then
        echo "$target failed without leaving an artifact" >&2
    fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "fuzzing failed: ${failed[*]}" >&2
    exit 1
fi
echo "fuzzing clean: ${targets[*]}"
