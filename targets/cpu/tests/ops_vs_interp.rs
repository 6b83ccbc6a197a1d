//! Every op the CPU back end lowers, compiled with Cranelift (JIT) and compared with the
//! reference interpreter on random data.

use kiln_ir::interp::{self, Tensor};
use kiln_ir::ops::*;
use kiln_ir::{ConstData, DType, Graph, Op, TensorType};
use kiln_target_cpu::ConvSchedule;

/// Small deterministic PRNG (xorshift) for test data in [-1, 1).
struct Rng(u64);
impl Rng {
    fn f(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f()).collect()
    }
}

/// Run `g` compiled and interpreted on the same inputs; compare every output. Graphs with
/// convolutions or matrix products are also compiled with the LLVM kernels for AVX2 and SSE
/// (vector widths 8 and 4; the host's is the default) and with Cranelift kernels only.
fn check(g: &Graph, inputs: &[Tensor]) {
    kiln_ir::verify::verify(g).expect("valid graph");
    let want = interp::run(g, inputs).expect("interpreter");
    // par_min_macs 0: even these small kernels go through the pool in the 3-thread run
    let host = kiln_target_cpu::CpuOptions {
        par_min_macs: 0,
        ..kiln_target_cpu::CpuOptions::host("t")
    };
    let mut configs = vec![host.clone()];
    if g.iter_nodes().any(|(_, n)| {
        matches!(
            n.op,
            Op::Conv(_)
                | Op::MatMul(_)
                | Op::Gemm(_)
                | Op::MaxPool(_)
                | Op::Softmax { .. }
                | Op::LayerNorm { .. }
        )
    }) {
        for cpu in ["x86-64-v3", "x86-64"] {
            configs.push(kiln_target_cpu::CpuOptions {
                target_cpu: Some(cpu.into()),
                ..host.clone()
            });
        }
        // both register tilings of the wide convolution kernel and Winograd, whichever
        // `Auto` picks
        if g.iter_nodes().any(|(_, n)| matches!(n.op, Op::Conv(_))) {
            for cpu in [None, Some("x86-64-v3"), Some("x86-64")] {
                for conv_schedule in [
                    ConvSchedule::Pixels,
                    ConvSchedule::Channels,
                    ConvSchedule::Winograd,
                ] {
                    configs.push(kiln_target_cpu::CpuOptions {
                        target_cpu: cpu.map(Into::into),
                        conv_schedule,
                        ..host.clone()
                    });
                }
            }
        }
        configs.push(kiln_target_cpu::CpuOptions {
            wide: false,
            ..host.clone()
        });
    }
    for opts in &configs {
        check_with(g, inputs, &want, opts);
    }
}

/// Run a compiled model on `inputs` (outputs pre-filled with `fill`), optionally over a pool.
fn run_model(
    m: &kiln_runtime::Model,
    inputs: &[Tensor],
    fill: u8,
    pool: Option<&kiln_runtime::ThreadPool>,
) -> Vec<Vec<u8>> {
    let mut ws = m.workspace().unwrap();
    let ins: Vec<Vec<u8>> = inputs.iter().map(|t| t.to_bytes()).collect();
    let ins_ref: Vec<&[u8]> = ins.iter().map(|b| b.as_slice()).collect();
    let mut outs: Vec<Vec<u8>> = m.outputs().iter().map(|o| vec![fill; o.nbytes]).collect();
    let mut outs_ref: Vec<&mut [u8]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
    m.run_pool(&ins_ref, &mut outs_ref, &mut ws, pool)
        .expect("run");
    outs
}

fn model(jit: &kiln_target_cpu::JitModel) -> kiln_runtime::Model {
    unsafe { kiln_runtime::Model::from_raw(jit.descriptor() as *const kiln_runtime::KilnModel) }
        .unwrap()
}

/// The outputs of `g` compiled with the host's kernels.
fn compiled(g: &Graph, inputs: &[Tensor]) -> Vec<Tensor> {
    let jit = kiln_target_cpu::compile_jit(g, "t").expect("compile");
    let outs = run_model(&model(&jit), inputs, 0, None);
    let want = interp::run(g, inputs).expect("interpreter");
    want.iter()
        .zip(&outs)
        .map(|(w, b)| Tensor::from_bytes(&w.ty(), b).unwrap())
        .collect()
}

fn check_with(g: &Graph, inputs: &[Tensor], want: &[Tensor], opts: &kiln_target_cpu::CpuOptions) {
    let jit = kiln_target_cpu::compile_jit_with(g, opts).expect("compile");
    let m = model(&jit);
    let outs = run_model(&m, inputs, 0xAA, None);
    if opts.wide {
        // split over 3 threads: the same work items, so bit-identical outputs
        let pool = kiln_runtime::ThreadPool::new(3).unwrap();
        let par = run_model(&m, inputs, 0x55, Some(&pool));
        assert!(par == outs, "{}: 3 threads differ from 1", g.name);
    }
    assert!(
        !want.is_empty() && want.len() == outs.len(),
        "{}: output count",
        g.name
    );
    for (k, (w, got)) in want.iter().zip(&outs).enumerate() {
        let got = Tensor::from_bytes(&w.ty(), got).unwrap();
        match (w.as_f32(), got.as_f32()) {
            (Some(a), Some(b)) => {
                // plus a share of the output's largest value: Winograd convolutions are exact
                // to a few ulps of the partial sums, not of each (possibly cancelled) result
                let scale = a
                    .iter()
                    .filter(|x| x.is_finite())
                    .fold(0f32, |m, x| m.max(x.abs()));
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    let tol = 1e-5 + 1e-4 * x.abs() + 1e-5 * scale;
                    assert!(
                        (x - y).abs() <= tol || (x.is_nan() && y.is_nan()),
                        "{}: output {k}[{i}]: interp {x} vs compiled {y} (cpu {:?}, wide {}, {:?})",
                        g.name,
                        opts.target_cpu,
                        opts.wide,
                        opts.conv_schedule
                    );
                }
            }
            _ => assert_eq!(w, &got, "{}: output {k}", g.name),
        }
    }
}

fn unary_graph(name: &str, op: Op, shape: &[usize]) -> Graph {
    let mut g = Graph::new(name);
    let x = g.add_input("x", TensorType::f32(shape));
    let y = g.add_node("n", op, vec![x], vec!["y".into()]).unwrap();
    g.outputs = y;
    g
}

fn run_unary(name: &str, op: Op, shape: &[usize], map: impl Fn(f32) -> f32) {
    let g = unary_graph(name, op, shape);
    let mut r = Rng(0x1234_5678);
    let n: usize = shape.iter().product();
    let x = Tensor::f32(shape, r.vec(n).into_iter().map(map).collect());
    check(&g, &[x]);
}

#[test]
fn unary_ops() {
    use UnaryOp::*;
    for (u, shape) in [
        (Relu, vec![2, 3, 5]),
        (Sigmoid, vec![17]),
        (Tanh, vec![8]),
        (Erf, vec![9]),
        (Exp, vec![16]),
        (Neg, vec![7]),
        (Abs, vec![12]),
        (Floor, vec![5]),
        (Ceil, vec![5]),
        (HardSwish, vec![4, 5]),
    ] {
        run_unary(u.name(), Op::Unary(u), &shape, |x| x * 4.0);
    }
    run_unary("sqrt", Op::Unary(Sqrt), &[10], |x| x.abs() + 0.1);
    run_unary("log", Op::Unary(Log), &[10], |x| x.abs() + 0.1);
    run_unary("recip", Op::Unary(Reciprocal), &[10], |x| x.abs() + 0.5);
    run_unary("clip", Op::Clip { min: 0.0, max: 0.5 }, &[3, 7], |x| x);
    for (kind, name) in ACTS {
        let (alpha, beta) = match kind {
            ActKind::Selu => (1.67, 1.05),
            ActKind::Shrink => (0.3, 0.5),
            ActKind::HardSigmoid => (0.2, 0.5),
            _ => (0.7, 0.0),
        };
        // 11 elements: the F32X4 body and the scalar tail
        run_unary(name, Op::Act { kind, alpha, beta }, &[11], |x| x * 3.0);
    }
    for (u, shape) in [
        (Sin, vec![9]),
        (Cos, vec![9]),
        (Tan, vec![9]),
        (Asin, vec![9]),
        (Acos, vec![9]),
        (Atan, vec![9]),
        (Sinh, vec![9]),
        (Cosh, vec![9]),
        (Asinh, vec![9]),
        (Atanh, vec![9]),
        (Round, vec![13]),
        (Sign, vec![13]),
        (Softplus, vec![9]),
        (Softsign, vec![13]),
        (Mish, vec![9]),
        (Gelu, vec![9]),
        (GeluTanh, vec![9]),
    ] {
        // |x| < 1 keeps asin/acos/atanh in their domains; Round sees exact halves
        let round = u == Round;
        run_unary(u.name(), Op::Unary(u), &shape, move |x| {
            if round {
                (x * 8.0).round() / 2.0
            } else {
                x * 0.99
            }
        });
    }
    run_unary("acosh", Op::Unary(Acosh), &[9], |x| x.abs() * 3.0 + 1.0);
    run_unary("softplus_big", Op::Unary(Softplus), &[9], |x| x * 100.0);
    run_unary("cast_i64", Op::Cast { to: DType::I64 }, &[9], |x| x * 10.0);
    for kind in [
        SoftmaxKind::Softmax,
        SoftmaxKind::LogSoftmax,
        SoftmaxKind::Hardmax,
    ] {
        run_unary("softmax", Op::Softmax { axis: 1, kind }, &[2, 5, 3], |x| {
            x * 3.0
        });
    }
    // the LLVM row kernel: rows shorter than a vector, with a tail, long rows, trailing 1-dims
    for (shape, axis, scale) in [
        (vec![3, 1], 1, 1.0),
        (vec![4, 7], 1, 30.0),
        (vec![2, 3, 33], 2, 5.0),
        (vec![2, 128], 1, 100.0),
        (vec![3, 1000], 1, 3.0),
        (vec![3, 10, 1], 1, 2.0),
    ] {
        let kind = SoftmaxKind::Softmax;
        run_unary("softmax_rows", Op::Softmax { axis, kind }, &shape, |x| {
            x * scale
        });
    }
    // infinities and NaN in a row
    let g = unary_graph(
        "softmax_special",
        Op::Softmax {
            axis: 1,
            kind: SoftmaxKind::Softmax,
        },
        &[4, 18],
    );
    let mut x: Vec<f32> = Rng(9).vec(72);
    x[3] = f32::NEG_INFINITY;
    x[20] = f32::NAN;
    for v in &mut x[36..54] {
        *v = f32::NEG_INFINITY;
    }
    x[60] = 1e30;
    check(&g, &[Tensor::f32([4, 18], x)]);
    // Hardmax picks the first of equal maxima
    run_unary(
        "hardmax_ties",
        Op::Softmax {
            axis: 1,
            kind: SoftmaxKind::Hardmax,
        },
        &[3, 4],
        |x| (x * 2.0).round(),
    );
    for (kind, _) in ReduceKind::ALL {
        let pos = matches!(kind, ReduceKind::LogSum | ReduceKind::Prod);
        for (axes, keepdims, shape) in [
            (vec![1, 3], true, vec![2, 3, 4, 5]),
            (vec![2], false, vec![2, 3, 4]),
            (vec![0, 1], false, vec![3, 2]),
        ] {
            run_unary(
                kind.name(),
                Op::Reduce {
                    kind,
                    axes,
                    keepdims,
                },
                &shape,
                move |x| if pos { x.abs() + 0.5 } else { x },
            );
        }
    }
    for (max, last) in [(true, false), (true, true), (false, false), (false, true)] {
        for (axis, keepdims) in [(0, true), (1, false), (2, true)] {
            // coarse values so ties happen and select_last matters
            let op = Op::ArgExtreme {
                max,
                axis,
                keepdims,
                select_last: last,
            };
            run_unary("arg", op, &[3, 4, 5], |x| (x * 2.0).round());
        }
    }
    for shape in [[1, 3, 5, 4], [2, 3, 7, 3], [1, 2, 1, 2]] {
        run_unary("gap", Op::GlobalAveragePool, &shape, |x| x);
    }
    run_unary(
        "transpose",
        Op::Transpose {
            perm: vec![0, 2, 3, 1],
        },
        &[2, 3, 4, 5],
        |x| x,
    );
    // a pixel shuffle (short last output axis, unrolled)
    let perm = vec![0, 1, 4, 2, 5, 3];
    run_unary(
        "transpose_shuffle",
        Op::Transpose { perm },
        &[1, 3, 2, 2, 5, 7],
        |x| x,
    );
    // the last axis kept: contiguous runs (word copies; memcpy from 256 bytes)
    for shape in [[2, 3, 4, 5], [2, 3, 4, 70]] {
        let perm = vec![2, 0, 1, 3];
        run_unary("transpose_runs", Op::Transpose { perm }, &shape, |x| x);
    }
    run_unary(
        "slice",
        Op::Slice(SliceAttrs {
            starts: vec![1, 4, 0],
            steps: vec![1, -2, 2],
            sizes: vec![1, 3, 2],
        }),
        &[2, 5, 4],
        |x| x,
    );
}

/// Integer elementwise ops (every width the interpreter models) against the interpreter,
/// including negative operands for the remainder sign rules, zero and -1 divisors, and shifts.
#[test]
fn integer_elementwise() {
    use BinaryOp::*;
    let a: Vec<i64> = vec![7, -7, 7, -7, 0, 5, -128, 127, 3, -1, 100, -100];
    // no zero divisor and no MIN / -1 (KILN_ERR_DIVIDE: tests/statuses.rs)
    let b: Vec<i64> = vec![3, 3, -3, -3, 5, 1, -2, 2, 4, 7, -1, -9];
    for dt in [DType::I64, DType::I32, DType::I8, DType::U8] {
        let t = |v: &[i64]| -> Tensor {
            let tt = TensorType::new(dt, vec![v.len()]);
            let bytes: Vec<u8> = v
                .iter()
                .flat_map(|&x| x.to_le_bytes()[..dt.size()].to_vec())
                .collect();
            Tensor::from_bytes(&tt, &bytes).unwrap()
        };
        let unsigned = dt == DType::U8;
        for op in [
            Add, Sub, Mul, Div, Max, Min, Mod, Fmod, BitAnd, BitOr, BitXor, PRelu,
        ] {
            let mut g = Graph::new(format!("{}_{dt}", op.name()));
            let x = g.add_input("a", TensorType::new(dt, vec![a.len()]));
            let y = g.add_input("b", TensorType::new(dt, vec![b.len()]));
            g.outputs = g
                .add_node("n", Op::Binary(op), vec![x, y], vec!["y".into()])
                .unwrap();
            check(&g, &[t(&a), t(&b)]);
        }
        let shifts: Vec<i64> = vec![0, 1, 2, 3, 7, 1, 2, 3, 4, 5, 6, 0];
        for op in [Shl, Shr] {
            let mut g = Graph::new(format!("{}_{dt}", op.name()));
            let x = g.add_input("a", TensorType::new(dt, vec![a.len()]));
            let y = g.add_input("b", TensorType::new(dt, vec![a.len()]));
            g.outputs = g
                .add_node("n", Op::Binary(op), vec![x, y], vec!["y".into()])
                .unwrap();
            let pos: Vec<i64> = a.iter().map(|v| v.abs()).collect();
            check(&g, &[t(if unsigned { &a } else { &pos }), t(&shifts)]);
        }
        for u in [
            UnaryOp::Neg,
            UnaryOp::Relu,
            UnaryOp::BitNot,
            UnaryOp::Abs,
            UnaryOp::Sign,
        ] {
            let mut g = Graph::new(format!("{}_{dt}", u.name()));
            let x = g.add_input("a", TensorType::new(dt, vec![a.len()]));
            g.outputs = g
                .add_node("n", Op::Unary(u), vec![x], vec!["y".into()])
                .unwrap();
            check(&g, &[t(&a)]);
        }
        let mut g = Graph::new(format!("clip_{dt}"));
        let x = g.add_input("a", TensorType::new(dt, vec![a.len()]));
        g.outputs = g
            .add_node(
                "n",
                Op::Clip {
                    min: 2.0,
                    max: f32::INFINITY,
                },
                vec![x],
                vec!["y".into()],
            )
            .unwrap();
        check(&g, &[t(&a)]);
    }
}

/// f64 elementwise (scalar path, f64 libm), IsNaN/IsInf, Expand.
#[test]
fn f64_classify_expand() {
    for op in [
        Op::Unary(UnaryOp::Exp),
        Op::Unary(UnaryOp::Tanh),
        Op::Unary(UnaryOp::Round),
        Op::Act {
            kind: ActKind::Elu,
            alpha: 0.5,
            beta: 0.0,
        },
    ] {
        let mut g = Graph::new(op.name());
        let x = g.add_input("x", TensorType::new(DType::F64, vec![6]));
        g.outputs = g.add_node("n", op, vec![x], vec!["y".into()]).unwrap();
        check(
            &g,
            &[Tensor::f64([6], vec![-2.5, -0.5, 0.0, 0.5, 1.5, 3.25])],
        );
    }
    let mut g = Graph::new("fmod64");
    let x = g.add_input("a", TensorType::new(DType::F64, vec![4]));
    let y = g.add_input("b", TensorType::new(DType::F64, vec![4]));
    g.outputs = g
        .add_node(
            "n",
            Op::Binary(BinaryOp::Fmod),
            vec![x, y],
            vec!["y".into()],
        )
        .unwrap();
    check(
        &g,
        &[
            Tensor::f64([4], vec![5.5, -5.5, 5.5, -5.5]),
            Tensor::f64([4], vec![2.0, 2.0, -2.0, -2.0]),
        ],
    );
    let vals = vec![1.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0];
    for op in [
        Op::IsNaN,
        Op::IsInf {
            pos: true,
            neg: true,
        },
        Op::IsInf {
            pos: false,
            neg: true,
        },
        Op::IsInf {
            pos: true,
            neg: false,
        },
    ] {
        let g = unary_graph(op.name(), op, &[5]);
        check(&g, &[Tensor::f32([5], vals.clone())]);
    }
    for (xs, shape) in [
        (vec![3, 1], vec![2, 3, 4]),
        (vec![1], vec![5]),
        (vec![2, 1, 3], vec![1, 4, 1]),
    ] {
        let g = unary_graph("expand", Op::Expand { shape }, &xs);
        let mut r = Rng(5);
        let n = xs.iter().product();
        check(&g, &[Tensor::f32(xs.clone(), r.vec(n))]);
    }
}

/// Gather / GatherElements / ScatterElements / GatherND / ScatterND with negative and
/// repeated indices, every reduction, against the interpreter.
#[test]
fn index_ops() {
    let mut r = Rng(11);
    let data = Tensor::f32([3, 4, 2], r.vec(24));
    let run = |op: Op, ins: Vec<Tensor>| {
        let mut g = Graph::new(op.name());
        let ids: Vec<_> = ins
            .iter()
            .enumerate()
            .map(|(k, t)| g.add_input(format!("i{k}"), t.ty()))
            .collect();
        g.outputs = g.add_node("n", op, ids, vec!["y".into()]).unwrap();
        check(&g, &ins);
    };
    for axis in 0..3 {
        let idx = Tensor::i64([2, 2], vec![0, -1, 1, 0]);
        run(Op::Gather { axis }, vec![data.clone(), idx]);
    }
    let idx32 = Tensor::i32([3], vec![2, 0, -2]);
    run(Op::Gather { axis: 1 }, vec![data.clone(), idx32]);
    // GatherElements / ScatterElements along each axis with indices shaped like data but smaller
    for axis in 0..3 {
        let len = [3i64, 4, 2][axis];
        let iv: Vec<i64> = (0..12).map(|k| (k * 5 % len) - (k % 2) * len).collect();
        let idx = Tensor::i64([3, 2, 2], iv);
        run(Op::GatherElements { axis }, vec![data.clone(), idx.clone()]);
        let upd = Tensor::f32([3, 2, 2], r.vec(12));
        for (reduction, _) in ScatterReduction::ALL {
            // duplicates only where a reduction makes the order irrelevant
            let idx = if reduction == ScatterReduction::None {
                Tensor::i64([3, 2, 2], (0..12).map(|k| (k / 4) % len).collect())
            } else {
                idx.clone()
            };
            let idx = if reduction == ScatterReduction::None && axis != 0 {
                Tensor::i64([3, 2, 2], (0..12).map(|k| (k % 2) as i64).collect())
            } else {
                idx
            };
            run(
                Op::ScatterElements { axis, reduction },
                vec![data.clone(), idx, upd.clone()],
            );
        }
    }
    // GatherND: full tuples, partial tuples (slices), batch_dims = 1
    run(
        Op::GatherND { batch_dims: 0 },
        vec![data.clone(), Tensor::i64([2, 3], vec![0, 1, 1, 2, -1, 0])],
    );
    run(
        Op::GatherND { batch_dims: 0 },
        vec![data.clone(), Tensor::i64([2, 1], vec![2, 0])],
    );
    run(
        Op::GatherND { batch_dims: 1 },
        vec![data.clone(), Tensor::i64([3, 1], vec![1, 3, 0])],
    );
    for (reduction, _) in ScatterReduction::ALL {
        run(
            Op::ScatterND { reduction },
            vec![
                data.clone(),
                Tensor::i64([2, 2], vec![0, 1, 2, 3]),
                Tensor::f32([2, 2], r.vec(4)),
            ],
        );
    }
}

/// Pad in every mode (incl. negative pads = crop), CumSum/CumProd variants, TopK with ties.
#[test]
fn pad_scan_topk() {
    let mut r = Rng(21);
    let x = Tensor::f32([2, 3, 4], r.vec(24));
    for (mode, _) in PadMode::ALL {
        for pads in [
            vec![0, 1, 2, 1, 2, 1],
            vec![1, 0, 3, 0, 2, 3],
            vec![0, -1, 1, 0, 1, -2],
        ] {
            let g = unary_graph(
                "pad",
                Op::Pad {
                    pads,
                    mode,
                    value: 1.5,
                },
                &[2, 3, 4],
            );
            check(&g, std::slice::from_ref(&x));
        }
    }
    for prod in [false, true] {
        for exclusive in [false, true] {
            for reverse in [false, true] {
                for axis in 0..3 {
                    let g = unary_graph(
                        "cum",
                        Op::CumSum {
                            axis,
                            exclusive,
                            reverse,
                            prod,
                        },
                        &[2, 3, 4],
                    );
                    check(&g, std::slice::from_ref(&x));
                }
            }
        }
    }
    // ties: values rounded to a few levels
    let tied = Tensor::f32(
        [2, 3, 4],
        r.vec(24).iter().map(|v| (v * 2.0).round()).collect(),
    );
    for largest in [true, false] {
        for (axis, k) in [(2, 3), (1, 2), (0, 1), (2, 4)] {
            let mut g = Graph::new("topk");
            let xi = g.add_input("x", TensorType::f32([2, 3, 4]));
            g.outputs = g
                .add_node(
                    "n",
                    Op::TopK { axis, k, largest },
                    vec![xi],
                    vec!["v".into(), "i".into()],
                )
                .unwrap();
            check(&g, std::slice::from_ref(&tied));
        }
    }
    let mut g = Graph::new("topk_i64");
    let xi = g.add_input("x", TensorType::new(DType::I64, vec![6]));
    g.outputs = g
        .add_node(
            "n",
            Op::TopK {
                axis: 0,
                k: 4,
                largest: true,
            },
            vec![xi],
            vec!["v".into(), "i".into()],
        )
        .unwrap();
    check(&g, &[Tensor::i64([6], vec![3, -9, 3, 7, i64::MAX, 0])]);
}

#[test]
fn binary_broadcast() {
    for b in [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Max,
        BinaryOp::Min,
        BinaryOp::Pow,
        BinaryOp::PRelu,
        BinaryOp::Fmod,
    ] {
        for (sa, sb) in [
            (vec![2, 3, 4], vec![2, 3, 4]),
            (vec![1, 3, 4, 4], vec![1, 3, 1, 1]),
            (vec![3, 1], vec![1, 4]),
            (vec![5], vec![2, 1, 5]),
            // vectorized rows with a broadcast operand: squeeze-excite scale, row bias (either
            // side), a row broadcast over an inner dim (no split), odd row lengths
            (vec![1, 3, 5, 7], vec![1, 3, 1, 1]),
            (vec![1, 1, 1, 1], vec![2, 3, 4, 5]),
            (vec![4, 19], vec![19]),
            (vec![19], vec![2, 2, 19]),
            (vec![2, 17, 3], vec![2, 1, 3]),
            (vec![1], vec![3, 3, 3, 1]),
        ] {
            let mut g = Graph::new(b.name());
            let x = g.add_input("a", TensorType::f32(sa.clone()));
            let y = g.add_input("b", TensorType::f32(sb.clone()));
            g.outputs = g
                .add_node("n", Op::Binary(b), vec![x, y], vec!["y".into()])
                .unwrap();
            let mut r = Rng(99);
            let pos = matches!(b, BinaryOp::Pow | BinaryOp::Div);
            let mk = |r: &mut Rng, s: &Vec<usize>| {
                Tensor::f32(
                    s.clone(),
                    r.vec(s.iter().product())
                        .into_iter()
                        .map(|v| if pos { v.abs() + 0.5 } else { v })
                        .collect(),
                )
            };
            let (ta, tb) = (mk(&mut r, &sa), mk(&mut r, &sb));
            check(&g, &[ta, tb]);
        }
    }
}

fn conv_case(x: &[usize], w: &[usize], a: ConvAttrs, bias: bool) {
    let mut r = Rng(7);
    let mut g = Graph::new("conv");
    let xi = g.add_input("x", TensorType::f32(x));
    let wv = g
        .add_const(
            "w",
            TensorType::f32(w),
            ConstData::from_f32(&r.vec(w.iter().product())),
        )
        .unwrap();
    let mut ins = vec![xi, wv];
    if bias {
        let n = if matches!(a, ConvAttrs { .. }) {
            w[0]
        } else {
            0
        };
        ins.push(
            g.add_const("b", TensorType::f32([n]), ConstData::from_f32(&r.vec(n)))
                .unwrap(),
        );
    }
    g.outputs = g.add_node("c", Op::Conv(a), ins, vec!["y".into()]).unwrap();
    let xt = Tensor::f32(x, r.vec(x.iter().product()));
    check(&g, &[xt]);
}

#[test]
fn conv_variants() {
    let c = |k: Vec<usize>, s: Vec<usize>, p: Vec<usize>, d: Vec<usize>, groups| ConvAttrs {
        kernel: k,
        strides: s,
        pads: p,
        dilations: d,
        groups,
        epilogue: Vec::new(),
        layout: kiln_ir::Layout::Plain,
    };
    conv_case(
        &[1, 3, 8, 8],
        &[4, 3, 3, 3],
        c(vec![3, 3], vec![1, 1], vec![1, 1, 1, 1], vec![1, 1], 1),
        true,
    );
    conv_case(
        &[2, 4, 9, 7],
        &[6, 2, 3, 2],
        c(vec![3, 2], vec![2, 1], vec![1, 0, 2, 1], vec![1, 2], 2),
        true,
    );
    conv_case(
        &[1, 4, 6, 6],
        &[4, 1, 3, 3],
        c(vec![3, 3], vec![2, 2], vec![1, 1, 1, 1], vec![1, 1], 4),
        false,
    );
    conv_case(
        &[1, 2, 10],
        &[3, 2, 3],
        c(vec![3], vec![2], vec![1, 1], vec![1], 1),
        true,
    );
    // 1x1 (GEMM path), grouped and not, with and without bias, odd plane sizes
    conv_case(
        &[2, 6, 5, 7],
        &[8, 6, 1, 1],
        c(vec![1, 1], vec![1, 1], vec![0, 0, 0, 0], vec![1, 1], 1),
        true,
    );
    conv_case(
        &[1, 6, 4, 4],
        &[4, 3, 1, 1],
        c(vec![1, 1], vec![1, 1], vec![0, 0, 0, 0], vec![1, 1], 2),
        false,
    );
    // large pads (taps that never hit the input), 7x7 stride 2, depthwise with dilation
    conv_case(
        &[1, 3, 13, 11],
        &[5, 3, 7, 7],
        c(vec![7, 7], vec![2, 2], vec![3, 3, 3, 3], vec![1, 1], 1),
        true,
    );
    conv_case(
        &[1, 2, 3, 3],
        &[2, 2, 3, 3],
        c(vec![3, 3], vec![1, 1], vec![4, 4, 4, 4], vec![1, 1], 1),
        true,
    );
    conv_case(
        &[1, 8, 12, 12],
        &[8, 1, 3, 3],
        c(vec![3, 3], vec![1, 1], vec![2, 2, 2, 2], vec![2, 2], 8),
        true,
    );
    conv_case(
        &[1, 3, 9, 10],
        &[4, 3, 1, 1],
        c(vec![1, 1], vec![2, 2], vec![0, 0, 0, 0], vec![1, 1], 1),
        true,
    );
}

/// Elementwise chains (`Op::Chain`): operands of every broadcast form (scalar, per channel,
/// a row, full), steps with and without an F32X4 lowering, sizes with a scalar remainder,
/// shapes the vector broadcast path does not take.
#[test]
fn elementwise_chains() {
    let mut r = Rng(13);
    let act = |kind, alpha, beta| EpilogueStep::Act { kind, alpha, beta };
    // (input shape, operand shapes, steps)
    type Case = (Vec<usize>, Vec<Vec<usize>>, Vec<EpilogueStep>);
    let cases: Vec<Case> = vec![
        (
            vec![2, 5, 3, 7],
            vec![vec![1, 5, 1, 1], vec![2, 5, 3, 7]],
            vec![
                EpilogueStep::Mul,
                EpilogueStep::Add,
                EpilogueStep::Unary(UnaryOp::Relu),
            ],
        ),
        (
            vec![3, 37],
            vec![vec![37], vec![]],
            vec![
                EpilogueStep::Add,
                EpilogueStep::Unary(UnaryOp::Sigmoid),
                EpilogueStep::Mul,
                EpilogueStep::Clip { min: 0.1, max: 0.6 },
            ],
        ),
        (
            vec![4, 9, 5],
            vec![vec![4, 1, 5]],
            vec![
                EpilogueStep::Unary(UnaryOp::Exp),
                act(ActKind::LeakyRelu, 0.1, 0.0),
                EpilogueStep::Mul,
                EpilogueStep::Unary(UnaryOp::Tanh),
            ],
        ),
        (
            vec![1, 6, 1, 1],
            vec![vec![1, 6, 1, 1]],
            vec![EpilogueStep::Unary(UnaryOp::Neg), EpilogueStep::Add],
        ),
    ];
    for (x, ops, steps) in cases {
        let mut g = Graph::new("chain");
        let mut ins = vec![g.add_input("x", TensorType::f32(x.clone()))];
        let mut data = vec![Tensor::f32(x.clone(), r.vec(x.iter().product()))];
        for (i, s) in ops.iter().enumerate() {
            ins.push(g.add_input(format!("o{i}"), TensorType::f32(s.clone())));
            data.push(Tensor::f32(s.clone(), r.vec(s.iter().product())));
        }
        g.outputs = g
            .add_node("c", Op::Chain { steps }, ins, vec!["y".into()])
            .unwrap();
        check(&g, &data);
    }
}

/// Convolutions and elementwise ops computed straight into their place in a concat's output
/// (the memory plan elides the concat): different kernels (wide pixel and channel tilings,
/// depthwise, Cranelift elementwise) writing neighbouring blocks must not touch each other's.
#[test]
fn concat_in_place() {
    let mut r = Rng(5);
    let mut g = Graph::new("cat");
    let x = g.add_input("x", TensorType::f32([1, 6, 9, 9]));
    let mut parts = Vec::new();
    for (i, (m, k, groups)) in [(5, 3, 1), (20, 1, 1), (6, 3, 6)].into_iter().enumerate() {
        let w = g
            .add_const(
                format!("w{i}"),
                TensorType::f32([m, 6 / groups, k, k]),
                ConstData::from_f32(&r.vec(m * 6 / groups * k * k)),
            )
            .unwrap();
        let a = ConvAttrs {
            kernel: vec![k, k],
            strides: vec![1, 1],
            pads: vec![k / 2; 4],
            dilations: vec![1, 1],
            groups,
            epilogue: vec![EpilogueStep::Unary(UnaryOp::Relu)],
            layout: kiln_ir::Layout::Plain,
        };
        parts.extend(
            g.add_node(
                format!("c{i}"),
                Op::Conv(a),
                vec![x, w],
                vec![format!("y{i}")],
            )
            .unwrap(),
        );
    }
    parts.extend(
        g.add_node("e", Op::Unary(UnaryOp::Exp), vec![x], vec!["ex".into()])
            .unwrap(),
    );
    let cat = g
        .add_node("cat", Op::Concat { axis: 1 }, parts, vec!["cat".into()])
        .unwrap();
    g.outputs = g
        .add_node("n", Op::Unary(UnaryOp::Neg), cat, vec!["out".into()])
        .unwrap();
    let plan = kiln_target_cpu::plan(&g);
    assert_eq!(
        plan.concat_in_place.len(),
        1,
        "the concat is computed in place"
    );
    kiln_ir::memplan::check(&g, &plan).unwrap();
    let xt = Tensor::f32([1, 6, 9, 9], r.vec(6 * 81));
    check(&g, &[xt]);
}

/// Shapes that exercise the wide kernels' edges: partial channel blocks (m % 8, m % 4), pixel
/// tiles spanning several output rows and the last partial tile, packed rows wider than the
/// output (`wq > ow`), unpadded 1x1 convolutions reading the input in place, batches, and
/// MatMuls with partial row blocks and broadcast batches.
#[test]
fn wide_kernel_edges() {
    let c = |k: usize, s: usize, p: usize, groups| ConvAttrs {
        kernel: vec![k, k],
        strides: vec![s, s],
        pads: vec![p; 4],
        dilations: vec![1, 1],
        groups,
        epilogue: Vec::new(),
        layout: kiln_ir::Layout::Plain,
    };
    conv_case(&[1, 17, 7, 7], &[20, 17, 3, 3], c(3, 1, 1, 1), true);
    // Winograd under `Auto` (16+ channels): odd sizes (a half last tile row and column),
    // batches, no padding, more tiles per row than vector lanes
    conv_case(&[2, 16, 9, 11], &[24, 16, 3, 3], c(3, 1, 1, 1), true);
    conv_case(&[1, 16, 6, 40], &[17, 16, 3, 3], c(3, 1, 0, 1), false);
    conv_case(&[1, 20, 5, 37], &[16, 20, 3, 3], c(3, 1, 2, 1), true);
    // F(4x4) tiles from 24x24 outputs: partial last tile rows and columns, no padding
    conv_case(&[1, 16, 26, 30], &[24, 16, 3, 3], c(3, 1, 1, 1), true);
    conv_case(&[2, 17, 27, 29], &[16, 17, 3, 3], c(3, 1, 0, 1), false);
    conv_case(&[2, 5, 13, 9], &[11, 5, 3, 3], c(3, 2, 1, 1), true);
    conv_case(&[1, 9, 11, 11], &[13, 9, 1, 1], c(1, 1, 0, 1), false);
    conv_case(&[1, 24, 9, 9], &[24, 1, 3, 3], c(3, 1, 1, 24), true);
    conv_case(&[1, 16, 10, 10], &[32, 4, 3, 3], c(3, 2, 1, 4), true);
    conv_case(&[1, 3, 30, 30], &[9, 3, 7, 7], c(7, 2, 3, 1), true);
    conv_case(&[1, 6, 8, 8], &[10, 6, 5, 5], c(5, 1, 0, 1), true);
    // depthwise (read in place, masked at the borders): several vectors per row plus a tail,
    // stride 2 (de-interleaved loads) on odd widths, taps past the input, batches
    conv_case(&[2, 5, 11, 37], &[5, 1, 3, 3], c(3, 1, 1, 5), true);
    conv_case(&[1, 6, 15, 33], &[6, 1, 3, 3], c(3, 2, 1, 6), true);
    conv_case(&[1, 4, 9, 9], &[4, 1, 5, 5], c(5, 2, 2, 4), false);
    conv_case(&[1, 3, 8, 70], &[3, 1, 7, 7], c(7, 1, 3, 3), true);
    conv_case(&[1, 2, 5, 5], &[2, 1, 3, 3], c(3, 1, 0, 2), true);
    // windows too big to unroll (over 1024 taps) take the loop-based kernel
    conv_case(&[1, 2, 34, 35], &[3, 2, 33, 33], c(33, 1, 1, 1), true);
    conv_case(&[1, 2, 34, 35], &[2, 1, 33, 33], c(33, 1, 1, 2), true);
    let mut r = Rng(3);
    for (a, b) in [
        (vec![37, 19], vec![19, 45]),
        (vec![2, 3, 12, 10], vec![10, 9]),
        (vec![4, 8, 33], vec![2, 1, 33, 17]),
    ] {
        let mut g = Graph::new("mm");
        let x = g.add_input("a", TensorType::f32(a.clone()));
        let y = g.add_input("b", TensorType::f32(b.clone()));
        g.outputs = g
            .add_node("m", Op::matmul(), vec![x, y], vec!["y".into()])
            .unwrap();
        let ta = Tensor::f32(a.clone(), r.vec(a.iter().product()));
        let tb = Tensor::f32(b.clone(), r.vec(b.iter().product()));
        check(&g, &[ta, tb]);
    }
}

/// MatMul epilogues: operands of every broadcast form the kernel reads (bias row, per-row
/// column, scalar, full residual, batch-broadcast), steps the wide kernel has no vector form
/// for (the rest of the epilogue then runs as elementwise passes), and shapes the wide kernel
/// does not take (rank-2 thin products, f64).
#[test]
fn matmul_epilogues() {
    let mut r = Rng(11);
    let act = |kind, alpha, beta| EpilogueStep::Act { kind, alpha, beta };
    // (a, b, epilogue operand shapes, epilogue)
    type Case = (Vec<usize>, Vec<usize>, Vec<Vec<usize>>, Vec<EpilogueStep>);
    let cases: Vec<Case> = vec![
        (
            vec![37, 19],
            vec![19, 45],
            vec![vec![45]],
            vec![EpilogueStep::Add],
        ),
        (
            vec![2, 9, 16],
            vec![16, 40],
            vec![vec![40], vec![2, 9, 40]],
            vec![
                EpilogueStep::Add,
                EpilogueStep::Unary(UnaryOp::Relu),
                EpilogueStep::Add,
            ],
        ),
        (
            vec![3, 10, 8],
            vec![3, 8, 33],
            vec![vec![3, 10, 1], vec![1]],
            vec![
                EpilogueStep::Add,
                act(ActKind::Affine, 0.5, -0.25),
                EpilogueStep::Add,
            ],
        ),
        (
            vec![2, 3, 12, 10],
            vec![10, 9],
            vec![vec![3, 1, 9], vec![2, 1, 12, 9]],
            vec![
                EpilogueStep::Add,
                EpilogueStep::Unary(UnaryOp::Gelu),
                EpilogueStep::Add,
                EpilogueStep::Clip {
                    min: -0.5,
                    max: 0.5,
                },
            ],
        ),
        (
            vec![5, 64],
            vec![64, 3],
            vec![vec![5, 3]],
            vec![EpilogueStep::Add, EpilogueStep::Unary(UnaryOp::Sigmoid)],
        ),
        (
            vec![6, 7],
            vec![7, 2],
            vec![],
            vec![act(ActKind::LeakyRelu, 0.1, 0.0)],
        ),
    ];
    for (i, (a, b, ops, epilogue)) in cases.into_iter().enumerate() {
        let mut g = Graph::new(format!("mm_epilogue_{i}"));
        let x = g.add_input("a", TensorType::f32(a.clone()));
        let y = g.add_input("b", TensorType::f32(b.clone()));
        let mut inputs = vec![x, y];
        let mut data = vec![
            Tensor::f32(a.clone(), r.vec(a.iter().product())),
            Tensor::f32(b.clone(), r.vec(b.iter().product())),
        ];
        for (k, s) in ops.iter().enumerate() {
            inputs.push(g.add_input(format!("e{k}"), TensorType::f32(s.clone())));
            data.push(Tensor::f32(s.clone(), r.vec(s.iter().product())));
        }
        g.outputs = g
            .add_node(
                "m",
                Op::MatMul(MatMulAttrs { epilogue }),
                inputs,
                vec!["y".into()],
            )
            .unwrap();
        check(&g, &data);
    }
    // a non-f32 product with an epilogue: the scalar triple loop, then elementwise passes
    let mut g = Graph::new("mm_epilogue_f64");
    let x = g.add_input("a", TensorType::new(DType::F64, vec![4, 3]));
    let y = g.add_input("b", TensorType::new(DType::F64, vec![3, 5]));
    let e = g.add_input("e", TensorType::new(DType::F64, vec![5]));
    let epilogue = vec![EpilogueStep::Add, EpilogueStep::Unary(UnaryOp::Relu)];
    g.outputs = g
        .add_node(
            "m",
            Op::MatMul(MatMulAttrs { epilogue }),
            vec![x, y, e],
            vec!["y".into()],
        )
        .unwrap();
    let f64s = |r: &mut Rng, n: usize| r.vec(n).into_iter().map(f64::from).collect::<Vec<_>>();
    let data = vec![
        Tensor::f64(vec![4, 3], f64s(&mut r, 12)),
        Tensor::f64(vec![3, 5], f64s(&mut r, 15)),
        Tensor::f64(vec![5], f64s(&mut r, 5)),
    ];
    check(&g, &data);
}

/// The wide kernels' vector exp/erf (sigmoid, tanh, GELU, swish steps) against the
/// interpreter's libm over a wide range: tiny, large (saturating) and NaN inputs. A MatMul with
/// `k = 1` and a row of ones puts the chosen values through the epilogue unchanged.
#[test]
fn wide_epilogue_math() {
    let mut vals: Vec<f32> = (-400..=400).map(|i| i as f32 * 0.05).collect();
    vals.extend([
        -100.0,
        -90.0,
        -88.5,
        -87.0,
        -60.0,
        -30.0,
        30.0,
        60.0,
        88.0,
        88.5,
        90.0,
        100.0,
        1e-7,
        -1e-7,
        0.0,
        -0.0,
        1e-30,
        f32::NAN,
        3.0e38,
        -3.0e38,
    ]);
    let m = vals.len();
    let act = |kind, alpha| EpilogueStep::Act {
        kind,
        alpha,
        beta: 0.0,
    };
    for step in [
        EpilogueStep::Unary(UnaryOp::Sigmoid),
        EpilogueStep::Unary(UnaryOp::Tanh),
        EpilogueStep::Unary(UnaryOp::Gelu),
        EpilogueStep::Unary(UnaryOp::GeluTanh),
        act(ActKind::Swish, 1.0),
        act(ActKind::Swish, 1.702),
    ] {
        let mut g = Graph::new(format!("epilogue_math_{}", step.text()));
        let x = g.add_input("a", TensorType::f32([m, 1]));
        let ones = g
            .add_const(
                "b",
                TensorType::f32([1, 17]),
                ConstData::from_f32(&[1.0; 17]),
            )
            .unwrap();
        let epilogue = vec![step];
        g.outputs = g
            .add_node(
                "m",
                Op::MatMul(MatMulAttrs { epilogue }),
                vec![x, ones],
                vec!["y".into()],
            )
            .unwrap();
        check(&g, &[Tensor::f32([m, 1], vals.clone())]);
    }
}

/// LayerNorm (the LLVM row kernel and the scalar loop): with and without scale and bias,
/// rows shorter than a vector, with a tail, long rows, several trailing axes, rows far from 0.
#[test]
fn layer_norm() {
    let mut r = Rng(21);
    for (shape, axis, affine, (scale, shift)) in [
        (vec![3, 17], 1, 2, (1.0, 0.0)),
        (vec![2, 3, 40], 2, 1, (3.0, 0.0)),
        (vec![2, 3, 4, 5], 1, 0, (1.0, 0.0)),
        (vec![4, 1000], 1, 2, (100.0, 1000.0)),
        (vec![2, 1], 1, 2, (1.0, 0.0)),
        (vec![5, 16], 1, 2, (1.0, 0.0)),
    ] {
        let mut g = Graph::new(format!("layer_norm_{shape:?}_{affine}"));
        let x = g.add_input("x", TensorType::f32(shape.clone()));
        let row = shape[axis..].to_vec();
        let len: usize = row.iter().product();
        let mut inputs = vec![x];
        for k in 0..affine {
            // a leading 1 on the scale: allowed
            let s = if k == 0 {
                [vec![1], row.clone()].concat()
            } else {
                row.clone()
            };
            let c = ConstData::from_f32(&r.vec(len));
            inputs.push(g.add_const(format!("p{k}"), TensorType::f32(s), c).unwrap());
        }
        let epsilon = 1e-5;
        g.outputs = g
            .add_node(
                "ln",
                Op::LayerNorm { axis, epsilon },
                inputs,
                vec!["y".into()],
            )
            .unwrap();
        let n: usize = shape.iter().product();
        let data = r.vec(n).into_iter().map(|v| v * scale + shift).collect();
        check(&g, &[Tensor::f32(shape.clone(), data)]);
    }
}

/// Where absolute tolerance hides errors: tanh of small values keeps its relative precision,
/// and masked (-inf) Softmax entries are exactly 0, in the LLVM kernels.
#[test]
fn wide_math_small_values() {
    let vals: Vec<f32> = [
        1e-7f32, -3e-6, 1e-4, -2e-3, 0.01, -0.05, 0.15, -0.199, 0.2, 0.25,
    ]
    .to_vec();
    let m = vals.len();
    let mut g = Graph::new("tanh_small");
    let x = g.add_input("a", TensorType::f32([m, 1]));
    let ones = g
        .add_const(
            "b",
            TensorType::f32([1, 17]),
            ConstData::from_f32(&[1.0; 17]),
        )
        .unwrap();
    let epilogue = vec![EpilogueStep::Unary(UnaryOp::Tanh)];
    g.outputs = g
        .add_node(
            "m",
            Op::MatMul(MatMulAttrs { epilogue }),
            vec![x, ones],
            vec!["y".into()],
        )
        .unwrap();
    let got = compiled(&g, &[Tensor::f32([m, 1], vals.clone())]);
    let got = got[0].as_f32().unwrap();
    for (i, v) in vals.iter().enumerate() {
        let want = (*v as f64).tanh();
        let y = got[i * 17] as f64;
        assert!(
            (y - want).abs() <= 2e-6 * want.abs(),
            "tanh({v}) = {y}, want {want}"
        );
    }
    let g = unary_graph(
        "softmax_masked",
        Op::Softmax {
            axis: 1,
            kind: SoftmaxKind::Softmax,
        },
        &[2, 40],
    );
    let mut x: Vec<f32> = Rng(4).vec(80);
    for i in (0..80).step_by(3) {
        x[i] = f32::NEG_INFINITY;
    }
    let got = compiled(&g, &[Tensor::f32([2, 40], x.clone())]);
    for (i, y) in got[0].as_f32().unwrap().iter().enumerate() {
        assert!(
            x[i] != f32::NEG_INFINITY || *y == 0.0,
            "masked entry {i}: {y}"
        );
    }
}

#[test]
fn conv_transpose_and_pools() {
    let mut r = Rng(5);
    let mut g = Graph::new("convt");
    let x = g.add_input("x", TensorType::f32([1, 4, 5, 5]));
    let w = g
        .add_const(
            "w",
            TensorType::f32([4, 3, 3, 3]),
            ConstData::from_f32(&r.vec(108)),
        )
        .unwrap();
    let b = g
        .add_const("b", TensorType::f32([6]), ConstData::from_f32(&r.vec(6)))
        .unwrap();
    let a = ConvTransposeAttrs {
        kernel: vec![3, 3],
        strides: vec![2, 2],
        pads: vec![1, 1, 0, 0],
        dilations: vec![1, 1],
        groups: 2,
        output_padding: vec![1, 1],
    };
    g.outputs = g
        .add_node("ct", Op::ConvTranspose(a), vec![x, w, b], vec!["y".into()])
        .unwrap();
    check(&g, &[Tensor::f32([1, 4, 5, 5], r.vec(100))]);

    for (max, ceil, inc) in [
        (true, false, false),
        (true, true, false),
        (false, false, false),
        (false, true, true),
        (false, false, true),
    ] {
        let a = PoolAttrs {
            kernel: vec![3, 3],
            strides: vec![2, 2],
            pads: vec![1, 1, 1, 1],
            dilations: vec![1, 1],
            ceil_mode: ceil,
            count_include_pad: inc,
        };
        let op = if max {
            Op::MaxPool(a)
        } else {
            Op::AveragePool(a)
        };
        run_unary("pool", op, &[1, 2, 8, 7], |x| x);
    }
    // max pools on the wide (depthwise-style) kernel: several vectors per row plus a tail,
    // stride 1 and 2, ceil mode past the right edge, dilation, batches
    for (k, s, p, d, ceil, shape) in [
        (3, 1, 1, 1, false, vec![2, 3, 9, 45]),
        (2, 2, 0, 1, false, vec![1, 4, 12, 40]),
        (3, 2, 0, 1, true, vec![1, 2, 13, 38]),
        (3, 1, 2, 2, false, vec![1, 2, 11, 21]),
    ] {
        let a = PoolAttrs {
            kernel: vec![k, k],
            strides: vec![s, s],
            pads: vec![p; 4],
            dilations: vec![d, d],
            ceil_mode: ceil,
            count_include_pad: false,
        };
        run_unary("max_pool_wide", Op::MaxPool(a), &shape, |x| x);
    }
}

#[test]
fn gemm_and_matmul() {
    let mut r = Rng(11);
    for (ta, tb, m, k, n, cshape, alpha) in [
        (false, false, 3, 5, 8, vec![8], 0.5),
        (false, true, 2, 12, 7, vec![2, 7], 0.5),
        (true, false, 4, 3, 5, vec![4, 1], 0.5),
        (true, true, 1, 9, 6, vec![], 0.5),
        // no epilogue at all; several row blocks and column tiles
        (false, true, 19, 40, 70, vec![], 1.0),
    ] {
        let mut g = Graph::new("gemm");
        let sa = if ta { vec![k, m] } else { vec![m, k] };
        let sb = if tb { vec![n, k] } else { vec![k, n] };
        let a = g.add_input("a", TensorType::f32(sa.clone()));
        let b = g
            .add_const(
                "b",
                TensorType::f32(sb.clone()),
                ConstData::from_f32(&r.vec(k * n)),
            )
            .unwrap();
        let mut ins = vec![a, b];
        if !cshape.is_empty() {
            let cn: usize = cshape.iter().product();
            ins.push(
                g.add_const(
                    "c",
                    TensorType::f32(cshape.clone()),
                    ConstData::from_f32(&r.vec(cn)),
                )
                .unwrap(),
            );
        }
        g.outputs = g
            .add_node(
                "g",
                Op::Gemm(GemmAttrs {
                    alpha,
                    beta: 2.0,
                    trans_a: ta,
                    trans_b: tb,
                    epilogue: vec![EpilogueStep::Clip {
                        min: -0.5,
                        max: 0.75,
                    }],
                }),
                ins,
                vec!["y".into()],
            )
            .unwrap();
        check(&g, &[Tensor::f32(sa, r.vec(m * k))]);
    }
    // one row times a [n][k] constant (a classifier's last layer): the GEMV row kernel, with
    // k and n below, at and above the vector width and the 8-column work item
    for (k, n, cshape) in [
        (9, 6, vec![6]),
        (40, 70, vec![1, 70]),
        (1280, 1000, vec![1000]),
        (16, 8, vec![]),
        (17, 3, vec![3]),
        (5, 1, vec![1]),
    ] {
        let mut g = Graph::new("gemv");
        let a = g.add_input("a", TensorType::f32([1, k]));
        let b = g
            .add_const(
                "b",
                TensorType::f32([n, k]),
                ConstData::from_f32(&r.vec(k * n)),
            )
            .unwrap();
        let mut ins = vec![a, b];
        if !cshape.is_empty() {
            let c = ConstData::from_f32(&r.vec(n));
            ins.push(g.add_const("c", TensorType::f32(cshape), c).unwrap());
        }
        let attrs = GemmAttrs {
            alpha: 1.0,
            beta: 1.0,
            trans_a: false,
            trans_b: true,
            epilogue: vec![EpilogueStep::Unary(UnaryOp::Relu)],
        };
        g.outputs = g
            .add_node("g", Op::Gemm(attrs), ins, vec!["y".into()])
            .unwrap();
        check(&g, &[Tensor::f32([1, k], r.vec(k))]);
    }
    for (sa, sb) in [
        (vec![2, 3, 4], vec![4, 5]),
        (vec![4], vec![2, 4, 3]),
        (vec![2, 1, 3, 16], vec![1, 3, 16, 8]),
        (vec![5, 6], vec![6]),
        // the tiled path (m >= 4, n >= 8): row and column tails, batches, broadcasting
        (vec![2, 3, 5, 7], vec![7, 9]),
        (vec![3, 1, 6, 8], vec![1, 2, 8, 13]),
        (vec![4, 16], vec![16, 8]),
        (vec![2, 9, 33], vec![2, 33, 20]),
    ] {
        let mut g = Graph::new("matmul");
        let a = g.add_input("a", TensorType::f32(sa.clone()));
        let b = g.add_input("b", TensorType::f32(sb.clone()));
        g.outputs = g
            .add_node("m", Op::matmul(), vec![a, b], vec!["y".into()])
            .unwrap();
        let (na, nb) = (sa.iter().product(), sb.iter().product());
        check(
            &g,
            &[Tensor::f32(sa, r.vec(na)), Tensor::f32(sb, r.vec(nb))],
        );
    }
}

#[test]
fn data_movement_and_norm() {
    let mut r = Rng(3);
    // concat + split + reshape + batchnorm, with a graph output that is also an input
    let mut g = Graph::new("move");
    let x = g.add_input("x", TensorType::f32([1, 2, 3, 3]));
    let y = g.add_input("y", TensorType::f32([1, 3, 3, 3]));
    let c = g
        .add_node("cat", Op::Concat { axis: 1 }, vec![x, y], vec!["c".into()])
        .unwrap()[0];
    let p: Vec<_> = (0..4)
        .map(|i| {
            g.add_const(
                format!("p{i}"),
                TensorType::f32([5]),
                ConstData::from_f32(
                    &r.vec(5)
                        .iter()
                        .map(|v| if i == 3 { v.abs() + 0.5 } else { *v })
                        .collect::<Vec<_>>(),
                ),
            )
            .unwrap()
        })
        .collect();
    let bn = g
        .add_node(
            "bn",
            Op::BatchNorm { epsilon: 1e-5 },
            vec![c, p[0], p[1], p[2], p[3]],
            vec!["bn".into()],
        )
        .unwrap()[0];
    let parts = g
        .add_node(
            "split",
            Op::Split {
                axis: 1,
                sizes: vec![1, 4],
            },
            vec![bn],
            vec!["s0".into(), "s1".into()],
        )
        .unwrap();
    let rs = g
        .add_node(
            "rs",
            Op::Reshape { shape: vec![4, 9] },
            vec![parts[1]],
            vec!["rs".into()],
        )
        .unwrap()[0];
    g.outputs = vec![parts[0], rs, x];
    check(
        &g,
        &[
            Tensor::f32([1, 2, 3, 3], r.vec(18)),
            Tensor::f32([1, 3, 3, 3], r.vec(27)),
        ],
    );
}

#[test]
fn resize_modes() {
    for (mode, coord, nearest) in [
        (
            ResizeMode::Nearest,
            CoordTransform::Asymmetric,
            NearestMode::Floor,
        ),
        (
            ResizeMode::Nearest,
            CoordTransform::HalfPixel,
            NearestMode::RoundPreferFloor,
        ),
        (
            ResizeMode::Nearest,
            CoordTransform::AlignCorners,
            NearestMode::RoundPreferCeil,
        ),
        (
            ResizeMode::Linear,
            CoordTransform::HalfPixel,
            NearestMode::Floor,
        ),
        (
            ResizeMode::Linear,
            CoordTransform::AlignCorners,
            NearestMode::Floor,
        ),
        (
            ResizeMode::Linear,
            CoordTransform::PytorchHalfPixel,
            NearestMode::Floor,
        ),
        (
            ResizeMode::Linear,
            CoordTransform::Asymmetric,
            NearestMode::Floor,
        ),
    ] {
        let a = ResizeAttrs {
            mode,
            coord,
            nearest,
            scales: vec![1.0, 1.0, 2.0, 1.5],
            out_shape: vec![1, 2, 8, 9],
        };
        run_unary("resize", Op::Resize(a), &[1, 2, 4, 6], |x| x);
    }
    // integer nearest upsampling (the repeat path) in the coordinate modes that come to
    // `in = out / f`, over any dims; align_corners does not and takes the general path
    for (coord, nearest, scales, out_shape) in [
        (
            CoordTransform::Asymmetric,
            NearestMode::Floor,
            vec![1.0, 1.0, 2.0, 4.0],
            vec![1, 2, 8, 24],
        ),
        (
            CoordTransform::HalfPixel,
            NearestMode::RoundPreferFloor,
            vec![1.0, 1.0, 2.0, 2.0],
            vec![1, 2, 8, 12],
        ),
        (
            CoordTransform::Asymmetric,
            NearestMode::Floor,
            vec![2.0, 3.0, 1.0, 1.0],
            vec![2, 6, 4, 6],
        ),
        (
            CoordTransform::AlignCorners,
            NearestMode::Floor,
            vec![1.0, 1.0, 2.0, 2.0],
            vec![1, 2, 8, 12],
        ),
    ] {
        let a = ResizeAttrs {
            mode: ResizeMode::Nearest,
            coord,
            nearest,
            scales,
            out_shape,
        };
        run_unary("resize_repeat", Op::Resize(a), &[1, 2, 4, 6], |x| x);
    }
}

#[test]
fn unsupported_nodes_are_all_listed() {
    // trigonometry is not defined on integers: both nodes must be named in one error
    let mut g = Graph::new("ints");
    let x = g.add_input("x", TensorType::new(DType::I64, [4]));
    let a = g
        .add_node("first", Op::Unary(UnaryOp::Sin), vec![x], vec!["a".into()])
        .unwrap();
    let b = g
        .add_node(
            "second",
            Op::Unary(UnaryOp::Cos),
            vec![a[0]],
            vec!["b".into()],
        )
        .unwrap();
    g.outputs = b;
    let err = kiln_target_cpu::compile_jit(&g, "ints")
        .err()
        .expect("must fail")
        .to_string();
    assert!(
        err.contains("'first'") && err.contains("'second'") && err.contains("i64"),
        "{err}"
    );
}

#[test]
fn compare_logic_where() {
    let mut r = Rng(21);
    // float comparisons with broadcasting, combined with logic and used by Where on i64 data
    for c in [
        CmpOp::Equal,
        CmpOp::Less,
        CmpOp::Greater,
        CmpOp::LessOrEqual,
        CmpOp::GreaterOrEqual,
    ] {
        for l in [LogicOp::And, LogicOp::Or, LogicOp::Xor] {
            let mut g = Graph::new(c.name());
            let a = g.add_input("a", TensorType::f32([2, 3, 4]));
            let b = g.add_input("b", TensorType::f32([3, 1]));
            let x = g.add_input("x", TensorType::new(DType::I64, [4]));
            let y = g.add_input("y", TensorType::new(DType::I64, [2, 1, 1]));
            let m = g
                .add_node("cmp", Op::Compare(c), vec![a, b], vec!["m".into()])
                .unwrap()[0];
            let n = g
                .add_node("not", Op::Not, vec![m], vec!["n".into()])
                .unwrap()[0];
            let k = g
                .add_node(
                    "cmp2",
                    Op::Compare(CmpOp::Greater),
                    vec![a, a],
                    vec!["k".into()],
                )
                .unwrap()[0];
            let lg = g
                .add_node("logic", Op::Logical(l), vec![n, k], vec!["lg".into()])
                .unwrap()[0];
            let w = g
                .add_node("where", Op::Where, vec![lg, x, y], vec!["w".into()])
                .unwrap()[0];
            g.outputs = vec![m, lg, w];
            // quantize to a coarse grid so Equal sees ties
            let q = |v: Vec<f32>| {
                v.into_iter()
                    .map(|x| (x * 2.0).round() / 2.0)
                    .collect::<Vec<_>>()
            };
            let inputs = [
                Tensor::f32([2, 3, 4], q(r.vec(24))),
                Tensor::f32([3, 1], q(r.vec(3))),
                Tensor::i64([4], vec![1, -2, 3, i64::MAX]),
                Tensor::i64([2, 1, 1], vec![-7, 8]),
            ];
            check(&g, &inputs);
        }
    }
}

/// f32 <-> f16/bf16 casts bit-exact against the `half` crate: normals, ties (round to nearest
/// even), subnormals, overflow to infinity, infinities and NaN.
#[test]
fn half_float_casts() {
    let mut vals: Vec<f32> = vec![
        0.0,
        -0.0,
        1.0,
        -2.5,
        65504.0,
        65519.0,
        65520.0,
        1e9,
        -1e9,
        6.1e-5,
        5.96e-8,
        2.98e-8,
        1e-10,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NAN,
        1.0 + 1.0 / 2048.0,
        1.0 + 3.0 / 2048.0,
        3.0e38,
        1.003_906_2,
        1.011_718_8,
    ];
    let mut r = Rng(3);
    vals.extend((0..200).map(|_| {
        let v = r.f();
        v * 10f32.powi((r.f() * 12.0) as i32)
    }));
    let n = vals.len();
    for (dt, to16, from16) in [
        (
            DType::F16,
            (|v: f32| half::f16::from_f32(v).to_bits()) as fn(f32) -> u16,
            (|b: u16| half::f16::from_bits(b).to_f32()) as fn(u16) -> f32,
        ),
        (
            DType::BF16,
            |v: f32| half::bf16::from_f32(v).to_bits(),
            |b: u16| half::bf16::from_bits(b).to_f32(),
        ),
    ] {
        // f32 -> 16-bit -> f32 in one graph; check both the 16-bit bits and the way back
        let mut g = Graph::new("half");
        let x = g.add_input("x", TensorType::f32([n]));
        let h = g
            .add_node("to", Op::Cast { to: dt }, vec![x], vec!["h".into()])
            .unwrap()[0];
        let back = g
            .add_node(
                "back",
                Op::Cast { to: DType::F32 },
                vec![h],
                vec!["y".into()],
            )
            .unwrap()[0];
        g.outputs = vec![h, back];
        let jit = kiln_target_cpu::compile_jit(&g, "half").unwrap();
        let m = unsafe {
            kiln_runtime::Model::from_raw(jit.descriptor() as *const kiln_runtime::KilnModel)
        }
        .unwrap();
        let mut ws = m.workspace().unwrap();
        let xb: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut hb = vec![0u8; 2 * n];
        let mut yb = vec![0u8; 4 * n];
        m.run(&[&xb], &mut [&mut hb, &mut yb], &mut ws).unwrap();
        for (i, &v) in vals.iter().enumerate() {
            let got = u16::from_le_bytes([hb[2 * i], hb[2 * i + 1]]);
            let want = to16(v);
            if v.is_nan() {
                assert!(from16(got).is_nan(), "{dt}: NaN -> {got:#x}");
                continue;
            }
            assert_eq!(got, want, "{dt}: {v:e} -> {got:#x}, want {want:#x}");
            let y = f32::from_le_bytes(yb[4 * i..4 * i + 4].try_into().unwrap());
            assert_eq!(
                y.to_bits(),
                from16(want).to_bits(),
                "{dt}: {want:#x} -> {y:e}"
            );
        }
    }
}

/// The direct N-D path: 3-D convolution (groups, strides, pads, dilations, bias) and 3-D
/// max/average pooling (pads, ceil mode, count_include_pad), f64 2-D convolution.
#[test]
fn direct_nd_conv_and_pools() {
    let conv3 = |groups, strides: [usize; 3], pads: [usize; 6], dil: [usize; 3]| ConvAttrs {
        kernel: vec![2, 3, 2],
        strides: strides.to_vec(),
        pads: pads.to_vec(),
        dilations: dil.to_vec(),
        groups,
        epilogue: Vec::new(),
        layout: kiln_ir::Layout::Plain,
    };
    conv_case(
        &[1, 4, 5, 6, 4],
        &[6, 2, 2, 3, 2],
        conv3(2, [1, 1, 1], [0; 6], [1, 1, 1]),
        true,
    );
    conv_case(
        &[2, 3, 6, 7, 5],
        &[4, 3, 2, 3, 2],
        conv3(1, [2, 1, 2], [1, 0, 1, 0, 2, 1], [1, 2, 1]),
        false,
    );
    for is_max in [true, false] {
        for (ceil_mode, count_include_pad, pads) in [
            (false, false, vec![0; 6]),
            (true, false, vec![1, 0, 1, 1, 1, 0]),
            (false, true, vec![1, 1, 0, 0, 1, 1]),
        ] {
            let a = PoolAttrs {
                kernel: vec![2, 3, 2],
                strides: vec![2, 1, 2],
                pads,
                dilations: vec![1, 1, 1],
                ceil_mode,
                count_include_pad,
            };
            let op = if is_max {
                Op::MaxPool(a)
            } else {
                Op::AveragePool(a)
            };
            run_unary("pool3d", op, &[1, 2, 5, 6, 5], |x| x);
        }
    }
    // 3-D transposed convolution with groups, strides, pads, dilations, output padding
    let mut r = Rng(12);
    let mut g = Graph::new("convt3d");
    let x = g.add_input("x", TensorType::f32([1, 4, 3, 4, 3]));
    let w = g
        .add_const(
            "w",
            TensorType::f32([4, 3, 2, 3, 2]),
            ConstData::from_f32(&r.vec(4 * 3 * 12)),
        )
        .unwrap();
    let b = g
        .add_const("b", TensorType::f32([6]), ConstData::from_f32(&r.vec(6)))
        .unwrap();
    let a = ConvTransposeAttrs {
        kernel: vec![2, 3, 2],
        strides: vec![2, 1, 3],
        pads: vec![1, 0, 0, 0, 1, 1],
        dilations: vec![1, 2, 1],
        groups: 2,
        output_padding: vec![1, 0, 2],
    };
    g.outputs = g
        .add_node("c", Op::ConvTranspose(a), vec![x, w, b], vec!["y".into()])
        .unwrap();
    check(&g, &[Tensor::f32([1, 4, 3, 4, 3], r.vec(144))]);
    // MaxPool's index output (row- and column-major), with ties and padding
    for storage_order in [false, true] {
        let a = PoolAttrs {
            kernel: vec![3, 2],
            strides: vec![2, 1],
            pads: vec![1, 0, 1, 1],
            dilations: vec![1, 1],
            ceil_mode: false,
            count_include_pad: false,
        };
        run_unary(
            "max_pool_indices",
            Op::MaxPoolIndices {
                attrs: a,
                storage_order,
            },
            &[2, 3, 5, 4],
            |x| (x * 3.0).round(),
        );
    }
    // f64 convolution takes the direct path too
    let mut r = Rng(8);
    let mut g = Graph::new("conv_f64");
    let x = g.add_input("x", TensorType::new(DType::F64, vec![1, 2, 5, 5]));
    let wv: Vec<f64> = r.vec(2 * 2 * 3 * 3).into_iter().map(|v| v as f64).collect();
    let w = g
        .add_const(
            "w",
            TensorType::new(DType::F64, vec![2, 2, 3, 3]),
            ConstData::from_vec(wv.iter().flat_map(|v| v.to_le_bytes()).collect()),
        )
        .unwrap();
    let a = ConvAttrs {
        kernel: vec![3, 3],
        strides: vec![1, 2],
        pads: vec![1, 1, 1, 0],
        dilations: vec![1, 1],
        groups: 1,
        epilogue: Vec::new(),
        layout: kiln_ir::Layout::Plain,
    };
    g.outputs = g
        .add_node("c", Op::Conv(a), vec![x, w], vec!["y".into()])
        .unwrap();
    let xv: Vec<f64> = r.vec(50).into_iter().map(|v| v as f64).collect();
    check(&g, &[Tensor::f64([1, 2, 5, 5], xv)]);
}

/// BitCast between element sizes (same, smaller, larger).
#[test]
fn bit_casts() {
    let mut r = Rng(41);
    // same size, smaller (adds a last dim of 4), larger (consumes a last dim of 2)
    for (to, shape_in) in [
        (DType::I32, vec![3, 4]),
        (DType::U8, vec![3, 4]),
        (DType::F64, vec![3, 2, 2]),
    ] {
        let g = unary_graph("bit_cast", Op::BitCast { to }, &shape_in);
        let n = shape_in.iter().product();
        check(&g, &[Tensor::f32(shape_in.clone(), r.vec(n))]);
    }
}

/// Resample (the general Resize path) on each axis, with extrapolated rows.
#[test]
fn resample_tables() {
    let mut r = Rng(31);
    let x = Tensor::f32([2, 5, 3], r.vec(30));
    for axis in 0..3 {
        let len = [2, 5, 3][axis];
        let (out, taps) = (4usize, 3usize);
        let idx: Vec<i32> = (0..out * taps)
            .map(|k| if k == taps { -1 } else { (k * 7 % len) as i32 })
            .collect();
        let w = r.vec(out * taps);
        let mut g = Graph::new("resample");
        let xi = g.add_input("x", x.ty());
        let iv = g
            .add_const(
                "idx",
                TensorType::new(DType::I32, vec![out, taps]),
                ConstData::from_vec(idx.iter().flat_map(|v| v.to_le_bytes()).collect()),
            )
            .unwrap();
        let wv = g
            .add_const("w", TensorType::f32([out, taps]), ConstData::from_f32(&w))
            .unwrap();
        g.outputs = g
            .add_node(
                "n",
                Op::Resample { axis, fill: -7.5 },
                vec![xi, iv, wv],
                vec!["y".into()],
            )
            .unwrap();
        check(&g, std::slice::from_ref(&x));
    }
}

/// Fused epilogues (activation, residual Add) in the tiled 2-D kernel (every tile width and
/// channel tail, vector and lane-by-lane steps) and in the direct N-D kernel.
#[test]
fn conv_epilogues() {
    use EpilogueStep as E;
    type Case = (Vec<usize>, Vec<usize>, usize, Vec<E>);
    let cases: Vec<Case> = vec![
        (
            vec![1, 3, 7, 13],
            vec![6, 3, 3, 3],
            1,
            vec![E::Unary(UnaryOp::Relu)],
        ),
        (
            vec![1, 3, 7, 13],
            vec![5, 3, 3, 3],
            1,
            vec![E::Add, E::Unary(UnaryOp::Relu)],
        ),
        (
            vec![1, 4, 6, 9],
            vec![4, 1, 3, 3],
            4,
            vec![E::Clip { min: 0.0, max: 6.0 }, E::Add],
        ),
        (
            vec![1, 2, 5, 11],
            vec![3, 2, 1, 1],
            1,
            vec![
                E::Unary(UnaryOp::Sigmoid),
                E::Unary(UnaryOp::HardSwish),
                E::Act {
                    kind: ActKind::LeakyRelu,
                    alpha: 0.1,
                    beta: 0.0,
                },
                E::Unary(UnaryOp::Gelu),
            ],
        ),
        (
            vec![1, 2, 3, 4, 5],
            vec![3, 2, 3, 1, 3],
            1,
            vec![E::Add, E::Unary(UnaryOp::Tanh)],
        ),
        (
            vec![1, 5, 9, 21],
            vec![12, 5, 3, 3],
            1,
            vec![
                E::Unary(UnaryOp::HardSwish),
                E::Act {
                    kind: ActKind::Affine,
                    alpha: 1.5,
                    beta: -0.25,
                },
                E::Add,
            ],
        ),
        (
            vec![1, 6, 10, 19],
            vec![6, 1, 3, 3],
            6,
            vec![
                E::Act {
                    kind: ActKind::HardSigmoid,
                    alpha: 0.2,
                    beta: 0.5,
                },
                E::Act {
                    kind: ActKind::Affine,
                    alpha: 0.5,
                    beta: 1.0,
                },
            ],
        ),
    ];
    for (k, (x, w, groups, epi)) in cases.into_iter().enumerate() {
        let mut r = Rng(11 + k as u64);
        let sp = x.len() - 2;
        let a = ConvAttrs {
            kernel: w[2..].to_vec(),
            strides: vec![1; sp],
            pads: w[2..]
                .iter()
                .flat_map(|&k| [k / 2])
                .cycle()
                .take(2 * sp)
                .collect(),
            dilations: vec![1; sp],
            groups,
            epilogue: epi.clone(),
            layout: kiln_ir::Layout::Plain,
        };
        let mut g = Graph::new(format!("conv_epilogue_{k}"));
        let xi = g.add_input("x", TensorType::f32(x.clone()));
        let wn: usize = w.iter().product();
        let wv = g
            .add_const(
                "w",
                TensorType::f32(w.clone()),
                ConstData::from_f32(&r.vec(wn)),
            )
            .unwrap();
        let bv = g
            .add_const(
                "b",
                TensorType::f32([w[0]]),
                ConstData::from_f32(&r.vec(w[0])),
            )
            .unwrap();
        let mut ins = vec![xi, wv, bv];
        let mut tensors = vec![Tensor::f32(x.clone(), r.vec(x.iter().product()))];
        if epi.contains(&E::Add) {
            let plain = ConvAttrs {
                epilogue: vec![],
                ..a.clone()
            };
            let out = plain
                .kernel
                .iter()
                .zip(&x[2..])
                .map(|(&kk, &d)| d + 2 * (kk / 2) - kk + 1);
            let mut shape = vec![x[0], w[0]];
            shape.extend(out);
            let n: usize = shape.iter().product();
            ins.push(g.add_input("res", TensorType::f32(shape.clone())));
            tensors.push(Tensor::f32(shape, r.vec(n)));
        }
        g.outputs = g.add_node("c", Op::Conv(a), ins, vec!["y".into()]).unwrap();
        check(&g, &tensors);
    }
}

/// Channel-blocked (`Nchwc`) kernels against the interpreter, for every vector width the host
/// can run (the block is the target's lanes; AVX-512 at least compiled): depthwise convolutions (strides 1 and 2,
/// dilation, 5x5, odd sizes, left/right padding tiles, a residual), dense convolutions with a
/// plain packed input (a stem) or a blocked 1x1 input, max pooling, global average pooling,
/// elementwise ops on blocked operands and relayouts both ways.
#[test]
fn blocked_layouts() {
    let mut r = Rng(0xB10C);
    let host_lanes = kiln_target_cpu::LlvmTarget::new(None, None).unwrap().lanes;
    // AVX-512 kernels are only compiled (to an object: LLVM checks the IR) on a host without it
    let check_with =
        |g: &Graph, ins: &[Tensor], want: &[Tensor], opts: &kiln_target_cpu::CpuOptions| {
            if opts.target_cpu.as_deref() == Some("x86-64-v4") && host_lanes != 16 {
                kiln_target_cpu::compile_object(g, opts).expect("AVX-512 blocked kernels compile");
            } else {
                check_with(g, ins, want, opts);
            }
        };
    for cpu in [None, Some("x86-64-v3"), Some("x86-64"), Some("x86-64-v4")] {
        let lanes = kiln_target_cpu::LlvmTarget::new(None, cpu).unwrap().lanes;
        let bl = kiln_ir::Layout::Nchwc(lanes as u32);
        let opts = kiln_target_cpu::CpuOptions {
            par_min_macs: 0,
            target_cpu: cpu.map(Into::into),
            ..kiln_target_cpu::CpuOptions::host("t")
        };
        let conv =
            |k: usize, s: usize, p: usize, d: usize, groups: usize, epi: Vec<EpilogueStep>| {
                ConvAttrs {
                    kernel: vec![k, k],
                    strides: vec![s, s],
                    pads: vec![p; 4],
                    dilations: vec![d, d],
                    groups,
                    epilogue: epi,
                    layout: bl,
                }
            };
        let clip = EpilogueStep::Clip { min: 0.0, max: 6.0 };
        // (name, channels in, out, h, w, attrs, residual)
        let cases = [
            (
                "dw3s1",
                2 * lanes,
                2 * lanes,
                9,
                13,
                conv(3, 1, 1, 1, 2 * lanes, vec![clip]),
                false,
            ),
            (
                "dw3s2",
                lanes,
                lanes,
                10,
                11,
                conv(3, 2, 1, 1, lanes, vec![]),
                false,
            ),
            (
                "dw5s2",
                lanes,
                lanes,
                15,
                15,
                conv(5, 2, 2, 1, lanes, vec![clip]),
                false,
            ),
            (
                "dw3d2",
                lanes,
                lanes,
                8,
                8,
                conv(3, 1, 2, 2, lanes, vec![]),
                false,
            ),
            (
                "dw3res",
                lanes,
                lanes,
                7,
                7,
                conv(3, 1, 1, 1, lanes, vec![EpilogueStep::Add, clip]),
                true,
            ),
            (
                "pw",
                2 * lanes,
                3 * lanes,
                7,
                7,
                conv(1, 1, 0, 1, 1, vec![clip]),
                false,
            ),
            (
                "pwres",
                lanes,
                lanes,
                5,
                9,
                conv(1, 1, 0, 1, 1, vec![EpilogueStep::Add]),
                true,
            ),
        ];
        for (name, c, m, h, w, a, res) in cases {
            let mut g = Graph::new(format!("{name}_{lanes}"));
            let x = g.add_input("x", TensorType::f32([1, c, h, w]));
            let xb = g
                .add_node("to", Op::Relayout { to: bl }, vec![x], vec!["xb".into()])
                .unwrap()[0];
            let wt = TensorType::f32([m, c / a.groups, a.kernel[0], a.kernel[1]]);
            let wv = g
                .add_const("w", wt.clone(), ConstData::from_f32(&r.vec(wt.numel())))
                .unwrap();
            let bv = g
                .add_const("b", TensorType::f32([m]), ConstData::from_f32(&r.vec(m)))
                .unwrap();
            let mut ins = vec![xb, wv, bv];
            if res {
                ins.push(xb);
            }
            let y = g.add_node("c", Op::Conv(a), ins, vec!["y".into()]).unwrap()[0];
            // an elementwise op between blocked values, then back to plain
            let z = g
                .add_node("n", Op::Unary(UnaryOp::Neg), vec![y], vec!["z".into()])
                .unwrap()[0];
            g.outputs = g
                .add_node(
                    "back",
                    Op::Relayout {
                        to: kiln_ir::Layout::Plain,
                    },
                    vec![z],
                    vec!["out".into()],
                )
                .unwrap();
            let xt = Tensor::f32([1, c, h, w], r.vec(c * h * w));
            kiln_ir::verify::verify(&g).unwrap();
            let want = interp::run(&g, std::slice::from_ref(&xt)).unwrap();
            check_with(&g, &[xt], &want, &opts);
        }
        // a stem: plain 3-channel input, blocked output; then a blocked max pool and a global
        // average pool of the blocked result
        let mut g = Graph::new(format!("stem_{lanes}"));
        let x = g.add_input("x", TensorType::f32([2, 3, 17, 15]));
        let wv = g
            .add_const(
                "w",
                TensorType::f32([2 * lanes, 3, 3, 3]),
                ConstData::from_f32(&r.vec(2 * lanes * 27)),
            )
            .unwrap();
        let bv = g
            .add_const(
                "b",
                TensorType::f32([2 * lanes]),
                ConstData::from_f32(&r.vec(2 * lanes)),
            )
            .unwrap();
        let y = g
            .add_node(
                "c",
                Op::Conv(conv(3, 2, 1, 1, 1, vec![clip])),
                vec![x, wv, bv],
                vec!["y".into()],
            )
            .unwrap()[0];
        let pool = PoolAttrs {
            kernel: vec![3, 3],
            strides: vec![2, 2],
            pads: vec![1, 1, 1, 1],
            dilations: vec![1, 1],
            ceil_mode: false,
            count_include_pad: false,
        };
        let p = g
            .add_node("p", Op::MaxPool(pool), vec![y], vec!["p".into()])
            .unwrap()[0];
        let gap = g
            .add_node("gap", Op::GlobalAveragePool, vec![p], vec!["gap".into()])
            .unwrap()[0];
        // concat and split along the blocked channels (two images: block copies per image)
        let w1 = g
            .add_const(
                "w1",
                TensorType::f32([lanes, 2 * lanes, 1, 1]),
                ConstData::from_f32(&r.vec(2 * lanes * lanes)),
            )
            .unwrap();
        let b1 = g
            .add_const(
                "b1",
                TensorType::f32([lanes]),
                ConstData::from_f32(&r.vec(lanes)),
            )
            .unwrap();
        let z = g
            .add_node(
                "pw",
                Op::Conv(conv(1, 1, 0, 1, 1, vec![])),
                vec![y, w1, b1],
                vec!["z".into()],
            )
            .unwrap()[0];
        let cat = g
            .add_node(
                "cat",
                Op::Concat { axis: 1 },
                vec![z, y],
                vec!["cat".into()],
            )
            .unwrap()[0];
        let parts = g
            .add_node(
                "split",
                Op::Split {
                    axis: 1,
                    sizes: vec![2 * lanes, lanes],
                },
                vec![cat],
                vec!["s0".into(), "s1".into()],
            )
            .unwrap();
        // every blocked result back to plain for the outputs
        let plain = |g: &mut Graph, v, name: &str| {
            let to = kiln_ir::Layout::Plain;
            g.add_node(name, Op::Relayout { to }, vec![v], vec![name.into()])
                .unwrap()[0]
        };
        let s0 = plain(&mut g, parts[0], "s0p");
        let s1 = plain(&mut g, parts[1], "s1p");
        let back = plain(&mut g, p, "pp");
        g.outputs = vec![gap, back, s0, s1];
        let xt = Tensor::f32([2, 3, 17, 15], r.vec(2 * 3 * 17 * 15));
        kiln_ir::verify::verify(&g).unwrap();
        let want = interp::run(&g, std::slice::from_ref(&xt)).unwrap();
        check_with(&g, &[xt], &want, &opts);
    }
}

/// Blocks other than the wide kernels' (a hand-written or foreign IR file may hold any
/// `Nchwc(c)`) run on the generic kernels, exactly: relayouts from and to plain and between
/// blocks, elementwise ops, a channel concat, and global average pooling with blocks of 3 and 6
/// lanes (not whole F32X4 vectors).
#[test]
fn odd_blocks_on_generic_kernels() {
    let mut r = Rng(0x0DD);
    let b6 = kiln_ir::Layout::Nchwc(6);
    let b3 = kiln_ir::Layout::Nchwc(3);
    let mut g = Graph::new("odd_blocks");
    let x = g.add_input("x", TensorType::f32([2, 12, 5, 7]));
    let node = |g: &mut Graph, name: &str, op: Op, ins: Vec<kiln_ir::ValueId>| {
        g.add_node(name, op, ins, vec![name.into()]).unwrap()[0]
    };
    let x6 = node(&mut g, "x6", Op::Relayout { to: b6 }, vec![x]);
    let e6 = node(&mut g, "e6", Op::Unary(UnaryOp::Exp), vec![x6]);
    let cat = node(&mut g, "cat", Op::Concat { axis: 1 }, vec![e6, x6]);
    let c3 = node(&mut g, "c3", Op::Relayout { to: b3 }, vec![cat]);
    let g3 = node(&mut g, "g3", Op::GlobalAveragePool, vec![c3]);
    let g6 = node(&mut g, "g6", Op::GlobalAveragePool, vec![cat]);
    let plain = kiln_ir::Layout::Plain;
    let back = node(&mut g, "back", Op::Relayout { to: plain }, vec![c3]);
    g.outputs = vec![g3, g6, back];
    let xt = Tensor::f32([2, 12, 5, 7], r.vec(2 * 12 * 35));
    check(&g, std::slice::from_ref(&xt));
    // nothing is written past an output (each output is followed by guard bytes)
    let jit = kiln_target_cpu::compile_jit(&g, "t").expect("compile");
    let m = model(&jit);
    let mut ws = m.workspace().unwrap();
    let input = xt.to_bytes();
    let sizes: Vec<usize> = m.outputs().iter().map(|o| o.nbytes).collect();
    let mut bufs: Vec<Vec<u8>> = sizes.iter().map(|n| vec![0xAB; n + 64]).collect();
    let mut outs: Vec<&mut [u8]> = bufs
        .iter_mut()
        .zip(&sizes)
        .map(|(b, &n)| &mut b[..n])
        .collect();
    m.run(&[&input], &mut outs, &mut ws).expect("run");
    for (b, &n) in bufs.iter().zip(&sizes) {
        assert!(b[n..].iter().all(|&x| x == 0xAB), "written past an output");
    }
}

/// A blocked convolution whose block is not the target's vector width has no kernel: a clear
/// error naming the node and the layouts, not a crash or a wrong result.
#[test]
fn blocked_layout_without_kernel_is_an_error() {
    let mut g = Graph::new("odd_block");
    let x = g.add_input("x", TensorType::f32([1, 6, 5, 5]));
    let xb = g
        .add_node(
            "to",
            Op::Relayout {
                to: kiln_ir::Layout::Nchwc(3),
            },
            vec![x],
            vec!["xb".into()],
        )
        .unwrap()[0];
    let w = g
        .add_const(
            "w",
            TensorType::f32([6, 1, 3, 3]),
            ConstData::from_f32(&[0.5; 54]),
        )
        .unwrap();
    let a = ConvAttrs {
        kernel: vec![3, 3],
        strides: vec![1, 1],
        pads: vec![1; 4],
        dilations: vec![1, 1],
        groups: 6,
        epilogue: vec![],
        layout: kiln_ir::Layout::Nchwc(3),
    };
    let y = g
        .add_node("dw", Op::Conv(a), vec![xb, w], vec!["y".into()])
        .unwrap()[0];
    g.outputs = g
        .add_node(
            "back",
            Op::Relayout {
                to: kiln_ir::Layout::Plain,
            },
            vec![y],
            vec!["out".into()],
        )
        .unwrap();
    kiln_ir::verify::verify(&g).unwrap();
    let err = kiln_target_cpu::compile_jit(&g, "t")
        .err()
        .expect("no kernel");
    let msg = err.to_string();
    assert!(msg.contains("dw") && msg.contains("nchw3c"), "{msg}");
    // a max pool over blocks of 4 channels: the SSE kernels' block (run, exact); for AVX2
    // (blocks of 8; 8 channels would fit its kernel's shape) an error, not a misread
    let mut g = Graph::new("pool_block4");
    let x = g.add_input("x", TensorType::f32([1, 8, 6, 6]));
    let to = |l| Op::Relayout { to: l };
    let xb = g
        .add_node(
            "to",
            to(kiln_ir::Layout::Nchwc(4)),
            vec![x],
            vec!["xb".into()],
        )
        .unwrap()[0];
    let pool = PoolAttrs {
        kernel: vec![3, 3],
        strides: vec![2, 2],
        pads: vec![1; 4],
        dilations: vec![1, 1],
        ceil_mode: false,
        count_include_pad: false,
    };
    let y = g
        .add_node("mp", Op::MaxPool(pool), vec![xb], vec!["y".into()])
        .unwrap()[0];
    g.outputs = g
        .add_node(
            "back",
            to(kiln_ir::Layout::Plain),
            vec![y],
            vec!["out".into()],
        )
        .unwrap();
    let opts = |cpu: &str| kiln_target_cpu::CpuOptions {
        target_cpu: Some(cpu.into()),
        ..kiln_target_cpu::CpuOptions::host("t")
    };
    let xt = Tensor::f32([1, 8, 6, 6], Rng(4).vec(288));
    let want = interp::run(&g, std::slice::from_ref(&xt)).unwrap();
    check_with(&g, &[xt], &want, &opts("x86-64"));
    let err = kiln_target_cpu::compile_jit_with(&g, &opts("x86-64-v3"))
        .err()
        .expect("no AVX2 kernel for blocks of 4");
    assert!(err.to_string().contains("nchw4c"), "{err}");
}

/// A product whose left operand is a constant (`W x`, PP-OCR det's ConvTranspose as a GEMM):
/// the wide kernel reads it packed at compile time, for every batch of a batched right
/// operand, with partial row blocks and a fused bias/activation epilogue.
#[test]
fn matmul_constant_left_operand() {
    let mut r = Rng(0xA11);
    for (m, k, n, batch) in [(13, 20, 9, 2), (8, 64, 33, 1), (1, 7, 16, 1)] {
        let mut g = Graph::new(format!("wx_{m}_{k}_{n}_{batch}"));
        let w = g
            .add_const(
                "w",
                TensorType::f32([m, k]),
                ConstData::from_f32(&r.vec(m * k)),
            )
            .unwrap();
        let x = g.add_input("x", TensorType::f32([batch, k, n]));
        let bias = g
            .add_const("b", TensorType::f32([m, 1]), ConstData::from_f32(&r.vec(m)))
            .unwrap();
        let a = MatMulAttrs {
            epilogue: vec![EpilogueStep::Add, EpilogueStep::Unary(UnaryOp::Relu)],
        };
        g.outputs = g
            .add_node("mm", Op::MatMul(a), vec![w, x, bias], vec!["y".into()])
            .unwrap();
        let plan = kiln_target_cpu::plan(&g);
        let (mm, _) = g.iter_nodes().next().unwrap();
        assert_eq!(
            plan.scratch[mm.index()],
            None,
            "no packing scratch: A is packed already"
        );
        let xt = Tensor::f32([batch, k, n], r.vec(batch * k * n));
        check(&g, &[xt]);
    }
}

/// Run-time control flow: a loop whose body holds a matrix product (a wide kernel over the
/// pool) with a carried state and a scan output, a loop ended by its condition before its
/// bound (zero rows after it), an `if` taking either branch, and an `if` nested in a loop
/// body; every run compared with the interpreter, the loop past its bound a status.
#[test]
fn control_flow() {
    let src = r#"
graph cf {
  input %m: i64[]
  input %c: bool[]
  input %h0: f32[2,8]
  input %w: f32[8,8]
  %h, %hs = loop(%m, %c, %h0, %w) {n_carried=1, max_trip=5} : f32[2,8], f32[5,2,8] {
    graph body {
      input %i: i64[]
      input %ci: bool[]
      input %hi: f32[2,8]
      input %wi: f32[8,8]
      const %lim: i64[] = [2]
      %p = matmul(%hi, %wi) : f32[2,8]
      %t = tanh(%p) : f32[2,8]
      %co = less(%i, %lim) : bool[]
      output %co, %t, %t
    }
  }
  %y = if(%c, %h, %w) : f32[2,8] {
    graph then {
      input %a: f32[2,8]
      input %b: f32[8,8]
      %r = matmul(%a, %b) : f32[2,8]
      output %r
    }
    graph else {
      input %a: f32[2,8]
      input %b: f32[8,8]
      %r = neg(%a) : f32[2,8]
      output %r
    }
  }
  output %h, %hs, %y
}
"#;
    let g = kiln_ir::text::parse(src).expect("parse");
    let mut r = Rng(33);
    let h0 = Tensor::f32([2, 8], r.vec(16));
    let w = Tensor::f32([8, 8], r.vec(64).iter().map(|v| v * 0.5).collect());
    for (m, c) in [(5, true), (2, true), (0, true), (4, false)] {
        let ins = [
            Tensor::i64([], vec![m]),
            Tensor::bool([], vec![c]),
            h0.clone(),
            w.clone(),
        ];
        check(&g, &ins);
    }
    // with the trip count 7 and the condition out always true the loop needs more rows than
    // its bound: the run stops with the loop status
    let src2 = src
        .replace(
            "%co = less(%i, %lim) : bool[]",
            "%co = greater_or_equal(%i, %lim) : bool[]",
        )
        .replace("output %co, %t, %t", "output %ci, %t, %t");
    let g2 = kiln_ir::text::parse(&src2).expect("parse");
    let ins = [
        Tensor::i64([], vec![7]),
        Tensor::bool([], vec![true]),
        h0.clone(),
        w.clone(),
    ];
    assert!(interp::run(&g2, &ins).is_err(), "the interpreter stops too");
    let jit = kiln_target_cpu::compile_jit(&g2, "t").expect("compile");
    let m = model(&jit);
    let bufs: Vec<Vec<u8>> = ins.iter().map(|t| t.to_bytes()).collect();
    let mut outs: Vec<Vec<u8>> = m.outputs().iter().map(|o| vec![0u8; o.nbytes]).collect();
    let mut ws = m.workspace().unwrap();
    let ins_p: Vec<&[u8]> = bufs.iter().map(|b| b.as_slice()).collect();
    let mut outs_p: Vec<&mut [u8]> = outs.iter_mut().map(|b| b.as_mut_slice()).collect();
    let st = m.run(&ins_p, &mut outs_p, &mut ws);
    assert!(st.is_err(), "a loop past its bound fails the run: {st:?}");
}
