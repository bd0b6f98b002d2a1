//! Step four of the data flow: the main pass over the aggregated candidates.

use burn::tensor::backend::Backend;

use crate::candidates::CandidateSet;
use crate::error::Result;

/// The main pass: causal decoding over a past of candidates (or none, for plain decoding).
///
/// Two operations make every decoding strategy of the engine: exact FocusLLM steps start afresh
/// over new candidates at every token; frozen candidates and plain decoding start once and feed one
/// token at a time. [`MainDecoder::MainState`] (the Llama decoder: a KV cache) is the decoder's own.
///
/// [`crate::LocalDecoder`]'s example implements it for a toy model family.
pub trait MainDecoder<B: Backend> {
    /// What the decoder keeps between calls to [`MainDecoder::feed`].
    type MainState;

    /// A state whose first positions are the candidates of `past`, candidate `j` at position `j`
    /// (no past, or an empty one: plain decoding from position 0).
    fn start(&self, past: Option<&CandidateSet<B>>) -> Result<Self::MainState>;

    /// Appends `tokens` (at the next positions) and returns the next-token logits at the last one.
    /// On an error (empty `tokens`, an id outside the vocabulary), `state` is unchanged.
    fn feed(&self, state: &mut Self::MainState, tokens: &[u32]) -> Result<Vec<f32>>;

    /// Room in `state` for `additional` more tokens, fed later one [`MainDecoder::feed`] at a
    /// time, so that feeding them does not copy the state as it grows (as [`Vec::reserve`]): a
    /// hint, which the default ignores. The Llama decoder grows each layer's KV cache by a
    /// thirty-second at a time; every growth copies the whole cache into new memory.
    fn reserve(&self, state: &mut Self::MainState, additional: usize) {
        let _ = (state, additional);
    }

    /// The focus map of the last [`MainDecoder::feed`]: the share of its last position's attention
    /// (averaged over heads and layers) that went to each candidate of the past, in the past's
    /// order; `None` when there is no past or the decoder does not measure it (the default).
    fn focus(&self, state: &Self::MainState) -> Option<Vec<f32>> {
        let _ = state;
        None
    }
}
