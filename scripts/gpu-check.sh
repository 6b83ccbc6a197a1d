#!/usr/bin/env bash
# The GPU back end on a real NVIDIA GPU: kiln's CUDA artefacts of the golden models vs the CPU
# back end and ONNX Runtime, timed against PyTorch eager and torch.compile on the same graphs,
# and a 4096^3 GEMM vs torch.matmul; prints one table (scripts/gpu_check.py).
#
# Two halves, because the GPU machine has no LLVM, no Rust and no internet, and only 64 MiB
# travel to it per call:
#
#   scripts/gpu-check.sh prepare GROUP [SM]   here (CPU machine): builds .gpucheck/ with the
#       `cuda_run` launcher (runtime feature cuda; needs only the driver there), each model's
#       artefact (kiln build --target nvptx64-nvidia-cuda --gpu-arch SM, default sm_90, cubin
#       by the venv's ptxas + PTX fallback), inputs, ONNX Runtime's outputs and kiln's CPU back
#       end's outputs, and the 4096^3 MatMul artefact. GROUP (each bundle <= 53 MiB, as the
#       repo's ~10 MiB travel too; the artefacts embed the weights):
#         a: resnet18 lenet5 tiny_ops recurrent ppocr_cls
#         b: encoder squeezenet1_1
#         c: mobilenetv2 ppocr_det ppocr_rec
#   scripts/gpu-check.sh run                  there (torch 2.11 + CUDA, onnx in the image):
#       regenerates the synthetic ONNX models (golden/make_golden.py --only-models) for the
#       torch side and runs scripts/gpu_check.py .gpucheck. Under 5 minutes per group.
#
# With the device tool: prepare a group here, then run `bash scripts/gpu-check.sh run` with
# carry [".gpucheck"] (git-ignored) and timeout_s 330; one call per group.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
B=.gpucheck

case "${1:-}" in
prepare)
    GROUP="${2:?usage: scripts/gpu-check.sh prepare a|b|c [SM]}"
    SM="${3:-sm_90}"
    case "$GROUP" in
    a) MODELS="resnet18 lenet5 tiny_ops recurrent ppocr_cls" ;;
    b) MODELS="encoder squeezenet1_1" ;;
    c) MODELS="mobilenetv2 ppocr_det ppocr_rec" ;;
    *) echo "unknown group $GROUP (a, b or c)" >&2; exit 2 ;;
    esac
    scripts/setup-llvm.sh >&2
    PY="$(scripts/setup-python.sh | tail -n 1)"
    for m in $MODELS; do
        if [ ! -f "golden/models/$m.onnx" ]; then
            "$PY" golden/make_golden.py --only-models --paddleocr >&2
            break
        fi
    done
    cargo build -p kiln-compiler
    cargo build --release -p kiln-runtime --features cuda --example cuda_run
    KILN="$ROOT/target/debug/kiln"
    rm -rf "$B"
    mkdir -p "$B/bin"
    cp target/release/examples/cuda_run "$B/bin/"
    "$PY" - "$B" "$SM" "$KILN" $MODELS <<'PYEOF'
import json, os, shutil, subprocess, sys
import numpy as np
bundle, sm, kiln, names = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
models = []
for name in names:
    data = os.path.join("golden", "data", name)
    meta = json.load(open(os.path.join(data, "meta.json")))
    onnx_path = os.path.join("golden", meta["model"])
    d = os.path.join(bundle, name)
    os.makedirs(d)
    shapes = []
    for i in meta["inputs"]:
        shapes += ["--input-shape", i["name"] + "=" + ",".join(map(str, i["shape"]))]
    subprocess.check_call([kiln, "build", onnx_path, "--target", "nvptx64-nvidia-cuda",
                           "--gpu-arch", sm, "-o", os.path.join(d, "kernel.so")] + shapes)
    ins = [os.path.join(data, i["file"]) for i in meta["inputs"]]
    cpu = os.path.join(d, "cpu")
    subprocess.check_call([kiln, "run", onnx_path, "--output-dir", cpu] + shapes
                          + [a for i, f in zip(meta["inputs"], ins)
                             for a in ("--input", i["name"] + "=" + f)])
    for f in ins + [os.path.join(data, o["file"]) for o in meta["outputs"]]:
        shutil.copy(f, d)
    # kiln run names outputs after the model's: put them in the model's output order
    cpu_files = []
    for k, o in enumerate(meta["outputs"]):
        safe = "".join(c if c.isalnum() or c in "_-." else "_" for c in o["name"])
        os.replace(os.path.join(cpu, safe + ".npy"), os.path.join(d, f"cpu_{k}.npy"))
        cpu_files.append(f"cpu_{k}.npy")
    shutil.rmtree(cpu)
    m = {"name": name, "inputs": [os.path.basename(f) for f in ins],
         "ort_outputs": [os.path.basename(o["file"]) for o in meta["outputs"]],
         "cpu_outputs": cpu_files,
         "compile": name in ("resnet18", "squeezenet1_1", "mobilenetv2", "encoder", "ppocr_det",
                             "ppocr_rec")}
    if "generator" not in meta:  # PP-OCR: cannot be regenerated offline
        shutil.copy(onnx_path, d)
        m["onnx"] = os.path.basename(onnx_path)
    models.append(m)
json.dump(models, open(os.path.join(bundle, "models.json"), "w"), indent=1)
# 4096^3 fp32 GEMM: MatMul of two inputs (the operands come from the GPU side)
import onnx
from onnx import TensorProto, helper
g = helper.make_graph(
    [helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm4096",
    [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4096, 4096]) for n in "ab"],
    [helper.make_tensor_value_info("c", TensorProto.FLOAT, [4096, 4096])])
os.makedirs(os.path.join(bundle, "gemm4096"))
p = os.path.join(bundle, "gemm4096", "gemm4096.onnx")
onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), p)
subprocess.check_call([kiln, "build", p, "--target", "nvptx64-nvidia-cuda", "--gpu-arch", sm,
                       "-o", os.path.join(bundle, "gemm4096", "kernel.so")])
PYEOF
    du -sh "$B"
    SIZE=$(du -sm "$B" | cut -f1)
    if [ "$SIZE" -gt 53 ]; then
        echo "gpu-check: bundle is $SIZE MiB, over what travels with the repo (64 MiB in all)" >&2
        exit 1
    fi
    echo "gpu-check: $B ready for group $GROUP ($SM): on the GPU machine run: bash scripts/gpu-check.sh run"
    ;;
run)
    [ -f "$B/models.json" ] || { echo "no $B/models.json: run 'scripts/gpu-check.sh prepare GROUP' first" >&2; exit 2; }
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    SYN=$(python3 -c "import json; print(','.join(m['name'] for m in json.load(open('$B/models.json')) if 'onnx' not in m))")
    if [ -n "$SYN" ]; then
        python3 golden/make_golden.py --only-models --models "$SYN" >/dev/null
    fi
    chmod +x "$B/bin/cuda_run"
    PYTHONUNBUFFERED=1 python3 scripts/gpu_check.py "$B" "${@:2}"
    ;;
*)
    sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
