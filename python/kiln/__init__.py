"""kiln: an ahead-of-time compiler for neural-network models.

    import kiln, numpy as np
    kiln.compile("model.onnx", emit="so", output="libmodel.so", input_shapes={"x": [1, 3, 224, 224]})
    m = kiln.load("libmodel.so", threads=2)       # or kiln.load("model.onnx"): compiled in memory
    outs = m.run({"x": np.zeros((1, 3, 224, 224), np.float32)})   # {"name": ndarray}
    print(kiln.inspect("model.onnx"))             # the per-op table after optimization
    print(m.profile({"x": x}, runs=10))           # per-node times, slowest first
    kiln.convert("model.onnx", "model.air")       # another format: .onnx, .air, .kir

Errors in a model (unsupported ops, corrupt files, wrong shapes) raise kiln.KilnError with the
file, node and op; wrong inputs to Model.run raise TypeError / ValueError / KeyError.
"""

from __future__ import annotations

from . import _native
from ._native import KilnError, Model, Profile, __version__

__all__ = [
    "compile",
    "convert",
    "inspect",
    "load",
    "Table",
    "Model",
    "Profile",
    "KilnError",
    "__version__",
]

EMIT_KINDS = ("so", "obj", "staticlib", "exe", "header", "ir", "pc")


def compile(
    model,
    emit: str = "so",
    output=None,
    *,
    input_shapes: dict | None = None,
    opt_level: int = 2,
    target: str | None = None,
    target_cpu: str | None = None,
    name: str | None = None,
    weights=None,
    kernels: str = "auto",
) -> str:
    """Compile a model file (.onnx, .mindir, .kir) into an artefact and return its path.

    emit: "so" (shared library), "obj", "staticlib", "exe" (standalone executable),
    "header" (C header), "ir" (kiln IR text). output: the file to write (default: the
    artefact's usual name for the model, e.g. libresnet18.so, in the current directory).
    input_shapes: {"input name": [dims]} for dynamic inputs. opt_level: 0, 1 or 2.
    target: a target triple (default the host), target_cpu: the CPU the vector kernels are
    built for ("native", "x86-64-v3", "generic" for aarch64, ...). weights: a MindSpore
    checkpoint to bind. kernels: "auto" (LLVM vector kernels where they apply) or "cranelift".
    The GIL is released while compiling.
    """
    return _native.compile(
        str(model),
        emit,
        None if output is None else str(output),
        input_shapes=_shapes(input_shapes),
        opt_level=opt_level,
        target=target,
        target_cpu=target_cpu,
        name=name,
        weights=None if weights is None else str(weights),
        kernels=kernels,
    )


def convert(model, output, *, opt_level: int = 0, input_shapes: dict | None = None, weights=None) -> str:
    """Convert a model (.onnx, .mindir, .air, .kir) to the format of `output`'s extension
    (.onnx, .air, .kir), as `kiln convert` does, and return the path written. opt_level 0
    writes the graph as read; 1 folds constants and cleans up; 2 also fuses. weights: a
    MindSpore checkpoint to bind first. The GIL is released while converting."""
    return _native.convert(
        str(model),
        str(output),
        opt_level=opt_level,
        input_shapes=_shapes(input_shapes),
        weights=None if weights is None else str(weights),
    )


def load(
    path,
    *,
    threads: int = 1,
    input_shapes: dict | None = None,
    opt_level: int = 2,
    weights=None,
    target_cpu: str | None = None,
    kernels: str = "auto",
) -> Model:
    """Load a compiled shared library (.so) or compile a model file (.onnx, .mindir, .kir) in
    memory. threads: convolutions and matrix products are split over this many threads.

    Model.run(inputs) takes a dict {name: ndarray} (or a list in model order, or one array
    for a one-input model) and returns {name: ndarray}. Inputs must have the model's dtype
    (no silent casts) and shape; C-contiguous aligned arrays are read in place, others are
    copied once. Outputs are fresh arrays the model writes directly. The GIL is released
    while the model runs.
    """
    return _native.load(
        str(path),
        threads=threads,
        input_shapes=_shapes(input_shapes),
        opt_level=opt_level,
        weights=None if weights is None else str(weights),
        target_cpu=target_cpu,
        kernels=kernels,
    )


def inspect(
    model, *, input_shapes: dict | None = None, opt_level: int = 2, weights=None
) -> "Table":
    """The per-op table of a model after optimization (what `kiln inspect` prints), as a
    Table: rows of (index, op, output, flops, fused, buffer, node) plus a summary dict
    (nodes, flops, workspace_bytes, naive_bytes, ...)."""
    columns, rows, summary, text = _native.inspect(
        str(model),
        input_shapes=_shapes(input_shapes),
        opt_level=opt_level,
        weights=None if weights is None else str(weights),
    )
    return Table(columns, rows, summary, text)


def _shapes(shapes):
    if shapes is None:
        return None
    return {str(k): [int(d) for d in v] for k, v in shapes.items()}


class Table:
    """Rows with named columns. `len(t)`, `t[i]` (a dict), iteration (dicts), `t.column(name)`,
    `t.to_dicts()`, `t.summary`; `str(t)` is the text table, and notebooks render it as HTML."""

    def __init__(self, columns, rows, summary, text):
        self.columns = list(columns)
        self.rows = [tuple(r) for r in rows]
        self.summary = dict(summary)
        self._text = text

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [dict(zip(self.columns, r)) for r in self.rows[i]]
        return dict(zip(self.columns, self.rows[i]))

    def __iter__(self):
        return (dict(zip(self.columns, r)) for r in self.rows)

    def column(self, name):
        k = self.columns.index(name)
        return [r[k] for r in self.rows]

    def to_dicts(self):
        return list(self)

    def __str__(self):
        return self._text

    def __repr__(self):
        return (
            f"<kiln.Table: {len(self.rows)} ops, {self.summary.get('flops', 0) / 1e9:.3f} GFLOP, "
            f"workspace {self.summary.get('workspace_bytes', 0)} bytes>"
        )

    def _repr_html_(self):
        import html

        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r) + "</tr>"
            for r in self.rows
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
