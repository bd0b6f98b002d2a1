//! Training the candidate parameters of a Llama-architecture model (feature `train`).
//!
//! A chunk's raw cache depends on the frozen base alone: nothing before the candidate (the last
//! position) attends to it. So each example runs
//! 1. the chunk passes without autodiff, on the inner backend: each distinct chunk once (haystacks
//!    repeat chunks), its cache taken from the pool of recent chunks when it is there;
//! 2. the tail of every distinct chunk (`prompt ++ generated`, and in exact mode the targets but the
//!    last, minus the last candidate) over that cache, still without autodiff;
//! 3. the candidate positions of every distinct chunk with the trainable projections (one per
//!    exact-mode step, each attending to the ordinary tokens before it), then copied to every chunk
//!    that holds the same tokens;
//! 4. the main pass over the local context, the generated tokens and the targets, with the
//!    candidates as its past (once per step in exact mode);
//!
//! and back-propagates through 3 and 4 only. The numbers are those of the inference passes
//! (`decode_chunks`, exact-mode steps and `decode_main`), which the tests check.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use burn::module::{AutodiffModule, Module};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use focusllm_core::train::{CandidateTrainer, ExampleLoss, TextEncoder, TrainExample};
use focusllm_core::{FocusError, LayerKv, Model, ModelSpec, Result, check_vocab};

use crate::adapter::CandidateAdapter;
use crate::focus::{PaddedRows, candidates_as_past, left_padded, main_positions};
use crate::llama::{Candidates, ForwardInput, KvBuffer, LlamaModel, Past};
use crate::tokenizer::Tokenizer;

/// One chunk's raw cache (rotated keys and values per layer, `[1, kv_heads, len, d]`).
type ChunkKv<B> = Arc<Vec<LayerKv<B>>>;

/// Tokens that index the pool's entries by their beginning (to find a pooled chunk that shares a
/// prefix with a new one).
const HEAD: usize = 8;

/// What the pool holds for a chunk.
enum Pooled<B: Backend> {
    /// Its whole cache (the chunk itself, or a longer chunk it is a prefix of).
    Whole(ChunkKv<B>),
    /// The cache of its first `len` tokens (a pooled chunk shares them); the rest is to compute.
    Prefix(ChunkKv<B>, usize),
}

/// Raw caches of recently used chunks, keyed by their tokens, within a byte budget (least recently
/// used out first). Haystacks built from recurring chunks then cost one chunk pass per new chunk, and a
/// chunk that begins like a pooled one (a block with a fact spliced in, or cut short by the local
/// window) reuses the shared prefix: a causal cache of a prefix is the prefix of the cache.
#[derive(Debug)]
struct ChunkPool<B: Backend> {
    budget: usize,
    bytes: usize,
    /// Cache and its size in bytes.
    entries: HashMap<Vec<u32>, (ChunkKv<B>, usize)>,
    /// Keys by their first `HEAD` tokens.
    by_head: HashMap<Vec<u32>, Vec<Vec<u32>>>,
    order: VecDeque<Vec<u32>>,
    hits: u64,
    misses: u64,
}

impl<B: Backend> ChunkPool<B> {
    fn new(budget: usize) -> Self {
        Self {
            budget,
            bytes: 0,
            entries: HashMap::new(),
            by_head: HashMap::new(),
            order: VecDeque::new(),
            hits: 0,
            misses: 0,
        }
    }

    /// The pooled cache of `tokens`, or of its longest pooled prefix (at least `HEAD` tokens).
    fn get(&mut self, tokens: &[u32]) -> Option<Pooled<B>> {
        if let Some((kv, _)) = self.entries.get(tokens) {
            self.hits += 1;
            let kv = kv.clone();
            // Least recently used out first: a recurring chunk moves to the back.
            if let Some(at) = self.order.iter().position(|k| k.as_slice() == tokens) {
                let key = self.order.remove(at).expect("found above");
                self.order.push_back(key);
            }
            return Some(Pooled::Whole(kv));
        }
        let best = (tokens.len() >= HEAD)
            .then(|| self.by_head.get(&tokens[..HEAD]))
            .flatten()
            .and_then(|keys| {
                keys.iter()
                    .map(|k| {
                        let common = k.iter().zip(tokens).take_while(|(a, b)| a == b).count();
                        (common, k)
                    })
                    .max_by_key(|(common, _)| *common)
            })
            .map(|(common, k)| (common, self.entries[k].0.clone()));
        match best {
            Some((common, kv)) if common == tokens.len() => {
                self.hits += 1;
                Some(Pooled::Whole(Arc::new(
                    kv.iter()
                        .map(|l| LayerKv {
                            k: l.k.clone().narrow(2, 0, common),
                            v: l.v.clone().narrow(2, 0, common),
                        })
                        .collect(),
                )))
            }
            Some((common, kv)) => {
                self.misses += 1;
                Some(Pooled::Prefix(kv, common))
            }
            None => {
                self.misses += 1;
                None
            }
        }
    }

    fn insert(&mut self, tokens: Vec<u32>, kv: ChunkKv<B>, bytes: usize) {
        if bytes > self.budget || self.entries.contains_key(&tokens) {
            return;
        }
        while self.bytes + bytes > self.budget {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some((_, size)) = self.entries.remove(&old) {
                self.bytes -= size;
            }
            if old.len() >= HEAD
                && let Some(keys) = self.by_head.get_mut(&old[..HEAD])
            {
                keys.retain(|k| *k != old);
                if keys.is_empty() {
                    self.by_head.remove(&old[..HEAD]);
                }
            }
        }
        self.bytes += bytes;
        if tokens.len() >= HEAD {
            self.by_head
                .entry(tokens[..HEAD].to_vec())
                .or_default()
                .push(tokens.clone());
        }
        self.order.push_back(tokens.clone());
        self.entries.insert(tokens, (kv, bytes));
    }
}

/// A frozen Llama model whose candidate parameters a [`focusllm_core::train::Trainer`] trains
/// (as a [`CandidateAdapter`]).
#[derive(Debug)]
pub struct LlamaTrainer<B: AutodiffBackend> {
    model: LlamaModel<B>,
    inner: LlamaModel<B::InnerBackend>,
    pool: Mutex<ChunkPool<B::InnerBackend>>,
}

impl<B: AutodiffBackend> LlamaTrainer<B> {
    /// Freezes `model` (no parameter of it requires gradients). No chunk cache is kept between
    /// examples (see [`LlamaTrainer::with_chunk_pool`]).
    pub fn new(model: LlamaModel<B>) -> Self {
        let model = model.no_grad();
        let inner = model.valid();
        Self {
            model,
            inner,
            pool: Mutex::new(ChunkPool::new(0)),
        }
    }

    /// Keeps the raw caches of recently seen chunks, up to `bytes` (f32), and reuses them when a
    /// chunk with the same tokens comes back (haystacks made of recurring blocks). The loss is the
    /// same as without the pool.
    pub fn with_chunk_pool(self, bytes: usize) -> Self {
        Self {
            pool: Mutex::new(ChunkPool::new(bytes)),
            ..self
        }
    }

    /// Chunk-cache lookups so far that found the chunk in the pool, and those that did not.
    pub fn pool_hits(&self) -> (u64, u64) {
        let pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        (pool.hits, pool.misses)
    }

    /// The frozen base model.
    pub fn model(&self) -> &LlamaModel<B> {
        &self.model
    }

    /// Raw caches of `chunks` (distinct token rows): from the pool, extended from a pooled
    /// prefix, or computed (those without any pooled prefix in one batch).
    fn chunk_caches(&self, chunks: &[&[u32]]) -> Vec<ChunkKv<B::InnerBackend>> {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let mut out: Vec<Option<ChunkKv<B::InnerBackend>>> = vec![None; chunks.len()];
        let mut missing = Vec::new();
        for (i, tokens) in chunks.iter().enumerate() {
            match pool.get(tokens) {
                Some(Pooled::Whole(kv)) => out[i] = Some(kv),
                Some(Pooled::Prefix(kv, common)) => {
                    let kv = self.extend_cache(&kv, common, &tokens[common..]);
                    pool.insert(tokens.to_vec(), kv.clone(), cache_bytes(&kv));
                    out[i] = Some(kv);
                }
                None => missing.push(i),
            }
        }
        if !missing.is_empty() {
            let padded = left_padded(missing.iter().map(|&i| chunks[i]));
            // The chunk pass of inference (in prefill blocks), without candidates.
            let raw: Vec<LayerKv<B::InnerBackend>> = self
                .inner
                .chunk_forward(&padded, Candidates::None)
                .caches
                .iter()
                .map(KvBuffer::view)
                .collect();
            let PaddedRows { left_pad, len, .. } = padded;
            let device = self.inner.device();
            for (row, &i) in missing.iter().enumerate() {
                let (pad, n) = (left_pad[row], len - left_pad[row]);
                // `select` copies the row out: a `narrow` view would keep the whole batch alive for
                // as long as the pool holds any of its rows.
                let index = Tensor::<B::InnerBackend, 1, Int>::from_data(
                    TensorData::new(vec![row as i64], [1]),
                    &device,
                );
                // The padding is cut off with a `select` too (a copy): a view would keep it alive
                // while the pool counts only the real positions.
                let keep = Tensor::<B::InnerBackend, 1, Int>::from_data(
                    TensorData::new((pad as i64..len as i64).collect::<Vec<_>>(), [n]),
                    &device,
                );
                let copy = |t: &Tensor<B::InnerBackend, 4>| {
                    let row = t.clone().select(0, index.clone());
                    if pad == 0 {
                        row
                    } else {
                        row.select(2, keep.clone())
                    }
                };
                let kv: Vec<LayerKv<B::InnerBackend>> = raw
                    .iter()
                    .map(|kv| LayerKv {
                        k: copy(&kv.k),
                        v: copy(&kv.v),
                    })
                    .collect();
                let kv = Arc::new(kv);
                pool.insert(chunks[i].to_vec(), kv.clone(), cache_bytes(&kv));
                out[i] = Some(kv);
            }
        }
        out.into_iter()
            .map(|kv| kv.expect("filled above"))
            .collect()
    }

    /// Runs `rows` (ordinary positions, no candidate) over the rotated `past` and returns the past
    /// with their keys and values appended: one way for a chunk's rest and for the tails.
    fn extend(
        &self,
        past: Vec<LayerKv<B::InnerBackend>>,
        rows: &[Vec<u32>],
        positions: &[Vec<usize>],
        left_pad: Option<&[usize]>,
    ) -> Vec<LayerKv<B::InnerBackend>> {
        let out = self.inner.forward(ForwardInput {
            ids: self.inner.ids_tensor(rows),
            positions,
            past: Past::Rotated(&past),
            left_pad,
            candidates: Candidates::None,
            logits_last: 0,
            focus_keys: 0,
        });
        past.into_iter()
            .zip(out.kv)
            .map(|(p, new)| LayerKv {
                k: Tensor::cat(vec![p.k, new.k_rotated], 2),
                v: Tensor::cat(vec![p.v, new.v], 2),
            })
            .collect()
    }

    /// The cache of `prefix`'s first `len` tokens followed by `rest`.
    fn extend_cache(
        &self,
        prefix: &[LayerKv<B::InnerBackend>],
        len: usize,
        rest: &[u32],
    ) -> ChunkKv<B::InnerBackend> {
        let past: Vec<LayerKv<B::InnerBackend>> = prefix
            .iter()
            .map(|l| LayerKv {
                k: l.k.clone().narrow(2, 0, len),
                v: l.v.clone().narrow(2, 0, len),
            })
            .collect();
        Arc::new(self.extend(
            past,
            &[rest.to_vec()],
            &[(len..len + rest.len()).collect()],
            None,
        ))
    }
}

/// Bytes of a one-row cache (f32).
fn cache_bytes<B: Backend>(kv: &[LayerKv<B>]) -> usize {
    kv.iter()
        .map(|l| 2 * l.k.dims().iter().product::<usize>() * 4)
        .sum()
}

/// Wall time of the passes of one example, logged at debug level (target `focusllm_models::train`)
/// when a `tracing` subscriber wants it: how the time of a training step splits (the backward pass
/// is timed by the trainer's step).
struct PhaseTimer {
    enabled: bool,
    last: std::time::Instant,
    laps: Vec<(&'static str, f64)>,
}

impl PhaseTimer {
    fn new() -> Self {
        Self {
            enabled: tracing::enabled!(tracing::Level::DEBUG),
            last: std::time::Instant::now(),
            laps: Vec::new(),
        }
    }

    fn lap(&mut self, name: &'static str) {
        if self.enabled {
            let now = std::time::Instant::now();
            self.laps.push((name, (now - self.last).as_secs_f64()));
            self.last = now;
        }
    }

    fn report(&self, chunks: usize, distinct: usize) {
        if self.enabled {
            let laps: Vec<String> = self
                .laps
                .iter()
                .map(|(n, s)| format!("{n} {s:.2}s"))
                .collect();
            tracing::debug!(chunks, distinct, "example: {}", laps.join(", "));
        }
    }
}

/// Stacks one-row caches of different lengths into one left-padded batch (zeros in front).
fn stack_left_padded<B: Backend>(caches: &[ChunkKv<B>]) -> (Vec<LayerKv<B>>, Vec<usize>) {
    let lens: Vec<usize> = caches.iter().map(|c| c[0].len()).collect();
    let len = lens.iter().copied().max().unwrap_or(0);
    let pads: Vec<usize> = lens.iter().map(|&l| len - l).collect();
    let layers = caches[0].len();
    let pad = |t: &Tensor<B, 4>, p: usize| {
        if p == 0 {
            return t.clone();
        }
        let [_, h, _, d] = t.dims();
        Tensor::cat(vec![Tensor::zeros([1, h, p, d], &t.device()), t.clone()], 2)
    };
    let stacked = (0..layers)
        .map(|l| LayerKv {
            k: Tensor::cat(
                caches
                    .iter()
                    .zip(&pads)
                    .map(|(c, &p)| pad(&c[l].k, p))
                    .collect(),
                0,
            ),
            v: Tensor::cat(
                caches
                    .iter()
                    .zip(&pads)
                    .map(|(c, &p)| pad(&c[l].v, p))
                    .collect(),
                0,
            ),
        })
        .collect();
    (stacked, pads)
}

impl<B: AutodiffBackend> CandidateTrainer<B> for LlamaTrainer<B> {
    type Params = CandidateAdapter<B>;

    fn spec(&self) -> ModelSpec {
        self.model.spec()
    }

    fn example_loss(
        &self,
        params: &CandidateAdapter<B>,
        ex: &TrainExample,
    ) -> Result<ExampleLoss<B>> {
        let vocab = self.model.config().vocab_size;
        check_vocab(&ex.ids, vocab)?;
        check_vocab(&ex.generated, vocab)?;
        check_vocab(&ex.targets, vocab)?;
        let plan = &ex.plan;
        if plan.chunks.is_empty() || ex.targets.is_empty() || plan.prompt.is_empty() {
            return Err(FocusError::Decoder(
                "a training example needs memory chunks, a prompt and targets".into(),
            ));
        }
        if let Some((j, r)) = plan
            .chunks
            .iter()
            .enumerate()
            .find(|(_, r)| r.is_empty() || r.end > ex.ids.len())
        {
            return Err(FocusError::Decoder(format!(
                "chunk {j} ({r:?}) is empty or outside the example's {} ids",
                ex.ids.len()
            )));
        }
        let chunks = plan.chunks.len();
        let mut timer = PhaseTimer::new();

        // 1. Each distinct chunk once, from the pool or computed.
        let mut distinct: Vec<&[u32]> = Vec::new();
        let mut row_of: HashMap<&[u32], usize> = HashMap::new();
        let chunk_rows: Vec<usize> = plan
            .chunks
            .iter()
            .map(|r| {
                let tokens = &ex.ids[r.clone()];
                *row_of.entry(tokens).or_insert_with(|| {
                    distinct.push(tokens);
                    distinct.len() - 1
                })
            })
            .collect();
        let caches = self.chunk_caches(&distinct);
        let (chunk_part, pads) = stack_left_padded(&caches);
        let lens: Vec<usize> = caches.iter().map(|c| c[0].len()).collect();
        timer.lap("chunks");

        // 2. The tail (`prompt ++ generated`, and in exact mode the targets but the last) over
        //    every distinct chunk, its last token left to the candidate pass.
        let tail = ex.chunk_tail();
        let steps = ex.candidate_steps();
        let context = &tail[..tail.len() - 1];
        let raw: Vec<LayerKv<B::InnerBackend>> = if context.is_empty() {
            chunk_part
        } else {
            let positions: Vec<Vec<usize>> = lens
                .iter()
                .map(|&l| (l..l + context.len()).collect())
                .collect();
            self.extend(
                chunk_part,
                &vec![context.to_vec(); distinct.len()],
                &positions,
                Some(&pads),
            )
        };
        timer.lap("tails");
        let raw: Vec<LayerKv<B>> = raw
            .into_iter()
            .map(|kv| LayerKv {
                k: Tensor::from_inner(kv.k),
                v: Tensor::from_inner(kv.v),
            })
            .collect();

        // 3. The candidates of every distinct chunk, through the trainable projections: the last
        //    `steps` tail tokens, each after the ordinary tokens before it (one pass for all steps).
        let candidate_model = params
            .apply(self.model.clone())
            .map_err(|e| FocusError::Decoder(e.to_string()))?;
        let first = tail.len() - steps;
        let cand_positions: Vec<Vec<usize>> = lens
            .iter()
            .map(|&l| (l + first..l + tail.len()).collect())
            .collect();
        let cand_out = candidate_model.forward(ForwardInput {
            ids: self
                .model
                .ids_tensor(&vec![tail[first..].to_vec(); distinct.len()]),
            positions: &cand_positions,
            past: Past::Rotated(&raw),
            left_pad: Some(&pads),
            candidates: if steps == 1 {
                Candidates::Last
            } else {
                Candidates::Each
            },
            logits_last: 0,
            focus_keys: 0,
        });
        // Per step, every chunk's candidate (from its distinct row) as the main decoder's past.
        let device = self.model.device();
        let past = candidates_as_past(
            cand_out.kv.into_iter().map(|kv| (kv.k_unrotated, kv.v)),
            Some(&chunk_rows),
        );

        timer.lap("candidates");

        // 4. The main pass, once per step over that step's candidates; the last `targets` logits
        //    of row `i` follow `generated ++ targets[..i]`, and exact mode keeps target `i` of row `i`.
        let main = ex.main_input();
        let t = ex.targets.len();
        let past_positions = vec![(0..chunks).collect::<Vec<_>>(); steps];
        let main_positions = vec![main_positions(chunks, main.len()); steps];
        let out = self.model.forward(ForwardInput {
            ids: self.model.ids_tensor(&vec![main; steps]),
            positions: &main_positions,
            past: Past::Unrotated(&past, &past_positions),
            left_pad: None,
            candidates: Candidates::None,
            logits_last: t,
            focus_keys: 0,
        });
        let logits = out
            .logits
            .ok_or_else(|| FocusError::Decoder("the main pass returned no logits".into()))?;
        let logits = if steps == 1 {
            logits
        } else {
            let vocab = logits.dims()[2];
            let diagonal = Tensor::<B, 1, Int>::from_data(
                TensorData::new((0..t).map(|i| (i * t + i) as i64).collect(), [t]),
                &device,
            );
            logits
                .reshape([steps * t, vocab])
                .select(0, diagonal)
                .reshape([1, t, vocab])
        };
        let targets: Vec<i64> = ex.targets.iter().map(|&x| x as i64).collect();
        let target_ids =
            Tensor::<B, 3, Int>::from_data(TensorData::new(targets.clone(), [1, t, 1]), &device);
        let predicted = logits
            .clone()
            .argmax(2)
            .into_data()
            .convert::<i64>()
            .to_vec::<i64>()
            .map_err(|e| FocusError::Decoder(format!("reading predictions: {e:?}")))?;
        let correct = predicted
            .iter()
            .zip(&targets)
            .filter(|(p, t)| p == t)
            .count();
        let nll = log_softmax(logits, 2).gather(2, target_ids).neg();
        timer.lap("main");
        timer.report(chunks, distinct.len());
        Ok(ExampleLoss {
            loss: nll.mean().reshape([1]),
            correct,
            targets: t,
        })
    }
}

impl TextEncoder for Tokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Tokenizer::encode(self, text).map_err(|e| FocusError::Data(e.to_string()))
    }
}
