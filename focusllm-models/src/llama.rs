//! A Llama-architecture decoder (Llama 2/3, Mistral, Qwen2, SmolLM2) on any burn backend, with
//! FocusLLM's candidate projections.
//!
//! One forward serves every pass: plain decoding, the chunk pass (the last position is the
//! candidate and uses the candidate projections) and the main pass (a past whose keys still need
//! RoPE, at positions chosen by the caller).

use burn::module::{Module, ModuleMapper, Param};
use burn::nn::Linear;
use burn::tensor::activation::silu;
use burn::tensor::module::embedding;
use burn::tensor::{DType, Int, Tensor, TensorData, backend::Backend};

use crate::attention::AttentionPlan;
use crate::config::LlamaConfig;
use crate::rope::{Rope, apply_rope};

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

/// q, k, v, o projections of the candidate token (the reference's `beacon_{q,k,v,o}_proj`).
#[derive(Module, Debug)]
pub struct CandidateProjections<B: Backend> {
    /// Query projection.
    pub q: Linear<B>,
    /// Key projection.
    pub k: Linear<B>,
    /// Value projection.
    pub v: Linear<B>,
    /// Output projection.
    pub o: Linear<B>,
}

/// Grouped-query self-attention.
#[derive(Module, Debug)]
pub struct Attention<B: Backend> {
    /// Query projection.
    pub q: Linear<B>,
    /// Key projection.
    pub k: Linear<B>,
    /// Value projection.
    pub v: Linear<B>,
    /// Output projection.
    pub o: Linear<B>,
    /// Candidate projections (`None`: the ordinary ones serve the candidate too).
    pub candidate: Option<CandidateProjections<B>>,
    #[module(skip)]
    heads: usize,
    #[module(skip)]
    kv_heads: usize,
    #[module(skip)]
    head_dim: usize,
}

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
    pub gate: Linear<B>,
    /// Up projection.
    pub up: Linear<B>,
    /// Down projection.
    pub down: Linear<B>,
    /// Candidate up/down projections, if the checkpoint has them.
    pub candidate: Option<CandidateMlp<B>>,
}

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

/// The whole decoder.
#[derive(Module, Debug)]
pub struct LlamaModel<B: Backend> {
    /// Token embeddings `[vocab, hidden]`.
    pub embed: Param<Tensor<B, 2>>,
    /// Decoder layers.
    pub layers: Vec<DecoderLayer<B>>,
    /// Final RMSNorm weight.
    pub norm: Param<Tensor<B, 1>>,
    /// LM head `[hidden, vocab]` (`None`: tied to the embeddings).
    pub lm_head: Option<Param<Tensor<B, 2>>>,
    #[module(skip)]
    config: LlamaConfig,
    #[module(skip)]
    rope: Rope,
    #[module(skip)]
    candidate_source: CandidateSource,
    #[module(skip)]
    cache_dtype: Option<DType>,
}

/// How the keys of a past are stored.
#[derive(Debug, Clone, Copy)]
pub enum PastKeys<'a> {
    /// Keys already rotated (their positions never change: raw chunk caches, plain KV caches).
    Rotated,
    /// Keys before RoPE, to be rotated at these positions (one row per batch element).
    Unrotated(&'a [Vec<usize>]),
}

/// A cos and a sin table from [`Rope::tables`].
type RopeTables<'a, B> = (&'a Tensor<B, 4>, &'a Tensor<B, 4>);

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

/// Which of a forward's new positions are FocusLLM candidate tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Candidates {
    /// None: every position uses the ordinary projections.
    None,
    /// The last position (a chunk's candidate after its ordinary tokens).
    Last,
    /// Every new position is the candidate of its own decoding step: new position `i` of `seq` reads
    /// the past up to index `past - seq + 1 + i` (exclusive) and itself, not the other new
    /// positions. The past then holds the ordinary versions of the candidate tokens before the last,
    /// so one forward gives the candidates that `seq` exact-mode steps would compute one by one
    /// (the training of several answer tokens in exact mode).
    Each,
}

/// Inputs of [`LlamaModel::forward`].
pub struct ForwardInput<'a, B: Backend> {
    /// Token ids `[batch, seq]`.
    pub ids: Tensor<B, 2, Int>,
    /// Positions of the new tokens, one row of `seq` per batch element.
    pub positions: &'a [Vec<usize>],
    /// Past keys/values per layer, and how their keys are stored.
    pub past: Option<(&'a [PastKv<B>], PastKeys<'a>)>,
    /// Per batch element, how many leading positions (of past ++ new) are padding to hide.
    pub left_pad: Option<&'a [usize]>,
    /// Which new positions are candidate tokens (they use the candidate projections).
    pub candidates: Candidates,
    /// For how many of the last positions to compute next-token logits (0: none, skips the LM head).
    pub logits_last: usize,
}

/// What [`LlamaModel::forward`] returns.
pub struct ForwardOutput<B: Backend> {
    /// Logits at the last `logits_last` positions `[batch, logits_last, vocab]`, when asked for.
    pub logits: Option<Tensor<B, 3>>,
    /// The new tokens' keys and values per layer.
    pub kv: Vec<NewKv<B>>,
}

/// Applies `ordinary` to the ordinary positions and `candidate` to the candidate ones.
fn project<B: Backend>(
    x: Tensor<B, 3>,
    ordinary: &Linear<B>,
    candidate: Option<&Linear<B>>,
    candidates: Candidates,
) -> Tensor<B, 3> {
    let seq = x.dims()[1];
    match (candidate, candidates) {
        (Some(cand), Candidates::Each) => cand.forward(x),
        (Some(cand), Candidates::Last) => {
            if seq == 1 {
                return cand.forward(x);
            }
            let head = x.clone().narrow(1, 0, seq - 1);
            let tail = x.narrow(1, seq - 1, 1);
            Tensor::cat(vec![ordinary.forward(head), cand.forward(tail)], 1)
        }
        _ => ordinary.forward(x),
    }
}

/// RMSNorm, computed in f32 whatever the compute dtype (as the reference does).
fn rms_norm<B: Backend>(x: Tensor<B, 3>, weight: &Param<Tensor<B, 1>>, eps: f64) -> Tensor<B, 3> {
    let dtype = x.dtype();
    let x = to_f32(x);
    let variance = x.clone().square().mean_dim(2);
    let normed = from_f32(x * (variance + eps).sqrt().recip(), dtype);
    normed * weight.val().unsqueeze::<3>()
}

/// `x` in f32 (a no-op when it already is).
pub(crate) fn to_f32<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    if x.dtype() == DType::F32 {
        x
    } else {
        x.cast(DType::F32)
    }
}

/// `x` (f32) in `dtype` (a no-op for f32).
pub(crate) fn from_f32<B: Backend, const D: usize>(x: Tensor<B, D>, dtype: DType) -> Tensor<B, D> {
    if dtype == DType::F32 {
        x
    } else {
        x.cast(dtype)
    }
}

/// Casts every float parameter of a module to one dtype.
struct CastParams(DType);

impl<B: Backend> ModuleMapper<B> for CastParams {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let dtype = self.0;
        param.map(|t| if t.dtype() == dtype { t } else { t.cast(dtype) })
    }
}

impl<B: Backend> Attention<B> {
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: RopeTables<'_, B>,
        past: Option<(&PastKv<B>, Option<RopeTables<'_, B>>)>,
        plan: &AttentionPlan<B>,
        candidates: Candidates,
    ) -> (Tensor<B, 3>, NewKv<B>) {
        let [b, s, _] = x.dims();
        let cand = self.candidate.as_ref();
        // RoPE is applied in the projections' own `[b, s, heads, d]` layout (contiguous), then the
        // heads move forward for attention.
        let split = |t: Tensor<B, 3>, heads: usize| t.reshape([b, s, heads, self.head_dim]);
        let q = split(
            project(x.clone(), &self.q, cand.map(|c| &c.q), candidates),
            self.heads,
        );
        let k = split(
            project(x.clone(), &self.k, cand.map(|c| &c.k), candidates),
            self.kv_heads,
        );
        let v = split(
            project(x, &self.v, cand.map(|c| &c.v), candidates),
            self.kv_heads,
        )
        .swap_dims(1, 2);
        let (cos, sin) = rope;
        let q = apply_rope(q, cos, sin).swap_dims(1, 2);
        let k_rotated = apply_rope(k.clone(), cos, sin).swap_dims(1, 2);
        let k = k.swap_dims(1, 2);
        let (keys, values) = match past {
            Some((kv, past_rope)) => {
                let past_k = match past_rope {
                    Some((pc, ps)) => {
                        apply_rope(kv.k.clone().swap_dims(1, 2), pc, ps).swap_dims(1, 2)
                    }
                    None => kv.k.clone(),
                };
                (
                    Tensor::cat(vec![past_k, k_rotated.clone()], 2),
                    Tensor::cat(vec![kv.v.clone(), v.clone()], 2),
                )
            }
            None => (k_rotated.clone(), v.clone()),
        };
        let out = plan.attend(q, keys, values);
        let out = out
            .swap_dims(1, 2)
            .reshape([b, s, self.heads * self.head_dim]);
        let out = project(out, &self.o, cand.map(|c| &c.o), candidates);
        (
            out,
            NewKv {
                k_unrotated: k,
                k_rotated,
                v,
            },
        )
    }
}

impl<B: Backend> Mlp<B> {
    fn forward(&self, x: Tensor<B, 3>, candidates: Candidates) -> Tensor<B, 3> {
        let gate = silu(self.gate.forward(x.clone()));
        let up = project(
            x,
            &self.up,
            self.candidate.as_ref().map(|c| &c.up),
            candidates,
        );
        project(
            gate * up,
            &self.down,
            self.candidate.as_ref().map(|c| &c.down),
            candidates,
        )
    }
}

impl<B: Backend> LlamaModel<B> {
    /// Assembles a model from its parts (see [`crate::loader`] for loading checkpoints).
    pub fn from_parts(
        config: LlamaConfig,
        embed: Tensor<B, 2>,
        layers: Vec<DecoderLayer<B>>,
        norm: Tensor<B, 1>,
        lm_head: Option<Tensor<B, 2>>,
        candidate_source: CandidateSource,
    ) -> Self {
        let rope = Rope::new(&config);
        Self {
            embed: Param::from_tensor(embed),
            layers,
            norm: Param::from_tensor(norm),
            lm_head: lm_head.map(Param::from_tensor),
            config,
            rope,
            candidate_source,
            cache_dtype: None,
        }
    }

    /// Stores the chunks' raw caches in `dtype` (e.g. `DType::F16` or `DType::BF16`) instead of the
    /// compute dtype: half the memory per cached token, at the cost of rounding the cached keys and
    /// values (and a conversion at every generated token). `None` restores the default.
    pub fn set_cache_dtype(&mut self, dtype: Option<DType>) {
        self.cache_dtype = dtype;
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
        self.embed.val().dtype()
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
        self.embed.val().device()
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
        apply_rope(keys.swap_dims(1, 2), &cos, &sin).swap_dims(1, 2)
    }

    /// Runs the decoder over `input.ids` and returns the new keys/values (and logits if asked).
    pub fn forward(&self, input: ForwardInput<'_, B>) -> ForwardOutput<B> {
        let device = self.device();
        let (cos, sin) = self.rope_tables(input.positions);
        let past_tables = match input.past {
            Some((_, PastKeys::Unrotated(pos))) => Some(self.rope_tables(pos)),
            _ => None,
        };
        let [batch, seq] = input.ids.dims();
        let past_len = input
            .past
            .map_or(0, |(layers, _)| layers.first().map_or(0, |kv| kv.len()));
        let groups = self.config.num_attention_heads / self.config.kv_heads();
        let plan = AttentionPlan::new(
            batch,
            seq,
            past_len,
            self.config.kv_heads(),
            groups,
            input.left_pad,
            input.candidates,
            &device,
        );
        let mut x = embedding(self.embed.val(), input.ids);
        let eps = self.config.rms_norm_eps;
        let mut kv = Vec::with_capacity(self.layers.len());
        for (i, layer) in self.layers.iter().enumerate() {
            let past = input
                .past
                .map(|(layers, _)| (&layers[i], past_tables.as_ref().map(|(c, s)| (c, s))));
            let h = rms_norm(x.clone(), &layer.input_norm, eps);
            let (attn, new_kv) = layer
                .attn
                .forward(h, (&cos, &sin), past, &plan, input.candidates);
            x = x + attn;
            let h = rms_norm(x.clone(), &layer.post_attn_norm, eps);
            x = x + layer.mlp.forward(h, input.candidates);
            kv.push(new_kv);
        }
        let logits = (input.logits_last > 0).then(|| {
            let s = x.dims()[1];
            let k = input.logits_last.min(s);
            let last = rms_norm(x.narrow(1, s - k, k), &self.norm, eps);
            let head = match &self.lm_head {
                Some(head) => head.val(),
                None => self.embed.val().transpose(),
            };
            last.matmul(head.unsqueeze::<3>())
        });
        ForwardOutput { logits, kv }
    }
}

/// Builds a [`Linear`] from an HF weight `[out, in]` (stored transposed, `[in, out]`, the layout
/// burn's matmul wants) and an optional bias.
pub fn linear_from_hf<B: Backend>(
    weight: Vec<f32>,
    out_features: usize,
    in_features: usize,
    bias: Option<Vec<f32>>,
    device: &B::Device,
) -> Linear<B> {
    let mut transposed = vec![0f32; weight.len()];
    for (o, row) in weight.chunks_exact(in_features).enumerate() {
        for (i, w) in row.iter().enumerate() {
            transposed[i * out_features + o] = *w;
        }
    }
    let weight = Tensor::from_data(
        TensorData::new(transposed, [in_features, out_features]),
        device,
    );
    let bias = bias.map(|b| {
        Param::from_tensor(Tensor::from_data(
            TensorData::new(b, [out_features]),
            device,
        ))
    });
    Linear {
        weight: Param::from_tensor(weight),
        bias,
    }
}

impl<B: Backend> Attention<B> {
    /// Assembles an attention block.
    pub fn new(
        q: Linear<B>,
        k: Linear<B>,
        v: Linear<B>,
        o: Linear<B>,
        candidate: Option<CandidateProjections<B>>,
        config: &LlamaConfig,
    ) -> Self {
        Self {
            q,
            k,
            v,
            o,
            candidate,
            heads: config.num_attention_heads,
            kv_heads: config.kv_heads(),
            head_dim: config.head_dim(),
        }
    }
}
