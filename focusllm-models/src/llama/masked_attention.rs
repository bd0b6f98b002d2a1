//! Causal grouped-query attention computed in query blocks.
//!
//! Why not `burn::tensor::module::attention`: on the CPU backend it runs one (batch, head) pair at a
//! time on one thread and visits the masked upper triangle too, and it needs the key/value heads
//! repeated to the query heads. Here each block of queries is one batched matmul per key/value
//! head group (the `groups` query heads that share a key/value head are stacked as rows), only the
//! keys a block can see are read, and no `n × n` buffer exists. The softmax is the usual one over
//! each row in f32, so the numbers are those of plain attention.

use burn::tensor::activation::softmax;
use burn::tensor::{Bool, Tensor, TensorData, backend::Backend};

use super::attention::Candidates;
use super::ops::{from_f32, to_f32};

/// Queries per block: bounds the score buffer to `heads × BLOCK × keys` floats.
const BLOCK: usize = 256;

/// What a block must hide. Masks are full-sized (`[batch, kv_heads, groups * rows, columns]`) on
/// purpose: a broadcast mask makes the CPU backend walk the scores with a slow strided iterator.
#[derive(Debug, Clone)]
enum BlockMask<B: Backend> {
    /// Nothing (a single query row after its whole past).
    None,
    /// Only the causal triangle over the block's own keys (the last `rows` keys): the earlier keys
    /// are all visible, so they need no mask. Shared by every block of the same size.
    Diagonal(Tensor<B, 4, Bool>),
    /// Causal and padding over all the block's keys (chunk batches of unequal lengths).
    Full(Tensor<B, 4, Bool>),
}

/// One query block: rows `start..end` of the new tokens see keys `0..keys`.
#[derive(Debug, Clone)]
struct QueryBlock<B: Backend> {
    start: usize,
    end: usize,
    keys: usize,
    mask: BlockMask<B>,
}

/// The blocks of one forward, shared by all layers (the masks are built once).
#[derive(Debug, Clone)]
pub(crate) struct AttentionPlan<B: Backend> {
    /// Rows (batch elements) the plan is for.
    batch: usize,
    blocks: Vec<QueryBlock<B>>,
    /// The fused CPU kernel's description of the same masks (then `blocks` is empty).
    #[cfg(feature = "cpu")]
    fused: Option<crate::cpu::Visibility>,
    groups: usize,
    /// Measure how much of the last query's attention goes to the first this many keys.
    focus: Option<usize>,
    /// The products of longer sequences take bf16 operands (on the fused path only; see
    /// `Products::bf16_for`).
    bf16_products: bool,
}

/// Which keys are padding: per batch element, the number of leading padded key positions.
pub(crate) type LeftPad<'a> = Option<&'a [usize]>;

/// Shape of the masks of one forward.
struct MaskShape {
    batch: usize,
    kv_heads: usize,
    groups: usize,
}

impl MaskShape {
    /// A full-sized mask whose row `i` (of `rows`, repeated per group and head) hides column `j` when
    /// `hidden(b, i, j)`.
    fn build<B: Backend>(
        &self,
        rows: usize,
        columns: usize,
        hidden: impl Fn(usize, usize, usize) -> bool,
        device: &B::Device,
    ) -> Tensor<B, 4, Bool> {
        let per_head = self.groups * rows * columns;
        let mut data = Vec::with_capacity(self.batch * self.kv_heads * per_head);
        for b in 0..self.batch {
            let head_start = data.len();
            for _ in 0..self.groups {
                for i in 0..rows {
                    data.extend((0..columns).map(|j| hidden(b, i, j)));
                }
            }
            for _ in 1..self.kv_heads {
                data.extend_from_within(head_start..head_start + per_head);
            }
        }
        let shape = [self.batch, self.kv_heads, self.groups * rows, columns];
        Tensor::from_data(TensorData::new(data, shape), device)
    }
}

impl<B: Backend> AttentionPlan<B> {
    /// Plans attention for `seq` new tokens after `past` cached ones (causal, bottom-right
    /// aligned), with `groups` query heads per key/value head. `left_pad` hides leading keys per
    /// batch element, except from the padded query at the same index (so no softmax row is empty).
    /// With [`Candidates::Each`], new token `i` sees the past before index `past - seq + 1 + i`
    /// and itself only (each is the candidate of its own step). With `fused` (see
    /// [`crate::kernels::fused`]) the fused CPU kernel applies these rules itself.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        batch: usize,
        seq: usize,
        past: usize,
        kv_heads: usize,
        groups: usize,
        left_pad: LeftPad<'_>,
        candidates: Candidates,
        fused: bool,
        device: &B::Device,
    ) -> Self {
        let pads: Vec<usize> = match left_pad {
            Some(p) if p.iter().any(|&x| x > 0) => p.to_vec(),
            _ => Vec::new(),
        };
        #[cfg(feature = "cpu")]
        if fused {
            return Self {
                batch,
                blocks: Vec::new(),
                fused: Some(crate::cpu::Visibility {
                    past,
                    seq,
                    pads,
                    each: candidates == Candidates::Each,
                    bf16: false,
                }),
                groups,
                focus: None,
                bf16_products: false,
            };
        }
        let _ = fused;
        let shape = MaskShape {
            batch,
            kv_heads,
            groups,
        };
        let mut diagonals: Vec<(usize, Tensor<B, 4, Bool>)> = Vec::new();
        let mut blocks = Vec::with_capacity(seq.div_ceil(BLOCK));
        let mut start = 0;
        while start < seq {
            let end = (start + BLOCK).min(seq);
            let keys = past + end;
            let rows = end - start;
            let mask = if candidates == Candidates::Each {
                let hidden = |b: usize, i: usize, j: usize| {
                    let own = past + start + i;
                    let seen = (past + 1 + start + i).saturating_sub(seq);
                    let pad = pads.get(b).copied().unwrap_or(0);
                    j < pad || (j >= seen && j != own)
                };
                BlockMask::Full(shape.build(rows, keys, hidden, device))
            } else if !pads.is_empty() {
                let hidden = |b: usize, i: usize, j: usize| {
                    let own = past + start + i;
                    j > own || (j < pads[b] && j != own)
                };
                BlockMask::Full(shape.build(rows, keys, hidden, device))
            } else if rows > 1 {
                let diagonal = match diagonals.iter().find(|(r, _)| *r == rows) {
                    Some((_, m)) => m.clone(),
                    None => {
                        let m = shape.build(rows, rows, |_, i, j| j > i, device);
                        diagonals.push((rows, m.clone()));
                        m
                    }
                };
                BlockMask::Diagonal(diagonal)
            } else {
                BlockMask::None
            };
            blocks.push(QueryBlock {
                start,
                end,
                keys,
                mask,
            });
            start = end;
        }
        Self {
            batch,
            blocks,
            #[cfg(feature = "cpu")]
            fused: None,
            groups,
            focus: None,
            bf16_products: false,
        }
    }

    /// Rows (batch elements) the plan is for.
    pub(crate) fn batch(&self) -> usize {
        self.batch
    }

    /// Whether the plan runs the fused CPU kernels (then RoPE should too).
    pub(crate) fn fused(&self) -> bool {
        #[cfg(feature = "cpu")]
        {
            self.fused.is_some()
        }
        #[cfg(not(feature = "cpu"))]
        {
            false
        }
    }

    /// How the forward's projections multiply (see [`crate::kernels::Products`]).
    pub(crate) fn products(&self) -> crate::kernels::Products {
        crate::kernels::Products {
            fused: self.fused(),
            bf16: self.fused() && self.bf16_products,
        }
    }

    /// The same plan, its projections and attention multiplying with bf16 operands where `bf16`
    /// (see [`crate::kernels::MatmulPrecision::Bf16`]; the fused path only).
    pub(crate) fn with_bf16_products(mut self, bf16: bool) -> Self {
        self.bf16_products = bf16;
        #[cfg(feature = "cpu")]
        if let Some(visibility) = &mut self.fused {
            visibility.bf16 = bf16;
        }
        self
    }

    /// The same plan, also measuring the share of the last query's attention (mean over heads)
    /// that goes to each of the first `keys` keys (the main pass's candidates: the focus map).
    pub(crate) fn with_focus(mut self, keys: usize) -> Self {
        self.focus = (keys > 0).then_some(keys);
        self
    }

    /// [`AttentionPlan::attend`] over what a KV buffer gives (8-bit rows only on the fused path,
    /// see `KvBuffer::read`).
    pub(crate) fn attend_read(
        &self,
        q: Tensor<B, 4>,
        read: super::CacheRead<B>,
    ) -> (Tensor<B, 4>, Option<Tensor<B, 2>>) {
        match read {
            super::CacheRead::Float(kv) => self.attend(q, kv.k, kv.v),
            #[cfg(feature = "cpu")]
            super::CacheRead::Int8 { k, v } => {
                let visibility = self
                    .fused
                    .as_ref()
                    .expect("8-bit rows are read raw by the fused kernel only");
                crate::cpu::attention_int8(q, k, v, visibility, self.focus)
            }
            #[cfg(not(feature = "cpu"))]
            super::CacheRead::Int8 { .. } => {
                unreachable!("8-bit rows are read raw by the fused kernel only")
            }
        }
    }

    /// `q` `[b, heads, seq, d]` (RoPE applied), `k`/`v` `[b, kv_heads, past + seq, d]` →
    /// `[b, heads, seq, d]`, and with [`AttentionPlan::with_focus`] the last query's attention
    /// share over the first keys, `[b, keys]` (f32).
    pub(crate) fn attend(
        &self,
        q: Tensor<B, 4>,
        k: Tensor<B, 4>,
        v: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Option<Tensor<B, 2>>) {
        #[cfg(feature = "cpu")]
        if let Some(visibility) = &self.fused {
            return crate::cpu::attention(q, k, v, visibility, self.focus);
        }
        let [b, heads, seq, d] = q.dims();
        let kv_heads = k.dims()[1];
        let g = self.groups;
        let scale = 1.0 / (d as f64).sqrt();
        // [b, kv_heads, groups, seq, d]: query heads sharing a key/value head sit together.
        let q = q.reshape([b, kv_heads, g, seq, d]);
        let k_t = k.swap_dims(2, 3);
        let total_keys = k_t.dims()[3];
        let mut focus = None;
        let last_block = self.blocks.len().saturating_sub(1);
        let outputs: Vec<Tensor<B, 5>> = self
            .blocks
            .iter()
            .enumerate()
            .map(|(index, block)| {
                let rows = block.end - block.start;
                let q_block = if self.blocks.len() == 1 {
                    q.clone()
                } else {
                    q.clone().narrow(3, block.start, rows)
                };
                // Scaling the queries is cheaper than scaling the scores.
                let q_block = q_block.reshape([b, kv_heads, g * rows, d]) * scale;
                let keys = block.keys;
                let k_block = if keys == total_keys {
                    k_t.clone()
                } else {
                    k_t.clone().narrow(3, 0, keys)
                };
                let v_block = if keys == total_keys {
                    v.clone()
                } else {
                    v.clone().narrow(2, 0, keys)
                };
                let scores = match &block.mask {
                    BlockMask::None => q_block.matmul(k_block),
                    BlockMask::Full(mask) => q_block
                        .matmul(k_block)
                        .mask_fill(mask.clone(), f32::NEG_INFINITY),
                    BlockMask::Diagonal(mask) => {
                        let seen = keys - rows;
                        let own = k_block.clone().narrow(3, seen, rows);
                        let own_scores = q_block
                            .clone()
                            .matmul(own)
                            .mask_fill(mask.clone(), f32::NEG_INFINITY);
                        if seen == 0 {
                            own_scores
                        } else {
                            let past_scores = q_block.matmul(k_block.narrow(3, 0, seen));
                            Tensor::cat(vec![past_scores, own_scores], 3)
                        }
                    }
                };
                // Softmax in f32 whatever the compute dtype.
                let dtype = scores.dtype();
                let probs = softmax(to_f32(scores), 3);
                if let Some(n) = self.focus.filter(|_| index == last_block) {
                    let n = n.min(keys);
                    let last = probs
                        .clone()
                        .reshape([b, kv_heads, g, rows, keys])
                        .narrow(3, rows - 1, 1)
                        .narrow(4, 0, n)
                        .reshape([b, kv_heads * g, n])
                        .mean_dim(1)
                        .reshape([b, n]);
                    focus = Some(last);
                }
                from_f32(probs, dtype)
                    .matmul(v_block)
                    .reshape([b, kv_heads, g, rows, d])
            })
            .collect();
        let out = if outputs.len() == 1 {
            outputs.into_iter().next().expect("one block")
        } else {
            Tensor::cat(outputs, 3)
        };
        (out.reshape([b, heads, seq, d]), focus)
    }
}
