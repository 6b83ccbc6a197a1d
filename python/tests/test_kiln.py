"""The `kiln` Python package against ONNX Runtime on the golden models.

Run: .venv/bin/python -m pytest python/tests   (after scripts/setup-python-package.sh; CI runs
it from tests/tests/python.rs). Golden models missing -> skipped, unless KILN_REQUIRE_GOLDEN=1.
"""

import json
import os
import pathlib
import threading
import time

import numpy as np
import pytest

import kiln

ROOT = pathlib.Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "golden"

# small and medium golden models (the Rust golden tests cover every model at every level)
MODELS = ["lenet5", "tiny_ops", "squeezenet1_1", "mobilenetv2", "ppocr_cls"]


def golden(name):
    meta = json.loads((GOLDEN / "data" / name / "meta.json").read_text())
    model = GOLDEN / meta["model"]
    if not model.exists():
        msg = f"golden model {model} missing: run scripts/setup.sh"
        if os.environ.get("KILN_REQUIRE_GOLDEN") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    inputs = {i["name"]: np.load(GOLDEN / "data" / name / i["file"]) for i in meta["inputs"]}
    shapes = {i["name"]: i["shape"] for i in meta["inputs"]}
    outputs = {o["name"]: np.load(GOLDEN / "data" / name / o["file"]) for o in meta["outputs"]}
    return model, shapes, inputs, outputs


def onnxruntime_outputs(model, inputs):
    import onnxruntime as ort

    s = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    names = [o.name for o in s.get_outputs()]
    return dict(zip(names, s.run(names, inputs)))


def assert_close(got, want, what):
    assert got.dtype == want.dtype, what
    assert got.shape == want.shape, what
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=what)


@pytest.fixture(scope="module")
def lenet(tmp_path_factory):
    model, shapes, inputs, outputs = golden("lenet5")
    so = kiln.compile(model, "so", tmp_path_factory.mktemp("lenet") / "liblenet5.so")
    return kiln.load(so), inputs, outputs


@pytest.mark.parametrize("name", MODELS)
def test_compiled_so_matches_onnxruntime(name, tmp_path):
    model, shapes, inputs, stored = golden(name)
    so = kiln.compile(model, emit="so", output=tmp_path / f"lib{name}.so", input_shapes=shapes)
    assert pathlib.Path(so).is_file()
    m = kiln.load(so)
    assert [i["name"] for i in m.inputs] == list(inputs)
    outs = m.run(inputs)
    live = onnxruntime_outputs(model, inputs)
    assert list(outs) == list(live)
    for k in live:
        assert_close(outs[k], live[k], f"{name}: {k} vs onnxruntime")
        assert_close(outs[k], stored[k], f"{name}: {k} vs golden data")


@pytest.mark.parametrize("name", ["lenet5", "squeezenet1_1"])
def test_load_onnx_in_memory_with_threads(name):
    model, shapes, inputs, stored = golden(name)
    one = kiln.load(model, input_shapes=shapes)
    two = kiln.load(model, input_shapes=shapes, threads=2)
    assert two.threads == 2
    a, b = one.run(inputs), two.run(inputs)
    for k in stored:
        assert_close(a[k], stored[k], f"{name}: {k}")
        # the same work items whatever the thread count: bit-identical
        assert np.array_equal(a[k], b[k])


def test_input_forms_and_checks(lenet):
    m, inputs, outputs = lenet
    (name, x), = inputs.items()
    want = outputs["output"]
    # dict, list, a single array, nested Python lists (converted to the model's dtype)
    for given in ({name: x}, [x], (x,), x, {name: x.tolist()}):
        assert_close(m.run(given)["output"], want, f"inputs given as {type(given).__name__}")
    # non-contiguous and misaligned arrays are copied once, with the same result
    wide = np.zeros((1, 1, 28, 56), np.float32)
    wide[..., ::2] = x
    strided = wide[..., ::2]
    assert not strided.flags.c_contiguous
    assert_close(m.run({name: strided})["output"], want, "strided input")
    fortran = np.asfortranarray(x)
    assert_close(m.run({name: fortran})["output"], want, "Fortran-order input")
    raw = np.zeros(x.nbytes + 1, np.uint8)[1:]
    misaligned = raw.view(np.float32).reshape(x.shape)
    misaligned[...] = x
    assert misaligned.ctypes.data % 4 != 0
    assert_close(m.run({name: misaligned})["output"], want, "misaligned input")
    # wrong dtype: no silent cast
    with pytest.raises(TypeError, match=r"input 'input' must be float32, got float64"):
        m.run({name: x.astype(np.float64)})
    with pytest.raises(ValueError, match=r"must have shape \[1, 1, 28, 28\], got \[1, 28, 28\]"):
        m.run({name: x[0]})
    with pytest.raises(KeyError, match="no input 'nope'"):
        m.run({name: x, "nope": x})
    with pytest.raises(KeyError, match="missing input 'input'"):
        m.run({})
    with pytest.raises(ValueError, match="takes 1 inputs"):
        m.run([x, x])
    # the input is not modified, outputs are fresh arrays each run
    before = x.copy()
    o1, o2 = m.run(x)["output"], m.run(x)["output"]
    assert np.array_equal(x, before) and o1 is not o2
    assert o1.flags.c_contiguous and o1.flags.writeable


def test_model_metadata(lenet):
    m, _, _ = lenet
    assert m.name == "lenet5"
    assert m.inputs == [{"name": "input", "dtype": "float32", "shape": (1, 1, 28, 28)}]
    assert m.outputs == [{"name": "output", "dtype": "float32", "shape": (1, 10)}]
    assert m.workspace_size > 0
    assert "lenet5" in repr(m)


def test_gil_is_released_while_running():
    """While a run is inside the model, another Python thread keeps running: its loop
    iterations land strictly inside the run's time window (impossible with the GIL held)."""
    model, shapes, inputs, _ = golden("squeezenet1_1")
    m = kiln.load(model, input_shapes=shapes)
    m.run(inputs)
    windows, ticks, done = [], [], threading.Event()

    def worker():
        for _ in range(5):
            t0 = time.perf_counter()
            m.run(inputs)
            windows.append((t0, time.perf_counter()))
        done.set()

    t = threading.Thread(target=worker)
    t.start()
    while not done.is_set():
        ticks.append(time.perf_counter())
    t.join()
    inside = [
        tk for a, b in windows for tk in ticks if a + 0.2 * (b - a) < tk < b - 0.2 * (b - a)
    ]
    assert inside, f"no main-thread progress inside {len(windows)} runs of {windows[0][1] - windows[0][0]:.4f} s"


def test_concurrent_runs_from_threads(lenet):
    m, inputs, outputs = lenet
    results = []

    def go():
        for _ in range(20):
            results.append(m.run(inputs)["output"])

    ts = [threading.Thread(target=go) for _ in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(results) == 80
    for r in results:
        assert_close(r, outputs["output"], "concurrent run")


def test_profile(lenet):
    m, inputs, _ = lenet
    p = m.profile(inputs, runs=3)
    assert p.runs == 3 and p.run_ms > 0
    st = p.stats()
    assert [s["ms"] for s in st] == sorted((s["ms"] for s in st), reverse=True)
    assert abs(sum(s["percent"] for s in st) - 100) < 1e-6
    assert {s["op"] for s in st} >= {"conv+relu", "max_pool"}
    assert any(s["gflops"] > 0 for s in st)
    trace = json.loads(p.chrome_trace())
    assert len(trace) == 3 * (len(st) + 1)
    assert str(p).startswith("profile of 'lenet5': 3 runs")
    with pytest.raises(ValueError):
        m.profile(inputs, runs=0)


def test_inspect_table():
    model, shapes, _, _ = golden("mobilenetv2")
    t = kiln.inspect(model, input_shapes=shapes)
    assert t.columns == ["index", "op", "output", "flops", "fused", "buffer", "node"]
    assert len(t) == t.summary["nodes"] > 50
    assert t[0]["index"] == 0
    assert sum(t.column("flops")) == t.summary["flops"]
    assert t.summary["workspace_bytes"] < t.summary["naive_bytes"]
    convs = [r for r in t if r["op"] == "conv"]
    assert len(convs) == t.summary["convs"] and any(r["fused"] for r in convs)
    assert "planned workspace" in str(t)
    assert "<table>" in t._repr_html_()
    assert len(t.to_dicts()) == len(t) and len(t[1:3]) == 2
    # -O0 keeps every node
    t0 = kiln.inspect(model, input_shapes=shapes, opt_level=0)
    assert len(t0) > len(t)


def test_compile_every_emit_kind(tmp_path):
    model, _, inputs, outputs = golden("lenet5")
    for emit, file in [
        ("exe", "lenet5"),
        ("header", "lenet5.h"),
        ("staticlib", "liblenet5.a"),
        ("obj", "lenet5.o"),
        ("ir", "lenet5.kir"),
    ]:
        out = kiln.compile(model, emit=emit, output=tmp_path / file)
        assert pathlib.Path(out).stat().st_size > 0, emit
    assert "LENET5_WORKSPACE_SIZE" in (tmp_path / "lenet5.h").read_text()
    # the default output name, in the current directory
    cwd = os.getcwd()
    try:
        os.chdir(tmp_path)
        assert kiln.compile(model, name="digits") == "libdigits.so"
    finally:
        os.chdir(cwd)
    # the executable runs the same model
    np.save(tmp_path / "x.npy", inputs["input"])
    import subprocess

    subprocess.run(
        [tmp_path / "lenet5", tmp_path / "x.npy", "--output-dir", tmp_path / "out"], check=True
    )
    assert_close(np.load(tmp_path / "out" / "output.npy"), outputs["output"], "executable")


def test_errors_are_kiln_errors(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07\x12\xff\xff\xff garbage")
    with pytest.raises(kiln.KilnError, match="bad.onnx"):
        kiln.compile(bad, output=tmp_path / "x.so")
    assert not (tmp_path / "x.so").exists()
    with pytest.raises(kiln.KilnError, match="bad.onnx"):
        kiln.load(bad)
    with pytest.raises(kiln.KilnError, match="missing.so"):
        kiln.load(tmp_path / "missing.so")
    with pytest.raises(ValueError, match="unknown kind 'dll'"):
        kiln.compile(bad, emit="dll")
    with pytest.raises(ValueError, match="optimization level"):
        kiln.inspect(bad, opt_level=7)
    with pytest.raises(ValueError, match="threads"):
        kiln.load(bad, threads=0)


def test_convert_round_trips_through_onnxruntime(tmp_path):
    """kiln.convert: ONNX -> .kir -> ONNX (and -> AIR) at -O0 and -O2; the converted ONNX
    runs in ONNX Runtime with the golden outputs, and compiles with kiln again."""
    model, shapes, inputs, stored = golden("lenet5")
    kir = kiln.convert(model, tmp_path / "lenet5.kir")
    assert "conv" in pathlib.Path(kir).read_text()
    for level in (0, 2):
        onnx_path = kiln.convert(kir, tmp_path / f"lenet5_O{level}.onnx", opt_level=level)
        live = onnxruntime_outputs(onnx_path, inputs)
        for k in stored:
            assert_close(live[k], stored[k], f"converted -O{level} in onnxruntime")
        outs = kiln.load(onnx_path).run(inputs)
        for k in stored:
            assert_close(outs[k], stored[k], f"converted -O{level} compiled by kiln")
    air = kiln.convert(model, tmp_path / "lenet5.air")
    assert pathlib.Path(air).stat().st_size > 0
    with pytest.raises(kiln.KilnError, match="lenet5.xyz"):
        kiln.convert(model, tmp_path / "lenet5.xyz")
    assert not (tmp_path / "lenet5.xyz").exists()
