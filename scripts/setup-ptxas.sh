#!/usr/bin/env bash
# ptxas (NVIDIA's PTX assembler) for the GPU back end's checks without a GPU: every kernel of
# every golden model must assemble for sm_70/sm_80/sm_90. PyPI's nvidia-cuda-nvcc-cu12 wheel
# ships bin/ptxas (a glibc-only x86-64 executable); this downloads it once (pip download, no
# install), unpacks only ptxas into <repo>/.tools/cuda-nvcc/bin/ and keeps the wheel in
# .tools/wheels/ as a cache. Idempotent: prints the ptxas path as its last line.
# Needs python3 with pip (the project's venv is used when present).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="${KILN_NVCC_WHEEL_VERSION:-12.9.86}"
DEST="$ROOT/.tools/cuda-nvcc"
PTXAS="$DEST/bin/ptxas"
if [ -x "$PTXAS" ] && "$PTXAS" --version >/dev/null 2>&1; then
    echo "$PTXAS"
    exit 0
fi
PY="$ROOT/.venv/bin/python"
[ -x "$PY" ] || PY=python3
WHEELS="$ROOT/.tools/wheels"
mkdir -p "$WHEELS" "$DEST/bin"
if ! ls "$WHEELS"/nvidia_cuda_nvcc_cu12-"$VERSION"-*.whl >/dev/null 2>&1; then
    echo "setup-ptxas: downloading nvidia-cuda-nvcc-cu12==$VERSION from PyPI" >&2
    "$PY" -m pip download --quiet --disable-pip-version-check --no-deps \
        --only-binary=:all: --platform manylinux2014_x86_64 --python-version 3.11 \
        -d "$WHEELS" "nvidia-cuda-nvcc-cu12==$VERSION" >&2
fi
WHL="$(ls "$WHEELS"/nvidia_cuda_nvcc_cu12-"$VERSION"-*.whl | head -n 1)"
# unpack bin/ptxas only (a zip loses the exec bit)
"$PY" - "$WHL" "$PTXAS" <<'PYEOF'
import sys, zipfile, shutil
whl, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    name = next(n for n in z.namelist() if n.endswith("cuda_nvcc/bin/ptxas"))
    with z.open(name) as src, open(dest + ".tmp", "wb") as dst:
        shutil.copyfileobj(src, dst)
PYEOF
chmod +x "$PTXAS.tmp"
mv "$PTXAS.tmp" "$PTXAS"
"$PTXAS" --version >&2
echo "$PTXAS"
