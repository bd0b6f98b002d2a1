//! A Llama-architecture decoder (Llama 2/3, Mistral, Qwen2, SmolLM2) on any burn backend, with
//! FocusLLM's candidate projections.
//!
//! One forward serves every pass: plain decoding, the chunk pass (the last position is the
//! candidate and uses the candidate projections) and the main pass (a past whose keys still need
//! RoPE, at positions chosen by the caller).

mod attention;
mod kv_buffer;
mod kv_rows;
mod layer;
pub(crate) mod masked_attention;
mod mlp;
pub(crate) mod ops;
mod projection;
mod token_table;
mod work;

use burn::module::{Module, Param};
use burn::tensor::{DType, Int, Tensor, TensorData, backend::Backend};

use attention::LayerPast;
pub use attention::{Attention, CandidateProjections, Candidates};
pub(crate) use kv_buffer::CacheRead;
pub use kv_buffer::KvBuffer;
pub use layer::DecoderLayer;
pub use mlp::{CandidateMlp, Mlp};
pub use projection::{Projection, QuantizedLinear};
pub use token_table::{QuantizedTable, TokenTable};
pub use work::WorkCounter;

use crate::config::LlamaConfig;
use crate::error::ModelError;
use crate::kernels::{self, Kernels, MatmulPrecision, Products};
use crate::loader::LoadOptions;
use crate::quantized::{ActivationPrecision, QuantizedMatrix};
use crate::rope::{Rope, apply_rope_with};
use crate::weights::{WeightSource, Weights};
use masked_attention::AttentionPlan;
use ops::{CastParams, from_f32, rms_norm};

/// Positions per forward of a long prefill unless set otherwise (see
/// [`LlamaModel::set_prefill_block`]). Measured on SmolLM2-135M with 2 cores: a plain prefill
/// of 8K tokens as fast as in one forward with a quarter less peak memory (1049 MiB against
/// 1395), FocusLLM's prefill of 16K at reference sizes 5-8% faster.
pub const DEFAULT_PREFILL_BLOCK: usize = 512;

/// Where a model's candidate projections came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CandidateSource {
    /// Trained candidate projections were loaded (the official `beacon_*` tensors).
    Trained,
    /// The checkpoint had none: the candidate uses the ordinary projections (the reference's copy).
    CopiedFromBase,
    /// Candidate projections from a [`crate::adapter::CandidateAdapter`] (trained separately).
    Adapter,
}

/// Refuses [`LoadOptions::keep_quantized`] where its kernels cannot run: another backend than
/// flex (CPU), or another compute dtype than `F32`.
pub(crate) fn check_keeps_quantized<B: Backend>(dtype: DType) -> Result<(), ModelError> {
    #[cfg(feature = "cpu")]
    let flex = crate::cpu::is_flex::<B>();
    #[cfg(not(feature = "cpu"))]
    let flex = false;
    let reason = if !flex {
        format!(
            "quantized weights are multiplied by CPU kernels: they need the cpu backend (flex), \
             not {}",
            std::any::type_name::<B>()
        )
    } else if dtype != DType::F32 {
        format!(
            "quantized weights are multiplied in f32: the compute dtype must be f32, not {dtype:?}"
        )
    } else {
        return Ok(());
    };
    Err(ModelError::UnsupportedOption {
        option: "keep_quantized",
        reason,
    })
}

/// The whole decoder.
#[derive(Module, Debug)]
pub struct LlamaModel<B: Backend> {
    /// Token embeddings `[vocab, hidden]` (also the LM head when `lm_head` is `None`).
    pub embed: TokenTable<B>,
    /// Decoder layers.
    pub layers: Vec<DecoderLayer<B>>,
    /// Final RMSNorm weight.
    pub norm: Param<Tensor<B, 1>>,
    /// LM head, hidden to vocab (`None`: tied to the embeddings).
    pub lm_head: Option<Projection<B>>,
    #[module(skip)]
    config: LlamaConfig,
    #[module(skip)]
    rope: Rope,
    #[module(skip)]
    candidate_source: CandidateSource,
    #[module(skip)]
    cache_dtype: Option<DType>,
    #[module(skip)]
    kernels: Kernels,
    #[module(skip)]
    matmul_precision: MatmulPrecision,
    #[module(skip)]
    work: WorkCounter,
    #[module(skip)]
    prefill_block: usize,
}

/// The past a forward's new tokens attend to, besides themselves.
#[derive(Debug)]
pub enum Past<'a, B: Backend> {
    /// None: the new tokens start their sequences.
    None,
    /// Keys already rotated to their positions, read only (their positions never change: raw
    /// chunk caches, plain KV caches).
    Rotated(&'a [PastKv<B>]),
    /// Keys before RoPE, rotated in the forward at these positions (one row per batch element).
    Unrotated(&'a [PastKv<B>], &'a [Vec<usize>]),
    /// A KV cache per layer (keys rotated): each layer appends the new tokens' keys and values to
    /// it, in place, and attends to what it then holds.
    Cache(&'a mut [KvBuffer<B>]),
    /// Several batches with caches of their own, run as one forward: the rows of `ids` are the
    /// batches' rows in order. Projections and MLP see every row at once (one pass over the
    /// weights), attention runs batch by batch as with [`Past::Cache`], each batch with its own
    /// padding ([`ForwardInput::left_pad`] and [`ForwardInput::focus_keys`] do not apply).
    Batches(Vec<CacheBatch<'a, B>>),
}

/// One batch of [`Past::Batches`].
#[derive(Debug)]
pub struct CacheBatch<'a, B: Backend> {
    /// The batch's KV cache per layer (keys rotated), `[rows, kv_heads, len, head_dim]`.
    pub caches: &'a mut [KvBuffer<B>],
    /// Per row, how many leading positions (of cache ++ new) are padding; its length is the
    /// batch's number of rows.
    pub left_pad: &'a [usize],
}

impl<B: Backend> Past<'_, B> {
    /// Positions in the past (those of layer 0; with batches, the longest batch's).
    pub fn len(&self) -> usize {
        match self {
            Past::None => 0,
            Past::Rotated(layers) | Past::Unrotated(layers, _) => {
                layers.first().map_or(0, |kv| kv.len())
            }
            Past::Cache(layers) => layers.first().map_or(0, KvBuffer::len),
            Past::Batches(batches) => batches
                .iter()
                .map(|b| b.caches.first().map_or(0, KvBuffer::len))
                .max()
                .unwrap_or(0),
        }
    }

    /// Whether the past holds no position.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A cos and a sin table from [`Rope::tables`].
pub(crate) type RopeTables<'a, B> = (&'a Tensor<B, 4>, &'a Tensor<B, 4>);

/// Keys and values of one layer's past, `[batch, kv_heads, len, head_dim]`.
pub type PastKv<B> = focusllm_core::LayerKv<B>;

/// What a forward produced for the new tokens, per layer.
#[derive(Debug, Clone)]
pub struct NewKv<B: Backend> {
    /// Keys before RoPE `[batch, kv_heads, seq, head_dim]`.
    pub k_unrotated: Tensor<B, 4>,
    /// Keys after RoPE.
    pub k_rotated: Tensor<B, 4>,
    /// Values.
    pub v: Tensor<B, 4>,
}

/// Inputs of [`LlamaModel::forward`].
pub struct ForwardInput<'a, B: Backend> {
    /// Token ids `[batch, seq]`.
    pub ids: Tensor<B, 2, Int>,
    /// Positions of the new tokens, one row of `seq` per batch element.
    pub positions: &'a [Vec<usize>],
    /// What the new tokens attend to besides themselves.
    pub past: Past<'a, B>,
    /// Per batch element, how many leading positions (of past ++ new) are padding to hide.
    pub left_pad: Option<&'a [usize]>,
    /// Which new positions are candidate tokens (they use the candidate projections).
    pub candidates: Candidates,
    /// For how many of the last positions to compute next-token logits (0: none, skips the LM head).
    /// With neither logits nor focus asked for, nothing reads the last layer's output: that layer
    /// then computes only the new keys and values.
    pub logits_last: usize,
    /// Measure the last position's attention share over the first `focus_keys` past positions
    /// (the candidates of a main pass; 0: nothing measured). See [`ForwardOutput::focus`].
    pub focus_keys: usize,
}

/// What [`LlamaModel::forward`] returns.
pub struct ForwardOutput<B: Backend> {
    /// Logits at the last `logits_last` positions `[batch, logits_last, vocab]`, when asked for.
    pub logits: Option<Tensor<B, 3>>,
    /// The new tokens' keys and values per layer.
    pub kv: Vec<NewKv<B>>,
    /// With `focus_keys`, the share of the last position's attention that went to each of the
    /// first `focus_keys` past positions, averaged over heads and layers, `[batch, focus_keys]`
    /// (f32; the rest went to the other positions).
    pub focus: Option<Tensor<B, 2>>,
}

impl<B: Backend> LlamaModel<B> {
    /// Loads a model from `source` under HF tensor names (`model.embed_tokens`, `model.layers.{i}`,
    /// `model.norm`, `lm_head`; see each module's `load`): a GGUF source maps its own names to
    /// these. The reference's trained candidate projections (`beacon_*`) are loaded when present
    /// and `options.trained_candidates`; the weights are then cast to `options.dtype`.
    ///
    /// [`crate::load_model`] does this for HF directories and GGUF files; this takes any
    /// [`WeightSource`]:
    ///
    /// ```
    /// use std::path::Path;
    ///
    /// use burn::backend::Flex;
    /// use focusllm_models::{LlamaConfig, LlamaModel, LoadOptions, SafetensorsWeights};
    ///
    /// // The tiny test model C of the focusllm workspace (this crate's directory is in it): an HF
    /// // directory with `config.json` and `model.safetensors`, and no tokenizer.
    /// let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/official/C"));
    /// let config = LlamaConfig::from_json_file(&dir.join("config.json"))?;
    /// let weights = SafetensorsWeights::open_dir(dir)?;
    /// let device = Default::default();
    /// let model = LlamaModel::<Flex>::load(config, &weights, &device, &LoadOptions::default())?;
    /// assert_eq!(model.config().vocab_size, 512);
    /// assert_eq!(model.layers.len(), 3);
    /// # Ok::<(), focusllm_models::ModelError>(())
    /// ```
    pub fn load(
        config: LlamaConfig,
        source: &dyn WeightSource,
        device: &B::Device,
        options: &LoadOptions,
    ) -> Result<Self, ModelError> {
        config.validate(source.location())?;
        if options.keep_quantized {
            check_keeps_quantized::<B>(options.dtype)?;
        }
        if options.activations != ActivationPrecision::F32 && !options.keep_quantized {
            return Err(ModelError::UnsupportedOption {
                option: "activations",
                reason: format!(
                    "{:?} activations multiply quantized weights: they need keep_quantized",
                    options.activations
                ),
            });
        }
        let w = Weights::<B>::new(source, device).keep_quantized(options.keep_quantized);
        let (hidden, vocab) = (config.hidden_size, config.vocab_size);
        let trained =
            options.trained_candidates && w.has("model.layers.0.self_attn.beacon_q_proj.weight");
        // The layer count comes from the file: it is checked against the tensors that exist before
        // anything is allocated for it.
        let last = format!(
            "model.layers.{}.input_layernorm.weight",
            config.num_hidden_layers - 1
        );
        if !w.has(&last) {
            return Err(ModelError::MissingTensor {
                path: source.location().into(),
                tensor: last,
            });
        }
        let mut layers = Vec::new();
        for i in 0..config.num_hidden_layers {
            layers.push(DecoderLayer::load(
                &w.pp(&format!("model.layers.{i}")),
                &config,
                trained,
            )?);
        }
        let embed = w.token_table("model.embed_tokens.weight", vocab, hidden)?;
        let norm = w.vector("model.norm.weight", hidden)?;
        let lm_head = if config.tie_word_embeddings && !w.has("lm_head.weight") {
            None
        } else {
            Some(w.projection("lm_head", vocab, hidden, false)?)
        };
        let source_kind = if trained {
            CandidateSource::Trained
        } else {
            CandidateSource::CopiedFromBase
        };
        let mut model = Self::from_table(config, embed, layers, norm, lm_head, source_kind);
        model.set_activation_precision(options.activations);
        Ok(if options.dtype == DType::F32 {
            model
        } else {
            model.with_compute_dtype(options.dtype)
        })
    }

    /// Assembles a model from its parts (see [`LlamaModel::load`] for loading checkpoints).
    pub fn from_parts(
        config: LlamaConfig,
        embed: Tensor<B, 2>,
        layers: Vec<DecoderLayer<B>>,
        norm: Tensor<B, 1>,
        lm_head: Option<Tensor<B, 2>>,
        candidate_source: CandidateSource,
    ) -> Self {
        let lm_head = lm_head.map(|weight| {
            Projection::Dense(burn::nn::Linear {
                weight: Param::from_tensor(weight),
                bias: None,
            })
        });
        let embed = TokenTable::Dense(Param::from_tensor(embed));
        Self::from_table(config, embed, layers, norm, lm_head, candidate_source)
    }

    /// [`LlamaModel::from_parts`] with a token table and an LM head as they are (`[hidden, vocab]`
    /// as a projection).
    pub fn from_table(
        config: LlamaConfig,
        embed: TokenTable<B>,
        layers: Vec<DecoderLayer<B>>,
        norm: Tensor<B, 1>,
        lm_head: Option<Projection<B>>,
        candidate_source: CandidateSource,
    ) -> Self {
        let rope = Rope::new(&config);
        Self {
            embed,
            layers,
            norm: Param::from_tensor(norm),
            lm_head,
            config,
            rope,
            candidate_source,
            cache_dtype: None,
            kernels: Kernels::default(),
            matmul_precision: MatmulPrecision::default(),
            work: WorkCounter::default(),
            prefill_block: DEFAULT_PREFILL_BLOCK,
        }
    }

    /// Stores the KV caches kept between tokens (the chunks' raw caches, and the cache of plain
    /// decoding and of frozen mode's main decoder from the first step on) in `dtype` instead of
    /// the compute dtype: `DType::F16` or
    /// `DType::BF16` (half of f32's memory per cached token) or `DType::I8` (8 bits per value and
    /// an f32 scale per row of `head_dim`: a bit over a quarter), at the cost of rounding the
    /// cached keys and values (new positions are stored before they are read, so they are read
    /// rounded too). The fused CPU kernel reads them as they are; burn's operations widen them at
    /// every generated token. `None` restores the default.
    /// Fails (and keeps the current setting) on any other dtype.
    pub fn set_cache_dtype(&mut self, dtype: Option<DType>) -> Result<(), ModelError> {
        match dtype {
            None | Some(DType::F32 | DType::F16 | DType::BF16 | DType::I8) => {
                self.cache_dtype = dtype;
                Ok(())
            }
            Some(other) => Err(ModelError::UnsupportedCacheDtype {
                dtype: format!("{other:?}"),
            }),
        }
    }

    /// Chooses the attention and RoPE implementation: [`Kernels::Fused`] (the default: fused CPU
    /// kernels on flex with f32 activations) or [`Kernels::Burn`] (burn's tensor operations).
    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.kernels = kernels;
    }

    /// The attention and RoPE implementation (see [`LlamaModel::set_kernels`]).
    pub fn kernels(&self) -> Kernels {
        self.kernels
    }

    /// Chooses the precision of the matrix products: [`MatmulPrecision::F32`] (the default) or
    /// [`MatmulPrecision::Bf16`] (bf16 operands and f32 sums for the projections and attention
    /// of more than a few rows on the fused CPU kernels' path: prefills and exact steps up to
    /// twice as fast on CPUs with AVX-512 BF16, with bf16's rounding). Read at every forward.
    /// A warning is logged (`tracing`) when bf16 is asked for on the CPU backend of a CPU
    /// without AVX-512 BF16: the products then round as asked but run no faster than f32.
    pub fn set_matmul_precision(&mut self, precision: MatmulPrecision) {
        #[cfg(feature = "cpu")]
        if precision == MatmulPrecision::Bf16
            && crate::cpu::is_flex::<B>()
            && !crate::cpu::has_bf16_dot()
        {
            tracing::warn!(
                "bf16 products on a CPU without AVX-512 BF16: rounded as asked, but no faster than f32"
            );
        }
        self.matmul_precision = precision;
    }

    /// The precision of the matrix products asked for (see
    /// [`LlamaModel::set_matmul_precision`]).
    pub fn matmul_precision(&self) -> MatmulPrecision {
        self.matmul_precision
    }

    /// The precision the products run in: bf16 only where it was asked for and the fused CPU
    /// kernels apply (the flex backend with f32 compute and [`Kernels::Fused`]), f32 elsewhere.
    ///
    /// ```
    /// use burn::backend::Flex;
    /// use focusllm_models::{Kernels, LlamaConfig, LlamaModel, LoadOptions, MatmulPrecision, SafetensorsWeights};
    /// # use std::path::Path;
    /// # let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/official/C"));
    /// # let config = LlamaConfig::from_json_file(&dir.join("config.json"))?;
    /// # let weights = SafetensorsWeights::open_dir(dir)?;
    /// let mut model = LlamaModel::<Flex>::load(config, &weights, &Default::default(), &LoadOptions::default())?;
    /// model.set_matmul_precision(MatmulPrecision::Bf16);
    /// let expected = if cfg!(feature = "cpu") { MatmulPrecision::Bf16 } else { MatmulPrecision::F32 };
    /// assert_eq!(model.matmul_precision_in_effect(), expected);
    /// // burn's operations have no bf16 products.
    /// model.set_kernels(Kernels::Burn);
    /// assert_eq!(model.matmul_precision_in_effect(), MatmulPrecision::F32);
    /// # Ok::<(), focusllm_models::ModelError>(())
    /// ```
    pub fn matmul_precision_in_effect(&self) -> MatmulPrecision {
        if self.fused() {
            self.matmul_precision
        } else {
            MatmulPrecision::F32
        }
    }

    /// Sets how many positions one forward of a long input takes: a prefill (of the main decoder
    /// or of a chunk batch) runs in blocks of `block` tokens, each attending to the cache the
    /// blocks before it filled (0: the whole input in one forward). The default,
    /// [`DEFAULT_PREFILL_BLOCK`], keeps a block's activations in the CPU's caches and its buffers
    /// reused; larger blocks use more memory for the same arithmetic. Results equal one forward's
    /// up to rounding.
    pub fn set_prefill_block(&mut self, block: usize) {
        self.prefill_block = block;
    }

    /// Positions per forward of a long input (see [`LlamaModel::set_prefill_block`]).
    pub fn prefill_block(&self) -> usize {
        self.prefill_block
    }

    /// The analytic FLOPs of every forward of this model and its clones so far (see
    /// [`WorkCounter`]): divide a difference by the time taken for effective GFLOP/s.
    pub fn work(&self) -> &WorkCounter {
        &self.work
    }

    /// Whether this model's forwards run the fused CPU kernels.
    pub(crate) fn fused(&self) -> bool {
        kernels::fused::<B>(self.kernels, self.compute_dtype())
    }

    /// The dtype of the chunks' raw caches (`None`: the compute dtype).
    pub fn cache_dtype(&self) -> Option<DType> {
        self.cache_dtype
    }

    /// Converts the weights to `dtype` (`DType::F32`, `F16` or `BF16`; the backend must support it).
    /// Activations then flow in that dtype; RMSNorm, softmax and RoPE tables stay f32-accurate.
    pub fn with_compute_dtype(self, dtype: DType) -> Self {
        self.map(&mut CastParams(dtype))
    }

    /// The compute dtype (that of the weights).
    pub fn compute_dtype(&self) -> DType {
        // The final norm's weight is converted with every other dense weight (a quantized table
        // is not).
        self.norm.val().dtype()
    }

    /// Bytes the weights take: dense parameters at their dtype's size, and quantized matrices
    /// ([`LoadOptions::keep_quantized`]) in their blocks.
    pub fn weight_bytes(&self) -> usize {
        self.num_params() * self.compute_dtype().size() + self.quantized_bytes()
    }

    /// Bytes of the matrices kept quantized (0 when none is).
    pub fn quantized_bytes(&self) -> usize {
        self.quantized_matrices().map(|w| w.size_bytes()).sum()
    }

    /// The matrices kept in their quantized blocks ([`LoadOptions::keep_quantized`]): the
    /// ordinary projections, the token table and the LM head where the file stores them so.
    pub fn quantized_matrices(&self) -> impl Iterator<Item = &QuantizedMatrix> {
        let layers = self.layers.iter().flat_map(|l| {
            let (a, m) = (&l.attn, &l.mlp);
            [&a.q, &a.k, &a.v, &a.o, &m.gate, &m.up, &m.down]
        });
        let table = match &self.embed {
            TokenTable::Quantized(q) => Some(&q.table),
            TokenTable::Dense(_) => None,
        };
        layers
            .chain(self.lm_head.as_ref())
            .filter_map(|p| match p {
                Projection::Quantized(q) => Some(&q.weight),
                Projection::Dense(_) => None,
            })
            .chain(table)
    }

    /// Sets how a decoding step's activations meet every quantized matrix of this model (see
    /// [`ActivationPrecision`]; [`LoadOptions::activations`] sets it at load). A model without
    /// quantized matrices is left as it is.
    pub fn set_activation_precision(&mut self, precision: ActivationPrecision) {
        let with = |w: &mut QuantizedMatrix| *w = w.clone().with_activation_precision(precision);
        for layer in &mut self.layers {
            let (a, m) = (&mut layer.attn, &mut layer.mlp);
            for p in [
                &mut a.q,
                &mut a.k,
                &mut a.v,
                &mut a.o,
                &mut m.gate,
                &mut m.up,
                &mut m.down,
            ] {
                if let Projection::Quantized(q) = p {
                    with(&mut q.weight);
                }
            }
        }
        if let Some(Projection::Quantized(q)) = &mut self.lm_head {
            with(&mut q.weight);
        }
        if let TokenTable::Quantized(q) = &mut self.embed {
            with(&mut q.table);
        }
    }

    /// How a decoding step's activations meet this model's quantized matrices (`F32` when it has
    /// none; see [`LlamaModel::set_activation_precision`]).
    pub fn activation_precision(&self) -> ActivationPrecision {
        self.quantized_matrices()
            .next()
            .map_or(ActivationPrecision::F32, |w| w.activation_precision())
    }

    /// The model with `projections` (one per layer) as its candidate q, k, v, o projections.
    ///
    /// # Panics
    /// If `projections` does not hold one entry per layer (see
    /// [`crate::adapter::CandidateAdapter::apply`], which checks).
    pub fn with_candidate_projections(
        mut self,
        projections: Vec<CandidateProjections<B>>,
        source: CandidateSource,
    ) -> Self {
        assert_eq!(
            projections.len(),
            self.layers.len(),
            "one projection set per layer"
        );
        for (layer, p) in self.layers.iter_mut().zip(projections) {
            layer.attn.candidate = Some(p);
        }
        self.candidate_source = source;
        self
    }

    /// The configuration.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Whether the candidate projections were trained or copied from the ordinary ones.
    pub fn candidate_source(&self) -> CandidateSource {
        self.candidate_source
    }

    /// The device the weights live on.
    pub fn device(&self) -> B::Device {
        self.norm.val().device()
    }

    /// Token ids `[batch][seq]` as a tensor (rows must have equal length).
    pub fn ids_tensor(&self, rows: &[Vec<u32>]) -> Tensor<B, 2, Int> {
        let seq = rows.first().map_or(0, Vec::len);
        let flat: Vec<i64> = rows.iter().flatten().map(|&t| t as i64).collect();
        Tensor::from_data(TensorData::new(flat, [rows.len(), seq]), &self.device())
    }

    /// RoPE cos/sin tables for `positions`, in the compute dtype.
    fn rope_tables(&self, positions: &[Vec<usize>]) -> (Tensor<B, 4>, Tensor<B, 4>) {
        let dtype = self.compute_dtype();
        let (cos, sin) = self.rope.tables::<B>(positions, &self.device());
        (from_f32(cos, dtype), from_f32(sin, dtype))
    }

    /// Rotates unrotated keys `[batch, kv_heads, len, d]` to `positions` (one row per batch element).
    pub fn rotate_keys(&self, keys: Tensor<B, 4>, positions: &[Vec<usize>]) -> Tensor<B, 4> {
        let (cos, sin) = self.rope_tables(positions);
        apply_rope_with(self.fused(), keys.swap_dims(1, 2), &cos, &sin).swap_dims(1, 2)
    }

    /// Runs the decoder over `input.ids` and returns the new keys/values (and logits if asked).
    ///
    /// On the flex (CPU) backend the forward runs on a thread of rayon's global pool, the caller
    /// waiting (at once on the caller's thread when that is a thread of a rayon pool): its kernels
    /// split their work across that pool, and splits from inside it cost far less.
    pub fn forward(&self, input: ForwardInput<'_, B>) -> ForwardOutput<B> {
        #[cfg(feature = "cpu")]
        if crate::cpu::is_flex::<B>() {
            return crate::cpu::on_pool(|| self.forward_here(input));
        }
        self.forward_here(input)
    }

    /// [`LlamaModel::forward`] on the calling thread.
    fn forward_here(&self, mut input: ForwardInput<'_, B>) -> ForwardOutput<B> {
        let device = self.device();
        // Without logits or focus nothing reads the last layer's output, only its keys and values
        // (a chunk pass, a prefill block before the last): its queries, attention, output
        // projection and MLP are skipped (3% of a forward of SmolLM2's 30 layers).
        let kv_only_last = input.logits_last == 0 && input.focus_keys == 0;
        let (cos, sin) = self.rope_tables(input.positions);
        let past_tables = match input.past {
            Past::Unrotated(_, pos) => Some(self.rope_tables(pos)),
            _ => None,
        };
        let [batch, seq] = input.ids.dims();
        let past_len = input.past.len();
        let groups = self.config.num_attention_heads / self.config.kv_heads();
        // With batches of their own caches, this plan serves nothing but the choice of kernels.
        let plan_past = match input.past {
            Past::Batches(_) => 0,
            _ => past_len,
        };
        let bf16 = self.matmul_precision == MatmulPrecision::Bf16;
        let plan = AttentionPlan::new(
            batch,
            seq,
            plan_past,
            self.config.kv_heads(),
            groups,
            input.left_pad,
            input.candidates,
            self.fused(),
            &device,
        )
        .with_focus(input.focus_keys.min(plan_past))
        .with_bf16_products(bf16);
        // With batches of their own caches: one plan per batch (its past and padding).
        let batch_plans: Vec<AttentionPlan<B>> = match &input.past {
            Past::Batches(batches) => batches
                .iter()
                .map(|b| {
                    let past = b.caches.first().map_or(0, KvBuffer::len);
                    self.work.add(work::forward_flops(
                        &self.config,
                        b.left_pad.len(),
                        seq,
                        past,
                        input.logits_last.min(seq),
                        kv_only_last,
                    ));
                    AttentionPlan::new(
                        b.left_pad.len(),
                        seq,
                        past,
                        self.config.kv_heads(),
                        groups,
                        Some(b.left_pad),
                        input.candidates,
                        self.fused(),
                        &device,
                    )
                    .with_bf16_products(bf16)
                })
                .collect(),
            _ => {
                self.work.add(work::forward_flops(
                    &self.config,
                    batch,
                    seq,
                    past_len,
                    input.logits_last.min(seq),
                    kv_only_last,
                ));
                Vec::new()
            }
        };
        let mut x = self.embed.lookup(input.ids);
        // A quantized table gives f32 rows whatever the dense weights' dtype.
        if x.dtype() != self.compute_dtype() {
            x = x.cast(self.compute_dtype());
        }
        let eps = self.config.rms_norm_eps;
        let mut kv = Vec::with_capacity(self.layers.len());
        let mut focus: Option<Tensor<B, 2>> = None;
        for (i, layer) in self.layers.iter().enumerate() {
            let past = match &mut input.past {
                Past::None => LayerPast::None,
                Past::Rotated(layers) => LayerPast::Read(&layers[i], None),
                Past::Unrotated(layers, _) => {
                    LayerPast::Read(&layers[i], past_tables.as_ref().map(|(c, s)| (c, s)))
                }
                Past::Cache(layers) => LayerPast::Cache(&mut layers[i]),
                Past::Batches(batches) => LayerPast::Batches(
                    batches
                        .iter_mut()
                        .zip(&batch_plans)
                        .map(|(b, plan)| (&mut b.caches[i], plan))
                        .collect(),
                ),
            };
            if kv_only_last && i + 1 == self.layers.len() {
                kv.push(layer.kv_only(x.clone(), (&cos, &sin), past, &plan, input.candidates, eps));
                break;
            }
            let (out, new_kv, layer_focus) =
                layer.forward(x, (&cos, &sin), past, &plan, input.candidates, eps);
            x = out;
            kv.push(new_kv);
            focus = match (focus, layer_focus) {
                (Some(sum), Some(f)) => Some(sum + f),
                (sum, f) => sum.or(f),
            };
        }
        let focus = focus.map(|sum| sum / self.layers.len() as f64);
        let logits = (input.logits_last > 0).then(|| {
            let s = x.dims()[1];
            let k = input.logits_last.min(s);
            let last = rms_norm(x.narrow(1, s - k, k), &self.norm, eps);
            let fused = kernels::fused::<B>(self.kernels, last.dtype());
            // The LM head stays f32 (see `MatmulPrecision::Bf16`).
            match &self.lm_head {
                Some(head) => head.forward(last, Products::new(fused, MatmulPrecision::F32)),
                None => self.embed.logits(last, fused),
            }
        });
        ForwardOutput { logits, kv, focus }
    }
}
