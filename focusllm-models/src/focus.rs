//! The Llama decoder as FocusLLM's [`Model`], [`LocalDecoder`] (chunk pass) and [`MainDecoder`]
//! (main pass).

use burn::tensor::{Int, Tensor, TensorData, backend::Backend};
use focusllm_core::{
    CandidateSet, ChunkSequence, FocusError, LayerKv, LocalDecoder, MainDecoder, Model, ModelSpec,
    Result, check_vocab,
};

use crate::llama::{CacheBatch, Candidates, ForwardInput, KvBuffer, LlamaModel, NewKv, Past};

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

/// What the Llama chunk pass keeps for a batch of chunks: per layer, the raw cache of every chunk
/// (all positions but the candidate, keys rotated: a raw entry never changes position), in the
/// cache dtype, left-padded to one length.
#[derive(Debug, Clone)]
pub struct LlamaChunks<B: Backend> {
    chunk_ids: Vec<usize>,
    raw: Vec<KvBuffer<B>>,
    left_pad: Vec<usize>,
}

impl<B: Backend> LlamaChunks<B> {
    /// Which chunks of the plan the batch holds, in batch order.
    pub fn chunk_ids(&self) -> &[usize] {
        &self.chunk_ids
    }

    /// Positions held per chunk (padding included).
    pub fn len(&self) -> usize {
        self.raw.first().map_or(0, KvBuffer::len)
    }

    /// Whether the batch holds no position.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What the Llama main pass keeps: an ordinary KV cache (keys rotated), per layer
/// `[1, kv_heads, positions, head_dim]`; its first positions are the candidates, if any.
#[derive(Debug, Clone, Default)]
pub struct LlamaKvCache<B: Backend> {
    layers: Vec<KvBuffer<B>>,
    /// How many of the first positions are candidates.
    candidates: usize,
    /// The last fed position's attention share over the candidates (see [`MainDecoder::focus`]).
    focus: Option<Vec<f32>>,
}

impl<B: Backend> LlamaKvCache<B> {
    /// Number of cached positions.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, KvBuffer::len)
    }

    /// Whether nothing is cached yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the cache holds (keys and values in their stored dtype, spare capacity included).
    pub fn size_bytes(&self) -> usize {
        self.layers.iter().map(KvBuffer::size_bytes).sum()
    }
}

/// Per layer `[rows, kv_heads, steps, d]` keys (before RoPE) and values of the candidate positions
/// of `rows` chunk rows -> `[steps, kv_heads, chunks, d]`: per step, the candidates of `chunk_rows`
/// (indices into the rows) as the main decoder's past, chunk `j` at position `j`. The one place
/// that lays candidates out, for inference and training.
pub(crate) fn candidates_as_past<B: Backend>(
    kv: impl IntoIterator<Item = (Tensor<B, 4>, Tensor<B, 4>)>,
    chunk_rows: Option<&[usize]>,
) -> Vec<LayerKv<B>> {
    let mut index: Option<Tensor<B, 1, Int>> = None;
    kv.into_iter()
        .map(|(k, v)| {
            let (k, v) = match chunk_rows {
                Some(rows) => {
                    let index = index
                        .get_or_insert_with(|| {
                            Tensor::from_data(
                                TensorData::new(
                                    rows.iter().map(|&r| r as i64).collect(),
                                    [rows.len()],
                                ),
                                &k.device(),
                            )
                        })
                        .clone();
                    (k.select(0, index.clone()), v.select(0, index))
                }
                None => (k, v),
            };
            LayerKv {
                k: k.swap_dims(0, 2),
                v: v.swap_dims(0, 2),
            }
        })
        .collect()
}

/// `0..len` cut into blocks of `block` positions (0: one block); a last piece shorter than half
/// a block joins the block before it (a lone row or two would be multiplied as a decoding step
/// is). See [`LlamaModel::set_prefill_block`].
pub(crate) fn prefill_blocks(len: usize, block: usize) -> Vec<std::ops::Range<usize>> {
    if block == 0 || len <= block {
        return std::iter::once(0..len).collect();
    }
    let mut blocks: Vec<std::ops::Range<usize>> = (0..len)
        .step_by(block)
        .map(|start| start..(start + block).min(len))
        .collect();
    if blocks.last().is_some_and(|b| b.len() < block / 2) {
        let tail = blocks.pop().expect("more than one block");
        blocks.last_mut().expect("more than one block").end = tail.end;
    }
    blocks
}

/// Positions of `len` main-pass tokens after a past of `past` candidates: the candidates take
/// positions `0..past`, the tokens follow.
pub(crate) fn main_positions(past: usize, len: usize) -> Vec<usize> {
    (past..past + len).collect()
}

impl<B: Backend> Model for LlamaModel<B> {
    fn spec(&self) -> ModelSpec {
        let c = self.config();
        ModelSpec {
            vocab_size: c.vocab_size,
            bos_id: c.bos_token_id,
            eos_ids: c.eos_ids(),
            native_context: c.max_position_embeddings,
        }
    }
}

/// What [`LlamaModel::chunk_forward`] computed for a batch of chunk rows.
pub(crate) struct ChunkForward<B: Backend> {
    /// Per layer, the keys (rotated) and values of every position, padding included.
    pub caches: Vec<KvBuffer<B>>,
    /// Per layer, the new keys and values of the last block (the candidate's among them).
    pub last: Vec<NewKv<B>>,
    /// The last block's length.
    pub last_len: usize,
}

impl<B: Backend> LlamaModel<B> {
    /// The chunk pass over left-padded rows, shared by inference and training: blocks of
    /// [`LlamaModel::prefill_block`] positions, each over the caches the blocks before it filled,
    /// with `candidates` applying to the last block (no logits: the last layer computes only
    /// keys and values).
    pub(crate) fn chunk_forward(
        &self,
        padded: &PaddedRows,
        candidates: Candidates,
    ) -> ChunkForward<B> {
        let PaddedRows {
            rows,
            positions,
            left_pad,
            len,
        } = padded;
        let blocks = prefill_blocks(*len, self.prefill_block());
        let mut caches: Vec<KvBuffer<B>> = Vec::new();
        for (i, block) in blocks.iter().enumerate() {
            let last = i + 1 == blocks.len();
            let block_rows: Vec<Vec<u32>> =
                rows.iter().map(|r| r[block.clone()].to_vec()).collect();
            let block_positions: Vec<Vec<usize>> = positions
                .iter()
                .map(|p| p[block.clone()].to_vec())
                .collect();
            let out = self.forward(ForwardInput {
                ids: self.ids_tensor(&block_rows),
                positions: &block_positions,
                past: if i == 0 {
                    Past::None
                } else {
                    Past::Cache(&mut caches)
                },
                left_pad: Some(left_pad),
                candidates: if last { candidates } else { Candidates::None },
                logits_last: 0,
                focus_keys: 0,
            });
            if i == 0 {
                // The first block's keys and values become the caches (in place when they are all
                // there is), with room for the blocks after it.
                caches = out
                    .kv
                    .iter()
                    .map(|kv| {
                        let mut layer = KvBuffer::new(LayerKv {
                            k: kv.k_rotated.clone(),
                            v: kv.v.clone(),
                        });
                        if !last {
                            layer.reserve(len - block.end);
                        }
                        layer
                    })
                    .collect();
            }
            if last {
                return ChunkForward {
                    caches,
                    last: out.kv,
                    last_len: block.len(),
                };
            }
        }
        unreachable!("`prefill_blocks` gives at least one block")
    }
}

impl<B: Backend> LocalDecoder<B> for LlamaModel<B> {
    type ChunkState = LlamaChunks<B>;

    fn decode_chunks(
        &self,
        sequences: &[ChunkSequence],
    ) -> Result<(LlamaChunks<B>, CandidateSet<B>)> {
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
        let padded = left_padded(sequences.iter().map(|s| s.tokens.as_slice()));
        let len = padded.len;
        let ChunkForward {
            caches,
            last: last_kv,
            last_len: block_len,
        } = self.chunk_forward(&padded, Candidates::Last);
        let left_pad = padded.left_pad;
        let mut raw = Vec::with_capacity(last_kv.len());
        let mut candidates = Vec::with_capacity(last_kv.len());
        let last = Tensor::<B, 1, Int>::from_data(
            TensorData::new(vec![(block_len - 1) as i64], [1]),
            &self.device(),
        );
        for (mut layer, kv) in caches.into_iter().zip(last_kv) {
            // The candidate's row stays behind as spare capacity (an exact step writes two rows
            // there).
            layer.truncate(len - 1);
            if let Some(dtype) = self.cache_dtype().filter(|&d| d != layer.dtype()) {
                layer.convert(dtype, 2);
            }
            raw.push(layer);
            // `select` copies the candidate out: a `narrow` view would keep the unrotated keys of
            // every position alive for as long as the candidate lives (half again the cache size),
            // and the values of every position after frozen mode has dropped the raw cache.
            candidates.push((
                kv.k_unrotated.select(2, last.clone()),
                kv.v.select(2, last.clone()),
            ));
        }
        let chunk_ids: Vec<usize> = sequences.iter().map(|s| s.chunk_id).collect();
        let candidates =
            CandidateSet::new(chunk_ids.clone(), candidates_as_past(candidates, None))?;
        Ok((
            LlamaChunks {
                chunk_ids,
                raw,
                left_pad,
            },
            candidates,
        ))
    }

    fn extend_chunks(
        &self,
        batch: &mut LlamaChunks<B>,
        prev: u32,
        new: u32,
    ) -> Result<CandidateSet<B>> {
        let mut candidates = self.extend_batches(&mut [batch], prev, new)?;
        Ok(candidates.pop().expect("one batch in, one out"))
    }

    fn extend_batches(
        &self,
        batches: &mut [&mut LlamaChunks<B>],
        prev: u32,
        new: u32,
    ) -> Result<Vec<CandidateSet<B>>> {
        check_vocab(&[prev, new], self.config().vocab_size)?;
        // One forward for every batch: projections and MLP over all rows (one pass over the
        // weights instead of one per batch), attention batch by batch over its own caches. The
        // forward appends both positions to every raw cache; the candidate's is then dropped, as
        // the next step recomputes it.
        let rows: usize = batches.iter().map(|b| b.chunk_ids.len()).sum();
        let positions: Vec<Vec<usize>> = batches
            .iter()
            .flat_map(|batch| {
                let cached = batch.len();
                batch
                    .left_pad
                    .iter()
                    .map(move |&pad| vec![cached - pad, cached + 1 - pad])
            })
            .collect();
        let cached: Vec<usize> = batches.iter().map(|b| b.len()).collect();
        let chunk_ids: Vec<Vec<usize>> = batches.iter().map(|b| b.chunk_ids.clone()).collect();
        let past = batches
            .iter_mut()
            .map(|batch| {
                let LlamaChunks { raw, left_pad, .. } = &mut **batch;
                CacheBatch {
                    caches: raw,
                    left_pad,
                }
            })
            .collect();
        let out = self.forward(ForwardInput {
            ids: self.ids_tensor(&vec![vec![prev, new]; rows]),
            positions: &positions,
            past: Past::Batches(past),
            left_pad: None,
            candidates: Candidates::Last,
            logits_last: 0,
            focus_keys: 0,
        });
        for (batch, &len) in batches.iter_mut().zip(&cached) {
            for raw in &mut batch.raw {
                raw.truncate(len + 1);
            }
        }
        // Every row's candidate, then each batch's rows.
        let candidates: Vec<(Tensor<B, 4>, Tensor<B, 4>)> = out
            .kv
            .into_iter()
            .map(|kv| (kv.k_unrotated.narrow(2, 1, 1), kv.v.narrow(2, 1, 1)))
            .collect();
        let mut start = 0;
        chunk_ids
            .into_iter()
            .map(|ids| {
                let (first, n) = (start, ids.len());
                start += n;
                let layers = candidates
                    .iter()
                    .map(|(k, v)| (k.clone().narrow(0, first, n), v.clone().narrow(0, first, n)));
                CandidateSet::new(ids, candidates_as_past(layers, None))
            })
            .collect()
    }

    fn state_bytes(&self, batch: &LlamaChunks<B>) -> usize {
        batch.raw.iter().map(KvBuffer::size_bytes).sum()
    }
}

impl<B: Backend> LlamaModel<B> {
    /// Stores `cache` in the model's cache dtype (`set_cache_dtype`), with room for `additional`
    /// more tokens, where it is not so stored yet. A cache extended by a later feed (plain
    /// decoding's, frozen mode's) is kept between tokens: it is converted when first extended
    /// (or reserved), so that a cache read once and dropped (exact mode's main decoder) never is.
    fn store_kept(&self, cache: &mut LlamaKvCache<B>, additional: usize) {
        if let Some(dtype) = self.cache_dtype().filter(|_| !cache.is_empty()) {
            for layer in &mut cache.layers {
                if layer.dtype() != dtype {
                    layer.convert(dtype, additional);
                }
            }
        }
    }
}

impl<B: Backend> MainDecoder<B> for LlamaModel<B> {
    type MainState = LlamaKvCache<B>;

    fn start(&self, past: Option<&CandidateSet<B>>) -> Result<LlamaKvCache<B>> {
        // The candidates become the first entries of an ordinary KV cache, rotated once to their
        // positions 0..C; the tokens then extend it like plain decoding.
        let Some(past) = past.filter(|p| !p.is_empty()) else {
            return Ok(LlamaKvCache::default());
        };
        let layers = self.config().num_hidden_layers;
        if past.layers().len() != layers {
            return Err(FocusError::Decoder(format!(
                "{} candidate layers for a model of {layers}",
                past.layers().len()
            )));
        }
        let positions = vec![main_positions(0, past.len())];
        Ok(LlamaKvCache {
            candidates: past.len(),
            focus: None,
            layers: past
                .layers()
                .iter()
                .map(|kv| {
                    KvBuffer::new(LayerKv {
                        k: self.rotate_keys(kv.k.clone(), &positions),
                        v: kv.v.clone(),
                    })
                })
                .collect(),
        })
    }

    fn feed(&self, cache: &mut LlamaKvCache<B>, tokens: &[u32]) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(FocusError::EmptyInput);
        }
        check_vocab(tokens, self.config().vocab_size)?;
        self.store_kept(cache, tokens.len());
        let blocks = prefill_blocks(tokens.len(), self.prefill_block());
        let mut logits = None;
        for (i, block) in blocks.iter().enumerate() {
            let last = i + 1 == blocks.len();
            let positions = vec![main_positions(cache.len(), block.len())];
            let empty = cache.is_empty();
            if !empty && i == 0 && blocks.len() > 1 {
                for layer in &mut cache.layers {
                    layer.reserve(tokens.len());
                }
            }
            let out = self.forward(ForwardInput {
                ids: self.ids_tensor(&[tokens[block.clone()].to_vec()]),
                positions: &positions,
                past: if empty {
                    Past::None
                } else {
                    Past::Cache(&mut cache.layers)
                },
                left_pad: None,
                candidates: Candidates::None,
                logits_last: usize::from(last),
                focus_keys: if last { cache.candidates } else { 0 },
            });
            if empty {
                cache.layers = out
                    .kv
                    .into_iter()
                    .map(|kv| {
                        let mut layer = KvBuffer::new(LayerKv {
                            k: kv.k_rotated,
                            v: kv.v,
                        });
                        if !last {
                            layer.reserve(tokens.len() - block.end);
                        }
                        layer
                    })
                    .collect();
            }
            if last {
                cache.focus =
                    match out.focus {
                        Some(f) => Some(f.into_data().convert::<f32>().to_vec::<f32>().map_err(
                            |e| FocusError::Decoder(format!("reading the focus: {e:?}")),
                        )?),
                        None => None,
                    };
                logits = out.logits;
            }
        }
        logits_to_vec(logits)
    }

    fn reserve(&self, cache: &mut LlamaKvCache<B>, additional: usize) {
        if additional == 0 {
            // Nothing more to feed (`generate` with one token): no conversion either.
            return;
        }
        // A cache still to be stored in the cache dtype is converted now, with the room (the
        // next `feed` then leaves it as it is); else the room is made as it is stored.
        self.store_kept(cache, additional);
        for layer in &mut cache.layers {
            layer.reserve(additional);
        }
    }

    fn focus(&self, cache: &LlamaKvCache<B>) -> Option<Vec<f32>> {
        cache.focus.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::prefill_blocks;

    #[test]
    fn prefill_blocks_cover_the_input_once_and_never_end_on_a_short_piece() {
        assert_eq!(prefill_blocks(10, 0), vec![0..10]);
        assert_eq!(prefill_blocks(512, 512), vec![0..512]);
        assert_eq!(prefill_blocks(1024, 512), vec![0..512, 512..1024]);
        // 1 and 255 left over join the block before; 256 stand alone.
        assert_eq!(prefill_blocks(1025, 512), vec![0..512, 512..1025]);
        assert_eq!(prefill_blocks(1279, 512), vec![0..512, 512..1279]);
        assert_eq!(
            prefill_blocks(1280, 512),
            vec![0..512, 512..1024, 1024..1280]
        );
        for len in 1..300 {
            for block in [0, 1, 2, 3, 7, 64] {
                let blocks = prefill_blocks(len, block);
                assert_eq!(blocks.first().map(|b| b.start), Some(0));
                assert_eq!(blocks.last().map(|b| b.end), Some(len));
                assert!(blocks.windows(2).all(|w| w[0].end == w[1].start));
                assert!(blocks.iter().all(|b| !b.is_empty()));
                if blocks.len() > 1 {
                    assert!(blocks.iter().all(|b| b.len() >= block / 2));
                }
            }
        }
    }
}
