//! Trains FocusLLM's candidate parameters on a frozen model and writes them as a safetensors
//! adapter: low-rank deltas by default (a few MB), or full projections with the official
//! `beacon_*` names (`--rank 0`). Data: the synthetic retrieval generator, text files (`--text`),
//! or both. Checkpoints go to `--run-dir`; running the same command again resumes there, and
//! Ctrl-C stops after writing a checkpoint.
//!
//! ```text
//! focusllm train --out adapter.safetensors
//! ```

use std::path::PathBuf;
use std::time::Instant;

use crate::cli::app::{AppError, BackendRunner, resolve_model, run_on};
use burn::backend::Autodiff;
use burn::module::AutodiffModule;
use burn::tensor::backend::Backend;
use clap::Parser;
use focusllm::backends::BackendKind;
use focusllm::core::train::{
    CandidateTrainer, ExampleSampler, LossTarget, RetrievalGenerator, TaskMix, TextCorpus,
    TrainConfig, TrainOutcome, Trainer,
};
use focusllm::core::{CancelToken, StepMode};
use focusllm::models::train::LlamaTrainer;
use focusllm::models::{AdapterInfo, CandidateAdapter, LoadOptions, load_model_with};
use indicatif::{ProgressBar, ProgressStyle};
use sha2::{Digest, Sha256};

#[derive(Parser, Debug)]
#[command(about = "Train FocusLLM candidate parameters (low-rank or full) on a frozen model")]
pub struct Args {
    /// GGUF file, HF model directory or Hugging Face id `org/name[@revision][:file.gguf]`
    /// (default: the SmolLM2-135M-Instruct GGUF).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Backend: cpu, wgpu or cuda.
    #[arg(long, default_value = "cpu")]
    backend: BackendKind,
    /// Device index (GPU backends).
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// Where the trained adapter is written (safetensors).
    #[arg(long)]
    out: PathBuf,
    /// Replace `--out` if it exists.
    #[arg(long)]
    overwrite: bool,
    /// Checkpoints and the loss log (`loss.jsonl`); an existing run there is resumed.
    #[arg(long, default_value = "runs/train")]
    run_dir: PathBuf,
    /// Rank of the low-rank deltas; 0 trains full projections (official layout).
    #[arg(long, default_value_t = 8)]
    rank: usize,
    /// Start from this adapter instead of a fresh one (a new run that continues an earlier one's
    /// training; `--rank` is then the adapter's own).
    #[arg(long)]
    init: Option<PathBuf>,
    /// Text files or directories (.txt, .md) for the continuation and repetition tasks.
    #[arg(long)]
    text: Vec<PathBuf>,
    /// Share of synthetic retrieval samples when `--text` is given.
    #[arg(long, default_value_t = 0.8)]
    synthetic_ratio: f64,
    /// Optimiser steps.
    #[arg(long, default_value_t = 240)]
    steps: usize,
    /// Samples per micro-batch.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Micro-batches per optimiser step (gradient accumulation).
    #[arg(long, default_value_t = 1)]
    accum: usize,
    /// Peak learning rate.
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Warm-up steps.
    #[arg(long, default_value_t = 20)]
    warmup: usize,
    /// Final learning rate as a share of the peak (linear decay).
    #[arg(long, default_value_t = 0.1)]
    final_lr_ratio: f64,
    /// AdamW weight decay.
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f64,
    /// Global gradient-norm clip (0: none).
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    /// Seed of the data and the initialisation.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Shortest sample (tokens).
    #[arg(long, default_value_t = 256)]
    min_tokens: usize,
    /// Longest sample (tokens).
    #[arg(long, default_value_t = 640)]
    max_tokens: usize,
    /// Chunk sizes drawn per sample, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "64,128,256")]
    chunk_sizes: Vec<usize>,
    /// Dynamic-prompt cap.
    #[arg(long, default_value_t = 48)]
    prompt_cap: usize,
    /// Shortest local span.
    #[arg(long, default_value_t = 30)]
    min_local: usize,
    /// Longest local span.
    #[arg(long, default_value_t = 128)]
    max_local: usize,
    /// Loss: `local` (the paper: the local tokens after the cut, candidates fixed; decode with
    /// `--step-mode frozen`), `next` (the reference: one token at a random cut; exact decoding) or
    /// `steps` (exact decoding of several tokens: a retrieval answer whole, up to `--max-targets`
    /// tokens of text, each through candidates refreshed after the ones before it).
    #[arg(long, default_value = "local", value_parser = ["local", "next", "steps"])]
    loss: String,
    /// Most tokens scored per example with `--loss local` or `--loss steps`.
    #[arg(long, default_value_t = 8)]
    max_targets: usize,
    /// Probability of the repetition task (else continuation / retrieval).
    #[arg(long, default_value_t = 0.2)]
    repetition: f64,
    /// Both tasks on every sample, losses summed (instead of one drawn at random).
    #[arg(long)]
    sum_tasks: bool,
    /// Longest continuation/repetition sample cut from `--text` (retrieval samples can be longer).
    #[arg(long, default_value_t = 2048)]
    max_text_tokens: usize,
    /// Share of retrieval samples whose haystack is `--text` prose (else the built-in filler).
    #[arg(long, default_value_t = 0.5)]
    prose_haystack: f64,
    /// Distinct prose blocks (per chunk size) that prose haystacks are made of.
    #[arg(long, default_value_t = 32)]
    prose_blocks: usize,
    /// Weights of the retrieval keys' kinds: numbers (4–8 digits), word pairs, codes (`K7-QX2`).
    #[arg(
        long,
        value_delimiter = ',',
        num_args = 3,
        default_value = "0.6,0.2,0.2"
    )]
    key_kinds: Vec<f64>,
    /// Memory for the pool of recent chunk caches (MiB, f32): recurring haystack chunks are
    /// computed once.
    #[arg(long, default_value_t = 4096)]
    pool_mib: usize,
    /// Checkpoint every this many steps.
    #[arg(long, default_value_t = 20)]
    checkpoint_every: usize,
    /// Write the adapter from the run's latest checkpoint without training further (for a run
    /// stopped early; the same settings as the run are needed to find it).
    #[arg(long)]
    export_only: bool,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

impl Args {
    fn config(&self) -> TrainConfig {
        TrainConfig {
            steps: self.steps,
            batch_size: self.batch,
            grad_accum: self.accum,
            lr: self.lr,
            warmup_steps: self.warmup,
            final_lr_ratio: self.final_lr_ratio,
            weight_decay: self.weight_decay,
            clip_norm: (self.clip > 0.0).then_some(self.clip),
            seed: self.seed,
            min_sample_tokens: self.min_tokens,
            max_sample_tokens: self.max_tokens,
            chunk_sizes: self.chunk_sizes.clone(),
            prompt_cap: self.prompt_cap,
            min_local: self.min_local,
            max_local: self.max_local,
            target: match self.loss.as_str() {
                "next" => LossTarget::NextToken,
                "steps" => LossTarget::ExactSteps {
                    max: self.max_targets,
                },
                _ => LossTarget::LocalTokens {
                    max: self.max_targets,
                },
            },
            tasks: if self.sum_tasks {
                TaskMix::Sum
            } else {
                TaskMix::Random {
                    repetition: self.repetition,
                }
            },
            synthetic_ratio: if self.text.is_empty() {
                1.0
            } else {
                self.synthetic_ratio
            },
            checkpoint_every: self.checkpoint_every,
            max_text_tokens: self.max_text_tokens,
            prose_haystack: if self.text.is_empty() {
                0.0
            } else {
                self.prose_haystack
            },
            prose_blocks: self.prose_blocks,
            key_kinds: [self.key_kinds[0], self.key_kinds[1], self.key_kinds[2]],
        }
    }
}

impl BackendRunner for &Args {
    type Output = Result<(), AppError>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        if self.out.exists() && !self.overwrite {
            return Err(format!(
                "{} exists; pass --overwrite to replace it, or choose another --out",
                self.out.display()
            )
            .into());
        }
        if self.clip < 0.0 {
            return Err(format!("--clip {} must be >= 0 (0 turns clipping off)", self.clip).into());
        }
        if let Some(init) = &self.init {
            record_init(init, &self.run_dir)?;
        }
        let config = self.config();
        config.validate()?;
        let path = resolve_model(self.model.clone())?;
        let loaded = load_model_with::<Autodiff<B>>(&path, &device, &LoadOptions::default())?;
        let tokenizer = loaded.tokenizer.ok_or("the model has no tokenizer")?;
        let model = LlamaTrainer::new(loaded.model).with_chunk_pool(self.pool_mib << 20);
        let bos = model.spec().bos_id;
        let params = match &self.init {
            Some(init) => CandidateAdapter::load(init, model.model())?.0,
            None if self.rank == 0 => CandidateAdapter::full(model.model()),
            None => CandidateAdapter::low_rank(model.model(), self.rank, self.seed)?,
        };
        let corpus = if self.text.is_empty() {
            None
        } else {
            let corpus = TextCorpus::from_paths(&self.text, &tokenizer)?;
            eprintln!("corpus: {} files, {} tokens", corpus.files(), corpus.len());
            Some(corpus)
        };
        let generator = (config.synthetic_ratio > 0.0)
            .then(|| RetrievalGenerator::new(Box::new(tokenizer.clone()), bos))
            .transpose()?;
        let sampler = ExampleSampler::new(config.clone(), bos, corpus, generator)?;
        let mut trainer = Trainer::new(&model, params, sampler)?.with_checkpoints(&self.run_dir)?;
        if trainer.step() > 0 {
            eprintln!(
                "resuming {} at step {}/{}",
                self.run_dir.display(),
                trainer.step(),
                config.steps
            );
        }
        let cancel = CancelToken::new();
        let handler = cancel.clone();
        ctrlc::set_handler(move || handler.cancel())?;
        trainer.set_cancel_token(cancel);
        let bar = if self.quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(config.steps as u64)
        };
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  [{elapsed} < {eta}]")
                .expect("valid template"),
        );
        bar.set_position(trainer.step() as u64);
        let start = Instant::now();
        let logged = bar.clone();
        trainer.on_progress(move |p| {
            logged.set_position(p.step as u64);
            logged.set_message(format!(
                "loss {:.3}  acc {:.2}  {:.0} tok/s read",
                p.loss, p.accuracy, p.tokens_per_s
            ));
        });
        let outcome = if self.export_only {
            if trainer.step() == 0 {
                return Err(
                    format!("no checkpoint to export in {}", self.run_dir.display()).into(),
                );
            }
            TrainOutcome::Finished
        } else {
            trainer.run()?
        };
        bar.finish();
        let (tokens, seconds) = trainer.totals();
        let history = trainer.history();
        let tail = &history[history.len().saturating_sub(20)..];
        let mean = |f: fn(&focusllm::core::train::StepRecord) -> f64| {
            tail.iter().map(f).sum::<f64>() / tail.len().max(1) as f64
        };
        eprintln!(
            "{} steps, {} samples, {tokens} tokens decoded, {:.0} s in all ({:.0} s this run); last {} steps: loss {:.3}, accuracy {:.2}",
            trainer.step(),
            trainer.step() * config.batch_size * config.grad_accum,
            seconds,
            start.elapsed().as_secs_f64(),
            tail.len(),
            mean(|r| r.loss),
            mean(|r| r.accuracy)
        );
        if outcome == TrainOutcome::Cancelled {
            eprintln!(
                "stopped; run the same command again to resume from {}",
                self.run_dir.display()
            );
            return Ok(());
        }
        let info = AdapterInfo {
            step_mode: Some(
                match config.target.step_mode() {
                    StepMode::FrozenCandidates => "frozen",
                    StepMode::Exact => "exact",
                }
                .into(),
            ),
            training: Some(format!(
                "{} steps x {} samples, {tokens} tokens, {seconds:.0} s; {}; config {}",
                trainer.step(),
                config.batch_size * config.grad_accum,
                if self.text.is_empty() {
                    "synthetic retrieval data"
                } else {
                    "text + synthetic retrieval data"
                },
                serde_json::to_string(&config)?
            )),
            base_model: path.file_name().map(|n| n.to_string_lossy().into_owned()),
            // Read long inputs the way it was trained: its largest chunks, its prompt cap, and a
            // local window as long as its longest local span.
            local_window: Some(config.max_local),
            chunk_size: config.chunk_sizes.iter().copied().max(),
            prompt_cap: Some(config.prompt_cap),
        };
        trainer.into_params().valid().save(&self.out, &info)?;
        eprintln!("wrote {}", self.out.display());
        Ok(())
    }
}

/// Runs the job: trains and writes the adapter.
pub fn run(args: Args) -> Result<(), AppError> {
    run_on(args.backend, args.device, &args)
        .map_err(AppError::from)
        .and_then(|r| r)
}

/// The file in a run directory that records which adapter the run started from (`--init`), as
/// its sha256: running the same command again then resumes, and another `--init` is refused.
const INIT_RECORD: &str = "init.sha256";

/// Checks `--init` against the run directory: a fresh directory records the adapter's digest; a
/// directory holding a run resumes only if that run started from the same adapter (the checkpoint
/// already holds the continued parameters, so the file is not read again for training).
fn record_init(init: &std::path::Path, run_dir: &std::path::Path) -> Result<(), AppError> {
    let bytes = std::fs::read(init).map_err(|e| format!("--init {}: {e}", init.display()))?;
    let digest = format!("{:x}", Sha256::digest(&bytes));
    let record = run_dir.join(INIT_RECORD);
    if !run_dir.join("latest").exists() {
        std::fs::create_dir_all(run_dir)
            .and_then(|()| std::fs::write(&record, format!("{digest}\n")))
            .map_err(|e| format!("{}: {e}", record.display()))?;
        return Ok(());
    }
    let recorded = std::fs::read_to_string(&record).unwrap_or_default();
    if recorded.trim() == digest {
        eprintln!(
            "{} holds a run started from {}: resuming it",
            run_dir.display(),
            init.display()
        );
        return Ok(());
    }
    let started = if recorded.is_empty() {
        format!("has no {INIT_RECORD}, so its start is unknown")
    } else {
        format!("started from an adapter with sha256 {}", recorded.trim())
    };
    Err(format!(
        "{} holds a run that {started}; --init {} (sha256 {digest}) would start another: \
         give a fresh --run-dir, or drop --init to resume the run there",
        run_dir.display(),
        init.display()
    )
    .into())
}
