//! The SwiGLU MLP, with FocusLLM's candidate up/down projections when the checkpoint has them.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::activation::silu;
use burn::tensor::{Tensor, backend::Backend};

use super::attention::Candidates;
use super::ops::{project, project_all};
use super::projection::Projection;
use crate::config::LlamaConfig;
use crate::error::ModelError;
use crate::kernels::Products;
use crate::weights::Weights;

/// MLP candidate projections (`beacon_up_proj`, `beacon_down_proj`), when "mlp" is a candidate param.
#[derive(Module, Debug)]
pub struct CandidateMlp<B: Backend> {
    /// Up projection.
    pub up: Linear<B>,
    /// Down projection.
    pub down: Linear<B>,
}

/// SwiGLU MLP.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// Gate projection.
    pub gate: Projection<B>,
    /// Up projection.
    pub up: Projection<B>,
    /// Down projection.
    pub down: Projection<B>,
    /// Candidate up/down projections, if the checkpoint has them.
    pub candidate: Option<CandidateMlp<B>>,
}

/// `silu(gate) · up`.
fn swiglu<B: Backend>(gate: Tensor<B, 3>, up: Tensor<B, 3>, fused: bool) -> Tensor<B, 3> {
    #[cfg(feature = "cpu")]
    if fused {
        return crate::cpu::swiglu(gate, up);
    }
    let _ = fused;
    silu(gate) * up
}

impl<B: Backend> Mlp<B> {
    /// With `products.fused` the activation runs as one fused CPU pass (see
    /// [`crate::kernels::fused`]); `products`: see [`super::ops::linear`].
    pub(crate) fn forward(
        &self,
        x: Tensor<B, 3>,
        candidates: Candidates,
        products: Products,
    ) -> Tensor<B, 3> {
        // The gate has no candidate version: `project` gives every position the ordinary one.
        let [gate, up] = project_all(
            x,
            [
                (&self.gate, None),
                (&self.up, self.candidate.as_ref().map(|c| &c.up)),
            ],
            candidates,
            products,
        );
        let activated = swiglu(gate, up, products.fused);
        project(
            activated,
            &self.down,
            self.candidate.as_ref().map(|c| &c.down),
            candidates,
            products,
        )
    }

    /// Loads `gate_proj`, `up_proj` and `down_proj` under `w`, and `beacon_up_proj` /
    /// `beacon_down_proj` when `trained_candidates` and the checkpoint has them.
    pub fn load(
        w: &Weights<'_, B>,
        config: &LlamaConfig,
        trained_candidates: bool,
    ) -> Result<Self, ModelError> {
        let (hidden, inter) = (config.hidden_size, config.intermediate_size);
        let candidate = if trained_candidates && w.has("beacon_up_proj.weight") {
            Some(CandidateMlp {
                up: w.linear("beacon_up_proj", inter, hidden, false)?,
                down: w.linear("beacon_down_proj", hidden, inter, false)?,
            })
        } else {
            None
        };
        Ok(Self {
            gate: w.projection("gate_proj", inter, hidden, false)?,
            up: w.projection("up_proj", inter, hidden, false)?,
            down: w.projection("down_proj", hidden, inter, false)?,
            candidate,
        })
    }
}
