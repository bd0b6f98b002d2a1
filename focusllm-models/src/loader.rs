//! Loading a checkpoint (HF directory or GGUF file) into a [`LlamaModel`] and its tokenizer.

use std::path::{Path, PathBuf};

use burn::tensor::{DType, Tensor, TensorData, backend::Backend};

use crate::config::{LlamaConfig, SUPPORTED_ARCHITECTURES};
use crate::error::ModelError;
use crate::gguf::GgufFile;
use crate::llama::{
    Attention, CandidateMlp, CandidateProjections, CandidateSource, DecoderLayer, LlamaModel, Mlp,
    linear_from_hf,
};
use crate::tokenizer::Tokenizer;
use crate::weights::{GgufWeights, SafetensorsWeights, WeightSource};

/// A model ready to run, with its tokenizer (when the checkpoint has one).
pub struct LoadedModel<B: Backend> {
    /// The decoder.
    pub model: LlamaModel<B>,
    /// The tokenizer (`tokenizer.json` of an HF directory, or rebuilt from GGUF metadata).
    pub tokenizer: Option<Tokenizer>,
    /// Where it was loaded from.
    pub path: PathBuf,
}

/// Choices made while loading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Load trained candidate projections when the checkpoint has them (`false`: the candidate
    /// uses the ordinary projections, like an untrained FocusLLM model).
    pub trained_candidates: bool,
    /// Compute dtype (`F32`, `F16` or `BF16`; the backend must support it). Weights are converted
    /// once at load.
    pub dtype: DType,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            trained_candidates: true,
            dtype: DType::F32,
        }
    }
}

/// Loads an HF model directory (`config.json`, safetensors, optional `tokenizer.json`) or a GGUF
/// file, on `device`.
pub fn load_model<B: Backend>(
    path: &Path,
    device: &B::Device,
) -> Result<LoadedModel<B>, ModelError> {
    load_model_with(path, device, &LoadOptions::default())
}

/// [`load_model`] with options.
pub fn load_model_with<B: Backend>(
    path: &Path,
    device: &B::Device,
    options: &LoadOptions,
) -> Result<LoadedModel<B>, ModelError> {
    if !path.exists() {
        return Err(ModelError::io(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        ));
    }
    if path.is_dir() {
        let config = LlamaConfig::from_json_file(&path.join("config.json"))?;
        let weights = SafetensorsWeights::open_dir(path)?;
        let model = build_model_with(config, &weights, device, options)?;
        let tok_path = path.join("tokenizer.json");
        let tokenizer = if tok_path.exists() {
            Some(Tokenizer::from_file(&tok_path)?)
        } else {
            None
        };
        Ok(LoadedModel {
            model,
            tokenizer,
            path: path.into(),
        })
    } else {
        let gguf = GgufFile::open(path)?;
        let config = config_from_gguf(&gguf)?;
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        let weights = GgufWeights::new(gguf, config.num_attention_heads, config.kv_heads());
        let model = build_model_with(config, &weights, device, options)?;
        Ok(LoadedModel {
            model,
            tokenizer: Some(tokenizer),
            path: path.into(),
        })
    }
}

/// Reads a Llama configuration from GGUF metadata (`general.architecture` must be `llama`).
pub fn config_from_gguf(gguf: &GgufFile) -> Result<LlamaConfig, ModelError> {
    let arch = gguf.get_str("general.architecture")?.to_string();
    if arch != "llama" {
        return Err(ModelError::UnsupportedArchitecture {
            arch,
            supported: SUPPORTED_ARCHITECTURES,
        });
    }
    let int = |key: &str| gguf.get_u64(&format!("llama.{key}")).map(|v| v as usize);
    let heads = int("attention.head_count")?;
    let vocab = match gguf.get("llama.vocab_size").and_then(|v| v.as_u64()) {
        Some(v) => v as usize,
        None => gguf
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.as_array())
            .map(|a| a.len())
            .ok_or_else(|| ModelError::Gguf {
                path: gguf.path().into(),
                reason: "neither llama.vocab_size nor tokenizer.ggml.tokens is present".into(),
            })?,
    };
    let mut config = LlamaConfig::new(
        vocab,
        int("embedding_length")?,
        int("feed_forward_length")?,
        int("block_count")?,
        heads,
        int("attention.head_count_kv").unwrap_or(heads),
        gguf.get("llama.rope.freq_base")
            .and_then(|v| v.as_f64())
            .unwrap_or(10000.0),
        gguf.get_f64("llama.attention.layer_norm_rms_epsilon")?,
        int("context_length")?,
    );
    if let Some(dim) = gguf
        .get("llama.rope.dimension_count")
        .and_then(|v| v.as_u64())
    {
        config.head_dim = Some(dim as usize);
    }
    config.tie_word_embeddings = gguf.tensor_info("output.weight").is_none();
    config.bos_token_id = gguf
        .get("tokenizer.ggml.bos_token_id")
        .and_then(|v| v.as_u64())
        .map(|v| v as u32);
    let eos = gguf
        .get("tokenizer.ggml.eos_token_id")
        .and_then(|v| v.as_u64())
        .map(|v| v as u32);
    config.set_eos_ids(eos.into_iter().collect());
    config.validate(gguf.path())?;
    Ok(config)
}

/// Loads tensors by HF name, checking shapes against the config.
struct TensorLoader<'a, B: Backend> {
    source: &'a dyn WeightSource,
    device: &'a B::Device,
}

impl<B: Backend> TensorLoader<'_, B> {
    fn raw(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>, ModelError> {
        let (shape, data) = self.source.load_f32(name)?;
        if shape != expected {
            return Err(ModelError::ShapeMismatch {
                tensor: name.into(),
                expected: expected.to_vec(),
                found: shape,
            });
        }
        Ok(data)
    }

    fn has(&self, name: &str) -> bool {
        self.source.shape(name).is_some()
    }

    fn vector(&self, name: &str, len: usize) -> Result<Tensor<B, 1>, ModelError> {
        let data = self.raw(name, &[len])?;
        Ok(Tensor::from_data(TensorData::new(data, [len]), self.device))
    }

    fn linear(
        &self,
        name: &str,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> Result<burn::nn::Linear<B>, ModelError> {
        let weight = self.raw(&format!("{name}.weight"), &[out, inp])?;
        let bias = if bias {
            Some(self.raw(&format!("{name}.bias"), &[out])?)
        } else {
            None
        };
        Ok(linear_from_hf(weight, out, inp, bias, self.device))
    }
}

/// Builds a [`LlamaModel`] from any weight source. Candidate projections (`beacon_*`) are loaded
/// when present, for every layer or none; otherwise the candidate uses the ordinary projections.
pub fn build_model<B: Backend>(
    config: LlamaConfig,
    source: &dyn WeightSource,
    device: &B::Device,
) -> Result<LlamaModel<B>, ModelError> {
    build_model_with(config, source, device, &LoadOptions::default())
}

/// [`build_model`] with options.
pub fn build_model_with<B: Backend>(
    config: LlamaConfig,
    source: &dyn WeightSource,
    device: &B::Device,
    options: &LoadOptions,
) -> Result<LlamaModel<B>, ModelError> {
    let t = TensorLoader::<B> { source, device };
    let (hidden, inter, vocab) = (
        config.hidden_size,
        config.intermediate_size,
        config.vocab_size,
    );
    let (q_out, kv_out) = (
        config.num_attention_heads * config.head_dim(),
        config.kv_heads() * config.head_dim(),
    );
    let bias = config.attention_bias;
    let trained =
        options.trained_candidates && t.has("model.layers.0.self_attn.beacon_q_proj.weight");
    let mut layers = Vec::with_capacity(config.num_hidden_layers);
    for i in 0..config.num_hidden_layers {
        let p = format!("model.layers.{i}");
        let a = format!("{p}.self_attn");
        let candidate = if trained {
            // The reference's beacon projections carry the same biases as the ordinary ones.
            let cand_bias = bias && t.has(&format!("{a}.beacon_q_proj.bias"));
            Some(CandidateProjections {
                q: t.linear(&format!("{a}.beacon_q_proj"), q_out, hidden, cand_bias)?,
                k: t.linear(&format!("{a}.beacon_k_proj"), kv_out, hidden, cand_bias)?,
                v: t.linear(&format!("{a}.beacon_v_proj"), kv_out, hidden, cand_bias)?,
                o: t.linear(&format!("{a}.beacon_o_proj"), hidden, q_out, false)?,
            })
        } else {
            None
        };
        let attn = Attention::new(
            t.linear(&format!("{a}.q_proj"), q_out, hidden, bias)?,
            t.linear(&format!("{a}.k_proj"), kv_out, hidden, bias)?,
            t.linear(&format!("{a}.v_proj"), kv_out, hidden, bias)?,
            t.linear(&format!("{a}.o_proj"), hidden, q_out, false)?,
            candidate,
            &config,
        );
        let m = format!("{p}.mlp");
        let mlp_candidate = if trained && t.has(&format!("{m}.beacon_up_proj.weight")) {
            Some(CandidateMlp {
                up: t.linear(&format!("{m}.beacon_up_proj"), inter, hidden, false)?,
                down: t.linear(&format!("{m}.beacon_down_proj"), hidden, inter, false)?,
            })
        } else {
            None
        };
        let mlp = Mlp {
            gate: t.linear(&format!("{m}.gate_proj"), inter, hidden, false)?,
            up: t.linear(&format!("{m}.up_proj"), inter, hidden, false)?,
            down: t.linear(&format!("{m}.down_proj"), hidden, inter, false)?,
            candidate: mlp_candidate,
        };
        layers.push(DecoderLayer {
            input_norm: burn::module::Param::from_tensor(
                t.vector(&format!("{p}.input_layernorm.weight"), hidden)?,
            ),
            attn,
            post_attn_norm: burn::module::Param::from_tensor(
                t.vector(&format!("{p}.post_attention_layernorm.weight"), hidden)?,
            ),
            mlp,
        });
    }
    let embed_data = t.raw("model.embed_tokens.weight", &[vocab, hidden])?;
    let embed = Tensor::from_data(TensorData::new(embed_data, [vocab, hidden]), device);
    let norm = t.vector("model.norm.weight", hidden)?;
    let lm_head = if config.tie_word_embeddings && !t.has("lm_head.weight") {
        None
    } else {
        let data = t.raw("lm_head.weight", &[vocab, hidden])?;
        // Stored `[hidden, vocab]` so the head is one plain matmul.
        let mut transposed = vec![0f32; data.len()];
        for (v, row) in data.chunks_exact(hidden).enumerate() {
            for (h, w) in row.iter().enumerate() {
                transposed[h * vocab + v] = *w;
            }
        }
        Some(Tensor::from_data(
            TensorData::new(transposed, [hidden, vocab]),
            device,
        ))
    };
    let source_kind = if trained {
        CandidateSource::Trained
    } else {
        CandidateSource::CopiedFromBase
    };
    let model = LlamaModel::from_parts(config, embed, layers, norm, lm_head, source_kind);
    Ok(if options.dtype == DType::F32 {
        model
    } else {
        model.with_compute_dtype(options.dtype)
    })
}
