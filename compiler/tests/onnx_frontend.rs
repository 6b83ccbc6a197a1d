//! ONNX front end tests: models are built from the prost structs and encoded in memory.

use std::path::Path;

use kiln_compiler::onnx::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
    tensor_shape_proto::{Dimension, dimension},
    type_proto,
};
use kiln_compiler::onnx::{OnnxError, OnnxOptions, load, load_bytes};
use kiln_ir::ops::{ConvAttrs, Op};
use kiln_ir::{DType, Graph, ValueDef};
use prost::Message;

const F32: i32 = 1;
const I64: i32 = 7;

fn vi(name: &str, elem: i32, dims: &[Dimension]) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem),
                shape: Some(TensorShapeProto { dim: dims.to_vec() }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn d(v: i64) -> Dimension {
    Dimension {
        value: Some(dimension::Value::DimValue(v)),
        ..Default::default()
    }
}

fn dp(p: &str) -> Dimension {
    Dimension {
        value: Some(dimension::Value::DimParam(p.into())),
        ..Default::default()
    }
}

fn fixed(name: &str, dims: &[i64]) -> ValueInfoProto {
    vi(name, F32, &dims.iter().map(|&x| d(x)).collect::<Vec<_>>())
}

fn fixed_i64(name: &str, dims: &[i64]) -> ValueInfoProto {
    vi(name, I64, &dims.iter().map(|&x| d(x)).collect::<Vec<_>>())
}

fn out(name: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        ..Default::default()
    }
}

fn tensor_f32(name: &str, dims: &[i64], vals: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(F32),
        raw_data: Some(vals.iter().flat_map(|x| x.to_le_bytes()).collect()),
        ..Default::default()
    }
}

fn tensor_i64(name: &str, dims: &[i64], vals: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(I64),
        int64_data: vals.to_vec(),
        ..Default::default()
    }
}

fn ramp(n: usize) -> Vec<f32> {
    (0..n).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect()
}

fn ai(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        i: Some(v),
        r#type: Some(2),
        ..Default::default()
    }
}

fn ais(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        ints: v.to_vec(),
        r#type: Some(7),
        ..Default::default()
    }
}

fn astr(name: &str, v: &str) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        s: Some(v.as_bytes().to_vec()),
        r#type: Some(3),
        ..Default::default()
    }
}

fn node(
    op: &str,
    name: &str,
    ins: &[&str],
    outs: &[&str],
    attrs: Vec<AttributeProto>,
) -> NodeProto {
    NodeProto {
        op_type: Some(op.into()),
        name: Some(name.into()),
        input: ins.iter().map(|s| s.to_string()).collect(),
        output: outs.iter().map(|s| s.to_string()).collect(),
        attribute: attrs,
        ..Default::default()
    }
}

fn model(g: GraphProto, opset: i64) -> ModelProto {
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        producer_name: Some("kiln-test".into()),
        graph: Some(g),
        ..Default::default()
    }
}

fn load_model(m: &ModelProto, opts: &OnnxOptions) -> Result<Graph, OnnxError> {
    let g = load_bytes(&m.encode_to_vec(), None, "test.onnx", opts)?;
    kiln_ir::verify::verify(&g).expect("loaded graph verifies");
    Ok(g)
}

fn ops(g: &Graph) -> Vec<&'static str> {
    g.iter_nodes().map(|(_, n)| n.op.name()).collect()
}

fn out_shape(g: &Graph, i: usize) -> Vec<usize> {
    g.ty(g.outputs[i]).shape.clone()
}

/// x[1,3,8,8] -> Conv(4,3,3x3,SAME_UPPER,stride 2) -> Relu -> Flatten -> Gemm(10)
fn conv_net() -> ModelProto {
    let g = GraphProto {
        name: Some("convnet".into()),
        node: vec![
            node(
                "Conv",
                "conv1",
                &["x", "w", "b"],
                &["c1"],
                vec![astr("auto_pad", "SAME_UPPER"), ais("strides", &[2, 2])],
            ),
            node("Relu", "relu1", &["c1"], &["r1"], vec![]),
            node("Flatten", "flat", &["r1"], &["f"], vec![ai("axis", 1)]),
            node(
                "Gemm",
                "fc",
                &["f", "fw", "fb"],
                &["y"],
                vec![ai("transB", 1)],
            ),
        ],
        initializer: vec![
            tensor_f32("w", &[4, 3, 3, 3], &ramp(108)),
            tensor_f32("b", &[4], &[0.1, 0.2, 0.3, 0.4]),
            tensor_f32("fw", &[10, 64], &ramp(640)),
            tensor_f32("fb", &[10], &ramp(10)),
        ],
        input: vec![fixed("x", &[1, 3, 8, 8]), fixed("w", &[4, 3, 3, 3])],
        output: vec![out("y")],
        ..Default::default()
    };
    model(g, 13)
}

#[test]
fn conv_relu_gemm() {
    let g = load_model(&conv_net(), &OnnxOptions::default()).unwrap();
    assert_eq!(g.name, "convnet");
    assert_eq!(ops(&g), ["conv", "relu", "reshape", "gemm"]);
    // `w` is listed as an input but has an initializer: it is a constant.
    assert_eq!(g.inputs.len(), 1);
    assert_eq!(g.value(g.inputs[0]).name, "x");
    let (_, conv) = g.iter_nodes().next().unwrap();
    assert_eq!(conv.name, "conv1");
    assert_eq!(
        conv.op,
        Op::Conv(ConvAttrs {
            kernel: vec![3, 3],
            strides: vec![2, 2],
            pads: vec![0, 0, 1, 1],
            dilations: vec![1, 1],
            groups: 1,
            epilogue: Vec::new(),
            layout: kiln_ir::Layout::Plain,
        })
    );
    assert_eq!(out_shape(&g, 0), [1, 10]);
    let w = g.find_value("w").unwrap();
    assert!(matches!(g.value(w).def, ValueDef::Const(_)));
    assert_eq!(g.const_data(w).unwrap().to_f32(), ramp(108));
}

#[test]
fn shape_arithmetic_folds() {
    // y = Reshape(x, Concat(Unsqueeze(Gather(Shape(x), 0)), [-1]))  -> [2, 48]
    let g = GraphProto {
        node: vec![
            node("Shape", "shape", &["x"], &["s"], vec![]),
            node("Constant", "c0", &[], &["zero"], vec![ai("value_int", 0)]),
            node(
                "Gather",
                "gather",
                &["s", "zero"],
                &["n"],
                vec![ai("axis", 0)],
            ),
            node("Unsqueeze", "unsq", &["n", "ax0"], &["n1"], vec![]),
            node(
                "Constant",
                "cm1",
                &[],
                &["minus1"],
                vec![AttributeProto {
                    name: Some("value".into()),
                    t: Some(tensor_i64("", &[1], &[-1])),
                    ..Default::default()
                }],
            ),
            node(
                "Concat",
                "cat",
                &["n1", "minus1"],
                &["shape2"],
                vec![ai("axis", 0)],
            ),
            node("Reshape", "reshape", &["x", "shape2"], &["r"], vec![]),
            node("Relu", "relu", &["r"], &["y"], vec![]),
            // Also exercise Slice + Mul + Cast folding on shapes.
            node("Slice", "sl", &["s", "st", "en"], &["hw"], vec![]),
            node("Cast", "castf", &["hw"], &["hwf"], vec![ai("to", 1)]),
            node("Mul", "mul", &["hwf", "two"], &["hw2"], vec![]),
            node("Identity", "id", &["hw2"], &["z"], vec![]),
        ],
        initializer: vec![
            tensor_i64("ax0", &[1], &[0]),
            tensor_i64("st", &[1], &[-2]),
            tensor_i64("en", &[1], &[i64::MAX]),
            tensor_f32("two", &[], &[2.0]),
        ],
        input: vec![fixed("x", &[2, 3, 4, 4])],
        output: vec![out("y"), out("z")],
        ..Default::default()
    };
    let g = load_model(&model(g, 13), &OnnxOptions::default()).unwrap();
    // the folded constant output `z` keeps its name through a (free) view
    assert_eq!(ops(&g), ["reshape", "relu", "reshape"]);
    assert_eq!(g.value(g.outputs[1]).name, "z");
    assert_eq!(out_shape(&g, 0), [2, 48]);
    let z = g.node(g.producer(g.outputs[1]).unwrap()).inputs[0];
    assert_eq!(g.const_data(z).unwrap().to_f32(), vec![8.0, 8.0]);
}

#[test]
fn softmax_opset11_coerces_to_2d() {
    let g = GraphProto {
        node: vec![node("Softmax", "sm", &["x"], &["y"], vec![ai("axis", 1)])],
        input: vec![fixed("x", &[2, 3, 4])],
        output: vec![out("y")],
        ..Default::default()
    };
    let g = load_model(&model(g, 11), &OnnxOptions::default()).unwrap();
    assert_eq!(ops(&g), ["reshape", "softmax", "reshape"]);
    assert_eq!(out_shape(&g, 0), [2, 3, 4]);
}

#[test]
fn misc_ops() {
    let g = GraphProto {
        node: vec![
            node(
                "Slice",
                "sl",
                &["x", "st", "en", "ax", "stp"],
                &["s"],
                vec![],
            ),
            node("Split", "sp", &["s"], &["a", "b"], vec![ai("axis", 1)]),
            node("Max", "mx", &["a", "b", "a"], &["m"], vec![]),
            node("Clip", "clip", &["m", "", "six"], &["c"], vec![]),
            node(
                "MaxPool",
                "mp",
                &["c"],
                &["p"],
                vec![ais("kernel_shape", &[2, 2]), ais("strides", &[2, 2])],
            ),
            node(
                "Resize",
                "rs",
                &["p", "", "scales"],
                &["u"],
                vec![astr("mode", "nearest")],
            ),
            node(
                "ReduceMean",
                "rm",
                &["u"],
                &["y"],
                vec![ais("axes", &[-1, -2]), ai("keepdims", 0)],
            ),
            node("Transpose", "tr", &["y"], &["t"], vec![]),
            node("Dropout", "do", &["t"], &["o"], vec![]),
        ],
        initializer: vec![
            tensor_i64("st", &[2], &[-1, 0]),
            tensor_i64("en", &[2], &[i64::MIN, 4]),
            tensor_i64("ax", &[2], &[3, 1]),
            tensor_i64("stp", &[2], &[-1, 1]),
            tensor_f32("six", &[], &[6.0]),
            tensor_f32("scales", &[4], &[1.0, 1.0, 2.0, 2.0]),
        ],
        input: vec![fixed("x", &[1, 6, 8, 8])],
        output: vec![out("o")],
        ..Default::default()
    };
    let g = load_model(&model(g, 13), &OnnxOptions::default()).unwrap();
    assert_eq!(
        ops(&g),
        [
            "slice",
            "split",
            "max",
            "max",
            "clip",
            "max_pool",
            "resize",
            "reduce_mean",
            "transpose",
            "reshape"
        ]
    );
    let (_, sl) = g.iter_nodes().next().unwrap();
    match &sl.op {
        Op::Slice(a) => {
            assert_eq!(a.starts, [0, 0, 0, 7]);
            assert_eq!(a.steps, [1, 1, 1, -1]);
            assert_eq!(a.sizes, [1, 4, 8, 8]);
        }
        o => panic!("{o:?}"),
    }
    assert_eq!(out_shape(&g, 0), [2, 1]);
}

#[test]
fn dynamic_input_needs_override() {
    let g = GraphProto {
        node: vec![node("Relu", "r", &["x"], &["y"], vec![])],
        input: vec![vi("x", F32, &[dp("batch"), d(3), d(4)])],
        output: vec![out("y")],
        ..Default::default()
    };
    let m = model(g, 17);
    let e = load_model(&m, &OnnxOptions::default()).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, OnnxError::DynamicInput { .. }), "{msg}");
    assert!(msg.contains("'x'") && msg.contains("batch"), "{msg}");
    let opts = OnnxOptions {
        input_shapes: vec![("x".into(), vec![5, 3, 4])],
        ..Default::default()
    };
    let g = load_model(&m, &opts).unwrap();
    assert_eq!(out_shape(&g, 0), [5, 3, 4]);
    // An override that contradicts a fixed dim, or names no input, is an error.
    let bad = OnnxOptions {
        input_shapes: vec![("x".into(), vec![5, 2, 4])],
        ..Default::default()
    };
    assert!(load_model(&m, &bad).is_err());
    let bad = OnnxOptions {
        input_shapes: vec![("nope".into(), vec![1])],
        ..Default::default()
    };
    assert!(
        load_model(&m, &bad)
            .unwrap_err()
            .to_string()
            .contains("nope")
    );
}

#[test]
fn unsupported_ops_listed_together() {
    let g = GraphProto {
        node: vec![
            node("Foo", "a", &["x"], &["t1"], vec![]),
            node("Relu", "r", &["t1"], &["t2"], vec![]),
            node("Foo", "b", &["t2"], &["t3"], vec![]),
            node("Bar", "c", &["t3"], &["t4"], vec![]),
            node(
                "Resize",
                "rs",
                &["t4", "", "s"],
                &["y"],
                vec![astr("mode", "quintic")],
            ),
        ],
        input: vec![fixed("x", &[1, 2])],
        output: vec![out("y")],
        ..Default::default()
    };
    let e = load_model(&model(g, 13), &OnnxOptions::default()).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, OnnxError::Unsupported { .. }));
    assert!(msg.contains("test.onnx"), "{msg}");
    assert!(msg.contains("Foo (nodes: a, b)"), "{msg}");
    assert!(msg.contains("Bar (nodes: c)"), "{msg}");
    assert!(msg.contains("Resize (mode=quintic) (nodes: rs)"), "{msg}");
}

#[test]
fn node_errors_name_node_and_op() {
    let g = GraphProto {
        // float indices: the node is supported, its inputs are not
        node: vec![node("Gather", "g1", &["x", "i"], &["y"], vec![])],
        initializer: vec![tensor_f32("i", &[], &[0.0])],
        input: vec![fixed("x", &[3, 2])],
        output: vec![out("y")],
        ..Default::default()
    };
    let msg = load_model(&model(g, 13), &OnnxOptions::default())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("node 'g1' (Gather)"), "{msg}");
    assert!(msg.contains("indices must be i32 or i64"), "{msg}");
}

#[test]
fn corrupt_and_truncated_bytes_are_errors() {
    let bytes = conv_net().encode_to_vec();
    let opts = OnnxOptions::default();
    for cut in [1, 7, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1] {
        let r = load_bytes(&bytes[..cut], None, "cut.onnx", &opts);
        assert!(r.is_err(), "truncated at {cut} loaded");
    }
    // Flip bytes all over the file: every outcome must be Ok (verified) or Err, never a panic.
    for i in (0..bytes.len()).step_by(3) {
        let mut b = bytes.clone();
        b[i] ^= 0xa5;
        if let Ok(g) = load_bytes(&b, None, "flip.onnx", &opts) {
            kiln_ir::verify::verify(&g).unwrap();
        }
    }
    assert!(load_bytes(b"\xff\xff\xff\xff", None, "junk.onnx", &opts).is_err());
    // Absurd dims must be rejected before anything is allocated.
    let mut m = conv_net();
    for dims in [vec![i64::MAX, i64::MAX], vec![1 << 40], vec![-4]] {
        m.graph.as_mut().unwrap().initializer[1].dims = dims;
        assert!(load_model(&m, &opts).is_err());
    }
}

fn external(name: &str, dims: &[i64], loc: &str, off: usize, len: usize) -> TensorProto {
    let kv = |k: &str, v: String| StringStringEntryProto {
        key: Some(k.into()),
        value: Some(v),
    };
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(F32),
        data_location: Some(1),
        external_data: vec![
            kv("location", loc.into()),
            kv("offset", off.to_string()),
            kv("length", len.to_string()),
        ],
        ..Default::default()
    }
}

#[test]
fn external_data() {
    let dir = tempfile::tempdir().unwrap();
    let w: Vec<f32> = (0..24).map(|i| i as f32).collect();
    let mut data = vec![0u8; 16]; // leading padding: the tensor lives at offset 16
    data.extend(w.iter().flat_map(|x| x.to_le_bytes()));
    std::fs::write(dir.path().join("weights.data"), &data).unwrap();
    let build = |t: TensorProto| {
        let g = GraphProto {
            node: vec![node("MatMul", "mm", &["x", "w"], &["y"], vec![])],
            initializer: vec![t],
            input: vec![fixed("x", &[2, 4])],
            output: vec![out("y")],
            ..Default::default()
        };
        model(g, 13).encode_to_vec()
    };
    let path = dir.path().join("model.onnx");
    std::fs::write(&path, build(external("w", &[4, 6], "weights.data", 16, 96))).unwrap();
    let g = load(&path, &OnnxOptions::default()).unwrap();
    kiln_ir::verify::verify(&g).unwrap();
    assert_eq!(out_shape(&g, 0), [2, 6]);
    let wv = g.find_value("w").unwrap();
    assert_eq!(g.const_data(wv).unwrap().to_f32(), w);

    let try_load = |t: TensorProto| {
        std::fs::write(&path, build(t)).unwrap();
        load(&path, &OnnxOptions::default())
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    // Out of range, wrong length, escaping paths, missing file.
    let e = try_load(external("w", &[4, 6], "weights.data", 32, 96));
    assert!(e.contains("outside"), "{e}");
    let e = try_load(external("w", &[4, 6], "weights.data", 0, 64));
    assert!(e.contains("length"), "{e}");
    let e = try_load(external("w", &[4, 6], "../weights.data", 16, 96));
    assert!(e.contains("relative path"), "{e}");
    let e = try_load(external("w", &[4, 6], "/etc/passwd", 0, 96));
    assert!(e.contains("relative path"), "{e}");
    let e = try_load(external("w", &[4, 6], "missing.data", 0, 96));
    assert!(e.contains("missing.data"), "{e}");
    // Loading from bytes without a directory cannot resolve external data.
    let e = load_bytes(
        &build(external("w", &[4, 6], "weights.data", 16, 96)),
        None,
        "m.onnx",
        &OnnxOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("directory"), "{e}");
    let _ = Path::new("");
}

#[test]
fn upsample_and_conv_transpose_opset9() {
    let g = GraphProto {
        node: vec![
            node("Upsample", "up", &["x", "sc"], &["u"], vec![]),
            node(
                "ConvTranspose",
                "ct",
                &["u", "w"],
                &["y"],
                vec![ais("strides", &[2, 2]), ais("output_shape", &[16, 16])],
            ),
            node(
                "BatchNormalization",
                "bn",
                &["y", "g", "bb", "mu", "var"],
                &["z"],
                vec![],
            ),
            node("Cast", "cast", &["z"], &["zz"], vec![ai("to", 10)]),
        ],
        initializer: vec![
            tensor_f32("sc", &[4], &[1.0, 1.0, 2.0, 2.0]),
            tensor_f32("w", &[2, 3, 3, 3], &ramp(54)),
            tensor_f32("g", &[3], &[1.0; 3]),
            tensor_f32("bb", &[3], &[0.0; 3]),
            tensor_f32("mu", &[3], &[0.0; 3]),
            tensor_f32("var", &[3], &[1.0; 3]),
        ],
        input: vec![fixed("x", &[1, 2, 4, 4])],
        output: vec![out("zz")],
        ..Default::default()
    };
    let g = load_model(&model(g, 9), &OnnxOptions::default()).unwrap();
    assert_eq!(ops(&g), ["resize", "conv_transpose", "batch_norm", "cast"]);
    assert_eq!(out_shape(&g, 0), [1, 3, 16, 16]);
    assert_eq!(g.ty(g.outputs[0]).dtype, DType::F16);
}

#[test]
fn bad_opset_and_missing_output() {
    let g = GraphProto {
        node: vec![node("Relu", "r", &["x"], &["y"], vec![])],
        input: vec![fixed("x", &[2])],
        output: vec![out("nope")],
        ..Default::default()
    };
    let e = load_model(&model(g.clone(), 13), &OnnxOptions::default()).unwrap_err();
    assert!(e.to_string().contains("nope"));
    let e = load_model(&model(g, 5), &OnnxOptions::default()).unwrap_err();
    assert!(e.to_string().contains("opset 5"));
}

/// Sizes a lowering would materialize at compile time come from the file: absurd ones are a
/// clear error naming the node, never a giant allocation or a hang.
#[test]
fn absurd_lowering_sizes_are_errors() {
    let check = |g: GraphProto, opset: i64, needle: &str| {
        let t = std::time::Instant::now();
        let msg = load_model(&model(g, opset), &OnnxOptions::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains(needle), "{msg}");
        assert!(t.elapsed().as_secs() < 5, "took {:?}", t.elapsed());
    };
    // OneHot with a depth of 2^40
    check(
        GraphProto {
            node: vec![node(
                "OneHot",
                "oh",
                &["i", "depth", "vals"],
                &["y"],
                vec![],
            )],
            initializer: vec![
                tensor_i64("depth", &[], &[1 << 40]),
                tensor_f32("vals", &[2], &[0.0, 1.0]),
            ],
            input: vec![fixed_i64("i", &[3])],
            output: vec![out("y")],
            ..Default::default()
        },
        13,
        "node 'oh' (OneHot): OneHot depth",
    );
    // a window of 2^40 samples
    check(
        GraphProto {
            node: vec![node("HannWindow", "hw", &["n"], &["y"], vec![])],
            initializer: vec![tensor_i64("n", &[], &[1 << 40])],
            output: vec![out("y")],
            ..Default::default()
        },
        17,
        "window size",
    );
    // antialiased downsampling of 2^34 columns to 1: ~2^35 taps for that output
    check(
        GraphProto {
            node: vec![node(
                "Resize",
                "rs",
                &["x", "", "", "sizes"],
                &["y"],
                vec![astr("mode", "linear"), ai("antialias", 1)],
            )],
            initializer: vec![tensor_i64("sizes", &[4], &[1, 1, 1, 1])],
            input: vec![fixed("x", &[1, 1, 1, 1 << 34])],
            output: vec![out("y")],
            ..Default::default()
        },
        18,
        "Resize",
    );
    // a ConstantOfShape splat of 2^40 floats
    check(
        GraphProto {
            node: vec![node("ConstantOfShape", "cs", &["shape"], &["y"], vec![])],
            initializer: vec![tensor_i64("shape", &[2], &[1 << 20, 1 << 20])],
            output: vec![out("y")],
            ..Default::default()
        },
        13,
        "too large",
    );
    // an LSTM with hidden_size 2^31
    check(
        GraphProto {
            node: vec![node(
                "LSTM",
                "lstm",
                &["x", "w", "r"],
                &["", "h"],
                vec![ai("hidden_size", 1 << 31)],
            )],
            input: vec![
                fixed("x", &[1, 1, 2]),
                fixed("w", &[1, 8, 2]),
                fixed("r", &[1, 8, 2]),
            ],
            output: vec![out("h")],
            ..Default::default()
        },
        14,
        "hidden_size",
    );
}

/// Graph structure errors the front-end layer catches, each naming the file and the node or
/// value: two nodes writing one value, a graph input listed twice, an initializer listed
/// twice, and ops with more or fewer inputs/outputs than their schema allows.
#[test]
fn malformed_structure_is_rejected() {
    let err = |g: GraphProto| {
        load_model(&model(g, 13), &OnnxOptions::default())
            .unwrap_err()
            .to_string()
    };
    // two nodes write `t`
    let e = err(GraphProto {
        node: vec![
            node("Relu", "a", &["x"], &["t"], vec![]),
            node("Sigmoid", "b", &["x"], &["t"], vec![]),
            node("Neg", "c", &["t"], &["y"], vec![]),
        ],
        input: vec![fixed("x", &[2])],
        output: vec![out("y")],
        ..Default::default()
    });
    assert!(
        e.contains("test.onnx")
            && e.contains("node 'b' (Sigmoid)")
            && e.contains("'t' is defined twice"),
        "{e}"
    );
    // a node writes a graph input
    let e = err(GraphProto {
        node: vec![node("Relu", "a", &["x"], &["x"], vec![])],
        input: vec![fixed("x", &[2])],
        output: vec![out("x")],
        ..Default::default()
    });
    assert!(
        e.contains("node 'a' (Relu)") && e.contains("'x' is defined twice"),
        "{e}"
    );
    // a graph input listed twice
    let e = err(GraphProto {
        node: vec![node("Relu", "a", &["x"], &["y"], vec![])],
        input: vec![fixed("x", &[2]), fixed("x", &[2])],
        output: vec![out("y")],
        ..Default::default()
    });
    assert!(e.contains("graph input 'x' is listed twice"), "{e}");
    // an initializer listed twice
    let e = err(GraphProto {
        node: vec![node("Add", "a", &["x", "w"], &["y"], vec![])],
        input: vec![fixed("x", &[2])],
        initializer: vec![
            tensor_f32("w", &[2], &[1.0, 2.0]),
            tensor_f32("w", &[2], &[3.0, 4.0]),
        ],
        output: vec![out("y")],
        ..Default::default()
    });
    assert!(
        e.contains("initializer 'w'") && e.contains("defined twice"),
        "{e}"
    );
    // wrong arity: too many inputs, too few, too many outputs
    for (n, want) in [
        (
            node("Relu", "r", &["x", "x"], &["y"], vec![]),
            "has 2 inputs, the op takes 1",
        ),
        (
            node("Add", "r", &["x"], &["y"], vec![]),
            "has 1 inputs, the op takes 2",
        ),
        (
            node("Relu", "r", &["x"], &["y", "z"], vec![]),
            "has 2 outputs, the op has 1",
        ),
        (
            node("Conv", "r", &["x", "x", "x", "x"], &["y"], vec![]),
            "has 4 inputs, the op takes 2 to 3",
        ),
    ] {
        let e = err(GraphProto {
            node: vec![n],
            input: vec![fixed("x", &[1, 1, 2, 2])],
            output: vec![out("y")],
            ..Default::default()
        });
        assert!(e.contains("node 'r'") && e.contains(want), "{e}");
    }
}

/// Work on constant weights never reaches run time, whatever their size: a large weight's
/// transpose, slice, cast and concatenation fold at import (a 400x300 weight, far above the
/// 2^16-element limit for arithmetic), and so do the same ops when passes create them.
#[test]
fn large_weight_transforms_fold() {
    let w: Vec<f32> = (0..400 * 300).map(|i| (i % 97) as f32 * 0.01).collect();
    let g = GraphProto {
        node: vec![
            node(
                "Transpose",
                "t",
                &["w"],
                &["wt"],
                vec![ais("perm", &[1, 0])],
            ),
            node("Slice", "s", &["wt", "st", "en", "ax"], &["ws"], vec![]),
            node("Concat", "c", &["ws", "ws"], &["wc"], vec![ai("axis", 1)]),
            node("MatMul", "m", &["x", "wc"], &["y"], vec![]),
        ],
        input: vec![fixed("x", &[2, 300])],
        initializer: vec![
            tensor_f32("w", &[400, 300], &w),
            tensor_i64("st", &[1], &[0]),
            tensor_i64("en", &[1], &[300]),
            tensor_i64("ax", &[1], &[1]),
        ],
        output: vec![out("y")],
        ..Default::default()
    };
    let g = load_model(&model(g, 13), &OnnxOptions::default()).unwrap();
    assert_eq!(ops(&g), ["matmul"]);
    let wc = g.iter_nodes().next().unwrap().1.inputs[1];
    assert_eq!(g.ty(wc).shape, [300, 600]);
    let d = g.const_data(wc).unwrap().to_f32();
    // wc[r][c] = w[c % 300][r]
    assert_eq!(d[5 * 600 + 301], w[300 + 5]);
    assert_eq!(d[7 * 600 + 2], w[2 * 300 + 7]);

    // built by hand: a cast and a transpose of a large constant fold in the const_fold pass
    let text = format!(
        "graph g {{\n  input %x: f32[2,300]\n  const %w: f64[400,300] = hex\"{}\"\n  %c = cast(%w) {{to=\"f32\"}} : f32[400,300]\n  %t = transpose(%c) {{perm=[1, 0]}} : f32[300,400]\n  %y = matmul(%x, %t) : f32[2,400]\n  output %y\n}}\n",
        w.iter()
            .flat_map(|v| (*v as f64).to_le_bytes())
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let mut g = kiln_ir::text::parse(&text).unwrap();
    kiln_compiler::pipeline::optimize(
        &mut g,
        &kiln_compiler::passes::OptOptions {
            level: kiln_compiler::passes::OptLevel::O1,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(ops(&g), ["matmul"]);
}

/// `If` on a condition known at compile time (here after `--freeze sr=...`, as a voice-activity
/// detector's `Equal(sample_rate, 16000)`): the taken branch is inlined, the other dropped;
/// without `--freeze` the condition is known at run time and both branches are compiled into a
/// run-time `if` (each branch reads the outer `x` as a captured value), one taken per run.
#[test]
fn if_with_a_constant_condition_is_inlined_else_compiled() {
    let branch = |op: &str, out_name: &str| GraphProto {
        name: Some(format!("{op}_branch")),
        node: vec![
            node(op, &format!("{op}_node"), &["x"], &["t"], vec![]),
            node(
                "Mul",
                &format!("{op}_scale"),
                &["t", "k"],
                &[out_name],
                vec![],
            ),
        ],
        initializer: vec![tensor_f32("k", &[1], &[2.0])],
        output: vec![out(out_name)],
        ..Default::default()
    };
    let attr_g = |name: &str, g: GraphProto| AttributeProto {
        name: Some(name.into()),
        r#type: Some(5),
        g: Some(g),
        ..Default::default()
    };
    let g = GraphProto {
        node: vec![
            node("Equal", "is16k", &["sr", "c16k"], &["cond"], vec![]),
            node(
                "If",
                "by_rate",
                &["cond"],
                &["y"],
                vec![
                    attr_g("then_branch", branch("Relu", "a")),
                    attr_g("else_branch", branch("Neg", "b")),
                ],
            ),
        ],
        input: vec![fixed("x", &[3]), fixed_i64("sr", &[1])],
        initializer: vec![tensor_i64("c16k", &[1], &[16000])],
        output: vec![out("y")],
        ..Default::default()
    };
    let m = model(g, 13);
    let g = load_model(&m, &OnnxOptions::default()).unwrap();
    assert_eq!(ops(&g), ["equal", "if"]);
    let x = kiln_ir::interp::Tensor::f32(vec![3], vec![1.5f32, -2.0, 0.0]);
    for (rate, want) in [(16000, [3.0f32, 0.0, 0.0]), (8000, [-3.0, 4.0, 0.0])] {
        let sr = kiln_ir::interp::Tensor::i64(vec![1], vec![rate]);
        let out = compiled_matches_interp(&g, &[x.clone(), sr]);
        assert_eq!(out[0].as_f32().unwrap(), want, "rate {rate}");
    }
    let freeze = |rate: i64| OnnxOptions {
        frozen_inputs: vec![(
            "sr".into(),
            kiln_ir::TensorType::new(DType::I64, vec![1]),
            kiln_ir::ConstData::from_i64(&[rate]),
        )],
        ..Default::default()
    };
    // (the output keeps the If's name through a free view)
    let g = load_model(&m, &freeze(16000)).unwrap();
    assert_eq!(ops(&g), ["relu", "mul", "reshape"]);
    assert_eq!(g.value(g.outputs[0]).name, "y");
    let g = load_model(&m, &freeze(8000)).unwrap();
    assert_eq!(ops(&g), ["neg", "mul", "reshape"]);
    let x = [1.5f32, -2.0, 0.0];
    let ins = kiln_ir::interp::Tensor::f32(vec![3], x.to_vec());
    let out = kiln_ir::interp::run(&g, &[ins]).unwrap();
    assert_eq!(out[0].as_f32().unwrap(), [-3.0, 4.0, 0.0]);
}

/// Run `g` compiled for the host on `ins` (f32/i64 tensors) and check every output against
/// the interpreter's; returns the interpreter's outputs.
fn compiled_matches_interp(
    g: &Graph,
    ins: &[kiln_ir::interp::Tensor],
) -> Vec<kiln_ir::interp::Tensor> {
    let want = kiln_ir::interp::run(g, ins).unwrap();
    let jit = kiln_target_cpu::compile_jit(g, "t").expect("compile");
    let m = unsafe {
        kiln_runtime::Model::from_raw(jit.descriptor() as *const kiln_runtime::KilnModel)
    }
    .unwrap();
    let mut ws = m.workspace().unwrap();
    let bufs: Vec<Vec<u8>> = ins.iter().map(|t| t.to_bytes()).collect();
    let ins_p: Vec<&[u8]> = bufs.iter().map(|b| b.as_slice()).collect();
    let mut outs: Vec<Vec<u8>> = m.outputs().iter().map(|o| vec![0xAA; o.nbytes]).collect();
    let mut outs_p: Vec<&mut [u8]> = outs.iter_mut().map(|b| b.as_mut_slice()).collect();
    m.run(&ins_p, &mut outs_p, &mut ws).expect("run");
    for (w, got) in want.iter().zip(&outs) {
        assert_eq!(&w.to_bytes(), got, "compiled vs interpreter");
    }
    want
}

fn attr_graph(name: &str, g: GraphProto) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        r#type: Some(5),
        g: Some(g),
        ..Default::default()
    }
}

/// ONNX `Loop` and `Scan` become run-time loops: a Loop whose body reads an outer input
/// (captured) and an outer initializer (copied in) and stops on its own condition before its
/// trip count (the scan rows after the last iteration are zero), and a Scan running in reverse
/// over axis 1 with its scan output stacked along axis 1. Compiled and interpreted outputs are
/// identical and equal to the values computed by hand.
#[test]
fn loop_and_scan_run_as_loops() {
    let body = GraphProto {
        name: Some("body".into()),
        node: vec![
            node("Add", "acc", &["acc_in", "x"], &["acc_out"], vec![]),
            node("Mul", "scale", &["acc_out", "k"], &["row"], vec![]),
            node("Less", "more", &["i", "two"], &["c_out"], vec![]),
        ],
        initializer: vec![tensor_i64("two", &[], &[2])],
        input: vec![out("i"), out("c_in"), out("acc_in")],
        output: vec![out("c_out"), out("acc_out"), out("row")],
        ..Default::default()
    };
    let g = GraphProto {
        node: vec![node(
            "Loop",
            "lp",
            &["M", "", "a0"],
            &["acc", "rows"],
            vec![attr_graph("body", body)],
        )],
        input: vec![fixed("x", &[2]), fixed("a0", &[2])],
        initializer: vec![tensor_i64("M", &[], &[4]), tensor_f32("k", &[1], &[0.5])],
        output: vec![out("acc"), out("rows")],
        ..Default::default()
    };
    let g = load_model(&model(g, 13), &OnnxOptions::default()).unwrap();
    assert!(ops(&g).contains(&"loop"), "{:?}", ops(&g));
    let t = |v: Vec<f32>| kiln_ir::interp::Tensor::f32(vec![v.len()], v);
    let res = compiled_matches_interp(&g, &[t(vec![1.0, -2.0]), t(vec![0.5, 4.0])]);
    // three iterations (i = 0, 1, 2; the condition fails after i = 2)
    assert_eq!(res[0].as_f32().unwrap(), [3.5, -2.0]);
    assert_eq!(
        res[1].as_f32().unwrap(),
        [0.75, 1.0, 1.25, 0.0, 1.75, -1.0, 0.0, 0.0]
    );

    // the trip count an input: the scan rows need a bound (an error naming M without one)
    let body = GraphProto {
        name: Some("body".into()),
        node: vec![node("Add", "acc", &["acc_in", "x"], &["acc_out"], vec![])],
        input: vec![out("i"), out("c_in"), out("acc_in")],
        output: vec![out("c_in"), out("acc_out"), out("acc_out")],
        ..Default::default()
    };
    let g = GraphProto {
        node: vec![node(
            "Loop",
            "lp",
            &["M", "c", "a0"],
            &["acc", "rows"],
            vec![attr_graph("body", body)],
        )],
        input: vec![
            fixed_i64("M", &[]),
            vi("c", 9, &[]),
            fixed("x", &[2]),
            fixed("a0", &[2]),
        ],
        output: vec![out("acc"), out("rows")],
        ..Default::default()
    };
    let m = model(g, 13);
    let e = load_model(&m, &OnnxOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("input 0 ('M')") && e.contains("--max-trip"),
        "{e}"
    );
    let bounded = OnnxOptions {
        max_trip: Some(4),
        ..Default::default()
    };
    let g = load_model(&m, &bounded).unwrap();
    let i64s = |v: i64| kiln_ir::interp::Tensor::i64(vec![], vec![v]);
    let yes = kiln_ir::interp::Tensor::bool(vec![], vec![true]);
    let res = compiled_matches_interp(&g, &[i64s(3), yes, t(vec![1.0, 2.0]), t(vec![0.0, 0.0])]);
    assert_eq!(res[0].as_f32().unwrap(), [3.0, 6.0]);
    assert_eq!(
        res[1].as_f32().unwrap(),
        [1.0, 2.0, 2.0, 4.0, 3.0, 6.0, 0.0, 0.0]
    );

    let body = GraphProto {
        name: Some("scan_body".into()),
        node: vec![node("Add", "acc", &["s_in", "col"], &["s_out"], vec![])],
        input: vec![out("s_in"), out("col")],
        output: vec![out("s_out"), out("s_out")],
        ..Default::default()
    };
    let g = GraphProto {
        node: vec![node(
            "Scan",
            "sc",
            &["s0", "xs"],
            &["s", "ys"],
            vec![
                attr_graph("body", body),
                ai("num_scan_inputs", 1),
                ais("scan_input_axes", &[1]),
                ais("scan_input_directions", &[1]),
                ais("scan_output_axes", &[1]),
            ],
        )],
        input: vec![fixed("s0", &[2]), fixed("xs", &[2, 3])],
        output: vec![out("s"), out("ys")],
        ..Default::default()
    };
    let g = load_model(&model(g, 11), &OnnxOptions::default()).unwrap();
    let xs = kiln_ir::interp::Tensor::f32(vec![2, 3], vec![1.0, 2.0, 3.0, 10.0, 20.0, 30.0]);
    let res = compiled_matches_interp(&g, &[t(vec![0.0, 100.0]), xs]);
    assert_eq!(res[0].as_f32().unwrap(), [6.0, 160.0]);
    // column t: the state after iteration t, which added column 2 - t
    assert_eq!(
        res[1].as_f32().unwrap(),
        [3.0, 5.0, 6.0, 130.0, 150.0, 160.0]
    );
}
