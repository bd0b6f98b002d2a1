//! Matrix products with a thin side (a few rows of activations against a weight matrix) on every
//! core.
//!
//! burn-flex hands a product to `gemm` single-threaded below 192³ multiply-adds, and for one row
//! `gemm` runs its GEMV on one core whatever it is asked: a decoding step's projections (1 × 576
//! by 576 × 1536 for SmolLM2) and its LM head then stream the weights at one core's memory
//! bandwidth. Here the weight is cut into contiguous blocks of rows, one `gemm` call each on
//! rayon's pool (still its GEMV for a single row), and the partial products added; for the LM
//! head's `embed · xᵀ` the table's rows are split. So all cores stream their share of the weights.
//! Results equal burn's product up to the order of the sums, and a row's bits do not depend on
//! how many rows (2 to [`MAX_THIN`]) share the product: the split follows `k` and the core count
//! only. A lone row is `gemm`'s GEMV, which adds in another order.

use burn::tensor::DType;
use burn_flex::FlexTensor;
use gemm::{Parallelism, gemm};
use rayon::prelude::*;

/// Products with at most this many rows (or columns, for the LM head's `embed · xᵀ`) on the thin
/// side take this path: a generated token, an exact step's two rows per chunk, a few batched
/// sessions. Beyond it `gemm`'s own blocking and threading pay off.
pub(crate) const MAX_THIN: usize = 16;

/// Rows of the weight (or of the LM head's table) per task at least: enough work to cover a
/// task's overhead (a few microseconds) at about a core's memory bandwidth.
const MIN_PIECE: usize = 64;

/// A 2-d view's storage offset and strides, in elements.
struct Strided {
    start: usize,
    rows: isize,
    cols: isize,
}

impl Strided {
    fn of(t: &FlexTensor) -> Self {
        let s = t.layout().strides();
        Self {
            start: t.layout().start_offset(),
            rows: s[0],
            cols: s[1],
        }
    }
}

/// `lhs` `[m, k]` · `rhs` `[k, n]` (f32, any strides) as a new contiguous `[m, n]` tensor, split
/// across rayon's pool: along `k` when `m` is the thin side, along `m` when `n` is.
pub(crate) fn thin_matmul(lhs: &FlexTensor, rhs: &FlexTensor) -> FlexTensor {
    let (ls, rs) = (lhs.layout().shape(), rhs.layout().shape());
    let (m, k, n) = (ls[0], ls[1], rs[1]);
    assert_eq!(rs[0], k, "thin_matmul: [{m}, {k}] · [{}, {n}]", rs[0]);
    let (a, b) = (Strided::of(lhs), Strided::of(rhs));
    let (lhs_data, rhs_data) = (lhs.storage::<f32>(), rhs.storage::<f32>());
    let mut out = vec![0.0f32; m * n];

    // One product over rows `(r0, rows)` of `lhs`, its columns and `rhs`'s rows `(k0, depth)`, and
    // `rhs`'s columns `(c0, cols)`, into `dst` (rows `n` apart). Safety: the caller passes disjoint
    // pieces of its outputs, and the offsets stay inside the views' own bounds.
    let piece = |dst: *mut f32,
                 (r0, rows): (usize, usize),
                 (k0, depth): (usize, usize),
                 (c0, cols): (usize, usize)| unsafe {
        let at = |s: &Strided, i: usize, j: usize| {
            s.start as isize + i as isize * s.rows + j as isize * s.cols
        };
        gemm(
            rows,
            cols,
            depth,
            dst,
            1,
            n as isize,
            false,
            lhs_data.as_ptr().offset(at(&a, r0, k0)),
            a.cols,
            a.rows,
            rhs_data.as_ptr().offset(at(&b, k0, c0)),
            b.cols,
            b.rows,
            0.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        )
    };

    let tasks = rayon::current_num_threads() * 2;
    if n >= m {
        // Few rows of activations: split the shared dimension, so that each task streams a
        // contiguous block of the weight's rows (splitting its columns instead makes every task
        // read short strided runs, which halved the bandwidth here), and add the partial sums.
        let depth = k.div_ceil(tasks).max(MIN_PIECE).min(k.max(1));
        let partials: Vec<Vec<f32>> = (0..k.div_ceil(depth))
            .into_par_iter()
            .map(|i| {
                let k0 = i * depth;
                let mut part = vec![0.0f32; m * n];
                piece(part.as_mut_ptr(), (0, m), (k0, depth.min(k - k0)), (0, n));
                part
            })
            .collect();
        for part in &partials {
            for (o, p) in out.iter_mut().zip(part) {
                *o += p;
            }
        }
    } else {
        // Few columns (the LM head's `embed · xᵀ`): split the rows, each a contiguous block.
        let height = m.div_ceil(tasks).max(MIN_PIECE).min(m);
        out.par_chunks_mut(height * n)
            .enumerate()
            .for_each(|(i, rows)| {
                piece(
                    rows.as_mut_ptr(),
                    (i * height, rows.len() / n),
                    (0, k),
                    (0, n),
                );
            });
    }
    FlexTensor::from_data(burn::tensor::TensorData::new(out, vec![m, n]))
}

/// Whether [`thin_matmul`] serves an `[m, k] · [k, n]` product in `dtype`.
pub(crate) fn is_thin(m: usize, n: usize, dtype: DType) -> bool {
    dtype == DType::F32 && (1..=MAX_THIN).contains(&m.min(n)) && m.max(n) >= 2 * MIN_PIECE
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use burn::module::Param;
    use burn::nn::Linear;
    use burn::tensor::{Distribution, Tensor};

    use super::{MAX_THIN, is_thin};
    use crate::llama::ops;

    type B = Flex;

    fn random(shape: [usize; 2]) -> Tensor<B, 2> {
        Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
    }

    /// The largest difference between the thin product and burn's, relative to burn's largest
    /// element.
    fn relative_diff(a: Tensor<B, 2>, b: Tensor<B, 2>) -> f32 {
        let want = a.clone().matmul(b.clone());
        let got = super::super::thin_matmul(a, b);
        assert_eq!(got.dims(), want.dims());
        let scale = want.clone().abs().max().into_scalar();
        (got - want).abs().max().into_scalar() / scale
    }

    #[test]
    fn thin_products_equal_burns_on_every_shape() {
        // Rows few, columns many (a step's projections, one task or many, a ragged last task);
        // then the other way round (the tied LM head's `embed · xᵀ`).
        for (m, k, n) in [
            (1, 576, 1536),
            (1, 1536, 576),
            (2, 64, 130),
            (3, 37, 1000),
            (MAX_THIN, 96, 2049),
            (1000, 64, 1),
            (4099, 33, 5),
            (300, 17, MAX_THIN),
        ] {
            assert!(is_thin(m, n, burn::tensor::DType::F32), "{m}x{k}x{n}");
            let diff = relative_diff(random([m, k]), random([k, n]));
            assert!(diff < 1e-5, "{m}x{k}x{n}: relative difference {diff}");
        }
    }

    #[test]
    fn strided_and_offset_operands_are_read_in_place() {
        // A transposed left side (column stride ≠ 1) and a right side narrowed to a window of
        // its columns (start offset, row stride wider than the columns).
        let a = random([300, 3]).transpose();
        let b = random([300, 1200]).narrow(1, 7, 1000);
        let diff = relative_diff(a, b);
        assert!(diff < 1e-5, "relative difference {diff}");
        let a = random([40, 700]).narrow(0, 5, 2);
        let b = random([900, 700]).transpose().narrow(1, 100, 777);
        let diff = relative_diff(a, b);
        assert!(diff < 1e-5, "relative difference {diff}");
    }

    #[test]
    fn products_that_are_not_thin_are_left_to_burn() {
        use burn::tensor::DType;
        assert!(!is_thin(MAX_THIN + 1, 4096, DType::F32));
        assert!(!is_thin(1, 4096, DType::F16));
        // Too little work on the long side to be worth splitting.
        assert!(!is_thin(1, 100, DType::F32));
        // Nothing to split.
        assert!(!is_thin(4096, 0, DType::F32));
    }

    #[test]
    fn a_fused_linear_with_bias_equals_burns() {
        // Qwen2's projections carry a bias; a step's few rows take the thin path, many rows do not.
        let device = Default::default();
        let layer = Linear::<B> {
            weight: Param::from_tensor(random([200, 513])),
            bias: Some(Param::from_tensor(Tensor::random(
                [513],
                Distribution::Normal(0.0, 1.0),
                &device,
            ))),
        };
        for rows in [1, 5, 40] {
            let x = Tensor::<B, 3>::random([1, rows, 200], Distribution::Normal(0.0, 1.0), &device);
            let want = layer.forward(x.clone());
            let products =
                crate::kernels::Products::new(true, crate::kernels::MatmulPrecision::F32);
            let got = ops::linear(x, &layer, products);
            let diff = (got - want).abs().max().into_scalar();
            assert!(diff < 1e-4, "{rows} rows: differs by {diff}");
        }
    }

    #[test]
    fn a_sequences_bf16_products_do_not_depend_on_its_batch() {
        // A sequence of 10 new positions alone (10 rows) and among 4 (40 rows): the same bf16
        // products, bit for bit; a step's 2 rows per sequence stay f32 however many share the
        // batch.
        use crate::kernels::{MatmulPrecision, Products};
        let device = Default::default();
        let layer = Linear::<B> {
            weight: Param::from_tensor(random([200, 300])),
            bias: None,
        };
        let bits = |t: Tensor<B, 3>| t.into_data().to_vec::<f32>().unwrap();
        let bf16 = Products::new(true, MatmulPrecision::Bf16);
        let f32 = Products::new(true, MatmulPrecision::F32);
        for (seq, rounded) in [(10, true), (2, false)] {
            let x = Tensor::<B, 3>::random([4, seq, 200], Distribution::Normal(0.0, 1.0), &device);
            let all = bits(ops::linear(x.clone(), &layer, bf16));
            let alone = bits(ops::linear(x.clone().narrow(0, 1, 1), &layer, bf16));
            assert!(
                super::super::same_bits(&alone, &all[seq * 300..2 * seq * 300]),
                "{seq} positions: alone and among 4 differ"
            );
            let unrounded = bits(ops::linear(x.narrow(0, 1, 1), &layer, f32));
            assert_eq!(alone != unrounded, rounded, "{seq} positions");
        }
    }

    #[test]
    fn a_row_gets_the_same_bits_among_two_or_among_many() {
        // An exact step batches two rows per chunk with however many chunks share the batch
        // (sharded runs batch differently): a row's product must not change in the last bit
        // with the number of rows beside it, from 2 to MAX_THIN. (A lone row is gemm's GEMV,
        // which adds in another order once a piece is deep, as at 4096 x 14336: `ops::project`
        // gives no product a lone row per chunk.)
        let bits = |t: burn::tensor::Tensor<B, 2>| t.into_data().to_vec::<f32>().unwrap();
        for (k, n) in [
            (576, 1536),
            (1536, 576),
            (576, 192),
            (576, 49152),
            (4096, 14336),
        ] {
            let (x, w) = (random([MAX_THIN, k]), random([k, n]));
            let all = bits(super::super::thin_matmul(x.clone(), w.clone()));
            for rows in [2, 3, 6] {
                let part = bits(super::super::thin_matmul(
                    x.clone().narrow(0, 0, rows),
                    w.clone(),
                ));
                assert!(
                    super::super::same_bits(&part, &all[..part.len()]),
                    "{k}x{n}: {rows} rows differ from the same rows among {MAX_THIN}"
                );
            }
        }
        // The LM head's orientation, `embed · xᵀ`: a few columns or many.
        let (embed, x) = (random([4099, 576]), random([576, MAX_THIN]));
        let all = super::super::thin_matmul(embed.clone(), x.clone());
        for cols in [2, 3] {
            let part = bits(super::super::thin_matmul(
                embed.clone(),
                x.clone().narrow(1, 0, cols),
            ));
            let want = bits(all.clone().narrow(1, 0, cols));
            assert!(
                super::super::same_bits(&want, &part),
                "{cols} columns differ from the same columns among {MAX_THIN}"
            );
        }
    }
}
