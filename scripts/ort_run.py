#!/usr/bin/env python3
"""Check and run ONNX models in ONNX Runtime, for kiln's ONNX export tests.

Usage: ort_run.py MANIFEST.json RESULT.json

MANIFEST: {"cases": [{"model": "m.onnx", "inputs": ["in0.npy", ...], "out_dir": "dir"}]}
(inputs in the model's input order). For each case: onnx.checker.check_model(full_check=True)
on the file (external data is read from beside it), then an ONNX Runtime session
(CPUExecutionProvider, one thread) on the file; outputs are written as out_dir/out_<k>.npy.
RESULT: {"cases": [{"model", "checker": "ok" | error, "ort": "ok" | error,
"input_names", "output_names", "outputs": [files]}]}. One process serves every case of a test,
so the interpreter and onnxruntime are loaded once. Exit status 0 unless the manifest is
unreadable: failures are reported per case for the caller to judge.
"""

import json
import os
import sys
import traceback

import numpy as np
import onnx
import onnxruntime as ort


def run_case(case):
    res = {"model": case["model"], "checker": "ok", "ort": "ok", "outputs": []}
    try:
        onnx.checker.check_model(case["model"], full_check=True)
    except Exception as e:  # noqa: BLE001 - reported to the caller
        res["checker"] = f"{type(e).__name__}: {e}"
    try:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 1
        so.inter_op_num_threads = 1
        so.log_severity_level = 3
        sess = ort.InferenceSession(case["model"], so, providers=["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        res["input_names"] = names
        res["output_names"] = [o.name for o in sess.get_outputs()]
        if len(names) != len(case["inputs"]):
            raise ValueError(f"model takes {len(names)} inputs, {len(case['inputs'])} given")
        feeds = {n: np.load(p) for n, p in zip(names, case["inputs"])}
        outs = sess.run(None, feeds)
        os.makedirs(case["out_dir"], exist_ok=True)
        for k, o in enumerate(outs):
            p = os.path.join(case["out_dir"], f"out_{k}.npy")
            np.save(p, o)
            res["outputs"].append(p)
    except Exception as e:  # noqa: BLE001
        res["ort"] = f"{type(e).__name__}: {e}"
        if os.environ.get("KILN_ORT_TRACE"):
            traceback.print_exc()
    return res


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(sys.argv[1]) as f:
        manifest = json.load(f)
    results = [run_case(c) for c in manifest["cases"]]
    with open(sys.argv[2], "w") as f:
        json.dump({"cases": results, "versions": {"onnx": onnx.__version__, "onnxruntime": ort.__version__}}, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
