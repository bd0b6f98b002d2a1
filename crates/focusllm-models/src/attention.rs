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

/// Queries per block: bounds the score buffer to `heads × BLOCK × keys` floats.
const BLOCK: usize = 256;

/// One query block: rows `start..end` of the new tokens see keys `0..keys`.
#[derive(Debug, Clone)]
pub(crate) struct QueryBlock<B: Backend> {
    start: usize,
    end: usize,
    keys: usize,
    /// `[batch, kv_heads, groups * (end - start), keys]`, `true` = hidden (causal and padding).
    /// Full-sized on purpose: a broadcast mask makes the CPU backend walk the scores with a slow
    /// strided iterator; the mask is built once per forward and shared by all layers.
    mask: Option<Tensor<B, 4, Bool>>,
}

/// The blocks of one forward, shared by all layers (the masks are built once).
#[derive(Debug, Clone)]
pub(crate) struct AttentionPlan<B: Backend> {
    blocks: Vec<QueryBlock<B>>,
    groups: usize,
}

/// Which keys are padding: per batch element, the number of leading padded key positions.
pub(crate) type LeftPad<'a> = Option<&'a [usize]>;

impl<B: Backend> AttentionPlan<B> {
    /// Plans attention for `seq` new tokens after `past` cached ones (causal, bottom-right
    /// aligned), with `groups` query heads per key/value head. `left_pad` hides leading keys per
    /// batch element, except from the padded query at the same index (so no softmax row is empty).
    pub(crate) fn new(
        batch: usize,
        seq: usize,
        past: usize,
        kv_heads: usize,
        groups: usize,
        left_pad: LeftPad<'_>,
        device: &B::Device,
    ) -> Self {
        let mut blocks = Vec::with_capacity(seq.div_ceil(BLOCK));
        let mut start = 0;
        while start < seq {
            let end = (start + BLOCK).min(seq);
            let keys = past + end;
            let rows = end - start;
            let causal_needed = rows > 1;
            let pad_needed = left_pad.is_some_and(|p| p.iter().any(|&x| x > 0));
            let mask = (causal_needed || pad_needed).then(|| {
                let mut data = Vec::with_capacity(batch * kv_heads * groups * rows * keys);
                for b in 0..batch {
                    let pad = left_pad.map_or(0, |p| p[b]);
                    let start_of_element = data.len();
                    for _ in 0..groups {
                        for i in start..end {
                            let own = past + i;
                            data.extend((0..keys).map(|j| j > own || (j < pad && j != own)));
                        }
                    }
                    let one_head = data.len() - start_of_element;
                    for _ in 1..kv_heads {
                        data.extend_from_within(start_of_element..start_of_element + one_head);
                    }
                }
                Tensor::from_data(
                    TensorData::new(data, [batch, kv_heads, groups * rows, keys]),
                    device,
                )
            });
            blocks.push(QueryBlock {
                start,
                end,
                keys,
                mask,
            });
            start = end;
        }
        Self { blocks, groups }
    }

    /// `q` `[b, heads, seq, d]` (RoPE applied), `k`/`v` `[b, kv_heads, past + seq, d]` →
    /// `[b, heads, seq, d]`.
    pub(crate) fn attend(&self, q: Tensor<B, 4>, k: Tensor<B, 4>, v: Tensor<B, 4>) -> Tensor<B, 4> {
        let [b, heads, seq, d] = q.dims();
        let kv_heads = k.dims()[1];
        let g = self.groups;
        let scale = 1.0 / (d as f64).sqrt();
        // [b, kv_heads, groups, seq, d]: query heads sharing a key/value head sit together.
        let q = q.reshape([b, kv_heads, g, seq, d]);
        let k_t = k.swap_dims(2, 3);
        let outputs: Vec<Tensor<B, 5>> = self
            .blocks
            .iter()
            .map(|block| {
                let rows = block.end - block.start;
                let q_block = if self.blocks.len() == 1 {
                    q.clone()
                } else {
                    q.clone().narrow(3, block.start, rows)
                };
                // Scaling the queries is cheaper than scaling the scores.
                let q_block = q_block.reshape([b, kv_heads, g * rows, d]) * scale;
                let keys = block.keys;
                let k_block = if keys == k_t.dims()[3] {
                    k_t.clone()
                } else {
                    k_t.clone().narrow(3, 0, keys)
                };
                let v_block = if keys == v.dims()[2] {
                    v.clone()
                } else {
                    v.clone().narrow(2, 0, keys)
                };
                let mut scores = q_block.matmul(k_block);
                if let Some(mask) = &block.mask {
                    scores = scores.mask_fill(mask.clone(), f32::NEG_INFINITY);
                }
                softmax(scores, 3)
                    .matmul(v_block)
                    .reshape([b, kv_heads, g, rows, d])
            })
            .collect();
        let out = if outputs.len() == 1 {
            outputs.into_iter().next().expect("one block")
        } else {
            Tensor::cat(outputs, 3)
        };
        out.reshape([b, heads, seq, d])
    }
}
