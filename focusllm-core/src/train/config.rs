//! What a training run does: sizes, losses, optimiser and schedule.

use serde::{Deserialize, Serialize};

use crate::error::{FocusError, Result};

/// Which next-token losses a training example carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LossTarget {
    /// The paper's loss (Eq. 6): every local token after the candidates' cut point is predicted
    /// (up to `max` of them), with the candidates held fixed. This is what
    /// [`crate::StepMode::FrozenCandidates`] decodes with.
    LocalTokens {
        /// At most this many tokens after the cut are scored.
        max: usize,
    },
    /// The reference code's loss: only the token right after the local span is scored, at a random
    /// cut point. Every position can then be the candidate, which is what
    /// [`crate::StepMode::Exact`] (the candidate refreshed at every token) decodes with.
    NextToken,
    /// Exact-mode decoding of several tokens: up to `max` consecutive tokens after a random cut (a
    /// retrieval sample's whole answer), token `i` predicted through candidates refreshed after
    /// the `i` tokens before it, as [`crate::StepMode::Exact`] decodes. The reference's loss summed
    /// over the answer: one example carries every answer token for the cost of one chunk pass.
    ExactSteps {
        /// At most this many tokens after the cut are scored (a retrieval answer is scored whole).
        max: usize,
    },
}

impl LossTarget {
    /// The decoding semantics the targets are scored with (and the adapter is to be read with).
    pub fn step_mode(&self) -> crate::StepMode {
        match self {
            LossTarget::LocalTokens { .. } => crate::StepMode::FrozenCandidates,
            LossTarget::NextToken | LossTarget::ExactSteps { .. } => crate::StepMode::Exact,
        }
    }
}

/// How the continuation and repetition tasks are combined per step.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub enum TaskMix {
    /// One task per sample, repetition with this probability (the reference's choice).
    Random {
        /// Probability of the repetition task.
        repetition: f64,
    },
    /// Both tasks on every sample, losses summed (costs two examples per sample).
    Sum,
}

/// A training run's settings. Everything that decides the data and the updates is here, so that a
/// run resumed from a checkpoint (which stores this config) continues the same curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Optimiser steps in the whole run.
    pub steps: usize,
    /// Samples per micro-batch (one backward pass).
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed before each optimiser step.
    pub grad_accum: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Steps of linear warm-up from 0 to `lr`.
    pub warmup_steps: usize,
    /// The learning rate decays linearly from `lr` to `lr * final_lr_ratio` at the last step.
    pub final_lr_ratio: f64,
    /// AdamW's decoupled weight decay.
    pub weight_decay: f64,
    /// Clips the global gradient norm to this value (`None`: no clipping).
    pub clip_norm: Option<f64>,
    /// Seeds the data order and every random draw (same seed, same run).
    pub seed: u64,
    /// Shortest sample in tokens.
    pub min_sample_tokens: usize,
    /// Longest sample in tokens.
    pub max_sample_tokens: usize,
    /// Chunk sizes `S`; one is drawn per sample (the reference draws from 64..2048).
    pub chunk_sizes: Vec<usize>,
    /// Cap on the dynamic prompt; a sample's prompt is `min(prompt_cap, S, local span)` tokens.
    pub prompt_cap: usize,
    /// Shortest local span (the reference: 30).
    pub min_local: usize,
    /// Longest local span.
    pub max_local: usize,
    /// Which tokens are scored.
    pub target: LossTarget,
    /// How the two tasks are chosen.
    pub tasks: TaskMix,
    /// Share of samples drawn from the synthetic retrieval generator (the rest come from the text
    /// corpus; with no corpus every sample is synthetic).
    pub synthetic_ratio: f64,
    /// Writes a checkpoint every this many steps (and at the end, and when cancelled).
    pub checkpoint_every: usize,
    /// Longest continuation or repetition sample cut from the text corpus (retrieval samples may
    /// be longer: their haystacks are made of recurring chunks whose caches a trainer can keep).
    #[serde(default = "default_max_text_tokens")]
    pub max_text_tokens: usize,
    /// Share of synthetic retrieval samples whose haystack is corpus prose instead of the built-in
    /// filler (needs a corpus).
    #[serde(default)]
    pub prose_haystack: f64,
    /// Distinct prose blocks (per chunk size) that prose haystacks are made of.
    #[serde(default = "default_prose_blocks")]
    pub prose_blocks: usize,
    /// Weights of the retrieval keys' kinds: numbers of 4–8 digits, word pairs, codes such as
    /// `K7-QX2`.
    #[serde(default = "default_key_kinds")]
    pub key_kinds: [f64; 3],
}

fn default_key_kinds() -> [f64; 3] {
    [0.6, 0.2, 0.2]
}

fn default_max_text_tokens() -> usize {
    usize::MAX
}

fn default_prose_blocks() -> usize {
    32
}

impl Default for TrainConfig {
    /// The recipe of the bundled SmolLM2-135M adapter (rank 8): about 50 minutes on two CPU cores.
    /// (A peak learning rate of 4e-3 diverged after 25 steps with these sizes; 2e-3 did not.)
    fn default() -> Self {
        Self {
            steps: 240,
            batch_size: 4,
            grad_accum: 1,
            lr: 2e-3,
            warmup_steps: 20,
            final_lr_ratio: 0.1,
            weight_decay: 0.0,
            clip_norm: Some(1.0),
            seed: 0,
            min_sample_tokens: 256,
            max_sample_tokens: 640,
            chunk_sizes: vec![64, 128, 256],
            prompt_cap: 48,
            min_local: 30,
            max_local: 128,
            target: LossTarget::LocalTokens { max: 8 },
            tasks: TaskMix::Random { repetition: 0.2 },
            synthetic_ratio: 0.8,
            checkpoint_every: 20,
            max_text_tokens: default_max_text_tokens(),
            prose_haystack: 0.0,
            prose_blocks: default_prose_blocks(),
            key_kinds: default_key_kinds(),
        }
    }
}

impl TrainConfig {
    /// Rejects settings that cannot work, naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad =
            |field: &'static str, reason: String| Err(FocusError::InvalidConfig { field, reason });
        let positive = [
            ("steps", self.steps),
            ("batch_size", self.batch_size),
            ("grad_accum", self.grad_accum),
            ("prompt_cap", self.prompt_cap),
            ("min_local", self.min_local),
            ("checkpoint_every", self.checkpoint_every),
            ("prose_blocks", self.prose_blocks),
        ];
        for (field, value) in positive {
            if value == 0 {
                return bad(field, "must be at least 1".into());
            }
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad("lr", format!("({}) must be a positive number", self.lr));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return bad(
                "weight_decay",
                format!("({}) must be a number >= 0", self.weight_decay),
            );
        }
        if self.warmup_steps > self.steps {
            return bad(
                "warmup_steps",
                format!("({}) exceeds steps ({})", self.warmup_steps, self.steps),
            );
        }
        if !(0.0..=1.0).contains(&self.final_lr_ratio) {
            return bad(
                "final_lr_ratio",
                format!("({}) must be in [0, 1]", self.final_lr_ratio),
            );
        }
        if !(0.0..=1.0).contains(&self.synthetic_ratio) {
            return bad(
                "synthetic_ratio",
                format!("({}) must be in [0, 1]", self.synthetic_ratio),
            );
        }
        if !(0.0..=1.0).contains(&self.prose_haystack) {
            return bad(
                "prose_haystack",
                format!("({}) must be in [0, 1]", self.prose_haystack),
            );
        }
        // A text sample must hold a local span, its targets and at least one memory token.
        if self.max_text_tokens <= self.max_local + self.max_targets() {
            return bad(
                "max_text_tokens",
                format!(
                    "({}) cannot hold a local span of {} tokens, {} targets and some memory",
                    self.max_text_tokens,
                    self.max_local,
                    self.max_targets()
                ),
            );
        }
        if self.key_kinds.iter().any(|w| !(w.is_finite() && *w >= 0.0))
            || self.key_kinds.iter().sum::<f64>() <= 0.0
        {
            return bad(
                "key_kinds",
                format!(
                    "({:?}) must be weights >= 0 with a positive sum",
                    self.key_kinds
                ),
            );
        }
        if let TaskMix::Random { repetition } = self.tasks
            && !(0.0..=1.0).contains(&repetition)
        {
            return bad(
                "tasks",
                format!("repetition probability {repetition} is not in [0, 1]"),
            );
        }
        if let LossTarget::LocalTokens { max: 0 } | LossTarget::ExactSteps { max: 0 } = self.target
        {
            return bad("target", format!("{:?} needs max >= 1", self.target));
        }
        if let Some(c) = self.clip_norm
            && !(c.is_finite() && c > 0.0)
        {
            return bad("clip_norm", format!("({c}) must be a positive number"));
        }
        if self.max_local < self.min_local {
            return bad(
                "max_local",
                format!(
                    "({}) is below min_local ({})",
                    self.max_local, self.min_local
                ),
            );
        }
        if self.chunk_sizes.is_empty() || self.chunk_sizes.contains(&0) {
            return bad(
                "chunk_sizes",
                format!("({:?}) needs sizes >= 1", self.chunk_sizes),
            );
        }
        if self.max_sample_tokens < self.min_sample_tokens {
            return bad(
                "max_sample_tokens",
                format!(
                    "({}) is below min_sample_tokens ({})",
                    self.max_sample_tokens, self.min_sample_tokens
                ),
            );
        }
        // A sample must hold a local span, its targets and at least one memory token.
        let needed = self.max_local + self.max_targets() + 1;
        if self.min_sample_tokens < needed {
            return bad(
                "min_sample_tokens",
                format!(
                    "({}) cannot hold a local span of {} tokens, {} targets and some memory",
                    self.min_sample_tokens,
                    self.max_local,
                    self.max_targets()
                ),
            );
        }
        Ok(())
    }

    /// The most tokens one example scores.
    pub fn max_targets(&self) -> usize {
        match self.target {
            LossTarget::LocalTokens { max } | LossTarget::ExactSteps { max } => max,
            LossTarget::NextToken => 1,
        }
    }

    /// Learning rate at `step` (0-based): linear warm-up, then linear decay to
    /// `lr * final_lr_ratio` at the last step. Written out rather than composed from burn's
    /// schedulers because the checkpoint must restore it from the step number alone.
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.lr * (step + 1) as f64 / self.warmup_steps as f64;
        }
        // The last step (`steps - 1`) runs at exactly `lr * final_lr_ratio`.
        let decay_steps = self.steps.saturating_sub(self.warmup_steps + 1).max(1);
        let progress = (step - self.warmup_steps) as f64 / decay_steps as f64;
        self.lr * (1.0 - progress.min(1.0) * (1.0 - self.final_lr_ratio))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays() {
        let cfg = TrainConfig {
            steps: 110,
            warmup_steps: 10,
            lr: 1.0,
            final_lr_ratio: 0.1,
            ..TrainConfig::default()
        };
        assert!((cfg.lr_at(0) - 0.1).abs() < 1e-12);
        assert!((cfg.lr_at(9) - 1.0).abs() < 1e-12);
        assert!((cfg.lr_at(10) - 1.0).abs() < 1e-12);
        assert!((cfg.lr_at(60) - (1.0 - 50.0 / 99.0 * 0.9)).abs() < 1e-12);
        assert!((cfg.lr_at(109) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn bad_fields_are_named() {
        let check = |cfg: TrainConfig, field: &str| match cfg.validate() {
            Err(FocusError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
            other => panic!("expected an error on {field}, got {other:?}"),
        };
        check(
            TrainConfig {
                steps: 0,
                ..Default::default()
            },
            "steps",
        );
        check(
            TrainConfig {
                lr: -1.0,
                ..Default::default()
            },
            "lr",
        );
        check(
            TrainConfig {
                chunk_sizes: vec![],
                ..Default::default()
            },
            "chunk_sizes",
        );
        check(
            TrainConfig {
                max_local: 10,
                ..Default::default()
            },
            "max_local",
        );
        check(
            TrainConfig {
                min_sample_tokens: 50,
                ..Default::default()
            },
            "min_sample_tokens",
        );
        check(
            TrainConfig {
                tasks: TaskMix::Random { repetition: 2.0 },
                ..Default::default()
            },
            "tasks",
        );
        TrainConfig::default().validate().unwrap();
    }
}
