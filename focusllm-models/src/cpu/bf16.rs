//! Matrix products with both operands rounded to bf16 and the sums kept in f32
//! ([`crate::MatmulPrecision::Bf16`]).
//!
//! On CPUs with AVX-512 BF16, `vdpbf16ps` multiplies 32 bf16 pairs and adds them to 16 f32 sums
//! in one instruction: twice the multiply-adds per cycle of f32 FMA (measured on one Zen 4 core:
//! 233 against 116 GFLOP/s). Written here because no crate of the ecosystem multiplies with it:
//! `gemm` (behind burn-flex's matmul) widens f16 to f32 and has no bf16 dot-product kernel.
//!
//! The layout follows the instruction: it sums the products of a pair of neighbours along the
//! shared dimension, so both operands hold their bf16 values in pairs (one 32-bit word each, the
//! even index in the low half). The activations are rounded row by row ([`Rows`]), the weight
//! into panels of [`NR`] columns, pair after pair ([`Packed`]); a tile of [`MR`] rows × [`NR`]
//! columns keeps its 24 sums in registers while it walks [`KC`] pairs of the shared dimension,
//! the panel's slice staying in L1. Tasks (blocks of rows × groups of panels) run on rayon's
//! pool.
//!
//! Each sum runs over the shared dimension in the same order whatever the number of rows, the
//! tiling or the threads, so a row's bits do not depend on what shares its product. CPUs without
//! the instruction get the same rounded operands multiplied in f32 by `gemm` (f32 speed, sums in
//! another order).

use std::mem::MaybeUninit;

use gemm::{Parallelism, gemm};
use rayon::prelude::*;

/// Columns of a panel: two vectors of 16 sums.
pub(crate) const NR: usize = 32;
/// Rows of a tile: 12 rows × 2 vectors = 24 sums in the 32 vector registers, with room for the
/// panel's two vectors.
const MR: usize = 12;
/// Pairs of the shared dimension per pass over a panel: the panel's slice (128 × 32 words, 16 KB)
/// stays in L1 while the tiles of a block of rows stream past it.
const KC: usize = 128;
/// Rows per task, a multiple of [`MR`]: a block's slice of activations (192 × 128 words, 96 KB)
/// stays in L2 while the panels of the task pass.
const MC: usize = 16 * MR;

/// Weight words rounded per pass of [`product`] at most (16 MiB): a large matrix is rounded a
/// slice of columns at a time.
const PACKED_WORDS: usize = 1 << 22;

/// `x` `[m, k]` (row-major) times a weight `[k, n]`, as a row-major `[m, n]` vector: the
/// activations rounded once, the weight `cols` columns at a time from `first` by
/// `pack(first, cols)`.
///
/// # Panics
/// If `x` is not `m · k` values, or `pack` gives another shape than asked.
pub(crate) fn product(
    x: &[f32],
    m: usize,
    k: usize,
    n: usize,
    pack: impl Fn(usize, usize) -> Packed,
) -> Vec<f32> {
    let a = Rows::round(x, m, k);
    // Not zeroed first: the passes write every value (a zeroing pass cost 1.5% of a bf16
    // prefill's cycles).
    let mut out = Vec::with_capacity(m * n);
    let per_pass = (PACKED_WORDS / (k.div_ceil(2).max(1) * NR)).max(1) * NR;
    for first in (0..n).step_by(per_pass) {
        let cols = per_pass.min(n - first);
        let b = pack(first, cols);
        assert_eq!(
            b.n, cols,
            "bf16 product: packed {} columns, not {cols}",
            b.n
        );
        multiply_into(&a, &b, &mut out.spare_capacity_mut()[first..], n);
    }
    // SAFETY: the passes wrote columns `0..n` of the `m` rows `n` apart: every value.
    unsafe { out.set_len(m * n) };
    out
}

/// `x` rounded to the nearest bf16 (ties to even; NaN stays NaN), as its 16 bits.
pub(crate) fn round(x: f32) -> u16 {
    half::bf16::from_f32(x).to_bits()
}

/// Two bf16 values as one word, `lo` (the even index) in the low half.
fn pair(lo: f32, hi: f32) -> u32 {
    u32::from(round(lo)) | (u32::from(round(hi)) << 16)
}

/// The f32 value of the bf16 `bits`.
fn widen(bits: u16) -> f32 {
    f32::from_bits(u32::from(bits) << 16)
}

/// Whether this CPU has the bf16 dot product (x86-64 with AVX-512F and AVX-512 BF16).
pub(crate) fn has_dot() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Activations `[m, k]` rounded to bf16, each row as `pairs` words (an odd `k` padded with a 0).
#[derive(Default)]
pub(crate) struct Rows {
    m: usize,
    k: usize,
    pairs: usize,
    words: Vec<u32>,
}

impl Rows {
    /// `x` `[m, k]` row-major, rounded (rows split across rayon's pool).
    ///
    /// # Panics
    /// If `x` is not `m · k` values.
    pub(crate) fn round(x: &[f32], m: usize, k: usize) -> Self {
        assert_eq!(x.len(), m * k, "bf16 rows: x is not [{m}, {k}]");
        let pairs = k.div_ceil(2);
        let mut words = Vec::with_capacity(m * pairs);
        if pairs > 0 {
            words.spare_capacity_mut()[..m * pairs]
                .par_chunks_mut(pairs * 64)
                .zip(x.par_chunks(k * 64))
                .for_each(|(out, x)| {
                    for (out, x) in out.chunks_exact_mut(pairs).zip(x.chunks_exact(k)) {
                        round_row(x, out);
                    }
                });
        }
        // SAFETY: each of the `m` rows wrote its `pairs` words (none when `pairs` is 0).
        unsafe { words.set_len(m * pairs) };
        Self { m, k, pairs, words }
    }

    /// Makes this `m` rows of `k` values from `x`, `ld` apart, rounded on this thread (the
    /// buffer reused).
    ///
    /// # Panics
    /// If `x` is too short.
    pub(crate) fn set(&mut self, x: &[f32], m: usize, k: usize, ld: usize) {
        let pairs = k.div_ceil(2);
        (self.m, self.k, self.pairs) = (m, k, pairs);
        self.words.resize(m * pairs, 0);
        if pairs > 0 {
            for (r, out) in self.words.chunks_exact_mut(pairs).enumerate() {
                // SAFETY: `round_row` writes only rounded words.
                round_row(&x[r * ld..][..k], unsafe { uninit(out) });
            }
        }
    }
}

/// `values` as places to write.
///
/// # Safety
/// The caller writes only initialised values through the result (never `MaybeUninit::uninit()`),
/// so that `values` still holds values afterwards.
unsafe fn uninit<T>(values: &mut [T]) -> &mut [MaybeUninit<T>] {
    // SAFETY: `MaybeUninit<T>` has `T`'s layout; the caller's contract keeps the places valid.
    unsafe { &mut *(values as *mut [T] as *mut [MaybeUninit<T>]) }
}

/// One row `x` rounded into `out` (`x.len().div_ceil(2)` words, all written).
fn round_row(x: &[f32], out: &mut [MaybeUninit<u32>]) {
    #[cfg(target_arch = "x86_64")]
    if has_dot() {
        // SAFETY: the CPU has the instructions.
        unsafe { avx512::round_row(x, out) };
        return;
    }
    round_row_scalar(x, out);
}

/// [`round_row`] one pair at a time.
fn round_row_scalar(x: &[f32], out: &mut [MaybeUninit<u32>]) {
    let (whole, rest) = x.as_chunks::<2>();
    for (o, p) in out.iter_mut().zip(whole) {
        o.write(pair(p[0], p[1]));
    }
    if let [last] = rest {
        out[whole.len()].write(pair(*last, 0.0));
    }
}

/// A weight `[k, n]` rounded to bf16 in panels of [`NR`] columns: panel `j` holds, pair after
/// pair of the shared dimension, the words of columns `j·NR ..` (the last panel padded with 0).
#[derive(Default)]
pub(crate) struct Packed {
    k: usize,
    n: usize,
    pairs: usize,
    words: Vec<u32>,
}

impl Packed {
    /// From `w` `[k, n]`: element `(i, j)` at `w[i * ld + j]` (panels split across rayon's
    /// pool).
    ///
    /// # Panics
    /// If `w` is too short for `k` rows `ld` apart of `n` columns.
    pub(crate) fn from_k_major(w: &[f32], k: usize, n: usize, ld: usize) -> Self {
        let mut packed = Self::sized(k, n);
        check_k_major(w, k, n, ld);
        if packed.pairs > 0 {
            let pairs = packed.pairs;
            packed
                .words
                .par_chunks_mut(pairs * NR)
                .enumerate()
                .for_each(|(panel, out)| {
                    panel_k_major(&w[panel * NR..], k, n - panel * NR, ld, out)
                });
        }
        packed
    }

    /// Makes this `w` `[k, n]` (element `(i, j)` at `w[i * ld + j]`), packed on this thread (the
    /// buffer reused).
    ///
    /// # Panics
    /// If `w` is too short.
    pub(crate) fn set_k_major(&mut self, w: &[f32], k: usize, n: usize, ld: usize) {
        self.resize(k, n);
        check_k_major(w, k, n, ld);
        if self.pairs > 0 {
            for (panel, out) in self.words.chunks_exact_mut(self.pairs * NR).enumerate() {
                panel_k_major(&w[panel * NR..], k, n - panel * NR, ld, out);
            }
        }
    }

    /// Makes this the transpose of `w` `[n, k]` (element `(j, i)` at `w[j * ld + i]`: the
    /// keys of an attention tile), packed on this thread (the buffer reused).
    ///
    /// # Panics
    /// If `w` is too short.
    pub(crate) fn set_n_major(&mut self, w: &[f32], n: usize, k: usize, ld: usize) {
        self.resize(k, n);
        if self.pairs > 0 {
            let mut rounded = vec![0u32; self.pairs];
            for (panel, out) in self.words.chunks_exact_mut(self.pairs * NR).enumerate() {
                let j0 = panel * NR;
                for c in 0..NR.min(n - j0) {
                    // SAFETY: `round_row` writes only rounded words.
                    round_row(&w[(j0 + c) * ld..][..k], unsafe { uninit(&mut rounded) });
                    transpose_row(&rounded, c, out);
                }
            }
        }
    }

    /// From `n` rows of `k` values (`w` `[n, k]` row-major, the transposed weight: a quantized
    /// matrix's output rows), `decode(first, rows)` filling `rows` with rows `first ..` (a
    /// multiple of `k` values); panels split across rayon's pool.
    pub(crate) fn from_n_major(
        k: usize,
        n: usize,
        decode: impl Fn(usize, &mut [f32]) + Sync,
    ) -> Self {
        let mut packed = Self::sized(k, n);
        let pairs = packed.pairs;
        if pairs > 0 {
            packed
                .words
                .par_chunks_mut(pairs * NR)
                .enumerate()
                .for_each_init(
                    || (vec![0.0f32; NR * k], vec![0u32; pairs]),
                    |(rows, rounded), (panel, out)| {
                        let j0 = panel * NR;
                        let cols = NR.min(n - j0);
                        decode(j0, &mut rows[..cols * k]);
                        for (c, x) in rows[..cols * k].chunks_exact(k).enumerate() {
                            // SAFETY: `round_row` writes only rounded words.
                            round_row(x, unsafe { uninit(rounded) });
                            transpose_row(rounded, c, out);
                        }
                    },
                );
        }
        packed
    }

    /// A zeroed `[k, n]`.
    fn sized(k: usize, n: usize) -> Self {
        let mut packed = Self::default();
        packed.resize(k, n);
        packed
    }

    /// Sizes this for `[k, n]`, the padding of the last panel zeroed.
    fn resize(&mut self, k: usize, n: usize) {
        let pairs = k.div_ceil(2);
        (self.k, self.n, self.pairs) = (k, n, pairs);
        let len = n.div_ceil(NR) * pairs * NR;
        self.words.clear();
        self.words.resize(len, 0);
    }

    /// Element `(i, j)`, widened back to f32 (tests and the fallback).
    fn get(&self, i: usize, j: usize) -> f32 {
        let word = self.words[((j / NR) * self.pairs + i / 2) * NR + j % NR];
        widen((word >> (16 * (i % 2))) as u16)
    }
}

/// Asserts that `w` holds `k` rows `ld` apart of `n` values.
fn check_k_major(w: &[f32], k: usize, n: usize, ld: usize) {
    assert!(
        k == 0 || n == 0 || ((k - 1) * ld + n <= w.len() && ld >= n),
        "bf16 pack: [{k}, {n}] rows {ld} apart in {} values",
        w.len()
    );
}

/// One panel from `w` `[k, ..]` (rows `ld` apart, starting at the panel's first column), of the
/// first `min(NR, cols)` columns.
fn panel_k_major(w: &[f32], k: usize, cols: usize, ld: usize, out: &mut [u32]) {
    let cols = NR.min(cols);
    for (p, out) in out.chunks_exact_mut(NR).enumerate() {
        let even = &w[2 * p * ld..][..cols];
        if 2 * p + 1 < k {
            let odd = &w[(2 * p + 1) * ld..][..cols];
            interleave(even, odd, out);
        } else {
            for (o, &lo) in out.iter_mut().zip(even) {
                *o = pair(lo, 0.0);
            }
        }
    }
}

/// Column `c` of a panel from one rounded row of the transposed matrix: its pair `p` goes to
/// `out[p · NR + c]`.
fn transpose_row(rounded: &[u32], c: usize, out: &mut [u32]) {
    for (p, &word) in rounded.iter().enumerate() {
        out[p * NR + c] = word;
    }
}

/// `out[c]` = the pair (`even[c]`, `odd[c]`), for the columns of `even` and `odd` (as long).
fn interleave(even: &[f32], odd: &[f32], out: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    if has_dot() {
        // SAFETY: the CPU has the instructions.
        unsafe { avx512::interleave(even, odd, out) };
        return;
    }
    for ((o, &lo), &hi) in out.iter_mut().zip(even).zip(odd) {
        *o = pair(lo, hi);
    }
}

/// A pointer to the output shared by tasks that write disjoint parts of it.
#[derive(Clone, Copy)]
struct Out(*mut MaybeUninit<f32>);
// SAFETY: tasks write disjoint tiles (see `multiply_into`).
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

/// [`multiply_into`] over places that hold values (tests).
#[cfg(test)]
pub(crate) fn multiply(a: &Rows, b: &Packed, out: &mut [f32], ldc: usize) {
    // SAFETY: `multiply_into` writes only products.
    multiply_into(a, b, unsafe { uninit(out) }, ldc);
}

/// `out[r · ldc + j] = Σ_i a[r][i] · b[i][j]` for the `a.m` rows and the `b.n` columns, split
/// across rayon's pool: every one of those places is written, none read.
///
/// # Panics
/// If the shared dimensions differ or `out` is too short.
fn multiply_into(a: &Rows, b: &Packed, out: &mut [MaybeUninit<f32>], ldc: usize) {
    if !check(a, b, out, ldc, false) {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if has_dot() {
        let (m, n) = (a.m, b.n);
        let panels = n.div_ceil(NR);
        let blocks = m.div_ceil(MC);
        // Eight tasks a thread at least: blocks of rows, each cut into groups of panels when
        // there are few blocks. With two tasks a thread, 2048 rows made 11 blocks, and one
        // thread had 6 to do while the other waited after 5 (the product ran 11% longer).
        let groups = (8 * rayon::current_num_threads())
            .div_ceil(blocks)
            .min(panels);
        let per_group = panels.div_ceil(groups);
        let ptr = Out(out.as_mut_ptr());
        (0..blocks * groups).into_par_iter().for_each(|task| {
            let (block, group) = (task / groups, task % groups);
            let rows = (block * MC, MC.min(m - block * MC));
            let first = group * per_group;
            let panels = (first, per_group.min(panels.saturating_sub(first)));
            // SAFETY: the CPU has the instructions (`has_dot`); tasks cover disjoint rows ×
            // panels of `out`, inside the bounds `check` asserted.
            unsafe { avx512::block(a, b, ptr, ldc, rows, panels, false) };
        });
        return;
    }
    // SAFETY: `check` asserted `out`'s bounds.
    unsafe {
        fallback(
            a,
            b,
            out.as_mut_ptr().cast(),
            ldc,
            false,
            Parallelism::Rayon(0),
        )
    };
}

/// [`multiply_into`] on this thread; with `accumulate` the product is added to what `out` holds (an
/// attention tile's weighted values).
///
/// # Panics
/// If the shared dimensions differ or `out` is too short.
pub(crate) fn multiply_here(a: &Rows, b: &Packed, out: &mut [f32], ldc: usize, accumulate: bool) {
    // SAFETY: `check`, the tiles and `fallback` write only values (zeros, products, sums).
    let out = unsafe { uninit(out) };
    if !check(a, b, out, ldc, accumulate) {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if has_dot() {
        let ptr = Out(out.as_mut_ptr());
        // SAFETY: the CPU has the instructions; `check` asserted the bounds.
        unsafe { avx512::block(a, b, ptr, ldc, (0, a.m), (0, b.n.div_ceil(NR)), accumulate) };
        return;
    }
    // SAFETY: `check` asserted `out`'s bounds; with `accumulate` it holds values.
    unsafe {
        fallback(
            a,
            b,
            out.as_mut_ptr().cast(),
            ldc,
            accumulate,
            Parallelism::None,
        )
    };
}

/// Asserts the shapes, and whether a product is left to do: an empty one is none, and an empty
/// shared dimension leaves zeros (or, with `accumulate`, `out` as it is).
fn check(a: &Rows, b: &Packed, out: &mut [MaybeUninit<f32>], ldc: usize, accumulate: bool) -> bool {
    assert_eq!(
        a.k, b.k,
        "bf16 product: [{}, {}] · [{}, {}]",
        a.m, a.k, b.k, b.n
    );
    let (m, n) = (a.m, b.n);
    if m == 0 || n == 0 {
        return false;
    }
    assert!(
        ldc >= n && out.len() >= (m - 1) * ldc + n,
        "bf16 product: output too short"
    );
    if a.pairs == 0 {
        if !accumulate {
            for row in out.chunks_mut(ldc).take(m) {
                row[..n].fill(MaybeUninit::new(0.0));
            }
        }
        return false;
    }
    true
}

/// [`multiply_into`] for CPUs without the bf16 dot product: the same rounded operands widened to f32
/// and multiplied by `gemm`.
///
/// # Safety
/// `out` holds `a.m` rows `ldc` apart of at least `b.n` values (read only with `accumulate`:
/// `gemm` does not read its output otherwise).
unsafe fn fallback(
    a: &Rows,
    b: &Packed,
    out: *mut f32,
    ldc: usize,
    accumulate: bool,
    parallelism: Parallelism,
) {
    let (m, k, n) = (a.m, a.k, b.n);
    let x: Vec<f32> = a
        .words
        .chunks_exact(a.pairs)
        .flat_map(|row| {
            row.iter()
                .flat_map(|&w| [widen(w as u16), widen((w >> 16) as u16)])
                .take(k)
        })
        .collect();
    let w: Vec<f32> = (0..k * n).map(|at| b.get(at / n, at % n)).collect();
    // SAFETY: `x` is `[m, k]`, `w` `[k, n]` row-major; `out` as the function's contract says.
    unsafe {
        gemm(
            m,
            n,
            k,
            out,
            1,
            ldc as isize,
            accumulate,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            1,
            n as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{KC, MR, NR, Out, Packed, Rows};

    /// [`super::round_row`]: 32 values at a time.
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX-512 BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn round_row(x: &[f32], out: &mut [std::mem::MaybeUninit<u32>]) {
        let (whole, rest) = x.as_chunks::<32>();
        let (words, _) = out.as_chunks_mut::<16>();
        for (x, o) in whole.iter().zip(words.iter_mut()) {
            // SAFETY: 32 values in, 16 words out.
            unsafe {
                let lo = _mm512_loadu_ps(x.as_ptr());
                let hi = _mm512_loadu_ps(x.as_ptr().add(16));
                // The second operand gives the low 16 values.
                let v = _mm512_cvtne2ps_pbh(hi, lo);
                _mm512_storeu_si512(
                    o.as_mut_ptr().cast(),
                    std::mem::transmute::<__m512bh, __m512i>(v),
                );
            }
        }
        super::round_row_scalar(rest, &mut out[whole.len() * 16..]);
    }

    /// [`super::interleave`]: 16 columns at a time.
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX-512 BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn interleave(even: &[f32], odd: &[f32], out: &mut [u32]) {
        let cols = even.len().min(odd.len()).min(out.len());
        let whole = cols / 16 * 16;
        for c in (0..whole).step_by(16) {
            // SAFETY: 16 columns from `c` are inside all three.
            unsafe {
                let lo = _mm512_cvtneps_pbh(_mm512_loadu_ps(even.as_ptr().add(c)));
                let hi = _mm512_cvtneps_pbh(_mm512_loadu_ps(odd.as_ptr().add(c)));
                let lo = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(lo));
                let hi = _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(hi));
                let words = _mm512_or_si512(lo, _mm512_slli_epi32::<16>(hi));
                _mm512_storeu_si512(out.as_mut_ptr().add(c).cast(), words);
            }
        }
        for c in whole..cols {
            out[c] = super::pair(even[c], odd[c]);
        }
    }

    /// Rows `(r0, rows)` × panels `(p0, panels)` of the product into `out` (added to what it
    /// holds with `accumulate`).
    ///
    /// # Safety
    /// The CPU has AVX-512F and AVX-512 BF16; `out` holds the product's rows `ldc` apart, and
    /// no other thread writes these rows × panels' columns.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn block(
        a: &Rows,
        b: &Packed,
        out: Out,
        ldc: usize,
        (r0, rows): (usize, usize),
        (p0, panels): (usize, usize),
        accumulate: bool,
    ) {
        for k0 in (0..a.pairs).step_by(KC) {
            let depth = KC.min(a.pairs - k0);
            let first = k0 > 0 || accumulate;
            for panel in p0..p0 + panels {
                let j0 = panel * NR;
                let cols = NR.min(b.n - j0);
                // SAFETY (pointer offsets): the panel's words from pair `k0`, `depth` pairs of
                // `NR` words, are inside `b.words`.
                let bp = unsafe { b.words.as_ptr().add((panel * b.pairs + k0) * NR) };
                let mut r = r0;
                while r < r0 + rows {
                    let count = MR.min(r0 + rows - r);
                    let ap = unsafe { a.words.as_ptr().add(r * a.pairs + k0) };
                    let cp = unsafe { out.0.add(r * ldc + j0).cast::<f32>() };
                    let t = Tile {
                        a: ap,
                        lda: a.pairs,
                        b: bp,
                        depth,
                        c: cp,
                        ldc,
                        cols,
                        accumulate: first,
                    };
                    // SAFETY: as this function's, for `count` rows from `r`.
                    unsafe { tile_of_rows!(count, tile, t) }
                    r += count;
                }
            }
        }
    }

    /// One tile's operands: `R` rows of activation words from `a` (`lda` words apart), `depth`
    /// pairs of a panel from `b`, and `R` rows of `cols` outputs at `c` (`ldc` apart).
    #[derive(Clone, Copy)]
    struct Tile {
        a: *const u32,
        lda: usize,
        b: *const u32,
        depth: usize,
        c: *mut f32,
        ldc: usize,
        cols: usize,
        accumulate: bool,
    }

    /// `c = (accumulate ? c : 0) + a · b` for one tile of `R` rows.
    ///
    /// # Safety
    /// As [`block`]'s, and the tile's pointers valid for its sizes.
    #[target_feature(enable = "avx512f,avx512bf16")]
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
                let b = t.b.add(p * NR);
                let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.cast()));
                let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(16).cast()));
                for (r, acc) in acc.iter_mut().enumerate() {
                    let word = *t.a.add(r * t.lda + p);
                    let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(word as i32));
                    acc[0] = _mm512_dpbf16_ps(acc[0], a, b0);
                    acc[1] = _mm512_dpbf16_ps(acc[1], a, b1);
                }
            }
            for (r, acc) in acc.iter().enumerate() {
                let c = t.c.add(r * t.ldc);
                _mm512_mask_storeu_ps(c, m0, acc[0]);
                _mm512_mask_storeu_ps(c.wrapping_add(16), m1, acc[1]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic spread of values, some tiny, some large.
    fn values(len: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..len)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
            })
            .collect()
    }

    /// The product of the rounded operands in f64, `[m, n]`.
    fn reference(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let r = |v: f32| f64::from(widen(round(v)));
        let mut out = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                out[i * n + j] = (0..k).map(|t| r(x[i * k + t]) * r(w[t * n + j])).sum();
            }
        }
        out
    }

    /// The largest difference from the reference relative to the sum of magnitudes of the terms
    /// (the bound f32 sums of `k` terms keep: about `k · 2⁻²⁴`).
    fn check(m: usize, k: usize, n: usize, with_dot: bool) {
        let (x, w) = (values(m * k, 1 + m as u64), values(k * n, 7 + n as u64));
        let (a, b) = (Rows::round(&x, m, k), Packed::from_k_major(&w, k, n, n));
        let ldc = n + 3;
        let mut out = vec![f32::NAN; m * ldc];
        if with_dot {
            multiply(&a, &b, &mut out, ldc);
        } else {
            // SAFETY: `out` holds `m` rows `ldc` apart.
            unsafe { fallback(&a, &b, out.as_mut_ptr(), ldc, false, Parallelism::Rayon(0)) };
        }
        let want = reference(&x, &w, m, k, n);
        let r = |v: f32| f64::from(widen(round(v))).abs();
        for i in 0..m {
            for j in 0..n {
                let scale: f64 = (0..k).map(|t| r(x[i * k + t]) * r(w[t * n + j])).sum();
                let got = f64::from(out[i * ldc + j]);
                let err = (got - want[i * n + j]).abs() / scale.max(1e-30);
                assert!(
                    err < k as f64 * 6e-8,
                    "{m}x{k}x{n} ({with_dot}): ({i}, {j}) = {got}, want {}",
                    want[i * n + j]
                );
            }
            // The padding between rows is left alone.
            assert!(out[i * ldc + n..(i + 1) * ldc].iter().all(|v| v.is_nan()));
        }
    }

    #[test]
    fn products_equal_the_rounded_operands_product_on_every_shape() {
        // Tiles and panels whole and ragged, odd shared dimensions, several passes over `KC`,
        // several row blocks and panel groups.
        for (m, k, n) in [
            (1, 1, 1),
            (1, 2, 32),
            (5, 3, 17),
            (12, 64, 64),
            (13, 257, 33),
            (40, 576, 96),
            (200, 300, 70),
            (MC + 5, 2 * KC * 2 + 3, 3 * NR + 1),
        ] {
            check(m, k, n, true);
            check(m, k, n, false);
        }
    }

    #[test]
    fn a_rows_bits_do_not_depend_on_the_rows_beside_it() {
        if !has_dot() {
            return;
        }
        let (m, k, n) = (2 * MC + 7, 600, 100);
        let (x, w) = (values(m * k, 3), values(k * n, 4));
        let b = Packed::from_k_major(&w, k, n, n);
        let mut all = vec![0.0f32; m * n];
        multiply(&Rows::round(&x, m, k), &b, &mut all, n);
        for (first, rows) in [(0, 1), (5, 3), (MC - 1, 2), (m - 13, 13)] {
            let mut part = vec![0.0f32; rows * n];
            let a = Rows::round(&x[first * k..(first + rows) * k], rows, k);
            multiply(&a, &b, &mut part, n);
            let same = part
                .iter()
                .zip(&all[first * n..])
                .all(|(p, q)| p.to_bits() == q.to_bits());
            assert!(same, "rows {first}..{} differ", first + rows);
        }
    }

    #[test]
    fn products_on_this_thread_equal_the_split_ones_and_accumulate() {
        // Buffers set and reset to other sizes (an attention task's tiles), strided operands,
        // and the product added to what the output holds.
        let (mut a, mut b) = (Rows::default(), Packed::default());
        for (m, k, n) in [(30, 64, 256), (192, 64, 100), (7, 255, 64), (192, 256, 64)] {
            let (x, w) = (values(m * (k + 5), m as u64), values(k * (n + 3), n as u64));
            a.set(&x, m, k, k + 5);
            b.set_k_major(&w, k, n, n + 3);
            let dense: Vec<f32> = x
                .chunks(k + 5)
                .take(m)
                .flat_map(|r| r[..k].to_vec())
                .collect();
            let mut want = vec![0.0f32; m * n];
            let split = Packed::from_k_major(&w, k, n, n + 3);
            multiply(&Rows::round(&dense, m, k), &split, &mut want, n);
            let mut got = vec![1.0f32; m * n];
            multiply_here(&a, &b, &mut got, n, false);
            assert_eq!(got, want, "{m}x{k}x{n}");
            let mut sum = vec![1.0f32; m * n];
            multiply_here(&a, &b, &mut sum, n, true);
            // And the same through the fallback of CPUs without the instruction.
            let mut fallback_sum = vec![1.0f32; m * n];
            // SAFETY: `fallback_sum` holds `m` rows of `n` values.
            unsafe {
                fallback(
                    &a,
                    &b,
                    fallback_sum.as_mut_ptr(),
                    n,
                    true,
                    Parallelism::None,
                )
            };
            for ((s, f), g) in sum.iter().zip(&fallback_sum).zip(&got) {
                let bound = 1e-5 * (1.0 + g.abs());
                assert!((s - (g + 1.0)).abs() <= bound, "{m}x{k}x{n}");
                assert!((f - (g + 1.0)).abs() <= bound, "{m}x{k}x{n}: fallback");
            }
            // The transpose packed from its rows equals the matrix packed from its columns.
            let t: Vec<f32> = (0..n * k)
                .map(|at| w[(at % k) * (n + 3) + at / k])
                .collect();
            let mut bt = Packed::default();
            bt.set_n_major(&t, n, k, k);
            assert_eq!(bt.words, split.words, "{m}x{k}x{n}: transposed packing");
        }
    }

    #[test]
    fn both_weight_layouts_pack_alike() {
        let (k, n) = (37, 70);
        let w = values(k * n, 5);
        let by_k = Packed::from_k_major(&w, k, n, n);
        let by_n = Packed::from_n_major(k, n, |first, rows| {
            for (c, row) in rows.chunks_exact_mut(k).enumerate() {
                for (i, v) in row.iter_mut().enumerate() {
                    *v = w[i * n + first + c];
                }
            }
        });
        assert_eq!(by_k.words, by_n.words);
        assert_eq!(by_k.get(36, 69), widen(round(w[36 * n + 69])));
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        // 1 + 2⁻⁸ lies halfway between 1 and the next bf16 (1 + 2⁻⁷): to even, 1.
        assert_eq!(widen(round(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(widen(round(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
        assert!(widen(round(f32::NAN)).is_nan());
        assert_eq!(widen(round(f32::INFINITY)), f32::INFINITY);
    }
}
