//! Products of `f32` activations with a [`QuantizedMatrix`] (a GGUF's blocks as stored).
//!
//! - **A few rows** (a decoding step, up to [`MAX_THIN`]): the weight is read once, in its
//!   quantized size, and decoded in registers block by block (AVX2 + FMA + F16C code for `Q4_0`,
//!   `Q4_1` and `Q8_0`, AVX-512 for `Q4_0` and `Q4_1` in [`super::q4_avx512`]; other types decode
//!   a few rows at a time into a buffer in L1). Decoding in registers costs more instructions
//!   than the bytes take to arrive: the kernels' instruction counts set a step's speed.
//!   A block's dot product is `d · Σ q_i x_i + m · Σ x_i`, the sum of its weights `q_i · d + m`
//!   times the activations with the scale and offset factored out. The output rows are split
//!   across rayon's pool, and each dot product is computed the same way whatever the number of
//!   rows, so a row's bits do not depend on what shares its product.
//! - **Many rows** (a prefill block): compute-bound, so the weight is decoded in tiles (on every
//!   core, to the values of [`crate::gguf::dequant`]) into a reused buffer and multiplied by
//!   `gemm`, the kernel of the `f32` model; decoding costs about one pass over the weight against
//!   the product's one multiply-add per weight and row (512 rows in a prefill block).
//!
//! Results differ from the `f32` model's only by rounding: the order of the sums, and for a few
//! rows the factored scale.

use std::cell::RefCell;

use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use super::matmul::MAX_THIN;
use crate::gguf::dequant::{GGML_TYPE_Q4_0, GGML_TYPE_Q4_1, GGML_TYPE_Q8_0};
use crate::quantized::{ActivationPrecision, QuantizedMatrix};

/// Output rows (weight rows) per task at least: enough to cover a task's overhead.
const MIN_ROWS_PER_TASK: usize = 32;

/// Weight rows decoded at a time by the generic path (types without register decoding).
const DECODE_ROWS: usize = 8;

/// Weights decoded at a time by a many-row product: 16 MiB of `f32`.
const DECODED_FLOATS: usize = 1 << 22;

thread_local! {
    /// The decoded weight of a many-row product, reused from one product to the next: a new
    /// buffer per product would have the kernel clear its pages every time.
    static DECODED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `x` `[m, k]` (row-major) times `wᵀ` (`w` is `[n, k]`), as a row-major `[m, n]` vector.
///
/// # Panics
/// If `x` is not `m` rows of `w.cols()` values.
pub(crate) fn matmul(x: &[f32], m: usize, w: &QuantizedMatrix) -> Vec<f32> {
    let (n, k) = (w.rows(), w.cols());
    assert_eq!(x.len(), m * k, "quantized matmul: x is not [{m}, {k}]");
    if m == 0 || n == 0 || k == 0 {
        return vec![0.0; m * n];
    }
    if m <= MAX_THIN {
        few_rows(x, m, &[w]).pop().expect("one weight, one product")
    } else {
        many_rows(x, m, w)
    }
}

/// [`matmul`] with both operands rounded to bf16 (see [`super::bf16`]): the weight decoded a
/// panel of output rows at a time and rounded.
///
/// # Panics
/// If `x` is not `m` rows of `w.cols()` values.
pub(crate) fn matmul_bf16(x: &[f32], m: usize, w: &QuantizedMatrix) -> Vec<f32> {
    let (n, k) = (w.rows(), w.cols());
    assert_eq!(x.len(), m * k, "quantized matmul: x is not [{m}, {k}]");
    super::bf16::product(x, m, k, n, |first, cols| {
        super::bf16::Packed::from_n_major(k, cols, |row, out| decode_rows(w, first + row, out))
    })
}

/// [`matmul`] of the same `x` by several weights of `x`'s width (a layer's q, k and v projections,
/// or its gate and up): for a few rows, the output rows of all of them split across rayon's pool
/// at once, so that the pool waits once rather than once a weight (a step's small products wait
/// about as long as they multiply). Each output has the bits [`matmul`] gives it.
///
/// # Panics
/// If `x` is not `m` rows of each weight's `cols()` values.
pub(crate) fn matmul_many(x: &[f32], m: usize, ws: &[&QuantizedMatrix]) -> Vec<Vec<f32>> {
    let thin = (1..=MAX_THIN).contains(&m) && ws.iter().all(|w| w.rows() > 0 && w.cols() > 0);
    if !thin {
        return ws.iter().map(|w| matmul(x, m, w)).collect();
    }
    for w in ws {
        let k = w.cols();
        assert_eq!(x.len(), m * k, "quantized matmul: x is not [{m}, {k}]");
    }
    few_rows(x, m, ws)
}

/// [`matmul_many`] for a few rows: output rows in tasks, the weights decoded in registers.
fn few_rows(x: &[f32], m: usize, ws: &[&QuantizedMatrix]) -> Vec<Vec<f32>> {
    let tasks = rayon::current_num_threads() * 4;
    // `[n, m]` per weight: each task owns whole weight rows' outputs.
    let mut by_row: Vec<Vec<f32>> = ws.iter().map(|w| vec![0.0f32; w.rows() * m]).collect();
    // Rounded once a weight here, not by each task.
    let int8: Vec<Option<Int8>> = ws.iter().map(|w| Int8Rows::for_product(x, m, w)).collect();
    // The activations' block sums, for the offsets of the f32 kernels: once for every weight (they
    // share `x`'s width).
    let sums = block_sums(&x[..m * ws.first().map_or(0, |w| w.cols())]);
    let kernels: Vec<F32Kernel> = ws.iter().map(|w| F32Kernel::best(w.ggml_type())).collect();
    let mut jobs = Vec::new();
    for (i, out) in by_row.iter_mut().enumerate() {
        let n = ws[i].rows();
        let per_task = n.div_ceil(tasks).max(MIN_ROWS_PER_TASK).min(n);
        for (c, rows) in out.chunks_mut(per_task * m).enumerate() {
            jobs.push((i, c * per_task, rows));
        }
    }
    jobs.into_par_iter()
        .for_each(|(i, start, out)| match &int8[i] {
            Some(rows) => int8_dots(rows, ws[i], start, out),
            None => dots_by(kernels[i], (x, &sums), m, ws[i], start, out),
        });
    if m == 1 {
        return by_row;
    }
    by_row
        .iter()
        .map(|by_row| {
            let n = by_row.len() / m;
            let mut out = vec![0.0f32; m * n];
            for (j, row) in by_row.chunks_exact(m).enumerate() {
                for (r, &v) in row.iter().enumerate() {
                    out[r * n + j] = v;
                }
            }
            out
        })
        .collect()
}

/// The kernels of a few-row product with `f32` activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum F32Kernel {
    /// AVX-512 (`Q4_0`, `Q4_1`): [`super::q4_avx512`].
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// AVX2, FMA and F16C (`Q4_0`, `Q4_1`, `Q8_0`): blocks decoded in registers.
    #[cfg(target_arch = "x86_64")]
    Avx2,
    /// Any type on any CPU: a few weight rows decoded into a buffer, then dot products.
    Buffered,
}

impl F32Kernel {
    /// Every kernel, the fastest first.
    const ALL: &[Self] = &[
        #[cfg(target_arch = "x86_64")]
        Self::Avx512,
        #[cfg(target_arch = "x86_64")]
        Self::Avx2,
        Self::Buffered,
    ];

    /// Whether this kernel runs on this CPU for blocks of `ggml_type`.
    fn applies(self, ggml_type: u32) -> bool {
        match self {
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => super::q4_avx512::applies(ggml_type),
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => avx2::applies(ggml_type),
            Self::Buffered => true,
        }
    }

    /// The fastest kernel this CPU runs for blocks of `ggml_type`.
    fn best(ggml_type: u32) -> Self {
        Self::ALL
            .iter()
            .copied()
            .find(|kernel| kernel.applies(ggml_type))
            .unwrap_or(Self::Buffered)
    }
}

/// `out[j · m + r] = x_r · w_{start + j}` for the `out.len() / m` weight rows from `start`, by
/// `kernel` ([`F32Kernel::best`] or a slower one that applies); `sums` are [`block_sums`] of `x`.
///
/// # Panics
/// If `kernel` does not run on this CPU for `w`'s type.
fn dots_by(
    kernel: F32Kernel,
    (x, sums): (&[f32], &[f32]),
    m: usize,
    w: &QuantizedMatrix,
    start: usize,
    out: &mut [f32],
) {
    let k = w.cols();
    // (The feature checks are cached: a load each.)
    assert!(
        kernel.applies(w.ggml_type()),
        "{kernel:?} does not run here for type {}",
        w.ggml_type()
    );
    match kernel {
        // SAFETY: the kernel's `applies` holds here for `w`'s type (asserted); `out` holds
        // whole rows of `m` outputs, and `x` `m` rows of `k` (asserted by `matmul`), `sums` their
        // blocks' sums (the kernels assert their length).
        #[cfg(target_arch = "x86_64")]
        F32Kernel::Avx512 => unsafe { super::q4_avx512::dots((x, sums), m, w, start, out) },
        #[cfg(target_arch = "x86_64")]
        F32Kernel::Avx2 => unsafe { avx2::dots((x, sums), m, w, start, out) },
        F32Kernel::Buffered => {
            let rows = out.len() / m;
            let mut decoded = vec![0.0f32; DECODE_ROWS.min(rows) * k];
            for first in (0..rows).step_by(DECODE_ROWS) {
                let count = DECODE_ROWS.min(rows - first);
                let decoded = &mut decoded[..count * k];
                w.decode_rows(start + first, decoded);
                for (j, weights) in decoded.chunks_exact(k).enumerate() {
                    for (r, xs) in x.chunks_exact(k).enumerate() {
                        out[(first + j) * m + r] = dot(xs, weights);
                    }
                }
            }
        }
    }
}

/// The sum of each block of 32 values of `x` (for the blocks' offsets `m · Σ x`; a tail of
/// fewer than 32 left out): 16 lanes of pairs, then the lanes in order.
fn block_sums(x: &[f32]) -> Vec<f32> {
    x.chunks_exact(32)
        .map(|b| {
            let (a, c) = b.split_at(16);
            let mut lanes = [0.0f32; 16];
            for l in 0..16 {
                lanes[l] = a[l] + c[l];
            }
            lanes.iter().sum()
        })
        .collect()
}

/// Activation rows rounded to 8-bit integers per block of 32, with each block's scale and the
/// rounded values' sum (for the blocks' offsets): [`ActivationPrecision::Int8`]. A product with
/// them is the weights' product with the rounded activations `s · a_i`.
pub(super) struct Int8Rows {
    /// Values per row.
    pub(super) k: usize,
    /// `[m, k]`: `round(x / scale)` of each value, in `-127..=127`.
    pub(super) values: Vec<i8>,
    /// `[m, k / 32]`: each block's `max |x| / 127` (NaN when the block holds a NaN, so that the
    /// products show it).
    pub(super) scales: Vec<f32>,
    /// `[m, k / 32]`: each block's `s · Σ a_i` (its rounded values' sum, times its scale).
    pub(super) sums: Vec<f32>,
}

/// A product's activation rows rounded to 8 bits, for the kernel that runs here.
enum Int8 {
    /// AVX-512 VNNI ([`super::vnni`]): arranged for the weight's block type.
    #[cfg(target_arch = "x86_64")]
    Vnni(super::vnni::Rows),
    /// AVX2 (`maddubs`): as rounded.
    #[cfg(target_arch = "x86_64")]
    Avx2(Int8Rows),
}

impl Int8Rows {
    /// `x` (`m` rows of `w.cols()`) rounded, when `w` asks for 8-bit activations and a kernel for
    /// its type runs here; `None` otherwise (`f32` activations).
    fn for_product(x: &[f32], m: usize, w: &QuantizedMatrix) -> Option<Int8> {
        if w.activation_precision() != ActivationPrecision::Int8 {
            return None;
        }
        Self::for_kernel(x, m, w, Kernel::best(w.ggml_type())?)
    }

    /// `x` rounded and arranged for `kernel`.
    #[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
    fn for_kernel(x: &[f32], m: usize, w: &QuantizedMatrix, kernel: Kernel) -> Option<Int8> {
        #[cfg(target_arch = "x86_64")]
        {
            let rows = Self::new(&x[..m * w.cols()], w.cols());
            Some(match kernel {
                Kernel::Vnni => Int8::Vnni(super::vnni::Rows::new(&rows, m, w.ggml_type())),
                Kernel::Avx2 => Int8::Avx2(rows),
            })
        }
        #[cfg(not(target_arch = "x86_64"))]
        None
    }

    /// Rows of `k` values (`k` a multiple of 32) rounded as ggml's `Q8_0` rounds them, with the
    /// scale kept in `f32`.
    fn new(x: &[f32], k: usize) -> Self {
        let blocks = x.len() / 32;
        let mut values = vec![0i8; blocks * 32];
        let (mut scales, mut sums) = (vec![0.0f32; blocks], vec![0.0f32; blocks]);
        // Called once a product before its tasks split: vectorised where the CPU allows, since
        // `f32::round` compiles to a call per value on baseline x86-64.
        match () {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has AVX2 and FMA.
            () if super::avx2_fma() => unsafe {
                round_rows_avx2(x, &mut values, &mut scales, &mut sums)
            },
            () => round_rows(x, &mut values, &mut scales, &mut sums),
        }
        Self {
            k,
            values,
            scales,
            sums,
        }
    }
}

/// [`round_rows`] compiled for AVX2 (the same values).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn round_rows_avx2(x: &[f32], values: &mut [i8], scales: &mut [f32], sums: &mut [f32]) {
    round_rows(x, values, scales, sums);
}

/// Each block of 32 values of `x` rounded into `values` as ggml's `Q8_0` rounds it (scale
/// `max |x| / 127` kept in `f32`, NaN when the block holds a NaN; each value to the nearest
/// level, halves away from zero, within -127..=127), with its scale and `s · Σ a_i`.
#[inline(always)]
fn round_rows(x: &[f32], values: &mut [i8], scales: &mut [f32], sums: &mut [f32]) {
    let (blocks, _) = x.as_chunks::<32>();
    let (q_blocks, _) = values.as_chunks_mut::<32>();
    for (((block, q), scale), sum) in blocks.iter().zip(q_blocks).zip(scales).zip(sums) {
        // In eight lanes, as a compare and select (`f32::max`'s NaN rule keeps it from
        // vectorising); NaNs are flagged apart. The maximum does not depend on the order.
        let (mut max, mut nan) = ([0.0f32; 8], [false; 8]);
        for chunk in block.as_chunks::<8>().0 {
            for l in 0..8 {
                let v = chunk[l].abs();
                max[l] = if v > max[l] { v } else { max[l] };
                nan[l] |= chunk[l].is_nan();
            }
        }
        let max = max.iter().fold(0.0f32, |m, &v| if v > m { v } else { m });
        *scale = if nan.contains(&true) { f32::NAN } else { max } / 127.0;
        let inverse = if *scale > 0.0 { 1.0 / *scale } else { 0.0 };
        let mut total = 0i32;
        for (q, &v) in q.iter_mut().zip(block) {
            // |v · inverse| <= 127 up to rounding, except in blocks whose maximum is so small
            // (about 1e-36) that `1 / scale` is inexact or infinite: clamped to -127..=127 (the
            // AVX2 kernel's sign trick has no -128) and NaN to 0, as selects that vectorise (a
            // saturating cast goes value by value).
            let r = round_half_away(v * inverse);
            let r = if r.is_nan() {
                0.0
            } else {
                r.clamp(-127.0, 127.0)
            };
            // SAFETY: `r` is an integer in -127..=127.
            *q = unsafe { r.to_int_unchecked::<i32>() } as i8;
            total += *q as i32;
        }
        // Exact in f32 (|Σ a_i| <= 32 · 127).
        *sum = *scale * total as f32;
    }
}

/// `v.round()` (halves away from zero) in operations that vectorise: `v - trunc(v)` is exact.
#[inline(always)]
fn round_half_away(v: f32) -> f32 {
    let t = v.trunc();
    if (v - t).abs() >= 0.5 {
        t + 1.0f32.copysign(v)
    } else {
        t
    }
}

/// The kernels for 8-bit activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
enum Kernel {
    /// AVX-512 VNNI and VBMI.
    Vnni,
    /// AVX2, FMA and F16C.
    Avx2,
}

impl Kernel {
    /// The fastest kernel this CPU runs for blocks of `ggml_type`, if any.
    fn best(ggml_type: u32) -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            if super::vnni::applies(ggml_type) {
                return Some(Self::Vnni);
            }
            if avx2::applies(ggml_type) {
                return Some(Self::Avx2);
            }
        }
        let _ = ggml_type;
        None
    }
}

/// [`dots`] with activations rounded to 8 bits (`rows`, made by [`Int8Rows::for_product`] for
/// `w`).
fn int8_dots(rows: &Int8, w: &QuantizedMatrix, start: usize, out: &mut [f32]) {
    // SAFETY: `Int8Rows::for_kernel` made `rows` for a kernel whose `applies` holds for `w`'s type
    // here; they hold `m` rows of `w.cols()`, and `out` whole rows of `m` (`few_rows`).
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (w, start, &out);
    // (By place: off x86-64 `Int8` has no variant, and a reference to it needs an arm.)
    match *rows {
        #[cfg(target_arch = "x86_64")]
        Int8::Vnni(ref rows) => unsafe { super::vnni::dots(rows, w, start, out) },
        #[cfg(target_arch = "x86_64")]
        Int8::Avx2(ref rows) => unsafe { avx2::int8_dots(rows, w, start, out) },
    }
}

/// `a · b` in eight lanes (the compiler vectorises it), the lanes then added in order.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (a8, a_rest) = a.as_chunks::<8>();
    let (b8, b_rest) = b.as_chunks::<8>();
    for (x, y) in a8.iter().zip(b8) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    let tail: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    lanes.iter().sum::<f32>() + tail
}

/// [`QuantizedMatrix::decode_rows`], in AVX2 code for the types [`avx2::applies`] to (the same
/// values: each weight `q · d` rounded, then `+ m` rounded, as `crate::gguf::dequant` computes
/// it).
fn decode_rows(w: &QuantizedMatrix, start: usize, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if avx2::applies(w.ggml_type()) {
        // SAFETY: `applies` checked the CPU's features and the type; `decode_rows_into` checks
        // the sizes.
        unsafe { avx2::decode_rows_into(w, start, out) };
        return;
    }
    w.decode_rows(start, out);
}

/// [`matmul`] for many rows: the weight decoded into a reused buffer, then `gemm`, in tiles of
/// about [`DECODED_FLOATS`] weights (64 rows at least): a large table, such as an LM head's,
/// never needs its whole `f32` size.
fn many_rows(x: &[f32], m: usize, w: &QuantizedMatrix) -> Vec<f32> {
    let (n, k) = (w.rows(), w.cols());
    // Not zeroed first: the tiles' products write every value (`gemm` does not read its output
    // here), and a zeroing pass is a full write of the output.
    let mut out: Vec<f32> = Vec::with_capacity(m * n);
    let tile = (DECODED_FLOATS / k.max(1)).max(64).min(n);
    DECODED.with(|cell| {
        // A product on a rayon worker can, while it waits for its tasks, run another stolen
        // product on the same thread (a caller's forwards inside rayon tasks): that one, finding
        // the buffer taken, uses a buffer of its own.
        let mut own = Vec::new();
        let mut taken = cell.try_borrow_mut();
        let decoded = match &mut taken {
            Ok(buffer) => &mut **buffer,
            Err(_) => &mut own,
        };
        decoded.resize(tile * k, 0.0);
        for first in (0..n).step_by(tile) {
            let rows = tile.min(n - first);
            let decoded = &mut decoded[..rows * k];
            let per_task = rows.div_ceil(rayon::current_num_threads() * 4).max(1);
            decoded
                .par_chunks_mut(per_task * k)
                .enumerate()
                .for_each(|(i, part)| decode_rows(w, first + i * per_task, part));
            // SAFETY: `x` is `[m, k]` row-major (asserted by `matmul`), `decoded` `[rows, k]`
            // row-major read as `[k, rows]` with column stride `k`, and the output columns
            // `first..first + rows` of `out`'s capacity `[m, n]` row-major, written, not read.
            unsafe {
                gemm(
                    m,
                    rows,
                    k,
                    out.spare_capacity_mut()
                        .as_mut_ptr()
                        .cast::<f32>()
                        .add(first),
                    1,
                    n as isize,
                    false,
                    x.as_ptr(),
                    1,
                    k as isize,
                    decoded.as_ptr(),
                    k as isize,
                    1,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    Parallelism::Rayon(0),
                );
            }
        }
    });
    // SAFETY: the tiles wrote columns `0..n` of the `m` rows: every value.
    unsafe { out.set_len(m * n) };
    out
}

#[cfg(target_arch = "x86_64")]
pub(super) use avx2::scale_and_offset;

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::super::few_rows::lane_sum;
    use super::{GGML_TYPE_Q4_0, GGML_TYPE_Q4_1, GGML_TYPE_Q8_0, Int8Rows, QuantizedMatrix};

    /// Whether this CPU and type take the register-decoding path.
    pub(super) fn applies(ggml_type: u32) -> bool {
        matches!(ggml_type, GGML_TYPE_Q4_0 | GGML_TYPE_Q4_1 | GGML_TYPE_Q8_0)
            && super::super::avx2_fma()
            && std::arch::is_x86_feature_detected!("f16c")
    }

    /// A block of type `T`'s scale `d` and offset `m` (`Q4_1`: stored after `d`; `Q4_0`: `-8d`;
    /// `Q8_0`: 0), the `f16`s as `f32` (exact, as `half`'s conversion). Both come from one 4-byte
    /// load (every block type is longer): loading a lone `u16` had the compiler insert it into a
    /// register that held a running sum (`vpinsrw`), chaining every block to the one before; a
    /// whole-register move has no such tie. The AVX-512 `Q4` kernel shares it.
    ///
    /// # Safety
    /// A whole block of type `T` lies at `p`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in crate::cpu) unsafe fn scale_and_offset<const T: u32>(p: *const u8) -> (f32, f32) {
        // SAFETY: the caller's block has at least four bytes at `p`.
        let word = unsafe { (p as *const i32).read_unaligned() };
        let both = _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from_le(word)));
        let d = _mm_cvtss_f32(both);
        let m = match T {
            GGML_TYPE_Q4_1 => _mm_cvtss_f32(_mm_movehdup_ps(both)),
            GGML_TYPE_Q4_0 => -8.0 * d,
            _ => 0.0,
        };
        (d, m)
    }

    /// A block of 32 weights `w_i = q_i · d + m` as its integers `q_i` (exact in f32), its scale
    /// `d` and its offset `m` (`Q8_0`: `m = 0`; `Q4_0`: `q - 8` folded into `m = -8d`). The bytes
    /// are widened to lanes straight from memory, eight at a time, and a `Q4` byte's two nibbles
    /// split after widening: fewer instructions than splitting first (a scratch probe's block on
    /// Zen 1, where every 256-bit instruction is two halves: 7.2 -> 6.6 ns).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode<const T: u32>(p: *const u8) -> ([__m256; 4], f32, f32) {
        // SAFETY: the caller passes a whole block of type `T` at `p`.
        unsafe {
            let (d, m) = scale_and_offset::<T>(p);
            match T {
                GGML_TYPE_Q8_0 => {
                    let q = p.add(2);
                    let widen = |o: usize| {
                        let bytes = _mm_loadl_epi64(q.add(o) as *const __m128i);
                        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes))
                    };
                    ([widen(0), widen(8), widen(16), widen(24)], d, 0.0)
                }
                GGML_TYPE_Q4_1 | GGML_TYPE_Q4_0 => {
                    let q = p.add(if T == GGML_TYPE_Q4_1 { 4 } else { 2 });
                    // Element j is the low nibble of byte j, element j + 16 its high nibble.
                    let widen = |o: usize| {
                        _mm256_cvtepu8_epi32(_mm_loadl_epi64(q.add(o) as *const __m128i))
                    };
                    let (front, back) = (widen(0), widen(8));
                    let mask = _mm256_set1_epi32(0x0F);
                    let low = |v: __m256i| _mm256_cvtepi32_ps(_mm256_and_si256(v, mask));
                    let high = |v: __m256i| _mm256_cvtepi32_ps(_mm256_srli_epi32::<4>(v));
                    let q = [low(front), low(back), high(front), high(back)];
                    (q, d, m)
                }
                _ => unreachable!("`applies` admits Q4_0, Q4_1 and Q8_0 only"),
            }
        }
    }

    /// Rows `start..` of `w` decoded into `out` (whole rows), to the values
    /// `crate::gguf::dequant` gives.
    ///
    /// # Safety
    /// [`applies`] holds for `w`'s type.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn decode_rows_into(w: &QuantizedMatrix, start: usize, out: &mut [f32]) {
        let k = w.cols();
        assert!(k.is_multiple_of(32) && out.len().is_multiple_of(k.max(1)));
        let rows = out.len() / k.max(1);
        let data = w.row_data(start, rows).as_ptr();
        let block_bytes = w.row_bytes() / (k / 32).max(1);
        // SAFETY: `rows` rows of `k / 32` blocks each at `data`, and `out` has 32 floats a block.
        unsafe {
            match w.ggml_type() {
                GGML_TYPE_Q4_0 => decode_blocks::<GGML_TYPE_Q4_0>(data, block_bytes, out),
                GGML_TYPE_Q4_1 => decode_blocks::<GGML_TYPE_Q4_1>(data, block_bytes, out),
                _ => decode_blocks::<GGML_TYPE_Q8_0>(data, block_bytes, out),
            }
        }
    }

    /// `out.len() / 32` blocks of type `T` from `data`, `block_bytes` apart, decoded into `out`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn decode_blocks<const T: u32>(data: *const u8, block_bytes: usize, out: &mut [f32]) {
        for (b, dst) in out.chunks_exact_mut(32).enumerate() {
            // SAFETY: block `b` exists (the caller), and `dst` has 32 floats.
            unsafe {
                let (q, d, m) = decode::<T>(data.add(b * block_bytes));
                let (d, m) = (_mm256_set1_ps(d), _mm256_set1_ps(m));
                for (v, &q) in q.iter().enumerate() {
                    let w = match T {
                        // `(q - 8) · d`: the offset folded into `m` would round differently.
                        GGML_TYPE_Q4_0 => _mm256_mul_ps(_mm256_sub_ps(q, _mm256_set1_ps(8.0)), d),
                        GGML_TYPE_Q4_1 => _mm256_add_ps(_mm256_mul_ps(q, d), m),
                        _ => _mm256_mul_ps(q, d),
                    };
                    _mm256_storeu_ps(dst.as_mut_ptr().add(8 * v), w);
                }
            }
        }
    }

    /// [`super::dots`] in registers.
    ///
    /// # Safety
    /// [`applies`] holds for `w`'s type; `x` is `m` rows of `w.cols()`, `sums` their
    /// [`super::block_sums`], `out` whole rows of `m`.
    #[target_feature(enable = "avx2,fma,f16c")]
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
                _ => dots_of::<GGML_TYPE_Q8_0>((x, sums), m, w, start, out),
            }
        }
    }

    /// [`dots`] for blocks of type `T`. A block's dot product is `d · Σ q_i x_i + m · Σ x_i`: the
    /// integers times the activations, scaled once per block, and the block's offset times the
    /// activations' sum (`sums`, [`super::block_sums`]), which saves a multiply and an add per
    /// weight over decoding each weight first. Activation rows go in groups of up to 3, each
    /// decoded block serving the group, and every row is summed the same way whatever its group,
    /// so its bits do not depend on the rows beside it.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dots_of<const T: u32>(
        (x, sums): (&[f32], &[f32]),
        m: usize,
        w: &QuantizedMatrix,
        start: usize,
        out: &mut [f32],
    ) {
        weight_rows_in_groups!(group::<T>, (x, sums), m, w, start, out)
    }

    /// `out[i] = x_{r0 + i} · w_row` for `i < R`.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn group<const T: u32, const R: usize>(
        (x, sums): (&[f32], &[f32]),
        (k, blocks, block_bytes): (usize, usize, usize),
        r0: usize,
        data: *const u8,
        out: &mut [f32],
    ) {
        let mut scaled = [_mm256_setzero_ps(); R];
        let mut offsets = [0.0f32; R];
        for b in 0..blocks {
            // SAFETY: block `b` of the row, 32 floats of each row from `b · 32`, and the row's
            // `blocks` sums (`dots_of` computed `m · blocks`).
            unsafe {
                let ([q0, q1, q2, q3], d, m) = decode::<T>(data.add(b * block_bytes));
                let d = _mm256_set1_ps(d);
                for i in 0..R {
                    // One chain of products a block: one instruction fewer than two chains
                    // and their sum (the chain's latency overlaps the next block's).
                    let xs = x.as_ptr().add((r0 + i) * k + b * 32);
                    let mut block = _mm256_mul_ps(q0, _mm256_loadu_ps(xs));
                    block = _mm256_fmadd_ps(q1, _mm256_loadu_ps(xs.add(8)), block);
                    block = _mm256_fmadd_ps(q2, _mm256_loadu_ps(xs.add(16)), block);
                    block = _mm256_fmadd_ps(q3, _mm256_loadu_ps(xs.add(24)), block);
                    scaled[i] = _mm256_fmadd_ps(block, d, scaled[i]);
                    if T != GGML_TYPE_Q8_0 {
                        offsets[i] += m * *sums.get_unchecked((r0 + i) * blocks + b);
                    }
                }
            }
        }
        for i in 0..R {
            out[i] = lane_sum(scaled[i]) + offsets[i];
        }
    }

    /// A block of type `T`'s 32 integers (`Q4_*`: unsigned nibbles, element `j` in byte `j`;
    /// `Q8_0`: signed bytes), its scale `d` and offset `m` (as [`decode`] gives them).
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn integers<const T: u32>(p: *const u8) -> (__m256i, f32, f32) {
        // SAFETY: the caller passes a whole block of type `T` at `p`.
        unsafe {
            let (d, m) = scale_and_offset::<T>(p);
            match T {
                GGML_TYPE_Q8_0 => (_mm256_loadu_si256(p.add(2) as *const __m256i), d, 0.0),
                GGML_TYPE_Q4_1 | GGML_TYPE_Q4_0 => {
                    let offset = if T == GGML_TYPE_Q4_1 { 4 } else { 2 };
                    let bytes = _mm_loadu_si128(p.add(offset) as *const __m128i);
                    let mask = _mm_set1_epi8(0x0F);
                    // Elements 0-15 are the low nibbles, 16-31 the high ones.
                    let lo = _mm_and_si128(bytes, mask);
                    let hi = _mm_and_si128(_mm_srli_epi16::<4>(bytes), mask);
                    (_mm256_set_m128i(hi, lo), d, m)
                }
                _ => unreachable!("`applies` admits Q4_0, Q4_1 and Q8_0 only"),
            }
        }
    }

    /// `Σ w_i x_i` of a block's integers `w` (from [`integers`]) and 8-bit activations `x`, in
    /// eight `i32` lanes: exact (pairs of products fit `i16`: `15 · 127 · 2` for nibbles,
    /// `128 · 127 · 2` for signed bytes).
    #[target_feature(enable = "avx2,fma,f16c")]
    fn integer_dot<const T: u32>(w: __m256i, x: __m256i) -> __m256i {
        // `maddubs` multiplies unsigned bytes by signed ones: signed weights give their sign to
        // the activations.
        let pairs = if T == GGML_TYPE_Q8_0 {
            _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(x, w))
        } else {
            _mm256_maddubs_epi16(w, x)
        };
        _mm256_madd_epi16(pairs, _mm256_set1_epi16(1))
    }

    /// [`super::int8_dots`]: `out[j · m + r] = x_r · w_{start + j}` with `x` rounded to 8 bits.
    ///
    /// # Safety
    /// [`applies`] holds for `w`'s type; `rows` holds `m` rows of `w.cols()` values, `out` whole
    /// rows of `m`.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn int8_dots(
        rows: &Int8Rows,
        w: &QuantizedMatrix,
        start: usize,
        out: &mut [f32],
    ) {
        // SAFETY: forwarded from the caller.
        unsafe {
            match w.ggml_type() {
                GGML_TYPE_Q4_0 => int8_dots_of::<GGML_TYPE_Q4_0>(rows, w, start, out),
                GGML_TYPE_Q4_1 => int8_dots_of::<GGML_TYPE_Q4_1>(rows, w, start, out),
                _ => int8_dots_of::<GGML_TYPE_Q8_0>(rows, w, start, out),
            }
        }
    }

    /// [`int8_dots`] for blocks of type `T`: a block's dot product with the rounded activations
    /// `s · a_i` is `d · s · Σ q_i a_i + m · s · Σ a_i`, the integer sums exact. Activation rows
    /// go in groups of up to 4, each block's integers serving the group; every row is summed the
    /// same way whatever its group.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn int8_dots_of<const T: u32>(
        rows: &Int8Rows,
        w: &QuantizedMatrix,
        start: usize,
        out: &mut [f32],
    ) {
        let k = w.cols();
        let blocks = k / 32;
        let m = rows.values.len() / k.max(1);
        assert!(rows.k == k && k.is_multiple_of(32) && out.len().is_multiple_of(m.max(1)));
        let block_bytes = w.row_bytes() / blocks.max(1);
        for j in 0..out.len() / m.max(1) {
            let data = w.row_data(start + j, 1).as_ptr();
            let out = &mut out[j * m..(j + 1) * m];
            let mut r = 0;
            // SAFETY: row `start + j` has `blocks` blocks of `block_bytes`, and `rows` `m` rows
            // of `k` values and `blocks` scales and sums.
            unsafe {
                while r + 4 <= m {
                    int8_group::<T, 4>(rows, (blocks, block_bytes), r, data, &mut out[r..]);
                    r += 4;
                }
                match m - r {
                    3 => int8_group::<T, 3>(rows, (blocks, block_bytes), r, data, &mut out[r..]),
                    2 => int8_group::<T, 2>(rows, (blocks, block_bytes), r, data, &mut out[r..]),
                    1 => int8_group::<T, 1>(rows, (blocks, block_bytes), r, data, &mut out[r..]),
                    _ => {}
                }
            }
        }
    }

    /// `out[i] = x_{r0 + i} · w_row` for `i < R`, with 8-bit activations.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn int8_group<const T: u32, const R: usize>(
        rows: &Int8Rows,
        (blocks, block_bytes): (usize, usize),
        r0: usize,
        data: *const u8,
        out: &mut [f32],
    ) {
        let mut scaled = [_mm256_setzero_ps(); R];
        let mut offsets = [0.0f32; R];
        for b in 0..blocks {
            // SAFETY: block `b` of the row, and 32 values, a scale and a sum of block `b` of each
            // activation row (`int8_dots_of` checked the sizes).
            unsafe {
                let (q, d, m) = integers::<T>(data.add(b * block_bytes));
                for i in 0..R {
                    let at = (r0 + i) * blocks + b;
                    let x = _mm256_loadu_si256(rows.values.as_ptr().add(at * 32) as *const __m256i);
                    let dot = _mm256_cvtepi32_ps(integer_dot::<T>(q, x));
                    let scale = _mm256_set1_ps(d * *rows.scales.get_unchecked(at));
                    scaled[i] = _mm256_fmadd_ps(dot, scale, scaled[i]);
                    if T != GGML_TYPE_Q8_0 {
                        offsets[i] += m * *rows.sums.get_unchecked(at);
                    }
                }
            }
        }
        for i in 0..R {
            out[i] = lane_sum(scaled[i]) + offsets[i];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::dequant::{GGML_TYPE_Q4_K, GGML_TYPE_Q6_K, block_layout};

    /// Random-ish bytes and values from a fixed sequence.
    fn sequence(n: usize, seed: u32) -> Vec<u32> {
        let mut x = seed.wrapping_mul(2_654_435_761).max(1);
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x
            })
            .collect()
    }

    /// A `[rows, cols]` matrix of random blocks of `ggml_type`, with sane `f16` scales (random
    /// bits there could be infinities or NaNs).
    fn random_matrix(ggml_type: u32, rows: usize, cols: usize, seed: u32) -> QuantizedMatrix {
        let layout = block_layout(ggml_type).unwrap();
        let blocks = rows * cols / layout.block_elems;
        let mut data: Vec<u8> = sequence(blocks * layout.block_bytes, seed)
            .into_iter()
            .map(|v| v as u8)
            .collect();
        // Where each type keeps its f16 scales (byte offsets in a block).
        let scales: &[usize] = match ggml_type {
            GGML_TYPE_Q4_0 | GGML_TYPE_Q8_0 => &[0],
            GGML_TYPE_Q4_1 => &[0, 2],
            GGML_TYPE_Q4_K => &[0, 2],
            GGML_TYPE_Q6_K => &[208],
            other => panic!("no scale offsets for type {other}"),
        };
        for (b, block) in data.chunks_exact_mut(layout.block_bytes).enumerate() {
            for (i, &at) in scales.iter().enumerate() {
                let v = half::f16::from_f32(0.01 + ((b * 7 + i * 3) % 13) as f32 * 0.003);
                block[at..at + 2].copy_from_slice(&v.to_le_bytes());
            }
        }
        QuantizedMatrix::new(ggml_type, rows, cols, data).unwrap()
    }

    fn activations(m: usize, k: usize, seed: u32) -> Vec<f32> {
        sequence(m * k, seed)
            .into_iter()
            .map(|v| (v % 2000) as f32 / 1000.0 - 1.0)
            .collect()
    }

    #[test]
    fn products_equal_the_decoded_matrix_products() {
        // Register-decoded types and two decoded through a buffer; one row to more than
        // `MAX_THIN` (the `gemm` path); output counts not a multiple of any task size.
        for (ty, n, k) in [
            (GGML_TYPE_Q4_1, 37, 96),
            (GGML_TYPE_Q8_0, 100, 64),
            (GGML_TYPE_Q4_0, 65, 32),
            (GGML_TYPE_Q4_K, 9, 256),
            (GGML_TYPE_Q6_K, 33, 512),
            // Several tiles of a many-row product (`DECODED_FLOATS` / 32 rows each).
            (GGML_TYPE_Q8_0, (DECODED_FLOATS / 32) * 2 + 5, 32),
        ] {
            let w = random_matrix(ty, n, k, ty + 1);
            let dense = w.to_f32();
            for m in [1, 2, 3, 5, 7, MAX_THIN, MAX_THIN + 1, 40] {
                let x = activations(m, k, m as u32);
                let got = matmul(&x, m, &w);
                for r in 0..m {
                    for j in 0..n {
                        let want: f64 = (0..k)
                            .map(|i| x[r * k + i] as f64 * dense[j * k + i] as f64)
                            .sum();
                        let scale: f64 = (0..k)
                            .map(|i| (x[r * k + i] as f64 * dense[j * k + i] as f64).abs())
                            .sum();
                        let diff = (got[r * n + j] as f64 - want).abs();
                        assert!(
                            diff <= 1e-5 * scale.max(1.0),
                            "type {ty}, {m}x{k} by {n}: ({r}, {j}) is {} against {want}",
                            got[r * n + j]
                        );
                    }
                }
            }
        }
    }

    /// The kernels of a few-row product with `f32` activations that this CPU runs for `ty`.
    fn f32_kernels(ty: u32) -> Vec<F32Kernel> {
        F32Kernel::ALL
            .iter()
            .copied()
            .filter(|kernel| kernel.applies(ty))
            .collect()
    }

    #[test]
    fn every_few_row_kernel_gives_the_products_with_each_rows_bits_its_own() {
        // Each kernel this CPU runs (not only the fastest): the products against f64 sums of the
        // decoded weights, then the bits of an output alone against the same output beside 6
        // other rows, and from a later weight row on (as a task starts).
        for ty in [GGML_TYPE_Q4_0, GGML_TYPE_Q4_1, GGML_TYPE_Q8_0] {
            let (n, k, rows) = (37, 160, 7);
            let w = random_matrix(ty, n, k, ty + 21);
            let dense = w.to_f32();
            let x = activations(rows, k, 5);
            for kernel in f32_kernels(ty) {
                let product = |m: usize, start: usize| {
                    let mut out = vec![0.0f32; (n - start) * m];
                    let x = &x[..m * k];
                    dots_by(kernel, (x, &block_sums(x)), m, &w, start, &mut out);
                    out
                };
                let all = product(rows, 0);
                for r in 0..rows {
                    for j in 0..n {
                        let terms = (0..k).map(|i| x[r * k + i] as f64 * dense[j * k + i] as f64);
                        let want: f64 = terms.clone().sum();
                        let scale: f64 = terms.map(f64::abs).sum();
                        let got = all[j * rows + r] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * scale.max(1.0),
                            "type {ty}, {kernel:?}: ({r}, {j}) is {got} against {want}"
                        );
                    }
                }
                let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                for m in 1..rows {
                    let some = product(m, 0);
                    for r in 0..m {
                        let alone: Vec<f32> = (0..n).map(|j| some[j * m + r]).collect();
                        let beside: Vec<f32> = (0..n).map(|j| all[j * rows + r]).collect();
                        assert_eq!(
                            bits(&alone),
                            bits(&beside),
                            "type {ty}, {kernel:?}: row {r} of {m}"
                        );
                    }
                }
                assert_eq!(
                    bits(&product(rows, 5)),
                    bits(&all[5 * rows..]),
                    "type {ty}, {kernel:?}"
                );
            }
        }
    }

    #[test]
    fn bf16_products_equal_the_decoded_matrix_bf16_products_bit_for_bit() {
        // The decoded weight rounds to the same bf16 words whichever layout it comes from, so
        // a quantized weight multiplies as its decoded dense copy does; several passes of
        // packed columns (`PACKED_WORDS`) for a long matrix.
        for (ty, n, k) in [
            (GGML_TYPE_Q4_1, 37, 96),
            (GGML_TYPE_Q8_0, 100, 64),
            (GGML_TYPE_Q4_K, 9, 256),
            (GGML_TYPE_Q8_0, 3000, 3 * 1024),
        ] {
            let w = random_matrix(ty, n, k, ty + 3);
            let dense = w.to_f32();
            let mut dense_kn = vec![0.0f32; k * n];
            for j in 0..n {
                for i in 0..k {
                    dense_kn[i * n + j] = dense[j * k + i];
                }
            }
            let m = MAX_THIN + 7;
            let x = activations(m, k, 11);
            let got = matmul_bf16(&x, m, &w);
            let want = super::super::bf16::product(&x, m, k, n, |first, cols| {
                super::super::bf16::Packed::from_k_major(&dense_kn[first..], k, cols, n)
            });
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "type {ty}, {n}x{k}: bf16 products differ"
            );
            // And they are the product's value to bf16's rounding.
            let f32 = matmul(&x, m, &w);
            let scale = f32.iter().fold(0.0f32, |s, v| s.max(v.abs()));
            let diff = got
                .iter()
                .zip(&f32)
                .fold(0.0f32, |s, (a, b)| s.max((a - b).abs()));
            assert!(
                diff > 0.0 && diff < 2e-2 * scale,
                "type {ty}: off by {diff} of {scale}"
            );
        }
    }

    #[test]
    fn products_inside_rayon_tasks_agree_with_products_outside() {
        // Many-row products run at once from rayon tasks (each worker with its buffer, and a
        // worker waiting on its own product's tasks free to pick up another whole product) give
        // what one product alone gives.
        let w = random_matrix(GGML_TYPE_Q4_1, 1024, 256, 5);
        let x = activations(64, 256, 2);
        let want = matmul(&x, 64, &w);
        let results: Vec<Vec<f32>> = (0..64)
            .into_par_iter()
            .map(|_| matmul(&x, 64, &w))
            .collect();
        for got in results {
            assert_eq!(got, want);
        }
    }

    #[test]
    fn products_of_several_weights_at_once_give_each_ones_bits() {
        // A layer's q, k and v (or gate and up) in different types, sizes and tasks; Q6_K has
        // no register kernel; f32 and 8-bit activations; a few rows, and more than that.
        let k = 96;
        for precision in [ActivationPrecision::F32, ActivationPrecision::Int8] {
            let ws: Vec<QuantizedMatrix> = [
                (GGML_TYPE_Q4_1, 200),
                (GGML_TYPE_Q8_0, 64),
                (GGML_TYPE_Q4_0, 33),
                (GGML_TYPE_Q6_K, 8),
            ]
            .into_iter()
            .enumerate()
            .map(|(i, (ty, rows))| {
                let k = if ty == GGML_TYPE_Q6_K { 256 } else { k };
                random_matrix(ty, rows, k, 30 + i as u32).with_activation_precision(precision)
            })
            .collect();
            let (same_width, wide) = ws.split_at(3);
            for m in [1, 3, MAX_THIN, MAX_THIN + 1] {
                let x = activations(m, k, 40 + m as u32);
                let each: Vec<Vec<f32>> = same_width.iter().map(|w| matmul(&x, m, w)).collect();
                let together = matmul_many(&x, m, &same_width.iter().collect::<Vec<_>>());
                let bits = |v: &[Vec<f32>]| -> Vec<Vec<u32>> {
                    v.iter()
                        .map(|o| o.iter().map(|x| x.to_bits()).collect())
                        .collect()
                };
                assert_eq!(bits(&together), bits(&each), "{precision:?}, {m} rows");
                let x = activations(m, 256, 50);
                let one = matmul_many(&x, m, &[&wide[0]]);
                assert_eq!(
                    bits(&one),
                    bits(&[matmul(&x, m, &wide[0])]),
                    "Q6_K, {m} rows"
                );
            }
        }
    }

    #[test]
    fn a_matrix_without_columns_gives_zeros() {
        let w = QuantizedMatrix::new(GGML_TYPE_Q8_0, 5, 0, Vec::new()).unwrap();
        for m in [1, MAX_THIN + 3] {
            assert_eq!(matmul(&[], m, &w), vec![0.0; m * 5]);
        }
    }

    #[test]
    fn vector_decoding_gives_the_reference_values_bit_for_bit() {
        for ty in [GGML_TYPE_Q4_0, GGML_TYPE_Q4_1, GGML_TYPE_Q8_0] {
            let w = random_matrix(ty, 23, 96, ty + 7);
            let want = w.to_f32();
            let mut got = vec![0.0f32; 20 * 96];
            decode_rows(&w, 3, &mut got);
            assert!(
                got.iter()
                    .zip(&want[3 * 96..])
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "type {ty}: vector decoding differs from the reference"
            );
        }
    }

    /// [`matmul`] with 8-bit activations.
    fn int8_product(x: &[f32], m: usize, w: &QuantizedMatrix) -> Vec<f32> {
        matmul(
            x,
            m,
            &w.clone()
                .with_activation_precision(ActivationPrecision::Int8),
        )
    }

    /// Whether this CPU runs the 8-bit kernels (else the products are the `f32` ones).
    fn int8_kernels_run() -> bool {
        #[cfg(target_arch = "x86_64")]
        if avx2::applies(GGML_TYPE_Q8_0) {
            return true;
        }
        eprintln!("SKIP: no AVX2 + FMA + F16C here: 8-bit activations multiply as f32");
        false
    }

    /// The 8-bit kernels this CPU runs for `ty`.
    fn int8_kernels(ty: u32) -> Vec<Kernel> {
        #[cfg(target_arch = "x86_64")]
        {
            let mut kernels = Vec::new();
            if super::super::vnni::applies(ty) {
                kernels.push(Kernel::Vnni);
            } else {
                eprintln!("no AVX-512 VNNI here: its kernel is not tested");
            }
            if avx2::applies(ty) {
                kernels.push(Kernel::Avx2);
            }
            kernels
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = ty;
            Vec::new()
        }
    }

    /// `x` times `w` with 8-bit activations, by `kernel`, as `few_rows` lays out its output.
    fn int8_product_by(x: &[f32], m: usize, w: &QuantizedMatrix, kernel: Kernel) -> Vec<f32> {
        let rows = Int8Rows::for_kernel(x, m, w, kernel).expect("a kernel runs here");
        let n = w.rows();
        let mut by_row = vec![0.0f32; n * m];
        // Two tasks' worth, to cover a start past row 0.
        let half = n / 2;
        int8_dots(&rows, w, 0, &mut by_row[..half * m]);
        int8_dots(&rows, w, half, &mut by_row[half * m..]);
        let mut out = vec![0.0f32; m * n];
        for (j, row) in by_row.chunks_exact(m).enumerate() {
            for (r, &v) in row.iter().enumerate() {
                out[r * n + j] = v;
            }
        }
        out
    }

    #[test]
    fn int8_products_are_the_weights_times_the_rounded_activations() {
        if !int8_kernels_run() {
            return;
        }
        // Rows of 1 to 7 blocks: whole groups of the VNNI kernel and every remainder.
        for (ty, n, k) in [
            (GGML_TYPE_Q4_1, 37, 96),
            (GGML_TYPE_Q4_1, 9, 224),
            (GGML_TYPE_Q4_1, 12, 128),
            (GGML_TYPE_Q8_0, 100, 64),
            (GGML_TYPE_Q8_0, 11, 160),
            (GGML_TYPE_Q4_0, 65, 32),
            (GGML_TYPE_Q4_0, 10, 192),
            (GGML_TYPE_Q4_1, 24, 576),
            (GGML_TYPE_Q8_0, 24, 576),
        ] {
            let w = random_matrix(ty, n, k, ty + 3);
            let dense = w.to_f32();
            let blocks = k / 32;
            for (m, kernel) in [1, 2, 3, 4, 5, 7, 8, MAX_THIN]
                .into_iter()
                .flat_map(|m| int8_kernels(ty).into_iter().map(move |kernel| (m, kernel)))
            {
                // Blocks of very different sizes, one of zeros.
                let mut x = activations(m, k, m as u32 + 11);
                for (i, v) in x.iter_mut().enumerate() {
                    *v *= [1.0, 1e-3, 0.0, 40.0][(i / 32) % 4];
                }
                let rows = Int8Rows::new(&x, k);
                let got = int8_product_by(&x, m, &w, kernel);
                if Kernel::best(ty) == Some(kernel) {
                    assert_eq!(got, int8_product(&x, m, &w), "{kernel:?} is the one used");
                }
                let f32s = matmul(&x, m, &w);
                for r in 0..m {
                    for j in 0..n {
                        let (mut want, mut scale, mut bound) = (0.0f64, 0.0f64, 0.0f64);
                        for i in 0..k {
                            let s = rows.scales[r * blocks + i / 32] as f64;
                            let (wi, a) = (dense[j * k + i] as f64, rows.values[r * k + i] as f64);
                            want += wi * s * a;
                            scale += (wi * x[r * k + i] as f64).abs();
                            bound += wi.abs() * s / 2.0;
                        }
                        let (g, f) = (got[r * n + j] as f64, f32s[r * n + j] as f64);
                        let slack = 1e-5 * scale.max(1.0);
                        assert!(
                            (g - want).abs() <= slack,
                            "{kernel:?}, type {ty}, {m}x{k} by {n}: ({r}, {j}) is {g} against {want}"
                        );
                        assert!(
                            (g - f).abs() <= bound + slack,
                            "type {ty}: ({r}, {j}) moved {} from f32's {f}, beyond {bound}",
                            (g - f).abs()
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn blocks_too_small_for_their_scale_stay_within_127_levels_on_every_kernel() {
        // A maximum of 1e-37 makes `1 / scale` infinite: the values clamp to ±127 (a -128 would
        // lose its sign in the AVX2 kernel's `sign` trick). One Q8_0 block, d = 1, q = -128, 5.
        let mut x = vec![0.0f32; 32];
        (x[0], x[1]) = (-1e-37, 0.7e-37);
        let rows = Int8Rows::new(&x, 32);
        assert_eq!(&rows.values[..2], &[-127, 127]);
        let mut bytes = half::f16::from_f32(1.0).to_le_bytes().to_vec();
        bytes.extend([-128i8 as u8, 5]);
        bytes.resize(34, 0);
        let w = QuantizedMatrix::new(GGML_TYPE_Q8_0, 1, 32, bytes).unwrap();
        let want = rows.scales[0] as f64 * (-128.0 * -127.0 + 5.0 * 127.0);
        for kernel in int8_kernels(GGML_TYPE_Q8_0) {
            let got = int8_product_by(&x, 1, &w, kernel)[0] as f64;
            assert!(
                (got - want).abs() <= want.abs() * 1e-3,
                "{kernel:?}: {got} against {want}"
            );
        }
    }

    #[test]
    fn rounding_halves_away_from_zero_equals_f32_round() {
        let mut values = vec![
            0.5,
            -0.5,
            1.5,
            -1.5,
            2.5,
            -2.5,
            126.5,
            -126.5,
            0.49999997,
            -0.49999997,
            0.0,
            -0.0,
            1e-30,
            8388607.5,
            8388608.0,
            3e9,
            f32::INFINITY,
        ];
        values.extend(
            sequence(4000, 5)
                .iter()
                .map(|&u| (u as f32 / u32::MAX as f32 - 0.5) * 300.0),
        );
        for v in values {
            assert_eq!(round_half_away(v).to_bits(), v.round().to_bits(), "{v}");
        }
        assert!(round_half_away(f32::NAN).is_nan());
    }

    #[test]
    fn int8_activations_round_to_the_nearest_of_255_levels_and_keep_nans() {
        // Block 0: -20 ..= 11 (scale 20 / 127); block 1: 0, 0.25, ..., 7.5 and -31.75 (scale
        // 0.25, every value on a level).
        let mut x: Vec<f32> = (0..32).map(|i| i as f32 - 20.0).collect();
        x.extend((0..32).map(|i| i as f32 * 0.25));
        x[63] = -127.0 * 0.25;
        let rows = Int8Rows::new(&x, 64);
        assert_eq!(rows.scales, vec![20.0 / 127.0, 0.25]);
        assert_eq!(rows.values[0], -127);
        assert_eq!(rows.values[31], 70); // 11 · 127 / 20 = 69.85
        assert_eq!(rows.values[30], 64); // 10 · 127 / 20 = 63.5, away from zero
        assert_eq!(rows.values[32..63], (0..31).collect::<Vec<i8>>());
        assert_eq!(rows.values[63], -127);
        assert_eq!(
            rows.sums[1],
            0.25 * rows.values[32..].iter().map(|&a| a as f32).sum::<f32>()
        );
        let zeros = Int8Rows::new(&[0.0; 32], 32);
        assert_eq!(
            (zeros.scales[0], zeros.values, zeros.sums[0]),
            (0.0, vec![0; 32], 0.0)
        );
        if !int8_kernels_run() {
            return;
        }
        // A NaN reaches its row's products, not the other rows'.
        let w = random_matrix(GGML_TYPE_Q4_1, 40, 64, 1);
        let mut x = activations(3, 64, 4);
        x[64 + 40] = f32::NAN;
        let got = int8_product(&x, 3, &w);
        assert!(got[40..80].iter().all(|v| v.is_nan()), "{:?}", &got[40..80]);
        assert!(got[..40].iter().chain(&got[80..]).all(|v| v.is_finite()));
    }

    #[test]
    fn a_rows_bits_do_not_depend_on_the_rows_beside_it() {
        // A chunk's candidate must not change with how many chunks share its batch: every row
        // of a few-row product is computed alone.
        for ty in [
            GGML_TYPE_Q4_1,
            GGML_TYPE_Q4_0,
            GGML_TYPE_Q8_0,
            GGML_TYPE_Q4_K,
        ] {
            let k = if ty == GGML_TYPE_Q4_K { 256 } else { 160 };
            let x = activations(MAX_THIN, k, 3);
            for precision in [ActivationPrecision::F32, ActivationPrecision::Int8] {
                let w = random_matrix(ty, 70, k, 9).with_activation_precision(precision);
                let all = matmul(&x, MAX_THIN, &w);
                for m in [1, 2, 3, 4, 5, 6] {
                    let some = matmul(&x[..m * k], m, &w);
                    for r in 0..m {
                        let (a, b) = (&all[r * 70..(r + 1) * 70], &some[r * 70..(r + 1) * 70]);
                        assert!(
                            a.iter().zip(b).all(|(p, q)| p.to_bits() == q.to_bits()),
                            "type {ty}, {precision:?}: row {r} of {m} differs from the same row of \
                         {MAX_THIN}"
                        );
                    }
                }
            }
        }
    }
}
