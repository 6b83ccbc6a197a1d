//! kiln's compiler: front ends (ONNX today; MindSpore and AIR next), the pipeline that verifies
//! and lowers the IR, and the code behind the `kiln` CLI.
//!
//! Front ends return structured errors naming the file, node and op; everything below them works
//! on verified IR.

pub mod conformance;
pub mod inspect;
pub mod mindspore;
pub mod onnx;
pub mod passes;
pub mod pipeline;
pub mod progress;
pub mod report;
