//! The choice between the fused CPU kernels and burn's tensor operations.

use burn::tensor::{DType, Tensor, backend::Backend};

use crate::llama::Candidates;
use crate::llama::masked_attention::AttentionPlan;

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

/// The precision of a model's matrix products (see [`crate::LlamaModel::set_matmul_precision`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MatmulPrecision {
    /// f32 operands and f32 sums everywhere. The default.
    #[default]
    F32,
    /// Where the fused CPU kernels apply, the matrix products of forwards with more than 4 new
    /// positions per sequence (prefills, an exact step's dynamic prompts) round both operands to
    /// bf16 and sum in f32: the decoder layers' projections, and attention's scores and weighted
    /// values. Decoding steps (a generated token, an exact step's two rows per chunk), the LM
    /// head, RMSNorm, RoPE and the softmax stay f32. The choice depends on each sequence's length
    /// alone, never on its batch. CPUs with AVX-512 BF16 multiply such operands at twice
    /// f32's rate (`vdpbf16ps`); others get the same rounding at f32 speed. The rounding costs
    /// accuracy (a bf16 value keeps 8 bits of mantissa against f32's 24): BENCHMARKS.md measures
    /// what it changes.
    Bf16,
}

/// How a forward's products multiply: with the fused CPU kernels or burn's operations, and with
/// bf16 operands for sequences of more than [`BF16_AFTER_SEQ`] new positions or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Products {
    /// The fused CPU kernels apply (see [`fused`]).
    pub(crate) fused: bool,
    /// Longer sequences multiply with bf16 operands ([`MatmulPrecision::Bf16`] on the fused
    /// path; see [`Products::bf16_for`]).
    pub(crate) bf16: bool,
}

/// New positions per sequence up to which a forward's products stay f32 under
/// [`MatmulPrecision::Bf16`] (a generated token, an exact step's two rows per chunk). The choice
/// depends on the sequence alone, never on how many sequences share the batch, so a chunk's
/// numbers do not depend on its batch.
pub(crate) const BF16_AFTER_SEQ: usize = 4;

impl Products {
    /// Whether the products of a forward of `seq` new positions per sequence take bf16 operands.
    pub(crate) fn bf16_for(self, seq: usize) -> bool {
        self.bf16 && seq > BF16_AFTER_SEQ
    }

    /// `fused` products in `precision` (bf16 only on the fused path).
    pub(crate) fn new(fused: bool, precision: MatmulPrecision) -> Self {
        Self {
            fused,
            bf16: fused && precision == MatmulPrecision::Bf16,
        }
    }
}

/// Whether the fused kernels serve tensors of backend `B` in `dtype` under `kernels`.
// Without the `cpu` feature the answer is no whatever the backend.
#[cfg_attr(not(feature = "cpu"), allow(clippy::extra_unused_type_parameters))]
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

/// Causal grouped-query attention, as a model's forward runs it: `q` `[batch, heads, seq, d]`
/// (RoPE applied) over `k` and `v` `[batch, kv_heads, past + seq, d]`, the queries being the last
/// `seq` positions; `heads` must be a multiple of `kv_heads`. Returns `[batch, heads, seq, d]`.
///
/// [`Kernels::Fused`] runs the fused CPU kernel where it applies, [`Kernels::Burn`] burn's
/// operations: exposed so that the two can be benchmarked and compared on any input.
///
/// ```
/// use burn::backend::Flex;
/// use burn::tensor::{Distribution, Tensor};
/// use focusllm_models::kernels::{Kernels, causal_attention};
///
/// let device = Default::default();
/// let q = Tensor::<Flex, 4>::random([1, 6, 3, 16], Distribution::Default, &device);
/// let k = Tensor::<Flex, 4>::random([1, 2, 10, 16], Distribution::Default, &device);
/// let v = Tensor::<Flex, 4>::random([1, 2, 10, 16], Distribution::Default, &device);
/// let fused = causal_attention(Kernels::Fused, q.clone(), k.clone(), v.clone());
/// let burn = causal_attention(Kernels::Burn, q, k, v);
/// assert_eq!(fused.dims(), [1, 6, 3, 16]);
/// assert!((fused - burn).abs().max().into_scalar() < 1e-5);
/// ```
pub fn causal_attention<B: Backend>(
    kernels: Kernels,
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [batch, heads, seq, _] = q.dims();
    let [_, kv_heads, keys, _] = k.dims();
    assert!(
        heads % kv_heads == 0 && keys >= seq,
        "{heads} query heads over {kv_heads} key/value heads, {seq} queries over {keys} keys"
    );
    let plan = AttentionPlan::<B>::new(
        batch,
        seq,
        keys - seq,
        kv_heads,
        heads / kv_heads,
        None,
        Candidates::None,
        fused::<B>(kernels, q.dtype()),
        &q.device(),
    );
    plan.attend(q, k, v).0
}

/// `layer` applied to `x` `[batch, seq, in]` as a model's forward applies its projections:
/// [`Kernels::Fused`] multiplies a few rows (a decoding step's) on every core where the fused
/// kernels apply, [`Kernels::Burn`] runs burn's `Linear::forward`. Exposed so that the two can be
/// benchmarked and compared on any input.
///
/// ```
/// use burn::backend::Flex;
/// use burn::nn::LinearConfig;
/// use burn::tensor::{Distribution, Tensor};
/// use focusllm_models::kernels::{Kernels, linear};
///
/// let device = Default::default();
/// let layer = LinearConfig::new(64, 300).init::<Flex>(&device);
/// let x = Tensor::<Flex, 3>::random([1, 2, 64], Distribution::Default, &device);
/// let fused = linear(Kernels::Fused, x.clone(), &layer);
/// let burn = linear(Kernels::Burn, x, &layer);
/// assert_eq!(fused.dims(), [1, 2, 300]);
/// assert!((fused - burn).abs().max().into_scalar() < 1e-4);
/// ```
pub fn linear<B: Backend>(
    kernels: Kernels,
    x: Tensor<B, 3>,
    layer: &burn::nn::Linear<B>,
) -> Tensor<B, 3> {
    let products = Products::new(fused::<B>(kernels, x.dtype()), MatmulPrecision::F32);
    crate::llama::ops::linear(x, layer, products)
}

/// `projection` applied to `x` `[batch, seq, in]` as a model's forward applies it: a dense one as
/// [`linear`] does, a quantized one ([`crate::LoadOptions::keep_quantized`]) by the CPU kernels of
/// its blocks whatever `kernels` says. Exposed so that dense and quantized weights can be
/// benchmarked and compared on any input.
///
/// ```
/// use burn::backend::Flex;
/// use burn::module::Param;
/// use burn::nn::Linear;
/// use burn::tensor::{Distribution, Tensor, TensorData};
/// use focusllm_models::gguf::dequant::GGML_TYPE_Q8_0;
/// use focusllm_models::kernels::{Kernels, projection};
/// use focusllm_models::llama::{Projection, QuantizedLinear};
/// use focusllm_models::quantized::QuantizedMatrix;
///
/// let device = Default::default();
/// // A `[out, in]` = `[300, 64]` weight, quantized, and the dense weight its blocks decode to.
/// let values: Vec<f32> = (0..300 * 64).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
/// let weight = QuantizedMatrix::quantize(GGML_TYPE_Q8_0, 300, 64, &values)?;
/// let decoded = Tensor::<Flex, 2>::from_data(TensorData::new(weight.to_f32(), [300, 64]), &device);
/// let dense = Projection::Dense(Linear { weight: Param::from_tensor(decoded.transpose()), bias: None });
/// let quantized = Projection::Quantized(QuantizedLinear { weight, bias: None });
/// let x = Tensor::<Flex, 3>::random([1, 2, 64], Distribution::Default, &device);
/// let a = projection(Kernels::Fused, x.clone(), &quantized);
/// let b = projection(Kernels::Fused, x, &dense);
/// assert_eq!(a.dims(), [1, 2, 300]);
/// assert!((a - b).abs().max().into_scalar() < 1e-4);
/// # Ok::<(), focusllm_models::gguf::dequant::DequantError>(())
/// ```
pub fn projection<B: Backend>(
    kernels: Kernels,
    x: Tensor<B, 3>,
    projection: &crate::llama::Projection<B>,
) -> Tensor<B, 3> {
    projection_in(kernels, MatmulPrecision::F32, x, projection)
}

/// [`projection`] in `precision` (see [`MatmulPrecision`]): exposed so that bf16 products can be
/// benchmarked and compared with f32 ones on any input.
///
/// ```
/// use burn::backend::Flex;
/// use burn::nn::LinearConfig;
/// use burn::tensor::{Distribution, Tensor};
/// use focusllm_models::kernels::{Kernels, MatmulPrecision, projection_in};
/// use focusllm_models::llama::Projection;
///
/// let device = Default::default();
/// let layer = Projection::from(LinearConfig::new(64, 300).init::<Flex>(&device));
/// // 40 rows: more than a decoding step's few, so the bf16 products apply.
/// let x = Tensor::<Flex, 3>::random([1, 40, 64], Distribution::Default, &device);
/// let f32 = projection_in(Kernels::Fused, MatmulPrecision::F32, x.clone(), &layer);
/// let bf16 = projection_in(Kernels::Fused, MatmulPrecision::Bf16, x, &layer);
/// let scale = f32.clone().abs().max().into_scalar();
/// let diff = (f32 - bf16).abs().max().into_scalar();
/// assert!(diff > 0.0 && diff < 2e-2 * scale);
/// ```
pub fn projection_in<B: Backend>(
    kernels: Kernels,
    precision: MatmulPrecision,
    x: Tensor<B, 3>,
    projection: &crate::llama::Projection<B>,
) -> Tensor<B, 3> {
    let products = Products::new(fused::<B>(kernels, x.dtype()), precision);
    projection.forward(x, products)
}
