//! The LLVM layer serves the CPU and the GPU: one kernel body written with `Emit` (vector loads
//! and stores, an epilogue with `exp`) is compiled to PTX for sm_80 inside a thread-index
//! entry, and JIT-compiled for the host inside a loop over the same indices, where it must
//! compute the right numbers.

use kiln_ir::ops::{ActKind, EpilogueStep};
use kiln_target_llvm::{Emit, LlvmJit, LlvmTarget, Src, compile_assembly, declarations};

/// Lanes per thread / per loop iteration: one 128-bit vector.
const W: usize = 4;

/// `y[4i..4i+4] = swish(x + b)` for work item `%i`: `@body(ptr x, ptr b, ptr y, i64 i)`.
fn body(e: &mut Emit) {
    e.line(
        "define internal void @body(ptr noalias %x, ptr noalias %b, ptr noalias %y, i64 %i) #0 {",
    );
    e.line("entry:");
    e.line(&format!("  %o = mul i64 %i, {W}"));
    let x = e.load_at("%x", "%o", None, "zeroinitializer");
    let yp = e.gep("%y", "%o");
    let steps = [
        EpilogueStep::Add,
        EpilogueStep::Act {
            kind: ActKind::Swish,
            alpha: 1.0,
            beta: 0.0,
        },
    ];
    let bp = e.gep("%b", "%o");
    let all = kiln_target_llvm::all_lanes(W);
    e.store_tile(&steps, &x, &all, (&yp, &[Src::Vec(bp)]), 0);
    e.line("  ret void");
    e.line("}");
}

/// The body and an entry for `t`: on NVPTX a kernel whose thread `blockIdx.x * blockDim.x +
/// threadIdx.x` runs item `i` when `i < n`; on the host `@swish_host(x, b, y, t0, t1)`
/// running items `t0..t1` in a loop.
fn module(t: &LlvmTarget) -> String {
    let mut e = Emit::new(W);
    body(&mut e);
    if t.is_nvptx() {
        for l in [
            "define void @swish_kernel(ptr %x, ptr %b, ptr %y, i64 %n) #0 {",
            "entry:",
            "  %tid = call i32 @llvm.nvvm.read.ptx.sreg.tid.x()",
            "  %cta = call i32 @llvm.nvvm.read.ptx.sreg.ctaid.x()",
            "  %ntid = call i32 @llvm.nvvm.read.ptx.sreg.ntid.x()",
            "  %base = mul i32 %cta, %ntid",
            "  %g = add i32 %base, %tid",
            "  %i = zext i32 %g to i64",
            "  %in = icmp ult i64 %i, %n",
            "  br i1 %in, label %run, label %done",
            "run:",
            "  call void @body(ptr %x, ptr %b, ptr %y, i64 %i)",
            "  br label %done",
            "done:",
            "  ret void",
            "}",
            "declare i32 @llvm.nvvm.read.ptx.sreg.tid.x()",
            "declare i32 @llvm.nvvm.read.ptx.sreg.ctaid.x()",
            "declare i32 @llvm.nvvm.read.ptx.sreg.ntid.x()",
            "!nvvm.annotations = !{!0}",
            "!0 = !{ptr @swish_kernel, !\"kernel\", i32 1}",
        ] {
            e.line(l);
        }
    } else {
        e.items_begin("swish_host", "ptr %x, ptr %b, ptr %y", 0, "i", "latch");
        e.line("  call void @body(ptr %x, ptr %b, ptr %y, i64 %i)");
        e.line("  br label %latch");
        e.line("latch:");
        e.items_end("i");
    }
    e.line(&declarations(W));
    e.line(&format!("attributes #0 = {{ {} }}", t.fn_attributes()));
    e.s
}

#[test]
fn one_body_for_nvptx_and_the_host() {
    let gpu = LlvmTarget::new(Some("nvptx64-nvidia-cuda"), Some("sm_80")).unwrap();
    assert_eq!(gpu.features, "+ptx70");
    let ptx = compile_assembly(&module(&gpu), &gpu).unwrap();
    assert!(ptx.contains(".target sm_80"), "{ptx}");
    assert!(ptx.contains(".version 7.0"), "{ptx}");
    assert!(ptx.contains(".entry swish_kernel"), "{ptx}");
    // the body is inlined into the kernel, and exp's polynomial is there in fused multiply-adds
    assert!(!ptx.contains("call.uni"), "{ptx}");
    assert!(ptx.contains("fma.rn.f32"), "{ptx}");

    let host = LlvmTarget::new(None, None).unwrap();
    let jit = LlvmJit::new(&module(&host), &host).unwrap();
    let f: extern "C" fn(*const f32, *const f32, *mut f32, i64, i64) =
        unsafe { std::mem::transmute(jit.address("swish_host").unwrap()) };
    let n = 64;
    let x: Vec<f32> = (0..n).map(|i| (i as f32 - 30.0) * 0.37).collect();
    let b: Vec<f32> = (0..n).map(|i| (i % 7) as f32 * 0.25 - 0.5).collect();
    let mut y = vec![f32::NAN; n];
    // items 0..n/4 in two calls, as a pool would split them
    f(x.as_ptr(), b.as_ptr(), y.as_mut_ptr(), 0, 5);
    f(x.as_ptr(), b.as_ptr(), y.as_mut_ptr(), 5, (n / W) as i64);
    for i in 0..n {
        let v = (x[i] + b[i]) as f64;
        let want = v / (1.0 + (-v).exp());
        assert!(
            (y[i] as f64 - want).abs() <= 1e-6 * want.abs().max(1.0),
            "y[{i}] = {} want {want}",
            y[i]
        );
    }
}

#[test]
fn nvptx_targets() {
    // the oldest PTX of each architecture, or one asked for; sm_90 needs LLVM 15+
    let t = LlvmTarget::nvptx("sm_90", None).unwrap();
    assert_eq!((t.cpu.as_str(), t.features.as_str()), ("sm_90", "+ptx78"));
    let t = LlvmTarget::nvptx("sm_86", Some(80)).unwrap();
    assert_eq!(t.features, "+ptx80");
    let ptx = compile_assembly(&module(&t), &t).unwrap();
    assert!(ptx.contains(".version 8.0") && ptx.contains(".target sm_86"));
    // clear errors, never an LLVM abort
    let e = LlvmTarget::nvptx("sm_100", None).unwrap_err().to_string();
    assert!(
        e.contains("unknown --target-cpu 'sm_100'") && e.contains("sm_90a"),
        "{e}"
    );
    let e = LlvmTarget::nvptx("sm_90", Some(70))
        .unwrap_err()
        .to_string();
    assert!(e.contains("PTX 7.0 cannot target sm_90"), "{e}");
    let e = LlvmTarget::nvptx("sm_80", Some(86))
        .unwrap_err()
        .to_string();
    assert!(e.contains("PTX 8.6"), "{e}");
    // NVPTX writes no objects, the JIT runs host code only
    assert!(kiln_target_llvm::compile_object("", &t).is_err());
    assert!(LlvmJit::new("", &t).is_err());
}

#[test]
fn cpu_targets() {
    let t = LlvmTarget::new(Some("x86_64-unknown-linux-gnu"), Some("x86-64-v4")).unwrap();
    assert_eq!((t.lanes, t.regs), (16, 32));
    let t = LlvmTarget::new(Some("x86_64-unknown-linux-gnu"), Some("znver3")).unwrap();
    assert_eq!((t.lanes, t.regs), (8, 16));
    let t = LlvmTarget::new(Some("x86_64-unknown-linux-gnu"), None).unwrap();
    assert_eq!((t.cpu.as_str(), t.lanes), ("x86-64", 4));
    let t = LlvmTarget::new(Some("aarch64-unknown-linux-gnu"), Some("neoverse-v2")).unwrap();
    assert_eq!((t.lanes, t.regs), (4, 32));
    // the same body as an aarch64 object and as x86-64 AVX-512 assembly
    let obj = kiln_target_llvm::compile_object(&module(&t), &t).unwrap();
    assert_eq!(&obj[..4], b"\x7fELF");
    assert_eq!(u16::from_le_bytes([obj[18], obj[19]]), 183, "EM_AARCH64");
    let t = LlvmTarget::new(Some("x86_64-unknown-linux-gnu"), Some("x86-64-v4")).unwrap();
    let asm = compile_assembly(&module(&t), &t).unwrap();
    assert!(asm.contains("swish_host") && asm.contains("xmm"), "{asm}");
    for (triple, cpu) in [
        ("x86_64-unknown-linux-gnu", "bogus"),
        ("aarch64-unknown-linux-gnu", "znver3"),
        ("riscv64gc-unknown-linux-gnu", "generic"),
    ] {
        let e = LlvmTarget::new(Some(triple), Some(cpu))
            .unwrap_err()
            .to_string();
        assert!(e.contains(triple), "{e}");
    }
    assert!(LlvmTarget::new(Some("aarch64-unknown-linux-gnu"), Some("native")).is_err());
    // a CPU back end asking for a CPU target gets none for the GPU triple
    let e = LlvmTarget::cpu(Some("nvptx64-nvidia-cuda"), None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("GPU back end"), "{e}");
}

/// `Emit::unroll` makes LLVM unroll a loop by exactly that count, whatever the CPU's scheduling
/// model would do (the baseline x86-64 CPU does not unroll this loop, an `exp` per iteration,
/// on its own).
#[test]
fn unroll_hint() {
    let t = LlvmTarget::new(Some("x86_64-unknown-linux-gnu"), None).unwrap();
    let exps = |count: Option<usize>| {
        let mut e = Emit::new(W);
        let vt = e.vt.clone();
        e.line("define void @sum(ptr noalias %x, ptr noalias %y) #0 {");
        e.line("entry:");
        e.line("  br label %l");
        e.line("l:");
        e.line("  %i = phi i64 [ 0, %entry ], [ %n, %l ]");
        e.line(&format!(
            "  %acc = phi {vt} [ zeroinitializer, %entry ], [ %a, %l ]"
        ));
        e.line(&format!("  %o = mul i64 %i, {W}"));
        let v = e.load_at("%x", "%o", None, "");
        let x = e.exp(&v);
        e.line(&format!("  %a = fadd {vt} %acc, {x}"));
        e.line("  %n = add i64 %i, 1");
        e.line("  %c = icmp eq i64 %n, 147");
        let hint = count.map(|n| e.unroll(n)).unwrap_or_default();
        e.line(&format!("  br i1 %c, label %done, label %l{hint}"));
        e.line("done:");
        e.store_vec("%a", "%y");
        e.line("  ret void");
        e.function_end();
        e.line(&declarations(W));
        e.line(&format!("attributes #0 = {{ {} }}", t.fn_attributes()));
        let opt = kiln_target_llvm::optimized_ir(&e.s, &t).unwrap();
        opt.matches("@llvm.floor.v4f32(<4 x float>").count() - 1 // less the declaration
    };
    assert_eq!(exps(Some(7)), 7);
    assert_eq!(exps(None), 1);
}
