//! The hostile-input corpus: malformed, truncated, overflowing, escaping and misused inputs
//! for every format kiln reads (ONNX, MindSpore ckpt and safetensors, MindIR, Ascend AIR and
//! OM, `.npy`, the `.kir` text IR, the fusion-switch JSON) and for its output paths. Every case is generated
//! here from a few valid models (no binary blobs are committed); `compiler/tests/hostile.rs`
//! runs each with the `kiln` binary and asserts a clean failure (see README.md).

#![allow(dead_code)]

use bytes::Bytes;
use kiln_compiler::mindspore::proto::ckpt as ck;
use kiln_compiler::mindspore::proto::mind_ir as mi;
use kiln_compiler::mindspore::{DecryptKey, crypto};
use kiln_compiler::onnx::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto, tensor_proto, tensor_shape_proto,
    type_proto,
};
use prost::Message;

/// One hostile input: the files of a directory, the `kiln` arguments run in it, and what
/// the error message must contain (the file, and the node where there is one).
#[derive(Debug, Clone)]
pub struct Case {
    pub name: String,
    /// Relative path -> contents.
    pub files: Vec<(String, Vec<u8>)>,
    /// Symbolic links to create: relative path -> target.
    pub links: Vec<(String, String)>,
    pub args: Vec<String>,
    /// Environment variables for the run.
    pub env: Vec<(String, String)>,
    pub needles: Vec<String>,
}

impl Case {
    fn new(name: &str, args: &[&str], needles: &[&str]) -> Case {
        Case {
            name: name.into(),
            files: vec![],
            links: vec![],
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            needles: needles.iter().map(|s| s.to_string()).collect(),
        }
    }
    fn file(mut self, path: &str, bytes: impl Into<Vec<u8>>) -> Case {
        self.files.push((path.into(), bytes.into()));
        self
    }
    fn link(mut self, path: &str, target: &str) -> Case {
        self.links.push((path.into(), target.into()));
        self
    }
    fn env(mut self, k: &str, v: &str) -> Case {
        self.env.push((k.into(), v.into()));
        self
    }
}

/// A `kiln build MODEL -o out.so` case that must name `needles` (the model file is always
/// one of them).
fn build(name: &str, model: &str, bytes: Vec<u8>, needles: &[&str]) -> Case {
    let mut n = vec![model];
    n.extend_from_slice(needles);
    Case::new(name, &["build", model, "-o", "out.so"], &n).file(model, bytes)
}

/// Deterministic bytes (xorshift).
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 32) as u8
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// ONNX

const F32: i32 = 1;
const I32: i32 = 6;
const I64: i32 = 7;
const BOOL: i32 = 9;

fn vi(name: &str, elem: i32, dims: &[i64]) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem),
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|&d| tensor_shape_proto::Dimension {
                            value: Some(tensor_shape_proto::dimension::Value::DimValue(d)),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn out(name: &str) -> ValueInfoProto {
    ValueInfoProto {
        name: Some(name.into()),
        ..Default::default()
    }
}

fn tf32(name: &str, dims: &[i64], vals: &[f32]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(F32),
        raw_data: Some(vals.iter().flat_map(|x| x.to_le_bytes()).collect()),
        ..Default::default()
    }
}

fn ti64(name: &str, dims: &[i64], vals: &[i64]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(I64),
        int64_data: vals.to_vec(),
        ..Default::default()
    }
}

fn ti32(name: &str, dims: &[i64], vals: &[i32]) -> TensorProto {
    TensorProto {
        name: Some(name.into()),
        dims: dims.to_vec(),
        data_type: Some(I32),
        int32_data: vals.to_vec(),
        ..Default::default()
    }
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

fn af(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        f: Some(v),
        r#type: Some(1),
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

fn graph(
    nodes: Vec<NodeProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    inits: Vec<TensorProto>,
) -> GraphProto {
    GraphProto {
        name: Some("hostile".into()),
        node: nodes,
        input: inputs,
        output: outputs,
        initializer: inits,
        ..Default::default()
    }
}

fn model_opset(g: GraphProto, opset: i64) -> ModelProto {
    ModelProto {
        ir_version: Some(8),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(opset),
        }],
        producer_name: Some("kiln-hostile".into()),
        graph: Some(g),
        ..Default::default()
    }
}

fn enc(g: GraphProto) -> Vec<u8> {
    model_opset(g, 17).encode_to_vec()
}

/// x[1,2,4,4] -> Conv(w[3,2,3,3], b, pad 1) -> Relu -> y: the valid model variations start
/// from.
fn conv_graph() -> GraphProto {
    let w: Vec<f32> = (0..54).map(|i| (i % 7) as f32 * 0.1 - 0.3).collect();
    graph(
        vec![
            node(
                "Conv",
                "conv",
                &["x", "w", "b"],
                &["c"],
                vec![ais("pads", &[1, 1, 1, 1])],
            ),
            node("Relu", "relu", &["c"], &["y"], vec![]),
        ],
        vec![vi("x", F32, &[1, 2, 4, 4])],
        vec![out("y")],
        vec![
            tf32("w", &[3, 2, 3, 3], &w),
            tf32("b", &[3], &[0.1, 0.2, 0.3]),
        ],
    )
}

/// One node `op` on x[1,2,4,4] (with extra constant inputs) named `name`.
fn one_node(
    op: &str,
    name: &str,
    x: ValueInfoProto,
    extra: Vec<TensorProto>,
    attrs: Vec<AttributeProto>,
) -> Vec<u8> {
    let mut ins = vec![x.name.clone().unwrap()];
    ins.extend(extra.iter().map(|t| t.name.clone().unwrap()));
    let ins: Vec<&str> = ins.iter().map(|s| s.as_str()).collect();
    enc(graph(
        vec![node(op, name, &ins, &["y"], attrs)],
        vec![x],
        vec![out("y")],
        extra,
    ))
}

fn conv_with(name: &str, attrs: Vec<AttributeProto>) -> Vec<u8> {
    one_node(
        "Conv",
        name,
        vi("x", F32, &[1, 1, 4, 4]),
        vec![tf32("w", &[1, 1, 1, 1], &[1.0])],
        attrs,
    )
}

fn onnx_cases() -> Vec<Case> {
    let mut v = Vec::new();
    let ok = enc(conv_graph());
    let m = "model.onnx";
    v.push(build("onnx_empty", m, vec![], &[]));
    v.push(build("onnx_noise", m, noise(1, 4096), &[]));
    v.push(build(
        "onnx_text",
        m,
        b"this is not a protobuf\n".to_vec(),
        &[],
    ));
    // truncated inside the weights, the graph and the last field
    for (k, cut) in [ok.len() / 3, ok.len() / 2, ok.len() - 1, 7]
        .into_iter()
        .enumerate()
    {
        v.push(build(
            &format!("onnx_truncated_{k}"),
            m,
            ok[..cut].to_vec(),
            &[],
        ));
    }
    // an invalid wire type in the first tag, a length running past the end
    let mut flip = ok.clone();
    flip[0] = 0x0f;
    v.push(build("onnx_bad_wire_type", m, flip, &[]));
    let mut long = ok.clone();
    let gi = long.iter().position(|&b| b == 0x3a).unwrap(); // graph (field 7)
    long[gi + 1] = 0xff;
    long[gi + 2] = 0xff;
    v.push(build("onnx_length_past_end", m, long, &[]));
    // model-level problems
    v.push(build(
        "onnx_opset_999",
        m,
        model_opset(conv_graph(), 999).encode_to_vec(),
        &["999"],
    ));
    let mut nog = model_opset(conv_graph(), 17);
    nog.graph = None;
    v.push(build("onnx_no_graph", m, nog.encode_to_vec(), &[]));
    let mut dom = model_opset(conv_graph(), 17);
    dom.graph.as_mut().unwrap().node[1].domain = Some("com.evil".into());
    v.push(build(
        "onnx_unknown_domain",
        m,
        dom.encode_to_vec(),
        &["relu"],
    ));
    // graph structure
    let mut g = conv_graph();
    g.node[1].op_type = Some("Frobnicate".into());
    v.push(build("onnx_unknown_op", m, enc(g), &["relu", "Frobnicate"]));
    let mut g = conv_graph();
    g.node[1].input = vec!["nowhere".into()];
    v.push(build("onnx_dangling_input", m, enc(g), &["nowhere"]));
    let mut g = conv_graph();
    g.node[0].input[0] = "y".into(); // conv reads relu's output: a cycle
    v.push(build("onnx_cycle", m, enc(g), &[]));
    let mut g = conv_graph();
    g.output = vec![out("undefined_output")];
    v.push(build(
        "onnx_undefined_output",
        m,
        enc(g),
        &["undefined_output"],
    ));
    // initializers
    let mut g = conv_graph();
    g.initializer[1].dims = vec![-3];
    v.push(build("onnx_init_negative_dim", m, enc(g), &["'b'"]));
    let mut g = conv_graph();
    g.initializer[1].dims = vec![1 << 40, 1 << 40];
    v.push(build("onnx_init_dims_overflow", m, enc(g), &["'b'"]));
    let mut g = conv_graph();
    g.initializer[0].raw_data = Some(vec![0u8; 10].into());
    v.push(build("onnx_init_short_raw", m, enc(g), &["'w'"]));
    let mut g = conv_graph();
    g.initializer[1].data_type = Some(99);
    v.push(build("onnx_init_unknown_dtype", m, enc(g), &["'b'"]));
    let mut g = conv_graph();
    g.initializer[1].raw_data = None;
    g.initializer[1].float_data = vec![1.0; 5];
    v.push(build("onnx_init_float_data_count", m, enc(g), &["'b'"]));
    // graph inputs
    let mut g = conv_graph();
    g.input[0] = vi("x", F32, &[1, 2, -4, 4]);
    v.push(build("onnx_input_negative_dim", m, enc(g), &["'x'"]));
    let mut g = conv_graph();
    g.input[0] = vi("x", F32, &[1 << 62, 4, 1 << 62, 4]);
    v.push(build("onnx_input_dims_overflow", m, enc(g), &["x"]));
    v.push(
        Case::new(
            "onnx_bad_input_shape_flag",
            &["build", m, "--input-shape", "x=1,-2,4,4", "-o", "out.so"],
            &["-2"],
        )
        .file(m, ok.clone()),
    );
    // external data
    let ext = |loc: &str, offset: Option<i64>, length: Option<i64>| {
        let mut g = conv_graph();
        let t = &mut g.initializer[0];
        t.raw_data = None;
        t.data_location = Some(tensor_proto::DataLocation::External as i32);
        t.external_data = vec![StringStringEntryProto {
            key: Some("location".into()),
            value: Some(loc.into()),
        }];
        for (k, val) in [("offset", offset), ("length", length)] {
            if let Some(val) = val {
                t.external_data.push(StringStringEntryProto {
                    key: Some(k.into()),
                    value: Some(val.to_string()),
                });
            }
        }
        enc(g)
    };
    v.push(build(
        "onnx_ext_escaping",
        m,
        ext("../../../../etc/passwd", None, None),
        &["'w'"],
    ));
    v.push(build(
        "onnx_ext_absolute",
        m,
        ext("/etc/passwd", None, None),
        &["'w'"],
    ));
    v.push(build(
        "onnx_ext_missing",
        m,
        ext("weights.bin", None, None),
        &["weights.bin"],
    ));
    v.push(
        build(
            "onnx_ext_offset_past_end",
            m,
            ext("weights.bin", Some(1 << 40), None),
            &["weights.bin"],
        )
        .file("weights.bin", vec![0u8; 216]),
    );
    v.push(
        build(
            "onnx_ext_negative_offset",
            m,
            ext("weights.bin", Some(-8), None),
            &["'w'"],
        )
        .file("weights.bin", vec![0u8; 216]),
    );
    v.push(
        build(
            "onnx_ext_length_mismatch",
            m,
            ext("weights.bin", Some(0), Some(100)),
            &["'w'"],
        )
        .file("weights.bin", vec![0u8; 216]),
    );
    v.push(
        build(
            "onnx_ext_short_file",
            m,
            ext("weights.bin", None, None),
            &["weights.bin", "'w'"],
        )
        .file("weights.bin", vec![0u8; 100]),
    );
    v.push(
        build("onnx_ext_directory", m, ext("sub", None, None), &["sub"])
            .file("sub/x", vec![0u8; 4]),
    );
    // overflowing computed shapes
    let p = (1i64 << 31) - 2;
    v.push(build(
        "onnx_conv_pads_2_31",
        m,
        conv_with("big_pads", vec![ais("pads", &[p, p, p, p])]),
        &["big_pads"],
    ));
    let q = i64::MAX;
    v.push(build(
        "onnx_conv_pads_i64_max",
        m,
        conv_with("max_pads", vec![ais("pads", &[q, q, q, q])]),
        &["max_pads"],
    ));
    v.push(build(
        "onnx_conv_negative_pads",
        m,
        conv_with("neg_pads", vec![ais("pads", &[-1, 0, 0, 0])]),
        &["neg_pads"],
    ));
    v.push(build(
        "onnx_conv_zero_stride",
        m,
        conv_with("zero_stride", vec![ais("strides", &[0, 1])]),
        &["zero_stride"],
    ));
    v.push(build(
        "onnx_conv_negative_stride",
        m,
        conv_with("neg_stride", vec![ais("strides", &[-1, 1])]),
        &["neg_stride"],
    ));
    v.push(build(
        "onnx_conv_dilation_overflow",
        m,
        one_node(
            "Conv",
            "dil",
            vi("x", F32, &[1, 1, 4, 4]),
            vec![tf32("w", &[1, 1, 3, 3], &[1.0; 9])],
            vec![ais("dilations", &[1 << 62, 1 << 62])],
        ),
        &["dil"],
    ));
    v.push(build(
        "onnx_conv_kernel_mismatch",
        m,
        one_node(
            "Conv",
            "kmis",
            vi("x", F32, &[1, 1, 4, 4]),
            vec![tf32("w", &[1, 1, 3, 3], &[1.0; 9])],
            vec![ais("kernel_shape", &[5, 5])],
        ),
        &["kmis"],
    ));
    v.push(build(
        "onnx_maxpool_pads_overflow",
        m,
        one_node(
            "MaxPool",
            "pool",
            vi("x", F32, &[1, 1, 4, 4]),
            vec![],
            vec![ais("kernel_shape", &[2, 2]), ais("pads", &[q, q, q, q])],
        ),
        &["pool"],
    ));
    v.push(build(
        "onnx_convtranspose_stride_overflow",
        m,
        one_node(
            "ConvTranspose",
            "up",
            vi("x", F32, &[1, 1, 4, 4]),
            vec![tf32("w", &[1, 1, 2, 2], &[1.0; 4])],
            vec![ais("strides", &[1 << 40, 1 << 40])],
        ),
        &["up"],
    ));
    let big = |op: &str, name: &str, x: ValueInfoProto, c: TensorProto| {
        one_node(op, name, x, vec![c], vec![])
    };
    v.push(build(
        "onnx_expand_2_40",
        m,
        big(
            "Expand",
            "expand",
            vi("x", F32, &[1]),
            ti64("s", &[1], &[1 << 40]),
        ),
        &["expand"],
    ));
    v.push(build(
        "onnx_expand_2_62",
        m,
        big(
            "Expand",
            "expand",
            vi("x", F32, &[1]),
            ti64("s", &[2], &[1 << 62, 1 << 62]),
        ),
        &["expand"],
    ));
    v.push(build(
        "onnx_expand_negative",
        m,
        big(
            "Expand",
            "expand",
            vi("x", F32, &[1]),
            ti64("s", &[1], &[-7]),
        ),
        &["expand"],
    ));
    v.push(build(
        "onnx_tile_huge",
        m,
        big(
            "Tile",
            "tile",
            vi("x", F32, &[2, 2]),
            ti64("r", &[2], &[1 << 31, 1 << 31]),
        ),
        &["tile"],
    ));
    v.push(build(
        "onnx_reshape_huge",
        m,
        big(
            "Reshape",
            "reshape",
            vi("x", F32, &[2, 2]),
            ti64("s", &[3], &[1 << 40, 1 << 40, 0]),
        ),
        &["reshape"],
    ));
    v.push(build(
        "onnx_constant_of_shape_huge",
        m,
        enc(graph(
            vec![node("ConstantOfShape", "cos", &["s"], &["y"], vec![])],
            vec![],
            vec![out("y")],
            vec![ti64("s", &[2], &[1 << 40, 1 << 40])],
        )),
        &["cos"],
    ));
    v.push(build(
        "onnx_range_huge",
        m,
        enc(graph(
            vec![node("Range", "range", &["a", "b", "c"], &["y"], vec![])],
            vec![],
            vec![out("y")],
            vec![
                ti64("a", &[], &[0]),
                ti64("b", &[], &[1 << 62]),
                ti64("c", &[], &[1]),
            ],
        )),
        &["range"],
    ));
    v.push(build(
        "onnx_range_zero_delta",
        m,
        enc(graph(
            vec![node("Range", "range", &["a", "b", "c"], &["y"], vec![])],
            vec![],
            vec![out("y")],
            vec![
                ti64("a", &[], &[0]),
                ti64("b", &[], &[10]),
                ti64("c", &[], &[0]),
            ],
        )),
        &["range"],
    ));
    v.push(build(
        "onnx_resize_huge",
        m,
        enc(graph(
            vec![node(
                "Resize",
                "resize",
                &["x", "", "", "sizes"],
                &["y"],
                vec![],
            )],
            vec![vi("x", F32, &[1, 1, 4, 4])],
            vec![out("y")],
            vec![ti64("sizes", &[4], &[1, 1, 1 << 31, 1 << 31])],
        )),
        &["resize"],
    ));
    v.push(build(
        "onnx_pad_huge",
        m,
        big(
            "Pad",
            "pad",
            vi("x", F32, &[1, 4]),
            ti64("p", &[4], &[0, 1 << 40, 0, 1 << 40]),
        ),
        &["pad"],
    ));
    v.push(build(
        "onnx_pad_i64_overflow",
        m,
        big(
            "Pad",
            "pad",
            vi("x", F32, &[1, 4]),
            ti64("p", &[4], &[0, q, 0, q]),
        ),
        &["pad"],
    ));
    // constant operands with no defined result
    let x4 = || vi("x", F32, &[4]);
    v.push(build(
        "onnx_gather_const_oob",
        m,
        big("Gather", "gather", x4(), ti64("i", &[2], &[1, 7])),
        &["gather", "out of range"],
    ));
    v.push(build(
        "onnx_gather_const_oob_negative",
        m,
        big("Gather", "gather", x4(), ti64("i", &[1], &[-5])),
        &["gather", "out of range"],
    ));
    v.push(build(
        "onnx_gather_elements_const_oob",
        m,
        big("GatherElements", "ge", x4(), ti64("i", &[2], &[0, 4])),
        &["ge", "out of range"],
    ));
    v.push(build(
        "onnx_gather_nd_const_oob",
        m,
        big(
            "GatherND",
            "gnd",
            vi("x", F32, &[2, 2]),
            ti64("i", &[1, 2], &[1, 2]),
        ),
        &["gnd", "out of range"],
    ));
    v.push(build(
        "onnx_scatter_nd_const_oob",
        m,
        enc(graph(
            vec![node("ScatterND", "snd", &["x", "i", "u"], &["y"], vec![])],
            vec![x4()],
            vec![out("y")],
            vec![ti64("i", &[1, 1], &[9]), tf32("u", &[1], &[1.0])],
        )),
        &["snd", "out of range"],
    ));
    v.push(build(
        "onnx_scatter_elements_const_oob",
        m,
        enc(graph(
            vec![node(
                "ScatterElements",
                "se",
                &["x", "i", "u"],
                &["y"],
                vec![],
            )],
            vec![x4()],
            vec![out("y")],
            vec![ti64("i", &[1], &[-9]), tf32("u", &[1], &[1.0])],
        )),
        &["se", "out of range"],
    ));
    let xi = || vi("x", I32, &[2]);
    v.push(build(
        "onnx_div_const_zero",
        m,
        big("Div", "div", xi(), ti32("z", &[2], &[3, 0])),
        &["div", "division by zero"],
    ));
    v.push(build(
        "onnx_mod_const_zero",
        m,
        big("Mod", "mod", xi(), ti32("z", &[2], &[0, 3])),
        &["mod", "division by zero"],
    ));
    v.push(build(
        "onnx_div_min_by_minus_one",
        m,
        enc(graph(
            vec![node("Div", "div", &["a", "b"], &["y"], vec![])],
            vec![],
            vec![out("y")],
            vec![ti64("a", &[1], &[i64::MIN]), ti64("b", &[1], &[-1])],
        )),
        &["div", "overflows"],
    ));
    v.push(build(
        "onnx_concat_bad_axis",
        m,
        enc(graph(
            vec![node(
                "Concat",
                "cat",
                &["x", "x"],
                &["y"],
                vec![ai("axis", 5)],
            )],
            vec![x4()],
            vec![out("y")],
            vec![],
        )),
        &["cat"],
    ));
    v.push(build(
        "onnx_transpose_bad_perm",
        m,
        one_node(
            "Transpose",
            "tr",
            vi("x", F32, &[2, 3]),
            vec![],
            vec![ais("perm", &[0, 0])],
        ),
        &["tr"],
    ));
    v.push(build(
        "onnx_attribute_wrong_type",
        m,
        conv_with("float_pads", vec![af("pads", 1.5)]),
        &["float_pads"],
    ));
    v.push(build(
        "onnx_softmax_bad_axis",
        m,
        one_node("Softmax", "sm", x4(), vec![], vec![ai("axis", 99)]),
        &["sm"],
    ));
    // hostile names: quotes, comment ends, path separators, newlines
    let hostile = "a\"b*/../../x\n;DROP";
    v.push(build(
        "onnx_hostile_node_name",
        m,
        big("Div", hostile, xi(), ti32("z", &[2], &[3, 0])),
        &["*/../../x"],
    ));
    let mut g = conv_graph();
    g.node[1].op_type = Some("No/Such/../Op".into());
    g.node[1].name = Some("../../etc".into());
    v.push(build(
        "onnx_hostile_op_name",
        m,
        enc(g),
        &["../../etc", "No/Such/../Op"],
    ));
    // a graph input of a type the ABI has no code for (string)
    let mut g = conv_graph();
    g.input[0] = vi("x", 8, &[1, 2, 4, 4]);
    v.push(build("onnx_string_input", m, enc(g), &["'x'"]));
    v
}

// ---------------------------------------------------------------------------------------------
// kiln IR text

pub const KIR_OK: &str = "graph small {
  input %x: f32[1,2,4,4]
  const %w: f32[3,2,1,1] = [0.5, -1, 0.25, 2, -0.5, 1]
  const %b: f32[3] = [0.1, 0.2, -0.3]
  %c = conv(%x, %w, %b) {kernel=[1,1], strides=[1,1], pads=[0,0,0,0], dilations=[1,1], groups=1} : f32[1,3,4,4]
  %r = relu(%c) : f32[1,3,4,4]
  %p = global_average_pool(%r) : f32[1,3,1,1]
  %y = reshape(%p) {shape=[1,3]} : f32[1,3]
  output %y
}
";

fn kir(name: &str, text: &str, needles: &[&str]) -> Case {
    build(name, "model.kir", text.as_bytes().to_vec(), needles)
}

fn kir_cases() -> Vec<Case> {
    let mut v = Vec::new();
    for (k, cut) in [10, 60, 150, 300, KIR_OK.len() - 3].into_iter().enumerate() {
        v.push(kir(
            &format!("kir_truncated_{k}"),
            &KIR_OK[..cut],
            &["line"],
        ));
    }
    v.push(kir(
        "kir_noise",
        &String::from_utf8_lossy(&noise(2, 2000)),
        &[],
    ));
    v.push(build(
        "kir_not_utf8",
        "model.kir",
        vec![0xff, 0xfe, 0x00, 0x80],
        &[],
    ));
    v.push(kir(
        "kir_undefined_value",
        &KIR_OK.replace("relu(%c)", "relu(%nope)"),
        &["nope"],
    ));
    v.push(kir(
        "kir_defined_twice",
        &KIR_OK.replace("%r = relu(%c)", "%c = relu(%c)"),
        &["%c"],
    ));
    v.push(kir(
        "kir_duplicate_input",
        &KIR_OK.replace("  const %w", "  input %x: f32[1]\n  const %w"),
        &["x"],
    ));
    v.push(kir(
        "kir_unknown_op",
        &KIR_OK.replace("relu(%c)", "frobnicate(%c)"),
        &["frobnicate"],
    ));
    v.push(kir(
        "kir_unknown_dtype",
        &KIR_OK.replace("input %x: f32", "input %x: f128"),
        &["f128"],
    ));
    v.push(kir(
        "kir_output_undefined",
        &KIR_OK.replace("output %y", "output %zz"),
        &["zz"],
    ));
    v.push(kir(
        "kir_type_mismatch",
        &KIR_OK.replace(": f32[1,3,1,1]", ": f32[1,3,2,2]"),
        &["line"],
    ));
    v.push(kir(
        "kir_const_too_few",
        &KIR_OK.replace("= [0.1, 0.2, -0.3]", "= [0.1]"),
        &["line"],
    ));
    v.push(kir(
        "kir_const_bad_number",
        &KIR_OK.replace("= [0.1, 0.2, -0.3]", "= [0.1, 0x, 1e999999]"),
        &["line"],
    ));
    v.push(kir(
        "kir_const_bad_hex",
        "graph g {\n  const %h: f16[2] = hex\"zz00\"\n  output %h\n}\n",
        &["line"],
    ));
    let unary = |name: &str, ty: &str, out: &str, op: &str| -> String {
        format!("graph g {{\n  input %x: {ty}\n  %y = {op} : {out}\n  output %y\n}}\n")
            .replace("NAME", name)
    };
    v.push(kir(
        "kir_dim_too_long",
        &unary("", "f32[99999999999999999999999]", "f32[1]", "relu(%x)"),
        &["line"],
    ));
    v.push(kir(
        "kir_dims_overflow",
        &unary("", "f32[4294967296,4294967296]", "f32[1]", "relu(%x)"),
        &["line"],
    ));
    v.push(kir(
        "kir_dims_2_40",
        &unary("", "f32[1099511627776]", "f32[1099511627776]", "relu(%x)"),
        &["line", "1 TiB"],
    ));
    v.push(kir(
        "kir_rank_33",
        &unary(
            "",
            &format!("f32[{}]", vec!["1"; 33].join(",")),
            "f32[1]",
            "relu(%x)",
        ),
        &["line", "rank"],
    ));
    v.push(kir(
        "kir_reshape_overflow",
        &unary(
            "",
            "f32[4]",
            "f32[4294967296,4294967296,0]",
            "reshape(%x) {shape=[4294967296,4294967296,0]}",
        ),
        &["line"],
    ));
    v.push(kir(
        "kir_expand_2_40",
        &unary(
            "",
            "f32[1]",
            "f32[1099511627776]",
            "expand(%x) {shape=[1099511627776]}",
        ),
        &["line", "1 TiB"],
    ));
    let conv = |pads: &str, strides: &str, dil: &str, out: &str| {
        format!(
            "graph g {{\n  input %x: f32[1,1,4,4]\n  const %w: f32[1,1,1,1] = [1.0]\n  %y = conv(%x, %w) {{kernel=[1,1], strides={strides}, pads={pads}, dilations={dil}, groups=1}} : {out}\n  output %y\n}}\n"
        )
    };
    let big = "4611686018427387904";
    v.push(kir(
        "kir_conv_pads_2_62",
        &conv(
            &format!("[{big},{big},{big},{big}]"),
            "[1,1]",
            "[1,1]",
            "f32[1,1,1,1]",
        ),
        &["line", "overflows"],
    ));
    v.push(kir(
        "kir_conv_pads_2_31",
        &conv(
            "[2147483640,2147483640,2147483640,2147483640]",
            "[1,1]",
            "[1,1]",
            "f32[1,1,4294967284,4294967284]",
        ),
        &["line"],
    ));
    v.push(kir(
        "kir_conv_zero_stride",
        &conv("[0,0,0,0]", "[0,1]", "[1,1]", "f32[1,1,4,4]"),
        &["line"],
    ));
    v.push(kir(
        "kir_conv_groups_zero",
        &conv("[0,0,0,0]", "[1,1]", "[1,1]", "f32[1,1,4,4]").replace("groups=1", "groups=0"),
        &["line"],
    ));
    v.push(kir(
        "kir_conv_groups_overflow",
        &conv("[0,0,0,0]", "[1,1]", "[1,1]", "f32[1,1,4,4]")
            .replace("groups=1", &format!("groups={big}")),
        &["line"],
    ));
    v.push(kir(
        "kir_pool_dilation_overflow",
        &unary(
            "",
            "f32[1,1,4,4]",
            "f32[1,1,1,1]",
            &format!("max_pool(%x) {{kernel=[3,3], strides=[1,1], pads=[0,0,0,0], dilations=[{big},{big}], ceil_mode=0}}"),
        ),
        &["line"],
    ));
    v.push(kir(
        "kir_slice_overflow",
        &unary(
            "",
            "f32[4]",
            "f32[3]",
            "slice(%x) {starts=[0], steps=[9223372036854775807], sizes=[3]}",
        ),
        &["line"],
    ));
    v.push(kir(
        "kir_pad_overflow",
        &unary(
            "",
            "f32[4]",
            "f32[4]",
            "pad(%x) {pads=[9223372036854775807,9223372036854775807], mode=\"constant\", value=0}",
        ),
        &["line"],
    ));
    v.push(kir(
        "kir_concat_overflow",
        "graph g {\n  input %x: u8[1099511627776]\n  %y = concat(%x, %x) {axis=0} : u8[2199023255552]\n  output %y\n}\n",
        &["line"],
    ));
    v.push(kir(
        "kir_split_overflow",
        &unary(
            "",
            "f32[4]",
            "f32[4]",
            "split(%x) {axis=0, sizes=[18446744073709551615,5]}",
        ),
        &["line"],
    ));
    let indexed = |op: &str, it: &str, ival: &str, extra: &str, out: &str| {
        format!(
            "graph g {{\n  input %x: f32[2,3]\n  const %i: {it} = {ival}\n{extra}  %y = {op} : {out}\n  output %y\n}}\n"
        )
    };
    v.push(kir(
        "kir_gather_const_oob",
        &indexed(
            "gather(%x, %i) {axis=1}",
            "i64[2]",
            "[0, 3]",
            "",
            "f32[2,2]",
        ),
        &["'y'", "out of range"],
    ));
    v.push(kir(
        "kir_gather_i32_const_oob",
        &indexed("gather(%x, %i) {axis=0}", "i32[1]", "[-3]", "", "f32[1,3]"),
        &["'y'", "out of range"],
    ));
    v.push(kir(
        "kir_gather_elements_const_oob",
        &indexed(
            "gather_elements(%x, %i) {axis=1}",
            "i64[2,1]",
            "[0, 5]",
            "",
            "f32[2,1]",
        ),
        &["'y'", "out of range"],
    ));
    v.push(kir(
        "kir_gather_nd_const_oob",
        &indexed(
            "gather_nd(%x, %i) {batch_dims=0}",
            "i64[1,2]",
            "[1, 3]",
            "",
            "f32[1]",
        ),
        &["'y'", "out of range"],
    ));
    v.push(kir(
        "kir_scatter_elements_const_oob",
        &indexed(
            "scatter_elements(%x, %i, %u) {axis=0, reduction=\"none\"}",
            "i64[1,3]",
            "[0, 2, 1]",
            "  const %u: f32[1,3] = [1, 2, 3]\n",
            "f32[2,3]",
        ),
        &["'y'", "out of range"],
    ));
    v.push(kir(
        "kir_scatter_nd_const_oob",
        &indexed(
            "scatter_nd(%x, %i, %u) {reduction=\"add\"}",
            "i64[1,1]",
            "[2]",
            "  const %u: f32[1,3] = [1, 2, 3]\n",
            "f32[2,3]",
        ),
        &["'y'", "out of range"],
    ));
    let div = |op: &str, ty: &str, a: &str, b: &str| {
        format!(
            "graph g {{\n  const %a: {ty} = {a}\n  const %b: {ty} = {b}\n  %y = {op}(%a, %b) : {ty}\n  output %y\n}}\n"
        )
    };
    v.push(kir(
        "kir_div_const_zero",
        &div("div", "i32[2]", "[1, 2]", "[1, 0]"),
        &["'y'", "division by zero"],
    ));
    v.push(kir(
        "kir_mod_const_zero",
        &div("mod", "i64[1]", "[5]", "[0]"),
        &["'y'", "division by zero"],
    ));
    v.push(kir(
        "kir_fmod_const_zero",
        &div("fmod", "u8[1]", "[5]", "[0]"),
        &["'y'", "division by zero"],
    ));
    v.push(kir(
        "kir_div_i64_min",
        &div("div", "i64[1]", "[-9223372036854775808]", "[-1]"),
        &["'y'", "overflows"],
    ));
    v.push(kir(
        "kir_div_i8_min",
        &div("div", "i8[2]", "[-128, 4]", "[-1, 2]"),
        &["'y'", "overflows"],
    ));
    v.push(kir(
        "kir_resample_empty_axis",
        "graph g {\n  input %x: f32[0,2]\n  const %i: i32[1,1] = [0]\n  const %w: f32[1,1] = [1]\n  %y = resample(%x, %i, %w) {axis=0, fill=0} : f32[1,2]\n  output %y\n}\n",
        &["'y'", "empty"],
    ));
    v.push(kir(
        "kir_bad_layout",
        "graph g {\n  input %x: f32[4]\n  %y = relayout(%x) {to=\"nchw3c\"} : f32[4]@nchw3c\n  output %y\n}\n",
        &["line"],
    ));
    v.push(kir(
        "kir_hostile_names",
        "graph g {\n  input %\"a*/../\\\\b\": i32[2]\n  const %z: i32[2] = [0, 1]\n  %\"q\\\"*/../x\" = div(%\"a*/../\\\\b\", %z) : i32[2]\n  output %\"q\\\"*/../x\"\n}\n",
        &["*/../x", "division by zero"],
    ));
    v
}

// ---------------------------------------------------------------------------------------------
// MindSpore checkpoints (protobuf and safetensors)

fn f32b(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn ckpt_entry(tag: &str, ty: &str, dims: &[i64], content: Vec<u8>) -> Vec<u8> {
    ck::Checkpoint {
        value: vec![ck::checkpoint::Value {
            tag: tag.into(),
            value: Some(ck::checkpoint::value::Value::Tensor(ck::TensorProto {
                dims: dims.to_vec(),
                tensor_type: ty.into(),
                tensor_content: Bytes::from(content),
            })),
        }],
    }
    .encode_to_vec()
}

fn inspect(name: &str, file: &str, bytes: Vec<u8>, needles: &[&str]) -> Case {
    let mut n = vec![file];
    n.extend_from_slice(needles);
    Case::new(name, &["inspect", file], &n).file(file, bytes)
}

fn ckpt_cases() -> Vec<Case> {
    let mut v = Vec::new();
    let c = "w.ckpt";
    let ok = kiln_compiler::mindspore::ckpt::write_protobuf(
        &[("conv.weight", "Float32", &[3, 2, 1, 1], &f32b(&[1.0; 6]))],
        1,
        true,
    );
    v.push(inspect("ckpt_empty", c, vec![], &[]));
    v.push(inspect("ckpt_noise", c, noise(3, 1000), &[]));
    v.push(inspect(
        "ckpt_truncated",
        c,
        ok[..ok.len() / 2].to_vec(),
        &[],
    ));
    let mut bad_crc = ok.clone();
    let n = bad_crc.len();
    bad_crc[n - 1] ^= 0x55;
    v.push(inspect("ckpt_wrong_crc", c, bad_crc, &["CRC"]));
    v.push(inspect(
        "ckpt_negative_dim",
        c,
        ckpt_entry("p", "Float32", &[-1, 4], vec![0; 16]),
        &["'p'"],
    ));
    v.push(inspect(
        "ckpt_dims_overflow",
        c,
        ckpt_entry("p", "Float32", &[1 << 40, 1 << 40], vec![0; 16]),
        &["'p'"],
    ));
    v.push(inspect(
        "ckpt_short_content",
        c,
        ckpt_entry("p", "Float32", &[4, 4], vec![0; 10]),
        &["'p'"],
    ));
    v.push(inspect(
        "ckpt_unknown_type",
        c,
        ckpt_entry("p", "Float128", &[1], vec![0; 16]),
        &["Float128"],
    ));
    v.push(inspect(
        "ckpt_rank_40",
        c,
        ckpt_entry("p", "Float32", &[1; 40], vec![0; 4]),
        &["'p'"],
    ));
    let key = DecryptKey::from_bytes(b"0123456789ABCDEF").unwrap();
    for gcm in [true, false] {
        let mode = if gcm { "gcm" } else { "cbc" };
        let e = crypto::encrypt(&ok, &key, gcm, [5u8; 16], 64).unwrap();
        v.push(inspect(
            &format!("ckpt_{mode}_no_key"),
            c,
            e.clone(),
            &["encrypted"],
        ));
        v.push(
            Case::new(
                &format!("ckpt_{mode}_wrong_key"),
                &["inspect", c, "--decrypt-key-file", "key.txt"],
                &[c],
            )
            .file(c, e.clone())
            .file("key.txt", b"FEDCBA9876543210".to_vec()),
        );
        let mut flipped = e.clone();
        let k = flipped.len() - 3;
        flipped[k] ^= 1;
        v.push(
            Case::new(&format!("ckpt_{mode}_tampered"), &["inspect", c], &[c])
                .file(c, flipped)
                .env("KILN_DECRYPT_KEY", "0123456789ABCDEF"),
        );
        v.push(
            Case::new(&format!("ckpt_{mode}_truncated"), &["inspect", c], &[c])
                .file(c, e[..e.len() - 7].to_vec())
                .env("KILN_DECRYPT_KEY", "0123456789ABCDEF"),
        );
    }
    v.push(
        Case::new(
            "ckpt_bad_key_file",
            &["inspect", c, "--decrypt-key-file", "key.txt"],
            &["key.txt"],
        )
        .file(c, ok.clone())
        .file("key.txt", b"short".to_vec()),
    );
    // binding: a checkpoint tensor whose shape differs from the model's constant
    let wrong = kiln_compiler::mindspore::ckpt::write_protobuf(
        &[("w", "Float32", &[2, 2], &f32b(&[1.0; 4]))],
        1,
        false,
    );
    v.push(
        Case::new(
            "ckpt_bind_shape_mismatch",
            &["build", "model.kir", "--weights", c, "-o", "out.so"],
            &[c, "'w'"],
        )
        .file("model.kir", KIR_OK.as_bytes().to_vec())
        .file(c, wrong),
    );
    let wrong_t = kiln_compiler::mindspore::ckpt::write_protobuf(
        &[("w", "Int32", &[3, 2, 1, 1], &[0u8; 24])],
        1,
        false,
    );
    v.push(
        Case::new(
            "ckpt_bind_dtype_mismatch",
            &["build", "model.kir", "--weights", c, "-o", "out.so"],
            &[c, "'w'"],
        )
        .file("model.kir", KIR_OK.as_bytes().to_vec())
        .file(c, wrong_t),
    );
    v.push(
        Case::new(
            "ckpt_bind_missing",
            &[
                "build",
                "model.kir",
                "--weights",
                "none.ckpt",
                "-o",
                "out.so",
            ],
            &["none.ckpt"],
        )
        .file("model.kir", KIR_OK.as_bytes().to_vec()),
    );

    // safetensors
    let s = "w.safetensors";
    let st = |header: &str, data: &[u8]| {
        let mut f = (header.len() as u64).to_le_bytes().to_vec();
        f.extend_from_slice(header.as_bytes());
        f.extend_from_slice(data);
        f
    };
    let good = r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}}"#;
    v.push(inspect(
        "st_header_past_end",
        s,
        {
            let mut f = st(good, &[0; 12]);
            f[..8].copy_from_slice(&10_000u64.to_le_bytes());
            f
        },
        &[],
    ));
    v.push(inspect(
        "st_header_u64_max",
        s,
        {
            let mut f = st(good, &[0; 12]);
            f[..8].copy_from_slice(&u64::MAX.to_le_bytes());
            f
        },
        &[],
    ));
    v.push(inspect("st_too_short", s, vec![1, 0, 0], &[]));
    v.push(inspect(
        "st_header_not_json",
        s,
        st("{not json", &[0; 12]),
        &[],
    ));
    v.push(inspect("st_header_array", s, st("[1,2,3]", &[0; 12]), &[]));
    v.push(inspect(
        "st_offsets_past_end",
        s,
        st(
            r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,1200]}}"#,
            &[0; 12],
        ),
        &["'a'"],
    ));
    v.push(inspect(
        "st_offsets_reversed",
        s,
        st(
            r#"{"a":{"dtype":"F32","shape":[0],"data_offsets":[12,0]}}"#,
            &[0; 12],
        ),
        &["'a'"],
    ));
    v.push(inspect(
        "st_offsets_huge",
        s,
        st(r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[18446744073709551610,18446744073709551615]}}"#, &[0; 12]),
        &["'a'"],
    ));
    v.push(inspect(
        "st_unknown_dtype",
        s,
        st(
            r#"{"a":{"dtype":"F128","shape":[3],"data_offsets":[0,12]}}"#,
            &[0; 12],
        ),
        &["F128"],
    ));
    v.push(inspect(
        "st_shape_overflow",
        s,
        st(r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296,4294967296],"data_offsets":[0,12]}}"#, &[0; 12]),
        &["'a'"],
    ));
    v.push(inspect(
        "st_shape_size_mismatch",
        s,
        st(
            r#"{"a":{"dtype":"F32","shape":[4],"data_offsets":[0,12]}}"#,
            &[0; 12],
        ),
        &["'a'"],
    ));
    v.push(inspect(
        "st_negative_dim",
        s,
        st(
            r#"{"a":{"dtype":"F32","shape":[-3],"data_offsets":[0,12]}}"#,
            &[0; 12],
        ),
        &["'a'"],
    ));
    v.push(inspect(
        "st_wrong_crc",
        s,
        st(
            r#"{"__metadata__":{"format":"ms","crc_num":"12345"},"a":{"dtype":"F32","shape":[3],"data_offsets":[0,12]}}"#,
            &[0; 12],
        ),
        &["CRC"],
    ));
    v.push(inspect(
        "st_deep_json",
        s,
        st(&format!("{}{}", "[".repeat(5000), "]".repeat(5000)), &[]),
        &[],
    ));
    v
}

// ---------------------------------------------------------------------------------------------
// MindIR

fn mi_tensor(dims: &[i64]) -> mi::TensorProto {
    mi::TensorProto {
        dims: dims.to_vec(),
        data_type: Some(1),
        ..Default::default()
    }
}

fn mi_node(name: &str, prim: &str, inputs: &[&str]) -> mi::NodeProto {
    mi::NodeProto {
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![name.to_string()],
        name: Some(name.to_string()),
        op_type: Some(format!("REF::{prim}")),
        ..Default::default()
    }
}

/// `y = x + w` with `w` a parameter (raw data inline, or external).
fn mindir(dims: &[i64], w: mi::TensorProto, nodes: Vec<mi::NodeProto>) -> mi::ModelProto {
    mi::ModelProto {
        ir_version: Some("0.1.1".into()),
        producer_name: Some("MindSpore".into()),
        primitives: vec![mi::PrimitiveProto {
            name: Some("Add:1".into()),
            op_type: Some("Add".into()),
            ..Default::default()
        }],
        graph: Some(mi::GraphProto {
            name: Some("g".into()),
            input: vec![mi::ValueInfoProto {
                name: Some("g:x".into()),
                tensor: vec![mi_tensor(dims)],
                ..Default::default()
            }],
            parameter: vec![w],
            node: nodes,
            output: vec![mi::ValueInfoProto {
                name: Some("g:a".into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn mi_param(dims: &[i64]) -> mi::TensorProto {
    let n: i64 = dims.iter().fold(1i64, |a, &d| a.saturating_mul(d)).max(0);
    mi::TensorProto {
        name: Some("g:w".into()),
        ref_key: Some("w".into()),
        raw_data: Some(Bytes::from(vec![0u8; 4 * n.min(64) as usize])),
        ..mi_tensor(dims)
    }
}

fn add_node() -> Vec<mi::NodeProto> {
    vec![mi_node("g:a", "Add:1", &["g:x", "g:w"])]
}

fn mindir_cases() -> Vec<Case> {
    let mut v = Vec::new();
    let f = "model.mindir";
    let ok = mindir(&[2, 3], mi_param(&[2, 3]), add_node()).encode_to_vec();
    v.push(build("mindir_empty", f, vec![], &[]));
    v.push(build("mindir_noise", f, noise(4, 3000), &[]));
    v.push(build(
        "mindir_truncated",
        f,
        ok[..ok.len() - 5].to_vec(),
        &[],
    ));
    v.push(build(
        "mindir_param_dims_overflow",
        f,
        mindir(&[2, 3], mi_param(&[1 << 40, 1 << 40]), add_node()).encode_to_vec(),
        &["w"],
    ));
    v.push(build(
        "mindir_param_short_data",
        f,
        mindir(&[2, 3], mi_param(&[64, 64]), add_node()).encode_to_vec(),
        &["w"],
    ));
    v.push(build(
        "mindir_input_negative_dim",
        f,
        mindir(&[2, -3], mi_param(&[2, 3]), add_node()).encode_to_vec(),
        &["x"],
    ));
    v.push(build(
        "mindir_input_dims_overflow",
        f,
        mindir(&[1 << 62, 1 << 62], mi_param(&[2, 3]), add_node()).encode_to_vec(),
        &["x"],
    ));
    v.push(build(
        "mindir_unknown_primitive",
        f,
        mindir(
            &[2, 3],
            mi_param(&[2, 3]),
            vec![mi_node("g:a", "Frob:9", &["g:x", "g:w"])],
        )
        .encode_to_vec(),
        &["Frob"],
    ));
    v.push(build(
        "mindir_dangling_input",
        f,
        mindir(
            &[2, 3],
            mi_param(&[2, 3]),
            vec![mi_node("g:a", "Add:1", &["g:x", "g:nowhere"])],
        )
        .encode_to_vec(),
        &["nowhere"],
    ));
    v.push(build(
        "mindir_cycle",
        f,
        mindir(
            &[2, 3],
            mi_param(&[2, 3]),
            vec![
                mi_node("g:a", "Add:1", &["g:b", "g:w"]),
                mi_node("g:b", "Add:1", &["g:a", "g:w"]),
            ],
        )
        .encode_to_vec(),
        &[],
    ));
    let ext = |loc: &str, offset: i64, length: i64| {
        mindir(
            &[2, 3],
            mi::TensorProto {
                name: Some("g:w".into()),
                ref_key: Some("w".into()),
                external_data: Some(mi::tensor_proto::ExternalDataProto {
                    location: Some(loc.into()),
                    offset: Some(offset),
                    length: Some(length),
                }),
                ..mi_tensor(&[2, 3])
            },
            add_node(),
        )
        .encode_to_vec()
    };
    v.push(build(
        "mindir_ext_missing",
        f,
        ext("model_variables/data_0", 0, 24),
        &["data_0"],
    ));
    v.push(build(
        "mindir_ext_escaping",
        f,
        ext("../../../../etc/passwd", 0, 24),
        &["passwd"],
    ));
    v.push(
        build(
            "mindir_ext_offset_past_end",
            f,
            ext("model_variables/data_0", 1 << 50, 24),
            &["data_0"],
        )
        .file("model_variables/data_0", vec![0u8; 64]),
    );
    v.push(
        build(
            "mindir_ext_negative_offset",
            f,
            ext("model_variables/data_0", -64, 24),
            &["'w'"],
        )
        .file("model_variables/data_0", vec![0u8; 64]),
    );
    v.push(
        build(
            "mindir_ext_length_mismatch",
            f,
            ext("model_variables/data_0", 0, 20),
            &["w"],
        )
        .file("model_variables/data_0", vec![0u8; 64]),
    );
    let key = DecryptKey::from_bytes(b"0123456789ABCDEF").unwrap();
    for gcm in [true, false] {
        let mode = if gcm { "gcm" } else { "cbc" };
        let e = crypto::encrypt(&ok, &key, gcm, [6u8; 16], 1 << 20).unwrap();
        v.push(build(
            &format!("mindir_{mode}_no_key"),
            f,
            e.clone(),
            &["encrypted"],
        ));
        v.push(
            Case::new(
                &format!("mindir_{mode}_wrong_key"),
                &["build", f, "--decrypt-key-file", "key.hex", "-o", "out.so"],
                &[f],
            )
            .file(f, e.clone())
            .file("key.hex", b"00112233445566778899aabbccddeeff\n".to_vec()),
        );
        v.push(
            Case::new(
                &format!("mindir_{mode}_truncated"),
                &["build", f, "-o", "out.so"],
                &[f],
            )
            .file(f, e[..e.len() / 2].to_vec())
            .env("KILN_DECRYPT_KEY", "0123456789ABCDEF"),
        );
    }
    v
}

// ---------------------------------------------------------------------------------------------
// .npy inputs of `kiln run`

fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
    let h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let mut h = h.into_bytes();
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(b' ');
    }
    h.push(b'\n');
    let mut f = b"\x93NUMPY\x01\x00".to_vec();
    f.extend_from_slice(&(h.len() as u16).to_le_bytes());
    f.extend_from_slice(&h);
    f.extend_from_slice(data);
    f
}

fn run_case(name: &str, input: Vec<u8>, needles: &[&str]) -> Case {
    let mut n = vec!["x.npy"];
    n.extend_from_slice(needles);
    Case::new(
        name,
        &["run", "model.kir", "--input", "x.npy", "--output-dir", "o"],
        &n,
    )
    .file("model.kir", KIR_OK.as_bytes().to_vec())
    .file("x.npy", input)
}

fn npy_cases() -> Vec<Case> {
    let mut v = Vec::new();
    let good_data = f32b(&[0.5; 32]);
    v.push(run_case("npy_empty", vec![], &[]));
    v.push(run_case(
        "npy_bad_magic",
        b"\x93NUMPX\x01\x00\x10\x00{}".to_vec(),
        &[],
    ));
    v.push(run_case("npy_noise", noise(5, 300), &[]));
    v.push(run_case(
        "npy_version_9",
        {
            let mut f = npy("<f4", "(1, 2, 4, 4)", &good_data);
            f[6] = 9;
            f
        },
        &[],
    ));
    v.push(run_case(
        "npy_header_len_past_end",
        {
            let mut f = npy("<f4", "(1, 2, 4, 4)", &good_data);
            f[8] = 0xff;
            f[9] = 0xff;
            f
        },
        &[],
    ));
    v.push(run_case(
        "npy_header_v2_huge",
        {
            let mut f = b"\x93NUMPY\x02\x00".to_vec();
            f.extend_from_slice(&u32::MAX.to_le_bytes());
            f.extend_from_slice(b"{}");
            f
        },
        &[],
    ));
    v.push(run_case(
        "npy_header_not_dict",
        {
            let mut f = b"\x93NUMPY\x01\x00".to_vec();
            let h = b"[1, 2, 3]                                                    \n";
            f.extend_from_slice(&(h.len() as u16).to_le_bytes());
            f.extend_from_slice(h);
            f
        },
        &[],
    ));
    v.push(run_case(
        "npy_shape_overflow",
        npy("<f4", "(4294967296, 4294967296, 4294967296)", &good_data),
        &[],
    ));
    v.push(run_case(
        "npy_negative_dim",
        npy("<f4", "(1, -2, 4, 4)", &good_data),
        &[],
    ));
    v.push(run_case(
        "npy_wrong_dtype",
        npy("<i4", "(1, 2, 4, 4)", &good_data),
        &["'x'"],
    ));
    v.push(run_case(
        "npy_wrong_shape",
        npy("<f4", "(1, 2, 4, 5)", &f32b(&[0.0; 40])),
        &["'x'"],
    ));
    v.push(run_case(
        "npy_truncated_data",
        npy("<f4", "(1, 2, 4, 4)", &good_data[..100]),
        &[],
    ));
    v.push(run_case(
        "npy_extra_data",
        npy(
            "<f4",
            "(1, 2, 4, 4)",
            &[good_data.clone(), vec![0; 8]].concat(),
        ),
        &[],
    ));
    v.push(run_case(
        "npy_fortran_order",
        {
            let f = npy("<f4", "(1, 2, 4, 4)", &good_data);
            let s = String::from_utf8_lossy(&f).replace("False", "True ");
            s.into_bytes()
        },
        &[],
    ));
    v.push(run_case(
        "npy_object_dtype",
        npy("|O", "(1, 2, 4, 4)", &good_data),
        &[],
    ));
    v.push(run_case(
        "npy_big_endian",
        npy(">f4", "(1, 2, 4, 4)", &good_data),
        &[],
    ));
    v.push(run_case(
        "npy_structured",
        npy("[('a', '<f4')]", "(1, 2, 4, 4)", &good_data),
        &[],
    ));
    v.push(
        Case::new(
            "npy_missing",
            &["run", "model.kir", "--input", "x.npy", "--output-dir", "o"],
            &["x.npy"],
        )
        .file("model.kir", KIR_OK.as_bytes().to_vec()),
    );
    v.push(
        Case::new(
            "npy_too_many_inputs",
            &[
                "run",
                "model.kir",
                "--input",
                "x.npy",
                "--input",
                "x.npy",
                "--output-dir",
                "o",
            ],
            &["2 given"],
        )
        .file("model.kir", KIR_OK.as_bytes().to_vec())
        .file("x.npy", npy("<f4", "(1, 2, 4, 4)", &good_data)),
    );
    v.push(
        Case::new(
            "npy_unknown_input_name",
            &[
                "run",
                "model.kir",
                "--input",
                "nope=x.npy",
                "--output-dir",
                "o",
            ],
            &["nope"],
        )
        .file("model.kir", KIR_OK.as_bytes().to_vec())
        .file("x.npy", npy("<f4", "(1, 2, 4, 4)", &good_data)),
    );
    v.push(
        Case::new(
            "npy_freeze_bad",
            &["build", "model.kir", "--freeze", "x=x.npy", "-o", "out.so"],
            &["x.npy"],
        )
        .file("model.kir", KIR_OK.as_bytes().to_vec())
        .file("x.npy", npy("<f4", "(1, 2, 4, 4)", &good_data[..64])),
    );
    v.push(
        Case::new(
            "npy_freeze_wrong_shape",
            &["build", "model.kir", "--freeze", "x=x.npy", "-o", "out.so"],
            &["x"],
        )
        .file("model.kir", KIR_OK.as_bytes().to_vec())
        .file("x.npy", npy("<f4", "(3,)", &good_data[..12])),
    );
    // run-time errors of the model itself: an index out of range, a division by zero
    let gather = "graph g {\n  input %x: f32[4]\n  input %i: i64[2]\n  %y = gather(%x, %i) {axis=0} : f32[2]\n  output %y\n}\n";
    v.push(
        Case::new(
            "run_gather_index_out_of_range",
            &[
                "run",
                "model.kir",
                "--input",
                "x.npy",
                "--input",
                "i.npy",
                "--output-dir",
                "o",
            ],
            &["model.kir", "index out of range", "'y'"],
        )
        .file("model.kir", gather.as_bytes().to_vec())
        .file("x.npy", npy("<f4", "(4,)", &f32b(&[1.0, 2.0, 3.0, 4.0])))
        .file(
            "i.npy",
            npy(
                "<i8",
                "(2,)",
                &[1i64.to_le_bytes(), 7i64.to_le_bytes()].concat(),
            ),
        ),
    );
    let divk = "graph g {\n  input %a: i32[2]\n  input %b: i32[2]\n  %q = div(%a, %b) : i32[2]\n  output %q\n}\n";
    let i32s = |v: &[i32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
    v.push(
        Case::new(
            "run_div_by_zero",
            &[
                "run",
                "model.kir",
                "--input",
                "a.npy",
                "--input",
                "b.npy",
                "--output-dir",
                "o",
            ],
            &["model.kir", "division by zero", "'q'"],
        )
        .file("model.kir", divk.as_bytes().to_vec())
        .file("a.npy", npy("<i4", "(2,)", &i32s(&[7, 5])))
        .file("b.npy", npy("<i4", "(2,)", &i32s(&[2, 0]))),
    );
    v.push(
        Case::new(
            "run_div_min_by_minus_one",
            &[
                "run",
                "model.kir",
                "--input",
                "a.npy",
                "--input",
                "b.npy",
                "--output-dir",
                "o",
            ],
            &["model.kir", "overflow", "'q'"],
        )
        .file("model.kir", divk.as_bytes().to_vec())
        .file("a.npy", npy("<i4", "(2,)", &i32s(&[7, i32::MIN])))
        .file("b.npy", npy("<i4", "(2,)", &i32s(&[2, -1]))),
    );
    v.push(
        Case::new("run_expand_2_40_bool", &["run", "model.kir", "--input", "x.npy", "--output-dir", "o"], &["model.kir", "allocate"])
            .file(
                "model.kir",
                b"graph g {\n  input %x: bool[1]\n  %y = expand(%x) {shape=[1099511627776]} : bool[1099511627776]\n  output %y\n}\n".to_vec(),
            )
            .file("x.npy", npy("|b1", "(1,)", &[1])),
    );
    v
}

// ---------------------------------------------------------------------------------------------
// fusion switch JSON

fn fusion(name: &str, json: &[u8], needles: &[&str]) -> Case {
    let mut n = vec!["fs.json"];
    n.extend_from_slice(needles);
    Case::new(
        name,
        &[
            "build",
            "model.kir",
            "--fusion-switch",
            "fs.json",
            "-o",
            "out.so",
        ],
        &n,
    )
    .file("model.kir", KIR_OK.as_bytes().to_vec())
    .file("fs.json", json.to_vec())
}

fn fusion_cases() -> Vec<Case> {
    let mut missing = fusion("fusion_missing_file", b"", &[]);
    missing.files.retain(|(p, _)| p != "fs.json");
    vec![
        fusion("fusion_empty", b"", &[]),
        fusion("fusion_not_json", b"{\"fuse_conv_activation\": off}", &[]),
        fusion("fusion_array", b"[\"fuse_conv_activation\"]", &[]),
        fusion(
            "fusion_unknown_rule",
            b"{\"no_such_rule\": \"off\"}",
            &["no_such_rule"],
        ),
        fusion(
            "fusion_bad_value",
            b"{\"fuse_conv_activation\": \"maybe\"}",
            &["maybe"],
        ),
        fusion(
            "fusion_nested",
            b"{\"fuse_conv_activation\": {\"off\": true}}",
            &[],
        ),
        fusion(
            "fusion_deep",
            format!("{}{}", "[".repeat(100_000), "]".repeat(100_000)).as_bytes(),
            &[],
        ),
        fusion("fusion_not_utf8", &[b'{', 0xff, 0xfe, b'}'], &[]),
        missing,
    ]
}

// ---------------------------------------------------------------------------------------------
// output paths and command lines

fn output_cases() -> Vec<Case> {
    let k = |name: &str, args: &[&str], needles: &[&str]| {
        Case::new(name, args, needles).file("model.kir", KIR_OK.as_bytes().to_vec())
    };
    vec![
        k(
            "out_link_to_dev_null",
            &["build", "model.kir", "-o", "out.so"],
            &["out.so", "not a regular file"],
        )
        .link("out.so", "/dev/null"),
        k(
            "out_link_to_dev_null_ir",
            &["build", "model.kir", "--emit", "ir", "-o", "out.kir"],
            &["out.kir", "not a regular file"],
        )
        .link("out.kir", "/dev/null"),
        k(
            "out_link_to_dev_null_exe",
            &["build", "model.kir", "--emit", "exe", "-o", "prog"],
            &["prog", "not a regular file"],
        )
        .link("prog", "/dev/null"),
        k(
            "out_link_to_dev_null_header",
            &["build", "model.kir", "--emit", "header", "-o", "m.h"],
            &["m.h", "not a regular file"],
        )
        .link("m.h", "/dev/null"),
        k(
            "out_link_to_directory",
            &["build", "model.kir", "-o", "out.so"],
            &["out.so", "directory"],
        )
        .file("d/keep", vec![1])
        .link("out.so", "d"),
        k(
            "out_link_loop",
            &["build", "model.kir", "-o", "out.so"],
            &["out.so"],
        )
        .link("out.so", "out.so"),
        k(
            "out_directory",
            &["build", "model.kir", "-o", "d"],
            &["d", "directory"],
        )
        .file("d/keep", vec![1]),
        k(
            "out_missing_dir",
            &["build", "model.kir", "-o", "no/such/dir/out.so"],
            &["no/such/dir"],
        ),
        k(
            "out_npy_link_to_dev_null",
            &["run", "model.kir", "--input", "x.npy", "--output-dir", "o"],
            &["y.npy", "not a regular file"],
        )
        .file("x.npy", npy("<f4", "(1, 2, 4, 4)", &f32b(&[0.5; 32])))
        .link("o/y.npy", "/dev/null"),
        k(
            "cli_unknown_extension",
            &["build", "model.xyz", "-o", "out.so"],
            &["model.xyz"],
        )
        .file("model.xyz", b"x".to_vec()),
        k(
            "cli_missing_model",
            &["build", "missing.onnx", "-o", "out.so"],
            &["missing.onnx"],
        ),
        k(
            "cli_model_is_directory",
            &["build", "dir.onnx", "-o", "out.so"],
            &["dir.onnx"],
        )
        .file("dir.onnx/x", vec![1]),
        k(
            "cli_bad_target_cpu",
            &[
                "build",
                "model.kir",
                "--target-cpu",
                "pentium-9000",
                "-o",
                "out.so",
            ],
            &["pentium-9000"],
        ),
        k(
            "cli_bad_target",
            &[
                "build",
                "model.kir",
                "--target",
                "nonsense-cpu-os",
                "-o",
                "out.so",
            ],
            &["nonsense-cpu-os"],
        ),
    ]
}

// ---------------------------------------------------------------------------------------------
// Ascend AIR (a GraphEngine ModelDef) and OM (the offline-model container around one)

use ge::attr_def::Value as GeAv;
use kiln_compiler::air::proto as ge;

/// The conv + relu model as kiln loads it.
fn conv_ir() -> kiln_ir::Graph {
    kiln_compiler::onnx::load_bytes(&enc(conv_graph()), None, "m.onnx", &Default::default())
        .unwrap()
}

/// The conv + relu model as an AIR ModelDef (kiln's writer, as MindSpore's exporter writes).
pub fn air_model() -> ge::ModelDef {
    kiln_compiler::air::export::export(&conv_ir()).unwrap()
}

fn ge_ints(v: &[i64]) -> ge::AttrDef {
    ge::AttrDef {
        value: Some(GeAv::List(ge::attr_def::ListValue {
            i: v.to_vec(),
            val_type: 2,
            ..Default::default()
        })),
    }
}

/// The index of the first op of type `t` in the main graph.
fn ge_op(m: &ge::ModelDef, t: &str) -> usize {
    m.graph[0].op.iter().position(|o| o.r#type == t).unwrap()
}

/// The first constant's tensor (`Const` op with inline data).
fn ge_const(m: &mut ge::ModelDef) -> (&mut ge::OpDef, usize) {
    let k = m.graph[0]
        .op
        .iter()
        .position(|o| o.r#type == "Const" || o.r#type == "Constant")
        .unwrap();
    (&mut m.graph[0].op[k], k)
}

fn air_mutated(f: impl FnOnce(&mut ge::ModelDef)) -> Vec<u8> {
    let mut m = air_model();
    f(&mut m);
    m.encode_to_vec()
}

/// `len` 1 + a chain of sub-graphs: the main graph calls `g0` twice (on x, then on the first
/// call's result), `gk` calls `gk+1` twice, `depth` levels: inlining would give 2^depth ops.
fn air_call_bomb(depth: usize) -> Vec<u8> {
    let mut m = air_model();
    let main = &mut m.graph[0];
    let relu = main.op.iter().position(|o| o.r#type == "Relu").unwrap();
    let data = main.op.iter().position(|o| o.r#type == "Data").unwrap();
    let data_name = main.op[data].name.clone();
    let desc = main.op[data]
        .output_desc
        .first()
        .cloned()
        .unwrap_or_default();
    // the relu reads a call chain instead of the conv
    let call = |name: &str, input: &str, sub: &str| ge::OpDef {
        name: name.into(),
        r#type: "PartitionedCall".into(),
        input: vec![input.into()],
        input_desc: vec![desc.clone()],
        output_desc: vec![desc.clone()],
        subgraph_name: vec![sub.into()],
        ..Default::default()
    };
    main.op
        .push(call("call_a", &format!("{data_name}:0"), "g0"));
    main.op.push(call("call_b", "call_a:0", "g0"));
    main.op[relu].input[0] = "call_b:0".into();
    // (the conv now feeds nothing; the relu's shape is the input's, [1, 2, 4, 4] -> the net
    // output type changes, which the importer only sees after inlining)
    for k in 0..depth {
        let sub = if k + 1 < depth {
            format!("g{}", k + 1)
        } else {
            String::new()
        };
        let d = ge::OpDef {
            name: "x".into(),
            r#type: "Data".into(),
            attr: [(
                "index".to_string(),
                ge::AttrDef {
                    value: Some(GeAv::I(0)),
                },
            )]
            .into(),
            output_desc: vec![desc.clone()],
            ..Default::default()
        };
        let mut ops = vec![d];
        if sub.is_empty() {
            ops.push(ge::OpDef {
                name: "r".into(),
                r#type: "Relu".into(),
                input: vec!["x:0".into()],
                input_desc: vec![desc.clone()],
                output_desc: vec![desc.clone()],
                ..Default::default()
            });
        } else {
            ops.push(call("a", "x:0", &sub));
            ops.push(call("r", "a:0", &sub));
        }
        ops.push(ge::OpDef {
            name: "out".into(),
            r#type: "NetOutput".into(),
            input: vec!["r:0".into()],
            input_desc: vec![desc.clone()],
            ..Default::default()
        });
        m.graph.push(ge::GraphDef {
            name: format!("g{k}"),
            op: ops,
            ..Default::default()
        });
    }
    m.encode_to_vec()
}

fn air_cases() -> Vec<Case> {
    let mut v = Vec::new();
    let f = "model.air";
    let ok = air_model().encode_to_vec();
    v.push(build("air_empty", f, vec![], &[]));
    v.push(build("air_noise", f, noise(21, 3000), &[]));
    v.push(build(
        "air_truncated_half",
        f,
        ok[..ok.len() / 2].to_vec(),
        &[],
    ));
    v.push(build(
        "air_no_graph",
        f,
        ge::ModelDef {
            name: "m".into(),
            ..Default::default()
        }
        .encode_to_vec(),
        &["no graph"],
    ));
    v.push(build(
        "air_dangling_edge",
        f,
        air_mutated(|m| {
            let c = ge_op(m, "Conv2D");
            m.graph[0].op[c].input[1] = "nope:0".into();
        }),
        &["nope"],
    ));
    v.push(build(
        "air_hostile_name_dangling",
        f,
        air_mutated(|m| {
            let c = ge_op(m, "Conv2D");
            m.graph[0].op[c].input[1] = "a'\"*/../b:0".into();
        }),
        &["a'\"*/../b"],
    ));
    v.push(build(
        "air_output_index",
        f,
        air_mutated(|m| {
            let c = ge_op(m, "Conv2D");
            let r = ge_op(m, "Relu");
            let conv = m.graph[0].op[c].name.clone();
            m.graph[0].op[r].input[0] = format!("{conv}:7");
        }),
        &["no output 7"],
    ));
    v.push(build(
        "air_cycle",
        f,
        air_mutated(|m| {
            let c = ge_op(m, "Conv2D");
            let r = ge_op(m, "Relu");
            let relu = m.graph[0].op[r].name.clone();
            m.graph[0].op[c].input[0] = format!("{relu}:0");
        }),
        &["cycle"],
    ));
    v.push(build(
        "air_self_call",
        f,
        air_mutated(|m| {
            let r = ge_op(m, "Relu");
            let g = m.graph[0].name.clone();
            let op = &mut m.graph[0].op[r];
            op.r#type = "PartitionedCall".into();
            op.subgraph_name = vec![g];
        }),
        &["calls itself"],
    ));
    v.push(build(
        "air_call_bomb",
        f,
        air_call_bomb(40),
        &["inline more than"],
    ));
    v.push(build(
        "air_dtype_99",
        f,
        air_mutated(|m| {
            let (op, _) = ge_const(m);
            if let Some(GeAv::T(t)) = op.attr.get_mut("value").and_then(|a| a.value.as_mut()) {
                t.desc.as_mut().unwrap().dtype = 99;
            }
        }),
        &["99"],
    ));
    for (name, dims) in [
        ("air_const_dims_overflow", vec![1i64 << 40, 1 << 40]),
        ("air_const_negative_dim", vec![3, -2, 3, 3]),
        ("air_const_short_data", vec![64, 64, 3, 3]),
        ("air_const_rank_40", vec![1; 40]),
    ] {
        v.push(build(
            name,
            f,
            air_mutated(|m| {
                let (op, _) = ge_const(m);
                if let Some(GeAv::T(t)) = op.attr.get_mut("value").and_then(|a| a.value.as_mut()) {
                    t.desc.as_mut().unwrap().shape = Some(ge::ShapeDef { dim: dims.clone() });
                }
                for d in &mut op.output_desc {
                    d.shape = Some(ge::ShapeDef { dim: dims.clone() });
                }
            }),
            &[],
        ));
    }
    for (name, dims) in [
        ("air_data_negative_dim", vec![1i64, -7, 4, 4]),
        ("air_data_dims_overflow", vec![1 << 62, 1 << 62, 4, 4]),
        ("air_data_rank_40", vec![1; 40]),
    ] {
        v.push(build(
            name,
            f,
            air_mutated(|m| {
                let d = ge_op(m, "Data");
                let op = &mut m.graph[0].op[d];
                for t in op.input_desc.iter_mut().chain(op.output_desc.iter_mut()) {
                    t.shape = Some(ge::ShapeDef { dim: dims.clone() });
                }
            }),
            &[],
        ));
    }
    for (name, pads) in [
        ("air_conv_pads_2_31", vec![1i64 << 31; 4]),
        ("air_conv_pads_i64_max", vec![i64::MAX; 4]),
        ("air_conv_pads_negative", vec![-9; 4]),
    ] {
        v.push(build(
            name,
            f,
            air_mutated(|m| {
                let c = ge_op(m, "Conv2D");
                let op = &mut m.graph[0].op[c];
                op.attr.insert("pads".into(), ge_ints(&pads));
                op.attr.insert(
                    "padding".into(),
                    ge::AttrDef {
                        value: Some(GeAv::S("CALCULATED".into())),
                    },
                );
            }),
            &[],
        ));
    }
    v.push(build(
        "air_conv_strides_zero",
        f,
        air_mutated(|m| {
            let c = ge_op(m, "Conv2D");
            m.graph[0].op[c]
                .attr
                .insert("strides".into(), ge_ints(&[1, 1, 0, 0]));
        }),
        &[],
    ));
    v.push(build(
        "air_unsupported_op",
        f,
        air_mutated(|m| {
            let c = ge_op(m, "Conv2D");
            m.graph[0].op[c].r#type = "Conv2DFancy".into();
        }),
        &["Conv2DFancy"],
    ));
    // external weights: missing, escaping, absolute, too short
    for (name, loc, extra) in [
        ("air_external_missing", "w/missing.bin", None),
        ("air_external_escaping", "../outside.bin", None),
        ("air_external_absolute", "/etc/passwd", None),
        ("air_external_short", "w.bin", Some(vec![0u8; 10])),
    ] {
        let mut c = build(
            name,
            f,
            air_mutated(|m| {
                let (op, _) = ge_const(m);
                if let Some(GeAv::T(t)) = op.attr.get_mut("value").and_then(|a| a.value.as_mut()) {
                    t.data = Default::default();
                }
                op.attr.insert(
                    "location".into(),
                    ge::AttrDef {
                        value: Some(GeAv::S(loc.as_bytes().to_vec().into())),
                    },
                );
            }),
            &[],
        );
        if let Some(b) = extra {
            c = c.file(loc, b);
        }
        v.push(c);
    }
    v.push(inspect("air_inspect_noise", f, noise(22, 500), &[]));
    v.push(inspect(
        "air_inspect_truncated",
        f,
        ok[..ok.len() / 3].to_vec(),
        &[],
    ));
    v
}

/// The conv + relu model as kiln's OM (`kiln build --emit om`): header, partition table
/// (MODEL_INOUT_INFO, MODEL_DEF, WEIGHTS_DATA, TASK_INFO), partitions.
pub fn om_model() -> Vec<u8> {
    let dir = std::env::temp_dir().join(format!("kiln-hostile-om-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("m.om");
    kiln_compiler::pipeline::emit_om(&conv_ir(), &p, "m", &Default::default()).unwrap();
    let b = std::fs::read(&p).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    b
}

/// (type, offset, size) of each partition-table entry of an OM with a 64-bit table.
fn om_table(b: &[u8]) -> Vec<(u32, u64, u64)> {
    let n = u32::from_le_bytes(b[256..260].try_into().unwrap()) as usize;
    (0..n)
        .map(|k| {
            let e = 264 + 24 * k;
            (
                u32::from_le_bytes(b[e..e + 4].try_into().unwrap()),
                u64::from_le_bytes(b[e + 8..e + 16].try_into().unwrap()),
                u64::from_le_bytes(b[e + 16..e + 24].try_into().unwrap()),
            )
        })
        .collect()
}

fn om_cases() -> Vec<Case> {
    let mut v = Vec::new();
    let f = "model.om";
    let ok = om_model();
    let table = om_table(&ok);
    let entry = |kind: u32| 264 + 24 * table.iter().position(|e| e.0 == kind).unwrap();
    let body = (ok.len() - 256) as u64;
    let put32 = |off: usize, val: u32| {
        let mut b = ok.clone();
        b[off..off + 4].copy_from_slice(&val.to_le_bytes());
        b
    };
    let put64 = |off: usize, val: u64| {
        let mut b = ok.clone();
        b[off..off + 8].copy_from_slice(&val.to_le_bytes());
        b
    };
    let (md, w) = (0u32, 1u32); // MODEL_DEF, WEIGHTS_DATA
    v.push(build("om_empty", f, vec![], &[]));
    v.push(build("om_noise", f, noise(23, 4000), &[]));
    v.push(build("om_header_only", f, ok[..256].to_vec(), &[]));
    v.push(build("om_bad_magic", f, put32(0, 0x1234_5678), &["magic"]));
    v.push(build("om_header_size", f, put32(4, 255), &["header size"]));
    v.push(build("om_version", f, put32(8, 0x7000_0000), &["version"]));
    v.push(build(
        "om_model_type",
        f,
        put32(80, 0x0009_0000),
        &["model type"],
    ));
    v.push(build("om_model_length", f, put64(184, body + 1), &[]));
    v.push(build("om_model_num", f, put32(156, 1000), &["model_num"]));
    v.push(build("om_no_partitions", f, put32(256, 0), &["partition"]));
    v.push(build(
        "om_partition_count",
        f,
        put32(256, 0xffff_ffff),
        &["partition"],
    ));
    v.push(build(
        "om_table_padding",
        f,
        put32(entry(md) + 4, 1),
        &["padding"],
    ));
    let (_, md_off, md_len) = table[table.iter().position(|e| e.0 == md).unwrap()];
    v.push(build(
        "om_overlap",
        f,
        put64(entry(w) + 8, md_off + md_len - 16),
        &[],
    ));
    v.push(build(
        "om_past_end",
        f,
        put64(entry(w) + 16, body * 4),
        &["past the end"],
    ));
    v.push(build(
        "om_offset_overflow",
        f,
        put64(entry(w) + 8, u64::MAX - 8),
        &["overflow"],
    ));
    v.push(build(
        "om_size_overflow",
        f,
        put64(entry(md) + 16, u64::MAX),
        &["overflow"],
    ));
    v.push(build(
        "om_duplicate_type",
        f,
        put32(entry(w), md),
        &["twice"],
    ));
    let mut b = ok[..ok.len() - 100].to_vec();
    let len = (b.len() - 256) as u64;
    b[184..192].copy_from_slice(&len.to_le_bytes());
    v.push(build("om_truncated", f, b, &[]));
    let mut b = ok.clone();
    let md0 = 256 + 8 + 24 * table.len() + md_off as usize;
    for x in &mut b[md0..md0 + 64.min(md_len as usize)] {
        *x = 0xff;
    }
    v.push(build("om_model_def_not_protobuf", f, b, &["MODEL_DEF"]));
    // containers around hostile graphs and weights
    let part = |kind: u32| {
        let (_, off, len) = table[table.iter().position(|e| e.0 == kind).unwrap()];
        let at = 256 + 8 + 24 * table.len() + off as usize;
        ok[at..at + len as usize].to_vec()
    };
    let ge_md = <ge::ModelDef as Message>::decode(&part(md)[..]).unwrap();
    let weights = part(w);
    let om = |m: &ge::ModelDef, parts: &[(u32, &[u8])]| {
        let mdb = m.encode_to_vec();
        let mut all = vec![(md, &mdb[..])];
        all.extend_from_slice(parts);
        kiln_target_om::om::container("m", Default::default(), &all).unwrap()
    };
    v.push(build(
        "om_no_model_def",
        f,
        kiln_target_om::om::container("m", Default::default(), &[(w, &weights)]).unwrap(),
        &["MODEL_DEF"],
    ));
    let mut far = ge_md.clone();
    let mut moved = false;
    for o in &mut far.graph[0].op {
        if let Some(GeAv::T(t)) = o.attr.get_mut("value").and_then(|a| a.value.as_mut())
            && t.data.is_empty()
            && !moved
        {
            t.desc.as_mut().unwrap().data_offset = 1 << 40;
            moved = true;
        }
    }
    v.push(build(
        "om_weights_outside",
        f,
        om(&far, &[(w, &weights)]),
        &["WEIGHTS_DATA"],
    ));
    v.push(build("om_weights_missing", f, om(&ge_md, &[]), &[]));
    let mut dangling = ge_md.clone();
    let c = dangling.graph[0]
        .op
        .iter()
        .position(|o| !o.input.is_empty() && o.r#type != "NetOutput")
        .unwrap();
    dangling.graph[0].op[c].input[0] = "nope:0".into();
    v.push(build(
        "om_dangling_edge",
        f,
        om(&dangling, &[(w, &weights)]),
        &["nope"],
    ));
    v.push(inspect("om_inspect_noise", f, noise(24, 600), &[]));
    v.push(inspect("om_inspect_truncated", f, ok[..300].to_vec(), &[]));
    v.push(inspect(
        "om_inspect_partition_count",
        f,
        put32(256, 0xffff_ffff),
        &["partition"],
    ));
    v
}

/// Every case of the corpus, with unique names.
pub fn cases() -> Vec<Case> {
    let mut v = Vec::new();
    v.extend(onnx_cases());
    v.extend(kir_cases());
    v.extend(ckpt_cases());
    v.extend(mindir_cases());
    v.extend(air_cases());
    v.extend(om_cases());
    v.extend(npy_cases());
    v.extend(fusion_cases());
    v.extend(output_cases());
    v
}

// ---------------------------------------------------------------------------------------------
// fuzzing seeds

/// Seeds for the fuzz targets (`fuzz/`): valid small files of each format, and every corpus
/// case's file of that format. `(target, name, bytes)`.
pub fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
    let mut v: Vec<(&'static str, String, Vec<u8>)> = Vec::new();
    // valid models
    v.push(("onnx", "conv".into(), enc(conv_graph())));
    let x4 = || vi("x", F32, &[4]);
    for (name, bytes) in [
        (
            "gather",
            one_node("Gather", "g", x4(), vec![ti64("i", &[2], &[1, -1])], vec![]),
        ),
        (
            "expand",
            one_node(
                "Expand",
                "e",
                vi("x", F32, &[1]),
                vec![ti64("s", &[2], &[2, 3])],
                vec![],
            ),
        ),
        (
            "div",
            one_node(
                "Div",
                "d",
                vi("x", I32, &[2]),
                vec![ti32("z", &[2], &[3, 2])],
                vec![],
            ),
        ),
        (
            "pool",
            one_node(
                "MaxPool",
                "p",
                vi("x", F32, &[1, 1, 4, 4]),
                vec![],
                vec![ais("kernel_shape", &[2, 2])],
            ),
        ),
        (
            "softmax",
            one_node("Softmax", "s", x4(), vec![], vec![ai("axis", 0)]),
        ),
    ] {
        v.push(("onnx", name.into(), bytes));
    }
    v.push(("kir", "small".into(), KIR_OK.as_bytes().to_vec()));
    let ok_ckpt = kiln_compiler::mindspore::ckpt::write_protobuf(
        &[
            ("conv.weight", "Float32", &[3, 2, 1, 1], &f32b(&[1.0; 6])),
            ("step", "Int64", &[1], &7i64.to_le_bytes()),
        ],
        2,
        true,
    );
    let key = DecryptKey::from_bytes(b"0123456789ABCDEF").unwrap();
    v.push(("ckpt", "ok".into(), ok_ckpt.clone()));
    v.push((
        "ckpt",
        "gcm".into(),
        crypto::encrypt(&ok_ckpt, &key, true, [1; 16], 40).unwrap(),
    ));
    v.push((
        "ckpt",
        "cbc".into(),
        crypto::encrypt(&ok_ckpt, &key, false, [2; 16], 40).unwrap(),
    ));
    // safetensors target: [bytes of data after the header] + header + data
    let header = r#"{"__metadata__":{"format":"ms"},"a.weight":{"dtype":"F32","shape":[3],"data_offsets":[0,12]},"b":{"dtype":"I64","shape":[],"data_offsets":[12,20]}}"#;
    let mut st = vec![20u8];
    st.extend_from_slice(header.as_bytes());
    st.extend_from_slice(&f32b(&[1.0, 2.0, 3.0]));
    st.extend_from_slice(&5i64.to_le_bytes());
    v.push(("safetensors", "ok".into(), st));
    let ok_mindir = mindir(&[2, 3], mi_param(&[2, 3]), add_node()).encode_to_vec();
    v.push(("mindir", "add".into(), ok_mindir.clone()));
    v.push(("air", "conv".into(), air_model().encode_to_vec()));
    v.push(("om", "conv".into(), om_model()));
    let mut plain = vec![1u8];
    plain.extend_from_slice(&ok_mindir);
    v.push(("mindir_encrypted", "plain_gcm".into(), plain.clone()));
    plain[0] = 3;
    v.push(("mindir_encrypted", "plain_cbc".into(), plain));
    let mut framed = vec![0u8];
    framed.extend(crypto::encrypt(&ok_mindir, &key, true, [3; 16], 64).unwrap());
    v.push(("mindir_encrypted", "framed_gcm".into(), framed));
    for (name, descr, shape, data) in [
        ("f32", "<f4", "(1, 2, 4, 4)", f32b(&[0.5; 32])),
        (
            "i64",
            "<i8",
            "(2,)",
            [1i64.to_le_bytes(), 2i64.to_le_bytes()].concat(),
        ),
        ("bool", "|b1", "()", vec![1]),
        ("f16", "<f2", "(0, 3)", vec![]),
    ] {
        v.push(("npy", name.into(), npy(descr, shape, &data)));
    }
    v.push((
        "fusion_switch",
        "ok".into(),
        br#"{"fuse_conv_activation": "off", "layout_nchwc": "on"}"#.to_vec(),
    ));
    // every corpus file, by format
    for c in cases() {
        for (path, bytes) in &c.files {
            let target = match path.rsplit('.').next() {
                Some("onnx") => "onnx",
                Some("kir") => "kir",
                Some("ckpt") => "ckpt",
                Some("mindir") => "mindir",
                Some("air") => "air",
                Some("om") => "om",
                Some("npy") => "npy",
                Some("json") => "fusion_switch",
                Some("safetensors") => {
                    // as the safetensors target takes it: drop the length prefix
                    if bytes.len() >= 8 {
                        let mut s = vec![255u8];
                        s.extend_from_slice(&bytes[8..]);
                        v.push(("safetensors", c.name.clone(), s));
                    }
                    continue;
                }
                _ => continue,
            };
            v.push((target, c.name.clone(), bytes.clone()));
        }
    }
    v
}

/// `y = OneHot(i, depth 4, [off, on] = [0, 1])` on i64 indices `i[3]` (a graph input): ONNX
/// defines an index outside `[-depth, depth)` to give an all-`off` row.
pub fn one_hot_model() -> Vec<u8> {
    enc(graph(
        vec![node("OneHot", "oh", &["i", "depth", "v"], &["y"], vec![])],
        vec![vi("i", I64, &[3])],
        vec![out("y")],
        vec![ti64("depth", &[], &[4]), tf32("v", &[2], &[0.0, 1.0])],
    ))
}
