fn main() {
    for p in ["proto/ge_ir.proto", "proto/task.proto", "build.rs"] {
        println!("cargo:rerun-if-changed={p}");
    }
    // GraphEngine (AIR / OM model definitions): `bytes` fields are `bytes::Bytes` (weights stay
    // windows into a memory-mapped file), and attribute maps are ordered so that written files
    // are deterministic.
    let fds = protox::compile(["ge_ir.proto", "task.proto"], ["proto"])
        .expect("compile proto/ge_ir.proto and proto/task.proto");
    prost_build::Config::new()
        .bytes(["."])
        .btree_map(["."])
        .compile_fds(fds)
        .expect("generate GraphEngine types from proto/*.proto");
}
