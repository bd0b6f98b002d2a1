//! Step three of the data flow: per-chunk candidates become the main decoder's past.

use burn::tensor::backend::Backend;

use crate::candidates::CandidateSet;
use crate::error::{FocusError, Result};

/// Builds the main decoder's past from the candidates of every chunk batch. The reference
/// concatenates every candidate in chunk order ([`ConcatAggregator`]); others may filter or reorder
/// ([`NearestChunks`] keeps the chunks nearest the local context), with [`CandidateSet`]'s methods.
pub trait CandidateAggregator<B: Backend> {
    /// Aggregates `batches` (which together hold every chunk once, in any order).
    fn aggregate(&self, batches: &[CandidateSet<B>]) -> Result<CandidateSet<B>>;
}

/// The reference aggregation: all candidates, in chunk order.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConcatAggregator;

impl<B: Backend> CandidateAggregator<B> for ConcatAggregator {
    fn aggregate(&self, batches: &[CandidateSet<B>]) -> Result<CandidateSet<B>> {
        let all = CandidateSet::concat(batches)?;
        let mut seen = vec![false; all.len()];
        for &chunk in all.chunk_ids() {
            if chunk >= seen.len() || std::mem::replace(&mut seen[chunk], true) {
                return Err(FocusError::Decoder(format!(
                    "chunk ids {:?} are not a permutation of 0..{}",
                    all.chunk_ids(),
                    all.len()
                )));
            }
        }
        all.in_chunk_order()
    }
}

/// Keeps the candidates of the `keep` chunks nearest the local context (the last ones), in chunk
/// order: a sliding memory that bounds the main pass whatever the input length. With `keep` at
/// least the number of chunks it equals [`ConcatAggregator`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NearestChunks {
    /// How many chunks to keep (at least 1).
    pub keep: usize,
}

impl<B: Backend> CandidateAggregator<B> for NearestChunks {
    fn aggregate(&self, batches: &[CandidateSet<B>]) -> Result<CandidateSet<B>> {
        if self.keep == 0 {
            return Err(FocusError::InvalidConfig {
                field: "keep",
                reason: "NearestChunks must keep at least one chunk".into(),
            });
        }
        let all = ConcatAggregator.aggregate(batches)?;
        let from = all.len().saturating_sub(self.keep);
        all.select(&(from..all.len()).collect::<Vec<_>>())
    }
}
