//! The attention kernel's two f32 tile products with FMA, without `gemm`'s packing: AVX-512 or
//! AVX2 code, whichever the CPU runs.
//!
//! A prefill's attention multiplies, per key tile, its queries by the tile's keys (`rows × 64`
//! by `64 × 256` for SmolLM2) and the softmax weights by the tile's values (`rows × 256` by `256 ×
//! 64`). `gemm` packs both operands of every call into its own layout: the same queries again for
//! every key tile, and the weights just computed. That packing was 5.5% of a plain 8K prefill's
//! cycles on AVX-512 Zen 4, 3.5-3.8% on AVX2 Zen 1. Here the row operand is read where it lies
//! (one value broadcast per row and step of the shared dimension); the column operand is read in
//! panels of [`NR`] columns, `ldb` apart from one step to the next: the values as they are in the
//! cache, and each sequence's keys transposed once a call into [`KeyPanels`] (with register
//! transposes). A tile keeps its sums in registers over the whole shared dimension, summed in
//! order, so a value's bits do not depend on the tiling or the batch: up to 12 rows × [`NR`]
//! columns with AVX-512 ([`avx512`]), 6 rows × 16 columns with AVX2 ([`avx2`]). On AVX-512 Zen 4
//! this made a plain 8K prefill 6% faster.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;

/// Columns of a panel: two AVX-512 vectors, four AVX2 ones.
pub(crate) const NR: usize = 32;

/// The vector instructions the products run with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
enum Isa {
    /// AVX-512F and FMA.
    Avx512,
    /// AVX2 and FMA.
    Avx2,
}

/// The best of [`Isa`] this CPU runs, if any.
fn isa() -> Option<Isa> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        if !has!("fma") {
            None
        } else if has!("avx512f") {
            Some(Isa::Avx512)
        } else if has!("avx2") {
            Some(Isa::Avx2)
        } else {
            None
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// Whether this CPU runs these products (x86-64 with FMA and AVX-512F or AVX2).
pub(crate) fn available() -> bool {
    isa().is_some()
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
        self.set_with(isa(), keys, n, k, ld);
    }

    /// [`KeyPanels::set`] with the register transposes of `isa` (none: value by value).
    fn set_with(&mut self, isa: Option<Isa>, keys: &[f32], n: usize, k: usize, ld: usize) {
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
            let done = transpose_blocks(isa, first, cols, k, ld, panel);
            for key in done..cols {
                for (d, &v) in first[key * ld..][..k].iter().enumerate() {
                    panel[d * NR + key] = v;
                }
            }
        }
    }
}

/// The first keys of a panel, a block of 16 (AVX-512) or 8 (AVX2) at a time, from `keys` (`cols`
/// of them, `k` values each, `ld` apart) into `panel`; returns how many it did (none without
/// `isa`). A scalar copy, value by value, took 4% of a prefill's attention.
fn transpose_blocks(
    isa: Option<Isa>,
    keys: &[f32],
    cols: usize,
    k: usize,
    ld: usize,
    panel: &mut [f32],
) -> usize {
    #[cfg(target_arch = "x86_64")]
    if let Some(isa) = isa {
        let block = match isa {
            Isa::Avx512 => 16,
            Isa::Avx2 => 8,
        };
        let mut c = 0;
        while c + block <= cols {
            let mut i = 0;
            while i + block <= k {
                // SAFETY: the CPU has the block's instructions; keys `c ..+block` hold values
                // `i ..+block` (the caller asserted `keys` holds `cols` keys), and the panel rows
                // `i ..+block` columns `c ..+block`.
                unsafe {
                    let (src, dst) = (
                        keys.as_ptr().add(c * ld + i),
                        panel.as_mut_ptr().add(i * NR + c),
                    );
                    match isa {
                        Isa::Avx512 => avx512::transpose16(src, ld, dst, NR),
                        Isa::Avx2 => avx2::transpose8(src, ld, dst, NR),
                    }
                };
                i += block;
            }
            for key in c..c + block {
                for (d, &v) in keys[key * ld..][..k].iter().enumerate().skip(i) {
                    panel[d * NR + key] = v;
                }
            }
            c += block;
        }
        return c;
    }
    let _ = (isa, keys, cols, k, ld, panel);
    0
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
/// The CPU runs these products ([`available`]); `a` covers `m × k` values, `b` `k × n` (its
/// panels' loads stay inside the panels' first `n % NR` columns of a partial last panel: they
/// are masked), and `c` `m` rows `ldc` apart of `n` values, which no other thread touches.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn multiply(
    mnk: (usize, usize, usize),
    a: Operand,
    b: Operand,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    let isa = isa().expect("tile products on a CPU without them (`available` was not checked)");
    // SAFETY: forwarded from the caller.
    unsafe { multiply_with(isa, mnk, a, b, c, ldc, accumulate) }
}

/// [`multiply`] with the instructions of `isa`.
///
/// # Safety
/// As [`multiply`]'s, on a CPU that runs `isa`.
#[cfg(target_arch = "x86_64")]
unsafe fn multiply_with(
    isa: Isa,
    mnk: (usize, usize, usize),
    a: Operand,
    b: Operand,
    c: *mut f32,
    ldc: usize,
    accumulate: bool,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        match isa {
            Isa::Avx512 => avx512::multiply(mnk, a, b, c, ldc, accumulate),
            Isa::Avx2 => avx2::multiply(mnk, a, b, c, ldc, accumulate),
        }
    }
}

/// One tile's operands: `R` rows of `a` (`lda` apart), `cols` columns of a panel of `b` (`ldb`
/// from one step to the next), `depth` steps, and `R` rows of `cols` outputs at `c` (`ldc` apart).
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

/// Cuts [`multiply`]'s product into tiles of up to `mr` rows × `width` columns (`width` divides
/// [`NR`]: a tile never straddles two panels) and calls `tile(rows, t)` for each, the rows of a
/// column block one after another, so that its part of the panel stays in cache.
///
/// # Safety
/// The pointers and sizes are [`multiply`]'s.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn for_each_tile(
    (m, n, k): (usize, usize, usize),
    a: Operand,
    b: Operand,
    (c, ldc): (*mut f32, usize),
    accumulate: bool,
    (mr, width): (usize, usize),
    mut tile: impl FnMut(usize, Tile),
) {
    debug_assert!(NR.is_multiple_of(width));
    for j0 in (0..n).step_by(width) {
        let mut r = 0;
        while r < m {
            // SAFETY (pointer offsets): rows `r..` of `a` and `c`, columns `j0..` of `c` and of
            // panel `j0 / NR` of `b`, inside the bounds of the function's contract.
            let t = unsafe {
                Tile {
                    a: a.ptr.add(r * a.ld),
                    lda: a.ld,
                    b: b.ptr.add((j0 / NR) * b.panel + j0 % NR),
                    ldb: b.ld,
                    depth: k,
                    c: c.add(r * ldc + j0),
                    ldc,
                    cols: width.min(n - j0),
                    accumulate,
                }
            };
            let rows = mr.min(m - r);
            tile(rows, t);
            r += rows;
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
    /// Every [`Isa`] this CPU runs, each with its own transposes and also with panels transposed
    /// value by value.
    #[test]
    fn products_match_f64_sums_at_odd_sizes() {
        use std::arch::is_x86_feature_detected as has;
        let isas: Vec<Isa> = [(Isa::Avx512, has!("avx512f")), (Isa::Avx2, has!("avx2"))]
            .into_iter()
            .filter_map(|(isa, runs)| (runs && has!("fma")).then_some(isa))
            .collect();
        if isas.is_empty() {
            eprintln!("neither AVX-512 nor AVX2 with FMA here: nothing to check");
            return;
        }
        for (isa, transposes) in isas.iter().flat_map(|&i| [(i, Some(i)), (i, None)]) {
            products_match_f64_sums(isa, transposes);
        }
    }

    fn products_match_f64_sums(isa: Isa, transposes: Option<Isa>) {
        for (m, n, k) in [
            (1, 1, 1),
            (13, 33, 64),
            (192, 256, 64),
            (25, 70, 17),
            (12, 32, 300),
            (7, 41, 64),
        ] {
            // Queries [m, k] (rows k + 3 apart) by keys [n, k] (rows k + 5 apart) transposed.
            let (lda, ldk) = (k + 3, k + 5);
            let q = values(m * lda, 1);
            let keys = values(n * ldk, 2);
            let mut panels = KeyPanels::default();
            panels.set_with(transposes, &keys, n, k, ldk);
            let ldc = n + 7;
            let mut c = vec![f32::NAN; m * ldc];
            let a = Operand {
                ptr: q.as_ptr(),
                ld: lda,
                panel: 0,
            };
            // SAFETY: the CPU has the features; the sizes are those of the buffers.
            unsafe {
                multiply_with(
                    isa,
                    (m, n, k),
                    a,
                    panels.operand(0),
                    c.as_mut_ptr(),
                    ldc,
                    false,
                )
            };
            for i in 0..m {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|p| f64::from(q[i * lda + p]) * f64::from(keys[j * ldk + p]))
                        .sum();
                    let got = f64::from(c[i * ldc + j]);
                    assert!(
                        (got - want).abs() < 1e-5 * k as f64,
                        "{isa:?} {m}x{n}x{k} ({i}, {j})"
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
            unsafe { multiply_with(isa, (m, k, n), a, b, acc.as_mut_ptr(), k, true) };
            for i in 0..m {
                for j in 0..k {
                    let want: f64 = 1.0
                        + (0..n)
                            .map(|p| f64::from(w[i * ldc + p]) * f64::from(v[p * ldv + j]))
                            .sum::<f64>();
                    let got = f64::from(acc[i * k + j]);
                    assert!(
                        (got - want).abs() < 1e-5 * n as f64,
                        "{isa:?} {m}x{k}x{n} ({i}, {j})"
                    );
                }
            }
        }
    }
}
