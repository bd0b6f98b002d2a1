//! Step three of the data flow: per-chunk candidates become the main decoder's past.

use burn::tensor::backend::Backend;

use crate::candidates::CandidateSet;
use crate::error::{FocusError, Result};

/// Builds the main decoder's past from the candidates of every chunk batch. The reference
/// concatenates every candidate in chunk order ([`ConcatAggregator`]); others may filter or reorder
/// ([`NearestChunks`] keeps the chunks nearest the local context), with [`CandidateSet`]'s methods.
///
/// ```
/// use burn::backend::Flex;
/// use burn::tensor::{Tensor, backend::Backend};
/// use focusllm_core::{
///     CandidateAggregator, CandidateSet, ConcatAggregator, LayerKv, NearestChunks, Result,
/// };
///
/// /// Keeps the first chunk (the start of the document: a title, instructions) and the `keep`
/// /// chunks nearest the local context.
/// struct FirstAndNearest {
///     keep: usize,
/// }
///
/// impl<B: Backend> CandidateAggregator<B> for FirstAndNearest {
///     fn aggregate(&self, batches: &[CandidateSet<B>]) -> Result<CandidateSet<B>> {
///         let all = ConcatAggregator.aggregate(batches)?; // every candidate, in chunk order
///         let nearest = all.len().saturating_sub(self.keep).max(1)..all.len();
///         all.select(&std::iter::once(0).chain(nearest).collect::<Vec<_>>())
///     }
/// }
///
/// // The candidates of chunks 0..6 as two batches of the chunk pass return them (one layer,
/// // one KV head of dimension 2).
/// let batch = |chunks: Vec<usize>| {
///     let kv = Tensor::<Flex, 4>::zeros([1, 1, chunks.len(), 2], &Default::default());
///     CandidateSet::new(chunks, vec![LayerKv { k: kv.clone(), v: kv }])
/// };
/// let batches = [batch(vec![3, 4, 5])?, batch(vec![0, 1, 2])?];
///
/// let past = FirstAndNearest { keep: 2 }.aggregate(&batches)?;
/// assert_eq!(past.chunk_ids(), [0, 4, 5]);
/// assert_eq!(past.layers()[0].k.dims(), [1, 1, 3, 2]); // the main decoder's past: 3 positions
/// assert_eq!(NearestChunks { keep: 2 }.aggregate(&batches)?.chunk_ids(), [4, 5]);
/// assert_eq!(ConcatAggregator.aggregate(&batches)?.chunk_ids(), [0, 1, 2, 3, 4, 5]);
/// // An engine reads with it after `FocusEngine::with_aggregator(FirstAndNearest { keep: 16 })`.
/// # Ok::<(), focusllm_core::FocusError>(())
/// ```
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
