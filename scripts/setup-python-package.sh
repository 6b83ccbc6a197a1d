#!/usr/bin/env bash
# Build the `kiln` Python package (python/: pyo3 extension + Python half) into the project's
# venv (.venv, scripts/setup-python.sh) with maturin, plus pytest for its tests. Idempotent:
# cargo rebuilds only what changed; the build shares the workspace's target/ and dev profile,
# so after `cargo build` the extension costs one link. Usage: scripts/setup-python-package.sh
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$("$ROOT/scripts/setup-python.sh" | tail -n 1)"
VENV="$(dirname "$(dirname "$PY")")"
PKGS=(maturin==1.16.0 pytest==9.2.0)
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
# `maturin develop` builds python/ (dev profile, the workspace's target/) and installs it
# into the venv as an editable package (python/kiln/ + kiln/_native*.so)
cd "$ROOT"
VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH" "$VENV/bin/maturin" develop --quiet \
    --manifest-path python/Cargo.toml >&2
"$PY" -c "import kiln; print('kiln', kiln.__version__, 'for Python', __import__('sys').version.split()[0])" >&2
