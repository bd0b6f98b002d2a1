//! RoPE in HF's `rotate_half` convention over `[batch, seq, heads, dim]`, one pass per row.

use burn::tensor::TensorData;
use burn_flex::FlexTensor;
use rayon::prelude::*;

use super::view::{View, inner_contiguous};

/// `x·cos + rotate_half(x)·sin`, contiguous `[batch, seq, heads, dim]`; `cos`/`sin` are
/// `[batch, seq, 1, dim]` with equal halves (see [`crate::rope::Rope::tables`]).
pub(super) fn apply(x: &FlexTensor, cos: &FlexTensor, sin: &FlexTensor) -> FlexTensor {
    let (x, cos, sin) = (
        inner_contiguous(x),
        inner_contiguous(cos),
        inner_contiguous(sin),
    );
    let dims = x.layout().shape().to_vec();
    let [batch, seq, heads, dim] = [dims[0], dims[1], dims[2], dims[3]];
    let half = dim / 2;
    let (xs, cs, ss): (View<f32>, View<f32>, View<f32>) =
        (View::new(&x), View::new(&cos), View::new(&sin));
    let mut out = vec![0.0f32; batch * seq * heads * dim];
    out.par_chunks_mut(heads * dim)
        .enumerate()
        .for_each(|(row, out_row)| {
            let (b, s) = (row / seq.max(1), row % seq.max(1));
            let c = &cs.data[cs.at(b, s, 0)..][..dim];
            let sn = &ss.data[ss.at(b, s, 0)..][..dim];
            for (h, o) in out_row.chunks_exact_mut(dim).enumerate() {
                let xr = &xs.data[xs.at(b, s, h)..][..dim];
                let (x1, x2) = xr.split_at(half);
                let (o1, o2) = o.split_at_mut(half);
                for j in 0..half {
                    // The same products and sums as `x * cos + cat(-x2, x1) * sin`.
                    o1[j] = x1[j] * c[j] + -x2[j] * sn[j];
                    o2[j] = x2[j] * c[half + j] + x1[j] * sn[half + j];
                }
            }
        });
    FlexTensor::from_data(TensorData::new(out, [batch, seq, heads, dim]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::DType;

    #[test]
    fn output_is_contiguous_f32() {
        let x = FlexTensor::from_data(TensorData::new(vec![1.0f32; 8], [1, 1, 2, 4]));
        let t = FlexTensor::from_data(TensorData::new(vec![1.0f32; 4], [1, 1, 1, 4]));
        let out = apply(&x, &t, &t);
        assert_eq!(out.dtype(), DType::F32);
        // x1·c − x2·s = 0 and x2·c + x1·s = 2 for all-ones inputs.
        assert_eq!(
            out.storage::<f32>(),
            &[0.0, 0.0, 2.0, 2.0, 0.0, 0.0, 2.0, 2.0]
        );
    }
}

#[cfg(test)]
mod parity {
    use burn::backend::Flex;
    use burn::tensor::{Distribution, Tensor};

    use crate::rope::apply_rope;

    #[test]
    fn equals_the_burn_operations_bit_for_bit_on_strided_inputs() {
        let device = Default::default();
        // Past keys `[b, kv_heads, len, d]` viewed `[b, len, kv_heads, d]`, as `rotate_keys` does.
        let x = Tensor::<Flex, 4>::random([2, 3, 11, 16], Distribution::Normal(0.0, 2.0), &device)
            .swap_dims(1, 2);
        let cos = Tensor::<Flex, 4>::random([2, 11, 1, 8], Distribution::Default, &device)
            .repeat_dim(3, 2);
        let sin = Tensor::<Flex, 4>::random([2, 11, 1, 8], Distribution::Default, &device)
            .repeat_dim(3, 2);
        let want = apply_rope(x.clone(), &cos, &sin).into_data();
        let got = super::super::apply_rope(x, &cos, &sin).into_data();
        assert_eq!(got.shape, want.shape);
        assert_eq!(got.to_vec::<f32>().unwrap(), want.to_vec::<f32>().unwrap());
    }
}
