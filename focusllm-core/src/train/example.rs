//! What one training example holds: an input the engine's chunker planned, the tokens generated
//! before the targets, the targets and how they are read.

use crate::chunker::ChunkPlan;
use crate::config::StepMode;

/// Where an example comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum TaskKind {
    /// Predict what follows a local span at the end of a text sample; the text before is memory.
    Continuation,
    /// Predict what follows a span copied from inside a memory chunk; the whole sample is memory.
    Repetition,
    /// Answer a question about a fact hidden in filler (the synthetic generator's continuation).
    Retrieval,
}

/// One training example: an input the engine's chunker has planned, and the tokens to predict after
/// it, read with the candidates held fixed or refreshed at every token (`step_mode`).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainExample {
    /// The task.
    pub task: TaskKind,
    /// The input ids (memory ++ local context).
    pub ids: Vec<u32>,
    /// How the input is read: chunks, local context, dynamic prompt.
    pub plan: ChunkPlan,
    /// Tokens generated after the input and before the targets (teacher-forced), as exact-mode
    /// decoding sees them: appended to every chunk's `chunk ++ prompt` (the last one is the
    /// candidate) and to the local context. Empty for a target right after the input.
    pub generated: Vec<u32>,
    /// The scored tokens, in order, right after the input and `generated`.
    pub targets: Vec<u32>,
    /// How the targets are read. [`StepMode::Exact`]: target `i` through candidates refreshed after
    /// `generated ++ targets[..i]` (one exact-mode step per target); [`StepMode::FrozenCandidates`]:
    /// every target through the candidates after `generated`. One target reads the same either way.
    pub step_mode: StepMode,
}

impl TrainExample {
    /// What the main decoder runs: the local context (BOS rule applied), the generated tokens and
    /// every target but the last, so that its last `targets.len()` logits predict the targets.
    ///
    /// # Panics
    /// If `targets` is empty (the sampler never builds such an example).
    pub fn main_input(&self) -> Vec<u32> {
        let mut main = self.plan.local.clone();
        main.extend_from_slice(&self.generated);
        main.extend_from_slice(&self.targets[..self.targets.len() - 1]);
        main
    }

    /// How many sets of candidates the targets are read through: one per target in exact mode,
    /// one in all with frozen candidates.
    pub fn candidate_steps(&self) -> usize {
        match self.step_mode {
            StepMode::Exact => self.targets.len().max(1),
            StepMode::FrozenCandidates => 1,
        }
    }

    /// What every chunk runs after its own tokens: the dynamic prompt, the generated tokens and, in
    /// exact mode, every target but the last. Its last [`TrainExample::candidate_steps`] tokens
    /// are the candidates (the one of step `i` follows the ordinary tokens before it).
    pub fn chunk_tail(&self) -> Vec<u32> {
        let mut tail = self.plan.prompt.clone();
        tail.extend_from_slice(&self.generated);
        tail.extend_from_slice(&self.targets[..self.candidate_steps() - 1]);
        tail
    }

    /// Tokens the decoder would run over for this example if every chunk were computed (chunk
    /// passes plus the main pass).
    pub fn decoded_tokens(&self) -> usize {
        let chunks: usize = self.plan.chunks.iter().map(|r| r.len()).sum();
        chunks + self.plan.chunks.len() * self.chunk_tail().len() + self.main_input().len()
    }
}
