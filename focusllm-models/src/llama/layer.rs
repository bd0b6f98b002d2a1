//! One decoder layer: pre-norm attention and pre-norm MLP, each with a residual.

use burn::module::{Module, Param};
use burn::tensor::{Tensor, backend::Backend};

use super::attention::{Attention, Candidates, LayerPast};
use super::masked_attention::AttentionPlan;
use super::mlp::Mlp;
use super::ops::rms_norm;
use super::{NewKv, RopeTables};
use crate::config::LlamaConfig;
use crate::error::ModelError;
use crate::weights::Weights;

/// One decoder layer.
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    /// Pre-attention RMSNorm weight.
    pub input_norm: Param<Tensor<B, 1>>,
    /// Attention.
    pub attn: Attention<B>,
    /// Pre-MLP RMSNorm weight.
    pub post_attn_norm: Param<Tensor<B, 1>>,
    /// MLP.
    pub mlp: Mlp<B>,
}

impl<B: Backend> DecoderLayer<B> {
    /// Runs the layer over `x`; returns the new hidden states, the new tokens' keys and values, and
    /// the attention share the plan measures (see `AttentionPlan::with_focus`).
    pub(crate) fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: RopeTables<'_, B>,
        past: LayerPast<'_, B>,
        plan: &AttentionPlan<B>,
        candidates: Candidates,
        eps: f64,
    ) -> (Tensor<B, 3>, NewKv<B>, Option<Tensor<B, 2>>) {
        let h = rms_norm(x.clone(), &self.input_norm, eps);
        let (attn, kv, focus) = self.attn.forward(h, rope, past, plan, candidates);
        let x = x + attn;
        let h = rms_norm(x.clone(), &self.post_attn_norm, eps);
        (
            x + self.mlp.forward(h, candidates, plan.products()),
            kv,
            focus,
        )
    }

    /// The new positions' keys and values only (see [`Attention::kv_only`]): the last layer of a
    /// forward whose output nothing reads.
    pub(crate) fn kv_only(
        &self,
        x: Tensor<B, 3>,
        rope: RopeTables<'_, B>,
        past: LayerPast<'_, B>,
        plan: &AttentionPlan<B>,
        candidates: Candidates,
        eps: f64,
    ) -> NewKv<B> {
        let h = rms_norm(x, &self.input_norm, eps);
        self.attn
            .kv_only(h, rope, past, candidates, plan.products())
    }

    /// Loads layer `w` (`model.layers.{i}`): `input_layernorm`, `self_attn`,
    /// `post_attention_layernorm` and `mlp`, as in HF checkpoints.
    pub fn load(
        w: &Weights<'_, B>,
        config: &LlamaConfig,
        trained_candidates: bool,
    ) -> Result<Self, ModelError> {
        let hidden = config.hidden_size;
        Ok(Self {
            input_norm: Param::from_tensor(w.vector("input_layernorm.weight", hidden)?),
            attn: Attention::load(&w.pp("self_attn"), config, trained_candidates)?,
            post_attn_norm: Param::from_tensor(
                w.vector("post_attention_layernorm.weight", hidden)?,
            ),
            mlp: Mlp::load(&w.pp("mlp"), config, trained_candidates)?,
        })
    }
}
