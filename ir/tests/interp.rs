//! Hand-computed cases for the reference interpreter.

use kiln_ir::interp::{Tensor, TensorData, erf, eval_op, run};
use kiln_ir::ops::*;
use kiln_ir::{ConstData, DType, Graph, Op, TensorType};

fn t(shape: &[usize], v: &[f32]) -> Tensor {
    Tensor::f32(shape.to_vec(), v.to_vec())
}

fn seq(shape: &[usize]) -> Tensor {
    let n: usize = shape.iter().product();
    t(shape, &(1..=n).map(|i| i as f32).collect::<Vec<_>>())
}

fn eval1(op: Op, ins: &[&Tensor]) -> Tensor {
    let mut o = eval_op(&op, ins).unwrap_or_else(|e| panic!("{op:?}: {e}"));
    assert_eq!(o.len(), 1);
    o.remove(0)
}

#[track_caller]
fn close(got: &Tensor, shape: &[usize], want: &[f32]) {
    assert_eq!(got.shape, shape, "shape");
    let g = got.as_f32().expect("f32 result");
    assert_eq!(g.len(), want.len());
    for (i, (a, b)) in g.iter().zip(want).enumerate() {
        assert!(
            (a - b).abs() <= 1e-5 * (1.0 + b.abs()),
            "element {i}: got {a}, want {b} (all: {g:?})"
        );
    }
}

fn conv_op(k: &[usize], s: &[usize], p: &[usize], d: &[usize], groups: usize) -> Op {
    Op::Conv(ConvAttrs {
        kernel: k.to_vec(),
        strides: s.to_vec(),
        pads: p.to_vec(),
        dilations: d.to_vec(),
        groups,
        epilogue: Vec::new(),
        layout: kiln_ir::Layout::Plain,
    })
}

#[test]
fn conv_pads() {
    let x = seq(&[1, 1, 3, 3]);
    let w = t(&[1, 1, 2, 2], &[1.0; 4]);
    let y = eval1(
        conv_op(&[2, 2], &[1, 1], &[1, 1, 1, 1], &[1, 1], 1),
        &[&x, &w],
    );
    #[rustfmt::skip]
    close(&y, &[1, 1, 4, 4], &[
        1.0, 3.0, 5.0, 3.0,
        5.0, 12.0, 16.0, 9.0,
        11.0, 24.0, 28.0, 15.0,
        7.0, 15.0, 17.0, 9.0,
    ]);
}

#[test]
fn conv_stride_dilation_asymmetric_pads() {
    let x = seq(&[1, 1, 3, 3]);
    let w = t(&[1, 1, 2, 2], &[1.0; 4]);
    let y = eval1(
        conv_op(&[2, 2], &[2, 2], &[1, 1, 1, 1], &[1, 1], 1),
        &[&x, &w],
    );
    close(&y, &[1, 1, 2, 2], &[1.0, 5.0, 11.0, 28.0]);
    let y = eval1(
        conv_op(&[2, 2], &[1, 1], &[0, 0, 0, 0], &[2, 2], 1),
        &[&x, &w],
    );
    close(&y, &[1, 1, 1, 1], &[20.0]);
    // Pad only the end of W: windows over cols {0,1},{1,2},{2,pad}.
    let w1 = t(&[1, 1, 1, 2], &[1.0, 10.0]);
    let y = eval1(
        conv_op(&[1, 2], &[1, 1], &[0, 0, 0, 1], &[1, 1], 1),
        &[&x, &w1],
    );
    close(
        &y,
        &[1, 1, 3, 3],
        &[21.0, 32.0, 3.0, 54.0, 65.0, 6.0, 87.0, 98.0, 9.0],
    );
}

#[test]
fn conv_groups_bias() {
    let x = t(&[1, 2, 1, 1], &[1.0, 2.0]);
    let w = t(&[2, 1, 1, 1], &[3.0, 4.0]);
    let b = t(&[2], &[10.0, 20.0]);
    let y = eval1(
        conv_op(&[1, 1], &[1, 1], &[0, 0, 0, 0], &[1, 1], 2),
        &[&x, &w, &b],
    );
    close(&y, &[1, 2, 1, 1], &[13.0, 28.0]);
    // groups=2 with 2 output channels per group over 4 input channels (2 per group).
    let x = t(&[1, 4, 1, 1], &[1.0, 2.0, 3.0, 4.0]);
    let w = t(&[4, 2, 1, 1], &[1.0, 1.0, 1.0, -1.0, 1.0, 1.0, 1.0, -1.0]);
    let y = eval1(
        conv_op(&[1, 1], &[1, 1], &[0, 0, 0, 0], &[1, 1], 2),
        &[&x, &w],
    );
    close(&y, &[1, 4, 1, 1], &[3.0, -1.0, 7.0, -1.0]);
}

#[test]
fn conv_1d_and_batch() {
    let x = t(
        &[2, 1, 5],
        &[1.0, 2.0, 3.0, 4.0, 5.0, 0.0, 0.0, 1.0, 0.0, 0.0],
    );
    let w = t(&[1, 1, 3], &[1.0, 0.0, -1.0]);
    let y = eval1(conv_op(&[3], &[1], &[1, 1], &[1], 1), &[&x, &w]);
    close(
        &y,
        &[2, 1, 5],
        &[-2.0, -2.0, -2.0, -2.0, 4.0, 0.0, -1.0, 0.0, 1.0, 0.0],
    );
}

#[test]
fn conv_transpose_1d() {
    let x = t(&[1, 1, 2], &[1.0, 2.0]);
    let w = t(&[1, 1, 3], &[1.0, 1.0, 1.0]);
    let op = |pads: &[usize], op: &[usize]| {
        Op::ConvTranspose(ConvTransposeAttrs {
            kernel: vec![3],
            strides: vec![2],
            pads: pads.to_vec(),
            dilations: vec![1],
            groups: 1,
            output_padding: op.to_vec(),
        })
    };
    let y = eval1(op(&[0, 0], &[0]), &[&x, &w]);
    close(&y, &[1, 1, 5], &[1.0, 1.0, 3.0, 2.0, 2.0]);
    let b = t(&[1], &[0.5]);
    let y = eval1(op(&[1, 0], &[1]), &[&x, &w, &b]);
    close(&y, &[1, 1, 5], &[1.5, 3.5, 2.5, 2.5, 0.5]);
}

fn pool(k: &[usize], s: &[usize], p: &[usize], ceil: bool, cip: bool) -> PoolAttrs {
    PoolAttrs {
        kernel: k.to_vec(),
        strides: s.to_vec(),
        pads: p.to_vec(),
        dilations: vec![1; k.len()],
        ceil_mode: ceil,
        count_include_pad: cip,
    }
}

#[test]
fn max_pool() {
    let x = seq(&[1, 1, 4, 4]);
    let y = eval1(
        Op::MaxPool(pool(&[2, 2], &[2, 2], &[0, 0, 0, 0], false, false)),
        &[&x],
    );
    close(&y, &[1, 1, 2, 2], &[6.0, 8.0, 14.0, 16.0]);
    let x = seq(&[1, 1, 1, 5]);
    let y = eval1(
        Op::MaxPool(pool(&[1, 2], &[1, 2], &[0, 0, 0, 0], true, false)),
        &[&x],
    );
    close(&y, &[1, 1, 1, 3], &[2.0, 4.0, 5.0]);
    // Padding never wins, even against negative values.
    let x = t(&[1, 1, 2], &[-3.0, -4.0]);
    let y = eval1(Op::MaxPool(pool(&[2], &[1], &[1, 1], false, false)), &[&x]);
    close(&y, &[1, 1, 3], &[-3.0, -3.0, -4.0]);
}

#[test]
fn average_pool_pads_and_ceil() {
    let x = t(&[1, 1, 4], &[1.0, 2.0, 3.0, 4.0]);
    let y = eval1(
        Op::AveragePool(pool(&[3], &[2], &[1, 1], false, false)),
        &[&x],
    );
    close(&y, &[1, 1, 2], &[1.5, 3.0]);
    let y = eval1(
        Op::AveragePool(pool(&[3], &[2], &[1, 1], false, true)),
        &[&x],
    );
    close(&y, &[1, 1, 2], &[1.0, 3.0]);

    let x = seq(&[1, 1, 5]);
    let y = eval1(
        Op::AveragePool(pool(&[2], &[2], &[0, 0], true, false)),
        &[&x],
    );
    close(&y, &[1, 1, 3], &[1.5, 3.5, 5.0]);
    // ceil_mode: the last window runs past the padded end and is clipped to input + pads.
    let y = eval1(
        Op::AveragePool(pool(&[3], &[2], &[1, 0], true, true)),
        &[&x],
    );
    close(&y, &[1, 1, 3], &[1.0, 3.0, 4.5]);
    let y = eval1(
        Op::AveragePool(pool(&[3], &[2], &[1, 0], true, false)),
        &[&x],
    );
    close(&y, &[1, 1, 3], &[1.5, 3.0, 4.5]);
    // 2-D with padding everywhere.
    let x = seq(&[1, 1, 2, 2]);
    let y = eval1(
        Op::AveragePool(pool(&[2, 2], &[1, 1], &[1, 1, 0, 0], false, true)),
        &[&x],
    );
    close(&y, &[1, 1, 2, 2], &[0.25, 0.75, 1.0, 2.5]);
    let y = eval1(Op::GlobalAveragePool, &[&x]);
    close(&y, &[1, 1, 1, 1], &[2.5]);
}

#[test]
fn gemm_transposes() {
    let a = t(&[2, 2], &[1.0, 2.0, 3.0, 4.0]);
    let b = t(&[3, 2], &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
    let c = t(&[3], &[1.0, 2.0, 3.0]);
    let op = Op::Gemm(GemmAttrs {
        alpha: 2.0,
        beta: 0.5,
        trans_a: true,
        trans_b: true,
        epilogue: Vec::new(),
    });
    let y = eval1(op, &[&a, &b, &c]);
    close(&y, &[2, 3], &[2.5, 7.0, 9.5, 4.5, 9.0, 13.5]);
    let op = Op::Gemm(GemmAttrs {
        alpha: 1.0,
        beta: 1.0,
        trans_a: false,
        trans_b: false,
        epilogue: Vec::new(),
    });
    let b = t(&[2, 1], &[1.0, -1.0]);
    let c = t(&[2, 1], &[10.0, 20.0]);
    let y = eval1(op, &[&a, &b, &c]);
    close(&y, &[2, 1], &[9.0, 19.0]);
}

#[test]
fn matmul_broadcast_and_1d() {
    let a = seq(&[2, 2, 2]);
    let b = t(&[2, 2], &[1.0, 1.0, 0.0, 1.0]);
    let y = eval1(Op::matmul(), &[&a, &b]);
    close(&y, &[2, 2, 2], &[1.0, 3.0, 3.0, 7.0, 5.0, 11.0, 7.0, 15.0]);
    let v = t(&[2], &[1.0, 2.0]);
    close(&eval1(Op::matmul(), &[&v, &b]), &[2], &[1.0, 3.0]);
    close(
        &eval1(Op::matmul(), &[&a, &v]),
        &[2, 2],
        &[5.0, 11.0, 17.0, 23.0],
    );
    close(&eval1(Op::matmul(), &[&v, &v]), &[], &[5.0]);
    let a = t(&[2, 1, 1, 2], &[1.0, 2.0, 3.0, 4.0]);
    let b = t(&[3, 2, 1], &[1.0, 1.0, 1.0, 0.0, 0.0, 1.0]);
    let y = eval1(Op::matmul(), &[&a, &b]);
    close(&y, &[2, 3, 1, 1], &[3.0, 1.0, 2.0, 7.0, 3.0, 4.0]);
}

#[test]
fn binary_broadcast_and_ints() {
    let a = seq(&[2, 3]);
    let b = t(&[3], &[10.0, 20.0, 30.0]);
    let y = eval1(Op::Binary(BinaryOp::Add), &[&a, &b]);
    close(&y, &[2, 3], &[11.0, 22.0, 33.0, 14.0, 25.0, 36.0]);
    let c = t(&[2, 1], &[2.0, 0.5]);
    let y = eval1(Op::Binary(BinaryOp::Pow), &[&a, &c]);
    close(&y, &[2, 3], &[1.0, 4.0, 9.0, 2.0, 5f32.sqrt(), 6f32.sqrt()]);
    let i = Tensor::i64(vec![3], vec![7, -7, 9]);
    let j = Tensor::i64(vec![1], vec![2]);
    let y = eval1(Op::Binary(BinaryOp::Div), &[&i, &j]);
    assert_eq!(y.data, TensorData::I64(vec![3, -3, 4]));
    let z = Tensor::i64(vec![1], vec![0]);
    assert!(eval_op(&Op::Binary(BinaryOp::Div), &[&i, &z]).is_err());
}

#[test]
fn activations() {
    let x = t(&[5], &[-4.0, -1.0, 0.0, 1.0, 4.0]);
    let y = eval1(
        Op::Act {
            kind: ActKind::HardSigmoid,
            alpha: 0.2,
            beta: 0.5,
        },
        &[&x],
    );
    close(&y, &[5], &[0.0, 0.3, 0.5, 0.7, 1.0]);
    let y = eval1(Op::Unary(UnaryOp::HardSwish), &[&x]);
    close(&y, &[5], &[-0.0, -1.0 / 3.0, 0.0, 2.0 / 3.0, 4.0]);
    let act = |kind, alpha, beta| Op::Act { kind, alpha, beta };
    let y = eval1(act(ActKind::LeakyRelu, 0.1, 0.0), &[&x]);
    close(&y, &[5], &[-0.4, -0.1, 0.0, 1.0, 4.0]);
    // hand-computed values of the other parameterized activations
    let e = |v: f64| v.exp() - 1.0;
    let y = eval1(act(ActKind::Elu, 2.0, 0.0), &[&x]);
    close(
        &y,
        &[5],
        &[
            (2.0 * e(-4.0)) as f32,
            (2.0 * e(-1.0)) as f32,
            0.0,
            1.0,
            4.0,
        ],
    );
    let y = eval1(act(ActKind::ThresholdedRelu, 1.0, 0.0), &[&x]);
    close(&y, &[5], &[0.0, 0.0, 0.0, 0.0, 4.0]);
    let y = eval1(act(ActKind::Shrink, 0.5, 1.0), &[&x]);
    close(&y, &[5], &[-3.5, 0.0, 0.0, 0.0, 3.5]);
    let y = eval1(act(ActKind::Celu, 2.0, 0.0), &[&x]);
    close(
        &y,
        &[5],
        &[
            (2.0 * e(-2.0)) as f32,
            (2.0 * e(-0.5)) as f32,
            0.0,
            1.0,
            4.0,
        ],
    );
    let y = eval1(
        Op::Unary(UnaryOp::Round),
        &[&t(&[4], &[0.5, 1.5, 2.5, -0.5])],
    );
    close(&y, &[4], &[0.0, 2.0, 2.0, -0.0]);
    let y = eval1(
        Op::Clip {
            min: -1.5,
            max: 2.0,
        },
        &[&x],
    );
    close(&y, &[5], &[-1.5, -1.0, 0.0, 1.0, 2.0]);
    let y = eval1(Op::Unary(UnaryOp::Sigmoid), &[&x]);
    close(
        &y,
        &[5],
        &[0.01798621, 0.26894142, 0.5, 0.7310586, 0.9820138],
    );
}

#[test]
fn batch_norm() {
    let x = seq(&[1, 2, 2]);
    let scale = t(&[2], &[1.0, 2.0]);
    let bias = t(&[2], &[0.0, 1.0]);
    let mean = t(&[2], &[1.0, 3.0]);
    let var = t(&[2], &[4.0, 1.0]);
    let y = eval1(
        Op::BatchNorm { epsilon: 0.0 },
        &[&x, &scale, &bias, &mean, &var],
    );
    close(&y, &[1, 2, 2], &[0.0, 0.5, 1.0, 3.0]);
}

#[test]
fn softmax() {
    let x = t(&[2, 3], &[1.0, 2.0, 3.0, 1000.0, 1000.0, 1000.0]);
    let sm = |axis, kind| Op::Softmax { axis, kind };
    let y = eval1(sm(1, SoftmaxKind::Softmax), &[&x]);
    let e: Vec<f64> = [1f64, 2.0, 3.0].iter().map(|v| v.exp()).collect();
    let s: f64 = e.iter().sum();
    let third = 1.0 / 3.0;
    close(
        &y,
        &[2, 3],
        &[
            (e[0] / s) as f32,
            (e[1] / s) as f32,
            (e[2] / s) as f32,
            third,
            third,
            third,
        ],
    );
    let y = eval1(sm(0, SoftmaxKind::Softmax), &[&x]);
    close(&y, &[2, 3], &[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]);
    let y = eval1(sm(1, SoftmaxKind::LogSoftmax), &[&x]);
    let l = |v: f64| (v - s.ln()) as f32;
    let ln3 = -(3f64.ln()) as f32;
    close(&y, &[2, 3], &[l(1.0), l(2.0), l(3.0), ln3, ln3, ln3]);
    // Hardmax: the first maximum wins
    let y = eval1(sm(1, SoftmaxKind::Hardmax), &[&x]);
    close(&y, &[2, 3], &[0.0, 0.0, 1.0, 1.0, 0.0, 0.0]);
}

#[test]
fn gather_scatter() {
    let x = seq(&[2, 3]);
    let i = Tensor::i64([2], vec![-1, 0]);
    let y = eval1(Op::Gather { axis: 1 }, &[&x, &i]);
    close(&y, &[2, 2], &[3.0, 1.0, 6.0, 4.0]);
    let i = Tensor::i64([2, 1], vec![2, 0]);
    let y = eval1(Op::GatherElements { axis: 1 }, &[&x, &i]);
    close(&y, &[2, 1], &[3.0, 4.0]);
    let u = t(&[2, 1], &[10.0, 20.0]);
    let y = eval1(
        Op::ScatterElements {
            axis: 1,
            reduction: ScatterReduction::Add,
        },
        &[&x, &i, &u],
    );
    close(&y, &[2, 3], &[1.0, 2.0, 13.0, 24.0, 5.0, 6.0]);
    let i = Tensor::i64([1, 2], vec![1, 1]);
    let y = eval1(Op::GatherND { batch_dims: 0 }, &[&x, &i]);
    close(&y, &[1], &[5.0]);
    let u = t(&[1], &[-1.0]);
    let y = eval1(
        Op::ScatterND {
            reduction: ScatterReduction::None,
        },
        &[&x, &i, &u],
    );
    close(&y, &[2, 3], &[1.0, 2.0, 3.0, 4.0, -1.0, 6.0]);
}

#[test]
fn reduce_mean() {
    let x = seq(&[2, 3]);
    let y = eval1(
        Op::Reduce {
            kind: ReduceKind::Mean,
            axes: vec![1],
            keepdims: true,
        },
        &[&x],
    );
    close(&y, &[2, 1], &[2.0, 5.0]);
    let y = eval1(
        Op::Reduce {
            kind: ReduceKind::Mean,
            axes: vec![0, 1],
            keepdims: false,
        },
        &[&x],
    );
    close(&y, &[], &[3.5]);
    // the rest of the family on [[1,2,3],[4,5,6]] over axis 1
    for (kind, want) in [
        (ReduceKind::Sum, [6.0, 15.0]),
        (ReduceKind::Max, [3.0, 6.0]),
        (ReduceKind::Min, [1.0, 4.0]),
        (ReduceKind::Prod, [6.0, 120.0]),
        (ReduceKind::SumSquare, [14.0, 77.0]),
        (ReduceKind::L1, [6.0, 15.0]),
        (ReduceKind::L2, [14f32.sqrt(), 77f32.sqrt()]),
        (ReduceKind::LogSum, [6f32.ln(), 15f32.ln()]),
        (
            ReduceKind::LogSumExp,
            [
                (1f32.exp() + 2f32.exp() + 3f32.exp()).ln(),
                (4f32.exp() + 5f32.exp() + 6f32.exp()).ln(),
            ],
        ),
    ] {
        let y = eval1(
            Op::Reduce {
                kind,
                axes: vec![1],
                keepdims: false,
            },
            &[&x],
        );
        close(&y, &[2], &want);
    }
}

fn resize(
    mode: ResizeMode,
    coord: CoordTransform,
    nearest: NearestMode,
    scales: &[f32],
    out: &[usize],
) -> Op {
    Op::Resize(ResizeAttrs {
        mode,
        coord,
        nearest,
        scales: scales.to_vec(),
        out_shape: out.to_vec(),
    })
}

#[test]
fn resize_nearest() {
    let x = t(&[1, 1, 2], &[1.0, 2.0]);
    let r = |n| {
        resize(
            ResizeMode::Nearest,
            CoordTransform::Asymmetric,
            n,
            &[1.0, 1.0, 2.0],
            &[1, 1, 4],
        )
    };
    close(
        &eval1(r(NearestMode::Floor), &[&x]),
        &[1, 1, 4],
        &[1.0, 1.0, 2.0, 2.0],
    );
    close(
        &eval1(r(NearestMode::Ceil), &[&x]),
        &[1, 1, 4],
        &[1.0, 2.0, 2.0, 2.0],
    );
    close(
        &eval1(r(NearestMode::RoundPreferFloor), &[&x]),
        &[1, 1, 4],
        &[1.0, 1.0, 2.0, 2.0],
    );
    close(
        &eval1(r(NearestMode::RoundPreferCeil), &[&x]),
        &[1, 1, 4],
        &[1.0, 2.0, 2.0, 2.0],
    );
    // half_pixel, round_prefer_floor: coords -0.25, 0.25, 0.75, 1.25 -> 0, 0, 1, 1.
    let op = resize(
        ResizeMode::Nearest,
        CoordTransform::HalfPixel,
        NearestMode::RoundPreferFloor,
        &[1.0, 1.0, 2.0],
        &[1, 1, 4],
    );
    close(&eval1(op, &[&x]), &[1, 1, 4], &[1.0, 1.0, 2.0, 2.0]);
    // Downsample 2-D by 2 with asymmetric/floor picks even indices.
    let x = seq(&[1, 1, 4, 4]);
    let op = resize(
        ResizeMode::Nearest,
        CoordTransform::Asymmetric,
        NearestMode::Floor,
        &[1.0, 1.0, 0.5, 0.5],
        &[1, 1, 2, 2],
    );
    close(&eval1(op, &[&x]), &[1, 1, 2, 2], &[1.0, 3.0, 9.0, 11.0]);
}

#[test]
fn resize_linear() {
    let x = t(&[1, 1, 2], &[1.0, 2.0]);
    let op = resize(
        ResizeMode::Linear,
        CoordTransform::HalfPixel,
        NearestMode::Floor,
        &[1.0, 1.0, 2.0],
        &[1, 1, 4],
    );
    close(&eval1(op, &[&x]), &[1, 1, 4], &[1.0, 1.25, 1.75, 2.0]);
    let op = resize(
        ResizeMode::Linear,
        CoordTransform::AlignCorners,
        NearestMode::Floor,
        &[1.0, 1.0, 1.5],
        &[1, 1, 3],
    );
    close(&eval1(op, &[&x]), &[1, 1, 3], &[1.0, 1.5, 2.0]);
    let op = resize(
        ResizeMode::Linear,
        CoordTransform::Asymmetric,
        NearestMode::Floor,
        &[1.0, 1.0, 2.0],
        &[1, 1, 4],
    );
    close(&eval1(op, &[&x]), &[1, 1, 4], &[1.0, 1.5, 2.0, 2.0]);
    let x2 = seq(&[1, 1, 2, 2]);
    let op = resize(
        ResizeMode::Linear,
        CoordTransform::AlignCorners,
        NearestMode::Floor,
        &[1.0, 1.0, 1.5, 1.5],
        &[1, 1, 3, 3],
    );
    #[rustfmt::skip]
    close(&eval1(op, &[&x2]), &[1, 1, 3, 3], &[
        1.0, 1.5, 2.0,
        2.0, 2.5, 3.0,
        3.0, 3.5, 4.0,
    ]);
    let x4 = seq(&[1, 1, 4]);
    let op = resize(
        ResizeMode::Linear,
        CoordTransform::PytorchHalfPixel,
        NearestMode::Floor,
        &[1.0, 1.0, 0.25],
        &[1, 1, 1],
    );
    close(&eval1(op, &[&x4]), &[1, 1, 1], &[1.0]);
    let op = resize(
        ResizeMode::Linear,
        CoordTransform::HalfPixel,
        NearestMode::Floor,
        &[1.0, 1.0, 0.25],
        &[1, 1, 1],
    );
    close(&eval1(op, &[&x4]), &[1, 1, 1], &[2.5]);
}

#[test]
fn slice_transpose_concat_split() {
    let x = seq(&[2, 3]);
    let op = Op::Slice(SliceAttrs {
        starts: vec![1, 2],
        steps: vec![-1, -2],
        sizes: vec![2, 2],
    });
    close(&eval1(op, &[&x]), &[2, 2], &[6.0, 4.0, 3.0, 1.0]);
    let op = Op::Slice(SliceAttrs {
        starts: vec![0, 1],
        steps: vec![1, 1],
        sizes: vec![2, 2],
    });
    close(&eval1(op, &[&x]), &[2, 2], &[2.0, 3.0, 5.0, 6.0]);
    let y = eval1(Op::Transpose { perm: vec![1, 0] }, &[&x]);
    close(&y, &[3, 2], &[1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    let z = t(&[2, 1], &[7.0, 8.0]);
    let y = eval1(Op::Concat { axis: 1 }, &[&x, &z]);
    close(&y, &[2, 4], &[1.0, 2.0, 3.0, 7.0, 4.0, 5.0, 6.0, 8.0]);
    let outs = eval_op(
        &Op::Split {
            axis: 1,
            sizes: vec![1, 2],
        },
        &[&x],
    )
    .unwrap();
    assert_eq!(outs.len(), 2);
    close(&outs[0], &[2, 1], &[1.0, 4.0]);
    close(&outs[1], &[2, 2], &[2.0, 3.0, 5.0, 6.0]);
    let y = eval1(Op::Reshape { shape: vec![3, 2] }, &[&x]);
    close(&y, &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
}

#[test]
fn cast() {
    let x = t(&[5], &[-1.7, 2.9, 0.0, -0.4, 300.5]);
    let y = eval1(Op::Cast { to: DType::I64 }, &[&x]);
    assert_eq!(y.data, TensorData::I64(vec![-1, 2, 0, 0, 300]));
    let y = eval1(Op::Cast { to: DType::I32 }, &[&x]);
    assert_eq!(y.data, TensorData::I32(vec![-1, 2, 0, 0, 300]));
    let y = eval1(Op::Cast { to: DType::Bool }, &[&x]);
    assert_eq!(
        y.data,
        TensorData::Bool(vec![true, true, false, true, true])
    );
    let b = Tensor::bool(vec![2], vec![true, false]);
    let y = eval1(Op::Cast { to: DType::F32 }, &[&b]);
    assert_eq!(y.as_f32().unwrap(), &[1.0, 0.0]);
    let i = Tensor::i64(vec![3], vec![-3, 0, 255]);
    let y = eval1(Op::Cast { to: DType::F64 }, &[&i]);
    assert_eq!(y.data, TensorData::F64(vec![-3.0, 0.0, 255.0]));
    let y = eval1(Op::Cast { to: DType::U8 }, &[&i]);
    assert_eq!(y.data, TensorData::U8(vec![253, 0, 255]));
    let y = eval1(Op::Cast { to: DType::Bool }, &[&i]);
    assert_eq!(y.data, TensorData::Bool(vec![true, false, true]));
    let y = eval1(
        Op::Cast { to: DType::F32 },
        &[&Tensor::f64(vec![1], vec![0.1])],
    );
    assert_eq!(y.as_f32().unwrap(), &[0.1f32]);
}

#[test]
fn erf_accuracy() {
    let known = [
        (0.0, 0.0),
        (1e-10, 1.1283791670955126e-10),
        (0.1, 0.1124629160182849),
        (0.5, 0.5204998778130465),
        (1.0, 0.8427007929497149),
        (1.5, 0.9661051464753108),
        (2.0, 0.9953222650189527),
        (3.0, 0.9999779095030014),
        (4.0, 0.9999999845827421),
        (5.5, 0.9999999999999927),
        (10.0, 1.0),
    ];
    for (x, want) in known {
        for s in [1.0, -1.0] {
            let got = erf(s * x);
            assert!(
                (got - s * want).abs() <= 1e-15 + 1e-14 * want,
                "erf({}) = {got}, want {}",
                s * x,
                s * want
            );
        }
    }
    let x = t(&[3], &[0.5, -1.0, 2.0]);
    let y = eval1(Op::Unary(UnaryOp::Erf), &[&x]);
    assert_eq!(
        y.as_f32().unwrap(),
        &[
            0.5204998778130465f64 as f32,
            -0.8427007929497149f64 as f32,
            0.9953222650189527f64 as f32
        ]
    );
}

#[test]
fn eval_errors() {
    let x = Tensor::i64(vec![1, 1, 2, 2], vec![1, 2, 3, 4]);
    let w = t(&[1, 1, 1, 1], &[1.0]);
    assert!(
        eval_op(
            &conv_op(&[1, 1], &[1, 1], &[0, 0, 0, 0], &[1, 1], 1),
            &[&x, &w]
        )
        .is_err()
    );
    let bad = Tensor::f32(vec![2, 2], vec![1.0]);
    assert!(eval_op(&Op::Unary(UnaryOp::Relu), &[&bad]).is_err());
}

#[test]
fn tensor_bytes_round_trip() {
    let ty = TensorType::f32([2]);
    let tt = Tensor::from_const(&ty, &ConstData::from_f32(&[1.5, -2.0])).unwrap();
    assert_eq!(tt, t(&[2], &[1.5, -2.0]));
    assert_eq!(Tensor::from_bytes(&ty, &tt.to_bytes()).unwrap(), tt);
    assert!(Tensor::from_bytes(&ty, &[0u8; 7]).is_err());
    let ty = TensorType::new(DType::I8, [3]);
    let tt = Tensor::from_bytes(&ty, &[255, 1, 128]).unwrap();
    assert_eq!(tt.data, TensorData::I8(vec![-1, 1, -128]));
    assert_eq!(tt.to_bytes(), vec![255, 1, 128]);
}

#[test]
fn run_graph() {
    let mut g = Graph::new("g");
    let x = g.add_input("x", TensorType::f32([1, 1, 3, 3]));
    let w = g
        .add_const(
            "w",
            TensorType::f32([1, 1, 2, 2]),
            ConstData::from_f32(&[1.0; 4]),
        )
        .unwrap();
    let b = g
        .add_const("b", TensorType::f32([1]), ConstData::from_f32(&[-12.0]))
        .unwrap();
    let y = g
        .add_node(
            "conv",
            conv_op(&[2, 2], &[1, 1], &[0, 0, 0, 0], &[1, 1], 1),
            vec![x, w, b],
            vec!["y".into()],
        )
        .unwrap();
    let z = g
        .add_node("relu", Op::Unary(UnaryOp::Relu), y, vec!["z".into()])
        .unwrap();
    g.outputs = vec![z[0], w];
    let out = run(&g, &[seq(&[1, 1, 3, 3])]).unwrap();
    close(&out[0], &[1, 1, 2, 2], &[0.0, 4.0, 12.0, 16.0]);
    close(&out[1], &[1, 1, 2, 2], &[1.0; 4]);
    assert!(run(&g, &[]).is_err());
    assert!(run(&g, &[seq(&[1, 1, 3, 4])]).is_err());
    assert!(run(&g, &[Tensor::i64(vec![1, 1, 3, 3], vec![0; 9])]).is_err());
}
