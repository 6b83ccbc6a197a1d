//! Every GPU kernel family, compiled to PTX for sm_80 and run by the host emulation (the same
//! LLVM IR bodies in a grid x block loop, a fiber per GPU thread where they synchronize),
//! against kiln's reference interpreter.

use kiln_ir::interp::{self, Tensor};
use kiln_target_ptx::{Emulator, PtxOptions, compile};

/// Deterministic inputs in [-2, 2) (integers: small values; bools alternate).
fn inputs(g: &kiln_ir::Graph, seed: u64) -> Vec<Tensor> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = move || {
        s = s
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((s >> 33) as f64 / (1u64 << 31) as f64) * 4.0 - 2.0
    };
    g.inputs
        .iter()
        .map(|&v| {
            let t = g.ty(v);
            let n: usize = t.shape.iter().product();
            match t.dtype {
                kiln_ir::DType::F32 => {
                    Tensor::f32(t.shape.clone(), (0..n).map(|_| next() as f32).collect())
                }
                kiln_ir::DType::I64 => Tensor::i64(
                    t.shape.clone(),
                    (0..n).map(|_| (next() * 2.0) as i64).collect(),
                ),
                kiln_ir::DType::Bool => {
                    Tensor::bool(t.shape.clone(), (0..n).map(|_| next() > 0.0).collect())
                }
                d => panic!("test input dtype {d:?}"),
            }
        })
        .collect()
}

fn check(src: &str, tol: f32) {
    let g = kiln_ir::text::parse(src).unwrap_or_else(|e| panic!("{e}\n{src}"));
    kiln_ir::verify::verify(&g).unwrap();
    let ins = inputs(&g, 7);
    let want = interp::run(&g, &ins).unwrap();
    let mut o = PtxOptions::new("t");
    o.cubin = false;
    let c = compile(&g, &o).unwrap_or_else(|e| panic!("{e}"));
    assert!(c.artefact.ptx.contains(".target sm_80"));
    let emu = Emulator::new(&c).unwrap();
    let in_bytes: Vec<Vec<u8>> = ins.iter().map(|t| t.to_bytes()).collect();
    let in_refs: Vec<&[u8]> = in_bytes.iter().map(|b| b.as_slice()).collect();
    let mut outs: Vec<Vec<u8>> = c
        .artefact
        .outputs
        .iter()
        .map(|t| vec![0xAB; t.nbytes])
        .collect();
    let mut out_refs: Vec<&mut [u8]> = outs.iter_mut().map(|b| b.as_mut_slice()).collect();
    emu.run(&in_refs, &mut out_refs).unwrap();
    for (k, (w, got)) in want.iter().zip(&outs).enumerate() {
        let wb = w.to_bytes();
        if let Some(wf) = w.as_f32() {
            let gf: Vec<f32> = got
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            let scale = wf.iter().fold(1f32, |m, v| m.max(v.abs()));
            let worst = wf
                .iter()
                .zip(&gf)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            eprintln!("output {k}: {} values, max |err| {worst:.2e}", wf.len());
            for (i, (a, b)) in wf.iter().zip(&gf).enumerate() {
                let ok = (a - b).abs() <= tol * scale || (a.is_nan() && b.is_nan()) || a == b;
                assert!(
                    ok,
                    "output {k}[{i}]: interpreter {a}, emulated GPU {b}\n{src}"
                );
            }
        } else {
            assert_eq!(&wb, got, "output {k}\n{src}");
        }
    }
}

#[test]
fn elementwise_and_chains() {
    check(
        "graph g {
  input %x: f32[2,3,5]
  input %y: f32[3,1]
  %a = add(%x, %y) : f32[2,3,5]
  %s = sigmoid(%a) : f32[2,3,5]
  %t = tanh(%s) : f32[2,3,5]
  %e = exp(%x) : f32[2,3,5]
  %l = log(%e) : f32[2,3,5]
  %d = div(%l, %y) : f32[2,3,5]
  %h = hard_swish(%x) : f32[2,3,5]
  %hs = hard_sigmoid(%x) {alpha=0.2, beta=0.5} : f32[2,3,5]
  %lr = leaky_relu(%x) {alpha=0.1, beta=0.0} : f32[2,3,5]
  %ab = abs(%x) : f32[2,3,5]
  %p = pow(%ab, %y) : f32[2,3,5]
  %c = chain(%x, %y) {steps=\"add+relu\"} : f32[2,3,5]
  %m = mul(%c, %c) : f32[2,3,5]
  %cl = clip(%m) {min=-0.5, max=0.5} : f32[2,3,5]
  %g = gelu(%x) : f32[2,3,5]
  %lt = less(%x, %y) : bool[2,3,5]
  %w = where(%lt, %x, %cl) : f32[2,3,5]
  output %t, %d, %h, %hs, %lr, %p, %w, %g
}",
        2e-6,
    );
}

#[test]
fn products() {
    // batched MatMul with broadcasting and a bias + residual epilogue; Gemm with transposes
    check(
        "graph g {
  input %a: f32[2,3,37,45]
  input %b: f32[3,45,70]
  input %bias: f32[70]
  input %r: f32[2,3,37,70]
  %m = matmul(%a, %b, %bias, %r) {epilogue=\"add+add+relu\"} : f32[2,3,37,70]
  input %x: f32[45,20]
  input %w: f32[33,45]
  input %c: f32[33]
  %y = gemm(%x, %w, %c) {alpha=0.5, beta=2.0, trans_a=1, trans_b=1} : f32[20,33]
  output %m, %y
}",
        2e-6,
    );
    // a large one: several blocks of the big tile
    check(
        "graph g {
  input %a: f32[300,129]
  input %b: f32[129,260]
  %m = matmul(%a, %b) : f32[300,260]
  output %m
}",
        2e-6,
    );
}

#[test]
fn convolutions_and_pools() {
    let w = |n: usize| -> String {
        let v: Vec<String> = (0..n)
            .map(|i| format!("{:.3}", ((i * 37 % 23) as f32 - 11.0) / 17.0))
            .collect();
        format!("[{}]", v.join(", "))
    };
    check(
        &format!(
            "graph g {{
  input %x: f32[2,6,11,13]
  input %r: f32[2,8,6,7]
  const %w: f32[8,3,3,3] = {}
  const %b: f32[8] = {}
  %c = conv(%x, %w, %b, %r) {{kernel=[3,3], strides=[2,2], pads=[1,1,1,2], dilations=[1,1], groups=2, epilogue=\"add+relu\"}} : f32[2,8,6,7]
  const %dw: f32[6,1,3,3] = {}
  %d = conv(%x, %dw) {{kernel=[3,3], strides=[1,1], pads=[2,2,2,2], dilations=[2,2], groups=6}} : f32[2,6,11,13]
  const %pw: f32[4,6,1,1] = {}
  %p = conv(%d, %pw) {{kernel=[1,1], strides=[1,1], pads=[0,0,0,0], dilations=[1,1], groups=1, epilogue=\"clip(0.0,6.0)\"}} : f32[2,4,11,13]
  %mp = max_pool(%x) {{kernel=[3,3], strides=[2,2], pads=[1,1,1,1], dilations=[1,1], ceil_mode=0, count_include_pad=0}} : f32[2,6,6,7]
  %ap = average_pool(%x) {{kernel=[3,3], strides=[2,2], pads=[1,1,1,1], dilations=[1,1], ceil_mode=1, count_include_pad=1}} : f32[2,6,6,7]
  %gp = global_average_pool(%p) : f32[2,4,1,1]
  output %c, %p, %mp, %ap, %gp
}}",
            w(8 * 27),
            w(8),
            w(54),
            w(24)
        ),
        2e-6,
    );
}

#[test]
fn rows_and_movement() {
    check(
        "graph g {
  input %x: f32[4,7,40]
  input %s: f32[40]
  input %b: f32[40]
  %ln = layer_norm(%x, %s, %b) {axis=2, epsilon=0.00001} : f32[4,7,40]
  %sm = softmax(%x) {axis=1} : f32[4,7,40]
  %ls = log_softmax(%x) {axis=2} : f32[4,7,40]
  %rm = reduce_mean(%x) {axes=[0,2], keepdims=1} : f32[1,7,1]
  %rx = reduce_max(%x) {axes=[1], keepdims=0} : f32[4,40]
  %t = transpose(%ln) {perm=[2,0,1]} : f32[40,4,7]
  %sl = slice(%x) {starts=[1,0,5], steps=[1,2,-1], sizes=[2,4,5]} : f32[2,4,5]
  %cc = concat(%sm, %ls) {axis=1} : f32[4,14,40]
  %sp0, %sp1 = split(%x) {axis=2, sizes=[15,25]} : f32[4,7,15], f32[4,7,25]
  %pd = pad(%sp0) {pads=[0,1,2,0,2,1], mode=\"reflect\", value=0.0} : f32[4,10,18]
  output %t, %sl, %cc, %sp1, %pd, %rm, %rx
}",
        2e-6,
    );
}
