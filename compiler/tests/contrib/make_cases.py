#!/usr/bin/env python3
"""Generate com.microsoft contrib-op test cases and ONNX Runtime's outputs for them.

Usage: make_cases.py OUT_DIR

For each case: OUT_DIR/<case>/model.onnx, input_<i>.npy (in the model's input order) and
output_<k>.npy from ONNX Runtime 1.32 (CPUExecutionProvider, one thread), plus
OUT_DIR/cases.json listing {name, inputs, outputs, atol, rtol} (tolerances for kiln vs ORT).
Random data from numpy's default_rng(0), so the cases are deterministic.

Besides single-op cases, two models made by ORT's own tools: the golden transformer encoder
rewritten by onnxruntime.transformers' optimizer (SkipLayerNormalization, Attention, BiasGelu /
FastGelu ... as ORT fuses them) and quantized by onnxruntime.quantization.quantize_dynamic
(DynamicQuantizeMatMul ...), when golden/models/encoder.onnx exists.
"""

import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

OUT = sys.argv[1]
os.makedirs(OUT, exist_ok=True)
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
rng = np.random.default_rng(0)
F = TensorProto.FLOAT
CASES = []


def run_ort(path, feeds):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return s.run(None, feeds), [i.name for i in s.get_inputs()]


def save(name, model, feeds, atol=1e-5, rtol=1e-4, reference=None):
    """A case: ORT's outputs, or `reference` (a function of the feeds) for ops ORT's CPU
    provider does not implement."""
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "model.onnx")
    if isinstance(model, str):
        path = model
    else:
        onnx.save(model, path)
    if reference is None:
        outs, names = run_ort(path, feeds)
    else:
        outs, names = reference(feeds), [i.name for i in onnx.load(path).graph.input
                                         if i.name in feeds]
    ins = []
    for i, n in enumerate(names):
        f = os.path.join(d, f"input_{i}.npy")
        np.save(f, feeds[n])
        ins.append(f)
    os_ = []
    for k, o in enumerate(outs):
        f = os.path.join(d, f"output_{k}.npy")
        np.save(f, o)
        os_.append(f)
    CASES.append({"name": name, "model": path, "inputs": ins, "outputs": os_,
                  "atol": atol, "rtol": rtol})


def model(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset),
                                               helper.make_opsetid("com.microsoft", 1)],
                             ir_version=8)


def vi(name, shape, t=F):
    return helper.make_tensor_value_info(name, t, shape)


def init(name, a):
    return numpy_helper.from_array(a, name)


def r(*shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def ms(op, ins, outs, **attrs):
    return helper.make_node(op, ins, outs, domain="com.microsoft", **attrs)


# --- fused convolution / products --------------------------------------------------------
x = r(1, 4, 9, 9)
w = r(6, 4, 3, 3, scale=0.3)
b = r(6)
z = r(1, 6, 9, 9)
for act, params in [("Relu", None), ("LeakyRelu", [0.1]), ("Clip", [-0.5, 0.7]),
                    ("HardSigmoid", [0.3, 0.4]), ("Sigmoid", None), ("Tanh", None)]:
    attrs = {"activation": act, "pads": [1, 1, 1, 1], "kernel_shape": [3, 3]}
    if params:
        attrs["activation_params"] = params
    save(f"fused_conv_{act.lower()}",
         model([ms("FusedConv", ["x", "w", "b", "z"], ["y"], **attrs)],
               [vi("x", x.shape), vi("z", z.shape)], [vi("y", None)],
               [init("w", w), init("b", b)]),
         {"x": x, "z": z})
a = r(2, 3, 5, 4)
bm = r(2, 3, 6, 4)
save("fused_matmul",
     model([ms("FusedMatMul", ["a", "b"], ["y"], alpha=0.5, transB=1)],
           [vi("a", a.shape), vi("b", bm.shape)], [vi("y", None)]),
     {"a": a, "b": bm})
ga, gb, gc = r(3, 5), r(5, 4), r(4)
save("fused_gemm",
     model([ms("FusedGemm", ["a", "b", "c"], ["y"], alpha=1.5, beta=0.5,
               activation="LeakyRelu", activation_alpha=0.2)],
           [vi("a", ga.shape)], [vi("y", None)], [init("b", gb), init("c", gc)]),
     {"a": ga})

# --- activations -----------------------------------------------------------------------------
h = r(2, 5, 8)
hb = r(8)
save("gelu", model([ms("Gelu", ["x"], ["y"])], [vi("x", h.shape)], [vi("y", None)]), {"x": h})
save("fast_gelu", model([ms("FastGelu", ["x", "b"], ["y"])], [vi("x", h.shape)],
                        [vi("y", None)], [init("b", hb)]), {"x": h})
save("bias_gelu", model([ms("BiasGelu", ["x", "b"], ["y"])], [vi("x", h.shape)],
                        [vi("y", None)], [init("b", hb)]), {"x": h})
save("quick_gelu", model([ms("QuickGelu", ["x"], ["y"], alpha=1.5)], [vi("x", h.shape)],
                         [vi("y", None)]), {"x": h})
sk = r(2, 5, 8)
# ORT implements BiasAdd for CUDA only: its documented definition is the reference
save("bias_add", model([ms("BiasAdd", ["x", "b", "s"], ["y"])],
                       [vi("x", h.shape), vi("s", sk.shape)], [vi("y", None)],
                       [init("b", hb)]), {"x": h, "s": sk},
     reference=lambda f: [(f["x"] + hb) + f["s"]])

# --- normalizations --------------------------------------------------------------------------
gamma, beta = r(8) + 1.0, r(8)
save("skip_layer_norm",
     model([ms("SkipLayerNormalization", ["x", "s", "g", "bt", "bias"], ["y", "", "", "sum"],
               epsilon=1e-5)],
           [vi("x", h.shape), vi("s", sk.shape)], [vi("y", None), vi("sum", None)],
           [init("g", gamma), init("bt", beta), init("bias", hb)]),
     {"x": h, "s": sk})
save("skip_layer_norm_plain",
     model([ms("SkipLayerNormalization", ["x", "s", "g"], ["y"], epsilon=1e-5)],
           [vi("x", h.shape), vi("s", sk.shape)], [vi("y", None)], [init("g", gamma)]),
     {"x": h, "s": sk})
save("skip_simplified_layer_norm",
     model([ms("SkipSimplifiedLayerNormalization", ["x", "s", "g", "bias"],
               ["y", "", "", "sum"], epsilon=1e-6)],
           [vi("x", h.shape), vi("s", sk.shape)], [vi("y", None), vi("sum", None)],
           [init("g", gamma), init("bias", hb)]),
     {"x": h, "s": sk})
save("simplified_layer_norm",
     model([helper.make_node("SimplifiedLayerNormalization", ["x", "g"], ["y"], axis=-1,
                             epsilon=1e-6)],
           [vi("x", h.shape)], [vi("y", None)], [init("g", gamma)]),
     {"x": h})
save("layer_norm_opset13",
     model([helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1,
                             epsilon=1e-5)],
           [vi("x", h.shape)], [vi("y", None)], [init("g", gamma), init("b", beta)], opset=13),
     {"x": h})
xn = r(2, 6, 5, 8)  # NHWC, C = 8


def group_norm_ref(f):
    # ORT's GroupNorm (CUDA only): NHWC, statistics per (n, group), gamma/beta per channel,
    # then swish
    x = f["x"].astype(np.float64)
    n, hh, ww, c = x.shape
    g = x.reshape(n, hh * ww, 4, c // 4)
    mean = g.mean(axis=(1, 3), keepdims=True)
    var = g.var(axis=(1, 3), keepdims=True)
    y = ((g - mean) / np.sqrt(var + 1e-5)).reshape(n, hh, ww, c) * gamma + beta
    return [(y / (1 + np.exp(-y))).astype(np.float32)]


save("group_norm_swish",
     model([ms("GroupNorm", ["x", "g", "b"], ["y"], groups=4, activation=1, epsilon=1e-5,
               channels_last=1)],
           [vi("x", xn.shape)], [vi("y", None)], [init("g", gamma), init("b", beta)]),
     {"x": xn}, reference=group_norm_ref)
wn = r(6, 8, 3, 3, scale=0.3)


def nhwc_conv_ref(f):
    # ORT's NhwcConv (CUDA only): Conv on the NCHW transpose, result back in NHWC; computed
    # here by ORT's own Conv
    xt = np.ascontiguousarray(f["x"].transpose(0, 3, 1, 2))
    cm = model([helper.make_node("Conv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1],
                                 strides=[2, 2])],
               [vi("x", xt.shape)], [vi("y", None)], [init("w", wn), init("b", b)])
    p = os.path.join(OUT, "nhwc_conv", "nchw.onnx")
    onnx.save(cm, p)
    y = run_ort(p, {"x": xt})[0][0]
    return [np.ascontiguousarray(y.transpose(0, 2, 3, 1))]


save("nhwc_conv",
     model([ms("NhwcConv", ["x", "w", "b"], ["y"], pads=[1, 1, 1, 1], strides=[2, 2])],
           [vi("x", xn.shape)], [vi("y", None)], [init("w", wn), init("b", b)]),
     {"x": xn}, reference=nhwc_conv_ref)

# --- attention -------------------------------------------------------------------------------
B, S, H, N = 2, 5, 16, 4
xa = r(B, S, H)
wa = r(H, 3 * H, scale=0.3)
ba = r(3 * H, scale=0.1)
mask = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=np.int32)
save("attention",
     model([ms("Attention", ["x", "w", "b", "m"], ["y"], num_heads=N)],
           [vi("x", xa.shape), vi("m", mask.shape, TensorProto.INT32)], [vi("y", None)],
           [init("w", wa), init("b", ba)]),
     {"x": xa, "m": mask})
save("attention_causal",
     model([ms("Attention", ["x", "w", "b"], ["y"], num_heads=N, unidirectional=1)],
           [vi("x", xa.shape)], [vi("y", None)], [init("w", wa), init("b", ba)]),
     {"x": xa})
lens = np.array([3, 5], dtype=np.int32)
save("attention_lengths",
     model([ms("Attention", ["x", "w", "b", "m"], ["y"], num_heads=N)],
           [vi("x", xa.shape), vi("m", lens.shape, TensorProto.INT32)], [vi("y", None)],
           [init("w", wa), init("b", ba)]),
     {"x": xa, "m": lens})
q, k, v = r(B, S, H), r(B, 7, H), r(B, 7, H)
mb = r(3 * H, scale=0.1)
kpm = np.array([[1] * 7, [1] * 5 + [0] * 2], dtype=np.int32)
save("multi_head_attention",
     model([ms("MultiHeadAttention", ["q", "k", "v", "bias", "kpm"], ["y"], num_heads=N)],
           [vi("q", q.shape), vi("k", k.shape), vi("v", v.shape),
            vi("kpm", kpm.shape, TensorProto.INT32)], [vi("y", None)], [init("bias", mb)]),
     {"q": q, "k": k, "v": v, "kpm": kpm})
D = H // N
cos = np.cos(np.arange(16)[:, None] * (1.0 / 10000 ** (np.arange(D // 2) / (D // 2)))).astype(np.float32)
sin = np.sin(np.arange(16)[:, None] * (1.0 / 10000 ** (np.arange(D // 2) / (D // 2)))).astype(np.float32)
pos = np.array([[0, 1, 2, 3, 4], [3, 4, 5, 6, 7]], dtype=np.int64)
save("rotary_embedding",
     model([ms("RotaryEmbedding", ["x", "p", "c", "s"], ["y"], num_heads=N)],
           [vi("x", xa.shape), vi("p", pos.shape, TensorProto.INT64)], [vi("y", None)],
           [init("c", cos), init("s", sin)]),
     {"x": xa, "p": pos})
save("rotary_embedding_offset_interleaved",
     model([ms("RotaryEmbedding", ["x", "p", "c", "s"], ["y"], num_heads=N, interleaved=1)],
           [vi("x", xa.shape)], [vi("y", None)],
           [init("p", np.array([2], dtype=np.int64)), init("c", cos), init("s", sin)]),
     {"x": xa})

# --- quantized -------------------------------------------------------------------------------
aq = r(3, 4, 16)
# 7-bit weights: ORT's u8 x s8 kernels on AVX2 (vpmaddubsw) saturate 16-bit pair sums with
# full-range int8 weights, so its result is then not the exact integer product ONNX defines
# (and kiln computes); ORT's quantizer avoids it with reduce_range, as here.
bq = rng.integers(-63, 64, size=(16, 6), dtype=np.int8)
bs = (rng.random(6).astype(np.float32) * 0.02 + 0.01)
save("dynamic_quantize_matmul",
     model([ms("DynamicQuantizeMatMul", ["a", "b", "s", "", "bias"], ["y"])],
           [vi("a", aq.shape)], [vi("y", None)],
           [init("b", bq), init("s", bs), init("bias", r(6))]),
     {"a": aq}, atol=1e-4, rtol=1e-4)
K, Nn, bsz = 64, 10, 32
for bits in (4, 8):
    codes = rng.integers(0, 2 ** bits, size=(Nn, K), dtype=np.uint8)
    per = 8 // bits
    packed = np.zeros((Nn, K // bsz, bsz * bits // 8), dtype=np.uint8)
    for nn in range(Nn):
        for kk in range(K):
            blk, j = divmod(kk, bsz)
            packed[nn, blk, (j * bits) // 8] |= codes[nn, kk] << ((j * bits) % 8)
    scales = (rng.random(Nn * (K // bsz)).astype(np.float32) * 0.05 + 0.01)
    zp_codes = rng.integers(0, 2 ** bits, size=(Nn, K // bsz), dtype=np.uint8)
    zp_per_row = (K // bsz * bits + 7) // 8
    zp = np.zeros((Nn, zp_per_row), dtype=np.uint8)
    for nn in range(Nn):
        for blk in range(K // bsz):
            zp[nn, (blk * bits) // 8] |= zp_codes[nn, blk] << ((blk * bits) % 8)
    an = r(2, 3, K)
    save(f"matmul_{bits}bits",
         model([ms("MatMulNBits", ["a", "b", "s", "z"], ["y"], K=K, N=Nn, bits=bits,
                   block_size=bsz)],
               [vi("a", an.shape)], [vi("y", None)],
               [init("b", packed), init("s", scales), init("z", zp.reshape(-1))]),
         {"a": an}, atol=1e-4, rtol=1e-4)
    if bits == 4:
        save("matmul_4bits_default_zp",
             model([ms("MatMulNBits", ["a", "b", "s"], ["y"], K=K, N=Nn, bits=4,
                       block_size=bsz)],
                   [vi("a", an.shape)], [vi("y", None)], [init("b", packed), init("s", scales)]),
             {"a": an}, atol=1e-4, rtol=1e-4)
U8 = TensorProto.UINT8


def qinit(prefix, scale, zp):
    return [init(prefix + "_s", np.array(scale, dtype=np.float32)),
            init(prefix + "_z", np.array(zp, dtype=np.uint8))]


xa8 = rng.integers(0, 256, size=(2, 3, 4, 4), dtype=np.uint8)
xb8 = rng.integers(0, 256, size=(2, 3, 4, 4), dtype=np.uint8)
for op in ("QLinearAdd", "QLinearMul"):
    save(op.lower(),
         model([ms(op, ["a", "a_s", "a_z", "b", "b_s", "b_z", "y_s", "y_z"], ["y"])],
               [vi("a", xa8.shape, U8), vi("b", xb8.shape, U8)], [vi("y", None, U8)],
               qinit("a", 0.05, 120) + qinit("b", 0.03, 131) + qinit("y", 0.08, 128)),
         {"a": xa8, "b": xb8}, atol=1.0, rtol=0.0)
save("qlinear_sigmoid",
     model([ms("QLinearSigmoid", ["a", "a_s", "a_z", "y_s", "y_z"], ["y"])],
           [vi("a", xa8.shape, U8)], [vi("y", None, U8)],
           qinit("a", 0.05, 120) + qinit("y", 1 / 256, 0)),
     {"a": xa8}, atol=1.0, rtol=0.0)
save("qlinear_leaky_relu",
     model([ms("QLinearLeakyRelu", ["a", "a_s", "a_z", "y_s", "y_z"], ["y"], alpha=0.1)],
           [vi("a", xa8.shape, U8)], [vi("y", None, U8)],
           qinit("a", 0.05, 120) + qinit("y", 0.04, 20)),
     {"a": xa8}, atol=1.0, rtol=0.0)
save("qlinear_global_average_pool",
     model([ms("QLinearGlobalAveragePool", ["a", "a_s", "a_z", "y_s", "y_z"], ["y"])],
           [vi("a", xa8.shape, U8)], [vi("y", None, U8)],
           qinit("a", 0.05, 120) + qinit("y", 0.02, 125)),
     {"a": xa8}, atol=1.0, rtol=0.0)
save("qlinear_concat",
     model([ms("QLinearConcat", ["y_s", "y_z", "a", "a_s", "a_z", "b", "b_s", "b_z"], ["y"],
               axis=1)],
           [vi("a", xa8.shape, U8), vi("b", xb8.shape, U8)], [vi("y", None, U8)],
           qinit("a", 0.05, 120) + qinit("b", 0.03, 131) + qinit("y", 0.06, 128)),
     {"a": xa8, "b": xb8}, atol=1.0, rtol=0.0)

# --- models made by ORT's tools --------------------------------------------------------------
enc = os.path.join(ROOT, "golden", "models", "encoder.onnx")
if os.path.exists(enc):
    import onnx.shape_inference  # noqa: F401
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers import optimizer

    m = onnx.load(enc)
    feeds = {}
    for i in m.graph.input:
        shape = [d.dim_value for d in i.type.tensor_type.shape.dim]
        feeds[i.name] = r(*shape)
    heads = 6
    hidden = m.graph.input[0].type.tensor_type.shape.dim[-1].dim_value
    d = os.path.join(OUT, "encoder_ort_fused")
    os.makedirs(d, exist_ok=True)
    opt = optimizer.optimize_model(enc, model_type="bert", num_heads=heads, hidden_size=hidden,
                                   opt_level=0)
    path = os.path.join(d, "model.onnx")
    opt.save_model_to_file(path)
    save("encoder_ort_fused", path, feeds, atol=1e-4, rtol=1e-3)
    d = os.path.join(OUT, "encoder_ort_dynamic_int8")
    os.makedirs(d, exist_ok=True)
    qpath = os.path.join(d, "model.onnx")
    quantize_dynamic(path, qpath, weight_type=QuantType.QInt8, reduce_range=True,
                     extra_options={"DefaultTensorType": TensorProto.FLOAT})
    # Dynamic quantization re-quantizes every activation: a float difference of one ulp
    # (summation order) can move a value to the next int8 step, and six layers amplify that
    # (kiln -O0 vs kiln -O2 differ by 0.011, kiln vs ORT by 0.063 on outputs up to 4.1). The
    # quantized ops themselves match ORT exactly (dynamic_quantize_matmul above), so this
    # model is held to a quantization-level tolerance.
    save("encoder_ort_dynamic_int8", qpath, feeds, atol=0.1, rtol=0.02)

with open(os.path.join(OUT, "cases.json"), "w") as f:
    json.dump({"cases": CASES}, f, indent=1)
