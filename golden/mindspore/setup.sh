#!/usr/bin/env bash
# Create (idempotently) the Python environment that regenerates the MindSpore golden data:
# golden/.cache/msvenv with the CPU `mindspore` wheel from PyPI. Only needed to regenerate
# golden/mindspore/<net>/; tests never run it. Prints the venv's python path.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="$ROOT/golden/.cache/msvenv"
PY="$VENV/bin/python"
PYTHON3="${PYTHON3:-python3.11}"
PKGS=(mindspore==2.7.1 numpy==1.26.4)
if [ ! -x "$PY" ]; then
    "$PYTHON3" -m venv "$VENV"
fi
if ! "$PY" - "${PKGS[@]}" >/dev/null 2>&1 <<'PYEOF'
import sys
from importlib.metadata import version
for spec in sys.argv[1:]:
    name, want = spec.split("==")
    if version(name) != want:
        sys.exit(1)
PYEOF
then
    "$PY" -m pip install --quiet --disable-pip-version-check "${PKGS[@]}"
fi
echo "$PY"
