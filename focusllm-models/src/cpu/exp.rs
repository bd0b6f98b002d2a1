//! A vectorisable `exp` for the softmax rows of the attention kernel.
//!
//! `f32::exp` is a libm call per element (8% of a FocusLLM prefill's cycles on flex). This is the
//! Cephes `expf` scheme (range reduction by `n·ln 2` in two parts, a degree-6 polynomial, `2^n`
//! by exponent bits), branch-free so that the compiler turns the loop into AVX2 code: relative
//! error below 2e-7, exact 0 below the f32 range (a masked `-inf` gives 0, as in softmax).

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Below this, `exp` is under f32's normal range: the kernel rounds it to 0.
const MIN_ARG: f32 = -87.336_55;
const MAX_ARG: f32 = 88.376_26;

#[inline(always)]
fn exp_approx(x: f32) -> f32 {
    let xc = x.clamp(MIN_ARG, MAX_ARG);
    let n = (xc * LOG2E + 0.5).floor();
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    let scale = f32::from_bits((((n as i32) + 127) as u32) << 23);
    if x < MIN_ARG { 0.0 } else { e * scale }
}

/// Replaces every `x` of `row` by `exp(x - max)` and returns their sum.
#[inline(always)]
fn exp_sub_sum_body(row: &mut [f32], max: f32) -> f32 {
    const LANES: usize = 8;
    let mut acc = [0.0f32; LANES];
    let mut chunks = row.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (x, a) in chunk.iter_mut().zip(acc.iter_mut()) {
            *x = exp_approx(*x - max);
            *a += *x;
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for x in chunks.into_remainder() {
        *x = exp_approx(*x - max);
        sum += *x;
    }
    sum
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn exp_sub_sum_avx2(row: &mut [f32], max: f32) -> f32 {
    exp_sub_sum_body(row, max)
}

/// Replaces every `x` of `row` by `exp(x - max)` and returns their sum (AVX2 code where the CPU
/// has it).
pub(crate) fn exp_sub_sum(row: &mut [f32], max: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { exp_sub_sum_avx2(row, max) };
    }
    exp_sub_sum_body(row, max)
}

/// `exp(x)` with the kernel's accuracy (for single values: the online softmax's corrections).
pub(crate) fn exp(x: f32) -> f32 {
    exp_approx(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_libm_to_2e7_relative_over_the_softmax_range() {
        let mut worst = 0.0f32;
        for i in 0..=200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let (ours, libm) = (exp(x), x.exp());
            worst = worst.max(((ours - libm) / libm).abs());
        }
        assert!(worst < 2e-7, "worst relative error {worst}");
    }

    #[test]
    fn masked_scores_give_exact_zeros_and_rows_sum() {
        let mut row: Vec<f32> = (0..37).map(|i| i as f32 * 0.1).collect();
        row[3] = f32::NEG_INFINITY;
        row[20] = -1e30;
        let max = 3.6;
        let expected: f32 = row.iter().map(|x| (x - max).exp()).sum();
        let sum = exp_sub_sum(&mut row, max);
        assert_eq!(row[3], 0.0);
        assert_eq!(row[20], 0.0);
        assert!(
            (sum - expected).abs() < 1e-5 * expected,
            "{sum} vs {expected}"
        );
        assert!((row[36] - 1.0).abs() < 1e-6);
    }
}
