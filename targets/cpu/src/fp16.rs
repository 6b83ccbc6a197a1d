//! IEEE half (f16) and bfloat16 <-> f32 conversions as branch-free integer code, so kernels can
//! load and store 16-bit floats and compute in f32 on any target (no F16C needed). f32 -> 16-bit
//! rounds to nearest even; NaN stays NaN, overflow becomes infinity.

use crate::kb::{F32, Kb};
use cranelift_codegen::ir::condcodes::IntCC;
use cranelift_codegen::ir::{InstBuilder, MemFlagsData, Value, types};

fn bits_to_f32(kb: &mut Kb, b: Value) -> Value {
    kb.b.ins().bitcast(F32, MemFlagsData::new(), b)
}
fn f32_to_bits(kb: &mut Kb, f: Value) -> Value {
    kb.b.ins().bitcast(types::I32, MemFlagsData::new(), f)
}

/// f16 bits (an I16 value) to f32.
pub(crate) fn f16_to_f32(kb: &mut Kb, h: Value) -> Value {
    let h = kb.b.ins().uextend(types::I32, h);
    let i = |kb: &mut Kb, v: i64| kb.b.ins().iconst(types::I32, v);
    let em = kb.b.ins().band_imm_u(h, 0x7fff);
    let o = kb.b.ins().ishl_imm_u(em, 13);
    let exp = kb.b.ins().band_imm_u(o, 0x0f80_0000);
    let o = kb.b.ins().iadd_imm_u(o, (127 - 15) << 23);
    // inf/nan: one more exponent adjustment
    let infnan = kb.b.ins().icmp_imm_u(IntCC::Equal, exp, 0x0f80_0000);
    let o_inf = kb.b.ins().iadd_imm_u(o, (128 - 16) << 23);
    // zero/subnormal: renormalize through a float subtraction
    let o_sub = kb.b.ins().iadd_imm_u(o, 1 << 23);
    let f_sub = bits_to_f32(kb, o_sub);
    let magic = i(kb, 113 << 23);
    let magic = bits_to_f32(kb, magic);
    let f_sub = kb.b.ins().fsub(f_sub, magic);
    let o_sub = f32_to_bits(kb, f_sub);
    let sub = kb.b.ins().icmp_imm_u(IntCC::Equal, exp, 0);
    let o = kb.b.ins().select(infnan, o_inf, o);
    let o = kb.b.ins().select(sub, o_sub, o);
    let s = kb.b.ins().band_imm_u(h, 0x8000);
    let s = kb.b.ins().ishl_imm_u(s, 16);
    let o = kb.b.ins().bor(o, s);
    bits_to_f32(kb, o)
}

/// f32 to f16 bits (an I16 value), round to nearest even.
pub(crate) fn f32_to_f16(kb: &mut Kb, f: Value) -> Value {
    let i = |kb: &mut Kb, v: i64| kb.b.ins().iconst(types::I32, v);
    let u = f32_to_bits(kb, f);
    let sign = kb.b.ins().band_imm_u(u, 0x8000_0000);
    let a = kb.b.ins().bxor(u, sign);
    // overflow / inf / nan
    let f32_inf = 255i64 << 23;
    let f16_max = (127i64 + 16) << 23;
    let is_nan =
        kb.b.ins()
            .icmp_imm_u(IntCC::UnsignedGreaterThan, a, f32_inf);
    let (qnan, inf) = (i(kb, 0x7e00), i(kb, 0x7c00));
    let o_big = kb.b.ins().select(is_nan, qnan, inf);
    let big =
        kb.b.ins()
            .icmp_imm_u(IntCC::UnsignedGreaterThanOrEqual, a, f16_max);
    // subnormal: let the FPU round by adding a magic number
    let denorm_magic = ((127i64 - 15) + (23 - 10) + 1) << 23;
    let af = bits_to_f32(kb, a);
    let dm = i(kb, denorm_magic);
    let dmf = bits_to_f32(kb, dm);
    let s = kb.b.ins().fadd(af, dmf);
    let s = f32_to_bits(kb, s);
    let o_sub = kb.b.ins().isub(s, dm);
    let small = kb.b.ins().icmp_imm_u(IntCC::UnsignedLessThan, a, 113 << 23);
    // normal: rebias and round to nearest even
    let odd = kb.b.ins().ushr_imm_u(a, 13);
    let odd = kb.b.ins().band_imm_u(odd, 1);
    let n = kb.b.ins().iadd_imm_s(a, ((15i64 - 127) << 23) + 0xfff);
    let n = kb.b.ins().iadd(n, odd);
    let o_norm = kb.b.ins().ushr_imm_u(n, 13);
    let o = kb.b.ins().select(small, o_sub, o_norm);
    let o = kb.b.ins().select(big, o_big, o);
    let s16 = kb.b.ins().ushr_imm_u(sign, 16);
    let o = kb.b.ins().bor(o, s16);
    kb.b.ins().ireduce(types::I16, o)
}

/// bfloat16 bits (I16) to f32: the upper half of the f32.
pub(crate) fn bf16_to_f32(kb: &mut Kb, h: Value) -> Value {
    let h = kb.b.ins().uextend(types::I32, h);
    let o = kb.b.ins().ishl_imm_u(h, 16);
    bits_to_f32(kb, o)
}

/// f32 to bfloat16 bits (I16), round to nearest even; NaN stays a quiet NaN.
pub(crate) fn f32_to_bf16(kb: &mut Kb, f: Value) -> Value {
    let u = f32_to_bits(kb, f);
    let lsb = kb.b.ins().ushr_imm_u(u, 16);
    let lsb = kb.b.ins().band_imm_u(lsb, 1);
    let r = kb.b.ins().iadd_imm_u(u, 0x7fff);
    let r = kb.b.ins().iadd(r, lsb);
    let r = kb.b.ins().ushr_imm_u(r, 16);
    let nan =
        kb.b.ins()
            .fcmp(cranelift_codegen::ir::condcodes::FloatCC::Unordered, f, f);
    let hi = kb.b.ins().ushr_imm_u(u, 16);
    let q = kb.b.ins().bor_imm_u(hi, 0x40);
    let r = kb.b.ins().select(nan, q, r);
    kb.b.ins().ireduce(types::I16, r)
}
