#!/usr/bin/env bash
# Debian's headless-capable Chromium, for the dashboard test (tests/serve/dashboard.rs:
# the page is loaded against a live front and its rendered numbers compared with /stats).
# Idempotent: an installed `chromium` is left as it is. Fails loudly when it cannot be
# installed; never skips. Prints the browser's path on its last line.
set -euo pipefail

if ! command -v chromium >/dev/null 2>&1; then
    echo "chromium: not installed; installing Debian's chromium package" >&2
    # shellcheck source=scripts/apt-install.sh
    source "$(dirname "${BASH_SOURCE[0]}")/apt-install.sh"
    apt_install chromium.sh --no-install-recommends chromium
fi
chromium --version >&2
command -v chromium
