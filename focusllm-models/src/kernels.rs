//! The choice between the fused CPU kernels and burn's tensor operations.

use burn::tensor::{DType, backend::Backend};

/// Which implementation a model's attention and RoPE use (see [`crate::LlamaModel::set_kernels`]).
///
/// Both compute the same function: RoPE bit for bit, attention to float rounding (its softmax is
/// accumulated tile by tile, with an `exp` accurate to 2e-7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kernels {
    /// The fused CPU kernels where they apply (burn's flex backend with f32 activations, with this
    /// crate's `cpu` feature, on by default), burn's tensor operations elsewhere. The default.
    #[default]
    Fused,
    /// burn's tensor operations everywhere (the reference the fused kernels are tested against).
    Burn,
}

/// Whether the fused kernels serve tensors of backend `B` in `dtype` under `kernels`.
pub(crate) fn fused<B: Backend>(kernels: Kernels, dtype: DType) -> bool {
    #[cfg(feature = "cpu")]
    {
        crate::cpu::applies::<B>(kernels, dtype)
    }
    #[cfg(not(feature = "cpu"))]
    {
        let _ = (kernels, dtype);
        false
    }
}
