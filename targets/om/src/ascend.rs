//! The AI Core's layouts for the `layout` pass: cube and vector units compute on NC1HWC0
//! activations (C0 = 16 for fp16/fp32), convolution filters are FRACTAL_Z and matrix-product
//! right operands FRACTAL_NZ, packed at compile time as ATC does. Anything else (reshapes,
//! softmax, matrix products' left operands) reads ND/NCHW, so a `relayout` — written as
//! `TransData` — sits where the two meet, as in ATC's graphs.
//!
//! Costs are relative: a convolution or pool costs its output size, plus a relayout for each
//! side not in NC1HWC0 (the device would convert there anyway); a relayout costs a fixed launch
//! plus its bytes.

use kiln_ir::layout::LayoutTarget;
use kiln_ir::{Graph, Layout, Node, Op};

/// C0 of 16/32-bit elements (GE's cube size; 32 for 8-bit).
pub const C0: u32 = 16;

/// The Ascend layout model.
#[derive(Debug, Clone, Copy, Default)]
pub struct AscendLayouts;

impl LayoutTarget for AscendLayouts {
    fn block(&self) -> Option<u32> {
        None
    }
    fn blocked(&self) -> Option<Layout> {
        Some(Layout::Nc1hwc0(C0))
    }
    fn cost(&self, g: &Graph, node: &Node, input: Layout, output: Layout) -> Option<f64> {
        if !matches!(node.op, Op::Conv(_) | Op::MaxPool(_) | Op::AveragePool(_)) {
            return None;
        }
        let x = g.ty(node.inputs[0]);
        let y = g.ty(node.outputs[0]);
        let mut c = y.size_bytes() as f64;
        if input.is_plain() {
            c += self.relayout_cost(x.size_bytes());
        }
        if output.is_plain() {
            c += self.relayout_cost(y.size_bytes());
        }
        Some(c)
    }
    fn relayout_cost(&self, bytes: usize) -> f64 {
        4096.0 + bytes as f64
    }
    fn weight_layout(&self, g: &Graph, node: &Node, input: usize) -> Option<Layout> {
        match &node.op {
            Op::Conv(a) if input == 1 && a.kernel.len() == 2 => Some(Layout::FractalZ {
                c0: C0,
                groups: a.groups as u32,
            }),
            Op::Gemm(_) | Op::MatMul(_) if input == 1 && g.ty(node.inputs[0]).rank() >= 2 => {
                Some(Layout::FractalNz(C0))
            }
            _ => None,
        }
    }
}
