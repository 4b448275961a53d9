#!/usr/bin/env bash
# The HTTP front against a bare handler (benches/front.rs): installs wrk from Debian when
# missing (fails loudly when it cannot), then runs the bench, which prints one JSON object
# (medians of three rounds; `--short` or FRONT_BENCH_SHORT=1 for one round of 1 s runs).
# Extra arguments go to cargo (e.g. `--profile release`).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v "${WRK:-wrk}" >/dev/null 2>&1; then
    echo "bench-front.sh: wrk is not installed; installing Debian's wrk package" >&2
    # shellcheck source=scripts/apt-install.sh
    source scripts/apt-install.sh
    apt_install bench-front.sh wrk
fi
"${WRK:-wrk}" --version 2>&1 | head -1 >&2 || true

cargo_args=()
for arg in "$@"; do
    if [ "$arg" = "--short" ]; then
        export FRONT_BENCH_SHORT=1
    else
        cargo_args+=("$arg")
    fi
done
cargo bench --bench front --features serve "${cargo_args[@]+"${cargo_args[@]}"}"
