// Compile the model at `cargo build` time: links libtiny_cnn.a and writes
// $OUT_DIR/tiny_cnn.rs (typed bindings), rebuilt when the model changes.
fn main() {
    kiln_build::Model::new("../models/tiny_cnn.onnx")
        .input_shape("image", &[1, 1, 8, 8])
        .compile()
        .unwrap_or_else(|e| panic!("{e}"));
}
