//! # focusllm-core
//!
//! The FocusLLM parallel-decoding engine, generic over any [burn](https://burn.dev) backend and
//! independent of model families and file formats.
//!
//! The data flow, one way through:
//!
//! ```text
//! ids ─► Chunker ─► ChunkPlan { chunks, local context, dynamic prompt }
//!     ─► LocalDecoder over chunk batches ─► ChunkBatchCache { raw caches, candidate K/V }
//!     ─► CandidateAggregator ─► CandidateCache (the main decoder's past)
//!     ─► MainDecoder ─► logits ─► Sampler ─► next token
//!     ─► LocalDecoder::extend_chunks([prev, new]) ─► ...
//! ```
//!
//! [`FocusEngine`] wires the four traits together; a [`Session`] reads one prompt. A model family
//! (see the `focusllm-models` crate) implements [`LocalDecoder`] and [`MainDecoder`].

#![warn(missing_docs)]

mod aggregator;
mod cache;
mod chunker;
mod config;
mod control;
mod decoder;
mod engine;
mod error;
pub mod passkey;
mod sampler;
#[cfg(feature = "train")]
pub mod train;

pub use aggregator::{CandidateAggregator, ConcatAggregator};
pub use cache::{CandidateCache, ChunkBatchCache, LayerKv, PlainCache};
pub use chunker::{ChunkPlan, Chunker, FixedStrideChunker, with_bos};
pub use config::{FocusConfig, StepMode};
pub use control::{CancelToken, Progress, Stage};
pub use decoder::{ChunkSequence, Detokenizer, LocalDecoder, MainDecoder, ModelSpec};
pub use engine::{
    FocusEngine, GenerateOptions, GeneratedToken, Generation, Mode, PerplexityReport, Session,
    StopReason,
};
pub use error::{FocusError, Result, check_vocab};
pub use sampler::{Sampler, SamplingConfig, argmax, nll};

/// Forwarding implementations so that one model can serve as both decoders by reference.
mod forward_impls {
    use super::*;
    use burn::tensor::backend::Backend;

    impl<B: Backend, T: LocalDecoder<B> + ?Sized> LocalDecoder<B> for &T {
        fn decode_chunks(&self, sequences: &[ChunkSequence]) -> Result<ChunkBatchCache<B>> {
            (**self).decode_chunks(sequences)
        }
        fn extend_chunks(&self, batch: &mut ChunkBatchCache<B>, prev: u32, new: u32) -> Result<()> {
            (**self).extend_chunks(batch, prev, new)
        }
    }

    impl<B: Backend, T: MainDecoder<B> + ?Sized> MainDecoder<B> for &T {
        fn spec(&self) -> ModelSpec {
            (**self).spec()
        }
        fn decode_main(&self, tokens: &[u32], past: &CandidateCache<B>) -> Result<Vec<f32>> {
            (**self).decode_main(tokens, past)
        }
        fn decode_main_cached(
            &self,
            tokens: &[u32],
            past: &CandidateCache<B>,
            cache: &mut PlainCache<B>,
        ) -> Result<Vec<f32>> {
            (**self).decode_main_cached(tokens, past, cache)
        }
        fn decode_plain(&self, tokens: &[u32], cache: &mut PlainCache<B>) -> Result<Vec<f32>> {
            (**self).decode_plain(tokens, cache)
        }
    }
}
