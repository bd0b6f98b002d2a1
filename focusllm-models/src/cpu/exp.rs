//! A vectorised natural `exp` for SwiGLU's `silu` (the attention's softmax works in base 2: see
//! [`super::exp2`]).
//!
//! `f32::exp` is a libm call per element. This is the Cephes `expf` scheme (range reduction by
//! `n·ln 2` in two parts, a degree-6 polynomial, `2^n` by exponent bits), branch-free, in AVX2 with
//! fused multiply-adds where the CPU has them (every x86-64 CPU with AVX2 but a few has FMA too):
//! relative error below 2e-7, exact 0 below the f32 range. The scalar code beside the vector code
//! (a row's last few values) does the same operations with `mul_add`, so both give the same bits;
//! the portable code fuses only where that is an instruction.

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Below this, `exp` is under f32's normal range: the kernel rounds it to 0.
const MIN_ARG: f32 = -87.336_55;
const MAX_ARG: f32 = 88.376_26;
/// The polynomial's coefficients, highest degree first (`exp(r) ≈ 1 + r + r²·P(r)`).
const POLY: [f32; 6] = [
    1.987_569_1e-4,
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];

/// Whether the portable code fuses its multiply-adds: `mul_add` is one instruction on aarch64 and
/// on x86-64 builds for CPUs with FMA, but a call to libm's `fmaf` on a baseline x86-64 build
/// (several times slower than a multiply and an add).
pub(super) const PORTABLE_FUSED: bool =
    cfg!(target_arch = "aarch64") || cfg!(target_feature = "fma");

/// `a·b + c`, rounded once when `FUSED`.
#[inline(always)]
pub(super) fn mul_add<const FUSED: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FUSED { a.mul_add(b, c) } else { a * b + c }
}

#[inline(always)]
fn exp_approx<const FUSED: bool>(x: f32) -> f32 {
    let xc = x.clamp(MIN_ARG, MAX_ARG);
    let n = mul_add::<FUSED>(xc, LOG2E, 0.5).floor();
    let r = mul_add::<FUSED>(-n, LN2_LO, mul_add::<FUSED>(-n, LN2_HI, xc));
    let mut p = POLY[0];
    for c in &POLY[1..] {
        p = mul_add::<FUSED>(p, r, *c);
    }
    let e = mul_add::<FUSED>(p * r, r, r) + 1.0;
    let scale = f32::from_bits((((n as i32) + 127) as u32) << 23);
    if x < MIN_ARG { 0.0 } else { e * scale }
}

/// Eight lanes of [`exp_approx`]: the same operations in the same order, fused multiply-adds
/// where it has `mul_add`, so both give the same bits (the compiler does not vectorise the scalar
/// loop: the float-to-int conversion and the select stop it).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exp8(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let splat = _mm256_set1_ps;
    let (min_arg, max_arg) = (splat(MIN_ARG), splat(MAX_ARG));
    let under = _mm256_cmp_ps::<_CMP_LT_OQ>(x, min_arg);
    let xc = _mm256_min_ps(_mm256_max_ps(x, min_arg), max_arg);
    let n = _mm256_floor_ps(_mm256_fmadd_ps(xc, splat(LOG2E), splat(0.5)));
    let r = _mm256_fnmadd_ps(n, splat(LN2_LO), _mm256_fnmadd_ps(n, splat(LN2_HI), xc));
    let mut poly = splat(POLY[0]);
    for c in &POLY[1..] {
        poly = _mm256_fmadd_ps(poly, r, splat(*c));
    }
    let e = _mm256_add_ps(_mm256_fmadd_ps(_mm256_mul_ps(poly, r), r, r), splat(1.0));
    let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    _mm256_andnot_ps(under, _mm256_mul_ps(e, _mm256_castsi256_ps(bits)))
}

/// `silu(g)·u = g·u / (1 + exp(−g))`, element by element, into `gate`.
#[inline(always)]
fn swiglu_body<const FUSED: bool>(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g * *u / (1.0 + exp_approx::<FUSED>(-*g));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn swiglu_avx2(gate: &mut [f32], up: &[f32]) {
    use std::arch::x86_64::*;
    let n = gate.len() / 8 * 8;
    let (head, tail) = gate.split_at_mut(n);
    for (g, u) in head.chunks_exact_mut(8).zip(up.chunks_exact(8)) {
        // SAFETY: both chunks hold 8 floats.
        let (gv, uv) = unsafe { (_mm256_loadu_ps(g.as_ptr()), _mm256_loadu_ps(u.as_ptr())) };
        let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv));
        let y = _mm256_div_ps(_mm256_mul_ps(gv, uv), _mm256_add_ps(_mm256_set1_ps(1.0), e));
        // SAFETY: as above.
        unsafe { _mm256_storeu_ps(g.as_mut_ptr(), y) };
    }
    swiglu_body::<true>(tail, &up[n..]);
}

/// `gate ← silu(gate)·up` (SwiGLU's activation), AVX2 + FMA code where the CPU has it.
pub(crate) fn swiglu(gate: &mut [f32], up: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::avx2_fma() {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { swiglu_avx2(gate, up) };
    }
    swiglu_body::<PORTABLE_FUSED>(gate, up)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_libm_to_2e7_relative_over_the_f32_range() {
        let variants: [fn(f32) -> f32; 2] = [exp_approx::<true>, exp_approx::<false>];
        for (v, ours) in variants.iter().enumerate() {
            let mut worst = 0.0f32;
            for i in 0..=200_000 {
                let x = -87.0 + 175.0 * i as f32 / 200_000.0;
                let libm = x.exp();
                worst = worst.max(((ours(x) - libm) / libm).abs());
            }
            assert!(worst < 2e-7, "variant {v}: worst relative error {worst}");
        }
    }

    /// Whether [`swiglu`] runs the vector code here (which the fused scalar code
    /// matches bit for bit), else the portable code.
    fn vector_code_fused() -> bool {
        #[cfg(target_arch = "x86_64")]
        if super::super::avx2_fma() {
            return true;
        }
        PORTABLE_FUSED
    }

    #[test]
    fn swiglu_matches_silu_times_up() {
        let gate: Vec<f32> = (0..77).map(|i| -20.0 + i as f32 * 0.53).collect();
        let up: Vec<f32> = (0..77).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut fused = gate.clone();
        swiglu(&mut fused, &up);
        for ((f, g), u) in fused.iter().zip(&gate).zip(&up) {
            let want = g / (1.0 + (-g).exp()) * u;
            assert!(
                (f - want).abs() <= 1e-6 * want.abs().max(1e-3),
                "{f} vs {want} at {g}"
            );
        }
        let mut scalar = gate;
        if vector_code_fused() {
            swiglu_body::<true>(&mut scalar, &up);
        } else {
            swiglu_body::<false>(&mut scalar, &up);
        }
        assert_eq!(fused, scalar);
    }
}
