#!/usr/bin/env bash
# The main job on a fresh machine: set up, build kiln, compile a real model (PaddleOCR's text
# classifier and ResNet-18) to a shared library and a standalone executable, run them, and
# compare the outputs with ONNX Runtime's.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$(scripts/setup.sh | tail -n 1)"
cargo build --release -p kiln-compiler
KILN="$ROOT/target/release/kiln"
OUT="$ROOT/target/demo"
mkdir -p "$OUT"
for m in lenet5 resnet18 ppocr_cls ppocr_det; do
    shape=$("$PY" -c "import json,sys; m=json.load(open('golden/data/$m/meta.json')); print(' '.join('--input-shape '+i['name']+'='+','.join(map(str,i['shape'])) for i in m['inputs']))")
    inputs=$("$PY" -c "import json,sys; m=json.load(open('golden/data/$m/meta.json')); print(' '.join('--input '+i['name']+'=golden/data/$m/'+i['file'] for i in m['inputs']))")
    echo "== $m"
    "$KILN" build "golden/models/$m.onnx" $shape --emit so -o "$OUT/lib$m.so"
    "$KILN" build "golden/models/$m.onnx" $shape --emit header -o "$OUT/$m.h"
    "$KILN" build "golden/models/$m.onnx" $shape --emit exe -o "$OUT/$m"
    "$OUT/$m" $inputs --output-dir "$OUT/$m.out" --bench 5
    "$PY" - "$m" "$OUT/$m.out" <<'PYEOF'
import json, sys, pathlib, numpy as np
name, outdir = sys.argv[1], pathlib.Path(sys.argv[2])
meta = json.load(open(f"golden/data/{name}/meta.json"))
for o in meta["outputs"]:
    fname = "".join(c if c.isalnum() or c in "_-." else "_" for c in o["name"])
    got = np.load(outdir / f"{fname}.npy")
    want = np.load(f"golden/data/{name}/{o['file']}")
    err = float(np.max(np.abs(got - want)))
    ok = np.allclose(got, want, rtol=1e-4, atol=1e-5)
    print(f"   {o['name']}: shape {got.shape}, max |kiln - onnxruntime| = {err:.2e} -> {'MATCH' if ok else 'MISMATCH'}")
    if not ok:
        sys.exit(1)
PYEOF
done
