//! Loading a checkpoint (HF directory or GGUF file) into a [`LlamaModel`] and its tokenizer.

use std::path::{Path, PathBuf};

use burn::tensor::{DType, backend::Backend};

use crate::config::{LlamaConfig, SUPPORTED_ARCHITECTURES};
use crate::error::ModelError;
use crate::gguf::GgufFile;
use crate::gguf::GgufWeights;
use crate::llama::LlamaModel;
use crate::quantized::ActivationPrecision;
use crate::tokenizer::Tokenizer;
use crate::weights::{SafetensorsWeights, WeightSource};

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
///
/// ```
/// use std::path::Path;
///
/// use burn::backend::Flex;
/// use burn::tensor::DType;
/// use focusllm_models::{CandidateSource, LoadOptions, load_model_with};
///
/// // The tiny test model C of the focusllm workspace (this crate's directory is in it): an HF
/// // directory with `config.json` and `model.safetensors`, and no tokenizer.
/// let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/official/C"));
/// // The model as an untrained FocusLLM: the candidate uses the ordinary projections.
/// let options = LoadOptions { trained_candidates: false, ..Default::default() };
/// let model = load_model_with::<Flex>(dir, &Default::default(), &options)?.model;
/// assert_eq!(model.candidate_source(), CandidateSource::CopiedFromBase);
/// assert_eq!(model.compute_dtype(), DType::F32); // the default dtype
/// # Ok::<(), focusllm_models::ModelError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Load trained candidate projections when the checkpoint has them (`false`: the candidate
    /// uses the ordinary projections, like an untrained FocusLLM model).
    pub trained_candidates: bool,
    /// Compute dtype (`F32`, `F16` or `BF16`; the backend must support it). Weights are converted
    /// once at load.
    pub dtype: DType,
    /// Keep a GGUF's quantized matrices (`Q4_0`, `Q4_1`, `Q8_0`, the K-quants, ...: the
    /// projections, the token table and the LM head) in their blocks as stored and multiply them
    /// directly, instead of decoding them to `f32` at load: the model takes a quarter to a
    /// seventh of the memory for them, and a decoding step, which reads every weight once, runs
    /// faster. The numbers are those of the `f32` model up to rounding (the blocks hold the same
    /// weights; sums run in another order). Needs the flex (CPU) backend and `F32` compute;
    /// plain-float tensors (and safetensors checkpoints) load dense either way.
    pub keep_quantized: bool,
    /// How a decoding step's activations meet the quantized matrices (with
    /// [`keep_quantized`](Self::keep_quantized)): `F32` (the default: the `f32` model's numbers
    /// up to rounding) or `Int8` (rounded to 8 bits per block of 32 and multiplied in integers,
    /// as llama.cpp does: faster steps, the activations' rounding in every product; see
    /// [`ActivationPrecision`]). `Int8` without `keep_quantized` is refused.
    pub activations: ActivationPrecision,
}

impl LoadOptions {
    /// These options with [`keep_quantized`](Self::keep_quantized) set where backend `B` and the
    /// compute dtype can multiply quantized weights (flex with `F32`: less memory and faster
    /// decoding steps, the same numbers up to rounding), and cleared elsewhere (GPU backends,
    /// autodiff, half precision), so that the same code loads a model on any backend.
    ///
    /// ```
    /// use burn::backend::Flex;
    /// use burn::tensor::DType;
    /// use focusllm_models::LoadOptions;
    ///
    /// // The kernels come with the crate's `cpu` feature (on by default).
    /// let f32 = LoadOptions::default().keep_quantized_where_supported::<Flex>();
    /// assert_eq!(f32.keep_quantized, cfg!(feature = "cpu"));
    /// let half = LoadOptions { dtype: DType::F16, ..Default::default() };
    /// assert!(!half.keep_quantized_where_supported::<Flex>().keep_quantized);
    /// ```
    pub fn keep_quantized_where_supported<B: Backend>(self) -> Self {
        Self {
            keep_quantized: crate::llama::check_keeps_quantized::<B>(self.dtype).is_ok(),
            ..self
        }
    }
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            trained_candidates: true,
            dtype: DType::F32,
            keep_quantized: false,
            activations: ActivationPrecision::F32,
        }
    }
}

/// Loads an HF model directory (`config.json`, safetensors, optional `tokenizer.json`) or a GGUF
/// file, on `device`.
///
/// ```
/// use std::path::Path;
///
/// use burn::backend::Flex;
/// use focusllm_models::{CandidateSource, load_model};
///
/// // The tiny test model C of the focusllm workspace (this crate's directory is in it): an HF
/// // directory with `config.json` and `model.safetensors`, and no tokenizer.
/// let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/official/C"));
/// let loaded = load_model::<Flex>(dir, &Default::default())?;
/// assert_eq!(loaded.model.config().num_hidden_layers, 3);
/// // It has FocusLLM's trained candidate projections (`beacon_*` tensors).
/// assert_eq!(loaded.model.candidate_source(), CandidateSource::Trained);
/// assert!(loaded.tokenizer.is_none());
/// # Ok::<(), focusllm_models::ModelError>(())
/// ```
pub fn load_model<B: Backend>(
    path: &Path,
    device: &B::Device,
) -> Result<LoadedModel<B>, ModelError> {
    load_model_with(path, device, &LoadOptions::default())
}

/// [`load_model`] with options (see [`LoadOptions`]' example).
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
    // Sizes from the file: counts beyond usize are refused, not wrapped.
    let size = |key: &str, v: u64| {
        usize::try_from(v).map_err(|_| ModelError::Gguf {
            path: gguf.path().into(),
            reason: format!("metadata key `{key}` ({v}) does not fit this machine's usize"),
        })
    };
    let int = |key: &str| {
        let key = format!("llama.{key}");
        size(&key, gguf.get_u64(&key)?)
    };
    let opt_int = |key: &str| -> Result<Option<usize>, ModelError> {
        let key = format!("llama.{key}");
        gguf.get_opt_u64(&key)?.map(|v| size(&key, v)).transpose()
    };
    let token_id = |key: &str| -> Result<Option<u32>, ModelError> {
        gguf.get_opt_u64(key)?
            .map(|v| {
                u32::try_from(v).map_err(|_| ModelError::Gguf {
                    path: gguf.path().into(),
                    reason: format!("metadata key `{key}` ({v}) is not a token id"),
                })
            })
            .transpose()
    };
    // Named by their GGUF keys here; `validate` would name the config fields.
    let positive = |key: &str, v: f64| {
        if v.is_finite() && v > 0.0 {
            Ok(v)
        } else {
            Err(ModelError::Gguf {
                path: gguf.path().into(),
                reason: format!("metadata key `{key}` ({v}) must be a finite positive number"),
            })
        }
    };
    let heads = int("attention.head_count")?;
    let vocab = match opt_int("vocab_size")? {
        Some(v) => v,
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
        opt_int("attention.head_count_kv")?.unwrap_or(heads),
        positive(
            "llama.rope.freq_base",
            gguf.get_opt_f64("llama.rope.freq_base")?.unwrap_or(10000.0),
        )?,
        positive(
            "llama.attention.layer_norm_rms_epsilon",
            gguf.get_f64("llama.attention.layer_norm_rms_epsilon")?,
        )?,
        int("context_length")?,
    );
    config.head_dim = opt_int("rope.dimension_count")?;
    config.tie_word_embeddings = gguf.tensor_info("output.weight").is_none();
    config.bos_token_id = token_id("tokenizer.ggml.bos_token_id")?;
    let eos = token_id("tokenizer.ggml.eos_token_id")?;
    config.set_eos_ids(eos.into_iter().collect());
    config.validate(gguf.path())?;
    Ok(config)
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
    LlamaModel::load(config, source, device, options)
}
