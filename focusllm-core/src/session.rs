//! One prompt being read and continued: the decoding strategies (plain, exact FocusLLM steps,
//! frozen candidates) and the prefill that chooses between them.

use burn::tensor::backend::Backend;

use crate::aggregator::CandidateAggregator;
use crate::candidates::CandidateSet;
use crate::chunker::{ChunkPlan, Chunker, with_bos};
use crate::config::StepMode;
use crate::control::{CancelToken, Progress, Stage};
use crate::engine::FocusEngine;
use crate::error::{FocusError, Result, check_vocab};
use crate::local::{ChunkSequence, LocalDecoder};
use crate::main_decoder::MainDecoder;
use crate::resume::{PrefillCheckpoint, Resumed};

/// How the session is reading its prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Nothing prefilled yet.
    Empty,
    /// Plain causal decoding (input below the threshold).
    Plain,
    /// FocusLLM with this many memory chunks.
    Focus {
        /// Number of chunks.
        chunks: usize,
    },
}

impl Mode {
    /// Memory chunks read (0 unless [`Mode::Focus`]).
    pub fn chunks(self) -> usize {
        match self {
            Mode::Focus { chunks } => chunks,
            Mode::Empty | Mode::Plain => 0,
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mode::Empty => f.write_str("nothing prefilled"),
            Mode::Plain => f.write_str("plain decoding"),
            Mode::Focus { chunks } => write!(f, "FocusLLM with {chunks} chunks"),
        }
    }
}

/// One batch of chunks: the local decoder's state and its current candidates.
pub(crate) struct ChunkBatch<B: Backend, L: LocalDecoder<B>> {
    state: L::ChunkState,
    candidates: CandidateSet<B>,
}

/// What decoding the chunks gives: every batch's candidates, and the batches' states if kept.
type DecodedChunks<B, S> = (Vec<CandidateSet<B>>, Vec<S>);

/// The main decoder's past: the aggregation of every batch's current candidates.
fn aggregate<B: Backend, L: LocalDecoder<B>>(
    aggregator: &impl CandidateAggregator<B>,
    batches: &[ChunkBatch<B, L>],
) -> Result<CandidateSet<B>> {
    let candidates: Vec<CandidateSet<B>> = batches.iter().map(|b| b.candidates.clone()).collect();
    aggregator.aggregate(&candidates)
}

/// The decoding strategy of the current prompt, chosen by the prefill.
pub(crate) enum State<B: Backend, L: LocalDecoder<B>, M: MainDecoder<B>> {
    Empty,
    /// One running main state, fed a token per step: plain decoding (`chunks == 0`) or FocusLLM
    /// with the prefill's candidates held fixed (`past`: the chunk of each candidate).
    Running {
        main: M::MainState,
        chunks: usize,
        past: Vec<usize>,
        /// Tokens the main state has read (counted in plain decoding, for the native-context
        /// warning; 0 otherwise).
        read: usize,
    },
    /// Exact FocusLLM: every chunk is extended by `[prev, new]` at each token and the main pass
    /// runs afresh over the refreshed candidates.
    Exact {
        batches: Vec<ChunkBatch<B, L>>,
        /// Local context (BOS rule applied) followed by every token generated so far.
        main_input: Vec<u32>,
        /// The current candidate token of every chunk.
        prev: u32,
        chunks: usize,
        /// The chunk of each candidate of the last main pass, and that pass's focus.
        past: Vec<usize>,
        focus: Option<Vec<f32>>,
    },
}

/// Where a prediction drew on the memory: the share of the main decoder's attention (from the
/// position that predicts the next token, averaged over heads and layers) that went to each
/// chunk's candidate. The rest went to the local context and the generated tokens.
///
/// ```
/// use focusllm_core::FocusMap;
///
/// // As `Session::focus` or `GeneratedToken::focus` report it, for a plan of four chunks.
/// let map = FocusMap { chunks: vec![0.05, 0.4, 0.0, 0.15] };
/// assert_eq!(map.top(2), [(1, 0.4), (3, 0.15)]); // the chunks to quote as sources
/// assert!((map.total() - 0.6).abs() < 1e-6); // 40% went to the local context
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct FocusMap {
    /// Per chunk of the plan (index = chunk id), the share its candidate received (0 for a chunk
    /// the aggregator left out).
    pub chunks: Vec<f32>,
}

impl FocusMap {
    /// The `k` chunks with the largest shares, largest first, as `(chunk id, share)`.
    pub fn top(&self, k: usize) -> Vec<(usize, f32)> {
        let mut ranked: Vec<(usize, f32)> = self.chunks.iter().copied().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        ranked.truncate(k);
        ranked
    }

    /// The share of attention that went to the memory in all.
    pub fn total(&self) -> f32 {
        self.chunks.iter().sum()
    }
}

/// One prompt being read and continued. Holds the chunk states and candidates between steps.
pub struct Session<'e, B: Backend, L: LocalDecoder<B>, M: MainDecoder<B>, C, A> {
    pub(crate) engine: &'e FocusEngine<'e, B, L, M, C, A>,
    pub(crate) state: State<B, L, M>,
    pub(crate) observer: Option<Box<dyn FnMut(Progress) + Send + 'e>>,
    pub(crate) cancel: CancelToken,
    pub(crate) checkpoint: Option<PrefillCheckpoint<B>>,
    pub(crate) resumed: Option<Resumed>,
}

impl<'e, B, L, M, C, A> Session<'e, B, L, M, C, A>
where
    B: Backend,
    L: LocalDecoder<B>,
    M: MainDecoder<B>,
    C: Chunker,
    A: CandidateAggregator<B>,
{
    /// Calls `observer` with progress reports during long work. (It must be `Send`, so that a
    /// session can move to another thread.)
    pub fn on_progress(&mut self, observer: impl FnMut(Progress) + Send + 'e) {
        self.observer = Some(Box::new(observer));
    }

    /// Uses `token` to cancel this session's work (a clone can be cancelled from another thread or
    /// from the progress callback).
    pub fn set_cancel_token(&mut self, token: CancelToken) {
        self.cancel = token;
    }

    /// Keeps the candidates of every chunk batch the next prefills decode in `checkpoint`, and
    /// resumes a prefill of the same input from what it holds (see [`PrefillCheckpoint`]). Frozen
    /// step mode only: a prefill in exact mode with a checkpoint set fails.
    pub fn set_checkpoint(&mut self, checkpoint: PrefillCheckpoint<B>) {
        self.checkpoint = Some(checkpoint);
    }

    /// What the last prefill read back from its checkpoint instead of decoding (`None` without a
    /// checkpoint or before a prefill).
    pub fn resumed(&self) -> Option<Resumed> {
        self.resumed
    }

    /// The token that cancels this session's work.
    pub fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
    }

    /// How the current prompt is being read.
    pub fn mode(&self) -> Mode {
        match &self.state {
            State::Empty => Mode::Empty,
            State::Running { chunks: 0, .. } => Mode::Plain,
            State::Running { chunks, .. } | State::Exact { chunks, .. } => {
                Mode::Focus { chunks: *chunks }
            }
        }
    }

    /// Bytes held by the chunk states and candidates (0 in plain and frozen modes, which keep none).
    pub fn chunk_cache_bytes(&self) -> usize {
        match &self.state {
            State::Exact { batches, .. } => batches
                .iter()
                .map(|b| self.engine.local.state_bytes(&b.state) + b.candidates.size_bytes())
                .sum(),
            _ => 0,
        }
    }

    pub(crate) fn report(&mut self, stage: Stage, done: usize, total: usize) -> Result<()> {
        if let Some(observer) = self.observer.as_mut() {
            observer(Progress { stage, done, total });
        }
        self.check_cancel()
    }

    fn check_cancel(&self) -> Result<()> {
        if self.cancel.is_cancelled() {
            Err(FocusError::Cancelled)
        } else {
            Ok(())
        }
    }

    /// Reads `ids` (a new prompt; any previous state is dropped) and returns the next-token logits.
    pub fn prefill(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        self.state = State::Empty;
        self.resumed = None;
        let engine = self.engine;
        if self.checkpoint.is_some() && engine.config.step_mode == StepMode::Exact {
            return Err(FocusError::InvalidConfig {
                field: "step_mode",
                reason: "exact: a prefill checkpoint resumes frozen-mode prefills only (exact \
                         mode keeps every chunk's caches, gigabytes at a million tokens)"
                    .into(),
            });
        }
        if ids.is_empty() {
            return Err(FocusError::EmptyInput);
        }
        check_vocab(ids, engine.spec.vocab_size)?;
        self.check_cancel()?;
        let Some(plan) = engine.plan(ids)? else {
            self.report(Stage::PlainPrefill, 0, 1)?;
            let mut main = engine.main.start(None)?;
            let input = with_bos(ids, engine.spec.bos_id);
            warn_beyond_native(input.len(), engine.spec.native_context);
            let logits = engine.main.feed(&mut main, &input)?;
            self.report(Stage::PlainPrefill, 1, 1)?;
            self.state = State::Running {
                main,
                chunks: 0,
                past: Vec::new(),
                read: input.len(),
            };
            return Ok(logits);
        };
        tracing::debug!(
            tokens = ids.len(),
            chunks = plan.chunks.len(),
            local = plan.local.len(),
            prompt = plan.prompt.len(),
            "prefill with FocusLLM"
        );
        let exact = engine.config.step_mode == StepMode::Exact;
        let (candidates, states) = self.decode_chunks(ids, &plan, exact)?;
        self.report(Stage::Main, 0, 1)?;
        let past = engine.aggregator.aggregate(&candidates)?;
        let mut main = engine.main.start(Some(&past))?;
        let logits = engine.main.feed(&mut main, &plan.local)?;
        self.report(Stage::Main, 1, 1)?;
        let chunks = plan.chunks.len();
        let past = past.chunk_ids().to_vec();
        self.state = match engine.config.step_mode {
            // No chunk state was kept: only the candidates, now in the main state, stay.
            StepMode::FrozenCandidates => State::Running {
                main,
                chunks,
                past,
                read: 0,
            },
            StepMode::Exact => State::Exact {
                batches: states
                    .into_iter()
                    .zip(candidates)
                    .map(|(state, candidates)| ChunkBatch { state, candidates })
                    .collect(),
                main_input: plan.local,
                prev: ids[ids.len() - 1],
                chunks,
                past,
                focus: engine.main.focus(&main),
            },
        };
        Ok(logits)
    }

    /// Decodes the plan's chunks in batches of `chunk_batch_size`. Chunks of equal length are put
    /// together (longest first) so that padding is only needed where a batch mixes lengths.
    /// Returns every batch's candidates and, with `keep_states`, every batch's state; without,
    /// each state is dropped as soon as its candidates exist (frozen mode never reads them again),
    /// so the prefill holds one batch's caches at a time whatever the input's length.
    fn decode_chunks(
        &mut self,
        ids: &[u32],
        plan: &ChunkPlan,
        keep_states: bool,
    ) -> Result<DecodedChunks<B, L::ChunkState>> {
        let engine = self.engine;
        let mut order: Vec<usize> = (0..plan.chunks.len()).collect();
        order.sort_by_key(|&c| std::cmp::Reverse(plan.chunks[c].len()));
        let total = order.len();
        let batch_size = engine.config.chunk_batch_size;
        let batches: Vec<Vec<ChunkSequence>> = order
            .chunks(batch_size)
            .map(|batch| {
                batch
                    .iter()
                    .map(|&c| ChunkSequence {
                        chunk_id: c,
                        tokens: plan.chunk_sequence(ids, c),
                    })
                    .collect()
            })
            .collect();
        let mut candidates = Vec::with_capacity(batches.len());
        let mut states = Vec::with_capacity(if keep_states { batches.len() } else { 0 });
        // The checkpoint and this prefill's key in it.
        let checkpoint = self.checkpoint.clone().map(|c| {
            let key = c.key(&batches);
            (c, key)
        });
        let mut done = 0;
        if let Some((checkpoint, key)) = &checkpoint {
            let saved = checkpoint.load(key)?;
            let mut resumed = Resumed {
                batches: saved.len().min(batches.len()),
                chunks: 0,
                seconds: 0.0,
            };
            for (set, seconds) in saved.into_iter().take(batches.len()) {
                resumed.chunks += set.len();
                resumed.seconds += seconds;
                candidates.push(set);
            }
            done = resumed.chunks;
            self.resumed = Some(resumed);
        }
        self.report(Stage::Chunks, done, total)?;
        // As many batches at once as the local decoder runs at the same time (its devices).
        let at_once = engine.local.parallel_batches().max(1);
        let mut next = candidates.len();
        for group in batches[next..].chunks(at_once) {
            let start = std::time::Instant::now();
            let decoded = engine.local.decode_batches(group)?;
            let seconds = start.elapsed().as_secs_f64() / decoded.len().max(1) as f64;
            for (state, batch_candidates) in decoded {
                if let Some((checkpoint, key)) = &checkpoint {
                    checkpoint.save(key, next, &batch_candidates, seconds)?;
                }
                next += 1;
                candidates.push(batch_candidates);
                if keep_states {
                    states.push(state);
                }
            }
            done += group.iter().map(Vec::len).sum::<usize>();
            self.report(Stage::Chunks, done, total)?;
        }
        Ok((candidates, states))
    }

    /// Makes room for `additional` more tokens fed by [`Session::step`], as [`Vec::reserve`]:
    /// plain decoding and frozen mode keep one KV cache, which otherwise grows by a thirty-second
    /// at a time, each growth a copy of the whole cache into new memory. [`Session::generate`]
    /// reserves what its `max_tokens` may feed, up to 4096 tokens. Nothing to do before a prefill, or in exact mode
    /// (its main pass starts afresh at every token).
    pub fn reserve(&mut self, additional: usize) {
        if let State::Running { main, .. } = &mut self.state {
            self.engine.main.reserve(main, additional);
        }
    }

    /// Feeds `token` (the one chosen from the last logits) and returns the next logits.
    pub fn step(&mut self, token: u32) -> Result<Vec<f32>> {
        let engine = self.engine;
        check_vocab(&[token], engine.spec.vocab_size)?;
        self.check_cancel()?;
        match &mut self.state {
            State::Empty => Err(FocusError::NotPrefilled),
            State::Running {
                main, chunks, read, ..
            } => {
                if *chunks == 0 {
                    *read += 1;
                    // Once, as the plain sequence first outgrows the native context.
                    if *read == engine.spec.native_context + 1 {
                        warn_beyond_native(*read, engine.spec.native_context);
                    }
                }
                engine.main.feed(main, &[token])
            }
            State::Exact {
                batches,
                main_input,
                prev,
                past: past_chunks,
                focus,
                ..
            } => {
                // Once the chunks are extended, a failure leaves the session half a step ahead:
                // it is reset rather than left to repeat the token.
                let stepped = (|| {
                    let mut states: Vec<&mut L::ChunkState> =
                        batches.iter_mut().map(|b| &mut b.state).collect();
                    let candidates = engine.local.extend_batches(&mut states, *prev, token)?;
                    for (batch, candidates) in batches.iter_mut().zip(candidates) {
                        batch.candidates = candidates;
                    }
                    *prev = token;
                    main_input.push(token);
                    let past = aggregate(&engine.aggregator, batches)?;
                    let mut main = engine.main.start(Some(&past))?;
                    let logits = engine.main.feed(&mut main, main_input)?;
                    *past_chunks = past.chunk_ids().to_vec();
                    *focus = engine.main.focus(&main);
                    Ok(logits)
                })();
                if stepped.is_err() {
                    self.state = State::Empty;
                }
                stepped
            }
        }
    }

    /// The focus map of the last logits (from `prefill` or `step`): which chunks the main decoder
    /// attended to. `None` in plain mode, before a prefill, or when the model does not measure it.
    pub fn focus(&self) -> Option<FocusMap> {
        let (shares, past, chunks) = match &self.state {
            State::Empty => return None,
            State::Running {
                main, chunks, past, ..
            } => (self.engine.main.focus(main)?, past, *chunks),
            State::Exact {
                focus,
                past,
                chunks,
                ..
            } => (focus.clone()?, past, *chunks),
        };
        let mut map = vec![0.0; chunks];
        for (&chunk, share) in past.iter().zip(shares) {
            if let Some(slot) = map.get_mut(chunk) {
                *slot += share;
            }
        }
        Some(FocusMap { chunks: map })
    }
}

/// Warns (through `tracing`) that plain decoding reads `tokens` tokens, more than the model's
/// native context: positions it was never trained on, where output degrades. FocusLLM reads such
/// inputs in chunks when the plain threshold is at most the native context (its default).
fn warn_beyond_native(tokens: usize, native_context: usize) {
    if native_context > 0 && tokens > native_context {
        tracing::warn!(
            tokens,
            native_context,
            "plain decoding beyond the model's native context: expect degraded output \
             (FocusLLM reads such inputs in chunks below a threshold of at most the native context)"
        );
    }
}
