//! The softmax rows of the attention kernel in base 2: `2^(s - max)` over a row of scores and its
//! sum, the row maximum, and single values for the online softmax's corrections.
//!
//! The kernel scales its queries by `log2(e)/√d`, so that a score is the usual one in units of
//! `log2`, and `exp(s - max) = 2^(s' - max')`. Base 2 needs no range reduction by `ln 2`: the
//! argument splits into a nearest integer `n` and a rest `r` in [-0.5, 0.5] exactly, `2^r` is a
//! degree-6 polynomial (Cephes `exp2f`'s coefficients, relative error below 2e-7), and `2^n` goes
//! into the exponent. That is about half the operations of a natural `exp`, which took 5-9% of a
//! prefill's cycles. With AVX-512 (`vscalefps` applies `2^n`, masks serve a row's last values) a
//! vector is 11 operations on 16 values; with AVX2 + FMA 15 on 8. Every path does the same
//! arithmetic in the same order (multiply-adds fused where the CPU has them), so the vector code,
//! its masked or scalar tails and the single values give the same bits on one CPU. Arguments under
//! -126 give exactly 0 (a masked `-inf` score gives a weight of 0, as in softmax).

use super::exp::{PORTABLE_FUSED, mul_add};

/// Below this, `2^x` is under f32's normal range: it is rounded to 0.
const MIN_ARG: f32 = -126.0;
/// Above this, `2^x` overflows; larger arguments are clamped to it (the softmax's are at most 0).
const MAX_ARG: f32 = 127.0;
/// `2^r - 1 ≈ r·P(r)` on [-0.5, 0.5], `P`'s coefficients highest degree first (Cephes `exp2f`).
const POLY: [f32; 6] = [
    1.535_336_2e-4,
    1.339_887_4e-3,
    9.618_437e-3,
    5.550_332_5e-2,
    0.240_226_48,
    // Cephes: 6.931472028550421e-1, the same f32 as ln 2.
    std::f32::consts::LN_2,
];

/// `2^x` (`x ≤ 127`; NaN stays NaN), the reference every vector path matches.
#[inline(always)]
fn exp2_approx<const FUSED: bool>(x: f32) -> f32 {
    if x < MIN_ARG {
        return 0.0;
    }
    // Not `f32::min`, which would turn a NaN into `MAX_ARG`.
    let xc = if x > MAX_ARG { MAX_ARG } else { x };
    let n = xc.round_ties_even();
    let r = xc - n;
    let mut p = POLY[0];
    for c in &POLY[1..] {
        p = mul_add::<FUSED>(p, r, *c);
    }
    let e = mul_add::<FUSED>(p, r, 1.0);
    e * f32::from_bits((((n as i32) + 127) as u32) << 23)
}

/// Replaces every `x` of `row` by `2^(x - max)` and returns their sum (portable version).
fn exp2_sub_sum_body<const FUSED: bool>(row: &mut [f32], max: f32) -> f32 {
    const LANES: usize = 8;
    let mut acc = [0.0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (x, a) in chunk.iter_mut().zip(acc.iter_mut()) {
            *x = exp2_approx::<FUSED>(*x - max);
            *a += *x;
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for x in chunks.into_remainder() {
        *x = exp2_approx::<FUSED>(*x - max);
        sum += *x;
    }
    sum
}

/// Replaces every `x` of `row` by `2^(x - max)` and returns their sum: AVX-512 or AVX2 + FMA code
/// where the CPU has it.
pub(crate) fn exp2_sub_sum(row: &mut [f32], max: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if avx512() {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { x86::exp2_sub_sum_avx512(row, max) };
        }
        if super::avx2_fma() {
            // SAFETY: as above.
            return unsafe { x86::exp2_sub_sum_avx2(row, max) };
        }
    }
    exp2_sub_sum_body::<PORTABLE_FUSED>(row, max)
}

/// `2^x` for single values (the online softmax's corrections, the focus map), the same bits as
/// [`exp2_sub_sum`]'s values.
pub(crate) fn exp2(x: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if vector_fused() {
        // SAFETY: the CPU has FMA (both vector paths require it).
        return unsafe { x86::exp2_fma(x) };
    }
    exp2_approx::<PORTABLE_FUSED>(x)
}

/// The largest value of `row` (`-inf` when empty), AVX2 code where the CPU has it (`f32::max`'s
/// NaN rule stops the compiler from vectorising the fold; scores are never NaN).
pub(crate) fn max(row: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if super::avx2_fma() {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { x86::max_avx2(row) };
    }
    row.iter().copied().fold(f32::NEG_INFINITY, f32::max)
}

/// Whether this CPU runs the AVX-512 path (AVX-512F and FMA).
#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma")
}

/// Whether [`exp2_sub_sum`] runs vector code with fused multiply-adds here.
#[cfg(target_arch = "x86_64")]
fn vector_fused() -> bool {
    avx512() || super::avx2_fma()
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{MAX_ARG, MIN_ARG, POLY, exp2_approx};

    /// [`exp2_approx`] fused, compiled with FMA so that its `mul_add`s are instructions.
    #[target_feature(enable = "fma")]
    pub(super) fn exp2_fma(x: f32) -> f32 {
        exp2_approx::<true>(x)
    }

    /// Sixteen lanes of [`exp2_approx`]: `vscalefps` multiplies by `2^n` (the same rounding as
    /// the scalar code's multiply by the power's bits), the zeroing mask gives the 0s. A NaN is
    /// kept (not less than the bound) and passes through `min`, which returns its second operand
    /// when one is NaN.
    #[target_feature(enable = "avx512f,fma")]
    fn exp2_16(x: __m512) -> __m512 {
        let splat = _mm512_set1_ps;
        let kept = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(x, splat(MIN_ARG));
        let xc = _mm512_min_ps(splat(MAX_ARG), x);
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(xc);
        let r = _mm512_sub_ps(xc, n);
        let mut p = splat(POLY[0]);
        for c in &POLY[1..] {
            p = _mm512_fmadd_ps(p, r, splat(*c));
        }
        let e = _mm512_fmadd_ps(p, r, splat(1.0));
        _mm512_maskz_scalef_ps(kept, e, n)
    }

    /// [`super::exp2_sub_sum`] sixteen values at a time, the row's last ones under a mask.
    #[target_feature(enable = "avx512f,fma")]
    pub(super) fn exp2_sub_sum_avx512(row: &mut [f32], max: f32) -> f32 {
        let vmax = _mm512_set1_ps(max);
        let mut acc = _mm512_setzero_ps();
        let (whole, _) = row.as_chunks_mut::<16>();
        let done = whole.len() * 16;
        for chunk in whole {
            let p = chunk.as_mut_ptr();
            // SAFETY: `chunk` holds 16 floats; unaligned loads and stores.
            let y = exp2_16(_mm512_sub_ps(unsafe { _mm512_loadu_ps(p) }, vmax));
            // SAFETY: as above.
            unsafe { _mm512_storeu_ps(p, y) };
            acc = _mm512_add_ps(acc, y);
        }
        let rest = row.len() - done;
        if rest > 0 {
            let mask = ((1u32 << rest) - 1) as __mmask16;
            // SAFETY: the masked lanes are the row's last `rest` values; the others are neither
            // read nor written.
            unsafe {
                let p = row.as_mut_ptr().add(done);
                let y = _mm512_maskz_mov_ps(
                    mask,
                    exp2_16(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask, p), vmax)),
                );
                _mm512_mask_storeu_ps(p, mask, y);
                acc = _mm512_add_ps(acc, y);
            }
        }
        _mm512_reduce_add_ps(acc)
    }

    /// Eight lanes of [`exp2_approx`], `2^n` by the exponent's bits (a NaN passes through `min`,
    /// its second operand, and the product).
    #[target_feature(enable = "avx2,fma")]
    fn exp2_8(x: __m256) -> __m256 {
        let splat = _mm256_set1_ps;
        let under = _mm256_cmp_ps::<_CMP_LT_OQ>(x, splat(MIN_ARG));
        let xc = _mm256_min_ps(splat(MAX_ARG), x);
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(xc);
        let r = _mm256_sub_ps(xc, n);
        let mut p = splat(POLY[0]);
        for c in &POLY[1..] {
            p = _mm256_fmadd_ps(p, r, splat(*c));
        }
        let e = _mm256_fmadd_ps(p, r, splat(1.0));
        let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        _mm256_andnot_ps(under, _mm256_mul_ps(e, _mm256_castsi256_ps(bits)))
    }

    /// [`super::exp2_sub_sum`] eight values at a time, the row's last ones in scalar code.
    #[target_feature(enable = "avx2,fma")]
    pub(super) fn exp2_sub_sum_avx2(row: &mut [f32], max: f32) -> f32 {
        let vmax = _mm256_set1_ps(max);
        let mut acc = _mm256_setzero_ps();
        let mut chunks = row.chunks_exact_mut(8);
        for chunk in &mut chunks {
            let p = chunk.as_mut_ptr();
            // SAFETY: `chunk` holds 8 floats; unaligned loads and stores.
            let y = exp2_8(_mm256_sub_ps(unsafe { _mm256_loadu_ps(p) }, vmax));
            // SAFETY: as above.
            unsafe { _mm256_storeu_ps(p, y) };
            acc = _mm256_add_ps(acc, y);
        }
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
        let mut sum: f32 = lanes.iter().sum();
        for x in chunks.into_remainder() {
            *x = exp2_approx::<true>(*x - max);
            sum += *x;
        }
        sum
    }

    #[target_feature(enable = "avx2")]
    pub(super) fn max_avx2(row: &[f32]) -> f32 {
        let mut acc = _mm256_set1_ps(f32::NEG_INFINITY);
        let chunks = row.chunks_exact(8);
        let rest = chunks.remainder();
        for chunk in chunks {
            // SAFETY: `chunk` holds 8 floats; an unaligned load.
            acc = _mm256_max_ps(acc, unsafe { _mm256_loadu_ps(chunk.as_ptr()) });
        }
        let mut lanes = [0.0f32; 8];
        // SAFETY: `lanes` holds 8 floats.
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), acc) };
        lanes
            .iter()
            .chain(rest)
            .copied()
            .fold(f32::NEG_INFINITY, f32::max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The arguments the tests sweep: the softmax's range and a little beyond both ends.
    fn sweep() -> impl Iterator<Item = f32> {
        (0..=250_000).map(|i| -130.0 + 140.0 * i as f32 / 250_000.0)
    }

    #[test]
    fn matches_f64_to_2e7_relative_over_the_normal_range() {
        let variants: [fn(f32) -> f32; 3] = [exp2, exp2_approx::<true>, exp2_approx::<false>];
        for (v, ours) in variants.iter().enumerate() {
            let mut worst = 0.0f64;
            for x in sweep().filter(|&x| x >= MIN_ARG) {
                let want = f64::from(x).exp2();
                let got = f64::from(ours(x));
                // Results under f32's normal range keep fewer digits: compare them absolutely.
                let err = (got - want).abs() / want.max(f64::from(f32::MIN_POSITIVE));
                worst = worst.max(err);
            }
            assert!(worst < 2e-7, "variant {v}: worst relative error {worst}");
        }
    }

    #[test]
    fn under_the_range_and_minus_infinity_give_exact_zeros() {
        for x in [f32::NEG_INFINITY, -1e30, -126.5, -126.01] {
            assert_eq!(exp2(x), 0.0, "2^{x}");
            let mut row = vec![x; 21];
            assert_eq!(exp2_sub_sum(&mut row, 0.0), 0.0);
            assert!(row.iter().all(|&v| v == 0.0));
        }
        assert_eq!(exp2(0.0), 1.0);
        assert_eq!(exp2(-1.0), 0.5);
        assert_eq!(exp2(MIN_ARG), f32::MIN_POSITIVE);
    }

    /// A NaN score (a model gone wrong) shows as NaN on every path, not as a weight of 0 on
    /// some and 2^127 on others.
    #[test]
    fn nan_stays_nan_on_every_path() {
        assert!(exp2(f32::NAN).is_nan());
        for v in [exp2_approx::<true>, exp2_approx::<false>] {
            assert!(v(f32::NAN).is_nan());
        }
        for len in [1, 8, 9, 16, 17, 40] {
            let mut row = vec![-1.0f32; len];
            row[len - 1] = f32::NAN;
            let sum = exp2_sub_sum(&mut row, 0.0);
            assert!(row[len - 1].is_nan() && sum.is_nan(), "length {len}");
            assert!(row[..len - 1].iter().all(|&v| v == 0.5), "length {len}");
        }
    }

    /// The portable code the vector code here matches bit for bit.
    fn same_as_vector_code(row: &mut [f32], max: f32) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if vector_fused() {
            return exp2_sub_sum_body::<true>(row, max);
        }
        exp2_sub_sum_body::<PORTABLE_FUSED>(row, max)
    }

    #[test]
    fn vector_tail_and_single_values_agree_bit_for_bit() {
        for len in [0, 1, 7, 8, 15, 16, 17, 31, 203, 256] {
            let row: Vec<f32> = (0..len).map(|i| -135.0 + i as f32 * 0.71).collect();
            let mut vector = row.clone();
            exp2_sub_sum(&mut vector, 2.0);
            let mut scalar = row.clone();
            same_as_vector_code(&mut scalar, 2.0);
            assert_eq!(vector, scalar, "length {len}");
            let single: Vec<f32> = row.iter().map(|x| exp2(x - 2.0)).collect();
            assert_eq!(vector, single, "length {len}");
        }
    }

    #[test]
    fn masked_scores_give_zeros_and_the_row_sums() {
        let mut row: Vec<f32> = (0..37).map(|i| i as f32 * 0.1).collect();
        row[3] = f32::NEG_INFINITY;
        row[20] = -1e30;
        let max = row[36];
        let expected: f64 = row.iter().map(|&x| f64::from(x - max).exp2()).sum();
        let sum = exp2_sub_sum(&mut row, max);
        assert_eq!(row[3], 0.0);
        assert_eq!(row[20], 0.0);
        assert!(
            (f64::from(sum) - expected).abs() < 1e-6 * expected,
            "{sum} vs {expected}"
        );
        assert_eq!(row[36], 1.0);
    }

    #[test]
    fn max_is_the_largest_value_at_every_length() {
        for len in [0, 1, 7, 8, 9, 31, 128, 133] {
            let row: Vec<f32> = (0..len)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.25)
                .collect();
            let want = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(max(&row), want, "length {len}");
        }
        let mut row = vec![f32::NEG_INFINITY; 19];
        assert_eq!(max(&row), f32::NEG_INFINITY);
        row[17] = -3.0;
        assert_eq!(max(&row), -3.0);
    }
}
