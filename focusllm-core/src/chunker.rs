//! Step one of the data flow: cut the input into memory chunks, the local context and the dynamic prompt.

use std::ops::Range;

use crate::config::FocusConfig;
use crate::error::{FocusError, Result};

/// How an input of `n` tokens is read: which ranges are memory chunks, what the main decoder sees in
/// full (the local context) and what is appended to every chunk (the dynamic prompt).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkPlan {
    /// Memory chunks, as ranges into the input, in reading order.
    pub chunks: Vec<Range<usize>>,
    /// The range of the input that forms the local context.
    pub local_range: Range<usize>,
    /// The local context as fed to the main decoder (BOS rule applied).
    pub local: Vec<u32>,
    /// The range of the input that forms the dynamic prompt.
    pub prompt_range: Range<usize>,
    /// The dynamic prompt as appended to each chunk (BOS rule applied). Its last token is the
    /// candidate token of every chunk.
    pub prompt: Vec<u32>,
}

impl ChunkPlan {
    /// The sequence a local decoder runs for chunk `index`: `chunk ++ prompt`.
    pub fn chunk_sequence(&self, ids: &[u32], index: usize) -> Vec<u32> {
        let range = self.chunks[index].clone();
        let mut seq = Vec::with_capacity(range.len() + self.prompt.len());
        seq.extend_from_slice(&ids[range]);
        seq.extend_from_slice(&self.prompt);
        seq
    }
}

/// A policy that plans how a long input is read. The fixed stride of the reference is
/// [`FixedStrideChunker`]; other policies (for instance cutting at paragraph boundaries) implement
/// the same trait. The engine only calls it for inputs longer than the local window, so the memory
/// part `ids[..ids.len() - local_window]` is never empty.
///
/// ```
/// use focusllm_core::{ChunkPlan, Chunker, FixedStrideChunker, FocusConfig, Result};
///
/// /// Ends a memory chunk after every `sep` token (a paragraph break, say) rather than every
/// /// `chunk_size` tokens; local context and dynamic prompt as the reference's.
/// struct AtSeparator {
///     sep: u32,
/// }
///
/// impl Chunker for AtSeparator {
///     fn plan(&self, ids: &[u32], config: &FocusConfig, bos: Option<u32>) -> Result<ChunkPlan> {
///         let mut plan = FixedStrideChunker.plan(ids, config, bos)?;
///         let memory = plan.local_range.start;
///         plan.chunks.clear();
///         let mut start = 0;
///         for (i, &id) in ids[..memory].iter().enumerate() {
///             if id == self.sep || i + 1 == memory {
///                 plan.chunks.push(start..i + 1);
///                 start = i + 1;
///             }
///         }
///         Ok(plan)
///     }
/// }
///
/// let ids = [1, 10, 11, 0, 12, 0, 13, 14, 15, 16, 17, 18];
/// let config = FocusConfig::default().with_local_window(4).with_chunk_size(4);
/// let plan = AtSeparator { sep: 0 }.plan(&ids, &config, Some(1))?;
/// assert_eq!(plan.chunks, [0..4, 4..6, 6..8]);
/// assert_eq!(plan.local, [1, 15, 16, 17, 18]); // the last 4 tokens, BOS prepended
/// assert_eq!(plan.chunk_sequence(&ids, 1), [12, 0, 1, 15, 16, 17, 18]); // chunk ++ prompt
/// // The reference cuts every 4 tokens.
/// assert_eq!(FixedStrideChunker.plan(&ids, &config, Some(1))?.chunks, [0..4, 4..8]);
/// // An engine reads with it after `FocusEngine::with_chunker(AtSeparator { sep: 0 })`.
/// # Ok::<(), focusllm_core::FocusError>(())
/// ```
pub trait Chunker {
    /// Plans the reading of `ids`; `bos` is the model's BOS id, if it has one.
    fn plan(&self, ids: &[u32], config: &FocusConfig, bos: Option<u32>) -> Result<ChunkPlan>;
}

/// Prepends `bos` unless `tokens` already starts with it (the reference's BOS rule).
pub fn with_bos(tokens: &[u32], bos: Option<u32>) -> Vec<u32> {
    match bos {
        Some(b) if tokens.first() != Some(&b) => {
            let mut out = Vec::with_capacity(tokens.len() + 1);
            out.push(b);
            out.extend_from_slice(tokens);
            out
        }
        _ => tokens.to_vec(),
    }
}

/// The reference policy: chunks of exactly `chunk_size` tokens (the last one may be shorter), local
/// context = the last `local_window` tokens, dynamic prompt = the last `prompt_len()` tokens.
#[derive(Debug, Clone, Copy, Default)]
pub struct FixedStrideChunker;

impl Chunker for FixedStrideChunker {
    fn plan(&self, ids: &[u32], config: &FocusConfig, bos: Option<u32>) -> Result<ChunkPlan> {
        config.validate()?;
        let n = ids.len();
        if n <= config.local_window {
            return Err(FocusError::InvalidConfig {
                field: "local_window",
                reason: format!(
                    "({}) leaves no memory in an input of {n} tokens",
                    config.local_window
                ),
            });
        }
        let memory_len = n - config.local_window;
        let chunks = (0..memory_len)
            .step_by(config.chunk_size)
            .map(|start| start..(start + config.chunk_size).min(memory_len))
            .collect();
        let local_range = memory_len..n;
        let prompt_range = n - config.prompt_len()..n;
        Ok(ChunkPlan {
            chunks,
            local: with_bos(&ids[local_range.clone()], bos),
            prompt: with_bos(&ids[prompt_range.clone()], bos),
            local_range,
            prompt_range,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_stride_matches_the_reference_layout() {
        // Fixture C: 5000 tokens, L 512, S 700 -> 6 chunks of 700 and one of 288.
        let ids: Vec<u32> = (0..5000).map(|i| 2 + (i % 500)).collect();
        let cfg = FocusConfig::default()
            .with_local_window(512)
            .with_chunk_size(700);
        let plan = FixedStrideChunker.plan(&ids, &cfg, Some(1)).unwrap();
        assert_eq!(plan.chunks.len(), 7);
        assert_eq!(plan.chunks[6], 4200..4488);
        assert_eq!(plan.local_range, 4488..5000);
        assert_eq!(plan.local.len(), 513);
        assert_eq!(plan.local[0], 1);
        assert_eq!(plan.prompt_range, 4488..5000);
        assert_eq!(plan.chunk_sequence(&ids, 6).len(), 288 + 513);
    }

    #[test]
    fn bos_is_not_doubled() {
        assert_eq!(with_bos(&[1, 5], Some(1)), vec![1, 5]);
        assert_eq!(with_bos(&[5], Some(1)), vec![1, 5]);
        assert_eq!(with_bos(&[5], None), vec![5]);
    }

    #[test]
    fn no_memory_is_an_error_not_a_panic() {
        let cfg = FocusConfig::default().with_local_window(10);
        assert!(FixedStrideChunker.plan(&[3; 10], &cfg, None).is_err());
    }
}
