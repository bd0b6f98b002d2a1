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
//! ```
//! # fn demo<B, M>(model: &M, ids: &[u32]) -> focusllm_core::Result<()>
//! # where B: burn::tensor::backend::Backend,
//! #       M: focusllm_core::LocalDecoder<B> + focusllm_core::MainDecoder<B> + focusllm_core::Model {
//! use focusllm_core::{FocusConfig, FocusEngine, GenerateOptions};
//! let engine = FocusEngine::new(model, FocusConfig::default())?;
//! let mut session = engine.session();
//! let out = session.generate(ids, &GenerateOptions::default(), None, |_| std::ops::ControlFlow::Continue(()))?;
//! println!("{:?} ({})", out.tokens, session.mode());
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

mod aggregator;
mod candidates;
mod chunker;
mod config;
mod control;
mod engine;
mod error;
mod generation;
mod local;
mod main_decoder;
mod model;
pub mod passkey;
mod sampler;
mod session;
#[cfg(feature = "train")]
pub mod train;

pub use aggregator::{CandidateAggregator, ConcatAggregator, NearestChunks};
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
pub use sampler::{Sampler, SamplingConfig, argmax, nll};
pub use session::{FocusMap, Mode, Session};
