//! Small operations the Llama modules share: the candidate-aware projection, RMSNorm and dtype
//! conversions.

use burn::module::{ModuleMapper, Param};
use burn::nn::Linear;
use burn::tensor::{DType, Tensor, backend::Backend};

use super::attention::Candidates;

/// Applies `ordinary` to the ordinary positions and `candidate` to the candidate ones.
pub(crate) fn project<B: Backend>(
    x: Tensor<B, 3>,
    ordinary: &Linear<B>,
    candidate: Option<&Linear<B>>,
    candidates: Candidates,
) -> Tensor<B, 3> {
    let seq = x.dims()[1];
    match (candidate, candidates) {
        (Some(cand), Candidates::Each) => cand.forward(x),
        (Some(cand), Candidates::Last) => {
            if seq == 1 {
                return cand.forward(x);
            }
            let head = x.clone().narrow(1, 0, seq - 1);
            let tail = x.narrow(1, seq - 1, 1);
            Tensor::cat(vec![ordinary.forward(head), cand.forward(tail)], 1)
        }
        _ => ordinary.forward(x),
    }
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
