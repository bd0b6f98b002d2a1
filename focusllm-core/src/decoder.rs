//! The decoder traits a model family implements: the chunk pass and the main pass.

use burn::tensor::backend::Backend;

use crate::cache::{CandidateCache, ChunkBatchCache, PlainCache};
use crate::error::Result;

/// What the engine needs to know about a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    /// Vocabulary size (ids must be below it).
    pub vocab_size: usize,
    /// The BOS id, if the model uses one (the reference's BOS rule prepends it).
    pub bos_id: Option<u32>,
    /// Ids that end generation.
    pub eos_ids: Vec<u32>,
    /// The context the model was trained on (the default plain-decoding threshold).
    pub native_context: usize,
}

/// One chunk sequence to decode: `chunk ++ dynamic prompt`; its last token is the candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkSequence {
    /// Index of the chunk in the plan.
    pub chunk_id: usize,
    /// The tokens.
    pub tokens: Vec<u32>,
}

/// The chunk pass: decodes chunks (in batches) to raw caches and candidate K/V, and extends them by
/// two tokens at every generated token.
pub trait LocalDecoder<B: Backend> {
    /// Decodes `sequences` as one batch. Each runs fresh (positions from 0, no past), causally; at
    /// every layer its last position uses the candidate projections. Results must not depend on
    /// which other sequences share the batch.
    fn decode_chunks(&self, sequences: &[ChunkSequence]) -> Result<ChunkBatchCache<B>>;

    /// Extends every chunk of `batch` by `[prev, new]`: `prev` (the former candidate token) runs
    /// through the ordinary projections and joins the raw cache; `new` becomes the candidate.
    fn extend_chunks(&self, batch: &mut ChunkBatchCache<B>, prev: u32, new: u32) -> Result<()>;
}

/// The main pass: the local context over the aggregated candidates, and plain decoding.
pub trait MainDecoder<B: Backend> {
    /// The model's vocabulary, special tokens and native context.
    fn spec(&self) -> ModelSpec;

    /// Runs `tokens` (local context ++ generated tokens) with `past` as the first positions and
    /// returns the next-token logits at the last position.
    fn decode_main(&self, tokens: &[u32], past: &CandidateCache<B>) -> Result<Vec<f32>>;

    /// Like [`MainDecoder::decode_main`], and leaves in `cache` (replacing its content) the KV cache
    /// of `past ++ tokens`, so that later tokens can be fed with [`MainDecoder::decode_plain`]
    /// (used by [`crate::StepMode::FrozenCandidates`]).
    fn decode_main_cached(
        &self,
        tokens: &[u32],
        past: &CandidateCache<B>,
        cache: &mut PlainCache<B>,
    ) -> Result<Vec<f32>>;

    /// Plain causal decoding with a KV cache: appends `tokens` to `cache` and returns the logits at
    /// the last position.
    fn decode_plain(&self, tokens: &[u32], cache: &mut PlainCache<B>) -> Result<Vec<f32>>;
}

/// Turns token ids back into text (implemented by the model crate's tokenizer); used to stream text.
pub trait Detokenizer {
    /// Decodes `ids` to text (special tokens kept).
    fn detokenize(&self, ids: &[u32]) -> Result<String>;
}
