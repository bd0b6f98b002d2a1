//! The tensors that flow between the stages: chunk caches, candidates and the plain KV cache.

use burn::tensor::{Tensor, backend::Backend};

/// Keys and values of one layer, each `[batch, kv_heads, positions, head_dim]`.
#[derive(Debug, Clone)]
pub struct LayerKv<B: Backend> {
    /// Keys.
    pub k: Tensor<B, 4>,
    /// Values.
    pub v: Tensor<B, 4>,
}

impl<B: Backend> LayerKv<B> {
    /// Number of positions held.
    pub fn len(&self) -> usize {
        self.k.dims()[2]
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a [`crate::LocalDecoder`] keeps for a batch of chunks.
#[derive(Debug, Clone)]
pub struct ChunkBatchCache<B: Backend> {
    /// Which chunks of the plan this batch holds, in batch order.
    pub chunk_ids: Vec<usize>,
    /// Per layer, the raw cache of every chunk: all positions but the candidate. Its layout is the
    /// decoder's own business (the Llama decoder stores keys with RoPE applied, since a raw entry
    /// never changes position).
    pub raw: Vec<LayerKv<B>>,
    /// Per layer, the candidate K/V of every chunk, `[batch, kv_heads, 1, head_dim]`, keys **before**
    /// RoPE: the main decoder places them at new positions.
    pub candidates: Vec<LayerKv<B>>,
    /// Per chunk, how many padding positions lead its raw cache (chunks of unequal length share a
    /// batch by left padding; the decoder masks the padding).
    pub left_pad: Vec<usize>,
}

impl<B: Backend> ChunkBatchCache<B> {
    /// Number of chunks in the batch.
    pub fn batch_size(&self) -> usize {
        self.chunk_ids.len()
    }

    /// Bytes held by the raw caches and candidates (for memory reports).
    pub fn size_bytes(&self) -> usize {
        self.raw
            .iter()
            .chain(&self.candidates)
            .map(|kv| {
                (kv.k.shape().num_elements() + kv.v.shape().num_elements()) * kv.k.dtype().size()
            })
            .sum()
    }
}

/// The main decoder's past: per layer the candidate K/V of the chunks it reads, `[1, kv_heads,
/// candidates, head_dim]`, keys before RoPE. Candidate `j` sits at position `j`.
#[derive(Debug, Clone)]
pub struct CandidateCache<B: Backend> {
    /// Per layer keys and values.
    pub layers: Vec<LayerKv<B>>,
}

impl<B: Backend> CandidateCache<B> {
    /// Number of candidates (positions of the past).
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerKv::len)
    }

    /// Whether the past is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// An ordinary KV cache for plain (unchunked) decoding: per layer `[1, kv_heads, positions, head_dim]`.
/// Empty until the first forward fills it.
#[derive(Debug, Clone)]
pub struct PlainCache<B: Backend> {
    /// Per layer keys and values (layout chosen by the decoder).
    pub layers: Vec<LayerKv<B>>,
}

impl<B: Backend> Default for PlainCache<B> {
    fn default() -> Self {
        Self { layers: Vec::new() }
    }
}

impl<B: Backend> PlainCache<B> {
    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, LayerKv::len)
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
