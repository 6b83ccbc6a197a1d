//! Physical layouts: what a back end tells the `layout` pass, and the one definition of each
//! layout's byte order ([`physical_shape`], [`pack`], [`unpack`]).
//!
//! A back end's [`LayoutTarget`] gives the activation layout its kernels prefer (a
//! channel-blocked `Nchwc(c)` for the CPU, `Nc1hwc0(16)` for Ascend), what running a
//! layout-sensitive node (a convolution, a pool) costs in each pair of input/output layouts,
//! and the layout in which a node reads a constant operand (weights packed at compile time:
//! FRACTAL_Z filters and FRACTAL_NZ matrices for Ascend). The pass (compiler) chooses layouts
//! from these; the back end (a target crate) implements the trait; neither knows the other.

use crate::{Graph, Layout, Node, TensorType};

/// A back end's layout preferences.
pub trait LayoutTarget: std::fmt::Debug + Send + Sync {
    /// The `c` of the `Nchwc(c)` layout its blocked kernels use, or `None` (plain only).
    fn block(&self) -> Option<u32>;
    /// The blocked activation layout the pass may choose (default: `Nchwc(block)`).
    fn blocked(&self) -> Option<Layout> {
        self.block().map(Layout::Nchwc)
    }
    /// Estimated time (any unit, the same for every call: nanoseconds here) of `node` — a
    /// `conv`, `max_pool` or `average_pool` — reading input 0 in `input` and writing its output
    /// in `output`; `None` when no kernel runs it so.
    fn cost(&self, g: &Graph, node: &Node, input: Layout, output: Layout) -> Option<f64>;
    /// Estimated time of a `relayout` of a tensor of `bytes` bytes (same unit).
    fn relayout_cost(&self, bytes: usize) -> f64;
    /// The layout in which `node` reads its constant input `input` (packed at compile time by
    /// a `relayout` of the constant), or `None` for plain (the default).
    fn weight_layout(&self, _g: &Graph, _node: &Node, _input: usize) -> Option<Layout> {
        None
    }
}

fn ceil_div(a: usize, b: usize) -> usize {
    a.div_ceil(b)
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn lcm(a: usize, b: usize) -> usize {
    a / gcd(a, b) * b
}

/// GraphEngine's grouped FRACTAL_Z geometry of a filter `[cout, cin, kh, kw]` (`cin` per
/// group): `groups` are packed `e` at a time along the diagonal of one cube, `e` the smallest
/// factor making `e*cin` fill `c0` and `e*cout/groups` fill 16, at most `groups`.
#[derive(Debug, Clone, Copy)]
struct FzGeom {
    cout_g: usize,
    cin: usize,
    hw: usize,
    e: usize,
    c1: usize,
    cout_opt: usize,
    g1: usize,
}

fn fz_geom(shape: &[usize], c0: usize, groups: usize) -> FzGeom {
    let (cout, cin, hw) = (shape[0], shape[1], shape[2] * shape[3]);
    let cout_g = cout / groups;
    let e = if cin == 0 || cout_g == 0 {
        1
    } else {
        (lcm(lcm(cin, c0) / cin, lcm(cout_g, 16) / cout_g)).min(groups)
    };
    FzGeom {
        cout_g,
        cin,
        hw,
        e,
        c1: ceil_div(e * cin, c0),
        cout_opt: ceil_div(e * cout_g, 16) * 16,
        g1: ceil_div(groups, e),
    }
}

/// The physical (stored) shape of a tensor of logical shape `shape` in `layout`, or `None`
/// when the layout does not fit the shape ([`Layout::fits`]).
pub fn physical_shape(layout: Layout, shape: &[usize]) -> Option<Vec<usize>> {
    let t = TensorType::new(crate::DType::U8, shape.to_vec());
    if !layout.fits(&t) {
        return None;
    }
    Some(match layout {
        Layout::Plain => shape.to_vec(),
        Layout::Nhwc => vec![shape[0], shape[2], shape[3], shape[1]],
        Layout::Nchwc(c) | Layout::Nc1hwc0(c) => {
            let c = c as usize;
            vec![shape[0], ceil_div(shape[1], c), shape[2], shape[3], c]
        }
        Layout::FractalZ { c0, groups } => {
            let c0 = c0 as usize;
            let f = fz_geom(shape, c0, groups as usize);
            vec![f.g1 * f.c1 * f.hw, f.cout_opt / 16, 16, c0]
        }
        Layout::FractalNz(n0) => {
            let n0 = n0 as usize;
            let r = shape.len();
            let mut s = shape[..r - 2].to_vec();
            s.extend([
                ceil_div(shape[r - 1], n0),
                ceil_div(shape[r - 2], 16),
                16,
                n0,
            ]);
            s
        }
    })
}

/// Number of elements stored for a tensor of logical shape `shape` in `layout` (padding
/// included), or `None` when the layout does not fit or the count overflows.
pub fn physical_elems(layout: Layout, shape: &[usize]) -> Option<usize> {
    physical_shape(layout, shape)?
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
}

/// Calls `f(logical, physical)` for every element of a tensor of logical shape `shape`
/// stored in `layout` (flat element indices; padding elements are never visited).
fn for_each(layout: Layout, shape: &[usize], mut f: impl FnMut(usize, usize)) {
    let n: usize = shape.iter().product();
    match layout {
        Layout::Plain => (0..n).for_each(|i| f(i, i)),
        Layout::Nhwc => {
            let (c, h, w) = (shape[1], shape[2], shape[3]);
            for i in 0..n {
                let (x, ww) = (i / w, i % w);
                let (x, hh) = (x / h, x % h);
                let (nn, cc) = (x / c, x % c);
                f(i, ((nn * h + hh) * w + ww) * c + cc);
            }
        }
        Layout::Nchwc(b) | Layout::Nc1hwc0(b) => {
            let b = b as usize;
            let (c, hw) = (shape[1], shape[2] * shape[3]);
            let c1 = ceil_div(c, b);
            for i in 0..n {
                let (x, p) = (i / hw, i % hw);
                let (nn, cc) = (x / c, x % c);
                f(i, ((nn * c1 + cc / b) * hw + p) * b + cc % b);
            }
        }
        Layout::FractalZ { c0, groups } => {
            let c0 = c0 as usize;
            let g = fz_geom(shape, c0, groups as usize);
            let per_c1 = g.hw * g.cout_opt * c0;
            for i in 0..n {
                let (x, p) = (i / g.hw, i % g.hw);
                let (co, c) = (x / g.cin, x % g.cin);
                let (grp, k) = (co / g.cout_g, co % g.cout_g);
                let ev = grp % g.e;
                let dci = ev * g.cin + c;
                let dco = ev * g.cout_g + k;
                let o = (grp / g.e) * g.c1 * per_c1
                    + (dci / c0) * per_c1
                    + p * g.cout_opt * c0
                    + dco * c0
                    + dci % c0;
                f(i, o);
            }
        }
        Layout::FractalNz(n0) => {
            let n0 = n0 as usize;
            let r = shape.len();
            let (m, k) = (shape[r - 2], shape[r - 1]);
            let (m1, k1) = (ceil_div(m, 16), ceil_div(k, n0));
            let mat = k1 * m1 * 16 * n0;
            for i in 0..n {
                let (x, col) = (i / k, i % k);
                let (b, row) = (x / m, x % m);
                f(
                    i,
                    b * mat
                        + (col / n0) * (m1 * 16 * n0)
                        + (row / 16) * (16 * n0)
                        + (row % 16) * n0
                        + col % n0,
                );
            }
        }
    }
}

/// The bytes of a tensor (logical row-major `data`, elements of `elem` bytes, logical shape
/// `shape`) stored in `layout`; padding is zero. `None` when the layout does not fit the shape
/// or `data` has the wrong length.
pub fn pack(layout: Layout, shape: &[usize], elem: usize, data: &[u8]) -> Option<Vec<u8>> {
    let total = physical_elems(layout, shape)?.checked_mul(elem)?;
    let n = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
    if n.checked_mul(elem)? != data.len() {
        return None;
    }
    let mut out = vec![0u8; total];
    for_each(layout, shape, |l, p| {
        out[p * elem..(p + 1) * elem].copy_from_slice(&data[l * elem..(l + 1) * elem]);
    });
    Some(out)
}

/// The logical row-major bytes of a tensor of logical shape `shape` stored in `layout`
/// (`data` holds the physical elements, padding ignored). `None` when the layout does not fit
/// the shape or `data` has the wrong length.
pub fn unpack(layout: Layout, shape: &[usize], elem: usize, data: &[u8]) -> Option<Vec<u8>> {
    let total = physical_elems(layout, shape)?.checked_mul(elem)?;
    if total != data.len() {
        return None;
    }
    let n = shape.iter().product::<usize>();
    let mut out = vec![0u8; n * elem];
    for_each(layout, shape, |l, p| {
        out[l * elem..(l + 1) * elem].copy_from_slice(&data[p * elem..(p + 1) * elem]);
    });
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(l: Layout, shape: &[usize]) -> Vec<usize> {
        let n: usize = shape.iter().product();
        let data: Vec<u8> = (0..n).flat_map(|i| (i as u32 + 1).to_le_bytes()).collect();
        let p = pack(l, shape, 4, &data).unwrap();
        assert_eq!(unpack(l, shape, 4, &p).unwrap(), data, "{l} {shape:?}");
        // every logical element lands in its own physical slot; the rest is zero padding
        let nonzero = p.chunks(4).filter(|c| c != &[0, 0, 0, 0]).count();
        assert_eq!(nonzero, n, "{l} {shape:?}");
        physical_shape(l, shape).unwrap()
    }

    #[test]
    fn shapes_and_roundtrips() {
        assert_eq!(
            roundtrip(Layout::Nc1hwc0(16), &[2, 20, 3, 5]),
            [2, 2, 3, 5, 16]
        );
        assert_eq!(roundtrip(Layout::Nchwc(8), &[1, 16, 2, 2]), [1, 2, 2, 2, 8]);
        assert_eq!(roundtrip(Layout::Nhwc, &[1, 3, 2, 4]), [1, 2, 4, 3]);
        // a3c_pong_atc.om: conv1 filter [32, 1, 3, 3] -> [9, 2, 16, 16], conv2 [32, 32, 3, 3]
        // -> [18, 2, 16, 16]
        let fz = Layout::FractalZ { c0: 16, groups: 1 };
        assert_eq!(roundtrip(fz, &[32, 1, 3, 3]), [9, 2, 16, 16]);
        assert_eq!(roundtrip(fz, &[32, 32, 3, 3]), [18, 2, 16, 16]);
        assert_eq!(roundtrip(fz, &[20, 5, 1, 1]), [1, 2, 16, 16]);
        // depthwise 32 channels: 16 groups share one cube diagonally
        let dw = Layout::FractalZ { c0: 16, groups: 32 };
        assert_eq!(roundtrip(dw, &[32, 1, 3, 3]), [18, 1, 16, 16]);
        let g2 = Layout::FractalZ { c0: 16, groups: 2 };
        assert_eq!(roundtrip(g2, &[8, 3, 2, 2]), [4, 1, 16, 16]);
        // a3c_pong_atc.om: MatMul weights [512, 256] -> [16, 32, 16, 16], [256, 6] -> [1, 16, 16, 16]
        let nz = Layout::FractalNz(16);
        assert_eq!(roundtrip(nz, &[512, 256]), [16, 32, 16, 16]);
        assert_eq!(roundtrip(nz, &[256, 6]), [1, 16, 16, 16]);
        assert_eq!(roundtrip(nz, &[2, 17, 33]), [2, 3, 2, 16, 16]);
        assert!(physical_shape(Layout::FractalNz(16), &[5]).is_none());
        assert!(physical_shape(Layout::FractalZ { c0: 16, groups: 3 }, &[4, 1, 1, 1]).is_none());
    }

    #[test]
    fn fractal_z_positions() {
        // element (co, c, h, w) of a [32, 32, 3, 3] filter sits at
        // [(c/16)*9 + h*3 + w, co/16, co%16, c%16]
        let shape = [32, 32, 3, 3];
        let fz = Layout::FractalZ { c0: 16, groups: 1 };
        let mut seen = 0;
        for_each(fz, &shape, |l, p| {
            let (co, c, h, w) = (l / 288, l / 9 % 32, l / 3 % 3, l % 3);
            let want = (((c / 16) * 9 + h * 3 + w) * 2 + co / 16) * 256 + (co % 16) * 16 + c % 16;
            assert_eq!(p, want);
            seen += 1;
        });
        assert_eq!(seen, 32 * 32 * 9);
    }
}
