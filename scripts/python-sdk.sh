#!/usr/bin/env bash
# A virtualenv with the official `openai` Python SDK, for tests/serve/python.rs (the HTTP
# front checked with the SDK its users call it with). Idempotent: a venv that already
# imports `openai` is left as it is. Fails loudly when it cannot be made; never skips.
#
#   scripts/python-sdk.sh [VENV_DIR]    # default: $CARGO_TARGET_DIR/tmp/python-sdk
#                                       # (target/tmp/python-sdk), where the test looks
# Prints the venv's python on its last line.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"
venv="${1:-$target/tmp/python-sdk}"
# The SDK major version the tests were written against.
spec="openai>=1.40,<3"

python="$venv/bin/python"
if [ -x "$python" ] && "$python" -c 'import openai' >/dev/null 2>&1; then
    echo "python-sdk: $("$python" -c 'import openai; print("openai", openai.__version__)') already in $venv" >&2
    echo "$python"
    exit 0
fi

# shellcheck source=scripts/apt-install.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh"

if ! command -v python3 >/dev/null 2>&1; then
    echo "python-sdk: python3 is missing; installing it" >&2
    apt_install python-sdk python3 python3-venv
fi

rm -rf "$venv"
mkdir -p "$(dirname "$venv")"
if ! python3 -m venv "$venv" >/dev/null 2>&1; then
    # Debian and Ubuntu ship venv (and ensurepip) separately.
    echo "python-sdk: python3 -m venv failed; installing python3-venv" >&2
    apt_install python-sdk python3-venv
    rm -rf "$venv"
    python3 -m venv "$venv"
fi
"$python" -m pip install --quiet --disable-pip-version-check "$spec"
"$python" -c 'import openai; print("python-sdk: openai", openai.__version__, "installed")' >&2
echo "$python"
