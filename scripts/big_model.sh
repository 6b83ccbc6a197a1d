#!/usr/bin/env bash
# A > 2 GB external-data ONNX model (a generated transformer, scripts/big_model.py) compiled
# and run: peak RSS of `kiln build` against the weight bytes (the weights are memory-mapped,
# never copied whole), and the executable's output against ONNX Runtime. Needs ~8 GB of disk
# and the Python venv (scripts/setup.sh); too slow for the default test run — its result is
# in docs/robustness.md.
#
#   scripts/big_model.sh [DIR] [--layers N]    (DIR default: a temporary directory)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
[[ -x "$PY" ]] || PY="$(scripts/setup-python.sh | tail -n 1)"
dir="${1:-}"
shift || true
if [[ -z "$dir" ]]; then
  dir="$(mktemp -d)"
  trap 'rm -rf "$dir"' EXIT
fi
# the dev profile (dependencies at -O2): what the tests build; no second build tree
cargo build -q -p kiln-compiler
kiln="$ROOT/target/debug/kiln"

"$PY" scripts/big_model.py "$dir" "$@"
weights=$(stat -c %s "$dir/big.weights")

rss_of() { grep 'Maximum resident set size' "$1" | grep -o '[0-9]*$'; }
secs_of() { grep 'Elapsed (wall clock)' "$1" | awk '{print $NF}'; }

/usr/bin/time -v "$kiln" build "$dir/big.onnx" --emit exe -o "$dir/big" 2>"$dir/build.log" \
  || { cat "$dir/build.log"; exit 1; }
build_kb=$(rss_of "$dir/build.log")
mkdir -p "$dir/out"
/usr/bin/time -v "$dir/big" --input "$dir/input.npy" --output-dir "$dir/out" 2>"$dir/run.log" \
  || { cat "$dir/run.log"; exit 1; }
run_kb=$(rss_of "$dir/run.log")

# ONNX Runtime's output for the same input
"$PY" - "$dir" <<'EOF'
import sys, numpy as np, onnxruntime as ort
d = sys.argv[1]
s = ort.InferenceSession(f"{d}/big.onnx", providers=["CPUExecutionProvider"])
x = np.load(f"{d}/input.npy")
want = s.run(None, {"x": x})[0]
got = np.load(f"{d}/out/y.npy")
err = np.abs(want - got).max()
scale = np.abs(want).max()
print(f"max |kiln - ORT| = {err:.3g} (outputs up to {scale:.3g})")
sys.exit(0 if err <= 1e-4 * max(1.0, scale) else 1)
EOF

awk -v w="$weights" -v b="$build_kb" -v r="$run_kb" -v bt="$(secs_of "$dir/build.log")" \
    -v rt="$(secs_of "$dir/run.log")" 'BEGIN {
  printf "weights %.2f GB; kiln build: peak RSS %.2f GB (%.2fx the weights), %s; run: peak RSS %.2f GB, %s\n",
    w / 1e9, b * 1024 / 1e9, b * 1024 / w, bt, r * 1024 / 1e9, rt
  exit (b * 1024 <= 1.5 * w) ? 0 : 1
}'
