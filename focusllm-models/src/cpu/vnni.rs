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
        && std::arch::is_x86_feature_detected!("avx512vl")
        // Implied by AVX-512F for the compiler; checked for CPUs (virtual ones) that hide them.
        && super::avx2_fma()
        && std::arch::is_x86_feature_detected!("f16c")
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
    k: usize,
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
            k: rows.k,
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
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi,avx512vl")]
pub(super) unsafe fn dots(rows: &Rows, w: &QuantizedMatrix, start: usize, out: &mut [f32]) {
    let (block_bytes, _, per_group) = layout(w.ggml_type());
    let m = rows.rows;
    assert!(
        rows.ggml_type == w.ggml_type()
            && rows.k == w.cols()
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

/// [`dots`] for blocks of type `T`: weight rows four at a time (their sums reduced together),
/// activation rows in groups of up to four (each weight group's integers and scales decoded once
/// for them).
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi,avx512vl")]
unsafe fn dots_of<const T: u32>(rows: &Rows, w: &QuantizedMatrix, start: usize, out: &mut [f32]) {
    let m = rows.rows;
    let n = out.len() / m;
    for j in (0..n).step_by(4) {
        let count = (n - j).min(4);
        let mut r = 0;
        while r < m {
            let take = (m - r).min(4);
            // `lanes[q][i]`: weight row `j + q` times activation row `r + i`, in 16 lanes.
            let mut lanes = [[_mm512_setzero_ps(); 4]; 4];
            for (q, lanes) in lanes.iter_mut().enumerate().take(count) {
                let row = w.row_data(start + j + q, 1);
                // SAFETY: `row` is one whole row of `w` (checked by `dots`), `rows` holds `m`
                // rows, `r + take <= m`.
                unsafe {
                    match take {
                        4 => group::<T, 4>(rows, row, r, lanes),
                        3 => group::<T, 3>(rows, row, r, lanes),
                        2 => group::<T, 2>(rows, row, r, lanes),
                        _ => group::<T, 1>(rows, row, r, lanes),
                    }
                }
            }
            for i in 0..take {
                let sums = sum4([lanes[0][i], lanes[1][i], lanes[2][i], lanes[3][i]]);
                for (q, &sum) in sums.iter().enumerate().take(count) {
                    out[(j + q) * m + r + i] = sum;
                }
            }
            r += take;
        }
    }
}

/// The sums of four registers' lanes, each added in the same order (so that a row's bits do not
/// depend on which of the four it is, or on the rows beside it).
#[target_feature(enable = "avx512f,avx512vl")]
fn sum4([a, b, c, d]: [__m512; 4]) -> [f32; 4] {
    // Per 128-bit lane: (x0 + x2, x1 + x3) of a and b (and of c and d), then their sum, for the
    // four registers side by side; then the lanes, (L0 + L2) + (L1 + L3).
    let ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    let cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    let (ab, cd) = (_mm512_castps_pd(ab), _mm512_castps_pd(cd));
    let abcd = _mm512_add_ps(
        _mm512_castpd_ps(_mm512_unpacklo_pd(ab, cd)),
        _mm512_castpd_ps(_mm512_unpackhi_pd(ab, cd)),
    );
    let halves = _mm256_add_ps(
        _mm512_castps512_ps256(abcd),
        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(abcd))),
    );
    let sums = _mm_add_ps(
        _mm256_castps256_ps128(halves),
        _mm256_extractf128_ps::<1>(halves),
    );
    let mut out = [0.0f32; 4];
    // SAFETY: four floats.
    unsafe { _mm_storeu_ps(out.as_mut_ptr(), sums) };
    out
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

/// A group of blocks decoded: the integers the activations' two halves meet (`Q4_*`: low and high
/// nibbles; `Q8_0`: the bytes as `q + 128`, and nothing), and each block's scale `d` and offset
/// (`Q4_1`: `m`; `Q4_0`: `-8d`; `Q8_0`: `-128d`) spread over its lanes.
struct Decoded {
    first: __m512i,
    second: __m512i,
    d: __m512,
    offset: __m512,
}

/// The group of `len` bytes at `p` (blocks of type `T`), zeros past them: masked loads touch no
/// byte outside the mask, and a missing block has `d = m = 0`.
///
/// # Safety
/// The CPU has the features; `len` bytes from `p` are readable.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi,avx512vl")]
unsafe fn decode<const T: u32>(p: *const u8, len: usize) -> Decoded {
    let integers = const { integer_index(T) };
    let scales = const { scale_index(T) };
    // SAFETY: the indices are 64 bytes and 32 words; the masks cover `len` bytes from `p`.
    let (integers, scales, lo_bytes, hi_bytes) = unsafe {
        (
            _mm512_loadu_si512(integers.as_ptr().cast()),
            _mm512_loadu_si512(scales.as_ptr().cast()),
            _mm512_maskz_loadu_epi8(mask(len), p.cast()),
            if len > 64 {
                _mm512_maskz_loadu_epi8(mask(len - 64), p.wrapping_add(64).cast())
            } else {
                _mm512_setzero_si512()
            },
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
    if T == GGML_TYPE_Q8_0 {
        Decoded {
            first: _mm512_xor_si512(q, _mm512_set1_epi8(-128)),
            second: _mm512_setzero_si512(),
            d,
            offset,
        }
    } else {
        let nibble = _mm512_set1_epi8(0x0F);
        Decoded {
            first: _mm512_and_si512(q, nibble),
            second: _mm512_and_si512(_mm512_srli_epi16::<4>(q), nibble),
            d,
            offset,
        }
    }
}

/// `lanes[i]` = the lanes of `row · x_{r0 + i}` for `i < R` (to be summed).
///
/// # Safety
/// The CPU has the features; `row` is a whole row of `T` blocks, as many as `rows` has values,
/// and `rows` has rows `r0..r0 + R`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi,avx512vl")]
unsafe fn group<const T: u32, const R: usize>(
    rows: &Rows,
    row: &[u8],
    r0: usize,
    lanes: &mut [__m512; 4],
) {
    let (block_bytes, _, per_group) = layout(T);
    let blocks = row.len() / block_bytes;
    let (full, rest) = (blocks / per_group, blocks % per_group);
    let group_values = per_group * 32;
    let mut acc = [_mm512_setzero_ps(); R];
    for g in 0..full {
        // SAFETY: group `g` is whole inside the row.
        let w = unsafe {
            decode::<T>(
                row.as_ptr().add(g * per_group * block_bytes),
                per_group * block_bytes,
            )
        };
        for (i, acc) in acc.iter_mut().enumerate() {
            let at = (r0 + i) * rows.groups + g;
            // SAFETY: row `r0 + i` of `rows` has `groups` groups of `group_values` values and 16
            // scales and sums each.
            unsafe {
                let values = rows.values.as_ptr().add(at * group_values);
                let mut sum = _mm512_dpbusd_epi32(
                    _mm512_setzero_si512(),
                    w.first,
                    _mm512_loadu_si512(values.cast()),
                );
                if T != GGML_TYPE_Q8_0 {
                    sum = _mm512_dpbusd_epi32(
                        sum,
                        w.second,
                        _mm512_loadu_si512(values.add(64).cast()),
                    );
                }
                let s = _mm512_loadu_ps(rows.scales.as_ptr().add(at * 16));
                let c = _mm512_loadu_ps(rows.sums.as_ptr().add(at * 16));
                *acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_mul_ps(w.d, s), *acc);
                *acc = _mm512_fmadd_ps(w.offset, c, *acc);
            }
        }
    }
    if rest > 0 {
        let g = full;
        // SAFETY: the row's last `rest` blocks.
        let w = unsafe {
            decode::<T>(
                row.as_ptr().add(g * per_group * block_bytes),
                rest * block_bytes,
            )
        };
        let half = 2 * rest <= per_group;
        for (i, acc) in acc.iter_mut().enumerate() {
            let at = (r0 + i) * rows.groups + g;
            // SAFETY: as above; a half group's blocks lie in the first 8 lanes (and in the first
            // 32 values of each half of the group's values).
            unsafe {
                let values = rows.values.as_ptr().add(at * group_values);
                let (s, c) = (
                    rows.scales.as_ptr().add(at * 16),
                    rows.sums.as_ptr().add(at * 16),
                );
                if half {
                    // Only the first 256 bits hold blocks: half-width instructions.
                    let mut sum = _mm256_dpbusd_epi32(
                        _mm256_setzero_si256(),
                        _mm512_castsi512_si256(w.first),
                        _mm256_loadu_si256(values.cast()),
                    );
                    if T != GGML_TYPE_Q8_0 {
                        sum = _mm256_dpbusd_epi32(
                            sum,
                            _mm512_castsi512_si256(w.second),
                            _mm256_loadu_si256(values.add(64).cast()),
                        );
                    }
                    let d = _mm512_castps512_ps256(w.d);
                    let part = _mm256_mul_ps(
                        _mm256_cvtepi32_ps(sum),
                        _mm256_mul_ps(d, _mm256_loadu_ps(s)),
                    );
                    let part =
                        _mm256_fmadd_ps(_mm512_castps512_ps256(w.offset), _mm256_loadu_ps(c), part);
                    *acc = _mm512_add_ps(*acc, _mm512_zextps256_ps512(part));
                } else {
                    let mut sum = _mm512_dpbusd_epi32(
                        _mm512_setzero_si512(),
                        w.first,
                        _mm512_loadu_si512(values.cast()),
                    );
                    if T != GGML_TYPE_Q8_0 {
                        sum = _mm512_dpbusd_epi32(
                            sum,
                            w.second,
                            _mm512_loadu_si512(values.add(64).cast()),
                        );
                    }
                    *acc = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(sum),
                        _mm512_mul_ps(w.d, _mm512_loadu_ps(s)),
                        *acc,
                    );
                    *acc = _mm512_fmadd_ps(w.offset, _mm512_loadu_ps(c), *acc);
                }
            }
        }
    }
    lanes[..R].copy_from_slice(&acc);
}
