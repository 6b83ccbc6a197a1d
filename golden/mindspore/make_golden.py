#!/usr/bin/env python3
"""Golden data from MindSpore itself, for kiln's MindSpore front ends.

For each small network (LeNet-5, a small ResNet, a small MobileNet-style net) this script builds
the net with fixed random weights, and writes into golden/mindspore/<net>/:

  net.ckpt      mindspore.save_checkpoint(net)
  net.mindir    mindspore.export(..., file_format="MINDIR")
  net.onnx      mindspore.export(..., file_format="ONNX")   (MindSpore's own ONNX exporter)
  input_0.npy   the fixed input
  output_0.npy  MindSpore's inference output (CPU, GRAPH_MODE, net.set_train(False))
  meta.json     shapes, MindSpore version, sha256 of every file

Run it through golden/mindspore/setup.sh's venv:
  PY=$(bash golden/mindspore/setup.sh | tail -n 1); $PY golden/mindspore/make_golden.py [--nets lenet5,...]

Weights come from numpy.random.default_rng(seed) (not MindSpore's initialisers), so the data
depends only on the seed; BatchNorm statistics are random too so BN is not an identity.
"""

import argparse
import hashlib
import json
import os
import sys

import numpy as np

import mindspore as ms
from mindspore import Tensor, nn, ops

HERE = os.path.dirname(os.path.abspath(__file__))


def conv(cin, cout, k, stride=1, pad_mode="valid", padding=0, group=1, has_bias=False):
    return nn.Conv2d(cin, cout, k, stride=stride, pad_mode=pad_mode, padding=padding,
                     group=group, has_bias=has_bias, weight_init="zeros",
                     bias_init="zeros" if has_bias else None)


def bn(c):
    return nn.BatchNorm2d(c, eps=1e-5, momentum=0.9)


class LeNet5(nn.Cell):
    """MindSpore model zoo LeNet-5 (official/cv/lenet/src/lenet.py)."""

    def __init__(self, num_class=10, num_channel=1):
        super().__init__()
        self.conv1 = conv(num_channel, 6, 5)
        self.conv2 = conv(6, 16, 5)
        self.fc1 = nn.Dense(16 * 5 * 5, 120)
        self.fc2 = nn.Dense(120, 84)
        self.fc3 = nn.Dense(84, num_class)
        self.relu = nn.ReLU()
        self.max_pool2d = nn.MaxPool2d(kernel_size=2, stride=2)
        self.flatten = nn.Flatten()

    def construct(self, x):
        x = self.max_pool2d(self.relu(self.conv1(x)))
        x = self.max_pool2d(self.relu(self.conv2(x)))
        x = self.flatten(x)
        x = self.relu(self.fc1(x))
        x = self.relu(self.fc2(x))
        return self.fc3(x)


class Block(nn.Cell):
    """ResNet basic block; a 1x1 conv + BN shortcut when the shape changes."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = conv(cin, cout, 3, stride=stride, pad_mode="pad", padding=1)
        self.bn1 = bn(cout)
        self.conv2 = conv(cout, cout, 3, pad_mode="same")
        self.bn2 = bn(cout)
        self.relu = nn.ReLU()
        self.down = stride != 1 or cin != cout
        if self.down:
            self.down_conv = conv(cin, cout, 1, stride=stride)
            self.down_bn = bn(cout)

    def construct(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        s = self.down_bn(self.down_conv(x)) if self.down else x
        return self.relu(y + s)


class SmallResNet(nn.Cell):
    def __init__(self, num_class=10):
        super().__init__()
        self.stem = conv(3, 8, 3, pad_mode="pad", padding=1)
        self.stem_bn = bn(8)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, pad_mode="same")
        self.layer1 = Block(8, 8, 1)
        self.layer2 = Block(8, 16, 2)
        self.mean = ops.ReduceMean(keep_dims=True)
        self.flatten = nn.Flatten()
        self.fc = nn.Dense(16, num_class)

    def construct(self, x):
        x = self.pool(self.relu(self.stem_bn(self.stem(x))))
        x = self.layer2(self.layer1(x))
        x = self.mean(x, (2, 3))
        return self.fc(self.flatten(x))


class DwBlock(nn.Cell):
    """Depthwise 3x3 + BN + ReLU6, pointwise 1x1 + BN + ReLU6."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.dw = conv(cin, cin, 3, stride=stride, pad_mode="same", group=cin)
        self.dw_bn = bn(cin)
        self.pw = conv(cin, cout, 1)
        self.pw_bn = bn(cout)
        self.relu6 = nn.ReLU6()

    def construct(self, x):
        x = self.relu6(self.dw_bn(self.dw(x)))
        return self.relu6(self.pw_bn(self.pw(x)))


class SmallMobileNet(nn.Cell):
    def __init__(self, num_class=10):
        super().__init__()
        self.stem = conv(3, 8, 3, stride=2, pad_mode="same")
        self.stem_bn = bn(8)
        self.relu6 = nn.ReLU6()
        self.b1 = DwBlock(8, 16, 1)
        self.b2 = DwBlock(16, 24, 2)
        self.pool = nn.AvgPool2d(kernel_size=4, stride=4)
        self.flatten = nn.Flatten()
        self.fc = nn.Dense(24, num_class)
        self.softmax = nn.Softmax()

    def construct(self, x):
        x = self.relu6(self.stem_bn(self.stem(x)))
        x = self.b2(self.b1(x))
        x = self.flatten(self.pool(x))
        return self.softmax(self.fc(x))


class OpZoo(nn.Cell):
    """The MindSpore primitives kiln maps that the CNNs above do not use."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Dense(8, 8)
        self.gelu = nn.GELU()  # the GeLU primitive
        self.ln = nn.LayerNorm((8,), begin_norm_axis=-1, begin_params_axis=-1, epsilon=1e-5)
        self.scale = ms.Parameter(Tensor(np.ones(8, np.float32)), name="scale")

    def construct(self, x):
        h = self.ln(self.gelu(self.fc(x)))
        a = ops.sigmoid(h) * self.scale
        b = ops.tanh(h) - a
        c = b / (ops.exp(h * 0.5) + 1.0)
        t = ops.concat((a, c), axis=1)
        t = ops.reshape(t, (2, 4, 4))
        t = ops.transpose(t, (0, 2, 1))
        t = ops.expand_dims(t, 1)
        t = ops.squeeze(t, 1)
        m = ops.ReduceMean(keep_dims=False)(t, 2)
        m = ops.cast(m, ms.float32)
        return ops.softmax(m, axis=-1)


NETS = {
    "lenet5": (LeNet5, (1, 1, 32, 32)),
    "resnet_small": (SmallResNet, (1, 3, 16, 16)),
    "mobilenet_small": (SmallMobileNet, (1, 3, 16, 16)),
    "op_zoo": (OpZoo, (2, 8)),
}


def init_weights(net, rng):
    """He-style init for weights, small random biases, random BN statistics."""
    for p in net.get_parameters():
        shape = p.shape
        name = p.name
        if name.endswith("moving_variance"):
            v = rng.uniform(0.5, 1.5, shape)
        elif name.endswith("gamma"):
            v = rng.uniform(0.8, 1.2, shape)
        elif name.endswith(("beta", "moving_mean", "bias")):
            v = rng.normal(0.0, 0.1, shape)
        else:
            fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
            v = rng.normal(0.0, np.sqrt(2.0 / fan_in), shape)
        p.set_data(Tensor(v.astype(np.float32)))


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def make(name):
    cls, in_shape = NETS[name]
    out_dir = os.path.join(HERE, name)
    os.makedirs(out_dir, exist_ok=True)
    ms.set_seed(0)
    rng = np.random.default_rng(0)
    net = cls()
    init_weights(net, rng)
    net.set_train(False)
    x = rng.standard_normal(in_shape).astype(np.float32)
    y = net(Tensor(x)).asnumpy().astype(np.float32)

    base = os.path.join(out_dir, "net")
    ms.save_checkpoint(net, base + ".ckpt")
    ms.export(net, Tensor(x), file_name=base, file_format="MINDIR")
    ms.export(net, Tensor(x), file_name=base, file_format="ONNX")
    np.save(os.path.join(out_dir, "input_0.npy"), x)
    np.save(os.path.join(out_dir, "output_0.npy"), y)
    files = ["net.ckpt", "net.mindir", "net.onnx", "input_0.npy", "output_0.npy"]
    os.chmod(out_dir, 0o755)
    for f in files:  # MindSpore writes its files read-only for the owner
        os.chmod(os.path.join(out_dir, f), 0o644)
    meta = {
        "net": name,
        "producer": "mindspore " + ms.__version__,
        "inputs": [{"file": "input_0.npy", "shape": list(x.shape), "dtype": "float32"}],
        "outputs": [{"file": "output_0.npy", "shape": list(y.shape), "dtype": "float32"}],
        "sha256": {f: sha256(os.path.join(out_dir, f)) for f in files},
    }
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")
    sizes = ", ".join(f"{f} {os.path.getsize(os.path.join(out_dir, f))} B" for f in files)
    print(f"{name}: output {list(y.shape)}; {sizes}")


def make_shared_lstm():
    """Reference data for ../shared/testdata/mindspore/lstm_v1.6.mindir (a MindSpore 1.6.1 export,
    not committed here): MindSpore's own output for fixed inputs, via mindspore.load + GraphCell."""
    src = os.path.join(HERE, "..", "..", "..", "shared", "testdata", "mindspore", "lstm_v1.6.mindir")
    out_dir = os.path.join(HERE, "lstm_v1.6")
    os.makedirs(out_dir, exist_ok=True)
    net = nn.GraphCell(ms.load(src))
    rng = np.random.default_rng(0)
    ins = [
        rng.standard_normal((1, 9, 10)).astype(np.float32),
        (0.5 * rng.standard_normal((1, 1, 50))).astype(np.float32),
        (0.5 * rng.standard_normal((1, 1, 50))).astype(np.float32),
    ]
    y = net(*[Tensor(a) for a in ins]).asnumpy().astype(np.float32)
    files = []
    for i, a in enumerate(ins):
        np.save(os.path.join(out_dir, f"input_{i}.npy"), a)
        files.append(f"input_{i}.npy")
    np.save(os.path.join(out_dir, "output_0.npy"), y)
    files.append("output_0.npy")
    meta = {
        "net": "lstm_v1.6",
        "model": "../shared/testdata/mindspore/lstm_v1.6.mindir",
        "model_sha256": sha256(src),
        "producer": "mindspore " + ms.__version__ + " (mindspore.load + nn.GraphCell)",
        "inputs": [{"file": f"input_{i}.npy", "shape": list(a.shape)} for i, a in enumerate(ins)],
        "outputs": [{"file": "output_0.npy", "shape": list(y.shape)}],
        "sha256": {f: sha256(os.path.join(out_dir, f)) for f in files},
    }
    with open(os.path.join(out_dir, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
        f.write("\n")
    print(f"lstm_v1.6: output {y.tolist()}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nets", default=",".join(NETS), help="comma-separated subset of " + ",".join(NETS))
    ap.add_argument("--shared-lstm", action="store_true",
                    help="also write lstm_v1.6/ (MindSpore's outputs for ../shared/testdata/mindspore/lstm_v1.6.mindir)")
    args = ap.parse_args()
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    for n in [n for n in args.nets.split(",") if n]:
        if n not in NETS:
            sys.exit(f"unknown net '{n}' (known: {', '.join(NETS)})")
        make(n)
    if args.shared_lstm:
        make_shared_lstm()


if __name__ == "__main__":
    main()
