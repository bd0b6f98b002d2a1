//! Training the candidate parameters (feature `train`): the base model stays frozen and only the
//! candidate token's projections learn, on any burn [`AutodiffBackend`](burn::tensor::backend::AutodiffBackend).
//!
//! - [`TrainConfig`]: sizes, losses (continuation and repetition; the paper's local-token loss or
//!   the reference's single next token), AdamW, schedule, clipping, accumulation, checkpoints.
//! - Data: [`TextCorpus`] (text files, tokenized) and [`RetrievalGenerator`] (keys hidden in
//!   filler), cut into [`TrainExample`]s by [`ExampleSampler`] with the engine's own chunker.
//! - [`CandidateTrainer`]: what a model family implements (the loss of one example).
//! - [`Trainer`]: the loop, with resumable checkpoints, a JSON-lines loss log, progress and
//!   cancellation.

mod checkpoint;
mod config;
mod corpus;
mod example;
mod grads;
mod retrieval;
mod sampler;
mod trainer;

pub use config::{LossTarget, TaskMix, TrainConfig};
pub use corpus::{TextCorpus, TextEncoder};
pub use example::{TaskKind, TrainExample};
pub use retrieval::{Fact, RetrievalGenerator, RetrievalSample};
pub use sampler::ExampleSampler;
pub use trainer::{
    CandidateTrainer, ExampleLoss, StepRecord, TaskStat, TrainOutcome, TrainProgress, Trainer,
};
