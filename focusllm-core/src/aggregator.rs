//! Step three of the data flow: per-chunk candidates become the main decoder's past.

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

use crate::cache::{CandidateCache, ChunkBatchCache, LayerKv};
use crate::error::{FocusError, Result};

/// Builds the main decoder's past from the chunk batches. The reference concatenates every
/// candidate in chunk order ([`ConcatAggregator`]); variants may filter or reorder (a top-k by
/// relevance, say) as long as they return one past.
pub trait CandidateAggregator<B: Backend> {
    /// Aggregates the candidates of `batches` (which together hold every chunk once).
    fn aggregate(&self, batches: &[ChunkBatchCache<B>]) -> Result<CandidateCache<B>>;
}

/// The reference aggregation: all candidates, concatenated in chunk order.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConcatAggregator;

impl<B: Backend> CandidateAggregator<B> for ConcatAggregator {
    fn aggregate(&self, batches: &[ChunkBatchCache<B>]) -> Result<CandidateCache<B>> {
        let Some(first) = batches.first() else {
            return Ok(CandidateCache { layers: Vec::new() });
        };
        let n_layers = first.candidates.len();
        // Order in which chunks appear after concatenating the batches; the past must be in chunk order.
        let order: Vec<usize> = batches
            .iter()
            .flat_map(|b| b.chunk_ids.iter().copied())
            .collect();
        let mut position_of = vec![usize::MAX; order.len()];
        for (pos, &chunk) in order.iter().enumerate() {
            if chunk >= order.len() || position_of[chunk] != usize::MAX {
                return Err(FocusError::Decoder(format!(
                    "chunk ids {order:?} are not a permutation of 0..{}",
                    order.len()
                )));
            }
            position_of[chunk] = pos;
        }
        let in_order = position_of.iter().enumerate().all(|(i, &p)| i == p);
        let device = first.candidates[0].k.device();
        let permutation = (!in_order).then(|| {
            let idx: Vec<i64> = position_of.iter().map(|&p| p as i64).collect();
            Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [order.len()]), &device)
        });
        let layers = (0..n_layers)
            .map(|layer| {
                // [batch, kv_heads, 1, d] -> [1, kv_heads, batch, d]: chunks become positions.
                let gather = |pick: fn(&LayerKv<B>) -> &Tensor<B, 4>| {
                    let parts = batches
                        .iter()
                        .map(|b| pick(&b.candidates[layer]).clone().swap_dims(0, 2))
                        .collect();
                    let all = Tensor::cat(parts, 2);
                    match &permutation {
                        Some(idx) => all.select(2, idx.clone()),
                        None => all,
                    }
                };
                LayerKv {
                    k: gather(|kv| &kv.k),
                    v: gather(|kv| &kv.v),
                }
            })
            .collect();
        Ok(CandidateCache { layers })
    }
}
