//! The two products of a decoding step's attention tile, for the few query rows of a step (a
//! head group's `groups × seq` rows): scores `q · kᵀ` and the weighted sum `p · v`.
//!
//! A step's tile is tiny (3 rows × 128 keys × 64 dims for SmolLM2), and `gemm` spends more time
//! choosing block sizes, taking its thread-local scratch and packing than multiplying: `perf` put
//! the step attention's `gemm` calls at a quarter of a 2K-context step. Here each score is a dot
//! product over the key's row in place and each weighted sum streams the value rows once per
//! query row, in AVX2 + FMA code (keys and values in `f32`, or `f16` widened as loaded, F16C);
//! CPUs without it keep `gemm` (see [`vectorised`]).

/// Whether both products have vector code for heads of `dim` on this CPU (x86-64 with AVX2, FMA
/// and F16C, `dim` a multiple of 32), for keys and values in `f32` or `f16`. Elsewhere the caller
/// keeps `gemm`'s tiles, which beat plain loops.
pub(super) fn vectorised(dim: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    if dim.is_multiple_of(32) && super::avx2_fma() && std::arch::is_x86_feature_detected!("f16c") {
        return true;
    }
    let _ = dim;
    false
}

/// Key and value elements the step kernels read in place: `f32`, or a compact cache's `f16`
/// (widened exactly, eight at a time, as it is loaded).
pub(super) trait Stored: Copy {}
impl Stored for f32 {}
impl Stored for half::f16 {}

/// `scores[r · stride + j] = Σ_d q[r · dim + d] · k[j · k_row + d]` for `r < rows`, `j < n`.
///
/// # Safety
/// [`vectorised`]`(dim)` holds, and `k` points at `n` rows of `dim` elements, `k_row` apart.
pub(super) unsafe fn scores<E: Stored>(
    (rows, n, dim): (usize, usize, usize),
    q: &[f32],
    k: *const E,
    k_row: usize,
    scores: &mut [f32],
    stride: usize,
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller vouches for the CPU's features and for `k`.
    unsafe {
        avx2::scores((rows, n, dim), q, k, k_row, scores, stride)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (rows, n, dim, q, k, k_row, scores, stride);
        unreachable!("`vectorised` is false off x86-64");
    }
}

/// `acc[r · dim + d] += Σ_j p[r · stride + j] · v[j · v_row + d]` for `r < rows`, `d < dim`.
///
/// # Safety
/// [`vectorised`]`(dim)` holds, and `v` points at `n` rows of `dim` elements, `v_row` apart.
pub(super) unsafe fn weighted_sum<E: Stored>(
    (rows, n, dim): (usize, usize, usize),
    p: &[f32],
    stride: usize,
    v: *const E,
    v_row: usize,
    acc: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: the caller vouches for the CPU's features and for `v`; AVX-512F is checked here.
    unsafe {
        if std::arch::is_x86_feature_detected!("avx512f") {
            avx512::weighted_sum((rows, n, dim), p, stride, v, v_row, acc)
        } else {
            avx2::weighted_sum((rows, n, dim), p, stride, v, v_row, acc)
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (rows, n, dim, p, stride, v, v_row, acc);
        unreachable!("`vectorised` is false off x86-64");
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) use avx2::lane_sum;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::Stored;

    /// Eight elements at `p` as `f32` lanes.
    ///
    /// # Safety
    /// Eight elements are readable at `p`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load8<E: Stored>(p: *const E) -> __m256 {
        // SAFETY: the caller's eight elements; the size tells the two element types apart.
        unsafe {
            if size_of::<E>() == 4 {
                _mm256_loadu_ps(p.cast())
            } else {
                _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
            }
        }
    }

    /// The sum of a vector's eight lanes (the quantized products' kernels share it).
    #[target_feature(enable = "avx2,fma")]
    pub(in crate::cpu) fn lane_sum(x: __m256) -> f32 {
        let half = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps::<1>(x));
        let pairs = _mm_add_ps(half, _mm_movehl_ps(half, half));
        _mm_cvtss_f32(_mm_add_ss(pairs, _mm_shuffle_ps::<1>(pairs, pairs)))
    }

    /// [`super::scores`]: one key row against every query row while it is in L1, two
    /// accumulators per dot product.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn scores<E: Stored>(
        (rows, n, dim): (usize, usize, usize),
        q: &[f32],
        k: *const E,
        k_row: usize,
        scores: &mut [f32],
        stride: usize,
    ) {
        assert!(dim.is_multiple_of(32));
        assert!(q.len() >= rows * dim && scores.len() >= (rows.max(1) - 1) * stride + n);
        for j in 0..n {
            // SAFETY (all loads): `key` has `dim` floats (the caller), `query` has `dim` (the
            // assert), and `d + 16 <= dim`.
            let key = unsafe { k.add(j * k_row) };
            for r in 0..rows {
                let query = q[r * dim..].as_ptr();
                let (mut even, mut odd) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                let mut d = 0;
                while d + 16 <= dim {
                    unsafe {
                        even =
                            _mm256_fmadd_ps(_mm256_loadu_ps(query.add(d)), load8(key.add(d)), even);
                        odd = _mm256_fmadd_ps(
                            _mm256_loadu_ps(query.add(d + 8)),
                            load8(key.add(d + 8)),
                            odd,
                        );
                    }
                    d += 16;
                }
                scores[r * stride + j] = lane_sum(_mm256_add_ps(even, odd));
            }
        }
    }

    /// [`super::weighted_sum`]: per query row and block of 32 dims, four accumulators in
    /// registers over all `n` value rows.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn weighted_sum<E: Stored>(
        (rows, n, dim): (usize, usize, usize),
        p: &[f32],
        stride: usize,
        v: *const E,
        v_row: usize,
        acc: &mut [f32],
    ) {
        assert!(dim.is_multiple_of(32));
        assert!(acc.len() >= rows * dim && p.len() >= (rows.max(1) - 1) * stride + n);
        for r in 0..rows {
            let weights = &p[r * stride..r * stride + n];
            for d in (0..dim).step_by(32) {
                // SAFETY (all loads and stores): `acc` row r has `dim` floats (the assert), value
                // row j has `dim` (the caller), and `d + 32 <= dim`.
                let out = acc[r * dim + d..].as_mut_ptr();
                let mut sums = unsafe { [0, 8, 16, 24].map(|o| _mm256_loadu_ps(out.add(o))) };
                for (j, &w) in weights.iter().enumerate() {
                    let weight = _mm256_set1_ps(w);
                    let value = unsafe { v.add(j * v_row + d) };
                    for (o, sum) in sums.iter_mut().enumerate() {
                        *sum = _mm256_fmadd_ps(weight, unsafe { load8(value.add(8 * o)) }, *sum);
                    }
                }
                for (o, sum) in sums.into_iter().enumerate() {
                    unsafe { _mm256_storeu_ps(out.add(8 * o), sum) };
                }
            }
        }
    }
}

/// [`weighted_sum`] with 512-bit vectors: the value rows are the step's largest read (a whole
/// cache's worth per step), so each is read once for up to four query rows and 64 dims, with
/// sixteen independent sums in registers. The AVX2 kernel reads a tile's values once per query
/// row and 32 dims (six times for SmolLM2's three rows) through four chains of sums: `perf` put
/// it at 37% of a plain step at 8K, the values read at ~17 GB/s against the keys' ~26 GB/s.
/// Each output adds the same products in the same order (one fused multiply-add per value row,
/// from the accumulator's value), so both kernels give the same bits.
#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::Stored;

    /// Sixteen elements at `p` as `f32` lanes.
    ///
    /// # Safety
    /// Sixteen elements are readable at `p`.
    #[target_feature(enable = "avx512f")]
    unsafe fn load16<E: Stored>(p: *const E) -> __m512 {
        // SAFETY: the caller's sixteen elements; the size tells the two element types apart.
        unsafe {
            if size_of::<E>() == 4 {
                _mm512_loadu_ps(p.cast())
            } else {
                _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
            }
        }
    }

    /// [`super::weighted_sum`]: query rows in groups of up to four, dims in blocks of 64 (32 for
    /// a last half block).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn weighted_sum<E: Stored>(
        (rows, n, dim): (usize, usize, usize),
        p: &[f32],
        stride: usize,
        v: *const E,
        v_row: usize,
        acc: &mut [f32],
    ) {
        assert!(dim.is_multiple_of(32));
        assert!(acc.len() >= rows * dim && p.len() >= (rows.max(1) - 1) * stride + n);
        if n == 0 {
            // Nothing to add, and `v` need not point anywhere.
            return;
        }
        let mut r = 0;
        while r < rows {
            let group = (rows - r).min(4);
            let mut d = 0;
            while d < dim {
                let wide = dim - d >= 64;
                // SAFETY: rows r..r + group of `p` (n weights each) and of `acc` (dims d.. of
                // `dim`) exist (the asserts), and value rows hold `dim` elements (the caller).
                unsafe {
                    let (p, v, out) = (
                        p[r * stride..].as_ptr(),
                        v.add(d),
                        acc[r * dim + d..].as_mut_ptr(),
                    );
                    let args = (n, p, stride, v, v_row, out, dim);
                    match (group, wide) {
                        (1, true) => block::<1, 4, E>(args),
                        (2, true) => block::<2, 4, E>(args),
                        (3, true) => block::<3, 4, E>(args),
                        (4, true) => block::<4, 4, E>(args),
                        (1, false) => block::<1, 2, E>(args),
                        (2, false) => block::<2, 2, E>(args),
                        (3, false) => block::<3, 2, E>(args),
                        _ => block::<4, 2, E>(args),
                    }
                }
                d += if wide { 64 } else { 32 };
            }
            r += group;
        }
    }

    /// `out[r · dim + 16 w + l] += Σ_j p[r · stride + j] · v[j · v_row + 16 w + l]` for `r < R`,
    /// `w < W`: the `R × W` sums stay in registers while the `n` value rows stream past once.
    ///
    /// # Safety
    /// `p` has `R` rows of `n` weights `stride` apart, `out` `R` rows of `16 W` floats `dim`
    /// apart, and `v` `n` rows of `16 W` elements `v_row` apart.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn block<const R: usize, const W: usize, E: Stored>(
        (n, p, stride, v, v_row, out, dim): (
            usize,
            *const f32,
            usize,
            *const E,
            usize,
            *mut f32,
            usize,
        ),
    ) {
        // SAFETY (all loads and stores): within the caller's rows (see above).
        unsafe {
            let mut sums = [[_mm512_setzero_ps(); W]; R];
            for (r, row) in sums.iter_mut().enumerate() {
                for (w, sum) in row.iter_mut().enumerate() {
                    *sum = _mm512_loadu_ps(out.add(r * dim + 16 * w));
                }
            }
            for j in 0..n {
                let value = v.add(j * v_row);
                let mut values = [_mm512_setzero_ps(); W];
                for (w, x) in values.iter_mut().enumerate() {
                    *x = load16(value.add(16 * w));
                }
                for (r, row) in sums.iter_mut().enumerate() {
                    let weight = _mm512_set1_ps(*p.add(r * stride + j));
                    for (sum, &x) in row.iter_mut().zip(&values) {
                        *sum = _mm512_fmadd_ps(weight, x, *sum);
                    }
                }
            }
            for (r, row) in sums.iter().enumerate() {
                for (w, &sum) in row.iter().enumerate() {
                    _mm512_storeu_ps(out.add(r * dim + 16 * w), sum);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn f16_keys_and_values_read_in_place_give_the_widened_values_products() {
        use half::f16;
        if !super::vectorised(64) {
            eprintln!("this CPU has no AVX2 + FMA + F16C: attention keeps gemm, nothing to check");
            return;
        }
        let (rows, n, dim, stride) = (3, 21, 64, 24);
        let q = values(rows * dim, 7);
        let k16: Vec<f16> = values(n * dim, 8).into_iter().map(f16::from_f32).collect();
        let v16: Vec<f16> = values(n * dim, 9).into_iter().map(f16::from_f32).collect();
        let (k32, v32): (Vec<f32>, Vec<f32>) = (
            k16.iter().map(|x| x.to_f32()).collect(),
            v16.iter().map(|x| x.to_f32()).collect(),
        );
        let (mut s16, mut s32) = (vec![0.0f32; rows * stride], vec![0.0f32; rows * stride]);
        let (mut a16, mut a32) = (values(rows * dim, 10), values(rows * dim, 10));
        unsafe {
            super::scores((rows, n, dim), &q, k16.as_ptr(), dim, &mut s16, stride);
            super::scores((rows, n, dim), &q, k32.as_ptr(), dim, &mut s32, stride);
            super::weighted_sum((rows, n, dim), &s32, stride, v16.as_ptr(), dim, &mut a16);
            super::weighted_sum((rows, n, dim), &s32, stride, v32.as_ptr(), dim, &mut a32);
        }
        let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&s16), bits(&s32));
        assert_eq!(bits(&a16), bits(&a32));
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_avx512_weighted_sum_gives_the_avx2_kernels_bits() {
        use half::f16;
        if !(super::vectorised(64) && std::arch::is_x86_feature_detected!("avx512f")) {
            eprintln!("this CPU has no AVX-512F: only the AVX2 kernel runs, nothing to compare");
            return;
        }
        // Rows in every group size and beyond a group, dims with and without a half block,
        // ragged key counts, value rows further apart than `dim`, f32 and f16 values.
        for (rows, n, dim) in [
            (1, 7, 64),
            (3, 256, 64),
            (4, 33, 32),
            (5, 19, 96),
            (9, 64, 128),
        ] {
            let stride = n + 5;
            let v_row = dim + 32;
            let p = values(rows * stride, 11);
            let v = values(n * v_row, 12);
            let v16: Vec<f16> = v.iter().copied().map(f16::from_f32).collect();
            let start = values(rows * dim, 13);
            let run = |wide: bool, half: bool| {
                let mut acc = start.clone();
                let dims = (rows, n, dim);
                unsafe {
                    match (wide, half) {
                        (true, false) => super::avx512::weighted_sum(
                            dims,
                            &p,
                            stride,
                            v.as_ptr(),
                            v_row,
                            &mut acc,
                        ),
                        (false, false) => {
                            super::avx2::weighted_sum(dims, &p, stride, v.as_ptr(), v_row, &mut acc)
                        }
                        (true, true) => super::avx512::weighted_sum(
                            dims,
                            &p,
                            stride,
                            v16.as_ptr(),
                            v_row,
                            &mut acc,
                        ),
                        (false, true) => super::avx2::weighted_sum(
                            dims,
                            &p,
                            stride,
                            v16.as_ptr(),
                            v_row,
                            &mut acc,
                        ),
                    }
                }
                acc.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            };
            for half in [false, true] {
                assert_eq!(
                    run(true, half),
                    run(false, half),
                    "{rows}x{n}x{dim}, f16 {half}"
                );
            }
            // The comparison sees the rows: the sums moved away from the start.
            assert_ne!(
                run(true, false),
                start.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            );
        }
    }

    /// Random-ish values in [-1, 1) from a fixed sequence.
    fn values(n: usize, seed: u32) -> Vec<f32> {
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                (x % 2000) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn few_row_products_equal_plain_sums() {
        // Head sizes 64 and 128, one row to a dozen, ragged key counts, rows `stride` apart.
        if !super::vectorised(64) {
            eprintln!("this CPU has no AVX2 + FMA: attention keeps gemm, nothing to check");
            return;
        }
        for (rows, n, dim) in [(3, 128, 64), (12, 37, 128), (1, 5, 64), (2, 9, 128)] {
            let stride = n + 3;
            let (q, k, v) = (
                values(rows * dim, 1),
                values(n * 2 * dim, 2),
                values(n * dim, 3),
            );
            let mut got = vec![0.0f32; rows * stride];
            // Keys are every other row of `k` (a row stride of 2·dim).
            unsafe { super::scores((rows, n, dim), &q, k.as_ptr(), 2 * dim, &mut got, stride) };
            for r in 0..rows {
                for j in 0..n {
                    let want: f64 = (0..dim)
                        .map(|d| q[r * dim + d] as f64 * k[j * 2 * dim + d] as f64)
                        .sum();
                    let diff = (got[r * stride + j] as f64 - want).abs();
                    assert!(
                        diff < 1e-4,
                        "score ({r}, {j}) of {rows}x{n}x{dim}: off by {diff}"
                    );
                }
            }
            let start = values(rows * dim, 4);
            let mut acc = start.clone();
            unsafe { super::weighted_sum((rows, n, dim), &got, stride, v.as_ptr(), dim, &mut acc) };
            for r in 0..rows {
                for d in 0..dim {
                    let want: f64 = start[r * dim + d] as f64
                        + (0..n)
                            .map(|j| got[r * stride + j] as f64 * v[j * dim + d] as f64)
                            .sum::<f64>();
                    let diff = (acc[r * dim + d] as f64 - want).abs();
                    assert!(
                        diff < 1e-3,
                        "sum ({r}, {d}) of {rows}x{n}x{dim}: off by {diff}"
                    );
                }
            }
        }
    }
}
