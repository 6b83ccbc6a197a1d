#!/usr/bin/env python3
"""Generate golden ONNX models and ONNX Runtime reference outputs for kiln.

Run with the repo venv (see scripts/setup-python.sh):

    .venv/bin/python golden/make_golden.py                      # all synthetic models
    .venv/bin/python golden/make_golden.py --models lenet5,resnet18
    .venv/bin/python golden/make_golden.py --only-models        # rewrite .onnx only
    .venv/bin/python golden/make_golden.py --paddleocr          # also PP-OCR det/rec/cls

Outputs
    golden/models/<name>.onnx            (git-ignored, regenerated on demand)
    golden/data/<name>/input_<i>.npy     (committed reference inputs)
    golden/data/<name>/output_<i>.npy    (committed ONNX Runtime outputs)
    golden/data/<name>/meta.json         (names, shapes, versions, op histogram)

Everything is deterministic: weights and inputs come from numpy.random.default_rng(0)
(re-seeded per model), ONNX Runtime runs single-threaded on CPUExecutionProvider, so
re-running yields byte-identical .onnx and .npy files.  --only-models therefore rebuilds
exactly the models the stored outputs were computed from.
"""

import argparse
import collections
import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS_DIR = os.path.join(HERE, "models")
DATA_DIR = os.path.join(HERE, "data")
CACHE_DIR = os.path.join(HERE, ".cache")

OPSET = 13      # tiny_ops uses 14 (HardSwish)
IR_VERSION = 8  # IR version for opsets 13/14 (keeps models loadable by older runtimes)
SEED = 0

RAPIDOCR_WHEEL = "rapidocr-onnxruntime==1.4.4"
# golden name -> (file inside the wheel, fixed input shape used for the reference run,
#                 RapidOCR preprocessing normalisation (mean, std) per channel)
IMAGENET_NORM = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])   # det: (x/255 - mean) / std
HALF_NORM = ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])                  # rec/cls: (x/255 - 0.5) / 0.5
PPOCR_MODELS = {
    "ppocr_det": ("rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
                  [1, 3, 320, 320], IMAGENET_NORM),
    "ppocr_rec": ("rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
                  [1, 3, 48, 320], HALF_NORM),
    "ppocr_cls": ("rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                  [1, 3, 48, 192], HALF_NORM),
}


# --------------------------------------------------------------------------------------
# Graph builder
# --------------------------------------------------------------------------------------
class Builder:
    """Tiny helper around onnx.helper with deterministic naming and seeded weights."""

    def __init__(self, name, seed=SEED, opset=OPSET):
        self.name = name
        self.opset = opset
        self.rng = np.random.default_rng(seed)
        self.nodes = []
        self.inits = []
        self.inputs = []
        self.outputs = []
        self.counts = collections.Counter()

    # -- naming / constants ------------------------------------------------------------
    def fresh(self, prefix):
        self.counts[prefix] += 1
        return f"{prefix}_{self.counts[prefix]}"

    def init(self, arr, prefix="const"):
        name = self.fresh(prefix)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def f32(self, values, prefix="const"):
        return self.init(np.asarray(values, dtype=np.float32), prefix)

    def i64(self, values, prefix="const"):
        return self.init(np.asarray(values, dtype=np.int64), prefix)

    def normal(self, shape, std):
        return (self.rng.standard_normal(shape) * std).astype(np.float32)

    def uniform(self, shape, lo, hi):
        return self.rng.uniform(lo, hi, shape).astype(np.float32)

    # -- graph I/O ---------------------------------------------------------------------
    def input(self, name, shape):
        self.inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
        return name

    def output(self, name, shape=None):
        self.outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))

    def op(self, op_type, inputs, n_out=1, out=None, **attrs):
        name = self.fresh(op_type.lower())
        if out is None:
            outs = [f"{name}_out{i}" if n_out > 1 else f"{name}_out" for i in range(n_out)]
        else:
            outs = [out] if isinstance(out, str) else list(out)
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        return outs[0] if len(outs) == 1 else outs

    # -- layers ------------------------------------------------------------------------
    def conv(self, x, cin, cout, k, stride=1, pad=0, group=1, dilation=1, bias=True,
             gain=2.0, out=None):
        fan_in = (cin // group) * k * k
        w = self.init(self.normal((cout, cin // group, k, k), np.sqrt(gain / fan_in)), "w")
        ins = [x, w]
        if bias:
            ins.append(self.init(self.normal((cout,), 0.05), "b"))
        return self.op("Conv", ins, out=out, kernel_shape=[k, k], strides=[stride, stride],
                       pads=[pad] * 4, dilations=[dilation, dilation], group=group)

    def bn(self, x, c, gamma=(0.8, 1.2)):
        scale = self.init(self.uniform((c,), *gamma), "bn_scale")
        b = self.init(self.normal((c,), 0.1), "bn_bias")
        mean = self.init(self.normal((c,), 0.1), "bn_mean")
        var = self.init(self.uniform((c,), 0.5, 1.5), "bn_var")
        return self.op("BatchNormalization", [x, scale, b, mean, var], epsilon=1e-5)

    def gemm(self, x, fin, fout, gain=2.0, out=None):
        w = self.init(self.normal((fout, fin), np.sqrt(gain / fin)), "fc_w")
        b = self.init(self.normal((fout,), 0.05), "fc_b")
        return self.op("Gemm", [x, w, b], out=out, transB=1)

    def relu(self, x):
        return self.op("Relu", [x])

    def maxpool(self, x, k, s, pad=0, ceil=0):
        return self.op("MaxPool", [x], kernel_shape=[k, k], strides=[s, s], pads=[pad] * 4,
                       ceil_mode=ceil)

    # -- finish ------------------------------------------------------------------------
    def model(self):
        graph = helper.make_graph(self.nodes, self.name, self.inputs, self.outputs,
                                  initializer=self.inits)
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                              producer_name="kiln-golden", producer_version="1")
        m.ir_version = IR_VERSION
        onnx.checker.check_model(m, full_check=True)
        return m


# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------
def build_lenet5():
    g = Builder("lenet5")
    x = g.input("input", [1, 1, 28, 28])
    y = g.relu(g.conv(x, 1, 6, 5, pad=2))            # 6x28x28
    y = g.maxpool(y, 2, 2)                            # 6x14x14
    y = g.relu(g.conv(y, 6, 16, 5))                   # 16x10x10
    y = g.maxpool(y, 2, 2)                            # 16x5x5
    y = g.op("Flatten", [y], axis=1)                  # 400
    y = g.relu(g.gemm(y, 400, 120))
    y = g.relu(g.gemm(y, 120, 84))
    y = g.gemm(y, 84, 10, gain=1.0)
    g.op("Softmax", [y], out="output", axis=1)
    g.output("output", [1, 10])
    return g, {"input": [1, 1, 28, 28]}


def build_squeezenet1_1():
    g = Builder("squeezenet1_1")
    x = g.input("input", [1, 3, 224, 224])

    def fire(x, cin, sq, e1, e3):
        s = g.relu(g.conv(x, cin, sq, 1))
        a = g.relu(g.conv(s, sq, e1, 1))
        b = g.relu(g.conv(s, sq, e3, 3, pad=1))
        return g.op("Concat", [a, b], axis=1), e1 + e3

    y = g.relu(g.conv(x, 3, 64, 3, stride=2))         # 64x111x111
    y = g.maxpool(y, 3, 2, ceil=1)                    # 64x55x55
    c = 64
    y, c = fire(y, c, 16, 64, 64)
    y, c = fire(y, c, 16, 64, 64)
    y = g.maxpool(y, 3, 2, ceil=1)                    # 27x27
    y, c = fire(y, c, 32, 128, 128)
    y, c = fire(y, c, 32, 128, 128)
    y = g.maxpool(y, 3, 2, ceil=1)                    # 13x13
    y, c = fire(y, c, 48, 192, 192)
    y, c = fire(y, c, 48, 192, 192)
    y, c = fire(y, c, 64, 256, 256)
    y, c = fire(y, c, 64, 256, 256)
    y = g.relu(g.conv(y, c, 1000, 1))                 # classifier conv (dropout omitted)
    y = g.op("GlobalAveragePool", [y])
    g.op("Flatten", [y], out="output", axis=1)
    g.output("output", [1, 1000])
    return g, {"input": [1, 3, 224, 224]}


def build_resnet18():
    g = Builder("resnet18")
    x = g.input("input", [1, 3, 224, 224])
    y = g.relu(g.bn(g.conv(x, 3, 64, 7, stride=2, pad=3, bias=False), 64))   # 64x112x112
    y = g.maxpool(y, 3, 2, pad=1)                                             # 64x56x56

    def block(x, cin, cout, stride):
        h = g.relu(g.bn(g.conv(x, cin, cout, 3, stride=stride, pad=1, bias=False), cout))
        # small gamma on the last BN of the residual branch keeps activations O(1)
        h = g.bn(g.conv(h, cout, cout, 3, pad=1, bias=False), cout, gamma=(0.2, 0.5))
        if stride != 1 or cin != cout:
            idn = g.bn(g.conv(x, cin, cout, 1, stride=stride, bias=False), cout, gamma=(0.5, 0.8))
        else:
            idn = x
        return g.relu(g.op("Add", [h, idn]))

    c = 64
    for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
        y = block(y, c, cout, stride)
        y = block(y, cout, cout, 1)
        c = cout
    y = g.op("GlobalAveragePool", [y])
    y = g.op("Flatten", [y], axis=1)
    g.gemm(y, 512, 1000, gain=1.0, out="output")
    g.output("output", [1, 1000])
    return g, {"input": [1, 3, 224, 224]}


def build_mobilenetv2():
    g = Builder("mobilenetv2")
    x = g.input("input", [1, 3, 224, 224])
    cmin = g.f32(0.0, "clip_min")
    cmax = g.f32(6.0, "clip_max")

    def relu6(v):
        return g.op("Clip", [v, cmin, cmax])

    def conv_bn(v, cin, cout, k, stride=1, group=1, gain=2.0):
        # BatchNorm folded into the convolution (weights + bias), as exporters do
        return g.conv(v, cin, cout, k, stride=stride, pad=k // 2, group=group, gain=gain)

    y = relu6(conv_bn(x, 3, 32, 3, stride=2))        # 32x112x112
    c = 32
    settings = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    for t, cout, n, s in settings:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = c * t
            h = y
            if t != 1:
                h = relu6(conv_bn(h, c, hidden, 1))
            h = relu6(conv_bn(h, hidden, hidden, 3, stride=stride, group=hidden))
            h = conv_bn(h, hidden, cout, 1, gain=1.0)   # linear bottleneck
            if stride == 1 and c == cout:
                h = g.op("Add", [y, h])
            y, c = h, cout
    y = relu6(conv_bn(y, c, 1280, 1))                 # 1280x7x7
    y = g.op("GlobalAveragePool", [y])
    y = g.op("Reshape", [y, g.i64([1, 1280], "shape")])
    g.gemm(y, 1280, 1000, gain=1.0, out="output")
    g.output("output", [1, 1000])
    return g, {"input": [1, 3, 224, 224]}


def build_tiny_ops():
    # HardSwish only exists from opset 14 on, so this model alone uses opset 14 (every other
    # op here has identical semantics in opsets 13 and 14).
    g = Builder("tiny_ops", opset=14)
    x = g.input("input", [1, 3, 16, 16])

    # Conv with dilation + stride + group: 3 -> 6 channels, 16x16 -> 8x8
    a = g.conv(x, 3, 6, 3, stride=2, pad=2, group=3, dilation=2)
    a_s = g.op("Sigmoid", [a])
    # ConvTranspose stride 2, output_padding 1: 6x8x8 -> 4x16x16  ((8-1)*2 - 2 + 3 + 1 = 16)
    wct = g.init(g.normal((6, 4, 3, 3), np.sqrt(2.0 / 54)), "w")
    bct = g.init(g.normal((4,), 0.05), "b")
    ct = g.op("ConvTranspose", [a_s, wct, bct], kernel_shape=[3, 3], strides=[2, 2],
              pads=[1, 1, 1, 1], output_padding=[1, 1])
    ct_t = g.op("Tanh", [ct])
    scales = g.f32([1, 1, 2, 2], "scales")
    rn = g.op("Resize", [a, "", scales], mode="nearest",
              coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    rl = g.op("Resize", [a_s, "", scales], mode="linear",
              coordinate_transformation_mode="half_pixel")
    ap = g.op("AveragePool", [x], kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1],
              count_include_pad=0)
    cat = g.op("Concat", [ct_t, rn, rl, ap], axis=1)                 # 1x19x16x16

    # Elementwise / activation branches, all well-conditioned
    e = g.op("Erf", [cat])
    ex = g.op("Exp", [g.op("Tanh", [cat])])                           # exp of [-1, 1]
    sq = g.op("Sqrt", [g.op("Add", [g.op("Abs", [cat]), g.f32(1.0, "one")])])  # >= 1
    pw = g.op("Pow", [sq, g.f32(1.5, "exponent")])
    hs = g.op("HardSigmoid", [cat], alpha=0.2, beta=0.5)
    hw = g.op("HardSwish", [cat])
    lr = g.op("LeakyRelu", [cat], alpha=0.1)
    s1 = g.op("Add", [e, ex])
    s2 = g.op("Sub", [lr, hs])
    s3 = g.op("Div", [hw, sq])                                        # divisor >= 1
    s4 = g.op("Mul", [pw, g.f32(0.5, "half")])
    g.op("Concat", [s1, s2, s3, s4], axis=1, out="elementwise")       # 1x76x16x16
    g.output("elementwise", [1, 76, 16, 16])

    # Split / Slice
    p, q = g.op("Split", ["elementwise", g.i64([38, 38], "split")], n_out=2, axis=1)
    g.op("Slice", [p, g.i64([2, -1], "starts"), g.i64([14, 0], "ends"),
                   g.i64([2, 3], "axes"), g.i64([1, -2], "steps")], out="sliced")
    g.output("sliced", [1, 38, 12, 8])                                # rows 2..13, cols 15,13,..,1

    # ReduceMean / Squeeze / Unsqueeze
    rm = g.op("ReduceMean", [q], axes=[2, 3], keepdims=1)             # 1x38x1x1
    sqz = g.op("Squeeze", [rm, g.i64([2, 3], "axes")])                # 1x38
    g.op("Unsqueeze", [sqz, g.i64([0], "axes")], out="reduced")       # 1x1x38
    g.output("reduced", [1, 1, 38])

    # Transpose + batched MatMul, Cast
    c3 = g.op("Squeeze", [cat, g.i64([0], "axes")])                   # 19x16x16
    ct3 = g.op("Transpose", [c3], perm=[0, 2, 1])
    mm1 = g.op("MatMul", [c3, ct3])                                   # 19x16x16 (batched)
    wm = g.init(g.normal((16, 8), np.sqrt(1.0 / 16)), "mm_w")
    mm2 = g.op("MatMul", [ct3, wm])                                   # 19x16x8 (broadcast)
    mm = g.op("Concat", [mm1, mm2], axis=2)                           # 19x16x24
    hw_i = g.op("Gather", [g.op("Shape", [x]), g.i64(3, "idx")], axis=0)  # int64 16
    n = g.op("Cast", [hw_i], to=TensorProto.FLOAT)
    mm = g.op("Div", [mm, n])
    g.op("Cast", [mm], to=TensorProto.FLOAT, out="matmul")
    g.output("matmul", [19, 16, 24])
    return g, {"input": [1, 3, 16, 16]}


def build_recurrent():
    # RNN/GRU/LSTM variants the ONNX node tests do not cover: bidirectional LSTM with short
    # sequence_lens, initial states and peepholes; reverse GRU with linear_before_reset; RNN
    # with clip and a Relu activation. (ONNX Runtime has no batch-major layout=1 kernels; the
    # node tests cover layout=1.)
    g = Builder("recurrent", opset=14)
    x = g.input("x", [5, 3, 4])                                     # [seq, batch, input]
    hid = 6
    w = g.init(g.normal((2, 4 * hid, 4), 0.5), "lstm_w")
    r = g.init(g.normal((2, 4 * hid, hid), 0.5), "lstm_r")
    b = g.init(g.normal((2, 8 * hid), 0.2), "lstm_b")
    lens = g.init(np.array([5, 3, 2], dtype=np.int32), "lstm_lens")
    h0 = g.init(g.normal((2, 3, hid), 0.3), "lstm_h0")
    c0 = g.init(g.normal((2, 3, hid), 0.3), "lstm_c0")
    p = g.init(g.normal((2, 3 * hid), 0.3), "lstm_p")
    g.op("LSTM", [x, w, r, b, lens, h0, c0, p], n_out=3,
         out=["lstm_y", "lstm_h", "lstm_c"], hidden_size=hid, direction="bidirectional")
    g.output("lstm_y", [5, 2, 3, hid])
    g.output("lstm_c", [2, 3, hid])
    gw = g.init(g.normal((1, 3 * hid, 4), 0.5), "gru_w")
    gr = g.init(g.normal((1, 3 * hid, hid), 0.5), "gru_r")
    gb = g.init(g.normal((1, 6 * hid), 0.2), "gru_b")
    g.op("GRU", [x, gw, gr, gb], n_out=2, out=["gru_y", "gru_h"], hidden_size=hid,
         direction="reverse", linear_before_reset=1)
    g.output("gru_y", [5, 1, 3, hid])
    rw = g.init(g.normal((1, hid, 4), 0.5), "rnn_w")
    rr = g.init(g.normal((1, hid, hid), 0.5), "rnn_r")
    g.op("RNN", [x, rw, rr], n_out=2, out=["rnn_y", "rnn_h"], hidden_size=hid, clip=0.5,
         activations=["Relu"])
    g.output("rnn_y", [5, 1, 3, hid])
    return g, {"x": [5, 3, 4]}


def build_encoder():
    # A 6-layer BERT/MiniLM-shaped transformer encoder at 128 tokens (hidden 384, 12 heads,
    # FFN 1536), as exporters write it: LayerNormalization, MatMul + Add, Reshape/Transpose to
    # heads, scaled QK^T, Softmax, Erf-based GELU, residual adds.
    g = Builder("encoder", opset=17)
    seq, hid, heads, ffn, layers = 128, 384, 12, 1536, 6
    dh = hid // heads
    x = g.input("hidden", [1, seq, hid])

    def linear(v, fin, fout):
        w = g.init(g.normal((fin, fout), np.sqrt(1.0 / fin)), "w")
        b = g.init(g.normal((fout,), 0.02), "b")
        return g.op("Add", [g.op("MatMul", [v, w]), b])

    def layer_norm(v):
        gamma = g.init(g.uniform((hid,), 0.9, 1.1), "ln_g")
        beta = g.init(g.normal((hid,), 0.02), "ln_b")
        return g.op("LayerNormalization", [v, gamma, beta], axis=-1, epsilon=1e-12)

    heads_shape = g.i64([1, seq, heads, dh], "heads_shape")
    flat_shape = g.i64([1, seq, hid], "flat_shape")
    scale = g.f32(1.0 / np.sqrt(dh), "scale")
    for _ in range(layers):
        def split_heads(v, perm):
            return g.op("Transpose", [g.op("Reshape", [v, heads_shape])], perm=perm)
        q = split_heads(linear(x, hid, hid), [0, 2, 1, 3])            # [1, h, s, d]
        k = split_heads(linear(x, hid, hid), [0, 2, 3, 1])            # [1, h, d, s]
        v = split_heads(linear(x, hid, hid), [0, 2, 1, 3])
        att = g.op("Softmax", [g.op("Mul", [g.op("MatMul", [q, k]), scale])], axis=-1)
        ctx = g.op("Transpose", [g.op("MatMul", [att, v])], perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, flat_shape])
        x = layer_norm(g.op("Add", [x, linear(ctx, hid, hid)]))
        h = linear(x, hid, ffn)
        gelu = g.op("Mul", [g.op("Mul", [h, g.f32(0.5, "half")]),
                            g.op("Add", [g.op("Erf", [g.op("Div", [h, g.f32(np.sqrt(2.0), "sqrt2")])]),
                                         g.f32(1.0, "one")])])
        x = layer_norm(g.op("Add", [x, linear(gelu, ffn, hid)]))
    g.op("Identity", [x], out="encoded")
    g.output("encoded", [1, seq, hid])
    return g, {"hidden": [1, seq, hid]}


SYNTHETIC = {
    "lenet5": build_lenet5,
    "squeezenet1_1": build_squeezenet1_1,
    "resnet18": build_resnet18,
    "mobilenetv2": build_mobilenetv2,
    "tiny_ops": build_tiny_ops,
    "recurrent": build_recurrent,
    "encoder": build_encoder,
}


# --------------------------------------------------------------------------------------
# Reference runs / output
# --------------------------------------------------------------------------------------
def versions():
    import onnxruntime as ort
    return {"onnxruntime": ort.__version__, "onnx": onnx.__version__, "numpy": np.__version__}


def op_histogram(model):
    hist = collections.Counter()

    def walk(graph):
        for node in graph.node:
            key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
            hist[key] += 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for sg in attr.graphs:
                    walk(sg)

    walk(model.graph)
    return dict(sorted(hist.items()))


def run_ort(model_path, feeds):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1   # single thread: bitwise reproducible outputs
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return names, sess.run(names, feeds)


def write_model(model, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = model.SerializeToString(deterministic=True)
    with open(path, "wb") as f:
        f.write(data)
    return hashlib.sha256(data).hexdigest()


def write_data(name, model_path, model, input_shapes, rng, extra=None, make_input=None):
    """Run ORT on a fixed random input and write npy files + meta.json.

    make_input(rng, shape) -> float32 array overrides the default standard-normal input."""
    out_dir = os.path.join(DATA_DIR, name)
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    graph_inputs = [i for i in model.graph.input
                    if i.name not in {t.name for t in model.graph.initializer}]
    feeds, meta_inputs = {}, []
    for idx, inp in enumerate(graph_inputs):
        shape = input_shapes[inp.name]
        if make_input is not None:
            arr = make_input(rng, shape)
        else:
            arr = rng.standard_normal(shape).astype(np.float32)
        feeds[inp.name] = arr
        fname = f"input_{idx}.npy"
        np.save(os.path.join(out_dir, fname), arr)
        dims = [d.dim_param if d.dim_param else d.dim_value
                for d in inp.type.tensor_type.shape.dim]
        meta_inputs.append({"name": inp.name, "file": fname, "shape": list(shape),
                            "model_shape": dims, "dtype": "float32"})
    out_names, outs = run_ort(model_path, feeds)
    meta_outputs = []
    for idx, (oname, arr) in enumerate(zip(out_names, outs)):
        arr = np.ascontiguousarray(arr)
        fname = f"output_{idx}.npy"
        np.save(os.path.join(out_dir, fname), arr)
        a64 = arr.astype(np.float64)
        meta_outputs.append({"name": oname, "file": fname, "shape": list(arr.shape),
                             "dtype": str(arr.dtype),
                             "stats": {"min": float(a64.min()), "max": float(a64.max()),
                                       "mean_abs": float(np.abs(a64).mean())}})
    with open(model_path, "rb") as f:
        model_sha = hashlib.sha256(f.read()).hexdigest()
    meta = {
        "name": name,
        "model": os.path.relpath(model_path, HERE),
        "model_sha256": model_sha,
        "opset": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "inputs": meta_inputs,
        "outputs": meta_outputs,
        "execution_provider": "CPUExecutionProvider",
        "seed": SEED,
        "versions": versions(),
        "ops": op_histogram(model),
    }
    if extra:
        meta.update(extra)
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=False)
        f.write("\n")
    return meta


def gen_synthetic(name, only_models):
    g, input_shapes = SYNTHETIC[name]()
    model = g.model()
    path = os.path.join(MODELS_DIR, f"{name}.onnx")
    sha = write_model(model, path)
    print(f"[{name}] model {os.path.relpath(path)} sha256={sha[:16]} "
          f"params={sum(int(np.prod(t.dims)) for t in model.graph.initializer)}")
    if only_models:
        check_model_hash(name, sha)
        return
    # inputs drawn from the builder's generator after all weights: deterministic
    meta = write_data(name, path, model, input_shapes, g.rng,
                      extra={"generator": "golden/make_golden.py"})
    for o in meta["outputs"]:
        print(f"    {o['name']} {o['shape']} stats={o['stats']}")


def check_model_hash(name, sha):
    meta_path = os.path.join(DATA_DIR, name, "meta.json")
    if os.path.exists(meta_path):
        with open(meta_path) as f:
            want = json.load(f).get("model_sha256")
        if want and want != sha:
            print(f"WARNING: {name}: regenerated model sha256 {sha} differs from the one the "
                  f"stored data was made with ({want})", file=sys.stderr)


# --------------------------------------------------------------------------------------
# PaddleOCR (RapidOCR wheel)
# --------------------------------------------------------------------------------------
def fetch_rapidocr_wheel():
    os.makedirs(CACHE_DIR, exist_ok=True)
    wheels = sorted(f for f in os.listdir(CACHE_DIR)
                    if f.startswith("rapidocr_onnxruntime-1.4.4") and f.endswith(".whl"))
    if not wheels:
        subprocess.check_call([sys.executable, "-m", "pip", "download", "--quiet",
                               "--disable-pip-version-check", "--no-deps",
                               RAPIDOCR_WHEEL, "-d", CACHE_DIR])
        wheels = sorted(f for f in os.listdir(CACHE_DIR)
                        if f.startswith("rapidocr_onnxruntime-1.4.4") and f.endswith(".whl"))
    return os.path.join(CACHE_DIR, wheels[0])


def text_image(rng, h, w, lines):
    """Synthetic 'printed text' image in [0, 1], HxWx3: light noisy paper with dark glyph-like
    blobs arranged in `lines` text lines.  Random noise alone gives the detector an all-zero
    probability map (a useless reference); this gives it real text regions to respond to."""
    img = np.full((h, w, 3), 0.95, np.float32)
    img += rng.uniform(-0.03, 0.03, (h, w, 3)).astype(np.float32)
    if lines:   # page: several lines of varying height
        y = int(h * 0.1)
        rows = []
        while y < h - 12:
            lh = int(rng.integers(10, 20))
            rows.append((y, lh))
            y += lh + int(rng.integers(8, 25))
    else:       # single cropped text line, as fed to rec/cls
        rows = [(int(h * 0.15), int(h * 0.7))]
    for y, lh in rows:
        x = int(rng.integers(4, 30))
        xend = int(rng.integers(w // 2, w - 4))
        while x < xend:
            cw = int(rng.integers(3, 10)) if lines else int(rng.integers(int(lh * 0.4), lh))
            cell = rng.random((lh, cw)) < 0.45
            img[y:y + lh, x:x + cw][cell[:, : max(0, min(cw, w - x))]] = rng.uniform(0.0, 0.2)
            x += cw + int(rng.integers(1, 4))
            if rng.random() < 0.1:
                x += int(rng.integers(6, 14))
    return np.clip(img, 0.0, 1.0)


def ppocr_input_maker(norm, lines):
    mean, std = (np.asarray(v, np.float32) for v in norm)

    def make(rng, shape):
        n, c, h, w = shape
        imgs = [((text_image(rng, h, w, lines) - mean) / std).transpose(2, 0, 1)
                for _ in range(n)]
        return np.ascontiguousarray(np.stack(imgs).astype(np.float32))
    return make


def gen_paddleocr(only_models):
    wheel = fetch_rapidocr_wheel()
    with zipfile.ZipFile(wheel) as z:
        for name, (member, shape, norm) in PPOCR_MODELS.items():
            path = os.path.join(MODELS_DIR, f"{name}.onnx")
            os.makedirs(MODELS_DIR, exist_ok=True)
            with z.open(member) as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst)
            model = onnx.load(path)
            inp = [i for i in model.graph.input
                   if i.name not in {t.name for t in model.graph.initializer}]
            assert len(inp) == 1, f"{name}: expected one input"
            print(f"[{name}] {member} -> {os.path.relpath(path)} input {inp[0].name} "
                  f"model dims {[d.dim_param or d.dim_value for d in inp[0].type.tensor_type.shape.dim]}"
                  f" using {shape}")
            if only_models:
                with open(path, "rb") as f:
                    check_model_hash(name, hashlib.sha256(f.read()).hexdigest())
                continue
            rng = np.random.default_rng(SEED)
            input_name = inp[0].name
            meta = write_data(
                name, path, model, {input_name: shape}, rng,
                make_input=ppocr_input_maker(norm, lines=(name == "ppocr_det")),
                extra={"source": f"{RAPIDOCR_WHEEL} wheel: {member}",
                       "input_kind": "synthetic text image (golden/make_golden.py:text_image), "
                                     f"normalised (x - {norm[0]}) / {norm[1]}, NCHW",
                       "input_shape_args": [f"{input_name}=" + ",".join(map(str, shape))]})
            print(f"    ops: {meta['ops']}")
            for o in meta["outputs"]:
                print(f"    {o['name']} {o['shape']} stats={o['stats']}")


SILERO_WHEEL = "silero-vad==6.2.3"
SILERO_MEMBER = "silero_vad/data/silero_vad.onnx"


def gen_silero(only_models):
    """Silero VAD (real weights, from the silero-vad wheel): STFT as a convolution, an LSTM
    with its state in and out, and Ifs on the sample rate. The reference runs 16 kHz on one
    512-sample chunk with a non-zero state; `sr` is frozen (--freeze sr=freeze_0.npy), as a
    static compiler needs it: the 8 kHz branch cannot take 512 samples."""
    os.makedirs(CACHE_DIR, exist_ok=True)
    wheels = sorted(f for f in os.listdir(CACHE_DIR)
                    if f.startswith("silero_vad-6.2.3") and f.endswith(".whl"))
    if not wheels:
        subprocess.check_call([sys.executable, "-m", "pip", "download", "--quiet",
                               "--disable-pip-version-check", "--no-deps",
                               SILERO_WHEEL, "-d", CACHE_DIR])
        wheels = sorted(f for f in os.listdir(CACHE_DIR)
                        if f.startswith("silero_vad-6.2.3") and f.endswith(".whl"))
    name = "silero_vad"
    path = os.path.join(MODELS_DIR, f"{name}.onnx")
    os.makedirs(MODELS_DIR, exist_ok=True)
    with zipfile.ZipFile(os.path.join(CACHE_DIR, wheels[0])) as z:
        with z.open(SILERO_MEMBER) as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst)
    with open(path, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    print(f"[{name}] {SILERO_MEMBER} -> {os.path.relpath(path)}")
    if only_models:
        check_model_hash(name, sha)
        return
    model = onnx.load(path)
    rng = np.random.default_rng(SEED)
    out_dir = os.path.join(DATA_DIR, name)
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    os.makedirs(out_dir)
    # a chirp with noise (audio in [-1, 1]) and a state as a previous chunk leaves it
    t = np.arange(512, dtype=np.float64) / 16000.0
    audio = 0.4 * np.sin(2 * np.pi * (200 + 1500 * t / t[-1]) * t) + 0.05 * rng.standard_normal(512)
    feeds = {"input": audio.astype(np.float32)[None, :],
             "state": (0.3 * rng.standard_normal((2, 1, 128))).astype(np.float32)}
    sr = np.array(16000, dtype=np.int64)
    meta_inputs = []
    for idx, (iname, arr) in enumerate(feeds.items()):
        fname = f"input_{idx}.npy"
        np.save(os.path.join(out_dir, fname), arr)
        meta_inputs.append({"name": iname, "file": fname, "shape": list(arr.shape),
                            "dtype": "float32"})
    np.save(os.path.join(out_dir, "freeze_0.npy"), sr)
    out_names, outs = run_ort(path, dict(feeds, sr=sr))
    meta_outputs = []
    for idx, (oname, arr) in enumerate(zip(out_names, outs)):
        arr = np.ascontiguousarray(arr)
        fname = f"output_{idx}.npy"
        np.save(os.path.join(out_dir, fname), arr)
        a64 = arr.astype(np.float64)
        meta_outputs.append({"name": oname, "file": fname, "shape": list(arr.shape),
                             "dtype": str(arr.dtype),
                             "stats": {"min": float(a64.min()), "max": float(a64.max()),
                                       "mean_abs": float(np.abs(a64).mean())}})
    meta = {
        "name": name,
        "model": os.path.relpath(path, HERE),
        "model_sha256": sha,
        "opset": {(o.domain or "ai.onnx"): o.version for o in model.opset_import},
        "inputs": meta_inputs,
        "freeze": [{"name": "sr", "file": "freeze_0.npy", "value": 16000}],
        "outputs": meta_outputs,
        "execution_provider": "CPUExecutionProvider",
        "seed": SEED,
        "versions": versions(),
        "ops": op_histogram(model),
        "source": f"{SILERO_WHEEL} wheel: {SILERO_MEMBER}",
        "input_kind": "512 samples of a 200-1700 Hz chirp with noise at 16 kHz; state N(0, 0.3)",
        "input_shape_args": ["input=1,512", "state=2,1,128"],
    }
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=2, sort_keys=False)
        f.write("\n")
    for o in meta_outputs:
        print(f"    {o['name']} {o['shape']} stats={o['stats']}")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(SYNTHETIC),
                    help="comma-separated synthetic models (default: all). "
                         "Use --models '' with --paddleocr for PaddleOCR only.")
    ap.add_argument("--only-models", action="store_true",
                    help="regenerate golden/models/*.onnx without rewriting golden/data")
    ap.add_argument("--paddleocr", action="store_true",
                    help="also extract PP-OCR det/rec/cls from the rapidocr wheel")
    ap.add_argument("--silero", action="store_true",
                    help="also extract the Silero VAD from the silero-vad wheel")
    args = ap.parse_args()
    names = [n for n in args.models.split(",") if n]
    for n in names:
        if n not in SYNTHETIC:
            ap.error(f"unknown model {n!r}; known: {', '.join(SYNTHETIC)}")
    for n in names:
        gen_synthetic(n, args.only_models)
    if args.paddleocr:
        gen_paddleocr(args.only_models)
    if args.silero:
        gen_silero(args.only_models)


if __name__ == "__main__":
    main()
