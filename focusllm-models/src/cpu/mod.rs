//! Fused CPU kernels for burn's flex backend (f32 compute): attention (over f32 keys and values,
//! or a compact cache's f16, bf16 or 8-bit ones), RoPE and the SwiGLU activation, and the row
//! copies of KV buffers.
//!
//! The burn-op versions of these passes ([`crate::llama`]'s `masked_attention` and
//! [`crate::rope::apply_rope`]) stay the reference and serve every other backend and dtype (wgpu
//! and CUDA keep their own kernels; autodiff training keeps burn's backward). On flex they cost
//! strided copies (head transposes, the `rotate_half` concatenation), a materialised score matrix
//! and a mask tensor per forward, single-threaded element-wise passes and a scalar `expf`; the
//! kernels here read the projections' `[batch, seq, heads, dim]` layout in place, skip the keys a
//! block cannot see, run an online softmax with a vectorised `exp`, and spread (batch, key/value
//! head, query block) tasks over rayon's pool.
//!
//! Why a type check rather than a backend-extension trait (`trait FocusBackend: Backend`): burn
//! has no specialisation, so an extension trait would put a new bound on every generic item of
//! this crate and of our users' code, and every backend (and `Autodiff<B>`) would need an impl.
//! A `TypeId` comparison selects the flex path at no cost and leaves the generic API as it is.

/// `$tile::<R>($t)` with the constant `R` equal to `$rows` (1 to 12, the rows of a tile): the
/// microkernels keep their sums in arrays sized at compile time.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_macros))]
macro_rules! tile_of_rows {
    ($rows:expr, $tile:ident, $t:expr) => {
        match $rows {
            12 => $tile::<12>($t),
            11 => $tile::<11>($t),
            10 => $tile::<10>($t),
            9 => $tile::<9>($t),
            8 => $tile::<8>($t),
            7 => $tile::<7>($t),
            6 => $tile::<6>($t),
            5 => $tile::<5>($t),
            4 => $tile::<4>($t),
            3 => $tile::<3>($t),
            2 => $tile::<2>($t),
            _ => $tile::<1>($t),
        }
    };
}

/// The body of a few-row quantized product's `dots_of::<T>`: `out[j · m + r] = x_r · w_{start +
/// j}` for the `out.len() / m` weight rows from `start`, each weight row against the activation
/// rows in groups of 3 (then 2 or 1) by `$group::<T, R>((x, sums), (k, blocks, block_bytes), r0,
/// row_data, out)`, each decoded block serving its group. Used inside an `unsafe fn` whose
/// callers promise that `$group` runs on this CPU for `w`'s type; the sizes it reads are asserted.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_macros))]
macro_rules! weight_rows_in_groups {
    ($group:ident::<$t:ident>, ($x:expr, $sums:expr), $m:expr, $w:expr, $start:expr, $out:expr) => {{
        let (x, sums, m, w, start, out): (
            &[f32],
            &[f32],
            usize,
            &QuantizedMatrix,
            usize,
            &mut [f32],
        ) = ($x, $sums, $m, $w, $start, $out);
        let k = w.cols();
        let blocks = k / 32;
        let rows = out.len() / m;
        assert!(x.len() >= m * k && sums.len() >= m * blocks && k.is_multiple_of(32));
        let shape = (k, blocks, w.row_bytes() / blocks.max(1));
        for j in 0..rows {
            let data = w.row_data(start + j, 1).as_ptr();
            let out = &mut out[j * m..(j + 1) * m];
            let mut r = 0;
            // SAFETY: row `start + j` has `blocks` blocks of `row_bytes / blocks` bytes, every
            // activation row `k` floats and `blocks` sums (asserted); the caller's promise
            // covers the CPU's features.
            unsafe {
                while r + 3 <= m {
                    $group::<$t, 3>((x, sums), shape, r, data, &mut out[r..]);
                    r += 3;
                }
                match m - r {
                    2 => $group::<$t, 2>((x, sums), shape, r, data, &mut out[r..]),
                    1 => $group::<$t, 1>((x, sums), shape, r, data, &mut out[r..]),
                    _ => {}
                }
            }
        }
    }};
}

mod attention;
mod bf16;
mod cache;
mod exp;
mod exp2;
mod few_rows;
mod matmul;
#[cfg(target_arch = "x86_64")]
mod q4_avx512;
mod quantized;
mod rope;
mod tiles;
mod view;
#[cfg(target_arch = "x86_64")]
mod vnni;

use std::any::{Any, TypeId};

use burn::tensor::{DType, Int, Tensor, TensorPrimitive, backend::Backend};
use burn_flex::{Flex, FlexTensor};

use crate::kernels::Kernels;

pub(crate) use attention::Visibility;

/// Whether this CPU runs the kernels' hand-written vector code (x86-64 with AVX2 and FMA: every
/// x86-64 CPU with AVX2 but a few has FMA too).
#[cfg(target_arch = "x86_64")]
fn avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// Whether the fused kernels serve tensors of backend `B` in `dtype` under `kernels`.
pub(crate) fn applies<B: Backend>(kernels: Kernels, dtype: DType) -> bool {
    kernels == Kernels::Fused && dtype == DType::F32 && TypeId::of::<B>() == TypeId::of::<Flex>()
}

/// The flex tensor behind the integer tensor `t` (`B` must be [`Flex`]).
fn int_to_flex<B: Backend, const D: usize>(t: Tensor<B, D, Int>) -> FlexTensor {
    let any: Box<dyn Any> = Box::new(t.into_primitive());
    *any.downcast::<FlexTensor>()
        .expect("the caller checked that the backend is flex")
}

/// `t` as an integer tensor of `B` (`B` must be [`Flex`]).
fn int_from_flex<B: Backend, const D: usize>(t: FlexTensor) -> Tensor<B, D, Int> {
    let any: Box<dyn Any> = Box::new(t);
    let p = *any
        .downcast::<B::IntTensorPrimitive>()
        .expect("the caller checked that the backend is flex");
    Tensor::from_primitive(p)
}

/// The flex tensor behind `t` (`B` must be [`Flex`]: check [`applies`] first).
fn to_flex<B: Backend, const D: usize>(t: Tensor<B, D>) -> FlexTensor {
    let TensorPrimitive::Float(p) = t.into_primitive() else {
        unreachable!("a float tensor of the flex backend is not quantized")
    };
    let any: Box<dyn Any> = Box::new(p);
    *any.downcast::<FlexTensor>()
        .expect("the caller checked that the backend is flex")
}

/// `t` as a tensor of `B` (`B` must be [`Flex`]).
fn from_flex<B: Backend, const D: usize>(t: FlexTensor) -> Tensor<B, D> {
    let any: Box<dyn Any> = Box::new(t);
    let p = *any
        .downcast::<B::FloatTensorPrimitive>()
        .expect("the caller checked that the backend is flex");
    Tensor::from_primitive(TensorPrimitive::Float(p))
}

/// RoPE of `x` `[batch, seq, heads, dim]` with `[batch, seq, 1, dim]` tables (see
/// [`crate::rope::apply_rope`], which it equals bit for bit), as a contiguous tensor.
pub(crate) fn apply_rope<B: Backend>(
    x: Tensor<B, 4>,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
) -> Tensor<B, 4> {
    let out = rope::apply(&to_flex(x), &to_flex(cos.clone()), &to_flex(sin.clone()));
    from_flex(out)
}

/// Attention of `q` `[batch, heads, seq, dim]` over `k`/`v` `[batch, kv_heads, keys, dim]` where
/// `visibility` allows, and the mean share of the last query's attention over the first
/// `focus_keys` keys (`[batch, focus_keys]`).
pub(crate) fn attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    visibility: &Visibility,
    focus_keys: Option<usize>,
) -> (Tensor<B, 4>, Option<Tensor<B, 2>>) {
    let (out, focus) = attention::attend(
        &to_flex(q),
        &to_flex(k),
        &to_flex(v),
        visibility,
        focus_keys,
    );
    (from_flex(out), focus.map(from_flex))
}

/// [`attention`] over 8-bit keys and values with per-row scales (`(q, scale)`, scale
/// `[batch, kv_heads, keys, 1]`), widened tile by tile.
pub(crate) fn attention_int8<B: Backend>(
    q: Tensor<B, 4>,
    k: (Tensor<B, 4, Int>, Tensor<B, 4>),
    v: (Tensor<B, 4, Int>, Tensor<B, 4>),
    visibility: &Visibility,
    focus_keys: Option<usize>,
) -> (Tensor<B, 4>, Option<Tensor<B, 2>>) {
    let (kq, ks) = (int_to_flex(k.0), to_flex(k.1));
    let (vq, vs) = (int_to_flex(v.0), to_flex(v.1));
    let (out, focus) = attention::attend_scaled(
        &to_flex(q),
        (&kq, Some(&ks)),
        (&vq, Some(&vs)),
        visibility,
        focus_keys,
    );
    (from_flex(out), focus.map(from_flex))
}

/// Whether `[m, k] · [k, n]` in `dtype` runs as a thin product on every core ([`thin_matmul`]).
pub(crate) fn is_thin(m: usize, n: usize, dtype: DType) -> bool {
    matmul::is_thin(m, n, dtype)
}

/// `a` `[m, k]` · `b` `[k, n]` split across rayon's pool, along `k` when `m` is the thin side and
/// along `m` when `n` is (`B` must be [`Flex`] and the product thin: check [`is_thin`] first).
pub(crate) fn thin_matmul<B: Backend>(a: Tensor<B, 2>, b: Tensor<B, 2>) -> Tensor<B, 2> {
    from_flex(matmul::thin_matmul(&to_flex(a), &to_flex(b)))
}

/// `x` `[m, k]` times `wᵀ` for a quantized weight `w` `[n, k]` (see [`quantized::matmul`]; with
/// `bf16`, both rounded to bf16: [`quantized::matmul_bf16`]; `B` must be [`Flex`] and `x` f32).
pub(crate) fn quantized_matmul<B: Backend>(
    x: Tensor<B, 2>,
    w: &crate::quantized::QuantizedMatrix,
    bf16: bool,
) -> Tensor<B, 2> {
    let x = to_flex(x).to_contiguous();
    let m = x.layout().shape()[0];
    let out = if bf16 {
        quantized::matmul_bf16(x.storage::<f32>(), m, w)
    } else {
        quantized::matmul(x.storage::<f32>(), m, w)
    };
    from_flex(FlexTensor::from_data(burn::tensor::TensorData::new(
        out,
        [m, w.rows()],
    )))
}

/// [`quantized_matmul`] (f32 products) of the same `x` `[m, k]` by several weights of width `k`,
/// few rows at a time in one split across the cores (see `quantized::matmul_many`).
pub(crate) fn quantized_matmul_many<B: Backend>(
    x: Tensor<B, 2>,
    ws: &[&crate::quantized::QuantizedMatrix],
) -> Vec<Tensor<B, 2>> {
    let x = to_flex(x).to_contiguous();
    let m = x.layout().shape()[0];
    quantized::matmul_many(x.storage::<f32>(), m, ws)
        .into_iter()
        .zip(ws)
        .map(|(out, w)| {
            from_flex(FlexTensor::from_data(burn::tensor::TensorData::new(
                out,
                [m, w.rows()],
            )))
        })
        .collect()
}

/// Whether this CPU multiplies bf16 operands at twice f32's rate (AVX-512 BF16).
pub(crate) fn has_bf16_dot() -> bool {
    bf16::has_dot()
}

/// `x` `[m, k]` · `w` `[k, n]` with both operands rounded to bf16 and f32 sums (see [`bf16`];
/// `B` must be [`Flex`] and both f32).
pub(crate) fn bf16_matmul<B: Backend>(x: Tensor<B, 2>, w: Tensor<B, 2>) -> Tensor<B, 2> {
    let [m, k] = x.dims();
    let n = w.dims()[1];
    let (x, w) = (to_flex(x).to_contiguous(), to_flex(w).to_contiguous());
    let weight = w.storage::<f32>();
    let out = bf16::product(x.storage::<f32>(), m, k, n, |first, cols| {
        bf16::Packed::from_k_major(&weight[first..], k, cols, n)
    });
    from_flex(FlexTensor::from_data(burn::tensor::TensorData::new(
        out,
        [m, n],
    )))
}

/// `silu(gate) · up` (SwiGLU's activation) in one pass.
pub(crate) fn swiglu<B: Backend>(gate: Tensor<B, 3>, up: Tensor<B, 3>) -> Tensor<B, 3> {
    use rayon::prelude::*;
    let (gate, up) = (to_flex(gate).to_contiguous(), to_flex(up).to_contiguous());
    let shape = gate.layout().shape().clone();
    let mut out = gate.storage::<f32>().to_vec();
    let up = up.storage::<f32>();
    // Pieces of 16K floats: enough work per task, one per core at least for a few tokens.
    out.par_chunks_mut(1 << 14)
        .zip(up.par_chunks(1 << 14))
        .for_each(|(g, u)| exp::swiglu(g, u));
    from_flex(FlexTensor::from_data(burn::tensor::TensorData::new(
        out,
        shape.to_vec(),
    )))
}

/// Whether `B` is the flex backend (whatever the dtype: the copies below are exact).
pub(crate) fn is_flex<B: Backend>() -> bool {
    TypeId::of::<B>() == TypeId::of::<Flex>()
}

/// `work()` on a thread of rayon's pool (at once when called from one). The kernels split each
/// product and attention across the pool: called from outside it, every split hands its tasks
/// to the pool and puts the caller to sleep until they are done, hundreds of times in a decoding
/// step; from inside, the caller works on its own tasks and the splits cost a queue operation.
pub(crate) fn on_pool<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return work();
    }
    // `scope` runs its closure on a thread of the global pool.
    rayon::scope(|_| work())
}

/// `t` `[b, h, len, d]` copied into the first `len` rows of a new contiguous `[b, h, capacity,
/// d]` tensor (the rest zero), row by row on rayon (`B` must be [`Flex`]). flex's `cat` and
/// `slice_assign` walk a strided input element by element on one thread.
pub(crate) fn with_capacity<B: Backend>(t: Tensor<B, 4>, capacity: usize) -> Tensor<B, 4> {
    let t = view::inner_contiguous(&to_flex(t));
    let out = match t.dtype() {
        DType::F32 => cache::with_capacity::<f32>(&t, capacity),
        DType::F16 => cache::with_capacity::<half::f16>(&t, capacity),
        DType::BF16 => cache::with_capacity::<half::bf16>(&t, capacity),
        other => unreachable!("KV caches are float tensors, not {other:?}"),
    };
    from_flex(out)
}

/// `t` (f32) rounded to `dtype` (f16 or bf16, to nearest even) in the first rows of a new tensor
/// of `capacity` positions, in one pass on every core: a cast and then a growth would write two
/// new copies, one thread each. `None` (and `t` untouched) for other dtypes.
///
/// Every row a flex KV cache stores in f16 or bf16 is rounded here (see `llama::kv_rows`), not by
/// flex's cast: that one widens to f64 first, and `half`'s f64-to-bf16 rounding looks only at the
/// f64's upper 32 bits, which lose the f32's lowest three mantissa bits (1.0039064, `0x3F808001`,
/// becomes `0x3F80` there instead of `0x3F81`; 227,808 of the 2^32 f32 patterns differ for bf16,
/// none for f16 on a CPU with F16C).
pub(crate) fn cast_with_capacity<B: Backend>(
    t: &Tensor<B, 4>,
    dtype: DType,
    capacity: usize,
) -> Option<Tensor<B, 4>> {
    use half::slice::HalfFloatSliceExt;
    if t.dtype() != DType::F32 || !matches!(dtype, DType::F16 | DType::BF16) {
        return None;
    }
    let t = view::inner_contiguous(&to_flex(t.clone()));
    let out = if dtype == DType::F16 {
        cache::with_capacity_as::<f32, half::f16>(&t, capacity, |s, d| d.convert_from_f32_slice(s))
    } else {
        cache::with_capacity_as::<f32, half::bf16>(&t, capacity, |s, d| d.convert_from_f32_slice(s))
    };
    Some(from_flex(out))
}

/// [`with_capacity`] for 8-bit rows.
pub(crate) fn int_with_capacity<B: Backend>(
    t: Tensor<B, 4, Int>,
    capacity: usize,
) -> Tensor<B, 4, Int> {
    let t = view::inner_contiguous(&int_to_flex(t));
    int_from_flex(cache::with_capacity::<i8>(&t, capacity))
}

/// [`write_rows`] for 8-bit rows.
pub(crate) fn int_write_rows<B: Backend>(
    buffer: Tensor<B, 4, Int>,
    at: usize,
    value: Tensor<B, 4, Int>,
) -> Tensor<B, 4, Int> {
    let mut buffer = int_to_flex(buffer);
    let value = view::inner_contiguous(&int_to_flex(value));
    cache::write_rows::<i8>(&mut buffer, at, &value);
    int_from_flex(buffer)
}

/// `buffer` with rows `at..at + n` (dimension 2) replaced by `value` `[b, h, n, d]`: written in
/// place when `buffer` is contiguous and its storage unshared, else into a copy (`B` must be
/// [`Flex`]; flex's `slice_assign` always copies the whole buffer first).
pub(crate) fn write_rows<B: Backend>(
    buffer: Tensor<B, 4>,
    at: usize,
    value: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let mut buffer = to_flex(buffer);
    let value = view::inner_contiguous(&to_flex(value));
    match buffer.dtype() {
        DType::F32 => cache::write_rows::<f32>(&mut buffer, at, &value),
        DType::F16 => cache::write_rows::<half::f16>(&mut buffer, at, &value),
        DType::BF16 => cache::write_rows::<half::bf16>(&mut buffer, at, &value),
        other => unreachable!("KV caches are float tensors, not {other:?}"),
    }
    from_flex(buffer)
}

/// The address of `t`'s storage (`B` must be [`Flex`]): tests check that writes are in place.
#[cfg(test)]
pub(crate) fn storage_address<B: Backend, const D: usize>(t: &Tensor<B, D>) -> usize {
    to_flex(t.clone()).bytes().as_ptr() as usize
}

/// Whether two float slices are equal bit for bit (the batch-invariance tests).
#[cfg(test)]
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[cfg(test)]
mod tests {
    use super::on_pool;

    #[test]
    fn work_runs_on_the_pool_and_stays_on_its_thread_there() {
        // From outside the pool, on one of its threads.
        assert!(rayon::current_thread_index().is_none());
        let index = on_pool(rayon::current_thread_index);
        assert!(index.is_some());
        // From a thread of the pool, on that same thread.
        let (outer, inner) = rayon::scope(|_| {
            (
                rayon::current_thread_index(),
                on_pool(rayon::current_thread_index),
            )
        });
        assert_eq!(inner, outer);
        // Its result comes back.
        assert_eq!(on_pool(|| (1..=10).sum::<i32>()), 55);
    }
}
