#!/usr/bin/env bash
# The README's demo as a smoke check: a short workload against the local stub upstream
# (L1 only, or L1 + Redis when REDIS_URL is set), printed as its JSON report.
# Fails when the demo fails or its report says a request failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# DEMO_BIN: a demo binary already built (scripts/test.sh passes the one its test build made);
# otherwise the README's command builds it.
demo() {
    if [ -n "${DEMO_BIN:-}" ]; then
        "$DEMO_BIN" "$@"
    else
        cargo run --quiet --release --example demo -- "$@"
    fi
}

report="$(demo --requests 500 --latency-ms 5:30 --json)"
if command -v jq >/dev/null 2>&1; then
    jq . <<<"$report"
else
    printf '%s\n' "$report"
fi
case "$report" in
    *'"errors":0,'* | *'"errors":0}'*) ;;
    *) echo "demo-check: the demo reported failed requests" >&2; exit 1 ;;
esac

# The embeddings mode: a short re-indexing workload; every vector is checked against the
# stub's, and only edited chunks may reach the upstream after the first pass.
report="$(demo --embeddings --documents 10 --chunks 20 --passes 3 --json)"
printf '%s\n' "$report"
case "$report" in
    *'"vector_mismatches":0'*'"errors":0'* | *'"errors":0'*'"vector_mismatches":0'*) ;;
    *) echo "demo-check: the embeddings demo reported wrong vectors or failed requests" >&2; exit 1 ;;
esac
