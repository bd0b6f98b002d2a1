//! The Llama-family configuration, read from an HF `config.json` or from GGUF metadata.

use std::path::Path;

use serde::Deserialize;

use crate::error::ModelError;

/// Architectures (HF `model_type`) this crate implements.
pub const SUPPORTED_ARCHITECTURES: &str = "llama, mistral, qwen2 (HF); llama (GGUF)";

/// RoPE frequency scaling (`rope_scaling` in `config.json`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RopeScaling {
    /// `"linear"`, `"llama3"` or `"default"` (HF writes it as `rope_type` or, in older files, `type`).
    #[serde(alias = "type")]
    pub rope_type: String,
    /// Scaling factor.
    #[serde(default = "one")]
    pub factor: f64,
    /// llama3: low-frequency factor.
    #[serde(default = "one")]
    pub low_freq_factor: f64,
    /// llama3: high-frequency factor.
    #[serde(default = "four")]
    pub high_freq_factor: f64,
    /// llama3: the context the model was pre-trained on.
    #[serde(default = "default_original_context")]
    pub original_max_position_embeddings: usize,
}

fn one() -> f64 {
    1.0
}
fn four() -> f64 {
    4.0
}
fn default_original_context() -> usize {
    8192
}
fn default_theta() -> f64 {
    10000.0
}
fn default_act() -> String {
    "silu".into()
}
fn default_eps() -> f64 {
    1e-6
}

/// `eos_token_id` is an id or a list of ids in HF configs.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
enum EosIds {
    One(u32),
    Many(Vec<u32>),
}

/// A Llama-architecture configuration (Llama 2/3, Mistral, Qwen2, SmolLM2).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct LlamaConfig {
    /// HF `model_type` (`llama`, `mistral`, `qwen2`).
    #[serde(default)]
    pub model_type: Option<String>,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Hidden size.
    pub hidden_size: usize,
    /// MLP intermediate size.
    pub intermediate_size: usize,
    /// Number of decoder layers.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (GQA); defaults to the query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Per-head size; defaults to `hidden_size / num_attention_heads`.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base.
    #[serde(default = "default_theta")]
    pub rope_theta: f64,
    /// RoPE scaling, if any.
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    /// The native context.
    pub max_position_embeddings: usize,
    /// Whether the LM head shares the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Whether q/k/v projections carry biases (Qwen2 always does).
    #[serde(default)]
    pub attention_bias: bool,
    /// BOS id.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default, rename = "eos_token_id")]
    eos: Option<EosIds>,
    /// FocusLLM: which projections have candidate copies (`q k v o`, `mlp`); informational.
    #[serde(default)]
    pub beacon_param: Option<Vec<String>>,
    /// The MLP activation (`hidden_act`); only SiLU (SwiGLU) is implemented.
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

impl LlamaConfig {
    /// Parses and validates an HF `config.json`.
    pub fn from_json_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_json_str(&text, path)
    }

    /// Parses and validates `config.json` text (`path` is only used in errors).
    pub fn from_json_str(text: &str, path: &Path) -> Result<Self, ModelError> {
        #[derive(Deserialize)]
        struct Probe {
            model_type: Option<String>,
            architectures: Option<Vec<String>>,
        }
        let bad = |e: serde_json::Error| ModelError::Config {
            path: path.into(),
            reason: e.to_string(),
        };
        let probe: Probe = serde_json::from_str(text).map_err(bad)?;
        // `model_type` names the family; older or hand-written configs only list HF class names.
        let arch = probe
            .model_type
            .clone()
            .or_else(|| {
                let class = probe.architectures.as_ref()?.first()?.clone();
                Some(
                    match class.as_str() {
                        "LlamaForCausalLM" => "llama",
                        "MistralForCausalLM" => "mistral",
                        "Qwen2ForCausalLM" => "qwen2",
                        _ => return Some(class),
                    }
                    .to_string(),
                )
            })
            .unwrap_or_default();
        if !matches!(arch.as_str(), "llama" | "mistral" | "qwen2") {
            return Err(ModelError::UnsupportedArchitecture {
                arch,
                supported: SUPPORTED_ARCHITECTURES,
            });
        }
        let mut config: Self = serde_json::from_str(text).map_err(bad)?;
        if arch == "qwen2" {
            config.attention_bias = true;
        }
        config.validate(path)?;
        Ok(config)
    }

    /// Checks that the sizes are consistent.
    pub fn validate(&self, path: &Path) -> Result<(), ModelError> {
        let fail = |reason: String| {
            Err(ModelError::Config {
                path: path.into(),
                reason,
            })
        };
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.kv_heads()),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return fail(format!("`{name}` must be positive"));
            }
        }
        if !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return fail(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_attention_heads,
                self.kv_heads()
            ));
        }
        if self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return fail(format!(
                "`hidden_size` ({}) is not a multiple of `num_attention_heads` ({}) and no \
                 `head_dim` is given",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.head_dim() == 0 || !self.head_dim().is_multiple_of(2) {
            return fail(format!(
                "head_dim ({}) must be even and positive",
                self.head_dim()
            ));
        }
        if !matches!(self.hidden_act.as_str(), "silu" | "swish") {
            return fail(format!(
                "`hidden_act` `{}` is not supported (silu)",
                self.hidden_act
            ));
        }
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                fail(format!("`{name}` ({v}) must be a finite positive number"))
            }
        };
        positive("rope_theta", self.rope_theta)?;
        positive("rms_norm_eps", self.rms_norm_eps)?;
        if let Some(s) = &self.rope_scaling {
            if !matches!(s.rope_type.as_str(), "linear" | "llama3" | "default") {
                return fail(format!(
                    "rope_scaling type `{}` is not supported (linear, llama3)",
                    s.rope_type
                ));
            }
            positive("rope_scaling.factor", s.factor)?;
            positive("rope_scaling.low_freq_factor", s.low_freq_factor)?;
            positive("rope_scaling.high_freq_factor", s.high_freq_factor)?;
            if s.original_max_position_embeddings == 0 {
                return fail(
                    "`rope_scaling.original_max_position_embeddings` must be positive".into(),
                );
            }
        }
        for (name, id) in [("bos_token_id", self.bos_token_id)].into_iter().chain(
            self.eos_ids()
                .into_iter()
                .map(|id| ("eos_token_id", Some(id))),
        ) {
            if let Some(id) = id
                && id as usize >= self.vocab_size
            {
                return fail(format!(
                    "`{name}` ({id}) is outside the vocabulary of {} tokens",
                    self.vocab_size
                ));
            }
        }
        // The largest weights must have a size this machine can count (no wrapped arithmetic).
        let hidden = self.hidden_size;
        for (name, dims) in [
            (
                "embeddings (vocab_size x hidden_size)",
                [self.vocab_size, hidden],
            ),
            (
                "q_proj (num_attention_heads x head_dim x hidden_size)",
                [
                    self.num_attention_heads.saturating_mul(self.head_dim()),
                    hidden,
                ],
            ),
            (
                "mlp (intermediate_size x hidden_size)",
                [self.intermediate_size, hidden],
            ),
        ] {
            if dims[0]
                .checked_mul(dims[1])
                .and_then(|n| n.checked_mul(4))
                .is_none()
                || dims[0] == usize::MAX
            {
                return fail(format!("{name} is too large to hold: {dims:?}"));
            }
        }
        Ok(())
    }

    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Per-head size.
    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }

    /// EOS ids (may be empty).
    pub fn eos_ids(&self) -> Vec<u32> {
        match &self.eos {
            Some(EosIds::One(id)) => vec![*id],
            Some(EosIds::Many(ids)) => ids.clone(),
            None => Vec::new(),
        }
    }

    /// Sets the EOS ids.
    pub fn set_eos_ids(&mut self, ids: Vec<u32>) {
        self.eos = Some(EosIds::Many(ids));
    }

    /// A configuration built from explicit sizes (used by the GGUF loader and tests).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        vocab_size: usize,
        hidden_size: usize,
        intermediate_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        num_key_value_heads: usize,
        rope_theta: f64,
        rms_norm_eps: f64,
        max_position_embeddings: usize,
    ) -> Self {
        Self {
            model_type: Some("llama".into()),
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: Some(num_key_value_heads),
            head_dim: None,
            rms_norm_eps,
            rope_theta,
            rope_scaling: None,
            max_position_embeddings,
            tie_word_embeddings: false,
            attention_bias: false,
            bos_token_id: None,
            eos: None,
            beacon_param: None,
            hidden_act: default_act(),
        }
    }
}
