//! The engine: the models, the chunking and aggregation policies and the configuration.

use std::marker::PhantomData;

use burn::tensor::backend::Backend;

use crate::aggregator::{CandidateAggregator, ConcatAggregator};
use crate::chunker::{ChunkPlan, Chunker, FixedStrideChunker};
use crate::config::FocusConfig;
use crate::control::CancelToken;
use crate::error::{FocusError, Result};
use crate::local::LocalDecoder;
use crate::main_decoder::MainDecoder;
use crate::model::{Model, ModelSpec};
use crate::session::{Session, State};

/// The engine: a local decoder, a main decoder, a chunking policy, an aggregation policy and a
/// configuration. It borrows the models and holds no per-prompt state; [`FocusEngine::session`]
/// starts a prompt.
///
/// ```
/// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/doc/counter.rs"));
/// # fn main() -> focusllm_core::Result<()> {
/// use focusllm_core::{FocusConfig, FocusEngine, NearestChunks};
///
/// // `Counter` is the toy model family of `LocalDecoder`'s example; any model works the same.
/// let config = FocusConfig::default().with_local_window(8).with_chunk_size(8);
/// // One model in both roles, the reference policies: fixed-stride chunks, every candidate.
/// let engine = FocusEngine::new(&Counter, config.clone())?;
/// // The same, its main decoder reading only the 2 chunks nearest the local context.
/// let nearest = FocusEngine::new(&Counter, config)?.with_aggregator(NearestChunks { keep: 2 });
///
/// // 40 tokens: 32 of memory in 4 chunks of 8, then the local window.
/// let ids: Vec<u32> = (0..40).collect();
/// let plan = engine.plan(&ids)?.expect("longer than the plain threshold");
/// assert_eq!(plan.chunks, [0..8, 8..16, 16..24, 24..32]);
/// assert_eq!(plan.local_range, 32..40);
///
/// // The toy spreads half of its attention evenly over the candidates it reads.
/// let mut session = engine.session();
/// session.prefill(&ids)?;
/// assert_eq!(session.focus().unwrap().chunks, [0.125; 4]);
/// let mut session = nearest.session();
/// session.prefill(&ids)?;
/// assert_eq!(session.focus().unwrap().chunks, [0.0, 0.0, 0.25, 0.25]);
/// # Ok(())
/// # }
/// ```
pub struct FocusEngine<'m, B, L, M, C = FixedStrideChunker, A = ConcatAggregator> {
    pub(crate) local: &'m L,
    pub(crate) main: &'m M,
    chunker: C,
    pub(crate) aggregator: A,
    pub(crate) config: FocusConfig,
    pub(crate) spec: ModelSpec,
    _backend: PhantomData<B>,
}

impl<'m, B, M> FocusEngine<'m, B, M, M>
where
    B: Backend,
    M: LocalDecoder<B> + MainDecoder<B> + Model,
{
    /// An engine where `model` is both decoders, with the reference chunking (fixed stride) and
    /// aggregation (all candidates in chunk order). Fails on an invalid config.
    pub fn new(model: &'m M, config: FocusConfig) -> Result<Self> {
        Self::with_decoders(model, model, config)
    }
}

impl<'m, B, L, M> FocusEngine<'m, B, L, M>
where
    B: Backend,
    L: LocalDecoder<B>,
    M: MainDecoder<B> + Model,
{
    /// An engine with distinct local and main decoders (they must share the candidates' layout;
    /// the main decoder's spec is the engine's). Fails on an invalid config.
    pub fn with_decoders(local: &'m L, main: &'m M, config: FocusConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            local,
            main,
            chunker: FixedStrideChunker,
            aggregator: ConcatAggregator,
            spec: main.spec(),
            config,
            _backend: PhantomData,
        })
    }
}

impl<'m, B, L, M, C, A> FocusEngine<'m, B, L, M, C, A>
where
    B: Backend,
    L: LocalDecoder<B>,
    M: MainDecoder<B>,
    C: Chunker,
    A: CandidateAggregator<B>,
{
    /// The same engine with another chunking policy.
    pub fn with_chunker<C2: Chunker>(self, chunker: C2) -> FocusEngine<'m, B, L, M, C2, A> {
        FocusEngine {
            local: self.local,
            main: self.main,
            chunker,
            aggregator: self.aggregator,
            config: self.config,
            spec: self.spec,
            _backend: PhantomData,
        }
    }

    /// The same engine with another aggregation policy.
    pub fn with_aggregator<A2: CandidateAggregator<B>>(
        self,
        aggregator: A2,
    ) -> FocusEngine<'m, B, L, M, C, A2> {
        FocusEngine {
            local: self.local,
            main: self.main,
            chunker: self.chunker,
            aggregator,
            config: self.config,
            spec: self.spec,
            _backend: PhantomData,
        }
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
            checkpoint: None,
            resumed: None,
        }
    }

    /// The local decoder.
    pub fn local_decoder(&self) -> &'m L {
        self.local
    }

    /// The main decoder.
    pub fn main_decoder(&self) -> &'m M {
        self.main
    }
}
