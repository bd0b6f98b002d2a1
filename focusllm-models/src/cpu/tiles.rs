//! The attention kernel's two f32 tile products with AVX-512 FMA, without `gemm`'s packing.
//!
//! A prefill's attention multiplies, per key tile, its queries by the tile's keys (`rows × 64`
//! by `64 × 256` for SmolLM2) and the softmax weights by the tile's values (`rows × 256` by `256 ×
//! 64`). `gemm` packs both operands of every call into its own layout: the same queries again for
//! every key tile, and the weights just computed. That packing was 5.5% of a plain 8K prefill's
//! cycles. Here the row operand is read where it lies (one value broadcast per row and step of
//! the shared dimension); the column operand is read in panels of [`NR`] columns, `ldb` apart
//! from one step to the next: the values as they are in the cache, and each sequence's keys
//! transposed once a call into [`KeyPanels`] (with 16 × 16 register transposes). A tile of up to
//! 12 rows × [`NR`] columns keeps its 24 sums in registers over the whole shared dimension,
//! summed in order, so a value's bits do not depend on the tiling or the batch. On AVX-512 Zen 4
//! this made a plain 8K prefill 6% faster. CPUs without AVX-512 keep `gemm`.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Columns of a panel: two vectors of 16.
pub(crate) const NR: usize = 32;
/// Rows of a tile: 12 rows × 2 vectors = 24 sums, with room for the panel's two vectors.
#[cfg(target_arch = "x86_64")]
const MR: usize = 12;

/// Whether this CPU runs these products (x86-64 with AVX-512F and FMA).
pub(crate) fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The keys of a tile, `[n, k]` (one key a row), transposed into panels of [`NR`] keys: panel
/// `q` holds, for each of the `k` dimensions, the values of keys `q·NR ..` (zeros past `n`).
#[derive(Default)]
pub(crate) struct KeyPanels {
    k: usize,
    n: usize,
    data: Vec<f32>,
}

impl KeyPanels {
    /// Makes this the transpose of `n` keys of `k` values at `keys` (`ld` apart), reusing the
    /// buffer.
    ///
    /// # Panics
    /// If `keys` is too short.
    pub(crate) fn set(&mut self, keys: &[f32], n: usize, k: usize, ld: usize) {
        assert!(
            n == 0 || (n - 1) * ld + k <= keys.len(),
            "key panels: {n} keys of {k} values {ld} apart in {}",
            keys.len()
        );
        (self.k, self.n) = (k, n);
        self.data.clear();
        self.data.resize(n.div_ceil(NR) * k * NR, 0.0);
        for (q, panel) in self.data.chunks_exact_mut(k * NR).enumerate() {
            let first = &keys[q * NR * ld..];
            let cols = NR.min(n - q * NR);
            let done = transpose_blocks(first, cols, k, ld, panel);
            for key in done..cols {
                for (d, &v) in first[key * ld..][..k].iter().enumerate() {
                    panel[d * NR + key] = v;
                }
            }
        }
    }
}

/// The first keys of a panel, 16 at a time, from `keys` (`cols` of them, `k` values each, `ld`
/// apart) into `panel`; returns how many it did (none without AVX-512F). A scalar copy, value
/// by value, took 4% of a prefill's attention.
fn transpose_blocks(keys: &[f32], cols: usize, k: usize, ld: usize, panel: &mut [f32]) -> usize {
    #[cfg(target_arch = "x86_64")]
    if available() {
        let mut c = 0;
        while c + 16 <= cols {
            let mut i = 0;
            while i + 16 <= k {
                // SAFETY: the CPU has AVX-512F; keys `c ..+16` hold values `i ..+16` (the caller
                // asserted `keys` holds `cols` keys), and the panel rows `i ..+16` columns
                // `c ..+16`.
                unsafe {
                    transpose16(
                        keys.as_ptr().add(c * ld + i),
                        ld,
                        panel.as_mut_ptr().add(i * NR + c),
                        NR,
                    )
                };
                i += 16;
            }
            for key in c..c + 16 {
                for (d, &v) in keys[key * ld..][..k].iter().enumerate().skip(i) {
                    panel[d * NR + key] = v;
                }
            }
            c += 16;
        }
        return c;
    }
    let _ = (keys, cols, k, ld, panel);
    0
}

/// Writes the transpose of the 16 × 16 block at `src` (rows `lds` apart) to `dst` (rows `ldd`
/// apart): rows interleaved in pairs, then in fours (each lane of 4 values then holds a column of
/// 4 rows), then the lanes of each group of four vectors transposed.
///
/// # Safety
/// The CPU has AVX-512F; both blocks lie inside their buffers.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose16(src: *const f32, lds: usize, dst: *mut f32, ldd: usize) {
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

/// An operand of a tile product: `rows × cols` values, element `(i, j)` at `ptr[i·ld + j]`
/// for the row side, or, for the column side, in panels: `ptr[(j / NR)·panel + i·ld + j % NR]`.
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub(crate) struct Operand {
    pub ptr: *const f32,
    pub ld: usize,
    /// The distance between panels (column side only).
    pub panel: usize,
}

impl KeyPanels {
    /// These panels from key `first` (a multiple of [`NR`]) as the column side of a product
    /// (`k ×` the keys from `first`).
    ///
    /// # Panics
    /// If `first` is not a multiple of [`NR`] or lies past the keys.
    pub(crate) fn operand(&self, first: usize) -> Operand {
        assert!(
            first.is_multiple_of(NR) && first <= self.n,
            "key panels: key {first} of {}",
            self.n
        );
        Operand {
            ptr: self.data[first * self.k..].as_ptr(),
            ld: NR,
            panel: self.k * NR,
        }
    }
}

/// `c[i·ldc + j] (+)= Σ_p a(i, p) · b(p, j)` for `m` rows, `n` columns and `k` steps of the
/// shared dimension; added to what `c` holds with `accumulate`, else written over it.
///
/// # Safety
/// The CPU has AVX-512F and FMA ([`available`]); `a` covers `m × k` values, `b` `k × n` (its
/// panels' loads stay inside the panels' first `n % NR` columns of a partial last panel: they
/// are masked), and `c` `m` rows `ldc` apart of `n` values, which no other thread touches.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,fma")]
pub(crate) unsafe fn multiply(
    (m, n, k): (usize, usize, usize),
    a: Operand,
    b: Operand,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    for q in 0..n.div_ceil(NR) {
        let cols = NR.min(n - q * NR);
        let mut r = 0;
        while r < m {
            let rows = MR.min(m - r);
            // SAFETY (pointer offsets): rows `r..` of `a` and `c`, panel `q` of `b`, inside the
            // bounds of the function's contract.
            let t = unsafe {
                Tile {
                    a: a.ptr.add(r * a.ld),
                    lda: a.ld,
                    b: b.ptr.add(q * b.panel),
                    ldb: b.ld,
                    depth: k,
                    c: c.add(r * ldc + q * NR),
                    ldc,
                    cols,
                    accumulate,
                }
            };
            // SAFETY: as this function's, for `rows` rows from `r`.
            unsafe { tile_of_rows!(rows, tile, t) }
            r += rows;
        }
    }
}

/// One tile's operands: `R` rows of `a` (`lda` apart), a panel of `b` (`ldb` from one step to
/// the next), `depth` steps, and `R` rows of `cols` outputs at `c` (`ldc` apart).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct Tile {
    a: *const f32,
    lda: usize,
    b: *const f32,
    ldb: usize,
    depth: usize,
    c: *mut f32,
    ldc: usize,
    cols: usize,
    accumulate: bool,
}

/// `c (+)= a · b` for one tile of `R` rows.
///
/// # Safety
/// As [`multiply`]'s, for the tile's pointers and sizes.
#[cfg(target_arch = "x86_64")]
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

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;

    fn values(len: usize, seed: u32) -> Vec<f32> {
        (0..len)
            .map(|i| (((i as u32).wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    /// Both products the attention takes, at sizes with partial tiles and panels, against sums in
    /// f64: queries by transposed keys, and weights by values read in place (rows `ld` apart,
    /// wider than the product), written and accumulated.
    #[test]
    fn products_match_f64_sums_at_odd_sizes() {
        if !available() {
            eprintln!("no AVX-512 here: nothing to check");
            return;
        }
        for (m, n, k) in [
            (1, 1, 1),
            (13, 33, 64),
            (192, 256, 64),
            (25, 70, 17),
            (12, 32, 300),
        ] {
            // Queries [m, k] (rows k + 3 apart) by keys [n, k] (rows k + 5 apart) transposed.
            let (lda, ldk) = (k + 3, k + 5);
            let q = values(m * lda, 1);
            let keys = values(n * ldk, 2);
            let mut panels = KeyPanels::default();
            panels.set(&keys, n, k, ldk);
            let ldc = n + 7;
            let mut c = vec![f32::NAN; m * ldc];
            let a = Operand {
                ptr: q.as_ptr(),
                ld: lda,
                panel: 0,
            };
            // SAFETY: the CPU has the features; the sizes are those of the buffers.
            unsafe { multiply((m, n, k), a, panels.operand(0), c.as_mut_ptr(), ldc, false) };
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|p| f64::from(q[i * lda + p]) * f64::from(keys[j * ldk + p]))
                        .sum();
                    let got = f64::from(c[i * ldc + j]);
                    assert!(
                        (got - want).abs() < 1e-5 * k as f64,
                        "{m}x{n}x{k} ({i}, {j})"
                    );
                }
                assert!(c[i * ldc + n..(i + 1) * ldc].iter().all(|v| v.is_nan()));
            }
            // Weights [m, n] by values [n, k] read in place (rows k + 9 apart), added to 1s.
            let ldv = k + 9;
            let v = values(n * ldv, 3);
            let w = values(m * ldc, 4);
            let mut acc = vec![1.0f32; m * k];
            let (a, b) = (
                Operand {
                    ptr: w.as_ptr(),
                    ld: ldc,
                    panel: 0,
                },
                Operand {
                    ptr: v.as_ptr(),
                    ld: ldv,
                    panel: NR,
                },
            );
            // SAFETY: as above.
            unsafe { multiply((m, k, n), a, b, acc.as_mut_ptr(), k, true) };
            for i in 0..m {
                for j in 0..k {
                    let want: f64 = 1.0
                        + (0..n)
                            .map(|p| f64::from(w[i * ldc + p]) * f64::from(v[p * ldv + j]))
                            .sum::<f64>();
                    let got = f64::from(acc[i * k + j]);
                    assert!(
                        (got - want).abs() < 1e-5 * n as f64,
                        "{m}x{k}x{n} ({i}, {j})"
                    );
                }
            }
        }
    }
}
