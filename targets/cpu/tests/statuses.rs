//! Run-time errors of compiled code and hostile geometry: an index out of range returns
//! `KILN_ERR_INDEX`, an integer division by zero or `MIN / -1` returns `KILN_ERR_DIVIDE` (never a
//! clamp, a wrap, a trap or an access outside a tensor), a pool without `parallel_for` is
//! `KILN_ERR_NULL`, and convolutions with absurd strides/pads compile quickly and compute what
//! the interpreter does.

use kiln_ir::interp::{self, Tensor};
use kiln_ir::ops::{BinaryOp, ConvAttrs, ScatterReduction};
use kiln_ir::{ConstData, DType, Graph, Op, TensorType};
use kiln_runtime::{Error, KILN_ERR_DIVIDE, KILN_ERR_INDEX, KILN_ERR_NULL, KilnPool, Model};

fn model(jit: &kiln_target_cpu::JitModel) -> Model {
    unsafe { Model::from_raw(jit.descriptor() as *const kiln_runtime::KilnModel) }.unwrap()
}

/// Compile `g` (Cranelift only and with the wide kernels) and run it on `inputs`.
fn run_all(g: &Graph, inputs: &[Tensor]) -> Vec<Result<Vec<Vec<u8>>, Error>> {
    [true, false]
        .into_iter()
        .map(|wide| {
            let opts = kiln_target_cpu::CpuOptions {
                wide,
                ..kiln_target_cpu::CpuOptions::host("t")
            };
            let jit = kiln_target_cpu::compile_jit_with(g, &opts).expect("compile");
            let m = model(&jit);
            let mut ws = m.workspace().unwrap();
            let ins: Vec<Vec<u8>> = inputs.iter().map(|t| t.to_bytes()).collect();
            let ins: Vec<&[u8]> = ins.iter().map(|b| b.as_slice()).collect();
            let mut outs = m.output_buffers().unwrap();
            let mut outs_ref: Vec<&mut [u8]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
            m.run(&ins, &mut outs_ref, &mut ws).map(|()| outs)
        })
        .collect()
}

fn graph(op: Op, ins: &[TensorType]) -> Graph {
    let mut g = Graph::new(op.name());
    let ids: Vec<_> = ins
        .iter()
        .enumerate()
        .map(|(k, t)| g.add_input(format!("i{k}"), t.clone()))
        .collect();
    g.outputs = g.add_node("n", op, ids, vec!["y".into()]).unwrap();
    kiln_ir::verify::verify(&g).unwrap();
    g
}

/// Every compiled variant fails with `status`.
fn fails_with(g: &Graph, inputs: &[Tensor], status: i32) {
    for r in run_all(g, inputs) {
        match r {
            Err(Error::Status(s)) => assert_eq!(s, status, "{}", g.name),
            other => panic!("{}: expected status {status}, got {other:?}", g.name),
        }
    }
}

/// Every compiled variant agrees with the interpreter.
fn matches_interp(g: &Graph, inputs: &[Tensor]) {
    let want = interp::run(g, inputs).expect("interpreter");
    for r in run_all(g, inputs) {
        let outs = r.unwrap_or_else(|e| panic!("{}: {e}", g.name));
        for (w, got) in want.iter().zip(&outs) {
            assert_eq!(&w.to_bytes(), got, "{}", g.name);
        }
    }
}

#[test]
fn index_out_of_range_is_a_status() {
    let data = Tensor::f32([3, 4], (0..12).map(|v| v as f32).collect());
    for bad in [4i64, -5, i64::MAX, i64::MIN] {
        let idx = Tensor::i64([2], vec![1, bad]);
        let g = graph(Op::Gather { axis: 1 }, &[data.ty(), idx.ty()]);
        fails_with(&g, &[data.clone(), idx.clone()], KILN_ERR_INDEX);
        // the interpreter (constant folding's oracle) agrees that this is an error
        assert!(interp::run(&g, &[data.clone(), idx]).is_err());
    }
    let idx32 = Tensor::i32([2], vec![0, 3]);
    let g = graph(Op::Gather { axis: 0 }, &[data.ty(), idx32.ty()]);
    fails_with(&g, &[data.clone(), idx32], KILN_ERR_INDEX);
    // in range, negative from the end: fine
    let ok = Tensor::i64([2], vec![-1, -4]);
    let g = graph(Op::Gather { axis: 1 }, &[data.ty(), ok.ty()]);
    matches_interp(&g, &[data.clone(), ok]);

    let idx = Tensor::i64([3, 1], vec![0, 4, 1]);
    let g = graph(Op::GatherElements { axis: 1 }, &[data.ty(), idx.ty()]);
    fails_with(&g, &[data.clone(), idx.clone()], KILN_ERR_INDEX);
    let upd = Tensor::f32([3, 1], vec![1.0, 2.0, 3.0]);
    for (reduction, _) in ScatterReduction::ALL {
        let g = graph(
            Op::ScatterElements { axis: 1, reduction },
            &[data.ty(), idx.ty(), upd.ty()],
        );
        fails_with(
            &g,
            &[data.clone(), idx.clone(), upd.clone()],
            KILN_ERR_INDEX,
        );
    }
    let nd = Tensor::i64([2, 2], vec![0, 1, 3, 0]);
    let g = graph(Op::GatherND { batch_dims: 0 }, &[data.ty(), nd.ty()]);
    fails_with(&g, &[data.clone(), nd.clone()], KILN_ERR_INDEX);
    let upd = Tensor::f32([2], vec![1.0, 2.0]);
    for (reduction, _) in ScatterReduction::ALL {
        let g = graph(Op::ScatterND { reduction }, &[data.ty(), nd.ty(), upd.ty()]);
        fails_with(&g, &[data.clone(), nd.clone(), upd.clone()], KILN_ERR_INDEX);
    }
    // an empty axis: every index is out of range
    let empty = Tensor::f32([3, 0], vec![]);
    let idx = Tensor::i64([1], vec![0]);
    let g = graph(Op::Gather { axis: 1 }, &[empty.ty(), idx.ty()]);
    fails_with(&g, &[empty, idx], KILN_ERR_INDEX);
}

/// `v` as `dt` bytes (two's complement, truncated).
fn ints(dt: DType, v: &[i64]) -> Tensor {
    let bytes: Vec<u8> = v
        .iter()
        .flat_map(|&x| x.to_le_bytes()[..dt.size()].to_vec())
        .collect();
    Tensor::from_bytes(&TensorType::new(dt, vec![v.len()]), &bytes).unwrap()
}

#[test]
fn integer_division_errors_are_a_status() {
    for dt in [DType::I8, DType::I32, DType::I64, DType::U8] {
        let min = match dt {
            DType::I8 => i8::MIN as i64,
            DType::I32 => i32::MIN as i64,
            DType::I64 => i64::MIN,
            _ => 0,
        };
        for op in [BinaryOp::Div, BinaryOp::Mod, BinaryOp::Fmod] {
            let t = TensorType::new(dt, vec![3]);
            let g = graph(Op::Binary(op), &[t.clone(), t.clone()]);
            // by zero
            fails_with(
                &g,
                &[ints(dt, &[7, 5, 3]), ints(dt, &[2, 0, 1])],
                KILN_ERR_DIVIDE,
            );
            // MIN / -1 overflows; MIN % -1 is 0
            let (a, b) = (ints(dt, &[7, min, 3]), ints(dt, &[2, -1, 1]));
            if dt != DType::U8 && op == BinaryOp::Div {
                fails_with(&g, &[a, b], KILN_ERR_DIVIDE);
            } else {
                matches_interp(&g, &[a, b]);
            }
            // a divisor of -1 otherwise
            matches_interp(&g, &[ints(dt, &[7, -6, 0]), ints(dt, &[-1, -1, 3])]);
        }
    }
    // broadcast divisor
    let g = graph(
        Op::Binary(BinaryOp::Div),
        &[
            TensorType::new(DType::I32, vec![2, 2]),
            TensorType::new(DType::I32, vec![1]),
        ],
    );
    let a = Tensor::from_bytes(&TensorType::new(DType::I32, vec![2, 2]), &[0u8; 16]).unwrap();
    fails_with(&g, &[a, ints(DType::I32, &[0])], KILN_ERR_DIVIDE);
}

#[test]
fn pool_without_parallel_for_is_null() {
    // a convolution large enough for the wide kernels to use the pool
    let mut g = Graph::new("conv");
    let x = g.add_input("x", TensorType::f32(vec![1, 16, 16, 16]));
    let w: Vec<u8> = (0..16 * 16 * 9)
        .flat_map(|i| ((i % 7) as f32 * 0.1).to_le_bytes())
        .collect();
    let w = g
        .add_const(
            "w",
            TensorType::f32(vec![16, 16, 3, 3]),
            ConstData::from_vec(w),
        )
        .unwrap();
    g.outputs = g
        .add_node(
            "c",
            conv_op([3, 3], [1, 1], [1, 1, 1, 1]),
            vec![x, w],
            vec!["y".into()],
        )
        .unwrap();
    let jit = kiln_target_cpu::compile_jit_with(
        &g,
        &kiln_target_cpu::CpuOptions {
            par_min_macs: 0,
            ..kiln_target_cpu::CpuOptions::host("t")
        },
    )
    .unwrap();
    let m = model(&jit);
    let mut ws = m.workspace().unwrap();
    let x = vec![0f32; 16 * 16 * 16];
    let mut y = vec![0f32; 16 * 16 * 16];
    let ins = [x.as_ptr() as *const u8];
    let outs = [y.as_mut_ptr() as *mut u8];
    let pool = KilnPool {
        ctx: std::ptr::null_mut(),
        threads: 2,
        parallel_for: None,
    };
    let run_pool = m.raw().run_pool.unwrap();
    // SAFETY: buffers of the descriptor's sizes; the pool is the malformed one under test
    let status = unsafe { run_pool(ins.as_ptr(), outs.as_ptr(), ws.as_mut_ptr(), &pool) };
    assert_eq!(status, KILN_ERR_NULL);
    // a null pool is single-threaded
    let status = unsafe {
        run_pool(
            ins.as_ptr(),
            outs.as_ptr(),
            ws.as_mut_ptr(),
            std::ptr::null(),
        )
    };
    assert_eq!(status, 0);
}

fn conv_op(kernel: [usize; 2], strides: [usize; 2], pads: [usize; 4]) -> Op {
    Op::Conv(ConvAttrs {
        kernel: kernel.to_vec(),
        strides: strides.to_vec(),
        pads: pads.to_vec(),
        dilations: vec![1, 1],
        groups: 1,
        epilogue: vec![],
        layout: kiln_ir::Layout::Plain,
    })
}

/// Strides, dilations and pads far beyond the input (2^20, 2^62): before, packing every
/// stride phase made `kiln build` allocate ~8 GiB (wide kernels) or spin for minutes
/// (Cranelift). They take the loop kernels now: quick to compile, same values as the
/// interpreter.
#[test]
fn absurd_strides_and_pads_compile_quickly() {
    let mut r = 7u32;
    let mut rnd = move || {
        r = r.wrapping_mul(1_103_515_245).wrapping_add(12345);
        ((r >> 8) % 1000) as f32 / 500.0 - 1.0
    };
    let cases: Vec<(Op, [usize; 4])> = vec![
        (conv_op([1, 1], [1 << 20, 1 << 20], [0; 4]), [1, 2, 4, 4]),
        (conv_op([1, 1], [1 << 62, 1 << 62], [0; 4]), [1, 2, 4, 4]),
        (conv_op([3, 3], [1 << 20, 3], [0, 0, 0, 0]), [1, 2, 5, 7]),
        (
            conv_op(
                [1, 1],
                [1 << 30, 1 << 30],
                [1 << 30, 1 << 30, 1 << 30, 1 << 30],
            ),
            [1, 2, 4, 4],
        ),
        (
            Op::Conv(ConvAttrs {
                kernel: vec![1, 2],
                strides: vec![1, 1],
                pads: vec![0; 4],
                dilations: vec![1 << 40, 3],
                groups: 1,
                epilogue: vec![],
                layout: kiln_ir::Layout::Plain,
            }),
            [1, 2, 4, 4],
        ),
    ];
    let n = cases.len();
    let mut ran = 0;
    for (op, xs) in cases {
        let Op::Conv(a) = &op else { unreachable!() };
        let x = TensorType::f32(xs.to_vec());
        let wt = TensorType::f32(vec![3, xs[1], a.kernel[0], a.kernel[1]]);
        let mut g = Graph::new("conv");
        let xi = g.add_input("x", x.clone());
        let wv: Vec<u8> = (0..wt.numel()).flat_map(|_| rnd().to_le_bytes()).collect();
        let w = g.add_const("w", wt, ConstData::from_vec(wv)).unwrap();
        g.outputs = g
            .add_node("c", op.clone(), vec![xi, w], vec!["y".into()])
            .unwrap();
        let t = std::time::Instant::now();
        let xv = Tensor::f32(xs, (0..x.numel()).map(|_| rnd()).collect());
        let want = interp::run(&g, std::slice::from_ref(&xv)).unwrap();
        for r in run_all(&g, std::slice::from_ref(&xv)) {
            let got = r.unwrap();
            let want = want[0].as_f32().unwrap();
            let got: Vec<f32> = got[0]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            for (w, g) in want.iter().zip(&got) {
                assert!((w - g).abs() <= 1e-5 + 1e-5 * w.abs(), "{op:?}: {w} vs {g}");
            }
        }
        let secs = t.elapsed().as_secs_f64();
        assert!(secs < 30.0, "{op:?}: {secs} s");
        ran += 1;
    }
    assert_eq!(ran, n);
}

/// A slice of one element along a dim reads only its start, whatever the step: a step of
/// i64::MAX made the kernel generator overflow (found by the `onnx` fuzz target).
#[test]
fn slice_with_huge_steps() {
    use kiln_ir::ops::SliceAttrs;
    let x = Tensor::f32([4, 6], (0..24).map(|v| v as f32).collect());
    for steps in [[i64::MAX, 1], [i64::MIN + 1, i64::MAX], [1, -i64::MAX]] {
        let op = Op::Slice(SliceAttrs {
            starts: vec![3, 2],
            steps: steps.to_vec(),
            sizes: vec![1, if steps[1] == 1 { 3 } else { 1 }],
        });
        let g = graph(op, &[x.ty()]);
        matches_interp(&g, std::slice::from_ref(&x));
    }
}
