#!/usr/bin/env bash
# The test command: sets up the Python reference environment, regenerates the (git-ignored)
# golden ONNX models, then runs every Rust test with the golden models required.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$(scripts/setup.sh | tail -n 1)"
export KILN_REQUIRE_GOLDEN=1
LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
status=0
cargo test --workspace --all-targets --locked 2>&1 | tee "$LOG" || status=$?
echo
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "summary: %d passed, %d failed\n", p, f }' "$LOG"
exit "$status"
