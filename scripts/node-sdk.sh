#!/usr/bin/env bash
# The official `openai` Node SDK in a directory of its own, for tests/serve/node.rs (the
# HTTP front checked with the SDK its JavaScript users call it with). Idempotent: a
# directory whose `openai` package already loads is left as it is. Fails loudly when it
# cannot be made; never skips.
#
#   scripts/node-sdk.sh [DIR]    # default: $CARGO_TARGET_DIR/tmp/node-sdk
#                                # (target/tmp/node-sdk), where the test looks
# Prints DIR's node_modules on its last line (tests/node/sdk_check.mjs loads the SDK from it).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"
dir="${1:-$target/tmp/node-sdk}"
# The SDK major version the tests were written against (7.x needs Node 22).
spec="openai@^6"

loads() {
    [ -d "$dir/node_modules/openai" ] && command -v node >/dev/null 2>&1 &&
        NODE_PATH="$dir/node_modules" node -e 'require("openai")' >/dev/null 2>&1
}

version() {
    node -p 'JSON.parse(require("fs").readFileSync(process.argv[1])).version' \
        "$dir/node_modules/openai/package.json"
}

if loads; then
    echo "node-sdk: openai $(version) already in $dir" >&2
    echo "$dir/node_modules"
    exit 0
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    # shellcheck source=scripts/apt-install.sh
    source "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh"
    echo "node-sdk: node or npm is missing; installing them" >&2
    apt_install node-sdk nodejs npm
fi

rm -rf "$dir"
mkdir -p "$dir"
# A package.json of its own, so npm installs here and not into a parent project.
echo '{"name": "llm-cache-node-sdk-check", "private": true}' >"$dir/package.json"
npm install --prefix "$dir" --no-audit --no-fund --loglevel=error "$spec" >&2
if ! loads; then
    echo "node-sdk: $spec was installed into $dir but does not load with $(node --version)" >&2
    exit 1
fi
echo "node-sdk: openai $(version) installed in $dir" >&2
echo "$dir/node_modules"
