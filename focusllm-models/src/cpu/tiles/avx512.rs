//! The tile products with AVX-512F: tiles of up to [`MR`] rows × a whole panel ([`NR`] columns,
//! two vectors of 16), and 16 × 16 register transposes for the key panels.

use std::arch::x86_64::*;

use super::{NR, Operand, Tile, for_each_tile};

/// Rows of a tile: 12 rows × 2 vectors = 24 sums, with room for the panel's two vectors.
const MR: usize = 12;

/// [`super::multiply`] with AVX-512F.
///
/// # Safety
/// As [`super::multiply`]'s, on a CPU with AVX-512F and FMA.
#[target_feature(enable = "avx512f,fma")]
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
        for_each_tile(mnk, a, b, (c, ldc), accumulate, (MR, NR), |rows, t| {
            tile_of_rows!(rows, tile, t)
        })
    }
}

/// `c (+)= a · b` for one tile of `R` rows.
///
/// # Safety
/// As [`multiply`]'s, for the tile's pointers and sizes.
#[target_feature(enable = "avx512f,fma")]
#[inline]
unsafe fn tile<const R: usize>(t: Tile) {
    let lanes = |n: usize| -> __mmask16 { ((1u32 << n.min(16)) - 1) as __mmask16 };
    let (m0, m1) = (lanes(t.cols), lanes(t.cols.saturating_sub(16)));
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    // SAFETY: per the function's contract; masked lanes are neither read nor written (the
    // second vector's address may lie past a short last row: `wrapping_add`, no access).
    unsafe {
        if t.accumulate {
            for (r, acc) in acc.iter_mut().enumerate() {
                let c = t.c.add(r * t.ldc);
                acc[0] = _mm512_maskz_loadu_ps(m0, c);
                acc[1] = _mm512_maskz_loadu_ps(m1, c.wrapping_add(16));
            }
        }
        for p in 0..t.depth {
            let b = t.b.add(p * t.ldb);
            let b0 = _mm512_maskz_loadu_ps(m0, b);
            let b1 = _mm512_maskz_loadu_ps(m1, b.wrapping_add(16));
            for (r, acc) in acc.iter_mut().enumerate() {
                let a = _mm512_set1_ps(*t.a.add(r * t.lda + p));
                acc[0] = _mm512_fmadd_ps(a, b0, acc[0]);
                acc[1] = _mm512_fmadd_ps(a, b1, acc[1]);
            }
        }
        for (r, acc) in acc.iter().enumerate() {
            let c = t.c.add(r * t.ldc);
            _mm512_mask_storeu_ps(c, m0, acc[0]);
            _mm512_mask_storeu_ps(c.wrapping_add(16), m1, acc[1]);
        }
    }
}

/// Writes the transpose of the 16 × 16 block at `src` (rows `lds` apart) to `dst` (rows `ldd`
/// apart): rows interleaved in pairs, then in fours (each lane of 4 values then holds a column of
/// 4 rows), then the lanes of each group of four vectors transposed.
///
/// # Safety
/// The CPU has AVX-512F; both blocks lie inside their buffers.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn transpose16(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
    // SAFETY: per the function's contract.
    let r: [__m512; 16] = std::array::from_fn(|i| unsafe { _mm512_loadu_ps(src.add(i * lds)) });
    // t[2m] in lane L: rows 2m, 2m+1 of columns 4L, 4L+1 interleaved; t[2m+1]: columns 4L+2, 4L+3.
    let t: [__m512; 16] = std::array::from_fn(|i| {
        let (a, b) = (r[i & !1], r[i | 1]);
        if i % 2 == 0 {
            _mm512_unpacklo_ps(a, b)
        } else {
            _mm512_unpackhi_ps(a, b)
        }
    });
    // u[4g + s] in lane L: column 4L + s of rows 4g .. 4g + 4.
    let u: [__m512; 16] = std::array::from_fn(|i| {
        let (g, s) = (i / 4, i % 4);
        let (a, b) = (t[4 * g + s / 2], t[4 * g + 2 + s / 2]);
        if s % 2 == 0 {
            _mm512_shuffle_ps::<0x44>(a, b)
        } else {
            _mm512_shuffle_ps::<0xEE>(a, b)
        }
    });
    for s in 0..4 {
        let a: [__m512; 4] = std::array::from_fn(|g| u[4 * g + s]);
        let p = [
            _mm512_shuffle_f32x4::<0x44>(a[0], a[1]),
            _mm512_shuffle_f32x4::<0xEE>(a[0], a[1]),
            _mm512_shuffle_f32x4::<0x44>(a[2], a[3]),
            _mm512_shuffle_f32x4::<0xEE>(a[2], a[3]),
        ];
        // Output row 4L + s: lane g from u[4g + s]'s lane L.
        let rows = [
            _mm512_shuffle_f32x4::<0x88>(p[0], p[2]),
            _mm512_shuffle_f32x4::<0xDD>(p[0], p[2]),
            _mm512_shuffle_f32x4::<0x88>(p[1], p[3]),
            _mm512_shuffle_f32x4::<0xDD>(p[1], p[3]),
        ];
        for (lane, row) in rows.into_iter().enumerate() {
            // SAFETY: row 4·lane + s of the destination block.
            unsafe { _mm512_storeu_ps(dst.add((4 * lane + s) * ldd), row) };
        }
    }
}
