#!/usr/bin/env bash
# What ../shared/tools/netron-check needs to open kiln's .om files (compiler/tests/om.rs):
# node (Debian's nodejs when missing) and the PyPI netron==9.3.3 wheel unpacked into the tool's
# cache ($KILN_TOOL_CACHE, else $XDG_CACHE_HOME or ~/.cache, /kiln-tools/netron-9.3.3), exactly
# where the tool looks for it, so the tests never download during a run. Without ../shared
# (a user's clone) there is nothing to do.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ ! -x "$ROOT/../shared/tools/netron-check" ]; then
    echo "setup-netron: ../shared/tools/netron-check not present; skipping" >&2
    exit 0
fi
if ! command -v node >/dev/null 2>&1; then
    echo "setup-netron: node not found; installing nodejs" >&2
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nodejs >/dev/null
fi
cache="${KILN_TOOL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln-tools}"
dir="$cache/netron-9.3.3"
if [ ! -f "$dir/netron/view.js" ]; then
    mkdir -p "$dir"
    python3 -m pip download -q --no-deps netron==9.3.3 -d "$dir" >&2
    (cd "$dir" && python3 -m zipfile -e netron-9.3.3-py3-none-any.whl .)
fi
