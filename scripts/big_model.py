#!/usr/bin/env python3
"""Writes a transformer encoder whose weights (> 2 GB, f32) live in an ONNX external-data file,
for scripts/big_model.sh (compile-time memory with memory-mapped weights; docs/robustness.md).

    big_model.py OUT_DIR [--layers 12] [--d 2048] [--seq 32]

Writes OUT_DIR/big.onnx, OUT_DIR/big.weights (the tensors back to back, written one at a time
with numpy, never all in memory), and OUT_DIR/input.npy. Each layer: LayerNorm, Q/K/V/O
projections (d x d), 16-head attention (MatMul, Softmax), residual, LayerNorm, MLP d -> 4d ->
d with GELU (Erf), residual: 12 d^2 weights per layer (12 layers at d = 2048: 2.42 GB).
"""
import argparse
import os

import numpy as np
import onnx
from onnx import TensorProto, helper


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--d", type=int, default=2048)
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--heads", type=int, default=16)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    d, s, h = a.d, a.seq, a.heads
    dh = d // h
    rng = np.random.default_rng(7)
    weights = open(os.path.join(a.out, "big.weights"), "wb")
    inits, nodes = [], []
    offset = 0

    def ext(name, shape, scale):
        """An initializer in the external file (written now, then forgotten)."""
        nonlocal offset
        arr = (rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)).astype("<f4")
        weights.write(arr.tobytes())
        t = TensorProto()
        t.name = name
        t.data_type = TensorProto.FLOAT
        t.dims.extend(shape)
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", "big.weights"), ("offset", str(offset)), ("length", str(arr.nbytes))):
            e = t.external_data.add()
            e.key, e.value = k, v
        offset += arr.nbytes
        inits.append(t)
        return name

    def const(name, values, dtype=np.int64):
        arr = np.asarray(values, dtype=dtype)
        inits.append(onnx.numpy_helper.from_array(arr, name))
        return name

    def node(op, ins, name, **attrs):
        nodes.append(helper.make_node(op, ins, [name], name=name, **attrs))
        return name

    const("heads_shape", [1, s, h, dh])
    const("merge_shape", [1, s, d])
    const("scale", np.float32(1.0 / np.sqrt(dh)), np.float32)
    const("half", np.float32(0.5), np.float32)
    const("one", np.float32(1.0), np.float32)
    const("rsqrt2", np.float32(1.0 / np.sqrt(2.0)), np.float32)
    x = "x"
    w = 1.0 / np.sqrt(d)
    for l in range(a.layers):
        p = f"l{l}_"
        g1 = ext(p + "ln1_g", [d], 0.1)
        b1 = ext(p + "ln1_b", [d], 0.1)
        n1 = node("LayerNormalization", [x, g1, b1], p + "ln1", axis=-1, epsilon=1e-5)
        heads = []
        for k in "qkv":
            m = node("MatMul", [n1, ext(p + "w" + k, [d, d], w)], p + k)
            r = node("Reshape", [m, "heads_shape"], p + k + "_heads")
            perm = [0, 2, 3, 1] if k == "k" else [0, 2, 1, 3]
            heads.append(node("Transpose", [r], p + k + "_t", perm=perm))
        sc = node("MatMul", [heads[0], heads[1]], p + "scores")
        sc = node("Mul", [sc, "scale"], p + "scaled")
        pr = node("Softmax", [sc], p + "probs", axis=-1)
        ctx = node("MatMul", [pr, heads[2]], p + "ctx")
        ctx = node("Transpose", [ctx], p + "ctx_t", perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, "merge_shape"], p + "ctx_m")
        o = node("MatMul", [ctx, ext(p + "wo", [d, d], w)], p + "o")
        x = node("Add", [x, o], p + "res1")
        g2 = ext(p + "ln2_g", [d], 0.1)
        b2 = ext(p + "ln2_b", [d], 0.1)
        n2 = node("LayerNormalization", [x, g2, b2], p + "ln2", axis=-1, epsilon=1e-5)
        f1 = node("MatMul", [n2, ext(p + "w1", [d, 4 * d], w)], p + "fc1")
        e = node("Mul", [f1, "rsqrt2"], p + "gelu_s")
        e = node("Erf", [e], p + "gelu_erf")
        e = node("Add", [e, "one"], p + "gelu_1")
        e = node("Mul", [f1, e], p + "gelu_x")
        e = node("Mul", [e, "half"], p + "gelu")
        f2 = node("MatMul", [e, ext(p + "w2", [4 * d, d], 1.0 / np.sqrt(4 * d))], p + "fc2")
        x = node("Add", [x, f2], p + "res2")
    nodes[-1].output[0] = "y"
    weights.close()
    g = helper.make_graph(
        nodes,
        "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, s, d])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, s, d])],
        initializer=inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    with open(os.path.join(a.out, "big.onnx"), "wb") as f:
        f.write(m.SerializeToString())
    np.save(os.path.join(a.out, "input.npy"), rng.standard_normal([1, s, d], dtype=np.float32))
    print(f"{a.layers} layers, d={d}: {offset} weight bytes ({offset / 2**30:.2f} GiB)")


if __name__ == "__main__":
    main()
