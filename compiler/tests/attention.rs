//! Attention / RotaryEmbedding lowering cases the ONNX node tests do not cover: a causal mask
//! combined with a bool mask over a KV cache with grouped heads, the constant-folded and
//! constant-one-hot paths of RotaryEmbedding, and precise errors for unsupported attributes.
//! Graphs run in the reference interpreter and are compared with direct implementations.

use kiln_compiler::onnx::proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
    tensor_shape_proto::{Dimension, dimension},
    type_proto,
};
use kiln_compiler::onnx::{OnnxOptions, load_bytes};
use kiln_ir::Graph;
use kiln_ir::interp::{Tensor, run};
use prost::Message;

const F32: i32 = 1;
const I64: i32 = 7;
const BOOL: i32 = 9;

fn vi(name: &str, elem: i32, dims: &[i64]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&v| Dimension {
            value: Some(dimension::Value::DimValue(v)),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
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

fn ai(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        i: Some(v),
        r#type: Some(2),
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

fn model(
    op: &str,
    ins: &[&str],
    outs: &[&str],
    attrs: Vec<AttributeProto>,
    inputs: Vec<ValueInfoProto>,
    inits: Vec<TensorProto>,
) -> ModelProto {
    let g = GraphProto {
        name: Some("g".into()),
        node: vec![NodeProto {
            op_type: Some(op.into()),
            name: Some("n".into()),
            input: ins.iter().map(|s| s.to_string()).collect(),
            output: outs.iter().map(|s| s.to_string()).collect(),
            attribute: attrs,
            ..Default::default()
        }],
        input: inputs,
        initializer: inits,
        output: outs
            .iter()
            .filter(|o| !o.is_empty())
            .map(|o| ValueInfoProto {
                name: Some(o.to_string()),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    ModelProto {
        ir_version: Some(9),
        opset_import: vec![OperatorSetIdProto {
            domain: Some(String::new()),
            version: Some(23),
        }],
        graph: Some(g),
        ..Default::default()
    }
}

fn load(m: &ModelProto) -> Result<Graph, String> {
    let g = load_bytes(&m.encode_to_vec(), None, "t.onnx", &OnnxOptions::default())
        .map_err(|e| e.to_string())?;
    kiln_ir::verify::verify(&g).expect("loaded graph verifies");
    Ok(g)
}

fn vals(n: usize, seed: u32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(2654435761).wrapping_add(12345);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1103515245).wrapping_add(12345);
            ((s >> 8) % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

fn close(got: &[f32], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= 1e-5 + 1e-4 * w.abs(),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

/// 3-D GQA attention (4 query heads on 2 KV heads) over a 2-token KV cache, with a bool mask
/// and `is_causal` together: the causal mask is offset by the past length.
#[test]
fn causal_bool_mask_gqa_with_past() {
    let (s, l, p, hq, hkv, d, dv) = (2usize, 3usize, 2usize, 4usize, 2usize, 3usize, 2usize);
    let t = p + l;
    let q = vals(s * hq * d, 1);
    let k = vals(l * hkv * d, 2);
    let v = vals(l * hkv * dv, 3);
    let pk = vals(hkv * p * d, 4);
    let pv = vals(hkv * p * dv, 5);
    // row 0 may see columns 0..=2 (causal), row 1 columns 0..=3; the mask hides (0,1), (1,0).
    let mask: Vec<bool> = (0..s * t)
        .map(|i| !matches!((i / t, i % t), (0, 1) | (1, 0)))
        .collect();
    let m = model(
        "Attention",
        &["Q", "K", "V", "M", "PK", "PV"],
        &["Y", "present_key", "present_value"],
        vec![
            ai("q_num_heads", 4),
            ai("kv_num_heads", 2),
            ai("is_causal", 1),
        ],
        vec![
            vi("Q", F32, &[1, s as i64, (hq * d) as i64]),
            vi("K", F32, &[1, l as i64, (hkv * d) as i64]),
            vi("V", F32, &[1, l as i64, (hkv * dv) as i64]),
            vi("M", BOOL, &[s as i64, t as i64]),
            vi("PK", F32, &[1, hkv as i64, p as i64, d as i64]),
            vi("PV", F32, &[1, hkv as i64, p as i64, dv as i64]),
        ],
        vec![],
    );
    let g = load(&m).unwrap();
    let outs = run(
        &g,
        &[
            Tensor::f32([1, s, hq * d], q.clone()),
            Tensor::f32([1, l, hkv * d], k.clone()),
            Tensor::f32([1, l, hkv * dv], v.clone()),
            Tensor::bool([s, t], mask.clone()),
            Tensor::f32([1, hkv, p, d], pk.clone()),
            Tensor::f32([1, hkv, p, dv], pv.clone()),
        ],
    )
    .unwrap();
    let kk = |h: usize, j: usize, e: usize| -> f64 {
        if j < p {
            pk[(h * p + j) * d + e] as f64
        } else {
            k[(j - p) * hkv * d + h * d + e] as f64
        }
    };
    let vv = |h: usize, j: usize, e: usize| -> f64 {
        if j < p {
            pv[(h * p + j) * dv + e] as f64
        } else {
            v[(j - p) * hkv * dv + h * dv + e] as f64
        }
    };
    let scale = 1.0 / (d as f64).sqrt();
    let mut want = vec![0f64; s * hq * dv];
    for h in 0..hq {
        let kh = h / (hq / hkv);
        for i in 0..s {
            let sc: Vec<f64> = (0..t)
                .map(|j| {
                    if !mask[i * t + j] || j > i + p {
                        f64::NEG_INFINITY
                    } else {
                        (0..d)
                            .map(|e| q[i * hq * d + h * d + e] as f64 * kk(kh, j, e))
                            .sum::<f64>()
                            * scale
                    }
                })
                .collect();
            let mx = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let ex: Vec<f64> = sc.iter().map(|x| (x - mx).exp()).collect();
            let sum: f64 = ex.iter().sum();
            for e in 0..dv {
                want[i * hq * dv + h * dv + e] =
                    (0..t).map(|j| ex[j] / sum * vv(kh, j, e)).sum::<f64>();
            }
        }
    }
    close(outs[0].as_f32().unwrap(), &want, "Y");
    assert_eq!(outs[1].shape, vec![1, hkv, t, d]);
    let pk_want: Vec<f64> = (0..hkv * t * d)
        .map(|i| kk(i / (t * d), i / d % t, i % d))
        .collect();
    close(outs[1].as_f32().unwrap(), &pk_want, "present_key");
    assert_eq!(outs[2].shape, vec![1, hkv, t, dv]);
}

/// RotaryEmbedding with position_ids given as a constant (one-hot constant; with constant
/// caches: folded) and as an input (one-hot built at run time) gives the same rotation.
#[test]
fn rotary_constant_and_dynamic_positions() {
    let (b, h, s, dh, maxp) = (1usize, 2usize, 3usize, 4usize, 5usize);
    let half = dh / 2;
    let x = vals(b * h * s * dh, 7);
    let cos = vals(maxp * half, 8);
    let sin = vals(maxp * half, 9);
    let pos = [4i64, 0, 2];
    let xin = vi("X", F32, &[b as i64, h as i64, s as i64, dh as i64]);
    let cache = |n: &str, v: &[f32]| tensor_f32(n, &[maxp as i64, half as i64], v);
    let cache_in = |n: &str| vi(n, F32, &[maxp as i64, half as i64]);
    let ins = ["X", "C", "S", "P"];
    let variants = [
        // constant positions, caches as inputs
        model(
            "RotaryEmbedding",
            &ins,
            &["Y"],
            vec![],
            vec![xin.clone(), cache_in("C"), cache_in("S")],
            vec![tensor_i64("P", &[1, 3], &pos)],
        ),
        // everything but X constant: the gather folds
        model(
            "RotaryEmbedding",
            &ins,
            &["Y"],
            vec![],
            vec![xin.clone()],
            vec![
                cache("C", &cos),
                cache("S", &sin),
                tensor_i64("P", &[1, 3], &pos),
            ],
        ),
        // positions as an input
        model(
            "RotaryEmbedding",
            &ins,
            &["Y"],
            vec![],
            vec![
                xin.clone(),
                cache_in("C"),
                cache_in("S"),
                vi("P", I64, &[1, 3]),
            ],
            vec![],
        ),
    ];
    let mut want = vec![0f64; x.len()];
    for hh in 0..h {
        for (i, &pi) in pos.iter().enumerate() {
            let row = pi as usize;
            let base = (hh * s + i) * dh;
            for j in 0..half {
                let (c, sn) = (cos[row * half + j] as f64, sin[row * half + j] as f64);
                let (x1, x2) = (x[base + j] as f64, x[base + half + j] as f64);
                want[base + j] = c * x1 - sn * x2;
                want[base + half + j] = sn * x1 + c * x2;
            }
        }
    }
    for (k, m) in variants.iter().enumerate() {
        let g = load(m).unwrap();
        let mut inputs = vec![Tensor::f32([b, h, s, dh], x.clone())];
        if k != 1 {
            inputs.push(Tensor::f32([maxp, half], cos.clone()));
            inputs.push(Tensor::f32([maxp, half], sin.clone()));
        }
        if k == 2 {
            inputs.push(Tensor::i64([1, 3], pos.to_vec()));
        }
        let outs = run(&g, &inputs).unwrap();
        close(outs[0].as_f32().unwrap(), &want, &format!("variant {k}"));
    }
}

#[test]
fn unsupported_attributes_are_precise_errors() {
    let qkv = |extra: Vec<AttributeProto>| {
        model(
            "Attention",
            &["Q", "K", "V"],
            &["Y"],
            extra,
            vec![
                vi("Q", F32, &[1, 2, 2, 4]),
                vi("K", F32, &[1, 2, 3, 4]),
                vi("V", F32, &[1, 2, 3, 4]),
            ],
            vec![],
        )
    };
    let e = load(&qkv(vec![ai("qk_matmul_output_mode", 4)])).unwrap_err();
    assert!(
        e.contains("Attention: qk_matmul_output_mode=4 not supported"),
        "{e}"
    );
    let e = load(&qkv(vec![af("softcap", -1.0)])).unwrap_err();
    assert!(e.contains("Attention: softcap=-1 not supported"), "{e}");
    let e = load(&qkv(vec![ai("softmax_precision", 7)])).unwrap_err();
    assert!(
        e.contains("Attention: softmax_precision=7 not supported"),
        "{e}"
    );
    // 3-D inputs need the head counts
    let m = model(
        "Attention",
        &["Q", "K", "V"],
        &["Y"],
        vec![],
        vec![
            vi("Q", F32, &[1, 2, 8]),
            vi("K", F32, &[1, 3, 8]),
            vi("V", F32, &[1, 3, 8]),
        ],
        vec![],
    );
    let e = load(&m).unwrap_err();
    assert!(
        e.contains("3-D inputs need the q_num_heads attribute"),
        "{e}"
    );
}
