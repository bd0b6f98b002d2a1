//! Few-row products of `f32` activations with `Q4_0` and `Q4_1` blocks on CPUs with AVX-512
//! (AMD Zen 4 and later, Intel's server parts): [`super::quantized`]'s AVX2 kernel at twice the
//! width. Measured on Zen 4 only; Intel parts that lower their clock for 512-bit code may gain less.
//!
//! A block's 16 bytes of nibbles widen to 16 `i32` lanes in one instruction; the low nibbles (the
//! block's first 16 weights) and the high ones (its last 16) become two vectors of `f32`, which
//! multiply the block's 32 activations in two instructions. The block's sum is scaled by `d` once
//! and its offset `m · Σ x` added once, as in the AVX2 kernel (`Q4_0`'s `q - 8` enters as the
//! offset `m = -8d`). About 8 vector instructions a block where the AVX2 kernel takes about 20:
//! that kernel is bound by its instructions, not by the weight's bytes, so even on Zen 4, which
//! runs a 512-bit instruction in two halves, this one streams a step's `Q4_1` weights about a
//! quarter faster (BENCHMARKS.md). `Q8_0` keeps the AVX2 kernel: its 32 bytes widen in two
//! instructions at either width, and at 512 bits it was no faster.
//!
//! Each output is summed the same way whatever the rows beside it: a row's bits do not depend on
//! its batch.

use std::arch::x86_64::*;

use super::few_rows::lane_sum;
use super::quantized::scale_and_offset;
use crate::gguf::dequant::{GGML_TYPE_Q4_0, GGML_TYPE_Q4_1};
use crate::quantized::QuantizedMatrix;

/// Whether this CPU and type take this kernel.
pub(super) fn applies(ggml_type: u32) -> bool {
    matches!(ggml_type, GGML_TYPE_Q4_0 | GGML_TYPE_Q4_1)
        && std::arch::is_x86_feature_detected!("avx512f")
        // Implied by AVX-512F for the compiler; checked for CPUs (virtual ones) that hide them.
        && super::avx2_fma()
        && std::arch::is_x86_feature_detected!("f16c")
}

/// `out[j · m + r] = x_r · w_{start + j}` for the `out.len() / m` weight rows from `start`, with
/// `sums` each activation block's sum (`[m, k / 32]`, `block_sums` in [`super::quantized`]).
///
/// # Safety
/// [`applies`] holds for `w`'s type; `x` is `m` rows of `w.cols()`, `sums` their block sums, and
/// `out` whole rows of `m`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
pub(super) unsafe fn dots(
    (x, sums): (&[f32], &[f32]),
    m: usize,
    w: &QuantizedMatrix,
    start: usize,
    out: &mut [f32],
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match w.ggml_type() {
            GGML_TYPE_Q4_0 => dots_of::<GGML_TYPE_Q4_0>((x, sums), m, w, start, out),
            GGML_TYPE_Q4_1 => dots_of::<GGML_TYPE_Q4_1>((x, sums), m, w, start, out),
            _ => unreachable!("`applies` admits Q4_0 and Q4_1 only"),
        }
    }
}

/// [`dots`] for blocks of type `T`: activation rows in groups of up to 3, each decoded block
/// serving its group.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn dots_of<const T: u32>(
    (x, sums): (&[f32], &[f32]),
    m: usize,
    w: &QuantizedMatrix,
    start: usize,
    out: &mut [f32],
) {
    weight_rows_in_groups!(group::<T>, (x, sums), m, w, start, out)
}

/// `out[i] = x_{r0 + i} · w_row` for `i < R`, the row's blocks at `data`.
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn group<const T: u32, const R: usize>(
    (x, sums): (&[f32], &[f32]),
    (k, blocks, block_bytes): (usize, usize, usize),
    r0: usize,
    data: *const u8,
    out: &mut [f32],
) {
    let nibble = _mm512_set1_epi32(0x0F);
    let integers_at = if T == GGML_TYPE_Q4_1 { 4 } else { 2 };
    let mut scaled = [_mm512_setzero_ps(); R];
    let mut offsets = [0.0f32; R];
    for b in 0..blocks {
        // SAFETY: block `b` of the row (16 bytes of nibbles from `integers_at`), 32 floats of
        // each row from `b · 32`, and the rows' `blocks` sums (`dots_of` asserted their sizes).
        unsafe {
            let p = data.add(b * block_bytes);
            let (d, m) = scale_and_offset::<T>(p);
            // Lane j: byte j, whose low nibble is weight j and high nibble weight j + 16.
            let bytes = _mm512_cvtepu8_epi32(_mm_loadu_si128(p.add(integers_at) as *const __m128i));
            let low = _mm512_cvtepi32_ps(_mm512_and_si512(bytes, nibble));
            let high = _mm512_cvtepi32_ps(_mm512_srli_epi32::<4>(bytes));
            let d = _mm512_set1_ps(d);
            for i in 0..R {
                let xs = x.as_ptr().add((r0 + i) * k + b * 32);
                let products = _mm512_fmadd_ps(
                    high,
                    _mm512_loadu_ps(xs.add(16)),
                    _mm512_mul_ps(low, _mm512_loadu_ps(xs)),
                );
                scaled[i] = _mm512_fmadd_ps(products, d, scaled[i]);
                offsets[i] += m * *sums.get_unchecked((r0 + i) * blocks + b);
            }
        }
    }
    for i in 0..R {
        // Halves added, then eight lanes in a fixed order (`_mm512_reduce_add_ps` leaves the
        // order to the compiler).
        let upper = _mm512_extractf64x4_pd::<1>(_mm512_castps_pd(scaled[i]));
        let halves = _mm256_add_ps(_mm512_castps512_ps256(scaled[i]), _mm256_castpd_ps(upper));
        out[i] = lane_sum(halves) + offsets[i];
    }
}
