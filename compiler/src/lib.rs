//! kiln's compiler: front ends (ONNX, MindSpore, AIR / OM) on one front-end layer
//! ([`frontend`]), writers (AIR, ONNX), the pipeline that verifies and lowers the IR, and the
//! code behind the `kiln` CLI.
//!
//! Front ends return structured errors naming the file, node and op; everything below them works
//! on verified IR.

pub mod air;
pub mod conformance;
pub mod frontend;
pub mod gpu;
pub mod inspect;
pub mod mindspore;
pub mod om;
pub mod onnx;
pub mod passes;
pub mod pipeline;
pub mod progress;
pub mod report;
