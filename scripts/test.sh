#!/usr/bin/env bash
# The test command: sets up the Python reference environment, regenerates the (git-ignored)
# golden ONNX models, then runs every Rust test with the golden models required.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$(scripts/setup-python.sh | tail -n 1)"
"$PY" golden/make_golden.py --only-models --paddleocr
export KILN_REQUIRE_GOLDEN=1
cargo test --workspace --locked 2>&1
