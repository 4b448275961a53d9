#!/usr/bin/env bash
# The Prometheus alert rules of deploy/prometheus/: `promtool check rules` on the rules and
# `promtool test rules` on their unit tests (every alert firing and not firing). promtool
# comes with Debian's `prometheus` package, installed when missing (without its
# recommends); fails loudly when it cannot be; never skips.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v promtool >/dev/null 2>&1; then
    echo "promtool: not installed; installing Debian's prometheus package" >&2
    # shellcheck source=scripts/apt-install.sh
    source scripts/apt-install.sh
    apt_install promtool.sh --no-install-recommends prometheus
fi
promtool --version 2>&1 | head -1
promtool check rules deploy/prometheus/llm-cache.rules.yml
promtool test rules deploy/prometheus/llm-cache.rules.test.yml
