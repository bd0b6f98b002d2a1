//! # focusllm-core
//!
//! The FocusLLM parallel-decoding engine, generic over any [burn](https://burn.dev) backend and
//! independent of model families and file formats.
//!
//! The data flow, one way through, a module per stage:
//!
//! ```text
//! ids ─► Chunker (chunker) ─► ChunkPlan { chunks, local context, dynamic prompt }
//!     ─► LocalDecoder (local) over chunk batches ─► per batch: its own state + CandidateSet
//!     ─► CandidateAggregator (aggregator) ─► one CandidateSet, the main decoder's past
//!     ─► MainDecoder (main_decoder) ─► logits ─► Sampler (sampler) ─► next token
//!     ─► LocalDecoder::extend_chunks(prev, new) ─► ...
//! ```
//!
//! [`FocusEngine`] (engine) wires them together; a [`Session`] (session) reads one prompt with the
//! decoding strategy the configuration asks for (exact steps, frozen candidates, or plain decoding
//! for short inputs); generation and perplexity (generation) build on its `prefill` and `step`. A
//! model family (see the `focusllm-models` crate) implements [`Model`], [`LocalDecoder`] and
//! [`MainDecoder`]; what each decoder keeps between tokens is its own associated type.
//!
//! Any model family runs the same code:
//!
//! ```
//! # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/doc/counter.rs"));
//! # fn main() -> focusllm_core::Result<()> {
//! use std::ops::ControlFlow;
//!
//! use burn::tensor::backend::Backend;
//! use focusllm_core::{
//!     FocusConfig, FocusEngine, GenerateOptions, LocalDecoder, MainDecoder, Model,
//! };
//!
//! /// Continues `ids` with up to 8 tokens, greedily.
//! fn continue_ids<B, M>(model: &M, ids: &[u32]) -> focusllm_core::Result<Vec<u32>>
//! where
//!     B: Backend,
//!     M: LocalDecoder<B> + MainDecoder<B> + Model,
//! {
//!     let engine = FocusEngine::new(model, FocusConfig::default())?;
//!     let mut session = engine.session();
//!     let options = GenerateOptions { max_tokens: 8, ..Default::default() };
//!     let out = session.generate(ids, &options, None, |_| ControlFlow::Continue(()))?;
//!     println!("{:?} ({})", out.tokens, session.mode());
//!     Ok(out.tokens)
//! }
//!
//! // `Counter`: the toy model family of `LocalDecoder`'s example, which counts up.
//! assert_eq!(continue_ids(&Counter, &[5, 6, 7])?, [8, 9, 10, 11, 12, 13, 14, 15]);
//! # Ok(())
//! # }
//! ```
//!
//! `focusllm-models` has the real model family (Llama 2/3, Mistral, Qwen2, SmolLM2); the
//! `focusllm` crate's documentation runs this on a model file.

#![warn(missing_docs)]

mod aggregator;
mod any_backend;
mod candidates;
mod chunker;
mod config;
mod control;
mod engine;
mod error;
mod generation;
mod isolated;
mod local;
mod main_decoder;
mod model;
pub mod passkey;
mod resume;
mod sampler;
mod session;
mod sharded;
#[cfg(feature = "train")]
pub mod train;

pub use aggregator::{CandidateAggregator, ConcatAggregator, NearestChunks};
pub use any_backend::{AnyBackendDecoder, AnyChunkState};
pub use candidates::{CandidateSet, LayerKv};
pub use chunker::{ChunkPlan, Chunker, FixedStrideChunker, with_bos};
pub use config::{FocusConfig, StepMode};
pub use control::{CancelToken, Progress, Stage};
pub use engine::FocusEngine;
pub use error::{FocusError, Result, check_vocab};
pub use generation::{GenerateOptions, GeneratedToken, Generation, PerplexityReport, StopReason};
pub use local::{ChunkSequence, LocalDecoder};
pub use main_decoder::MainDecoder;
pub use model::{Detokenizer, Model, ModelSpec};
pub use resume::{PrefillCheckpoint, Resumed};
pub use sampler::{Sampler, SamplingConfig, argmax, nll};
pub use session::{FocusMap, Mode, Session};
pub use sharded::{ShardState, ShardedDecoder};
