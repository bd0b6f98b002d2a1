//! Grouped-query self-attention with FocusLLM's candidate projections.

use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{Tensor, backend::Backend};

use super::masked_attention::AttentionPlan;
use super::ops::{project, project_all};
use super::projection::Projection;
use super::{CacheRead, KvBuffer, PastKv, RopeTables};
use crate::config::LlamaConfig;
use crate::error::ModelError;
use crate::kernels::Products;
use crate::rope::apply_rope_with;
use crate::weights::Weights;

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
    pub q: Projection<B>,
    /// Key projection.
    pub k: Projection<B>,
    /// Value projection.
    pub v: Projection<B>,
    /// Output projection.
    pub o: Projection<B>,
    /// Candidate projections (`None`: the ordinary ones serve the candidate too).
    pub candidate: Option<CandidateProjections<B>>,
    #[module(skip)]
    heads: usize,
    #[module(skip)]
    kv_heads: usize,
    #[module(skip)]
    head_dim: usize,
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

/// One layer's past (see [`super::Past`]).
pub(crate) enum LayerPast<'a, B: Backend> {
    /// No past.
    None,
    /// Read-only keys and values; the keys are rotated with the tables when given (else they
    /// already are).
    Read(&'a PastKv<B>, Option<RopeTables<'a, B>>),
    /// A KV cache the new keys and values are appended to.
    Cache(&'a mut KvBuffer<B>),
    /// Batches of rows with caches and plans of their own (in row order).
    Batches(Vec<(&'a mut KvBuffer<B>, &'a AttentionPlan<B>)>),
}

/// Appends `k` (rotated) and `v` to `cache` and returns what attention reads: all the cache
/// holds then. A compact cache (f16, bf16 or 8-bit under f32 compute) is read as it is by the
/// fused kernel (which widens tile by tile) and widened whole for burn's operations.
fn extend_cache<B: Backend>(
    cache: &mut KvBuffer<B>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    fused: bool,
) -> CacheRead<B> {
    let dtype = k.dtype();
    cache.append(k, v);
    match cache.read(fused) {
        CacheRead::Float(kv) if !fused && kv.k.dtype() != dtype => CacheRead::Float(PastKv {
            k: kv.k.cast(dtype),
            v: kv.v.cast(dtype),
        }),
        read => read,
    }
}

impl<B: Backend> Attention<B> {
    pub(crate) fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: RopeTables<'_, B>,
        past: LayerPast<'_, B>,
        plan: &AttentionPlan<B>,
        candidates: Candidates,
    ) -> (Tensor<B, 3>, super::NewKv<B>, Option<Tensor<B, 2>>) {
        let [b, s, _] = x.dims();
        let cand = self.candidate.as_ref();
        // RoPE is applied in the projections' own `[b, s, heads, d]` layout (contiguous), then the
        // heads move forward for attention.
        let products = plan.products();
        let fused = products.fused;
        let [q, k, v] = project_all(
            x,
            [
                (&self.q, cand.map(|c| &c.q)),
                (&self.k, cand.map(|c| &c.k)),
                (&self.v, cand.map(|c| &c.v)),
            ],
            candidates,
            products,
        );
        let q = q.reshape([b, s, self.heads, self.head_dim]);
        let (cos, sin) = rope;
        let q = apply_rope_with(fused, q, cos, sin).swap_dims(1, 2);
        let super::NewKv {
            k_unrotated: k,
            k_rotated,
            v,
        } = self.rotate_new(k, v, rope, products);
        let (keys, values) = match past {
            LayerPast::None => (k_rotated.clone(), v.clone()),
            LayerPast::Read(kv, past_rope) => {
                let past_k = match past_rope {
                    Some((pc, ps)) => {
                        apply_rope_with(fused, kv.k.clone().swap_dims(1, 2), pc, ps).swap_dims(1, 2)
                    }
                    None => kv.k.clone(),
                };
                (
                    Tensor::cat(vec![past_k, k_rotated.clone()], 2),
                    Tensor::cat(vec![kv.v.clone(), v.clone()], 2),
                )
            }
            LayerPast::Cache(cache) => {
                let read = extend_cache(cache, k_rotated.clone(), v.clone(), fused);
                let (out, focus) = plan.attend_read(q, read);
                return self.finish(out, (b, s, products), candidates, k, k_rotated, v, focus);
            }
            LayerPast::Batches(batches) => {
                let mut outputs = Vec::with_capacity(batches.len());
                let mut start = 0;
                for (cache, batch_plan) in batches {
                    let rows = batch_plan.batch();
                    let part = |t: &Tensor<B, 4>| t.clone().narrow(0, start, rows);
                    let read = extend_cache(cache, part(&k_rotated), part(&v), batch_plan.fused());
                    outputs.push(batch_plan.attend_read(part(&q), read).0);
                    start += rows;
                }
                let out = Tensor::cat(outputs, 0);
                return self.finish(out, (b, s, products), candidates, k, k_rotated, v, None);
            }
        };
        let (out, focus) = plan.attend(q, keys, values);
        self.finish(out, (b, s, products), candidates, k, k_rotated, v, focus)
    }

    /// Only the new positions' keys and values (appended to the caches of `past`, as
    /// [`Attention::forward`] appends them): what the last layer of a forward must still give
    /// when nothing reads its output (no logits, no focus). The queries, the attention and the
    /// output projection are skipped.
    pub(crate) fn kv_only(
        &self,
        x: Tensor<B, 3>,
        rope: RopeTables<'_, B>,
        past: LayerPast<'_, B>,
        candidates: Candidates,
        products: Products,
    ) -> super::NewKv<B> {
        let new = self.new_kv(x, rope, candidates, products);
        let (k_rotated, v) = (&new.k_rotated, &new.v);
        match past {
            LayerPast::None | LayerPast::Read(..) => {}
            LayerPast::Cache(cache) => cache.append(k_rotated.clone(), v.clone()),
            LayerPast::Batches(batches) => {
                let mut start = 0;
                for (cache, batch_plan) in batches {
                    let rows = batch_plan.batch();
                    let part = |t: &Tensor<B, 4>| t.clone().narrow(0, start, rows);
                    cache.append(part(k_rotated), part(v));
                    start += rows;
                }
            }
        }
        new
    }

    /// The new positions' keys (before and after RoPE) and values, `[b, kv_heads, s, d]`: the
    /// part of [`Attention::forward`] that [`Attention::kv_only`] keeps. RoPE is applied in the
    /// projection's own `[b, s, heads, d]` layout (contiguous), then the heads move forward.
    fn new_kv(
        &self,
        x: Tensor<B, 3>,
        rope: RopeTables<'_, B>,
        candidates: Candidates,
        products: Products,
    ) -> super::NewKv<B> {
        let cand = self.candidate.as_ref();
        let [k, v] = project_all(
            x,
            [(&self.k, cand.map(|c| &c.k)), (&self.v, cand.map(|c| &c.v))],
            candidates,
            products,
        );
        self.rotate_new(k, v, rope, products)
    }

    /// [`Attention::new_kv`] from the projected keys and values `[b, s, kv_heads · d]`.
    fn rotate_new(
        &self,
        k: Tensor<B, 3>,
        v: Tensor<B, 3>,
        (cos, sin): RopeTables<'_, B>,
        products: Products,
    ) -> super::NewKv<B> {
        let [b, s, _] = k.dims();
        let split = |t: Tensor<B, 3>| t.reshape([b, s, self.kv_heads, self.head_dim]);
        let (k, v) = (split(k), split(v));
        super::NewKv {
            k_rotated: apply_rope_with(products.fused, k.clone(), cos, sin).swap_dims(1, 2),
            k_unrotated: k.swap_dims(1, 2),
            v: v.swap_dims(1, 2),
        }
    }

    /// The output projection of attention's `out` `[b, heads, s, d]` (`products`: see
    /// [`super::ops::linear`]), and what the layer returns.
    #[allow(clippy::too_many_arguments)]
    fn finish(
        &self,
        out: Tensor<B, 4>,
        (b, s, products): (usize, usize, Products),
        candidates: Candidates,
        k_unrotated: Tensor<B, 4>,
        k_rotated: Tensor<B, 4>,
        v: Tensor<B, 4>,
        focus: Option<Tensor<B, 2>>,
    ) -> (Tensor<B, 3>, super::NewKv<B>, Option<Tensor<B, 2>>) {
        let cand = self.candidate.as_ref();
        let out = out
            .swap_dims(1, 2)
            .reshape([b, s, self.heads * self.head_dim]);
        let out = project(out, &self.o, cand.map(|c| &c.o), candidates, products);
        (
            out,
            super::NewKv {
                k_unrotated,
                k_rotated,
                v,
            },
            focus,
        )
    }
}

impl<B: Backend> Attention<B> {
    /// Assembles an attention block.
    pub fn new(
        q: Projection<B>,
        k: Projection<B>,
        v: Projection<B>,
        o: Projection<B>,
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

    /// Loads the projections under `w` (`q_proj`, `k_proj`, `v_proj`, `o_proj`, as in HF
    /// checkpoints), and the reference's `beacon_{q,k,v,o}_proj` candidate projections when
    /// `trained_candidates` (they carry the ordinary ones' biases, where the checkpoint has them).
    pub fn load(
        w: &Weights<'_, B>,
        config: &LlamaConfig,
        trained_candidates: bool,
    ) -> Result<Self, ModelError> {
        let hidden = config.hidden_size;
        let q_out = config.num_attention_heads * config.head_dim();
        let kv_out = config.kv_heads() * config.head_dim();
        let bias = config.attention_bias;
        let candidate = if trained_candidates {
            let bias = bias && w.has("beacon_q_proj.bias");
            Some(CandidateProjections {
                q: w.linear("beacon_q_proj", q_out, hidden, bias)?,
                k: w.linear("beacon_k_proj", kv_out, hidden, bias)?,
                v: w.linear("beacon_v_proj", kv_out, hidden, bias)?,
                o: w.linear("beacon_o_proj", hidden, q_out, false)?,
            })
        } else {
            None
        };
        Ok(Self::new(
            w.projection("q_proj", q_out, hidden, bias)?,
            w.projection("k_proj", kv_out, hidden, bias)?,
            w.projection("v_proj", kv_out, hidden, bias)?,
            w.projection("o_proj", hidden, q_out, false)?,
            candidate,
            config,
        ))
    }
}
