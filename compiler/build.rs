fn main() {
    println!("cargo:rerun-if-changed=proto/onnx.proto");
    println!("cargo:rerun-if-changed=build.rs");
    let fds = protox::compile(["onnx.proto"], ["proto"]).expect("compile proto/onnx.proto");
    prost_build::Config::new()
        .compile_fds(fds)
        .expect("generate onnx.rs from proto/onnx.proto");
}
