//! A linear layer of the decoder: dense (burn's `Linear`), or a GGUF's quantized blocks kept as
//! stored and multiplied directly (see [`crate::LoadOptions::keep_quantized`]).

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Tensor, TensorData, backend::Backend};

use super::ops::{from_f32, linear, to_f32};
use crate::kernels::Products;
use crate::quantized::QuantizedMatrix;

/// A linear layer whose weight is a GGUF's quantized blocks, multiplied as stored: a decoding
/// step reads the weight in its quantized size (a quarter to a seventh of `f32`), and the model
/// holds it in that size. The loader keeps weights quantized on the flex (CPU) backend with `f32`
/// compute, where the kernels of [`crate::quantized`] multiply them; a model assembled by hand for
/// another backend gets the same numbers from the decoded weight, slowly.
#[derive(Module, Debug)]
pub struct QuantizedLinear<B: Backend> {
    /// The weight `[out, in]`, as stored.
    #[module(skip)]
    pub weight: QuantizedMatrix,
    /// The bias `[out]`, if any.
    pub bias: Option<Param<Tensor<B, 1>>>,
}

/// A linear layer of the decoder: `x · W + b`.
#[derive(Module, Debug)]
pub enum Projection<B: Backend> {
    /// A dense weight (`[in, out]`, any backend and dtype; what training differentiates).
    Dense(Linear<B>),
    /// A GGUF's quantized weight, multiplied as stored.
    Quantized(QuantizedLinear<B>),
}

impl<B: Backend> From<Linear<B>> for Projection<B> {
    fn from(linear: Linear<B>) -> Self {
        Self::Dense(linear)
    }
}

impl<B: Backend> Projection<B> {
    /// `[in, out]`.
    pub fn dims(&self) -> [usize; 2] {
        match self {
            Self::Dense(l) => l.weight.dims(),
            Self::Quantized(q) => [q.weight.cols(), q.weight.rows()],
        }
    }

    /// The weight `[in, out]` as a dense tensor on `device` (a quantized one decoded: the values
    /// the `f32` model holds).
    pub fn dense_weight(&self, device: &B::Device) -> Tensor<B, 2> {
        match self {
            Self::Dense(l) => l.weight.val(),
            Self::Quantized(q) => decoded(&q.weight, device).transpose(),
        }
    }

    /// The bias `[out]`, if any.
    pub fn bias(&self) -> Option<&Param<Tensor<B, 1>>> {
        match self {
            Self::Dense(l) => l.bias.as_ref(),
            Self::Quantized(q) => q.bias.as_ref(),
        }
    }

    /// Whether the weight is quantized.
    pub fn is_quantized(&self) -> bool {
        matches!(self, Self::Quantized(_))
    }

    /// `x` `[b, s, in]` through the layer. `products`: see [`super::ops::linear`] (a quantized
    /// weight always runs the CPU kernels of [`crate::quantized`], with bf16 operands where
    /// [`Products::bf16_for`] the sequence's length).
    pub(crate) fn forward(&self, x: Tensor<B, 3>, products: Products) -> Tensor<B, 3> {
        match self {
            Self::Dense(l) => linear(x, l, products),
            Self::Quantized(q) => {
                let [b, s, k] = x.dims();
                let n = q.weight.rows();
                let bf16 = products.bf16_for(s);
                let y =
                    quantized_product(x.reshape([b * s, k]), &q.weight, bf16).reshape([b, s, n]);
                match &q.bias {
                    Some(bias) => y + bias.val().unsqueeze::<3>(),
                    None => y,
                }
            }
        }
    }
}

impl<B: Backend> Projection<B> {
    /// `x` through each of `layers` (all of `x`'s width), as [`Projection::forward`] gives it,
    /// or `None` where no joint product applies. On flex with f32 products, quantized weights
    /// are multiplied a few rows at a time in one split of all their output rows across the
    /// cores: a step's small products (a layer's k and v are a third of q) then wait for the
    /// pool once rather than once each.
    pub(crate) fn forward_together<const N: usize>(
        layers: [&Self; N],
        x: &Tensor<B, 3>,
        products: Products,
    ) -> Option<[Tensor<B, 3>; N]> {
        #[cfg(feature = "cpu")]
        {
            let [b, s, k] = x.dims();
            if !crate::cpu::is_flex::<B>()
                || x.dtype() != burn::tensor::DType::F32
                || products.bf16_for(s)
            {
                return None;
            }
            let quantized: Vec<&QuantizedLinear<B>> = layers
                .iter()
                .map(|layer| match layer {
                    Self::Quantized(q) => Some(q),
                    Self::Dense(_) => None,
                })
                .collect::<Option<_>>()?;
            let weights: Vec<&QuantizedMatrix> = quantized.iter().map(|q| &q.weight).collect();
            let mut outs =
                crate::cpu::quantized_matmul_many(x.clone().reshape([b * s, k]), &weights)
                    .into_iter();
            Some(std::array::from_fn(|i| {
                let y = outs.next().expect("an output a weight");
                let y = y.reshape([b, s, quantized[i].weight.rows()]);
                match &quantized[i].bias {
                    Some(bias) => y + bias.val().unsqueeze::<3>(),
                    None => y,
                }
            }))
        }
        #[cfg(not(feature = "cpu"))]
        {
            let _ = (layers, x, products);
            None
        }
    }
}

/// `x` `[m, in]` times the quantized `w` `[out, in]` transposed, in f32 (and back in `x`'s
/// dtype: a model converted to another dtype after loading still runs); with `bf16`, both
/// operands rounded to bf16 on the CPU.
pub(super) fn quantized_product<B: Backend>(
    x: Tensor<B, 2>,
    w: &QuantizedMatrix,
    bf16: bool,
) -> Tensor<B, 2> {
    let dtype = x.dtype();
    from_f32(quantized_product_f32(to_f32(x), w, bf16), dtype)
}

fn quantized_product_f32<B: Backend>(
    x: Tensor<B, 2>,
    w: &QuantizedMatrix,
    bf16: bool,
) -> Tensor<B, 2> {
    #[cfg(feature = "cpu")]
    if crate::cpu::is_flex::<B>() {
        return crate::cpu::quantized_matmul(x, w, bf16);
    }
    let _ = bf16;
    // The loader keeps weights quantized on flex only; a model built by hand elsewhere still gets
    // the right numbers, from the decoded weight.
    let dense = decoded::<B>(w, &x.device());
    x.matmul(dense.transpose())
}

/// `w` decoded, `[rows, cols]` as stored, on `device`.
fn decoded<B: Backend>(w: &QuantizedMatrix, device: &B::Device) -> Tensor<B, 2> {
    Tensor::from_data(TensorData::new(w.to_f32(), [w.rows(), w.cols()]), device)
}
