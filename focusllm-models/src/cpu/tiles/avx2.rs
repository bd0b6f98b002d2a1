//! The tile products with AVX2 and FMA: tiles of up to [`MR`] rows × half a panel (16 columns,
//! two vectors of 8), and 8 × 8 register transposes for the key panels.
//!
//! Sixteen vector registers hold a tile's 12 sums, the two vectors of the panel's current step
//! and the row value broadcast: the shape of `gemm`'s own AVX2 microkernel. A scratch probe on
//! one Zen 1 core (192 query rows × 256 keys × 64, and the weights by the values) put these tiles
//! at 35.7-37.4 GFLOP/s against `gemm`'s 33.2-36.8 on the same operands: the gain is `gemm`'s
//! packing, not a better kernel.

use std::arch::x86_64::*;

use super::{Operand, Tile, for_each_tile};

/// Rows of a tile: 6 rows × 2 vectors = 12 sums.
const MR: usize = 6;
/// Columns of a tile: two vectors of 8, half a panel.
const COLS: usize = 16;

/// [`super::multiply`] with AVX2 and FMA.
///
/// # Safety
/// As [`super::multiply`]'s, on a CPU with AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn multiply(
    mnk: (usize, usize, usize),
    a: Operand,
    b: Operand,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    // SAFETY: forwarded from the caller; every tile lies inside the product.
    unsafe {
        for_each_tile(mnk, a, b, (c, ldc), accumulate, (MR, COLS), |rows, t| {
            if t.cols == COLS {
                match rows {
                    6 => tile::<6, false>(t),
                    5 => tile::<5, false>(t),
                    4 => tile::<4, false>(t),
                    3 => tile::<3, false>(t),
                    2 => tile::<2, false>(t),
                    _ => tile::<1, false>(t),
                }
            } else {
                match rows {
                    6 => tile::<6, true>(t),
                    5 => tile::<5, true>(t),
                    4 => tile::<4, true>(t),
                    3 => tile::<3, true>(t),
                    2 => tile::<2, true>(t),
                    _ => tile::<1, true>(t),
                }
            }
        })
    }
}

/// Lanes `0..n` of a vector of 8 set (the sign bit is what `maskload` and `maskstore` read).
#[target_feature(enable = "avx2")]
fn lanes(n: usize) -> __m256i {
    _mm256_cmpgt_epi32(
        _mm256_set1_epi32(n.min(8) as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    )
}

/// `c (+)= a · b` for one tile of `R` rows; `MASKED`: a tile of fewer than 16 columns, whose
/// loads and stores leave the other lanes alone.
///
/// # Safety
/// As [`multiply`]'s, for the tile's pointers and sizes.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn tile<const R: usize, const MASKED: bool>(t: Tile) {
    let (m0, m1) = if MASKED {
        (lanes(t.cols), lanes(t.cols.saturating_sub(8)))
    } else {
        (_mm256_set1_epi32(-1), _mm256_set1_epi32(-1))
    };
    // SAFETY (both): `p` and `p + 8` lie inside a buffer for the lanes the tile covers; masked
    // lanes are not accessed (the second address may lie past a short last row: `wrapping_add`).
    let load = |p: *const f32, m: __m256i| unsafe {
        if MASKED {
            _mm256_maskload_ps(p, m)
        } else {
            _mm256_loadu_ps(p)
        }
    };
    let store = |p: *mut f32, m: __m256i, v: __m256| unsafe {
        if MASKED {
            _mm256_maskstore_ps(p, m, v)
        } else {
            _mm256_storeu_ps(p, v)
        }
    };
    let mut acc = [[_mm256_setzero_ps(); 2]; R];
    // SAFETY: per the function's contract.
    unsafe {
        if t.accumulate {
            for (r, acc) in acc.iter_mut().enumerate() {
                let c = t.c.add(r * t.ldc);
                acc[0] = load(c, m0);
                acc[1] = load(c.wrapping_add(8), m1);
            }
        }
        for p in 0..t.depth {
            let b = t.b.add(p * t.ldb);
            let b0 = load(b, m0);
            let b1 = load(b.wrapping_add(8), m1);
            for (r, acc) in acc.iter_mut().enumerate() {
                let a = _mm256_broadcast_ss(&*t.a.add(r * t.lda + p));
                acc[0] = _mm256_fmadd_ps(a, b0, acc[0]);
                acc[1] = _mm256_fmadd_ps(a, b1, acc[1]);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let c = t.c.add(r * t.ldc);
            store(c, m0, acc[0]);
            store(c.wrapping_add(8), m1, acc[1]);
        }
    }
}

/// Writes the transpose of the 8 × 8 block at `src` (rows `lds` apart) to `dst` (rows `ldd`
/// apart): rows interleaved in pairs, then in fours (each 128-bit half of a vector then holds a
/// column of 4 rows), then the halves of rows 0-3 and 4-7 joined.
///
/// # Safety
/// The CPU has AVX; both blocks lie inside their buffers.
#[target_feature(enable = "avx")]
pub(super) unsafe fn transpose8(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
    // SAFETY: per the function's contract.
    let r: [__m256; 8] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(src.add(i * lds)) });
    // t[2m] in each half: rows 2m, 2m+1 of the half's columns 0, 1 interleaved; t[2m+1]: 2, 3.
    let t: [__m256; 8] = std::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 {
            _mm256_unpacklo_ps(a, b)
        } else {
            _mm256_unpackhi_ps(a, b)
        }
    });
    // u[4g + s] in each half: the half's column s of rows 4g .. 4g + 4.
    let u: [__m256; 8] = std::array::from_fn(|i| {
        let (g, s) = (i / 4, i % 4);
        let (a, b) = (t[4 * g + s / 2], t[4 * g + 2 + s / 2]);
        if s % 2 == 0 {
            _mm256_shuffle_ps::<0x44>(a, b)
        } else {
            _mm256_shuffle_ps::<0xEE>(a, b)
        }
    });
    for s in 0..4 {
        // Output row s: the low halves of u[s] (rows 0-3) and u[4 + s] (rows 4-7); row 4 + s
        // their high halves.
        let (low, high) = (
            _mm256_permute2f128_ps::<0x20>(u[s], u[4 + s]),
            _mm256_permute2f128_ps::<0x31>(u[s], u[4 + s]),
        );
        // SAFETY: rows s and 4 + s of the destination block.
        unsafe {
            _mm256_storeu_ps(dst.add(s * ldd), low);
            _mm256_storeu_ps(dst.add((4 + s) * ldd), high);
        }
    }
}
