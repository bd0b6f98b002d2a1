//! The examples of a training step: samples drawn from the corpus and the retrieval generator, cut
//! into continuation, repetition and retrieval examples through the engine's [`Chunker`].

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use crate::chunker::{ChunkPlan, Chunker, FixedStrideChunker};
use crate::config::FocusConfig;
use crate::error::{FocusError, Result};
use crate::train::config::{LossTarget, TaskMix, TrainConfig};
use crate::train::corpus::TextCorpus;
use crate::train::example::{TaskKind, TrainExample};
use crate::train::retrieval::{RetrievalGenerator, RetrievalSample};

/// Draws the examples of every micro-batch from the run's seed, step and index alone, so a resumed
/// run sees exactly the data it would have seen.
pub struct ExampleSampler {
    config: TrainConfig,
    bos: Option<u32>,
    chunker: Box<dyn Chunker + Send + Sync>,
    corpus: Option<TextCorpus>,
    generator: Option<RetrievalGenerator>,
}

impl std::fmt::Debug for ExampleSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExampleSampler")
            .field("corpus_tokens", &self.corpus.as_ref().map(TextCorpus::len))
            .field("synthetic", &self.generator.is_some())
            .finish()
    }
}

impl ExampleSampler {
    /// A sampler over a corpus, a generator, or both (mixed by `config.synthetic_ratio`).
    pub fn new(
        config: TrainConfig,
        bos: Option<u32>,
        corpus: Option<TextCorpus>,
        generator: Option<RetrievalGenerator>,
    ) -> Result<Self> {
        config.validate()?;
        if corpus.is_none() && generator.is_none() {
            return Err(FocusError::Data(
                "no data: give a text corpus, the retrieval generator, or both".into(),
            ));
        }
        if let Some(c) = &corpus {
            let text_sample = config.max_sample_tokens.min(config.max_text_tokens);
            if c.len() < text_sample {
                return Err(FocusError::Data(format!(
                    "the corpus holds {} tokens, fewer than one text sample of {text_sample} tokens \
                     (max_sample_tokens, max_text_tokens)",
                    c.len(),
                )));
            }
            let largest = config.chunk_sizes.iter().copied().max().unwrap_or(0);
            if config.prose_haystack > 0.0 && c.len() < largest + config.prose_blocks {
                return Err(FocusError::Data(format!(
                    "the corpus holds {} tokens, too few for {} prose blocks of {largest} tokens",
                    c.len(),
                    config.prose_blocks
                )));
            }
        }
        if let Some(g) = &generator {
            let fixed = g.longest_fixed_part()?;
            if config.min_sample_tokens <= fixed + config.max_local {
                return Err(FocusError::InvalidConfig {
                    field: "min_sample_tokens",
                    reason: format!(
                        "({}) leaves no filler outside the local window: retrieval samples need \
                         more than {fixed} tokens of fact and question plus max_local ({})",
                        config.min_sample_tokens, config.max_local
                    ),
                });
            }
        }
        Ok(Self {
            chunker: Box::new(FixedStrideChunker),
            config,
            bos,
            corpus,
            generator,
        })
    }

    /// Plans every example with `chunker` instead of the reference's fixed stride: train with the
    /// chunker the engine will read with. (Prose haystacks are built of blocks of the configured
    /// chunk sizes; another chunker may cut them elsewhere, which costs pool hits, not correctness.)
    pub fn with_chunker(mut self, chunker: impl Chunker + Send + Sync + 'static) -> Self {
        self.chunker = Box::new(chunker);
        self
    }

    /// The run's config.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The examples of micro-batch `micro` of optimiser step `step`.
    pub fn micro_batch(&self, step: usize, micro: usize) -> Result<Vec<TrainExample>> {
        let mut rng = StdRng::seed_from_u64(mix_seed(self.config.seed, step as u64, micro as u64));
        let mut out = Vec::new();
        for _ in 0..self.config.batch_size {
            out.extend(self.sample(&mut rng)?);
        }
        Ok(out)
    }

    /// One sample's examples (one task, or both under [`TaskMix::Sum`]).
    fn sample(&self, rng: &mut StdRng) -> Result<Vec<TrainExample>> {
        let c = &self.config;
        let n = rng.random_range(c.min_sample_tokens..=c.max_sample_tokens);
        let chunk_size = *c.chunk_sizes.choose(rng).expect("validated: not empty");
        let local = rng.random_range(c.min_local..=c.max_local);
        let synthetic = match (&self.corpus, &self.generator) {
            (Some(_), Some(_)) => rng.random_bool(c.synthetic_ratio),
            (None, Some(_)) => true,
            _ => false,
        };
        let repetition = match c.tasks {
            TaskMix::Random { repetition } => vec![rng.random_bool(repetition)],
            TaskMix::Sum => vec![false, true],
        };
        let mut out = Vec::with_capacity(repetition.len());
        if synthetic {
            let generator = self.generator.as_ref().expect("checked above");
            let prose = self.corpus.is_some() && rng.random_bool(c.prose_haystack);
            let s = match prose {
                true => self.prose_sample(generator, n, chunk_size, local, rng)?,
                false => None,
            };
            let s = match s {
                Some(s) => s,
                None => generator.sample(n, local, c.key_kinds, rng)?,
            };
            for rep in repetition {
                out.push(if rep {
                    self.repetition(&s.document, chunk_size, local, rng)?
                } else {
                    self.retrieval(&s, chunk_size, local, rng)?
                });
            }
        } else {
            let corpus = self.corpus.as_ref().expect("checked above");
            let n = n.min(c.max_text_tokens);
            let doc = corpus.window(n, rng).to_vec();
            for rep in repetition {
                out.push(if rep {
                    self.repetition(&doc, chunk_size, local, rng)?
                } else {
                    self.continuation(&doc, chunk_size, local, rng)?
                });
            }
        }
        Ok(out)
    }

    /// Block `index` of the corpus's prose pool for `chunk_size`: `prose_blocks` fixed windows
    /// spread over the corpus. Haystacks are made of whole blocks aligned to the chunks, so the same
    /// chunks recur across samples and steps, and a trainer can keep their caches (the fact's chunk
    /// is the only new one).
    fn prose_block<'c>(
        &self,
        corpus: &'c TextCorpus,
        chunk_size: usize,
        index: usize,
    ) -> &'c [u32] {
        let blocks = self.config.prose_blocks.max(1);
        let span = corpus.len() - chunk_size;
        let start = if blocks == 1 {
            0
        } else {
            index * span / (blocks - 1)
        };
        &corpus.tokens()[start..start + chunk_size]
    }

    /// A retrieval sample whose haystack is prose from the corpus: about `n` tokens of pool blocks,
    /// one of them (outside the local window) carrying the fact. `None` when the sample is too short
    /// for a block outside the local window.
    fn prose_sample(
        &self,
        generator: &RetrievalGenerator,
        n: usize,
        chunk_size: usize,
        local: usize,
        rng: &mut StdRng,
    ) -> Result<Option<RetrievalSample>> {
        let corpus = self.corpus.as_ref().expect("called with a corpus");
        let fact = generator.fact(self.config.key_kinds, rng)?;
        let q = fact.question.len();
        let blocks = (n.saturating_sub(q) / chunk_size).max(1);
        let doc_len = blocks * chunk_size;
        // The local window as `retrieval` will cut it; the fact's block must lie before it.
        let local = local.max(q).min(doc_len + q - 1);
        let free = (doc_len + q - local) / chunk_size;
        if free == 0 || fact.needle.len() + 1 >= chunk_size {
            return Ok(None);
        }
        let fact_block = rng.random_range(0..free);
        let mut document = Vec::with_capacity(doc_len);
        for b in 0..blocks {
            let block = self.prose_block(
                corpus,
                chunk_size,
                rng.random_range(0..self.config.prose_blocks),
            );
            let mut chunk = block.to_vec();
            if b == fact_block {
                let at = rng.random_range(1..=chunk_size - fact.needle.len());
                chunk.splice(at..at, fact.needle.iter().copied());
                chunk.truncate(chunk_size);
            }
            if b == 0
                && let Some(bos) = self.bos
            {
                chunk[0] = bos;
            }
            document.extend_from_slice(&chunk);
        }
        Ok(Some(RetrievalSample { document, fact }))
    }

    /// How many targets to score, drawn per example.
    fn target_count(&self, rng: &mut StdRng) -> usize {
        match self.config.target {
            LossTarget::LocalTokens { max } | LossTarget::ExactSteps { max } => {
                rng.random_range(1..=max)
            }
            LossTarget::NextToken => 1,
        }
    }

    fn plan(&self, ids: &[u32], local_window: usize, chunk_size: usize) -> Result<ChunkPlan> {
        let config = FocusConfig::default()
            .with_local_window(local_window)
            .with_chunk_size(chunk_size)
            .with_prompt_cap(self.config.prompt_cap);
        self.chunker.plan(ids, &config, self.bos)
    }

    fn continuation(
        &self,
        doc: &[u32],
        chunk_size: usize,
        local: usize,
        rng: &mut StdRng,
    ) -> Result<TrainExample> {
        let t = self.target_count(rng);
        let cut = doc.len() - t;
        let ids = doc[..cut].to_vec();
        let plan = self.plan(&ids, local, chunk_size)?;
        Ok(TrainExample {
            task: TaskKind::Continuation,
            ids,
            plan,
            generated: Vec::new(),
            targets: doc[cut..].to_vec(),
            step_mode: self.config.target.step_mode(),
        })
    }

    fn retrieval(
        &self,
        s: &RetrievalSample,
        chunk_size: usize,
        local: usize,
        rng: &mut StdRng,
    ) -> Result<TrainExample> {
        // Paper loss: the whole answer after the question (what frozen candidates must carry).
        // Reference loss, in exact-mode semantics: answer token `k`, with the `k` before it
        // generated (appended to every chunk and to the local context, as exact decoding does).
        let (k, t) = match self.config.target {
            LossTarget::LocalTokens { max } => (0, s.fact.answer.len().min(max)),
            LossTarget::NextToken => (rng.random_range(0..s.fact.answer.len()), 1),
            LossTarget::ExactSteps { .. } => (0, s.fact.answer.len()),
        };
        let mut ids = s.document.clone();
        ids.extend_from_slice(&s.fact.question);
        let local = local.max(s.fact.question.len()).min(ids.len() - 1);
        let plan = self.plan(&ids, local, chunk_size)?;
        Ok(TrainExample {
            task: TaskKind::Retrieval,
            ids,
            plan,
            generated: s.fact.answer[..k].to_vec(),
            targets: s.fact.answer[k..k + t].to_vec(),
            step_mode: self.config.target.step_mode(),
        })
    }

    fn repetition(
        &self,
        doc: &[u32],
        chunk_size: usize,
        local: usize,
        rng: &mut StdRng,
    ) -> Result<TrainExample> {
        let t = self.target_count(rng);
        // Chunks long enough to hold a span of at least `min_local` tokens and its targets.
        let need = self.config.min_local + t;
        let chunks: Vec<usize> = (0..doc.len())
            .step_by(chunk_size)
            .filter(|&start| (start + chunk_size).min(doc.len()) - start >= need)
            .collect();
        let Some(&start) = chunks.choose(rng) else {
            return self.continuation(doc, chunk_size, local, rng);
        };
        let end = (start + chunk_size).min(doc.len());
        let span = local.min(end - start - t);
        let s = rng.random_range(start..=end - span - t);
        let mut ids = doc.to_vec();
        ids.extend_from_slice(&doc[s..s + span]);
        let plan = self.plan(&ids, span, chunk_size)?;
        Ok(TrainExample {
            task: TaskKind::Repetition,
            ids,
            plan,
            generated: Vec::new(),
            targets: doc[s + span..s + span + t].to_vec(),
            step_mode: self.config.target.step_mode(),
        })
    }
}

/// One 64-bit seed per (run seed, step, micro-batch), well spread (splitmix64 finaliser).
fn mix_seed(seed: u64, step: u64, micro: u64) -> u64 {
    let mut z =
        seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ micro.wrapping_mul(0xD1B5_4A32_D192_ED03);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::StepMode;
    use crate::train::corpus::TextEncoder;

    /// One token per byte: enough to check the layouts.
    struct Bytes;
    impl TextEncoder for Bytes {
        fn encode(&self, text: &str) -> Result<Vec<u32>> {
            Ok(text.bytes().map(|b| b as u32 + 3).collect())
        }
    }

    fn sampler(config: TrainConfig, corpus: bool) -> ExampleSampler {
        // One token per byte: facts and questions are long, so are the samples.
        let config = TrainConfig {
            min_sample_tokens: config.min_sample_tokens.max(600),
            max_sample_tokens: config.max_sample_tokens.max(800),
            ..config
        };
        let corpus = corpus.then(|| {
            let text = "lorem ipsum dolor sit amet ".repeat(400);
            TextCorpus::from_texts(&[text], &Bytes).unwrap()
        });
        let generator = RetrievalGenerator::new(Box::new(Bytes), Some(1)).unwrap();
        ExampleSampler::new(config, Some(1), corpus, Some(generator)).unwrap()
    }

    #[test]
    fn retrieval_examples_predict_the_key_from_the_question() {
        let config = TrainConfig {
            synthetic_ratio: 1.0,
            tasks: TaskMix::Random { repetition: 0.0 },
            min_sample_tokens: 600,
            max_sample_tokens: 800,
            max_local: 200,
            ..TrainConfig::default()
        };
        let s = sampler(config, false);
        for step in 0..5 {
            for ex in s.micro_batch(step, 0).unwrap() {
                assert_eq!(ex.task, TaskKind::Retrieval);
                // The key is in memory, not in the local context or the prompt.
                let key: Vec<u32> = ex.targets[1..ex.targets.len() - 1].to_vec();
                let memory = &ex.ids[..ex.plan.local_range.start];
                assert!(memory.windows(key.len()).any(|w| w == key.as_slice()));
                assert!(
                    !ex.plan
                        .local
                        .windows(key.len())
                        .any(|w| w == key.as_slice())
                );
                assert_eq!(ex.plan.local[0], 1, "BOS rule on the local context");
                assert!(ex.plan.prompt.len() <= 65);
                assert_eq!(
                    ex.main_input().len(),
                    ex.plan.local.len() + ex.targets.len() - 1
                );
            }
        }
    }

    #[test]
    fn repetition_targets_follow_a_span_inside_one_chunk() {
        let config = TrainConfig {
            synthetic_ratio: 0.0,
            tasks: TaskMix::Random { repetition: 1.0 },
            ..TrainConfig::default()
        };
        let s = sampler(config, true);
        let ex = &s.micro_batch(3, 1).unwrap()[0];
        assert_eq!(ex.task, TaskKind::Repetition);
        let span = ex.plan.local_range.len();
        let memory = &ex.ids[..ex.plan.local_range.start];
        let local = &ex.ids[ex.plan.local_range.clone()];
        let mut expected = local.to_vec();
        expected.extend_from_slice(&ex.targets);
        let found = ex.plan.chunks.iter().any(|c| {
            memory[c.clone()]
                .windows(span + ex.targets.len())
                .any(|w| w == expected.as_slice())
        });
        assert!(found, "span and targets lie inside one memory chunk");
    }

    #[test]
    fn prose_haystacks_are_recurring_aligned_blocks_with_the_fact_in_memory() {
        let config = TrainConfig {
            synthetic_ratio: 1.0,
            prose_haystack: 1.0,
            prose_blocks: 4,
            target: LossTarget::NextToken,
            tasks: TaskMix::Random { repetition: 0.0 },
            chunk_sizes: vec![128],
            min_sample_tokens: 1500,
            max_sample_tokens: 3000,
            max_local: 200,
            ..TrainConfig::default()
        };
        let text: String = (0..3000).map(|i| format!("word{i} ")).collect();
        let corpus = TextCorpus::from_texts(&[text], &Bytes).unwrap();
        let generator = RetrievalGenerator::new(Box::new(Bytes), Some(1)).unwrap();
        let s =
            ExampleSampler::new(config, Some(1), Some(corpus.clone()), Some(generator)).unwrap();
        let blocks: Vec<&[u32]> = (0..4).map(|b| s.prose_block(&corpus, 128, b)).collect();
        for step in 0..4 {
            for ex in s.micro_batch(step, 0).unwrap() {
                let full = ex.plan.chunks.len() - 1;
                let mut odd = 0;
                for (j, r) in ex.plan.chunks[..full].iter().enumerate() {
                    let chunk = &ex.ids[r.clone()];
                    let known = blocks
                        .iter()
                        .any(|b| chunk == *b || (j == 0 && chunk[1..] == b[1..] && chunk[0] == 1));
                    odd += usize::from(!known);
                }
                assert_eq!(odd, 1, "every full chunk but the fact's is a pool block");
                assert_eq!(ex.targets.len(), 1, "one answer token, after its prefix");
                let local = &ex.ids[ex.plan.local_range.clone()];
                assert!(local.ends_with(&ex.plan.prompt[ex.plan.prompt.len() - 1..]));
                assert_eq!(ex.plan.local_range.end, ex.ids.len());
            }
        }
    }

    #[test]
    fn exact_steps_score_whole_answers_through_refreshed_candidates() {
        let config = TrainConfig {
            synthetic_ratio: 0.5,
            target: LossTarget::ExactSteps { max: 5 },
            tasks: TaskMix::Random { repetition: 0.3 },
            chunk_sizes: vec![128],
            min_sample_tokens: 1500,
            max_sample_tokens: 3000,
            max_local: 200,
            ..TrainConfig::default()
        };
        let text: String = (0..3000).map(|i| format!("word{i} ")).collect();
        let corpus = TextCorpus::from_texts(&[text], &Bytes).unwrap();
        let generator = RetrievalGenerator::new(Box::new(Bytes), Some(1)).unwrap();
        let s = ExampleSampler::new(config, Some(1), Some(corpus), Some(generator)).unwrap();
        let mut tasks = Vec::new();
        for step in 0..6 {
            for ex in s.micro_batch(step, 0).unwrap() {
                assert_eq!(ex.step_mode, StepMode::Exact);
                assert_eq!(ex.candidate_steps(), ex.targets.len());
                let t = ex.targets.len();
                // Every chunk runs the prompt, then every target but the last (candidates).
                let mut tail = ex.plan.prompt.clone();
                tail.extend_from_slice(&ex.targets[..t - 1]);
                assert_eq!(ex.chunk_tail(), tail);
                if ex.task == TaskKind::Retrieval {
                    assert!(
                        ex.generated.is_empty(),
                        "the answer is scored from its start"
                    );
                    assert_eq!(*ex.targets.last().unwrap(), u32::from(b'.') + 3);
                } else {
                    assert!((1..=5).contains(&t));
                }
                tasks.push(ex.task);
            }
        }
        assert!(
            tasks.contains(&TaskKind::Retrieval)
                && tasks.len() > tasks.iter().filter(|t| **t == TaskKind::Retrieval).count()
        );
    }

    /// Halves the chunk size the sampler asks for, and counts its calls.
    struct HalfStride(std::sync::atomic::AtomicUsize);
    impl Chunker for HalfStride {
        fn plan(&self, ids: &[u32], config: &FocusConfig, bos: Option<u32>) -> Result<ChunkPlan> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let half = config.clone().with_chunk_size(config.chunk_size / 2);
            FixedStrideChunker.plan(ids, &half, bos)
        }
    }

    #[test]
    fn examples_are_planned_by_the_sampler_s_chunker() {
        let config = TrainConfig {
            chunk_sizes: vec![128],
            ..TrainConfig::default()
        };
        let s = sampler(config, true).with_chunker(HalfStride(Default::default()));
        for step in 0..3 {
            for ex in s.micro_batch(step, 0).unwrap() {
                assert!(
                    ex.plan.chunks.iter().all(|r| r.len() <= 64),
                    "{:?}",
                    ex.plan.chunks
                );
                assert!(ex.plan.chunks.iter().any(|r| r.len() == 64));
            }
        }
    }

    #[test]
    fn the_same_step_draws_the_same_examples() {
        let s = sampler(TrainConfig::default(), true);
        assert_eq!(s.micro_batch(7, 0).unwrap(), s.micro_batch(7, 0).unwrap());
        assert_ne!(s.micro_batch(7, 0).unwrap(), s.micro_batch(8, 0).unwrap());
        assert_ne!(s.micro_batch(7, 0).unwrap(), s.micro_batch(7, 1).unwrap());
    }

    #[test]
    fn missing_data_is_an_error() {
        assert!(matches!(
            ExampleSampler::new(TrainConfig::default(), None, None, None),
            Err(FocusError::Data(_))
        ));
        let tiny = TextCorpus::from_texts(&["short"], &Bytes).unwrap();
        assert!(matches!(
            ExampleSampler::new(TrainConfig::default(), None, Some(tiny), None),
            Err(FocusError::Data(_))
        ));
        let missing = TextCorpus::from_paths(&["/definitely/not/here"], &Bytes).unwrap_err();
        assert!(matches!(missing, FocusError::Io { .. }), "{missing}");
    }
}
