//! A model compiled into this program by `kiln-build` (see build.rs): classify the example
//! image, print the class probabilities and the per-node profile, and check the result against
//! ONNX Runtime's output.
//!
//!     cargo run -p kiln-example-rust

include!(concat!(env!("OUT_DIR"), "/tiny_cnn.rs"));

use std::path::Path;

/// The example input and ONNX Runtime's output for it (examples/models/make_models.py).
fn reference() -> (Box<[f32; tiny_cnn::IMAGE_LEN]>, Vec<f32>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models");
    let read = |f: &str| {
        let a = kiln_runtime::npy::read(&dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        a.to_f32().unwrap_or_else(|e| panic!("{f}: {e}"))
    };
    let image: Box<[f32; tiny_cnn::IMAGE_LEN]> = read("tiny_cnn_input.npy")
        .into_boxed_slice()
        .try_into()
        .expect("the input has the model's size");
    (image, read("tiny_cnn_expected.npy"))
}

/// The largest difference beyond rtol 1e-4 / atol 1e-5, if any.
fn mismatch(got: &[f32], want: &[f32]) -> Option<(usize, f32, f32)> {
    got.iter()
        .zip(want)
        .enumerate()
        .find(|(_, (g, w))| (*g - *w).abs() > 1e-5 + 1e-4 * w.abs())
        .map(|(i, (g, w))| (i, *g, *w))
}

fn main() -> Result<(), kiln_runtime::Error> {
    let (image, expected) = reference();
    let mut model = tiny_cnn::Model::new()?;
    let out = model.infer(&tiny_cnn::Inputs { image: &image })?;
    let best = (0..tiny_cnn::PROBS_LEN)
        .max_by(|&a, &b| out.probs[a].total_cmp(&out.probs[b]))
        .unwrap();
    println!("class {best} (p = {:.4})", out.probs[best]);
    println!("probabilities {:?}", out.probs);
    print!(
        "{}",
        model
            .profile(&tiny_cnn::Inputs { image: &image }, 100)?
            .table()
    );
    match mismatch(&out.probs[..], &expected) {
        None => println!("matches ONNX Runtime"),
        Some((i, g, w)) => {
            eprintln!("probs[{i}]: kiln {g}, ONNX Runtime {w}");
            std::process::exit(1);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_onnxruntime() {
        let (image, expected) = reference();
        let mut model = tiny_cnn::Model::new().unwrap();
        let out = model.infer(&tiny_cnn::Inputs { image: &image }).unwrap();
        assert_eq!(mismatch(&out.probs[..], &expected), None);
        // caller-owned outputs, two threads: the same values
        let mut probs = [0f32; tiny_cnn::PROBS_LEN];
        let mut m2 = tiny_cnn::Model::with_threads(2).unwrap();
        m2.run(
            &tiny_cnn::Inputs { image: &image },
            &mut tiny_cnn::Outputs { probs: &mut probs },
        )
        .unwrap();
        assert_eq!(&probs, &*out.probs);
    }

    #[test]
    fn bindings_carry_the_model_interface() {
        assert_eq!(tiny_cnn::IMAGE_SHAPE, [1, 1, 8, 8]);
        assert_eq!(tiny_cnn::PROBS_SHAPE, [1, 10]);
        assert_eq!(tiny_cnn::IMAGE_NAME, "image");
        assert_eq!(
            tiny_cnn::descriptor().workspace_size as usize,
            tiny_cnn::WORKSPACE_SIZE
        );
        let m = tiny_cnn::Model::new().unwrap();
        assert!(m.runtime().nodes().iter().any(|n| n.op == "conv+relu"));
    }

    #[test]
    fn profile_lists_every_step() {
        let (image, _) = reference();
        let mut m = tiny_cnn::Model::new().unwrap();
        let p = m.profile(&tiny_cnn::Inputs { image: &image }, 3).unwrap();
        assert_eq!(p.runs.len(), 3);
        assert_eq!(p.stats().len(), m.runtime().nodes().len());
    }
}
