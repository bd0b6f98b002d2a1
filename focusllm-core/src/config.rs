//! Engine configuration: the FocusLLM sizes, with the reference implementation's values as defaults.

use serde::{Deserialize, Serialize};

use crate::error::{FocusError, Result};

/// How generated tokens are decoded after a FocusLLM prefill.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum StepMode {
    /// The reference semantics: every chunk is extended by `[prev, new]`, its candidate refreshed,
    /// and the main decoder recomputes the local context over the new candidates at every token.
    #[default]
    Exact,
    /// An approximation, opt-in: the candidates of the prefill are kept, the main decoder keeps a KV
    /// cache, and each token costs one position (like plain decoding). The chunk caches are freed
    /// after the prefill. The first token's logits are the exact ones; later ones differ from
    /// [`StepMode::Exact`] (see BENCHMARKS.md for a measurement).
    FrozenCandidates,
}

/// The sizes that shape a FocusLLM run.
///
/// Defaults are the reference implementation's inference values: local window 2048, chunk size 2048,
/// dynamic-prompt cap 512, chunk batch 4; the plain-decoding threshold defaults to the model's native
/// context (the reference hard-codes 4096, Llama-2's context).
///
/// ```
/// use focusllm_core::{FocusConfig, FocusError, StepMode};
///
/// let config = FocusConfig::default()
///     .with_local_window(4096)
///     .with_chunk_size(1024)
///     .with_step_mode(StepMode::FrozenCandidates);
/// assert!(config.validate().is_ok());
/// assert_eq!(config.prompt_len(), 512); // min(prompt cap, chunk size, local window)
///
/// // Sizes that cannot work are refused by name (`FocusEngine::new` validates too).
/// let err = FocusConfig::default().with_chunk_size(0).validate().unwrap_err();
/// assert!(matches!(err, FocusError::InvalidConfig { field: "chunk_size", .. }));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FocusConfig {
    /// `L`: tokens of the local context that the main decoder reads in full.
    pub local_window: usize,
    /// `S`: tokens per memory chunk.
    pub chunk_size: usize,
    /// Cap on the dynamic prompt: `P = min(prompt_cap, chunk_size, local_window)`.
    pub prompt_cap: usize,
    /// Inputs shorter than this are decoded plainly (no chunks). `None`: the model's native context.
    pub plain_threshold: Option<usize>,
    /// How many chunks are decoded at once (bounds peak memory; results do not depend on it).
    pub chunk_batch_size: usize,
    /// How tokens after the prefill are decoded (default: the reference's exact mode).
    #[serde(default)]
    pub step_mode: StepMode,
}

impl Default for FocusConfig {
    fn default() -> Self {
        Self {
            local_window: 2048,
            chunk_size: 2048,
            prompt_cap: 512,
            plain_threshold: None,
            chunk_batch_size: 4,
            step_mode: StepMode::Exact,
        }
    }
}

impl FocusConfig {
    /// Sets the local window `L`.
    pub fn with_local_window(mut self, tokens: usize) -> Self {
        self.local_window = tokens;
        self
    }

    /// Sets the chunk size `S`.
    pub fn with_chunk_size(mut self, tokens: usize) -> Self {
        self.chunk_size = tokens;
        self
    }

    /// Sets the dynamic-prompt cap.
    pub fn with_prompt_cap(mut self, tokens: usize) -> Self {
        self.prompt_cap = tokens;
        self
    }

    /// Sets the plain-decoding threshold (`None`: the model's native context).
    pub fn with_plain_threshold(mut self, tokens: Option<usize>) -> Self {
        self.plain_threshold = tokens;
        self
    }

    /// Sets how many chunks are decoded in one batch.
    pub fn with_chunk_batch_size(mut self, chunks: usize) -> Self {
        self.chunk_batch_size = chunks;
        self
    }

    /// Sets how tokens after the prefill are decoded.
    pub fn with_step_mode(mut self, mode: StepMode) -> Self {
        self.step_mode = mode;
        self
    }

    /// The dynamic-prompt length `P = min(prompt_cap, chunk_size, local_window)`.
    pub fn prompt_len(&self) -> usize {
        self.prompt_cap.min(self.chunk_size).min(self.local_window)
    }

    /// Rejects sizes that cannot work, naming the field.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("local_window", self.local_window),
            ("chunk_size", self.chunk_size),
            ("prompt_cap", self.prompt_cap),
            ("chunk_batch_size", self.chunk_batch_size),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(FocusError::InvalidConfig {
                    field,
                    reason: "must be at least 1".into(),
                });
            }
        }
        if self.plain_threshold == Some(0) {
            return Err(FocusError::InvalidConfig {
                field: "plain_threshold",
                reason: "must be at least 1 (use 1 to always chunk)".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_sizes_are_rejected_by_name() {
        let err = FocusConfig::default()
            .with_chunk_size(0)
            .validate()
            .unwrap_err();
        assert!(matches!(
            err,
            FocusError::InvalidConfig {
                field: "chunk_size",
                ..
            }
        ));
        let err = FocusConfig::default()
            .with_local_window(0)
            .validate()
            .unwrap_err();
        assert!(matches!(
            err,
            FocusError::InvalidConfig {
                field: "local_window",
                ..
            }
        ));
        let err = FocusConfig::default()
            .with_chunk_batch_size(0)
            .validate()
            .unwrap_err();
        assert!(matches!(
            err,
            FocusError::InvalidConfig {
                field: "chunk_batch_size",
                ..
            }
        ));
        assert!(FocusConfig::default().validate().is_ok());
    }

    #[test]
    fn prompt_len_is_the_smallest_cap() {
        let cfg = FocusConfig::default()
            .with_local_window(1024)
            .with_chunk_size(256);
        assert_eq!(cfg.prompt_len(), 256);
        let cfg = FocusConfig::default()
            .with_local_window(300)
            .with_chunk_size(700);
        assert_eq!(cfg.prompt_len(), 300);
    }
}
