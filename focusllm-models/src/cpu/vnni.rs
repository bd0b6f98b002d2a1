//! Few-row products of 8-bit activations ([`crate::ActivationPrecision::Int8`]) with `Q4_0`,
//! `Q4_1` and `Q8_0` blocks on CPUs with AVX-512 VNNI and VBMI (AMD Zen 4, Intel Ice Lake and
//! later).
//!
//! `vpdpbusd` multiplies 64 unsigned bytes by 64 signed ones and adds each four products into one
//! of 16 `i32` lanes: one instruction for 64 weights of a row, where decoding them to `f32` and
//! multiplying takes about 20 (the AVX2 kernels of [`super::quantized`]). Each group of blocks
//! (four `Q4_*` blocks, two `Q8_0` ones: 128 or 64 weights) is read with two masked loads, its
//! integers gathered by one byte permutation (`vpermi2b`), its scales by one word permutation, and
//! its integer sums scaled into `f32` lanes: `d · s · Σ q_i a_i + m · s · Σ a_i` per block, as in
//! the AVX2 kernel (`Q8_0`'s signed weights enter as `q + 128`, the `128 · Σ a_i` taken off as an
//! offset of `-128 d`). The activation rows are arranged once per product to match ([`Rows`]).
//!
//! Each row is summed the same way whatever the rows beside it: a row's bits do not depend on
//! its batch.

use std::arch::x86_64::*;

use super::quantized::Int8Rows;
use crate::gguf::dequant::{GGML_TYPE_Q4_0, GGML_TYPE_Q4_1, GGML_TYPE_Q8_0};
use crate::quantized::QuantizedMatrix;

/// Whether this CPU and type take this kernel.
pub(super) fn applies(ggml_type: u32) -> bool {
    matches!(ggml_type, GGML_TYPE_Q4_0 | GGML_TYPE_Q4_1 | GGML_TYPE_Q8_0)
        && std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bw")
        && std::arch::is_x86_feature_detected!("avx512vnni")
        && std::arch::is_x86_feature_detected!("avx512vbmi")
}

/// A block type's layout: bytes per block, where its integers start, blocks per group.
const fn layout(ggml_type: u32) -> (usize, usize, usize) {
    match ggml_type {
        GGML_TYPE_Q4_0 => (18, 2, 4),
        GGML_TYPE_Q4_1 => (20, 4, 4),
        _ => (34, 2, 2),
    }
}

/// Activation rows rounded to 8 bits ([`Int8Rows`]) arranged for one block type's groups: per
/// row and group, the values as the group's permuted weights lie (`Q4_*`: the first 16 values of
/// each of the four blocks, then their last 16; `Q8_0`: as they are), and 16 lanes of the blocks'
/// scales and of their `s · Σ a_i` (each spread evenly over its block's lanes). Blocks past a
/// row's end are zeros.
pub(super) struct Rows {
    ggml_type: u32,
    rows: usize,
    groups: usize,
    values: Vec<i8>,
    scales: Vec<f32>,
    sums: Vec<f32>,
}

impl Rows {
    /// `rows` (`m` rows) arranged for blocks of `ggml_type`.
    pub(super) fn new(rows: &Int8Rows, m: usize, ggml_type: u32) -> Self {
        let blocks = rows.k / 32;
        let (_, _, per_group) = layout(ggml_type);
        let groups = blocks.div_ceil(per_group);
        let lanes = 16 / per_group;
        let mut values = vec![0i8; m * groups * per_group * 32];
        let mut scales = vec![0.0f32; m * groups * 16];
        let mut sums = vec![0.0f32; m * groups * 16];
        for r in 0..m {
            for b in 0..blocks {
                let (group, slot) = (b / per_group, b % per_group);
                let src = &rows.values[(r * blocks + b) * 32..][..32];
                let at = (r * groups + group) * per_group * 32;
                if per_group == 4 {
                    values[at + slot * 16..][..16].copy_from_slice(&src[..16]);
                    values[at + 64 + slot * 16..][..16].copy_from_slice(&src[16..]);
                } else {
                    values[at + slot * 32..][..32].copy_from_slice(src);
                }
                let lane = (r * groups + group) * 16 + slot * lanes;
                scales[lane..lane + lanes].fill(rows.scales[r * blocks + b]);
                // Divided by a power of two: exact, and the lanes add up to the sum again.
                sums[lane..lane + lanes].fill(rows.sums[r * blocks + b] / lanes as f32);
            }
        }
        Self {
            ggml_type,
            rows: m,
            groups,
            values,
            scales,
            sums,
        }
    }
}

/// `out[j · m + r] = x_r · w_{start + j}` for the `out.len() / m` weight rows from `start`, with
/// the activation rows `rows` (arranged for `w`'s type).
///
/// # Safety
/// [`applies`] holds for `w`'s type.
///
/// # Panics
/// If `rows` were arranged for another type or width, or `out` is not whole rows of `m`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
pub(super) unsafe fn dots(rows: &Rows, w: &QuantizedMatrix, start: usize, out: &mut [f32]) {
    let (block_bytes, _, per_group) = layout(w.ggml_type());
    let m = rows.rows;
    assert!(
        rows.ggml_type == w.ggml_type()
            && w.cols().is_multiple_of(32)
            && rows.groups == (w.cols() / 32).div_ceil(per_group)
            && w.row_bytes() == w.cols() / 32 * block_bytes
            && m > 0
            && out.len().is_multiple_of(m),
        "8-bit activation rows do not fit the weight"
    );
    // SAFETY: the CPU has the features (the caller), the sizes are checked above.
    unsafe {
        match w.ggml_type() {
            GGML_TYPE_Q4_0 => dots_of::<GGML_TYPE_Q4_0>(rows, w, start, out),
            GGML_TYPE_Q4_1 => dots_of::<GGML_TYPE_Q4_1>(rows, w, start, out),
            _ => dots_of::<GGML_TYPE_Q8_0>(rows, w, start, out),
        }
    }
}

/// [`dots`] for blocks of type `T`, activation rows in groups of up to four (each group's
/// integers and scales decoded once for them).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
unsafe fn dots_of<const T: u32>(rows: &Rows, w: &QuantizedMatrix, start: usize, out: &mut [f32]) {
    let m = rows.rows;
    for j in 0..out.len() / m {
        let row = w.row_data(start + j, 1);
        let out = &mut out[j * m..(j + 1) * m];
        let mut r = 0;
        // SAFETY: `row` is one whole row of `w` (checked by `dots`), `rows` holds `m` rows.
        unsafe {
            while r + 4 <= m {
                group::<T, 4>(rows, row, r, &mut out[r..]);
                r += 4;
            }
            match m - r {
                3 => group::<T, 3>(rows, row, r, &mut out[r..]),
                2 => group::<T, 2>(rows, row, r, &mut out[r..]),
                1 => group::<T, 1>(rows, row, r, &mut out[r..]),
                _ => {}
            }
        }
    }
}

/// The byte permutation that gathers a group's integers out of its bytes (two registers):
/// `Q4_*`: block `b`'s 16 bytes of nibbles in lane `b`; `Q8_0`: block `b`'s 32 bytes in half `b`.
const fn integer_index(ggml_type: u32) -> [u8; 64] {
    let (block_bytes, first, per_group) = layout(ggml_type);
    let width = 64 / per_group;
    let mut index = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        index[i] = (block_bytes * (i / width) + first + i % width) as u8;
        i += 1;
    }
    index
}

/// The word permutation that spreads a group's scales `d` (words 0-15) and, for `Q4_1`, offsets
/// `m` (words 16-31) over the lanes of their blocks.
const fn scale_index(ggml_type: u32) -> [u16; 32] {
    let (block_bytes, _, per_group) = layout(ggml_type);
    let lanes = 16 / per_group;
    let mut index = [0u16; 32];
    let mut i = 0;
    while i < 16 {
        let word = (block_bytes * (i / lanes) / 2) as u16;
        index[i] = word;
        index[i + 16] = word + 1;
        i += 1;
    }
    index
}

/// The first `n` bits (of 64).
fn mask(n: usize) -> u64 {
    if n >= 64 { u64::MAX } else { (1u64 << n) - 1 }
}

/// `out[i] = x_{r0 + i} · row` for `i < R`.
///
/// # Safety
/// The CPU has the features; `row` is a whole row of `T` blocks, as many as `rows` has values.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
unsafe fn group<const T: u32, const R: usize>(rows: &Rows, row: &[u8], r0: usize, out: &mut [f32]) {
    let (block_bytes, _, per_group) = layout(T);
    let blocks = row.len() / block_bytes;
    let integers = const { integer_index(T) };
    let scales = const { scale_index(T) };
    // SAFETY: the indices are 64 bytes and 32 words.
    let (integers, scales) = unsafe {
        (
            _mm512_loadu_si512(integers.as_ptr().cast()),
            _mm512_loadu_si512(scales.as_ptr().cast()),
        )
    };
    let nibble = _mm512_set1_epi8(0x0F);
    let mut acc = [_mm512_setzero_ps(); R];
    let group_values = per_group * 32;
    for g in 0..rows.groups {
        // The group's bytes, zeros past the row's end (then `d = m = 0`): masked loads touch
        // no byte outside the mask.
        let first = g * per_group * block_bytes;
        let len = (blocks - g * per_group).min(per_group) * block_bytes;
        let p = row.as_ptr().wrapping_add(first);
        // SAFETY: the masks cover `len` bytes from `first`, inside the row.
        let (lo_bytes, hi_bytes) = unsafe {
            (
                _mm512_maskz_loadu_epi8(mask(len), p.cast()),
                _mm512_maskz_loadu_epi8(mask(len.saturating_sub(64)), p.wrapping_add(64).cast()),
            )
        };
        let q = _mm512_permutex2var_epi8(lo_bytes, integers, hi_bytes);
        let words = _mm512_permutexvar_epi16(scales, lo_bytes);
        let d = _mm512_cvtph_ps(_mm512_castsi512_si256(words));
        let offset = match T {
            GGML_TYPE_Q4_1 => _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(words)),
            GGML_TYPE_Q4_0 => _mm512_mul_ps(d, _mm512_set1_ps(-8.0)),
            _ => _mm512_mul_ps(d, _mm512_set1_ps(-128.0)),
        };
        // `Q4_*`: the low nibbles (elements 0-15 of each block), then the high ones (16-31).
        // `Q8_0`: the signed bytes as `q + 128`.
        let (first_q, second_q) = if T == GGML_TYPE_Q8_0 {
            (
                _mm512_xor_si512(q, _mm512_set1_epi8(-128)),
                _mm512_setzero_si512(),
            )
        } else {
            (
                _mm512_and_si512(q, nibble),
                _mm512_and_si512(_mm512_srli_epi16::<4>(q), nibble),
            )
        };
        for (i, acc) in acc.iter_mut().enumerate() {
            let at = (r0 + i) * rows.groups + g;
            // SAFETY: row `r0 + i` of `rows` has `groups` groups of `group_values` values and
            // 16 scales and sums each.
            unsafe {
                let values = rows.values.as_ptr().add(at * group_values);
                let mut sum = _mm512_dpbusd_epi32(
                    _mm512_setzero_si512(),
                    first_q,
                    _mm512_loadu_si512(values.cast()),
                );
                if T != GGML_TYPE_Q8_0 {
                    sum = _mm512_dpbusd_epi32(
                        sum,
                        second_q,
                        _mm512_loadu_si512(values.add(64).cast()),
                    );
                }
                let s = _mm512_loadu_ps(rows.scales.as_ptr().add(at * 16));
                let c = _mm512_loadu_ps(rows.sums.as_ptr().add(at * 16));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(d, s), *acc);
                *acc = _mm512_fmadd_ps(offset, c, *acc);
            }
        }
    }
    for (o, acc) in out.iter_mut().zip(acc) {
        *o = _mm512_reduce_add_ps(acc);
    }
}
