//! Training data: a text corpus, a synthetic retrieval generator, and the continuation and
//! repetition tasks cut from their samples through the same [`Chunker`] the engine reads with.

use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};

use crate::chunker::{ChunkPlan, Chunker, FixedStrideChunker};
use crate::config::{FocusConfig, StepMode};
use crate::error::{FocusError, Result};
use crate::passkey;
use crate::train::config::{LossTarget, TaskMix, TrainConfig};

/// Text to token ids (a model's tokenizer). Object-safe so that data sources can hold one.
pub trait TextEncoder: Send + Sync {
    /// Encodes `text` without special tokens.
    fn encode(&self, text: &str) -> Result<Vec<u32>>;
}

/// Where an example comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum TaskKind {
    /// Predict what follows a local span at the end of a text sample; the text before is memory.
    Continuation,
    /// Predict what follows a span copied from inside a memory chunk; the whole sample is memory.
    Repetition,
    /// Answer a question about a fact hidden in filler (the synthetic generator's continuation).
    Retrieval,
}

/// One training example: an input the engine's chunker has planned, and the tokens to predict after
/// it, read with the candidates held fixed or refreshed at every token (`step_mode`).
#[derive(Debug, Clone, PartialEq)]
pub struct TrainExample {
    /// The task.
    pub task: TaskKind,
    /// The input ids (memory ++ local context).
    pub ids: Vec<u32>,
    /// How the input is read: chunks, local context, dynamic prompt.
    pub plan: ChunkPlan,
    /// Tokens generated after the input and before the targets (teacher-forced), as exact-mode
    /// decoding sees them: appended to every chunk's `chunk ++ prompt` (the last one is the
    /// candidate) and to the local context. Empty for a target right after the input.
    pub generated: Vec<u32>,
    /// The scored tokens, in order, right after the input and `generated`.
    pub targets: Vec<u32>,
    /// How the targets are read. [`StepMode::Exact`]: target `i` through candidates refreshed after
    /// `generated ++ targets[..i]` (one exact-mode step per target); [`StepMode::FrozenCandidates`]:
    /// every target through the candidates after `generated`. One target reads the same either way.
    pub step_mode: StepMode,
}

impl TrainExample {
    /// What the main decoder runs: the local context (BOS rule applied), the generated tokens and
    /// every target but the last, so that its last `targets.len()` logits predict the targets.
    ///
    /// # Panics
    /// If `targets` is empty (the sampler never builds such an example).
    pub fn main_input(&self) -> Vec<u32> {
        let mut main = self.plan.local.clone();
        main.extend_from_slice(&self.generated);
        main.extend_from_slice(&self.targets[..self.targets.len() - 1]);
        main
    }

    /// How many sets of candidates the targets are read through: one per target in exact mode,
    /// one in all with frozen candidates.
    pub fn candidate_steps(&self) -> usize {
        match self.step_mode {
            StepMode::Exact => self.targets.len().max(1),
            StepMode::FrozenCandidates => 1,
        }
    }

    /// What every chunk runs after its own tokens: the dynamic prompt, the generated tokens and, in
    /// exact mode, every target but the last. Its last [`TrainExample::candidate_steps`] tokens
    /// are the candidates (the one of step `i` follows the ordinary tokens before it).
    pub fn chunk_tail(&self) -> Vec<u32> {
        let mut tail = self.plan.prompt.clone();
        tail.extend_from_slice(&self.generated);
        tail.extend_from_slice(&self.targets[..self.candidate_steps() - 1]);
        tail
    }

    /// Tokens the decoder would run over for this example if every chunk were computed (chunk
    /// passes plus the main pass).
    pub fn decoded_tokens(&self) -> usize {
        let chunks: usize = self.plan.chunks.iter().map(|r| r.len()).sum();
        chunks + self.plan.chunks.len() * self.chunk_tail().len() + self.main_input().len()
    }
}

/// A token stream made of text files, from which samples are windows at random offsets.
#[derive(Debug, Clone)]
pub struct TextCorpus {
    tokens: Vec<u32>,
    files: usize,
}

impl TextCorpus {
    /// Tokenizes `texts` and joins them (separated by a blank line).
    pub fn from_texts<S: AsRef<str>>(texts: &[S], encoder: &dyn TextEncoder) -> Result<Self> {
        let separator = encoder.encode("\n\n")?;
        let mut tokens = Vec::new();
        for text in texts {
            tokens.extend(encoder.encode(text.as_ref())?);
            tokens.extend_from_slice(&separator);
        }
        Ok(Self {
            tokens,
            files: texts.len(),
        })
    }

    /// Reads text files: each path is a file, or a directory whose `.txt` and `.md` files are read
    /// recursively (in name order, so a corpus is the same on every machine).
    pub fn from_paths<P: AsRef<Path>>(paths: &[P], encoder: &dyn TextEncoder) -> Result<Self> {
        let mut files = Vec::new();
        for path in paths {
            collect_text_files(path.as_ref(), &mut files)?;
        }
        if files.is_empty() {
            return Err(FocusError::Data(format!(
                "no .txt or .md file under {:?}",
                paths
                    .iter()
                    .map(|p| p.as_ref().display().to_string())
                    .collect::<Vec<_>>()
            )));
        }
        let texts = files
            .iter()
            .map(|f| {
                std::fs::read_to_string(f).map_err(|source| FocusError::Io {
                    path: f.clone(),
                    source,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Self::from_texts(&texts, encoder)
    }

    /// Tokens in the corpus.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the corpus holds no tokens.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Texts (files) the corpus was made of.
    pub fn files(&self) -> usize {
        self.files
    }

    /// A window of `n` tokens at a random offset.
    fn window(&self, n: usize, rng: &mut StdRng) -> &[u32] {
        let start = rng.random_range(0..=self.tokens.len() - n);
        &self.tokens[start..start + n]
    }
}

fn collect_text_files(path: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let io = |source| FocusError::Io {
        path: path.to_path_buf(),
        source,
    };
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io)?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .map_err(io)?;
        entries.sort();
        for entry in entries {
            let text = matches!(
                entry.extension().and_then(|e| e.to_str()),
                Some("txt" | "md")
            );
            if entry.is_dir() || text {
                collect_text_files(&entry, out)?;
            }
        }
        Ok(())
    } else {
        std::fs::metadata(path).map_err(io)?;
        out.push(path.to_path_buf());
        Ok(())
    }
}

/// A fact template: where the key is stated, the question, and the answer. `{key}` is replaced.
struct FactTemplate {
    needle: &'static str,
    question: &'static str,
    answer: &'static str,
}

/// The training phrasings. The first is the passkey task's own; evaluations of held-out phrasings
/// (`examples/longdoc.rs`, `BENCHMARKS.md`) use none of these.
const TEMPLATES: &[FactTemplate] = &[
    FactTemplate {
        needle: passkey::NEEDLE,
        question: passkey::QUESTION,
        answer: " {key}.",
    },
    FactTemplate {
        needle: "\nThe secret number is {key}. Keep it in mind.\n",
        question: "\nSomewhere above a secret number was given.\nWhat is the secret number? The secret number is",
        answer: " {key}.",
    },
    FactTemplate {
        needle: " Note: the access code for the vault is {key}. ",
        question: "\nQuestion: what is the access code for the vault?\nAnswer: the access code is",
        answer: " {key}.",
    },
    FactTemplate {
        needle: "\nImportant: the magic number is {key}.\n",
        question: "\nWhat was the magic number mentioned in the text? The magic number is",
        answer: " {key}.",
    },
    FactTemplate {
        needle: "\nMy locker number is {key}, do not forget it.\n",
        question: "\nRead the text again and tell me the locker number. The locker number is",
        answer: " {key}.",
    },
    FactTemplate {
        needle: " The password to the archive is {key}. ",
        question: "\nWhich password opens the archive? The password is",
        answer: " {key}.",
    },
    FactTemplate {
        needle: "\n(The ticket reference is {key}.)\n",
        question: "\nLook back for the ticket reference. The ticket reference is",
        answer: " {key}.",
    },
    FactTemplate {
        needle: " Remember this serial number: {key}. ",
        question: "\nWhat serial number were you asked to remember? The serial number is",
        answer: " {key}.",
    },
    FactTemplate {
        needle: "\nPS: the name of the ship is {key}.\n",
        question: "\nAccording to the text, what is the name of the ship? The ship is called",
        answer: " {key}.",
    },
    FactTemplate {
        needle: " The meeting room has the code {key} written on its door. ",
        question: "\nWhat code is written on the door of the meeting room? The code is",
        answer: " {key}.",
    },
];

/// Filler paragraphs the facts are hidden in (the first is the passkey task's own).
const FILLERS: &[&str] = &[
    passkey::FILLER,
    "The river runs past the old mill. Birds sing in the morning. The market opens at dawn. ",
    "A train leaves the station every hour. People read newspapers on the platform. The coffee is hot. ",
    "Clouds drift over the hills. The wind is cold today. Children play in the park after school. ",
    "The library is quiet. Shelves are full of old books. A clock ticks on the wall. ",
];

/// Words for word keys (two are drawn and joined by a space or a hyphen).
const KEY_WORDS: &[&str] = &[
    "amber", "anchor", "apple", "arrow", "badger", "bamboo", "basil", "beacon", "birch", "blue",
    "bottle", "bridge", "candle", "canyon", "carbon", "cedar", "cherry", "cobalt", "comet",
    "copper", "coral", "cotton", "crystal", "dragon", "eagle", "ember", "falcon", "feather",
    "forest", "garden", "ginger", "glacier", "granite", "harbor", "hazel", "island", "ivory",
    "jasper", "kettle", "lantern", "lemon", "lilac", "marble", "meadow", "melon", "mirror",
    "monkey", "needle", "nickel", "ocean", "olive", "orange", "orchid", "otter", "panda", "pepper",
    "pigeon", "pillow", "planet", "potato", "purple", "rabbit", "raven", "ribbon", "river",
    "rocket", "saddle", "salmon", "silver", "spider", "spruce", "tiger", "tomato", "tulip",
    "velvet", "violet", "walnut", "willow", "winter", "yellow", "zebra",
];

/// What a key looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    /// 4 to 8 digits.
    Number,
    /// Two words, such as `amber-falcon` or `cedar river`.
    Words,
    /// A code such as `K7-QX2`.
    Code,
}

/// One fact: the sentence that states it, the question about it and its answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Fact {
    /// The sentence that states the key.
    pub needle: Vec<u32>,
    /// The question that follows the document.
    pub question: Vec<u32>,
    /// The answer (the key and a full stop).
    pub answer: Vec<u32>,
    /// The key, as text.
    pub key: String,
}

/// One synthetic retrieval sample.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrievalSample {
    /// BOS (if any), filler or prose with the fact's needle at a random depth.
    pub document: Vec<u32>,
    /// The fact: its question follows the document, its answer is what to predict.
    pub fact: Fact,
}

/// Generates facts (numbers of 4 to 8 digits, word pairs, codes such as `K7-QX2`, in ten
/// phrasings) hidden in filler, followed by a question whose answer is the key: the retrieval
/// skill the candidates must learn, at any length and depth.
pub struct RetrievalGenerator {
    encoder: Box<dyn TextEncoder>,
    fillers: Vec<Vec<u32>>,
    bos: Option<u32>,
}

impl std::fmt::Debug for RetrievalGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetrievalGenerator")
            .field("fillers", &self.fillers.len())
            .field("templates", &TEMPLATES.len())
            .finish()
    }
}

impl RetrievalGenerator {
    /// A generator with the built-in templates, fillers and key kinds.
    pub fn new(encoder: Box<dyn TextEncoder>, bos: Option<u32>) -> Result<Self> {
        let fillers = FILLERS
            .iter()
            .map(|f| encoder.encode(f))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            encoder,
            fillers,
            bos,
        })
    }

    /// The most tokens a sample's fixed parts take (BOS, the longest fact and its question).
    pub fn longest_fixed_part(&self) -> Result<usize> {
        let keys = ["99999999", "granite-granite", "W9-WW9-W9"];
        let mut longest = 0;
        for t in TEMPLATES {
            let question = self.encoder.encode(t.question)?;
            for key in keys {
                let needle = self.encoder.encode(&t.needle.replace("{key}", key))?;
                longest = longest.max(needle.len() + question.len());
            }
        }
        Ok(longest + usize::from(self.bos.is_some()))
    }

    /// Draws a key and a phrasing; `kinds` weighs numbers, word pairs and codes (see
    /// [`TrainConfig::key_kinds`]).
    pub fn fact(&self, kinds: [f64; 3], rng: &mut StdRng) -> Result<Fact> {
        let template = TEMPLATES.choose(rng).expect("templates are not empty");
        let total: f64 = kinds.iter().sum();
        let mut draw = rng.random_range(0.0..total.max(f64::MIN_POSITIVE));
        let mut kind = KeyKind::Number;
        for (k, w) in [KeyKind::Number, KeyKind::Words, KeyKind::Code]
            .into_iter()
            .zip(kinds)
        {
            if draw < w {
                kind = k;
                break;
            }
            draw -= w;
        }
        let key = random_key(kind, rng);
        Ok(Fact {
            needle: self
                .encoder
                .encode(&template.needle.replace("{key}", &key))?,
            question: self.encoder.encode(template.question)?,
            answer: self
                .encoder
                .encode(&template.answer.replace("{key}", &key))?,
            key,
        })
    }

    /// `len` tokens of one built-in filler paragraph, repeated from a random offset.
    pub fn filler(&self, len: usize, rng: &mut StdRng) -> Vec<u32> {
        let unit = self.fillers.choose(rng).expect("fillers are not empty");
        let offset = rng.random_range(0..unit.len());
        unit.iter()
            .copied()
            .cycle()
            .skip(offset)
            .take(len)
            .collect()
    }

    /// Draws a sample whose document and question together hold `tokens` tokens, in the built-in
    /// filler, with the fact outside the last `local` tokens (so a local window of that size cannot
    /// see it: only the candidates can carry it).
    pub fn sample(
        &self,
        tokens: usize,
        local: usize,
        kinds: [f64; 3],
        rng: &mut StdRng,
    ) -> Result<RetrievalSample> {
        let fact = self.fact(kinds, rng)?;
        let bos: Vec<u32> = self.bos.into_iter().collect();
        let fixed = bos.len() + fact.needle.len() + fact.question.len();
        let budget = tokens
            .checked_sub(fixed)
            .filter(|&b| b > 0)
            .ok_or_else(|| {
                FocusError::Data(format!(
                    "a retrieval sample needs more than {fixed} tokens, got {tokens} (raise min_sample_tokens)"
                ))
            })?;
        let filler = self.filler(budget, rng);
        let tail = local.saturating_sub(fact.question.len()).min(budget);
        let before = rng.random_range(0..=budget - tail);
        let mut document = Vec::with_capacity(tokens);
        document.extend_from_slice(&bos);
        document.extend_from_slice(&filler[..before]);
        document.extend_from_slice(&fact.needle);
        document.extend_from_slice(&filler[before..]);
        Ok(RetrievalSample { document, fact })
    }
}

fn random_key(kind: KeyKind, rng: &mut StdRng) -> String {
    let digit = |rng: &mut StdRng, low: u8| char::from(b'0' + rng.random_range(low..10u8));
    match kind {
        KeyKind::Number => {
            let digits = rng.random_range(4..=8);
            (0..digits)
                .map(|i| digit(rng, if i == 0 { 1 } else { 0 }))
                .collect()
        }
        KeyKind::Words => {
            let a = KEY_WORDS.choose(rng).expect("not empty");
            let b = KEY_WORDS.choose(rng).expect("not empty");
            let sep = if rng.random_bool(0.5) { "-" } else { " " };
            format!("{a}{sep}{b}")
        }
        KeyKind::Code => {
            let letter = |rng: &mut StdRng| char::from(b'A' + rng.random_range(0..26u8));
            let mut key = String::new();
            for i in 0..rng.random_range(5..=7) {
                if i == 2 || i == 5 {
                    key.push('-');
                }
                let c = if rng.random_bool(0.5) {
                    letter(rng)
                } else {
                    digit(rng, 0)
                };
                key.push(c);
            }
            key
        }
    }
}

/// Draws the examples of every micro-batch from the run's seed, step and index alone, so a resumed
/// run sees exactly the data it would have seen.
pub struct ExampleSampler {
    config: TrainConfig,
    bos: Option<u32>,
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
            config,
            bos,
            corpus,
            generator,
        })
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
        &corpus.tokens[start..start + chunk_size]
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
        FixedStrideChunker.plan(ids, &config, self.bos)
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
