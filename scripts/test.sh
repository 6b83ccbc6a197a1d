#!/usr/bin/env bash
# The test command: sets up the Python reference environment, regenerates the (git-ignored)
# golden ONNX models, builds the Python package, then runs every Rust test (which include the
# pytest suite, the C/CMake, build.rs and cross/qemu examples and the headless-Chromium
# report check) with the golden models and those tools required.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$(scripts/setup.sh | tail -n 1)"
export KILN_REQUIRE_GOLDEN=1 KILN_REQUIRE_TOOLS=1
# the Python extension was just built by maturin with these (pyo3's build script reruns when
# they change): the same values keep cargo test from building pyo3 a second time
export PYO3_PYTHON="$PY" PYTHON_SYS_EXECUTABLE="$PY" PYO3_BUILD_EXTENSION_MODULE=1 \
    PYO3_ENVIRONMENT_SIGNATURE="cpython-$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-64bit"
LOG="$(mktemp)"
trap 'rm -f "$LOG"' EXIT
status=0
cargo test --workspace --all-targets --locked 2>&1 | tee "$LOG" || status=$?
echo
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "summary: %d passed, %d failed\n", p, f }' "$LOG"
exit "$status"
