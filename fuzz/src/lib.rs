//! What the fuzz targets share: after a front end accepts an input, the graph is verified (as
//! `pipeline::load` does) and, when the verifier accepts it, compiled (Cranelift kernels, no
//! optimization) — all without a panic — for graphs up to [`MAX_NODES`] nodes (bigger ones
//! only cost time per execution).

use kiln_ir::Graph;

/// Graphs with more nodes are verified but not compiled.
pub const MAX_NODES: usize = 64;

/// Verify `g` and, when it is small, generate its code (an object file in memory).
pub fn compile_small(g: &Graph) {
    // the pipeline verifies what a front end returns (a constant index out of range, say, is
    // found there): a rejected graph is a clean error
    if kiln_ir::verify::verify(g).is_err() {
        return;
    }
    if g.iter_nodes().count() > MAX_NODES {
        return;
    }
    let opts = kiln_target_cpu::CpuOptions {
        wide: false,
        ..kiln_target_cpu::CpuOptions::host("fuzz")
    };
    // unsupported ops and dtypes are errors, never panics
    let _ = kiln_target_cpu::compile_object(g, &opts);
}
