//! What flows from the chunk pass to the main pass: the candidates of some chunks.

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

use crate::error::{FocusError, Result};

/// Keys and values of one layer, each `[batch, kv_heads, positions, head_dim]`.
#[derive(Debug, Clone)]
pub struct LayerKv<B: Backend> {
    /// Keys.
    pub k: Tensor<B, 4>,
    /// Values.
    pub v: Tensor<B, 4>,
}

impl<B: Backend> LayerKv<B> {
    /// Number of positions held.
    pub fn len(&self) -> usize {
        self.k.dims()[2]
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held by the keys and values.
    pub fn size_bytes(&self) -> usize {
        (self.k.shape().num_elements() + self.v.shape().num_elements()) * self.k.dtype().size()
    }
}

/// The candidates of some chunks, laid out as the main decoder reads its past: per layer, keys
/// (before RoPE: the main decoder places them) and values `[1, kv_heads, n, head_dim]`, position
/// `j` holding the candidate of chunk `chunk_ids()[j]`.
///
/// A [`crate::LocalDecoder`] produces them and a [`crate::MainDecoder`] of the same model reads
/// them; a [`crate::CandidateAggregator`] only reorders, filters and joins them with the methods
/// here, so it never depends on the layout.
#[derive(Debug, Clone)]
pub struct CandidateSet<B: Backend> {
    chunk_ids: Vec<usize>,
    layers: Vec<LayerKv<B>>,
}

impl<B: Backend> CandidateSet<B> {
    /// Candidates of `chunk_ids`, one position each in every layer of `layers`. Fails if a layer's
    /// keys or values are not `[1, kv_heads, chunk_ids.len(), head_dim]`, or if layers disagree.
    pub fn new(chunk_ids: Vec<usize>, layers: Vec<LayerKv<B>>) -> Result<Self> {
        let n = chunk_ids.len();
        let first = layers.first().map(|l| l.k.dims());
        for (i, layer) in layers.iter().enumerate() {
            let (k, v) = (layer.k.dims(), layer.v.dims());
            let consistent = k[0] == 1 && k[2] == n && v[0] == 1 && v[2] == n && k[1] == v[1];
            if !consistent || first.is_some_and(|f| f[1] != k[1] || f[3] != k[3]) {
                return Err(FocusError::Decoder(format!(
                    "candidate layer {i}: keys {k:?} and values {v:?} are not [1, kv_heads, {n}, \
                     head_dim] like the other layers"
                )));
            }
        }
        Ok(Self { chunk_ids, layers })
    }

    /// Which chunk each position holds.
    pub fn chunk_ids(&self) -> &[usize] {
        &self.chunk_ids
    }

    /// Per layer, keys and values `[1, kv_heads, len(), head_dim]` (no layer at all when empty).
    pub fn layers(&self) -> &[LayerKv<B>] {
        &self.layers
    }

    /// Number of candidates.
    pub fn len(&self) -> usize {
        self.chunk_ids.len()
    }

    /// Whether there is no candidate.
    pub fn is_empty(&self) -> bool {
        self.chunk_ids.is_empty()
    }

    /// Bytes held by the keys and values.
    pub fn size_bytes(&self) -> usize {
        self.layers.iter().map(LayerKv::size_bytes).sum()
    }

    /// The candidates of `sets`, one after another. Fails if the sets have different layer counts
    /// or shapes, or if `sets` is empty.
    pub fn concat(sets: &[Self]) -> Result<Self> {
        let Some(first) = sets.first() else {
            return Err(FocusError::Decoder(
                "no candidate set to concatenate".into(),
            ));
        };
        if sets.len() == 1 {
            return Ok(first.clone());
        }
        if let Some(other) = sets.iter().find(|s| s.layers.len() != first.layers.len()) {
            return Err(FocusError::Decoder(format!(
                "candidate sets with {} and {} layers",
                first.layers.len(),
                other.layers.len()
            )));
        }
        let layers = (0..first.layers.len())
            .map(|l| LayerKv {
                k: Tensor::cat(sets.iter().map(|s| s.layers[l].k.clone()).collect(), 2),
                v: Tensor::cat(sets.iter().map(|s| s.layers[l].v.clone()).collect(), 2),
            })
            .collect();
        let chunk_ids = sets
            .iter()
            .flat_map(|s| s.chunk_ids.iter().copied())
            .collect();
        Self::new(chunk_ids, layers)
    }

    /// The candidates at `positions` (indices into this set, in that order; repeats allowed).
    /// Fails on an index out of range.
    pub fn select(&self, positions: &[usize]) -> Result<Self> {
        if let Some(&bad) = positions.iter().find(|&&p| p >= self.len()) {
            return Err(FocusError::Decoder(format!(
                "candidate position {bad} is out of range for {} candidates",
                self.len()
            )));
        }
        if positions.iter().copied().eq(0..self.len()) {
            return Ok(self.clone());
        }
        let chunk_ids = positions.iter().map(|&p| self.chunk_ids[p]).collect();
        // An empty selection holds no layer (tensors of zero positions are avoided).
        let device = self.layers.first().map(|l| l.k.device());
        let layers = match device {
            _ if positions.is_empty() => Vec::new(),
            None => Vec::new(),
            Some(device) => {
                let index = Tensor::<B, 1, Int>::from_data(
                    TensorData::new(
                        positions.iter().map(|&p| p as i64).collect(),
                        [positions.len()],
                    ),
                    &device,
                );
                self.layers
                    .iter()
                    .map(|l| LayerKv {
                        k: l.k.clone().select(2, index.clone()),
                        v: l.v.clone().select(2, index.clone()),
                    })
                    .collect()
            }
        };
        Ok(Self { chunk_ids, layers })
    }

    /// The same candidates on `device` (a no-op where they already are).
    pub fn to_device(self, device: &B::Device) -> Self {
        let layers = self
            .layers
            .into_iter()
            .map(|l| LayerKv {
                k: l.k.to_device(device),
                v: l.v.to_device(device),
            })
            .collect();
        Self {
            chunk_ids: self.chunk_ids,
            layers,
        }
    }

    /// The same candidates, sorted by chunk id.
    pub fn in_chunk_order(&self) -> Result<Self> {
        let mut order: Vec<usize> = (0..self.len()).collect();
        order.sort_by_key(|&p| self.chunk_ids[p]);
        self.select(&order)
    }
}
