#!/usr/bin/env bash
# What every job needs on a fresh machine: LLVM 19 (scripts/setup-llvm.sh), the integration
# tests' system tools (scripts/setup-tools.sh: cmake, the aarch64 cross toolchain and qemu,
# chromium), the Python reference environment (scripts/setup-python.sh), the (git-ignored)
# golden ONNX models, Netron for the OM tests (scripts/setup-netron.sh,
# when ../shared is present) and the kiln Python package in the venv (scripts/setup-python-package.sh).
# Prints the venv's python as its last line.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
scripts/setup-llvm.sh
scripts/setup-netron.sh
scripts/setup-tools.sh
PY="$(scripts/setup-python.sh | tail -n 1)"
"$PY" golden/make_golden.py --only-models --paddleocr --silero >&2
scripts/setup-python-package.sh
echo "$PY"
