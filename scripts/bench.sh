#!/usr/bin/env bash
# kiln vs ONNX Runtime on the golden models (incl. PaddleOCR and a 6-layer transformer encoder),
# interleaved in one run; writes docs/benchmarks.md. Extra arguments go to scripts/bench.py
# (e.g. --rounds 3 --runs 10 --models resnet18,encoder).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$(scripts/setup.sh | tail -n 1)"
cargo build --release -p kiln-compiler
"$PY" scripts/bench.py --markdown docs/benchmarks.md "$@"
