//! The Llama decoder as FocusLLM's [`LocalDecoder`] (chunk pass) and [`MainDecoder`] (main pass).

use burn::tensor::{Tensor, backend::Backend};
use focusllm_core::{
    CandidateCache, ChunkBatchCache, ChunkSequence, FocusError, LayerKv, LocalDecoder, MainDecoder,
    ModelSpec, PlainCache, Result, check_vocab,
};

use crate::llama::{Candidates, ForwardInput, LlamaModel, PastKeys};

/// Token used to fill left padding (any valid id: padded positions are masked).
const PAD_ID: u32 = 0;

/// Token rows left-padded to one length, as a chunk batch is run.
pub(crate) struct PaddedRows {
    /// The rows, `PAD_ID` first.
    pub rows: Vec<Vec<u32>>,
    /// Per row, positions counted from its first real token (pads share position 0).
    pub positions: Vec<Vec<usize>>,
    /// Per row, how many leading positions are padding.
    pub left_pad: Vec<usize>,
    /// The common length.
    pub len: usize,
}

/// Left-pads `sequences` to the longest one's length.
pub(crate) fn left_padded<'a>(sequences: impl IntoIterator<Item = &'a [u32]>) -> PaddedRows {
    let sequences: Vec<&[u32]> = sequences.into_iter().collect();
    let len = sequences.iter().map(|s| s.len()).max().unwrap_or(0);
    let left_pad: Vec<usize> = sequences.iter().map(|s| len - s.len()).collect();
    let rows = sequences
        .iter()
        .zip(&left_pad)
        .map(|(s, &pad)| {
            std::iter::repeat_n(PAD_ID, pad)
                .chain(s.iter().copied())
                .collect()
        })
        .collect();
    let positions = left_pad
        .iter()
        .map(|&pad| (0..len).map(|j| j.saturating_sub(pad)).collect())
        .collect();
    PaddedRows {
        rows,
        positions,
        left_pad,
        len,
    }
}

fn logits_to_vec<B: Backend>(logits: Option<Tensor<B, 3>>) -> Result<Vec<f32>> {
    let logits = logits.ok_or_else(|| FocusError::Decoder("forward returned no logits".into()))?;
    logits
        .into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| FocusError::Decoder(format!("reading logits: {e:?}")))
}

impl<B: Backend> LlamaModel<B> {
    /// A raw-cache tensor in the cache dtype (see [`LlamaModel::set_cache_dtype`]).
    fn compact(&self, t: Tensor<B, 4>) -> Tensor<B, 4> {
        match self.cache_dtype() {
            Some(dtype) => t.cast(dtype),
            None => t,
        }
    }
}

impl<B: Backend> LocalDecoder<B> for LlamaModel<B> {
    fn decode_chunks(&self, sequences: &[ChunkSequence]) -> Result<ChunkBatchCache<B>> {
        let vocab = self.config().vocab_size;
        for s in sequences {
            if s.tokens.len() < 2 {
                return Err(FocusError::Decoder(format!(
                    "chunk {} has {} tokens; a chunk sequence needs context and a candidate",
                    s.chunk_id,
                    s.tokens.len()
                )));
            }
            check_vocab(&s.tokens, vocab)?;
        }
        let PaddedRows {
            rows,
            positions,
            left_pad,
            len,
        } = left_padded(sequences.iter().map(|s| s.tokens.as_slice()));
        let out = self.forward(ForwardInput {
            ids: self.ids_tensor(&rows),
            positions: &positions,
            past: None,
            left_pad: Some(&left_pad),
            candidates: Candidates::Last,
            logits_last: 0,
        });
        let mut raw = Vec::with_capacity(out.kv.len());
        let mut candidates = Vec::with_capacity(out.kv.len());
        let last = Tensor::<B, 1, burn::tensor::Int>::from_data(
            burn::tensor::TensorData::new(vec![(len - 1) as i64], [1]),
            &self.device(),
        );
        for kv in out.kv {
            raw.push(LayerKv {
                k: self.compact(kv.k_rotated.narrow(2, 0, len - 1)),
                v: self.compact(kv.v.clone().narrow(2, 0, len - 1)),
            });
            // `select` copies the candidate out: a `narrow` view would keep the unrotated keys of
            // every position alive for as long as the candidate lives (half again the cache size).
            candidates.push(LayerKv {
                k: kv.k_unrotated.select(2, last.clone()),
                v: kv.v.narrow(2, len - 1, 1),
            });
        }
        Ok(ChunkBatchCache {
            chunk_ids: sequences.iter().map(|s| s.chunk_id).collect(),
            raw,
            candidates,
            left_pad,
        })
    }

    fn extend_chunks(&self, batch: &mut ChunkBatchCache<B>, prev: u32, new: u32) -> Result<()> {
        check_vocab(&[prev, new], self.config().vocab_size)?;
        let b = batch.batch_size();
        let cached = batch.raw.first().map_or(0, LayerKv::len);
        let rows = vec![vec![prev, new]; b];
        let positions: Vec<Vec<usize>> = batch
            .left_pad
            .iter()
            .map(|&pad| vec![cached - pad, cached + 1 - pad])
            .collect();
        // Compact caches are widened for the forward only.
        let widened: Option<Vec<LayerKv<B>>> = self.cache_dtype().map(|_| {
            let dtype = self.compute_dtype();
            batch
                .raw
                .iter()
                .map(|kv| LayerKv {
                    k: kv.k.clone().cast(dtype),
                    v: kv.v.clone().cast(dtype),
                })
                .collect()
        });
        let out = self.forward(ForwardInput {
            ids: self.ids_tensor(&rows),
            positions: &positions,
            past: Some((widened.as_deref().unwrap_or(&batch.raw), PastKeys::Rotated)),
            left_pad: Some(&batch.left_pad),
            candidates: Candidates::Last,
            logits_last: 0,
        });
        for (layer, kv) in out.kv.into_iter().enumerate() {
            let raw = &mut batch.raw[layer];
            raw.k = Tensor::cat(
                vec![raw.k.clone(), self.compact(kv.k_rotated.narrow(2, 0, 1))],
                2,
            );
            raw.v = Tensor::cat(
                vec![raw.v.clone(), self.compact(kv.v.clone().narrow(2, 0, 1))],
                2,
            );
            batch.candidates[layer] = LayerKv {
                k: kv.k_unrotated.narrow(2, 1, 1),
                v: kv.v.narrow(2, 1, 1),
            };
        }
        Ok(())
    }
}

impl<B: Backend> MainDecoder<B> for LlamaModel<B> {
    fn spec(&self) -> ModelSpec {
        let c = self.config();
        ModelSpec {
            vocab_size: c.vocab_size,
            bos_id: c.bos_token_id,
            eos_ids: c.eos_ids(),
            native_context: c.max_position_embeddings,
        }
    }

    fn decode_main(&self, tokens: &[u32], past: &CandidateCache<B>) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(FocusError::EmptyInput);
        }
        check_vocab(tokens, self.config().vocab_size)?;
        let c = past.len();
        let past_positions = vec![(0..c).collect::<Vec<_>>()];
        let positions = vec![(c..c + tokens.len()).collect::<Vec<_>>()];
        let out = self.forward(ForwardInput {
            ids: self.ids_tensor(&[tokens.to_vec()]),
            positions: &positions,
            past: (c > 0).then_some((past.layers.as_slice(), PastKeys::Unrotated(&past_positions))),
            left_pad: None,
            candidates: Candidates::None,
            logits_last: 1,
        });
        logits_to_vec(out.logits)
    }

    fn decode_main_cached(
        &self,
        tokens: &[u32],
        past: &CandidateCache<B>,
        cache: &mut PlainCache<B>,
    ) -> Result<Vec<f32>> {
        // The candidates become the first entries of an ordinary KV cache, rotated once to their
        // positions 0..C; the local tokens then extend it like plain decoding.
        // An empty past leaves an empty cache (plain decoding from position 0).
        cache.layers.clear();
        if !past.is_empty() {
            let positions = vec![(0..past.len()).collect::<Vec<_>>()];
            cache.layers = past
                .layers
                .iter()
                .map(|kv| LayerKv {
                    k: self.rotate_keys(kv.k.clone(), &positions),
                    v: kv.v.clone(),
                })
                .collect();
        }
        self.decode_plain(tokens, cache)
    }

    fn decode_plain(&self, tokens: &[u32], cache: &mut PlainCache<B>) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(FocusError::EmptyInput);
        }
        check_vocab(tokens, self.config().vocab_size)?;
        let start = cache.len();
        let positions = vec![(start..start + tokens.len()).collect::<Vec<_>>()];
        let out = self.forward(ForwardInput {
            ids: self.ids_tensor(&[tokens.to_vec()]),
            positions: &positions,
            past: (!cache.is_empty()).then_some((cache.layers.as_slice(), PastKeys::Rotated)),
            left_pad: None,
            candidates: Candidates::None,
            logits_last: 1,
        });
        let new_layers = out.kv.into_iter().map(|kv| LayerKv {
            k: kv.k_rotated,
            v: kv.v,
        });
        cache.layers = if cache.is_empty() {
            new_layers.collect()
        } else {
            cache
                .layers
                .iter()
                .zip(new_layers)
                .map(|(old, new)| LayerKv {
                    k: Tensor::cat(vec![old.k.clone(), new.k], 2),
                    v: Tensor::cat(vec![old.v.clone(), new.v], 2),
                })
                .collect()
        };
        logits_to_vec(out.logits)
    }
}
