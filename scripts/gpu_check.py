#!/usr/bin/env python3
"""The GPU half of scripts/gpu-check.sh, run on a machine with an NVIDIA GPU and PyTorch.

    python3 scripts/gpu_check.py BUNDLE [--iters N] [--budget SECONDS]

BUNDLE is what `scripts/gpu-check.sh prepare` built on a CPU machine (kiln's CUDA artefacts,
the `cuda_run` launcher, each model's inputs, ONNX Runtime's and kiln's CPU back end's outputs).
For each model it
  - runs kiln's artefact on GPU 0 (cuda_run: cubin for the device or PTX JIT; first run from
    host buffers, then device-resident runs replayed as a CUDA graph) and compares its
    outputs with the CPU back end's and ONNX Runtime's;
  - replays the same ONNX graph op by op in PyTorch (fp32, TF32 off: the arithmetic kiln's
    default --gpu-precision fp32 does) and times it eager and under torch.compile
    (mode reduce-overhead: CUDA graphs, as kiln's plan uses);
and times a 4096^3 GEMM: kiln's fp32 artefact vs torch.matmul in fp32, tf32, fp16 and bf16.
Prints one table; exits non-zero when an output differs.
The ONNX models come from golden/make_golden.py --only-models (onnx is in the image) or the
bundle (PP-OCR, which needs a download to regenerate).
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
RTOL, ATOL = 1e-3, 1e-4


# ------------------------------------------------------------------ ONNX graph replayed in torch
def torch_module(model_path, device):
    import onnx
    import torch
    import torch.nn.functional as F
    from onnx import numpy_helper

    m = onnx.load(model_path)
    g = m.graph
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    init_names = {t.name for t in g.initializer}
    inputs = [i.name for i in g.input if i.name not in init_names]
    outputs = [o.name for o in g.output]

    def attrs(n):
        return {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}

    def pads2(p, k):
        # symmetric ONNX pads only (begin == end), as torch's conv/pool take them
        if not p:
            return [0] * k
        if list(p[:k]) != list(p[k:]):
            raise NotImplementedError("asymmetric pads")
        return list(p[:k])

    def cval(name):
        return consts[name]

    def op(n, a, x):
        t = n.op_type
        if t == "Conv":
            w = x[1]
            k = w.dim() - 2
            return F.conv2d(x[0], w, x[2] if len(x) > 2 else None, a.get("strides", [1] * k),
                            pads2(a.get("pads"), k), a.get("dilations", [1] * k),
                            a.get("group", 1))
        if t == "Gemm":
            A = x[0].t() if a.get("transA", 0) else x[0]
            B = x[1].t() if a.get("transB", 0) else x[1]
            y = a.get("alpha", 1.0) * (A @ B)
            return y + a.get("beta", 1.0) * x[2] if len(x) > 2 else y
        if t == "MatMul":
            return x[0] @ x[1]
        if t in ("Add", "Sub", "Mul", "Div", "Pow"):
            f = {"Add": torch.add, "Sub": torch.sub, "Mul": torch.mul, "Div": torch.div,
                 "Pow": torch.pow}[t]
            return f(x[0], x[1])
        if t == "Relu":
            return F.relu(x[0])
        if t == "Sigmoid":
            return torch.sigmoid(x[0])
        if t == "Tanh":
            return torch.tanh(x[0])
        if t == "Erf":
            return torch.erf(x[0])
        if t == "Sqrt":
            return torch.sqrt(x[0])
        if t == "HardSigmoid":
            return torch.clamp(a.get("alpha", 0.2) * x[0] + a.get("beta", 0.5), 0, 1)
        if t == "HardSwish":
            return F.hardswish(x[0])
        if t == "Clip":
            lo = float(cval(n.input[1])) if len(n.input) > 1 and n.input[1] else a.get("min")
            hi = float(cval(n.input[2])) if len(n.input) > 2 and n.input[2] else a.get("max")
            return torch.clamp(x[0], lo, hi)
        if t == "BatchNormalization":
            return F.batch_norm(x[0], x[3], x[4], x[1], x[2], False, 0.0, a.get("epsilon", 1e-5))
        if t in ("MaxPool", "AveragePool"):
            k = a["kernel_shape"]
            s = a.get("strides", [1] * len(k))
            p = pads2(a.get("pads"), len(k))
            if t == "MaxPool":
                return F.max_pool2d(x[0], k, s, p, ceil_mode=bool(a.get("ceil_mode", 0)))
            return F.avg_pool2d(x[0], k, s, p, ceil_mode=bool(a.get("ceil_mode", 0)),
                                count_include_pad=bool(a.get("count_include_pad", 0)))
        if t == "GlobalAveragePool":
            return x[0].mean(dim=(2, 3), keepdim=True)
        if t == "Flatten":
            ax = a.get("axis", 1)
            return x[0].reshape(int(np.prod(x[0].shape[:ax])), -1)
        if t == "Reshape":
            shape = [int(d) for d in cval(n.input[1])]
            shape = [x[0].shape[i] if d == 0 else d for i, d in enumerate(shape)]
            return x[0].reshape(shape)
        if t == "Transpose":
            return x[0].permute(a["perm"])
        if t == "Concat":
            return torch.cat(x, dim=a["axis"])
        if t == "Softmax":
            return torch.softmax(x[0], dim=a.get("axis", -1))
        if t == "LayerNormalization":
            ax = a.get("axis", -1)
            shape = x[0].shape[ax:] if ax != -1 else x[0].shape[-1:]
            return F.layer_norm(x[0], shape, x[1], x[2] if len(x) > 2 else None,
                                a.get("epsilon", 1e-5))
        if t == "Identity":
            return x[0]
        raise NotImplementedError(t)

    nodes = [n for n in g.node if n.op_type != "Constant"]
    for n in nodes:  # unsupported ops fail here, before any timing
        if n.op_type not in SUPPORTED:
            raise NotImplementedError(n.op_type)

    class Replay(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.names = {}
            for i, (k, v) in enumerate(consts.items()):
                if v.dtype in (np.float32, np.float64):
                    self.register_buffer(f"c{i}", torch.from_numpy(v.astype(np.float32).copy()))
                    self.names[k] = f"c{i}"

        def forward(self, *xs):
            env = dict(zip(inputs, xs))
            for k, b in self.names.items():
                env[k] = getattr(self, b)
            for n in nodes:
                a = attrs(n)
                ys = op(n, a, [env[i] for i in n.input if i])
                env[n.output[0]] = ys
            return tuple(env[o] for o in outputs)

    return Replay().to(device).eval()


SUPPORTED = {"Conv", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Pow", "Relu", "Sigmoid",
             "Tanh", "Erf", "Sqrt", "HardSigmoid", "HardSwish", "Clip", "BatchNormalization",
             "MaxPool", "AveragePool", "GlobalAveragePool", "Flatten", "Reshape", "Transpose",
             "Concat", "Softmax", "LayerNormalization", "Identity"}


def time_cuda(fn, iters):
    import torch
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        ts.append((time.perf_counter() - t) * 1e3)
    ts.sort()
    return ts[len(ts) // 2]


def max_diff(a, b):
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.size else 0.0


def close(want, got):
    return bool(np.all(np.abs(want - got) <= ATOL + RTOL * np.abs(want)))


def kiln_run(bundle, d, ins, iters, out):
    cmd = [os.path.join(bundle, "bin", "cuda_run"), os.path.join(d, "kernel.so"), out,
           str(iters)] + ins
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"cuda_run failed: {r.stderr.strip()}")
    line = [l for l in r.stdout.splitlines() if l.startswith("latency_ms")][-1]
    kv = dict(p.split("=") for p in line.split()[1:])
    return float(kv["median"]), kv


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--budget", type=float, default=270.0,
                    help="seconds; torch.compile is skipped once they are spent")
    args = ap.parse_args()
    t0 = time.time()
    import torch
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, "
          f"CUDA {torch.version.cuda}", flush=True)
    with open(os.path.join(args.bundle, "models.json")) as f:
        models = json.load(f)
    rows, failed = [], False
    for m in models:
        name, d = m["name"], os.path.join(args.bundle, m["name"])
        ins = [os.path.join(d, f) for f in m["inputs"]]
        out = os.path.join("/tmp", "kiln-gpu-check", name)
        row = {"model": name}
        try:
            ms, kv = kiln_run(args.bundle, d, ins, args.iters, out)
            row["kiln_ms"], row["cubin"] = ms, kv.get("cubin")
            worst_cpu = worst_ort = 0.0
            ok = True
            for k, (c, r) in enumerate(zip(m["cpu_outputs"], m["ort_outputs"])):
                got = np.load(os.path.join(out, f"output_{k}.npy")).astype(np.float32)
                cpu = np.load(os.path.join(d, c)).astype(np.float32).reshape(got.shape)
                ort = np.load(os.path.join(d, r)).astype(np.float32).reshape(got.shape)
                worst_cpu = max(worst_cpu, max_diff(cpu, got))
                worst_ort = max(worst_ort, max_diff(ort, got))
                ok &= close(cpu, got)
            row["vs_cpu"], row["vs_ort"], row["ok"] = worst_cpu, worst_ort, ok
            failed |= not ok
        except Exception as e:  # noqa: BLE001 (reported in the table)
            row["error"] = str(e)[:200]
            failed = True
        onnx_path = m.get("onnx") and os.path.join(d, m["onnx"])
        if not onnx_path or not os.path.exists(onnx_path):
            onnx_path = os.path.join(ROOT, "golden", "models", f"{name}.onnx")
        try:
            mod = torch_module(onnx_path, dev)
            xs = [torch.from_numpy(np.load(p)).to(dev) for p in ins]
            with torch.no_grad():
                ys = mod(*xs)
                ref = np.load(os.path.join(d, m["ort_outputs"][0])).astype(np.float32)
                row["torch_vs_ort"] = max_diff(ref.reshape(-1), ys[0].float().cpu().numpy().reshape(-1))
                row["eager_ms"] = time_cuda(lambda: mod(*xs), args.iters)
                if m.get("compile", True) and time.time() - t0 < args.budget:
                    cm = torch.compile(mod, mode="reduce-overhead")
                    row["compile_ms"] = time_cuda(lambda: cm(*xs), args.iters)
        except NotImplementedError as e:
            row["torch"] = f"n/a (op {e})"
        except Exception as e:  # noqa: BLE001
            row["torch"] = f"error: {str(e)[:120]}"
        rows.append(row)
        print(json.dumps(row), flush=True)

    gemm = gemm_rows(args, dev, t0)
    def cell(v, w, fmt):
        return format(v, fmt).rjust(w) if v is not None else "-".rjust(w)

    print()
    print("model".ljust(16) + "kiln ms".rjust(10) + "eager ms".rjust(10) + "compile ms".rjust(11)
          + "kiln/comp".rjust(10) + "|gpu-cpu|".rjust(11) + "|gpu-ort|".rjust(11) + "  ok")
    for r in rows:
        ratio = r["kiln_ms"] / r["compile_ms"] if "kiln_ms" in r and "compile_ms" in r else None
        print(r["model"].ljust(16) + cell(r.get("kiln_ms"), 10, ".3f")
              + cell(r.get("eager_ms"), 10, ".3f") + cell(r.get("compile_ms"), 11, ".3f")
              + cell(ratio, 10, ".2f") + cell(r.get("vs_cpu"), 11, ".2e")
              + cell(r.get("vs_ort"), 11, ".2e") + "  " + ("yes" if r.get("ok") else "NO")
              + " " + r.get("error", "") + r.get("torch", ""))
    print()
    print("GEMM 4096^3".ljust(28) + "ms".rjust(10) + "TFLOP/s".rjust(10))
    for name, ms in gemm:
        tf = 2 * 4096 ** 3 / (ms * 1e-3) / 1e12 if ms else None
        print(name.ljust(28) + cell(ms, 10, ".3f") + cell(tf, 10, ".1f"))
    print(f"\ngpu-check: {time.time() - t0:.0f} s", "FAILED" if failed else "passed")
    sys.exit(1 if failed else 0)


def gemm_rows(args, dev, t0):
    import torch
    out = []
    d = os.path.join(args.bundle, "gemm4096")
    if os.path.exists(os.path.join(d, "kernel.so")):
        rng = np.random.default_rng(0)
        a = rng.standard_normal((4096, 4096), dtype=np.float32)
        b = rng.standard_normal((4096, 4096), dtype=np.float32)
        np.save("/tmp/kiln-gemm-a.npy", a)
        np.save("/tmp/kiln-gemm-b.npy", b)
        try:
            ms, _ = kiln_run(args.bundle, d, ["/tmp/kiln-gemm-a.npy", "/tmp/kiln-gemm-b.npy"],
                             10, "/tmp/kiln-gpu-check/gemm")
            got = np.load("/tmp/kiln-gpu-check/gemm/output_0.npy")
            ref = (torch.from_numpy(a).to(dev).double() @ torch.from_numpy(b).to(dev).double())
            err = float((torch.from_numpy(got).to(dev).double() - ref).abs().max())
            out.append((f"kiln fp32 (err {err:.1e})", ms))
        except Exception as e:  # noqa: BLE001
            print(f"kiln gemm: {e}")
            out.append(("kiln fp32 (failed)", None))
    out.append(("kiln fp16/bf16", None))  # --gpu-precision fp16|bf16: not implemented yet
    for name, dt, tf32 in [("torch fp32", torch.float32, False), ("torch tf32", torch.float32, True),
                           ("torch fp16", torch.float16, False), ("torch bf16", torch.bfloat16, False)]:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        x = torch.randn(4096, 4096, device=dev, dtype=dt)
        y = torch.randn(4096, 4096, device=dev, dtype=dt)
        out.append((name, time_cuda(lambda: torch.matmul(x, y), 20)))
    torch.backends.cuda.matmul.allow_tf32 = False
    return out


if __name__ == "__main__":
    main()
