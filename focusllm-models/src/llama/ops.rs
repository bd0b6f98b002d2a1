//! Small operations the Llama modules share: the candidate-aware projection, RMSNorm and dtype
//! conversions.

use burn::module::{ModuleMapper, Param};
use burn::nn::Linear;
use burn::tensor::{DType, Tensor, backend::Backend};

use super::attention::Candidates;
use super::projection::Projection;
use crate::kernels::Products;

/// [`project`] of the same `x` through several layers (each an ordinary projection and its
/// candidate version, if any): where every position takes the ordinary ones, in one joint product
/// when [`Projection::forward_together`] applies; else one [`project`] each. The same numbers
/// either way.
pub(crate) fn project_all<B: Backend, const N: usize>(
    x: Tensor<B, 3>,
    layers: [(&Projection<B>, Option<&Linear<B>>); N],
    candidates: Candidates,
    products: Products,
) -> [Tensor<B, 3>; N] {
    let ordinary =
        matches!(candidates, Candidates::None) || layers.iter().all(|(_, cand)| cand.is_none());
    if ordinary
        && let Some(out) = Projection::forward_together(layers.map(|(p, _)| p), &x, products)
    {
        return out;
    }
    layers.map(|(ordinary, cand)| project(x.clone(), ordinary, cand, candidates, products))
}

/// Applies `ordinary` to the ordinary positions and `candidate` to the candidate ones (`products`:
/// see [`linear`]).
pub(crate) fn project<B: Backend>(
    x: Tensor<B, 3>,
    ordinary: &Projection<B>,
    candidate: Option<&Linear<B>>,
    candidates: Candidates,
    products: Products,
) -> Tensor<B, 3> {
    let seq = x.dims()[1];
    match (candidate, candidates) {
        (Some(cand), Candidates::Each) => linear(x, cand, products),
        (Some(cand), Candidates::Last) => {
            if seq == 1 {
                return linear(x, cand, products);
            }
            // With two rows or more per chunk, no product gets a lone row per chunk: gemm
            // multiplies a lone row in another order (its GEMV) than two or more, and a chunk's
            // candidates would then change in the last bit with how many chunks share its batch.
            // So the candidate projection runs over the last two rows, and an exact step's
            // ordinary one over both; the weights are read once either way, so the extra row
            // costs little.
            let head = if seq == 2 {
                ordinary.forward(x.clone(), products).narrow(1, 0, 1)
            } else {
                ordinary.forward(x.clone().narrow(1, 0, seq - 1), products)
            };
            let tail = linear(x.narrow(1, seq - 2, 2), cand, products).narrow(1, 1, 1);
            Tensor::cat(vec![head, tail], 1)
        }
        _ => ordinary.forward(x, products),
    }
}

/// `layer` applied to `x` `[b, s, in]`. With `products.fused` (see [`crate::kernels::fused`]) a
/// few rows (a decoding step) are multiplied on every core (see `crate::cpu::thin_matmul`), and
/// where [`Products::bf16_for`] the sequence's length, with bf16 operands (see
/// `crate::cpu::bf16_matmul`); otherwise this is burn's `Linear::forward`.
pub(crate) fn linear<B: Backend>(
    x: Tensor<B, 3>,
    layer: &Linear<B>,
    products: Products,
) -> Tensor<B, 3> {
    #[cfg(feature = "cpu")]
    if products.fused {
        let [b, s, k] = x.dims();
        let n = layer.weight.dims()[1];
        let y = if products.bf16_for(s) {
            Some(crate::cpu::bf16_matmul(
                x.clone().reshape([b * s, k]),
                layer.weight.val(),
            ))
        } else if crate::cpu::is_thin(b * s, n, x.dtype()) {
            Some(crate::cpu::thin_matmul(
                x.clone().reshape([b * s, k]),
                layer.weight.val(),
            ))
        } else {
            None
        };
        if let Some(y) = y {
            let y = y.reshape([b, s, n]);
            return match &layer.bias {
                Some(bias) => y + bias.val().unsqueeze::<3>(),
                None => y,
            };
        }
    }
    let _ = products;
    if B::ad_enabled(&x.device()) {
        // Under autodiff (training) a product rather than burn's `linear` op: the op's backward
        // (`linear_x_backward`, burn 0.21) transposes the weight and reshapes it, which on flex
        // copies the whole weight, every layer's, at every backward pass (6% of a training
        // step's cycles); a product's backward multiplies by the transposed view in place.
        // The forward is the same product either way.
        let y = x.matmul(layer.weight.val().unsqueeze::<3>());
        return match &layer.bias {
            Some(bias) => y + bias.val().unsqueeze::<3>(),
            None => y,
        };
    }
    layer.forward(x)
}

/// `a` `[m, k]` · `b` `[k, n]`: with `fused`, a thin product (few rows or columns) runs on every
/// core (see [`linear`]).
pub(crate) fn matmul<B: Backend>(a: Tensor<B, 2>, b: Tensor<B, 2>, fused: bool) -> Tensor<B, 2> {
    #[cfg(feature = "cpu")]
    if fused && crate::cpu::is_thin(a.dims()[0], b.dims()[1], a.dtype()) {
        return crate::cpu::thin_matmul(a, b);
    }
    let _ = fused;
    a.matmul(b)
}

/// RMSNorm, computed in f32 whatever the compute dtype (as the reference does).
pub(crate) fn rms_norm<B: Backend>(
    x: Tensor<B, 3>,
    weight: &Param<Tensor<B, 1>>,
    eps: f64,
) -> Tensor<B, 3> {
    let dtype = x.dtype();
    let x = to_f32(x);
    let variance = x.clone().square().mean_dim(2);
    let normed = from_f32(x * (variance + eps).sqrt().recip(), dtype);
    normed * weight.val().unsqueeze::<3>()
}

/// `x` in f32 (a no-op when it already is).
pub(crate) fn to_f32<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    if x.dtype() == DType::F32 {
        x
    } else {
        x.cast(DType::F32)
    }
}

/// `x` (f32) in `dtype` (a no-op for f32).
pub(crate) fn from_f32<B: Backend, const D: usize>(x: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if dtype == DType::F32 {
        x
    } else {
        x.cast(dtype)
    }
}

/// Casts every float parameter of a module to one dtype.
pub(crate) struct CastParams(pub(crate) DType);

impl<B: Backend> ModuleMapper<B> for CastParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let dtype = self.0;
        param.map(|t| if t.dtype() == dtype { t } else { t.cast(dtype) })
    }
}
