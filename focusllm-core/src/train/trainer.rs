//! The training loop: only the candidate parameters learn, with AdamW, a warm-up/decay schedule,
//! global-norm clipping, gradient accumulation, checkpoints that resume exactly, a loss log, progress
//! reports and cancellation.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsAccumulator, GradientsParams, Optimizer};
use burn::record::Recorder;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{ElementConversion, Tensor};
use serde::{Deserialize, Serialize};

use crate::control::CancelToken;
use crate::error::{FocusError, Result};
use crate::model::ModelSpec;
use crate::train::checkpoint::{self, CheckpointRecorder, TrainState};
use crate::train::config::TrainConfig;
use crate::train::example::{TaskKind, TrainExample};
use crate::train::grads::{global_norm, scale_grads};
use crate::train::sampler::ExampleSampler;

/// A model family's side of training: the loss of one example with given candidate parameters.
/// The base model is frozen: only `Params` may carry gradients.
pub trait CandidateTrainer<B: AutodiffBackend> {
    /// The trainable candidate parameters (full projections or low-rank deltas).
    type Params: AutodiffModule<B>;

    /// The model's vocabulary and special tokens.
    fn spec(&self) -> ModelSpec;

    /// Runs `example` (chunk passes, candidates, main pass) and returns its mean next-token loss
    /// over `example.targets`, with the autodiff graph back to `params`.
    fn example_loss(&self, params: &Self::Params, example: &TrainExample)
    -> Result<ExampleLoss<B>>;
}

/// One example's loss.
#[derive(Debug, Clone)]
pub struct ExampleLoss<B: Backend> {
    /// Mean negative log-likelihood of the targets, shape `[1]`.
    pub loss: Tensor<B, 1>,
    /// Targets that were the argmax of their logits.
    pub correct: usize,
    /// Targets scored.
    pub targets: usize,
}

/// One optimiser step, as the loss log stores it (one JSON object per line).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The step (0-based).
    pub step: usize,
    /// Learning rate used.
    pub lr: f64,
    /// Mean example loss.
    pub loss: f64,
    /// Share of targets predicted right (argmax).
    pub accuracy: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Tokens read in this step (chunk passes and main passes, counting every chunk, also those a
    /// trainer took from a cache).
    pub tokens: usize,
    /// Wall time of the step in seconds.
    pub seconds: f64,
    /// Loss and accuracy per task (retrieval, continuation, repetition), to tell what improves.
    #[serde(default)]
    pub by_task: Vec<TaskStat>,
}

/// One task's share of a step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStat {
    /// The task.
    pub task: TaskKind,
    /// Examples of it in the step.
    pub examples: usize,
    /// Their mean loss.
    pub loss: f64,
    /// Share of their targets predicted right.
    pub accuracy: f64,
}

/// A progress report, after every step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainProgress {
    /// Steps done.
    pub step: usize,
    /// Steps in the run.
    pub steps: usize,
    /// This step's mean loss.
    pub loss: f64,
    /// This step's target accuracy.
    pub accuracy: f64,
    /// Decoded tokens per second in this step.
    pub tokens_per_s: f64,
}

/// How a [`Trainer::run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainOutcome {
    /// Every step of the config is done.
    Finished,
    /// Stopped by the cancel token after a checkpoint (run again to resume).
    Cancelled,
}

/// A progress observer.
type ProgressFn<'m> = Box<dyn FnMut(&TrainProgress) + 'm>;

/// Trains candidate parameters.
///
/// ```no_run
/// # fn demo<B: burn::tensor::backend::AutodiffBackend, T: focusllm_core::train::CandidateTrainer<B>>(
/// #     model: &T, params: T::Params, sampler: focusllm_core::train::ExampleSampler,
/// # ) -> focusllm_core::Result<()> {
/// use focusllm_core::train::Trainer;
/// let mut trainer = Trainer::new(model, params, sampler)?.with_checkpoints("runs/smollm2")?;
/// trainer.on_progress(|p| eprintln!("step {}/{} loss {:.3}", p.step, p.steps, p.loss));
/// trainer.run()?;
/// let trained = trainer.into_params();
/// # Ok(()) }
/// ```
pub struct Trainer<'m, B: AutodiffBackend, T: CandidateTrainer<B>> {
    model: &'m T,
    sampler: ExampleSampler,
    config: TrainConfig,
    params: T::Params,
    optim: OptimizerAdaptor<AdamW, T::Params, B>,
    step: usize,
    tokens: u64,
    seconds: f64,
    history: Vec<StepRecord>,
    checkpoints: Option<PathBuf>,
    progress: Option<ProgressFn<'m>>,
    cancel: Option<CancelToken>,
}

impl<'m, B: AutodiffBackend, T: CandidateTrainer<B>> Trainer<'m, B, T> {
    /// A trainer at step 0. `params` are the initial candidate parameters.
    pub fn new(model: &'m T, params: T::Params, sampler: ExampleSampler) -> Result<Self> {
        let config = sampler.config().clone();
        config.validate()?;
        // burn's own clipping works per parameter tensor; the global norm is clipped here instead.
        let optim = AdamWConfig::new()
            .with_weight_decay(config.weight_decay as f32)
            .init::<B, T::Params>();
        Ok(Self {
            model,
            sampler,
            config,
            params,
            optim,
            step: 0,
            tokens: 0,
            seconds: 0.0,
            history: Vec::new(),
            checkpoints: None,
            progress: None,
            cancel: None,
        })
    }

    /// Keeps checkpoints and the loss log (`loss.jsonl`) in `dir`. If `dir` already holds a
    /// checkpoint of a run with the same config, training resumes from it.
    pub fn with_checkpoints(mut self, dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).map_err(|source| FocusError::Io {
            path: dir.clone(),
            source,
        })?;
        if let Some(latest) = checkpoint::latest_checkpoint(&dir)? {
            self.resume(&dir, &latest)?;
        } else {
            // A fresh run: any stale log from an unfinished first checkpoint is dropped.
            checkpoint::truncate_log(&dir.join(checkpoint::LOG), 0)?;
        }
        self.checkpoints = Some(dir);
        Ok(self)
    }

    /// Calls `f` after every step.
    pub fn on_progress(&mut self, f: impl FnMut(&TrainProgress) + 'm) {
        self.progress = Some(Box::new(f));
    }

    /// Stops [`Trainer::run`] at the next step boundary (after writing a checkpoint) when cancelled.
    pub fn set_cancel_token(&mut self, token: CancelToken) {
        self.cancel = Some(token);
    }

    /// Steps done so far (including those of a resumed run).
    pub fn step(&self) -> usize {
        self.step
    }

    /// Every step's record (including those of a resumed run, read back from the log).
    pub fn history(&self) -> &[StepRecord] {
        &self.history
    }

    /// The run's config.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// The current candidate parameters.
    pub fn params(&self) -> &T::Params {
        &self.params
    }

    /// The trained candidate parameters.
    pub fn into_params(self) -> T::Params {
        self.params
    }

    /// Trains until the config's last step or until cancelled, writing checkpoints on the way.
    pub fn run(&mut self) -> Result<TrainOutcome> {
        while self.step < self.config.steps {
            if self.cancelled() {
                self.save_checkpoint()?;
                return Ok(TrainOutcome::Cancelled);
            }
            self.train_step()?;
            if self.step.is_multiple_of(self.config.checkpoint_every)
                || self.step == self.config.steps
            {
                self.save_checkpoint()?;
            }
        }
        Ok(TrainOutcome::Finished)
    }

    fn cancelled(&self) -> bool {
        self.cancel.as_ref().is_some_and(CancelToken::is_cancelled)
    }

    /// One optimiser step over `batch_size × grad_accum` samples. Each example is back-propagated
    /// on its own (the gradients are summed), so memory holds one example's graph at a time.
    pub fn train_step(&mut self) -> Result<StepRecord> {
        let start = Instant::now();
        let samples = (self.config.batch_size * self.config.grad_accum) as f64;
        let mut accumulator = GradientsAccumulator::<T::Params>::new();
        let (mut loss_sum, mut examples, mut correct, mut targets, mut tokens) = (0.0, 0, 0, 0, 0);
        // Per task: examples, loss sum, correct targets, targets.
        let mut by_task: Vec<(TaskKind, usize, f64, usize, usize)> = Vec::new();
        for micro in 0..self.config.grad_accum {
            for example in self.sampler.micro_batch(self.step, micro)? {
                let out = self.model.example_loss(&self.params, &example)?;
                let value: f64 = out.loss.clone().into_scalar().elem();
                if !value.is_finite() {
                    return Err(FocusError::Decoder(format!(
                        "step {}: the loss is {value} ({:?} example of {} tokens)",
                        self.step,
                        example.task,
                        example.ids.len()
                    )));
                }
                loss_sum += value;
                examples += 1;
                match by_task.iter_mut().find(|t| t.0 == example.task) {
                    Some(t) => {
                        t.1 += 1;
                        t.2 += value;
                        t.3 += out.correct;
                        t.4 += out.targets;
                    }
                    None => by_task.push((example.task, 1, value, out.correct, out.targets)),
                }
                correct += out.correct;
                targets += out.targets;
                tokens += example.decoded_tokens();
                let grads =
                    GradientsParams::from_grads((out.loss / samples).backward(), &self.params);
                accumulator.accumulate(&self.params, grads);
            }
        }
        let mut grads = accumulator.grads();
        let grad_norm = global_norm::<B, _>(&self.params, &grads);
        if !grad_norm.is_finite() {
            // An update from it would write NaN into every parameter (and the next checkpoint).
            return Err(FocusError::Decoder(format!(
                "step {}: the gradient norm is {grad_norm}; the parameters were left unchanged",
                self.step
            )));
        }
        if let Some(max) = self.config.clip_norm
            && grad_norm > max
        {
            scale_grads::<B, _>(&self.params, &mut grads, max / (grad_norm + 1e-6));
        }
        let lr = self.config.lr_at(self.step);
        self.params = self.optim.step(lr, self.params.clone(), grads);
        let seconds = start.elapsed().as_secs_f64();
        let record = StepRecord {
            step: self.step,
            lr,
            loss: loss_sum / examples.max(1) as f64,
            accuracy: correct as f64 / targets.max(1) as f64,
            grad_norm,
            tokens,
            seconds,
            by_task: by_task
                .into_iter()
                .map(|(task, n, loss, correct, targets)| TaskStat {
                    task,
                    examples: n,
                    loss: loss / n as f64,
                    accuracy: correct as f64 / targets.max(1) as f64,
                })
                .collect(),
        };
        self.step += 1;
        self.tokens += tokens as u64;
        self.seconds += seconds;
        if let Some(dir) = &self.checkpoints {
            checkpoint::append_log(&dir.join(checkpoint::LOG), &record)?;
        }
        self.history.push(record.clone());
        if let Some(progress) = self.progress.as_mut() {
            progress(&TrainProgress {
                step: self.step,
                steps: self.config.steps,
                loss: record.loss,
                accuracy: record.accuracy,
                tokens_per_s: tokens as f64 / seconds.max(1e-9),
            });
        }
        Ok(record)
    }

    /// Tokens decoded and seconds spent over the whole run (resumed parts included).
    pub fn totals(&self) -> (u64, f64) {
        (self.tokens, self.seconds)
    }

    /// Writes a checkpoint now (a no-op without a checkpoint directory). The step's files go to a
    /// fresh `step-N` directory and `latest` is switched to it last, so an interruption at any point
    /// leaves the previous checkpoint whole.
    pub fn save_checkpoint(&self) -> Result<()> {
        let Some(dir) = &self.checkpoints else {
            return Ok(());
        };
        let state = TrainState {
            step: self.step,
            tokens: self.tokens,
            seconds: self.seconds,
            params: self.params.num_params(),
            config: self.config.clone(),
        };
        checkpoint::write(dir, &state, |staging| {
            let recorder = CheckpointRecorder::new();
            self.params
                .clone()
                .save_file(staging.join("params"), &recorder)
                .map_err(|e| checkpoint::error(staging, e))?;
            Recorder::<B>::record(&recorder, self.optim.to_record(), staging.join("optimizer"))
                .map_err(|e| checkpoint::error(staging, e))
        })
    }

    fn resume(&mut self, dir: &Path, name: &str) -> Result<()> {
        let source = dir.join(name);
        let state = checkpoint::read_state(&source)?;
        if state.config != self.config {
            return Err(FocusError::Checkpoint(format!(
                "{} was written by a run with another config ({}); use another directory or the same settings",
                dir.display(),
                checkpoint::config_diff(&state.config, &self.config)
            )));
        }
        if state.params != self.params.num_params() {
            return Err(FocusError::Checkpoint(format!(
                "{} holds candidate parameters of {} values, the run's have {} (another rank, \
                 kind or model); use another directory",
                dir.display(),
                state.params,
                self.params.num_params()
            )));
        }
        let device = self.device();
        let recorder = CheckpointRecorder::new();
        self.params = self
            .params
            .clone()
            .load_file(source.join("params"), &recorder, &device)
            .map_err(|e| checkpoint::error(&source, e))?;
        let optim_record = Recorder::<B>::load(&recorder, source.join("optimizer"), &device)
            .map_err(|e| checkpoint::error(&source, e))?;
        self.optim = self.optim.clone().load_record(optim_record);
        self.step = state.step;
        self.tokens = state.tokens;
        self.seconds = state.seconds;
        let log = dir.join(checkpoint::LOG);
        checkpoint::truncate_log(&log, state.step)?;
        self.history = checkpoint::read_log(&log)?;
        Ok(())
    }

    fn device(&self) -> B::Device {
        self.params.devices().into_iter().next().unwrap_or_default()
    }
}
