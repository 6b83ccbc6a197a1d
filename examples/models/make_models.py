"""The small model the examples compile (committed, so the examples build on a fresh clone):
tiny_cnn.onnx, a digit-classifier-shaped CNN on 1x1x8x8 images (Conv 3x3 + ReLU, MaxPool,
Conv 3x3 + ReLU, Flatten, Gemm, Softmax) with fixed random weights, plus an input and ONNX
Runtime's output for it.

    .venv/bin/python examples/models/make_models.py    # rewrites the three files
"""

import pathlib

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

HERE = pathlib.Path(__file__).resolve().parent


def main():
    rng = np.random.default_rng(19)
    w = lambda *s: (rng.standard_normal(s) * (2.0 / np.prod(s[1:])) ** 0.5).astype(np.float32)
    inits = [
        numpy_helper.from_array(w(8, 1, 3, 3), "w1"),
        numpy_helper.from_array((rng.standard_normal(8) * 0.1).astype(np.float32), "b1"),
        numpy_helper.from_array(w(16, 8, 3, 3), "w2"),
        numpy_helper.from_array((rng.standard_normal(16) * 0.1).astype(np.float32), "b2"),
        numpy_helper.from_array(w(10, 256), "w3"),
        numpy_helper.from_array((rng.standard_normal(10) * 0.1).astype(np.float32), "b3"),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Flatten", ["r2"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, HERE / "tiny_cnn.onnx")
    x = rng.random((1, 1, 8, 8), dtype=np.float32)
    np.save(HERE / "tiny_cnn_input.npy", x)
    s = ort.InferenceSession(str(HERE / "tiny_cnn.onnx"), providers=["CPUExecutionProvider"])
    (y,) = s.run(["probs"], {"image": x})
    np.save(HERE / "tiny_cnn_expected.npy", y)
    print("tiny_cnn: output", y.round(4))


if __name__ == "__main__":
    main()
