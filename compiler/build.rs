fn main() {
    for p in [
        "proto/onnx.proto",
        "proto/ms_checkpoint.proto",
        "proto/mind_ir.proto",
        "build.rs",
    ] {
        println!("cargo:rerun-if-changed={p}");
    }
    // ONNX: tensor bytes are `bytes::Bytes`, windows into the memory-mapped model file.
    let fds = protox::compile(["onnx.proto"], ["proto"]).expect("compile proto/onnx.proto");
    prost_build::Config::new()
        .bytes([".onnx.TensorProto.raw_data"])
        .compile_fds(fds)
        .expect("generate onnx.rs from proto/onnx.proto");
    // MindSpore messages: `bytes` fields become `bytes::Bytes`, so decoding from a memory map
    // hands out windows into the map instead of copies.
    let fds = protox::compile(["ms_checkpoint.proto", "mind_ir.proto"], ["proto"])
        .expect("compile proto/ms_checkpoint.proto and proto/mind_ir.proto");
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(fds)
        .expect("generate MindSpore types from proto/*.proto");
}
