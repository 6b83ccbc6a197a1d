//! What a back end tells the `layout` pass: the channel block of its blocked kernels and what
//! running a layout-sensitive node (a convolution, a pool) costs in each pair of input/output
//! layouts. The pass (compiler) chooses layouts from these estimates; the back end (a target
//! crate) implements the trait; neither knows the other.

use crate::{Graph, Layout, Node};

/// A back end's layout preferences.
pub trait LayoutTarget: std::fmt::Debug + Send + Sync {
    /// The `c` of the `Nchwc(c)` layout its blocked kernels use, or `None` (plain only).
    fn block(&self) -> Option<u32>;
    /// Estimated time (any unit, the same for every call: nanoseconds here) of `node` — a
    /// `conv`, `max_pool` or `average_pool` — reading input 0 in `input` and writing its output
    /// in `output`; `None` when no kernel runs it so.
    fn cost(&self, g: &Graph, node: &Node, input: Layout, output: Layout) -> Option<f64>;
    /// Estimated time of a `relayout` of a tensor of `bytes` bytes (same unit).
    fn relayout_cost(&self, bytes: usize) -> f64;
}
