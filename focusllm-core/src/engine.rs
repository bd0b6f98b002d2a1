//! The FocusLLM engine: plan, decode chunks in batches, aggregate candidates, run the main decoder,
//! and extend every chunk at each generated token.

use std::marker::PhantomData;
use std::ops::ControlFlow;

use burn::tensor::backend::Backend;

use crate::aggregator::{CandidateAggregator, ConcatAggregator};
use crate::cache::{CandidateCache, ChunkBatchCache, PlainCache};
use crate::chunker::{ChunkPlan, Chunker, FixedStrideChunker, with_bos};
use crate::config::{FocusConfig, StepMode};
use crate::control::{CancelToken, Progress, Stage};
use crate::decoder::{ChunkSequence, Detokenizer, LocalDecoder, MainDecoder, ModelSpec};
use crate::error::{FocusError, Result, check_vocab};
use crate::sampler::{Sampler, SamplingConfig, nll};

/// The engine: a local decoder, a main decoder, a chunking policy, an aggregation policy and a
/// configuration. It holds no per-prompt state; [`FocusEngine::session`] starts a prompt.
pub struct FocusEngine<B, L, M, C = FixedStrideChunker, A = ConcatAggregator> {
    local: L,
    main: M,
    chunker: C,
    aggregator: A,
    config: FocusConfig,
    spec: ModelSpec,
    _backend: PhantomData<B>,
}

impl<B, L, M> FocusEngine<B, L, M>
where
    B: Backend,
    L: LocalDecoder<B>,
    M: MainDecoder<B>,
{
    /// An engine with the reference chunking (fixed stride) and aggregation (concatenation).
    pub fn new(local: L, main: M, config: FocusConfig) -> Result<Self> {
        Self::with_policies(local, main, FixedStrideChunker, ConcatAggregator, config)
    }
}

impl<B, L, M, C, A> FocusEngine<B, L, M, C, A>
where
    B: Backend,
    L: LocalDecoder<B>,
    M: MainDecoder<B>,
    C: Chunker,
    A: CandidateAggregator<B>,
{
    /// An engine with custom chunking and aggregation policies. Fails on an invalid config.
    pub fn with_policies(
        local: L,
        main: M,
        chunker: C,
        aggregator: A,
        config: FocusConfig,
    ) -> Result<Self> {
        config.validate()?;
        let spec = main.spec();
        Ok(Self {
            local,
            main,
            chunker,
            aggregator,
            config,
            spec,
            _backend: PhantomData,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &FocusConfig {
        &self.config
    }

    /// What the engine knows of the model.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Inputs shorter than this are decoded plainly.
    pub fn plain_threshold(&self) -> usize {
        self.config
            .plain_threshold
            .unwrap_or(self.spec.native_context)
    }

    /// Whether an input of `len` tokens is decoded plainly: shorter than the threshold, or not longer
    /// than the local window (then there is no memory to chunk; the reference mis-slices there).
    pub fn is_plain(&self, len: usize) -> bool {
        len < self.plain_threshold() || len <= self.config.local_window
    }

    /// The reading plan for `ids` (`None` when they are decoded plainly).
    pub fn plan(&self, ids: &[u32]) -> Result<Option<ChunkPlan>> {
        if ids.is_empty() {
            return Err(FocusError::EmptyInput);
        }
        if self.is_plain(ids.len()) {
            return Ok(None);
        }
        self.chunker
            .plan(ids, &self.config, self.spec.bos_id)
            .map(Some)
    }

    /// Starts a prompt. Sessions share the engine's weights, never state.
    pub fn session(&self) -> Session<'_, B, L, M, C, A> {
        Session {
            engine: self,
            state: State::Empty,
            observer: None,
            cancel: CancelToken::new(),
        }
    }

    /// The local decoder.
    pub fn local_decoder(&self) -> &L {
        &self.local
    }

    /// The main decoder.
    pub fn main_decoder(&self) -> &M {
        &self.main
    }
}

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

enum State<B: Backend> {
    Empty,
    Plain {
        cache: PlainCache<B>,
    },
    /// FocusLLM prefill done, tokens decoded with the candidates held fixed.
    FocusFrozen {
        cache: PlainCache<B>,
        chunks: usize,
    },
    Focus {
        batches: Vec<ChunkBatchCache<B>>,
        /// Local context (BOS rule applied) followed by every token generated so far.
        main_input: Vec<u32>,
        /// The current candidate token of every chunk.
        prev: u32,
        chunks: usize,
    },
}

/// One generated token, as streamed by [`Session::generate`].
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedToken {
    /// The token id.
    pub id: u32,
    /// The text this token adds (empty without a detokenizer, or while a multi-byte character is
    /// incomplete).
    pub text: String,
    /// The logits it was chosen from.
    pub logits: Vec<f32>,
}

/// Options of [`Session::generate`].
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Tokens that end generation (included in the output). Empty: the model's EOS ids.
    pub stop_tokens: Vec<u32>,
    /// How tokens are chosen.
    pub sampling: SamplingConfig,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 32,
            stop_tokens: Vec::new(),
            sampling: SamplingConfig::greedy(),
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `max_tokens` reached.
    MaxTokens,
    /// A stop token was generated.
    StopToken,
    /// The callback asked to stop.
    Callback,
}

/// The result of [`Session::generate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// Generated ids.
    pub tokens: Vec<u32>,
    /// Generated text (empty without a detokenizer).
    pub text: String,
    /// Why it stopped.
    pub stop: StopReason,
}

/// The result of [`Session::perplexity`].
#[derive(Debug, Clone, PartialEq)]
pub struct PerplexityReport {
    /// Chunks read by the prefill of the context.
    pub chunks: usize,
    /// NLL of every scored token.
    pub nll: Vec<f64>,
    /// Mean NLL.
    pub loss: f64,
    /// `exp(loss)`.
    pub perplexity: f64,
}

/// One prompt being read and continued. Holds the chunk caches and candidates between steps.
pub struct Session<'e, B: Backend, L, M, C, A> {
    engine: &'e FocusEngine<B, L, M, C, A>,
    state: State<B>,
    observer: Option<Box<dyn FnMut(Progress) + 'e>>,
    cancel: CancelToken,
}

impl<'e, B, L, M, C, A> Session<'e, B, L, M, C, A>
where
    B: Backend,
    L: LocalDecoder<B>,
    M: MainDecoder<B>,
    C: Chunker,
    A: CandidateAggregator<B>,
{
    /// Calls `observer` with progress reports during long work.
    pub fn on_progress(&mut self, observer: impl FnMut(Progress) + 'e) {
        self.observer = Some(Box::new(observer));
    }

    /// Uses `token` to cancel this session's work (a clone can be cancelled from another thread or
    /// from the progress callback).
    pub fn set_cancel_token(&mut self, token: CancelToken) {
        self.cancel = token;
    }

    /// The token that cancels this session's work.
    pub fn cancel_token(&self) -> CancelToken {
        self.cancel.clone()
    }

    /// How the current prompt is being read.
    pub fn mode(&self) -> Mode {
        match &self.state {
            State::Empty => Mode::Empty,
            State::Plain { .. } => Mode::Plain,
            State::Focus { chunks, .. } | State::FocusFrozen { chunks, .. } => {
                Mode::Focus { chunks: *chunks }
            }
        }
    }

    /// Bytes held by the chunk caches (0 in plain mode).
    pub fn chunk_cache_bytes(&self) -> usize {
        match &self.state {
            State::Focus { batches, .. } => batches.iter().map(ChunkBatchCache::size_bytes).sum(),
            _ => 0,
        }
    }

    fn report(&mut self, stage: Stage, done: usize, total: usize) -> Result<()> {
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
        let engine = self.engine;
        if ids.is_empty() {
            return Err(FocusError::EmptyInput);
        }
        check_vocab(ids, engine.spec.vocab_size)?;
        self.check_cancel()?;
        let Some(plan) = engine.plan(ids)? else {
            self.report(Stage::PlainPrefill, 0, 1)?;
            let mut cache = PlainCache::default();
            let logits = engine
                .main
                .decode_plain(&with_bos(ids, engine.spec.bos_id), &mut cache)?;
            self.report(Stage::PlainPrefill, 1, 1)?;
            self.state = State::Plain { cache };
            return Ok(logits);
        };
        let batches = self.decode_chunks(ids, &plan)?;
        self.report(Stage::Main, 0, 1)?;
        let past = engine.aggregator.aggregate(&batches)?;
        if engine.config.step_mode == StepMode::FrozenCandidates {
            // The chunk caches are not needed any more: only the candidates, now in the cache.
            drop(batches);
            let mut cache = PlainCache::default();
            let logits = engine
                .main
                .decode_main_cached(&plan.local, &past, &mut cache)?;
            self.report(Stage::Main, 1, 1)?;
            self.state = State::FocusFrozen {
                cache,
                chunks: plan.chunks.len(),
            };
            return Ok(logits);
        }
        let logits = engine.main.decode_main(&plan.local, &past)?;
        self.report(Stage::Main, 1, 1)?;
        self.state = State::Focus {
            batches,
            main_input: plan.local,
            prev: ids[ids.len() - 1],
            chunks: plan.chunks.len(),
        };
        Ok(logits)
    }

    /// Decodes the plan's chunks in batches of `chunk_batch_size`. Chunks of equal length are put
    /// together (longest first) so that padding is only needed where a batch mixes lengths.
    fn decode_chunks(&mut self, ids: &[u32], plan: &ChunkPlan) -> Result<Vec<ChunkBatchCache<B>>> {
        let engine = self.engine;
        let mut order: Vec<usize> = (0..plan.chunks.len()).collect();
        order.sort_by_key(|&c| std::cmp::Reverse(plan.chunks[c].len()));
        let total = order.len();
        let mut batches = Vec::with_capacity(total.div_ceil(engine.config.chunk_batch_size));
        self.report(Stage::Chunks, 0, total)?;
        let mut done = 0;
        for group in order.chunks(engine.config.chunk_batch_size) {
            let sequences: Vec<ChunkSequence> = group
                .iter()
                .map(|&c| ChunkSequence {
                    chunk_id: c,
                    tokens: plan.chunk_sequence(ids, c),
                })
                .collect();
            batches.push(engine.local.decode_chunks(&sequences)?);
            done += group.len();
            self.report(Stage::Chunks, done, total)?;
        }
        Ok(batches)
    }

    /// Feeds `token` (the one chosen from the last logits) and returns the next logits.
    pub fn step(&mut self, token: u32) -> Result<Vec<f32>> {
        let engine = self.engine;
        check_vocab(&[token], engine.spec.vocab_size)?;
        self.check_cancel()?;
        match &mut self.state {
            State::Empty => Err(FocusError::NotPrefilled),
            State::Plain { cache } | State::FocusFrozen { cache, .. } => {
                engine.main.decode_plain(&[token], cache)
            }
            State::Focus {
                batches,
                main_input,
                prev,
                ..
            } => {
                for batch in batches.iter_mut() {
                    engine.local.extend_chunks(batch, *prev, token)?;
                }
                *prev = token;
                main_input.push(token);
                let past: CandidateCache<B> = engine.aggregator.aggregate(batches)?;
                engine.main.decode_main(main_input, &past)
            }
        }
    }

    /// Reads `ids` and generates up to `options.max_tokens` tokens, calling `on_token` as each one
    /// comes (return `ControlFlow::Break(())` to stop early). With a `detokenizer`, text is streamed too.
    pub fn generate(
        &mut self,
        ids: &[u32],
        options: &GenerateOptions,
        detokenizer: Option<&dyn Detokenizer>,
        mut on_token: impl FnMut(&GeneratedToken) -> ControlFlow<()>,
    ) -> Result<Generation> {
        let mut sampler = Sampler::new(options.sampling.clone())?;
        let stops = if options.stop_tokens.is_empty() {
            &self.engine.spec.eos_ids
        } else {
            &options.stop_tokens
        };
        let stops = stops.clone();
        let mut tokens = Vec::new();
        let mut text = String::new();
        if options.max_tokens == 0 {
            return Ok(Generation {
                tokens,
                text,
                stop: StopReason::MaxTokens,
            });
        }
        let mut logits = self.prefill(ids)?;
        loop {
            let id = sampler.sample(&logits)?;
            tokens.push(id);
            let piece = match detokenizer {
                Some(d) => {
                    let full = d.detokenize(&tokens)?;
                    // A token may end inside a multi-byte character: emit text only once it is whole.
                    let piece = if full.starts_with(&text) && !full.ends_with('\u{FFFD}') {
                        full[text.len()..].to_string()
                    } else {
                        String::new()
                    };
                    text.push_str(&piece);
                    piece
                }
                None => String::new(),
            };
            let event = GeneratedToken {
                id,
                text: piece,
                logits,
            };
            if on_token(&event).is_break() {
                return Ok(Generation {
                    tokens,
                    text,
                    stop: StopReason::Callback,
                });
            }
            if stops.contains(&id) {
                return Ok(Generation {
                    tokens,
                    text,
                    stop: StopReason::StopToken,
                });
            }
            if tokens.len() >= options.max_tokens {
                return Ok(Generation {
                    tokens,
                    text,
                    stop: StopReason::MaxTokens,
                });
            }
            self.report(Stage::Tokens, tokens.len(), options.max_tokens)?;
            logits = self.step(id)?;
        }
    }

    /// The reference perplexity protocol: prefill `ids[..n - scored]`, then score the last `scored`
    /// tokens by teacher forcing (each predicted after feeding the true previous token).
    pub fn perplexity(&mut self, ids: &[u32], scored: usize) -> Result<PerplexityReport> {
        if scored == 0 || ids.len() <= scored {
            return Err(FocusError::InvalidConfig {
                field: "scored",
                reason: format!(
                    "must be in 1..{} for an input of {} tokens",
                    ids.len(),
                    ids.len()
                ),
            });
        }
        let context = ids.len() - scored;
        let mut logits = self.prefill(&ids[..context])?;
        let chunks = self.mode().chunks();
        let mut nlls = Vec::with_capacity(scored);
        for i in 0..scored {
            let target = ids[context + i];
            nlls.push(nll(&logits, target)?);
            self.report(Stage::Tokens, i + 1, scored)?;
            if i + 1 < scored {
                logits = self.step(target)?;
            }
        }
        let loss = nlls.iter().sum::<f64>() / scored as f64;
        Ok(PerplexityReport {
            chunks,
            nll: nlls,
            loss,
            perplexity: loss.exp(),
        })
    }
}
