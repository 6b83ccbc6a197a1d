#!/usr/bin/env python3
"""kiln vs ONNX Runtime, same machine, same run, interleaved.

For every golden model: compile it with `kiln build --emit exe`, then alternate rounds of
`<exe> --bench K` (kiln's own median over K runs after a warm-up) and K timed ONNX Runtime
runs (ORT_ENABLE_ALL, intra_op threads = T), and report per model the median and the minimum of
the per-round medians, the kiln/ORT ratio and kiln's achieved GFLOP/s (2 x multiply-adds of
Conv/ConvTranspose/Gemm/MatMul). Shared machines are noisy: the minimum is the better estimate
of the uncontended time, the median says how noisy the run was.

    .venv/bin/python scripts/bench.py [--rounds 5] [--runs 20] [--threads 1,2]
                                      [--models a,b] [--markdown docs/benchmarks.md]

Needs target/release/kiln and golden/models/*.onnx (scripts/bench.sh makes both).
"""

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import shape_inference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ["lenet5", "squeezenet1_1", "resnet18", "mobilenetv2", "ppocr_det", "ppocr_rec",
          "ppocr_cls", "encoder"]


def meta(name):
    with open(os.path.join(ROOT, "golden", "data", name, "meta.json")) as f:
        return json.load(f)


def flops(model_path, shapes):
    """2 x multiply-adds of the matrix/conv ops, from ONNX shape inference."""
    m = onnx.load(model_path)
    for i in m.graph.input:
        if i.name in shapes:
            for d, v in zip(i.type.tensor_type.shape.dim, shapes[i.name]):
                d.ClearField("dim_param")
                d.dim_value = v
    m = shape_inference.infer_shapes(m)
    dims = {}
    for vi in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            dims[vi.name] = [d.dim_value for d in t.shape.dim]
    for t in m.graph.initializer:
        dims[t.name] = list(t.dims)
    total = 0
    for n in m.graph.node:
        out = dims.get(n.output[0]) if n.output else None
        if not out:
            continue
        numel = int(np.prod(out))
        if n.op_type in ("Conv", "ConvTranspose"):
            w = dims.get(n.input[1])
            if w:
                group = next((a.i for a in n.attribute if a.name == "group"), 1)
                per = int(np.prod(w[1:])) if n.op_type == "Conv" else int(np.prod(w[2:])) * (w[0] // group)
                total += 2 * numel * per
        elif n.op_type in ("Gemm", "MatMul"):
            a = dims.get(n.input[0])
            if a:
                trans_a = next((x.i for x in n.attribute if x.name == "transA"), 0)
                k = a[-2] if (n.op_type == "Gemm" and trans_a) else a[-1]
                total += 2 * numel * k
    return total


def kiln_median(exe, args, runs):
    # the outputs go next to the executable, not into the working directory
    outdir = os.path.dirname(exe)
    out = subprocess.run([exe, *args, "--bench", str(runs), "--output-dir", outdir],
                         capture_output=True, text=True, check=True)
    m = re.search(r"median:\s*([0-9.eE+-]+)\s*ms", out.stdout + out.stderr)
    if not m:
        raise RuntimeError(f"{exe}: no median in output: {out.stdout}{out.stderr}")
    return float(m.group(1))


def ort_median(sess, feeds, runs):
    for _ in range(2):
        sess.run(None, feeds)
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        sess.run(None, feeds)
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def machine():
    cpu, flags = platform.processor() or "?", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    simd = "AVX-512" if "avx512f" in flags else ("AVX2, no AVX-512" if "avx2" in flags else "no AVX2")
    return f"{cpu} ({simd}), {os.cpu_count()} logical CPUs, {platform.system()} {platform.release()}"


SGEMM = """
import time, numpy as np
a = np.random.rand(2048, 2048).astype(np.float32); b = np.random.rand(2048, 2048).astype(np.float32)
a @ b
best = min(((lambda t: (a @ b, time.perf_counter() - t)[1])(time.perf_counter())) for _ in range(3))
print(2 * 2048 ** 3 / best / 1e9)
"""


def sgemm_gflops():
    """One-thread NumPy (OpenBLAS) SGEMM 2048^3 in GFLOP/s: this core's reference for dense
    products (the issue's 'large convolutions at >= 80 % of SGEMM')."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", SGEMM], env=env, capture_output=True,
                         text=True, check=True)
    return float(out.stdout.strip())


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--markdown", default=None)
    args = ap.parse_args()
    kiln = os.path.join(ROOT, "target", "release", "kiln")
    outdir = os.path.join(ROOT, "target", "bench")
    os.makedirs(outdir, exist_ok=True)
    threads = [int(t) for t in args.threads.split(",") if t]
    rows = []
    for name in [m for m in args.models.split(",") if m]:
        model = os.path.join(ROOT, "golden", "models", f"{name}.onnx")
        if not os.path.exists(model):
            print(f"skip {name}: {model} missing", file=sys.stderr)
            continue
        md = meta(name)
        shapes = {i["name"]: i["shape"] for i in md["inputs"]}
        exe = os.path.join(outdir, name)
        shape_args = [a for i in md["inputs"] for a in ("--input-shape", f"{i['name']}=" + ",".join(map(str, i["shape"])))]
        subprocess.run([kiln, "build", model, *shape_args, "--emit", "exe", "-o", exe],
                       check=True, capture_output=True)
        in_args = [a for i in md["inputs"] for a in
                   ("--input", f"{i['name']}=" + os.path.join(ROOT, "golden", "data", name, i["file"]))]
        feeds = {i["name"]: np.load(os.path.join(ROOT, "golden", "data", name, i["file"]))
                 for i in md["inputs"]}
        gflop = flops(model, shapes) / 1e9
        for t in threads:
            so = ort.SessionOptions()
            so.intra_op_num_threads = t
            so.inter_op_num_threads = 1
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
            ks, os_ = [], []
            for _ in range(args.rounds):
                ks.append(kiln_median(exe, [*in_args, "--threads", str(t)], args.runs))
                os_.append(ort_median(sess, feeds, args.runs))
                # ORT's pool threads spin-wait after a run; on a 2-CPU machine they would take
                # a core from kiln's next round: let them go to sleep first
                time.sleep(0.3)
            row = {
                "model": name, "threads": t,
                "kiln_med": statistics.median(ks), "kiln_min": min(ks),
                "ort_med": statistics.median(os_), "ort_min": min(os_),
                "gflop": gflop,
            }
            rows.append(row)
            print(f"{name:14s} t={t} kiln {row['kiln_med']:9.3f} ms (min {row['kiln_min']:9.3f})  "
                  f"ORT {row['ort_med']:9.3f} ms (min {row['ort_min']:9.3f})  "
                  f"ratio {row['kiln_min'] / row['ort_min']:6.2f}  "
                  f"{gflop / (row['kiln_min'] / 1e3):7.1f} GFLOP/s", flush=True)
    sgemm = sgemm_gflops()
    print(f"one-thread SGEMM 2048^3: {sgemm:.1f} GFLOP/s", flush=True)
    table = ["| model | threads | kiln median (min) ms | ORT median (min) ms | kiln/ORT (min) "
             "| kiln GFLOP/s | kiln ÷ 1-thread SGEMM | kiln speed-up vs 1 thread |",
             "|---|---|---|---|---|---|---|---|"]
    one = {r["model"]: r["kiln_min"] for r in rows if r["threads"] == 1}
    for r in rows:
        up = one.get(r["model"])
        gf = r["gflop"] / (r["kiln_min"] / 1e3)
        share = f"{100 * gf / sgemm:.0f} %" if r["threads"] == 1 else ""
        table.append(
            f"| {r['model']} | {r['threads']} | {r['kiln_med']:.3f} ({r['kiln_min']:.3f}) | "
            f"{r['ort_med']:.3f} ({r['ort_min']:.3f}) | {r['kiln_min'] / r['ort_min']:.2f} | "
            f"{gf:.1f} | {share} | "
            f"{(up / r['kiln_min']) if up else float('nan'):.2f} |")
    text = "\n".join(table)
    print(text)
    if args.markdown:
        tmp = args.markdown + ".tmp"
        with open(tmp, "w") as f:
            f.write("# Benchmarks\n\n")
            f.write("Generated by `scripts/bench.sh` (kiln `--emit exe --bench` vs ONNX Runtime "
                    f"{ort.__version__}, ORT_ENABLE_ALL, interleaved rounds in one run).\n\n")
            f.write(f"Machine: {machine()}. Rounds: {args.rounds} x {args.runs} runs; the ratio "
                    "uses the minimum of the per-round medians.\n\n")
            f.write("kiln's threads: the executable's `--threads N` (a pthread pool passed to "
                    "`run_pool`; convolutions and matrix products split over output tiles).\n\n")
            f.write(f"Reference: one-thread NumPy/OpenBLAS SGEMM 2048^3 in the same run: "
                    f"{sgemm:.1f} GFLOP/s. kiln GFLOP/s counts 2 x the multiply-adds of "
                    "Conv/ConvTranspose/Gemm/MatMul as written (direct convolution), so Winograd "
                    "layers can exceed it.\n\n")
            f.write(text + "\n")
        os.replace(tmp, args.markdown)


if __name__ == "__main__":
    main()
