//! Rotary position embedding in HF's `rotate_half` convention, at arbitrary positions.
//!
//! FocusLLM needs positions that are not `0..n` of one sequence (candidates at `0..C`, then the local
//! tokens; left-padded chunks), so the cos/sin tables are built for the exact positions of a forward.

use burn::tensor::{Tensor, TensorData, backend::Backend};

use crate::config::LlamaConfig;

/// The inverse frequencies of a model, with its `rope_scaling` applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Rope {
    inv_freq: Vec<f32>,
}

impl Rope {
    /// Frequencies for `config` (`1/θ^(2i/d)`, computed in f32 as the reference does).
    pub fn new(config: &LlamaConfig) -> Self {
        let dim = config.head_dim();
        let base = config.rope_theta as f32;
        let mut inv_freq: Vec<f32> = (0..dim / 2)
            .map(|i| 1.0 / base.powf((2 * i) as f32 / dim as f32))
            .collect();
        if let Some(scaling) = &config.rope_scaling {
            let factor = scaling.factor as f32;
            match scaling.rope_type.as_str() {
                "linear" => inv_freq.iter_mut().for_each(|f| *f /= factor),
                "llama3" => {
                    let old = scaling.original_max_position_embeddings as f32;
                    let (low, high) = (
                        scaling.low_freq_factor as f32,
                        scaling.high_freq_factor as f32,
                    );
                    let (low_wavelen, high_wavelen) = (old / low, old / high);
                    for f in inv_freq.iter_mut() {
                        let wavelen = 2.0 * std::f32::consts::PI / *f;
                        if wavelen > low_wavelen {
                            *f /= factor;
                        } else if wavelen >= high_wavelen {
                            let smooth = (old / wavelen - low) / (high - low);
                            *f = (1.0 - smooth) * *f / factor + smooth * *f;
                        }
                    }
                }
                _ => {}
            }
        }
        Self { inv_freq }
    }

    /// cos and sin tables `[batch, seq, 1, head_dim]` for `positions` (`batch` rows of `seq`), for
    /// tensors laid out `[batch, seq, heads, head_dim]`.
    pub fn tables<B: Backend>(
        &self,
        positions: &[Vec<usize>],
        device: &B::Device,
    ) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let half = self.inv_freq.len();
        let batch = positions.len();
        let seq = positions.first().map_or(0, Vec::len);
        let mut cos = Vec::with_capacity(batch * seq * half * 2);
        let mut sin = Vec::with_capacity(batch * seq * half * 2);
        for row in positions {
            for &p in row {
                // The product in f32, like the reference's `outer(arange(n).float(), inv_freq)`.
                let angles = self.inv_freq.iter().map(|f| p as f32 * f);
                let (c, s): (Vec<f32>, Vec<f32>) = angles.map(|a| (a.cos(), a.sin())).unzip();
                cos.extend_from_slice(&c);
                cos.extend_from_slice(&c);
                sin.extend_from_slice(&s);
                sin.extend_from_slice(&s);
            }
        }
        let shape = [batch, seq, 1, half * 2];
        (
            Tensor::from_data(TensorData::new(cos, shape), device),
            Tensor::from_data(TensorData::new(sin, shape), device),
        )
    }
}

/// Applies RoPE to `x` `[batch, seq, heads, head_dim]` with tables from [`Rope::tables`].
pub fn apply_rope<B: Backend>(
    x: Tensor<B, 4>,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
) -> Tensor<B, 4> {
    let half = x.dims()[3] / 2;
    let x1 = x.clone().narrow(3, 0, half);
    let x2 = x.clone().narrow(3, half, half);
    let rotated = Tensor::cat(vec![x2.neg(), x1], 3);
    x * cos.clone() + rotated * sin.clone()
}

/// [`apply_rope`], through the fused CPU kernel when `fused` (see [`crate::kernels::fused`]); the
/// result is the same bit for bit.
pub(crate) fn apply_rope_with<B: Backend>(
    fused: bool,
    x: Tensor<B, 4>,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
) -> Tensor<B, 4> {
    #[cfg(feature = "cpu")]
    if fused {
        return crate::cpu::apply_rope(x, cos, sin);
    }
    let _ = fused;
    apply_rope(x, cos, sin)
}
