//! Text form: printer/parser round trip, error reporting, robustness against garbage.

use kiln_ir::ops::*;
use kiln_ir::text::{parse, print, print_with_limit};
use kiln_ir::{ConstData, DType, Graph, IrError, Layout, Op, QuantParams, TensorType, ValueDef};

fn conv(k: usize, pads: usize) -> Op {
    Op::Conv(ConvAttrs {
        kernel: vec![k, k],
        strides: vec![1, 1],
        pads: vec![pads; 4],
        dilations: vec![1, 1],
        groups: 1,
        epilogue: Vec::new(),
        layout: kiln_ir::Layout::Plain,
    })
}

fn sample() -> Graph {
    let mut g = Graph::new("sample");
    let x = g.add_input("x", TensorType::f32([1, 2, 4, 4]));
    let w: Vec<f32> = (0..36).map(|i| i as f32 * 0.1 - 1.7).collect();
    let w = g
        .add_const(
            "conv1/w:0",
            TensorType::f32([2, 2, 3, 3]),
            ConstData::from_f32(&w),
        )
        .unwrap();
    let b = g
        .add_const(
            "b",
            TensorType::f32([2]),
            ConstData::from_f32(&[0.1, f32::NEG_INFINITY]),
        )
        .unwrap();
    let y = g
        .add_node("conv1", conv(3, 1), vec![x, w, b], vec!["y".into()])
        .unwrap();
    let ab = g
        .add_node(
            "a",
            Op::Split {
                axis: 1,
                sizes: vec![1, 1],
            },
            y.clone(),
            vec!["a".into(), "b.1".into()],
        )
        .unwrap();
    let r = g
        .add_node(
            "reshape \"q\"",
            Op::Reshape { shape: vec![1, 16] },
            vec![ab[0]],
            vec!["r".into()],
        )
        .unwrap();
    let c = g
        .add_node(
            "clip",
            Op::Clip {
                min: f32::NEG_INFINITY,
                max: 6.0,
            },
            r,
            vec!["c".into()],
        )
        .unwrap();
    let rs = g
        .add_node(
            "rs",
            Op::Resize(ResizeAttrs {
                mode: ResizeMode::Linear,
                coord: CoordTransform::HalfPixel,
                nearest: NearestMode::RoundPreferFloor,
                scales: vec![1.0, 1.0, 2.0, 2.0],
                out_shape: vec![1, 1, 8, 8],
            }),
            vec![ab[1]],
            vec!["rs".into()],
        )
        .unwrap();
    let _ = g
        .add_const(
            "idx",
            TensorType::new(DType::I64, [3]),
            ConstData::from_i64(&[-1, 0, i64::MAX]),
        )
        .unwrap();
    let _ = g
        .add_const(
            "mask",
            TensorType::new(DType::Bool, [2]),
            ConstData::from_vec(vec![1, 0]),
        )
        .unwrap();
    let _ = g
        .add_const(
            "half",
            TensorType::new(DType::F16, [2]),
            ConstData::from_vec(vec![0, 0x3c, 0, 0xc0]),
        )
        .unwrap();
    let _ = g
        .add_const(
            "nan",
            TensorType::f32([2]),
            ConstData::from_f32(&[f32::from_bits(0x7fc0_1234), -0.0]),
        )
        .unwrap();
    let _ = g
        .add_const(
            "scalar",
            TensorType::f32(vec![]),
            ConstData::from_f32(&[1e-7]),
        )
        .unwrap();
    let mut qty = TensorType::new(DType::U8, [2]);
    qty.quant = Some(QuantParams {
        scale: vec![0.1, 0.25],
        zero_point: vec![3, -4],
        axis: Some(0),
    });
    let q = g.add_input("q in", qty);
    // layouts: a plain input relaid out, an op on the blocked value, back to plain
    let l = g.add_input("l", TensorType::f32([1, 8, 2, 2]));
    let lb = g
        .add_node(
            "lb",
            Op::Relayout {
                to: Layout::Nchwc(8),
            },
            vec![l],
            vec!["lb".into()],
        )
        .unwrap();
    assert_eq!(g.ty(lb[0]).layout, Layout::Nchwc(8));
    let lrb = g
        .add_node("lrb", Op::Unary(UnaryOp::Relu), lb, vec!["lrb".into()])
        .unwrap();
    let lr = g
        .add_node(
            "lr",
            Op::Relayout { to: Layout::Plain },
            lrb,
            vec!["lr".into()],
        )
        .unwrap();
    g.outputs = vec![c[0], rs[0], ab[1], q, lr[0], b];
    kiln_ir::verify::verify(&g).unwrap();
    g
}

/// Structural equality: names, ops, types, constant bytes, inputs and outputs.
fn assert_same(a: &Graph, b: &Graph) {
    assert_eq!(a.name, b.name);
    let name = |g: &Graph, v: kiln_ir::ValueId| g.value(v).name.clone();
    let ins = |g: &Graph| g.inputs.iter().map(|&v| name(g, v)).collect::<Vec<_>>();
    let outs = |g: &Graph| g.outputs.iter().map(|&v| name(g, v)).collect::<Vec<_>>();
    assert_eq!(ins(a), ins(b));
    assert_eq!(outs(a), outs(b));
    let mut av: Vec<_> = a.values.iter().collect();
    let mut bv: Vec<_> = b.values.iter().collect();
    av.sort_by(|x, y| x.name.cmp(&y.name));
    bv.sort_by(|x, y| x.name.cmp(&y.name));
    assert_eq!(av.len(), bv.len());
    for (x, y) in av.iter().zip(&bv) {
        assert_eq!(x.name, y.name);
        assert_eq!(x.ty, y.ty, "type of {}", x.name);
        match (&x.def, &y.def) {
            (ValueDef::Const(p), ValueDef::Const(q)) => {
                assert_eq!(p.bytes(), q.bytes(), "bytes of {}", x.name)
            }
            (ValueDef::Input, ValueDef::Input) | (ValueDef::Node(..), ValueDef::Node(..)) => {}
            _ => panic!("definition of {} differs", x.name),
        }
    }
    let an: Vec<_> = a.iter_nodes().map(|(_, n)| n).collect();
    let bn: Vec<_> = b.iter_nodes().map(|(_, n)| n).collect();
    assert_eq!(an.len(), bn.len());
    for (x, y) in an.iter().zip(&bn) {
        assert_eq!(x.name, y.name);
        assert_eq!(x.op, y.op);
        let nm =
            |g: &Graph, v: &[kiln_ir::ValueId]| v.iter().map(|&i| name(g, i)).collect::<Vec<_>>();
        assert_eq!(nm(a, &x.inputs), nm(b, &y.inputs));
        assert_eq!(nm(a, &x.outputs), nm(b, &y.outputs));
    }
}

#[test]
fn round_trip() {
    let g = sample();
    let s = print(&g);
    let g2 = parse(&s).unwrap_or_else(|e| panic!("{e}\n{s}"));
    kiln_ir::verify::verify(&g2).unwrap();
    assert_same(&g, &g2);
    assert_eq!(print(&g2), s);
    // Spot-check the syntax.
    assert!(s.starts_with("graph sample {\n"), "{s}");
    assert!(
        s.contains("const %\"conv1/w:0\": f32[2,2,3,3] = hex\""),
        "{s}"
    );
    assert!(s.contains("const %b: f32[2] = [0.1, -inf]"), "{s}");
    assert!(
        s.contains("const %idx: i64[3] = [-1, 0, 9223372036854775807]"),
        "{s}"
    );
    assert!(s.contains("const %scalar: f32[] = [1e-7]"), "{s}");
    assert!(
        s.contains("%lb = relayout(%l) {to=\"nchw8c\"} : f32[1,8,2,2]@nchw8c\n"),
        "{s}"
    );
    assert!(
        s.contains("%lrb = relu(%lb) : f32[1,8,2,2]@nchw8c\n"),
        "{s}"
    );
    assert!(
        s.contains(
            "%a, %\"b.1\" = split(%y) {axis=1, sizes=[1, 1]} : f32[1,1,4,4], f32[1,1,4,4]\n"
        ),
        "{s}"
    );
    assert!(s.contains("#name \"reshape \\\"q\\\"\""), "{s}");
    assert!(s.contains("#name \"conv1\""), "{s}");
    assert!(s.ends_with("}\n"));
}

#[test]
fn parse_hand_written() {
    let s = r#"
// a comment
graph "my net" {
  input %x: f32[1,1,4,4]   // trailing comment
  const %w: f32[1,1,1,1] = [2]
  %y = conv(%x, %w) {groups=1, kernel=[1,1], strides=[1,1], pads=[0,0,0,0], dilations=[1,1]} : f32[1,1,4,4]
  %p = max_pool(%y) {kernel=[2,2], strides=[2,2], pads=[0,0,0,0], dilations=[1,1], ceil_mode=0} : f32[1,1,2,2]
  %s = cast(%p) {to="i64"} : i64[1,1,2,2]
  output %s
}
"#;
    let g = parse(s).unwrap();
    assert_eq!(g.name, "my net");
    assert_eq!(g.num_live_nodes(), 3);
    assert_eq!(g.ty(g.outputs[0]).dtype, DType::I64);
    let w = g.find_value("w").unwrap();
    assert_eq!(g.const_data(w).unwrap().to_f32(), vec![2.0]);
    let out = kiln_ir::interp::run(
        &g,
        &[kiln_ir::interp::Tensor::f32(
            vec![1, 1, 4, 4],
            (0..16).map(|i| i as f32).collect(),
        )],
    )
    .unwrap();
    assert_eq!(out[0].as_i64().unwrap(), &[10, 14, 26, 30]);
    // Canonical form re-parses to the same text.
    let p = print(&g);
    assert_eq!(print(&parse(&p).unwrap()), p);
}

fn err_line(s: &str) -> (usize, String) {
    match parse(s) {
        Err(IrError::Parse { line, msg }) => (line, msg),
        other => panic!("expected a parse error, got {other:?}"),
    }
}

#[test]
fn parse_errors_have_lines() {
    let base = |body: &str| format!("graph g {{\n  input %x: f32[2]\n{body}\n  output %x\n}}\n");
    let cases = [
        ("  %y = relu(%z) : f32[2]", "undefined"),
        ("  %y = relu(%x) : f32[3]", "declared"),
        ("  %y = relu(%x) : i64[2]", "declared"),
        ("  %y = frobnicate(%x) : f32[2]", "unknown op"),
        ("  %y = split(%x) {axis=0} : f32[2]", "sizes"),
        ("  %y = split(%x) {axis=0, sizes=[1,1]} : f32[1]", "outputs"),
        ("  %x = relu(%x) : f32[2]", "twice"),
        ("  const %c: f32[2] = [1.0]", "elements"),
        ("  const %c: f32[2] = hex\"0000\"", "bytes"),
        ("  const %c: f32[2] = hex\"zz\"", "hex"),
        ("  const %c: f32[2] = <elided 8 bytes>", "elided"),
        ("  const %c: q9[2] = [1, 2]", "element type"),
        ("  const %c: i8[2] = [1, 200]", "i8"),
        ("  input %q: f32[2]@weird", "layout"),
        ("  %y = relu(%x) : f32[2] extra", "unexpected"),
        (
            "  %y = relu(%x) : f32[18446744073709551615,18446744073709551615]",
            "large",
        ),
        ("  %y = relu(%x \"oops", "unterminated"),
        ("  %y = relu(%x) ; f32[2]", "character"),
    ];
    for (body, want) in cases {
        let (line, msg) = err_line(&base(body));
        assert_eq!(line, 3, "{body}: {msg}");
        assert!(msg.contains(want), "{body}: message {msg:?} lacks {want:?}");
    }
    assert_eq!(err_line("").0, 1);
    assert_eq!(err_line("graph g {\n  input %x: f32[2]\n").0, 3);
    assert_eq!(err_line("graph g\n").0, 1);
    assert_eq!(err_line("graph g {\n}\n}\n").0, 3);
    assert_eq!(err_line("graph g {\n  output %nope\n}").0, 2);
}

/// A MatMul epilogue's operands must match its `add` steps, broadcast to the product, and the
/// product must be a float one on matrices.
#[test]
fn matmul_epilogue_errors() {
    let base = |body: &str| {
        format!(
            "graph g {{\n  input %a: f32[3,4]\n  input %b: f32[4,5]\n  input %c: f32[5]\n  input %v: f32[4]\n  input %i: i64[4,4]\n{body}\n  output %a\n}}\n"
        )
    };
    let cases = [
        (
            "  %y = matmul(%a, %b) {epilogue=\"add\"} : f32[3,5]",
            "input",
        ),
        (
            "  %y = matmul(%a, %b, %c, %c, %c) {epilogue=\"add+add+add\"} : f32[3,5]",
            "at most 2",
        ),
        (
            "  %y = matmul(%a, %b, %v) {epilogue=\"add\"} : f32[3,5]",
            "broadcast",
        ),
        (
            "  %y = matmul(%v, %b, %c) {epilogue=\"add\"} : f32[5]",
            "rank",
        ),
        (
            "  %y = matmul(%i, %i) {epilogue=\"relu\"} : i64[4,4]",
            "float",
        ),
        (
            "  %y = matmul(%a, %b) {epilogue=\"frob\"} : f32[3,5]",
            "unknown epilogue step",
        ),
        // mul steps only in chains
        (
            "  %y = matmul(%a, %b, %c) {epilogue=\"mul\"} : f32[3,5]",
            "no mul step",
        ),
        // chains: one operand per add/mul step, each broadcast to input 0, f32 only
        ("  %y = chain(%a) {steps=\"relu+add\"} : f32[3,4]", "input"),
        (
            "  %y = chain(%a, %c) {steps=\"mul\"} : f32[3,4]",
            "does not broadcast",
        ),
        ("  %y = chain(%i, %i) {steps=\"add\"} : i64[4,4]", "f32"),
        (
            "  %y = chain(%a, %v) {steps=\"relu+mul+frob\"} : f32[3,4]",
            "unknown epilogue step",
        ),
        ("  %y = chain(%a) : f32[3,4]", "steps"),
    ];
    for (body, want) in cases {
        let (line, msg) = err_line(&base(body));
        assert_eq!(line, 7, "{body}: {msg}");
        assert!(msg.contains(want), "{body}: message {msg:?} lacks {want:?}");
    }
    // layer_norm: axis in range, scale/bias one element per row element, float input
    for (body, want) in [
        (
            "  %y = layer_norm(%a) {axis=2, epsilon=1e-5} : f32[3,4]",
            "axis 2",
        ),
        (
            "  %y = layer_norm(%a, %c) {axis=1, epsilon=1e-5} : f32[3,4]",
            "scale",
        ),
        (
            "  %y = layer_norm(%a, %v, %c) {axis=1, epsilon=1e-5} : f32[3,4]",
            "bias",
        ),
        (
            "  %y = layer_norm(%i) {axis=1, epsilon=1e-5} : i64[4,4]",
            "float",
        ),
        (
            "  %y = gemm(%a, %b) {alpha=1.0, beta=1.0, trans_a=0, trans_b=0, epilogue=\"add\"} : f32[3,5]",
            "no add",
        ),
    ] {
        let (line, msg) = err_line(&base(body));
        assert_eq!(line, 7, "{body}: {msg}");
        assert!(msg.contains(want), "{body}: message {msg:?} lacks {want:?}");
    }
    let ok = base("  %y = matmul(%a, %b, %c) {epilogue=\"add+gelu\"} : f32[3,5]");
    let g = parse(&ok).expect("valid epilogue");
    assert_eq!(print(&g), print(&parse(&print(&g)).unwrap()));
}

#[test]
fn print_with_limit_elides() {
    let g = sample();
    let s = print_with_limit(&g, 4);
    assert!(
        s.contains("const %\"conv1/w:0\": f32[2,2,3,3] = <elided 144 bytes>"),
        "{s}"
    );
    assert!(s.contains("const %b: f32[2] = [0.1, -inf]"), "{s}");
    assert!(matches!(parse(&s), Err(IrError::Parse { .. })));
    assert_eq!(print_with_limit(&g, usize::MAX), print(&g));
}

#[test]
fn garbage_never_panics() {
    let s = print(&sample());
    // Every truncation.
    let mut cut = 0;
    while cut < s.len() {
        if s.is_char_boundary(cut) {
            let _ = parse(&s[..cut]);
        }
        cut += 1;
    }
    // Random single-byte mutations and line shuffles (deterministic LCG).
    let mut seed: u64 = 0x1234_5678;
    let mut rnd = |n: usize| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((seed >> 33) as usize) % n.max(1)
    };
    let alphabet = b"%\"[]{}(),:=@#<>-.0123456789aezx \n\\";
    for _ in 0..3000 {
        let mut b = s.as_bytes().to_vec();
        for _ in 0..1 + rnd(4) {
            let i = rnd(b.len());
            match rnd(3) {
                0 => b[i] = alphabet[rnd(alphabet.len())],
                1 => {
                    b.remove(i);
                }
                _ => b.insert(i, alphabet[rnd(alphabet.len())]),
            }
        }
        let t = String::from_utf8_lossy(&b);
        if let Ok(g) = parse(&t) {
            // Whatever parses must print and re-parse.
            let p = print(&g);
            assert_eq!(print(&parse(&p).unwrap()), p);
        }
    }
    // Arbitrary bytes.
    for _ in 0..500 {
        let n = rnd(200);
        let b: Vec<u8> = (0..n).map(|_| rnd(256) as u8).collect();
        let _ = parse(&String::from_utf8_lossy(&b));
    }
    for junk in [
        "graph",
        "graph {",
        "graph g {\n  %",
        "graph g {\n  %\"",
        "graph g {\n  %\"\\u{110000}\" = relu() : f32[]\n}",
        "graph g {\n  input %x: f32[0]\n  %y = conv_transpose(%x, %x) {kernel=[0], strides=[1], pads=[0,0], dilations=[1], groups=1, output_padding=[0]} : f32[0]\n}",
        "graph g {\n  const %c: f32[99999999999999] = [1]\n}",
        "graph g {\n  const %c: bool[1] = [2]\n}",
        "\u{0}\u{1}",
    ] {
        assert!(parse(junk).is_err(), "{junk:?}");
    }
}
