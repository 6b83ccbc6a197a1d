#!/usr/bin/env python3
"""An independent numpy implementation of the Ascend weight and activation layouts, to check
the bytes kiln writes into an OM's WEIGHTS_DATA (compiler/tests/om.rs).

Usage: ascend_pack.py MANIFEST.json

MANIFEST: {"cases": [{"name", "layout": "FRACTAL_Z" | "FRACTAL_NZ" | "NC1HWC0", "groups": g,
"dtype": "float16" | "float32", "source": "logical.npy" (float32, the source model's tensor in
logical order: NCHW filters [Cout, Cin/g, kh, kw], matrices [.., M, N]), "packed": "bytes.bin"
(what kiln wrote)}]}. Each case: convert the source to `dtype` (numpy's round-to-nearest-even
float16), pack it, and compare bytes exactly. Prints one line per case and exits 1 on any
mismatch.

Layouts (GraphEngine's definitions, C0 = 16 for 16/32-bit elements, 32 for 8-bit):
- NC1HWC0: [N, C, H, W] -> [N, ceil(C/C0), H, W, C0], channels zero-padded;
- FRACTAL_NZ: [.., M, N] -> [.., ceil(N/16), ceil(M/16), 16, 16];
- FRACTAL_Z with groups: filter [Cout, cin, kh, kw] -> [G*C1*kh*kw, cout_opt/16, 16, C0] where
  e = min(lcm(lcm(cin, C0)/cin, lcm(cout_g, 16)/cout_g), groups) groups share one cube
  diagonally, cin_opt = ceil(e*cin/C0)*C0, C1 = cin_opt/C0, cout_opt = ceil(e*cout_g/16)*16,
  G = ceil(groups/e) (groups = 1 is the plain [C1*kh*kw, ceil(Cout/16), 16, C0]).
"""

import json
import math
import sys

import numpy as np


def ceil_div(a, b):
    return -(-a // b)


def nc1hwc0(x, c0=16):
    n, c, h, w = x.shape
    c1 = ceil_div(c, c0)
    p = np.zeros((n, c1 * c0, h, w), x.dtype)
    p[:, :c] = x
    return p.reshape(n, c1, c0, h, w).transpose(0, 1, 3, 4, 2).copy()


def fractal_nz(x, n0=16):
    *b, m, k = x.shape
    m1, k1 = ceil_div(m, 16), ceil_div(k, n0)
    p = np.zeros((*b, m1 * 16, k1 * n0), x.dtype)
    p[..., :m, :k] = x
    p = p.reshape(*b, m1, 16, k1, n0)
    nb = len(b)
    axes = list(range(nb)) + [nb + 2, nb, nb + 1, nb + 3]
    return p.transpose(axes).copy()


def fractal_z(x, groups=1, c0=16):
    cout, cin, kh, kw = x.shape
    cout_g = cout // groups
    e = min(
        math.lcm(math.lcm(cin, c0) // cin, math.lcm(cout_g, 16) // cout_g), groups
    )
    cin_opt = ceil_div(e * cin, c0) * c0
    c1 = cin_opt // c0
    cout_opt = ceil_div(e * cout_g, 16) * 16
    g1 = ceil_div(groups, e)
    out = np.zeros((g1, c1, kh, kw, cout_opt, c0), x.dtype)
    for g in range(groups):
        ev = g % e
        w = x[g * cout_g:(g + 1) * cout_g]  # [cout_g, cin, kh, kw]
        for c in range(cin):
            dci = ev * cin + c
            out[g // e, dci // c0, :, :, ev * cout_g:(ev + 1) * cout_g, dci % c0] = (
                w[:, c].transpose(1, 2, 0)
            )
    return out.reshape(g1 * c1 * kh * kw, cout_opt // 16, 16, c0)


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(sys.argv[1]) as f:
        cases = json.load(f)["cases"]
    bad = 0
    for c in cases:
        x = np.load(c["source"]).astype(np.float32).astype(c["dtype"])
        layout = c["layout"]
        if layout == "FRACTAL_Z":
            p = fractal_z(x, c.get("groups", 1))
        elif layout == "FRACTAL_NZ":
            p = fractal_nz(x)
        elif layout == "NC1HWC0":
            p = nc1hwc0(x)
        else:
            raise ValueError(f"unknown layout {layout}")
        want = p.astype(c["dtype"]).tobytes()
        with open(c["packed"], "rb") as f:
            got = f.read()
        same = want == got
        bad += not same
        diff = ""
        if not same and len(want) == len(got):
            a = np.frombuffer(want, np.uint8)
            b = np.frombuffer(got, np.uint8)
            diff = f", first differing byte {int(np.argmax(a != b))}"
        print(
            f"{c['name']}: {layout} {c['dtype']} {list(x.shape)} -> {list(p.shape)}: "
            f"{'identical' if same else 'DIFFERENT'} ({len(got)} bytes written, {len(want)} expected{diff})"
        )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
