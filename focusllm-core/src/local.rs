//! Step two of the data flow: the chunk pass, each chunk decoded to one candidate.

use burn::tensor::backend::Backend;

use crate::candidates::CandidateSet;
use crate::error::Result;

/// One chunk sequence to decode: `chunk ++ dynamic prompt`; its last token is the candidate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkSequence {
    /// Index of the chunk in the plan.
    pub chunk_id: usize,
    /// The tokens.
    pub tokens: Vec<u32>,
}

/// The chunk pass: decodes chunks (in batches) to candidates, and extends every chunk by two
/// tokens at every generated token.
///
/// What it keeps between steps (the Llama decoder: each chunk's keys and values) is its own
/// business, an opaque [`LocalDecoder::ChunkState`] the engine only holds and hands back.
///
/// A model family implements this trait, [`crate::MainDecoder`] and [`crate::Model`]; the engine
/// then reads long inputs with it. A toy family whose candidates hold no tensors (the other
/// examples of this crate use it too):
///
/// ```
#[doc = include_str!("../doc/counter.rs")]
///
/// # fn main() -> focusllm_core::Result<()> {
/// use focusllm_core::{FocusConfig, FocusEngine, GenerateOptions, Mode};
///
/// // 40 tokens, local window 8, chunks of 8: four chunks of memory, read in parallel.
/// let config = FocusConfig::default().with_local_window(8).with_chunk_size(8);
/// let engine = FocusEngine::new(&Counter, config)?;
/// let mut session = engine.session();
/// let ids: Vec<u32> = (0..40).collect();
/// let options = GenerateOptions { max_tokens: 3, ..Default::default() };
/// let out = session.generate(&ids, &options, None, |_| std::ops::ControlFlow::Continue(()))?;
/// assert_eq!(out.tokens, [40, 41, 42]);
/// assert_eq!(session.mode(), Mode::Focus { chunks: 4 });
/// # Ok(())
/// # }
/// ```
pub trait LocalDecoder<B: Backend> {
    /// What the decoder keeps for one batch of chunks between generated tokens.
    type ChunkState;

    /// Decodes `sequences` as one batch. Each runs fresh (positions from 0, no past), causally, and
    /// its last position is its candidate. Returns the batch's state and the candidates of its
    /// chunks (one per sequence, in order, tagged with their `chunk_id`). Results must not depend
    /// on which other sequences share the batch.
    fn decode_chunks(
        &self,
        sequences: &[ChunkSequence],
    ) -> Result<(Self::ChunkState, CandidateSet<B>)>;

    /// Decodes several batches, as [`LocalDecoder::decode_chunks`] does one, returning each
    /// batch's state and candidates in order. The default decodes them one by one; a decoder with
    /// several devices (a [`crate::ShardedDecoder`]) runs them at the same time.
    fn decode_batches(
        &self,
        batches: &[Vec<ChunkSequence>],
    ) -> Result<Vec<(Self::ChunkState, CandidateSet<B>)>> {
        batches.iter().map(|b| self.decode_chunks(b)).collect()
    }

    /// How many batches [`LocalDecoder::decode_batches`] can run at the same time (the engine
    /// hands it that many at once). 1 unless the decoder spans several devices.
    fn parallel_batches(&self) -> usize {
        1
    }

    /// Extends every chunk of `state` by `[prev, new]`: `prev` (the former candidate token) joins
    /// the chunk as an ordinary token and `new` becomes the candidate. Returns the new candidates.
    /// On an error, `state` is unchanged.
    fn extend_chunks(
        &self,
        state: &mut Self::ChunkState,
        prev: u32,
        new: u32,
    ) -> Result<CandidateSet<B>>;

    /// Extends every chunk of every batch of `states` by `[prev, new]`, as
    /// [`LocalDecoder::extend_chunks`] does one batch, and returns each batch's new candidates, in
    /// order. The default extends the batches one by one; a decoder may run them together (the
    /// Llama decoder projects every batch's rows in one pass over its weights). On an error the
    /// states may have been extended in part: the engine then drops them.
    fn extend_batches(
        &self,
        states: &mut [&mut Self::ChunkState],
        prev: u32,
        new: u32,
    ) -> Result<Vec<CandidateSet<B>>> {
        states
            .iter_mut()
            .map(|state| self.extend_chunks(state, prev, new))
            .collect()
    }

    /// Bytes `state` holds (for memory reports).
    fn state_bytes(&self, state: &Self::ChunkState) -> usize;
}
