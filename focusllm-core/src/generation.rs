//! Generation and the perplexity protocol, on top of a session's `prefill` and `step`.

use std::ops::ControlFlow;

use burn::tensor::backend::Backend;

use crate::aggregator::CandidateAggregator;
use crate::chunker::Chunker;
use crate::control::Stage;
use crate::error::{FocusError, Result};
use crate::local::LocalDecoder;
use crate::main_decoder::MainDecoder;
use crate::model::Detokenizer;
use crate::sampler::{Sampler, SamplingConfig, nll};
use crate::session::{FocusMap, Session};

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
    /// Where those logits drew on the memory (see [`Session::focus`]); `None` in plain mode or when
    /// the model does not measure it.
    pub focus: Option<FocusMap>,
}

/// Options of [`Session::generate`].
///
/// ```
/// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/doc/counter.rs"));
/// # fn main() -> focusllm_core::Result<()> {
/// use std::ops::ControlFlow;
///
/// use focusllm_core::{FocusConfig, FocusEngine, GenerateOptions, SamplingConfig};
///
/// // Up to 128 tokens, stopping at the model's EOS ids, greedy.
/// let greedy = GenerateOptions { max_tokens: 128, ..Default::default() };
/// assert_eq!(greedy.sampling, SamplingConfig::greedy());
/// // Exactly 16 tokens (no stop token), sampled at temperature 0.7 with top-p 0.9, seeded.
/// let sampled = GenerateOptions {
///     max_tokens: 16,
///     stop_tokens: Some(vec![]),
///     sampling: SamplingConfig::sampled(0.7, Some(0.9), 42),
/// };
///
/// // `Counter`: the toy model family of `LocalDecoder`'s example.
/// let engine = FocusEngine::new(&Counter, FocusConfig::default())?;
/// let mut session = engine.session();
/// let first = session.generate(&[1, 2, 3], &sampled, None, |_| ControlFlow::Continue(()))?;
/// let again = session.generate(&[1, 2, 3], &sampled, None, |_| ControlFlow::Continue(()))?;
/// assert_eq!(first.tokens.len(), 16);
/// assert_eq!(first.tokens, again.tokens); // same seed, same tokens
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Tokens that end generation (included in the output). `None`: the model's EOS ids;
    /// `Some(vec![])`: none, generation runs to `max_tokens`.
    pub stop_tokens: Option<Vec<u32>>,
    /// How tokens are chosen.
    pub sampling: SamplingConfig,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            max_tokens: 32,
            stop_tokens: None,
            sampling: SamplingConfig::greedy(),
        }
    }
}

/// The most tokens [`Session::generate`] makes room for up front ([`Session::reserve`]): a larger
/// `max_tokens` is more often a bound than an expectation, and a cache reserved for it would hold
/// memory the generation may never use; past this many tokens the cache grows as it goes.
const MAX_RESERVED: usize = 4096;

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

impl<B, L, M, C, A> Session<'_, B, L, M, C, A>
where
    B: Backend,
    L: LocalDecoder<B>,
    M: MainDecoder<B>,
    C: Chunker,
    A: CandidateAggregator<B>,
{
    /// Reads `ids` and generates up to `options.max_tokens` tokens, calling `on_token` as each one
    /// comes (return `ControlFlow::Break(())` to stop early). With a `detokenizer`, text is streamed too.
    ///
    /// ```
    /// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/doc/counter.rs"));
    /// # fn main() -> focusllm_core::Result<()> {
    /// use std::ops::ControlFlow;
    ///
    /// use focusllm_core::{FocusConfig, FocusEngine, GenerateOptions, Mode, StopReason};
    ///
    /// // `Counter`: the toy model family of `LocalDecoder`'s example, which counts up.
    /// let config = FocusConfig::default().with_local_window(8).with_chunk_size(8);
    /// let engine = FocusEngine::new(&Counter, config)?;
    /// let mut session = engine.session();
    /// let ids: Vec<u32> = (0..40).collect();
    ///
    /// let options = GenerateOptions {
    ///     max_tokens: 10,
    ///     stop_tokens: Some(vec![45]),
    ///     ..Default::default()
    /// };
    /// let mut streamed = Vec::new();
    /// let out = session.generate(&ids, &options, None, |token| {
    ///     streamed.push(token.id);
    ///     ControlFlow::Continue(())
    /// })?;
    /// assert_eq!(out.tokens, [40, 41, 42, 43, 44, 45]); // the stop token included
    /// assert_eq!(out.stop, StopReason::StopToken);
    /// assert_eq!(streamed, out.tokens);
    /// assert_eq!(session.mode(), Mode::Focus { chunks: 4 });
    ///
    /// // A new prompt on the same session; the callback stops it.
    /// let out = session.generate(&[7], &options, None, |token| match token.id {
    ///     9 => ControlFlow::Break(()),
    ///     _ => ControlFlow::Continue(()),
    /// })?;
    /// assert_eq!(out.tokens, [8, 9]);
    /// assert_eq!(out.stop, StopReason::Callback);
    /// assert_eq!(session.mode(), Mode::Plain); // one token: no memory to chunk
    /// # Ok(())
    /// # }
    /// ```
    pub fn generate(
        &mut self,
        ids: &[u32],
        options: &GenerateOptions,
        detokenizer: Option<&dyn Detokenizer>,
        mut on_token: impl FnMut(&GeneratedToken) -> ControlFlow<()>,
    ) -> Result<Generation> {
        let mut sampler = Sampler::new(options.sampling.clone())?;
        let stops = options
            .stop_tokens
            .clone()
            .unwrap_or_else(|| self.engine.spec.eos_ids.clone());
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
        // Every token but the last is fed back.
        self.reserve((options.max_tokens - 1).min(MAX_RESERVED));
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
                focus: self.focus(),
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
    ///
    /// ```
    /// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/doc/counter.rs"));
    /// # fn main() -> focusllm_core::Result<()> {
    /// use focusllm_core::{FocusConfig, FocusEngine};
    ///
    /// // `Counter`: the toy model family of `LocalDecoder`'s example. Its logits are 1 for the
    /// // next number and 0 for the 63 other tokens.
    /// let config = FocusConfig::default().with_local_window(8).with_chunk_size(8);
    /// let engine = FocusEngine::new(&Counter, config)?;
    /// let ids: Vec<u32> = (0..40).collect();
    /// let report = engine.session().perplexity(&ids, 4)?;
    /// assert_eq!(report.chunks, 4); // the prefill of 36 tokens: 28 of memory in chunks of 8
    /// assert_eq!(report.nll.len(), 4);
    /// let nll = (1f64.exp() + 63.0).ln() - 1.0; // -ln(e / (e + 63)), for each scored token
    /// assert!((report.loss - nll).abs() < 1e-6);
    /// assert!((report.perplexity - nll.exp()).abs() < 1e-4);
    /// # Ok(())
    /// # }
    /// ```
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
