//! Prefill and decoding speed and memory, FocusLLM against plain full attention in the same library,
//! side by side in one process (ratios are what to read on a noisy machine).
//!
//! ```text
//! focusllm bench --lengths 4096,8192,16384,32768 --json
//! ```

use std::time::Instant;

use crate::cli::app::{AppError, BackendRunner, EngineArgs, ProgressView, run_on};
use crate::cli::host::{CpuShares, CpuTimes};
use crate::cli::memory::{io_bytes, peak_rss_mb, release_free_memory, reset_peak_rss, rss_mb};
use crate::cli::passkey::passkey_prompt;
use burn::tensor::backend::Backend;
use clap::Parser;
use focusllm::core::{
    CancelToken, FocusEngine, FocusError, PrefillCheckpoint, ShardedDecoder, Stage, argmax,
};
use focusllm::models::Kernels;
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "FocusLLM vs plain attention: prefill time, time per token, peak memory")]
pub struct Args {
    #[command(flatten)]
    engine: EngineArgs,
    /// Input lengths in tokens, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "4096,8192,16384,32768,65536,131072"
    )]
    lengths: Vec<usize>,
    /// Methods: focus, plain.
    #[arg(long, value_delimiter = ',', default_value = "focus,plain")]
    methods: Vec<String>,
    /// Plain attention is skipped above this length (quadratic time).
    #[arg(long, default_value_t = 32768)]
    plain_max: usize,
    /// Generated tokens timed per row (after the prefill).
    #[arg(long, default_value_t = 3)]
    steps: usize,
    /// Also compare chunk batch 1 with `--batch` at this length (0: skip).
    #[arg(long, default_value_t = 16384)]
    batch_compare: usize,
    /// Measure every row with the fused CPU kernels and with burn's operations, side by side.
    #[arg(long)]
    compare_kernels: bool,
    /// Print one JSON object instead of tables.
    #[arg(long)]
    json: bool,
    /// Cancel each FocusLLM prefill once this many chunks are decoded, and report the resident
    /// memory at the cancel and a second after it (no step is timed then).
    #[arg(long)]
    cancel_after: Option<usize>,
    /// Keep the candidates of every decoded chunk batch of frozen-mode FocusLLM rows in this
    /// directory (a subdirectory per length and batch size), and resume a row's prefill from what
    /// an earlier run left there: a row too long for one sitting is measured over several. The
    /// row's prefill time then adds the earlier runs' decoding time (`resumed`).
    #[arg(long)]
    checkpoint: Option<std::path::PathBuf>,
}

#[derive(Serialize, Debug, Clone)]
pub struct Row {
    method: String,
    kernels: String,
    /// Precision the prefills' products ran in (`--matmul`, where the fused CPU kernels apply):
    /// `f32` or `bf16`.
    matmul: String,
    /// `quantized` or `f32` (`--weights`), and the bytes the model's weights take in MiB.
    weights: String,
    weights_mb: f64,
    /// How a decoding step's activations meet quantized weights (`--activations`): `f32` or
    /// `int8` (`f32` for f32 weights).
    activations: String,
    tokens: usize,
    prefill_s: f64,
    tokens_per_s: f64,
    step_s: f64,
    /// Generated tokens per second (1 / step_s).
    generated_per_s: f64,
    /// Analytic FLOPs of the prefill / prefill time.
    prefill_gflops: f64,
    /// Analytic FLOPs of the steps / their time.
    step_gflops: f64,
    peak_rss_mb: Option<f64>,
    chunk_batch: usize,
    chunk_cache_mb: f64,
    /// Bytes through the machine's network interfaces over the prefill and per step (loopback
    /// included, `/proc/net/dev`): what `--devices ws://..` moves.
    io_prefill: Option<IoBytes>,
    io_per_step: Option<IoBytes>,
    /// Who had the machine's CPUs over the prefill and over the timed steps (`/proc`): this
    /// process, other programs, the hypervisor (steal) or nobody. A slow row with a large
    /// `others` or `steal` share ran on a busy machine.
    cpu_prefill: Option<CpuShares>,
    cpu_steps: Option<CpuShares>,
    /// With `--cancel-after`: the chunks decoded when the prefill was cancelled, and the resident
    /// memory before the prefill, at the cancel, and a second after the cancelled session was
    /// dropped and the allocator's free memory handed back.
    cancelled: Option<Cancelled>,
    /// With `--checkpoint`: what the prefill read back from earlier runs instead of decoding.
    resumed: Option<ResumedRow>,
}

/// The part of a prefill that earlier runs decoded (`--checkpoint`).
#[derive(Serialize, Debug, Clone, Copy)]
pub struct ResumedRow {
    batches: usize,
    chunks: usize,
    /// Their decoding time in the earlier runs (included in `prefill_s`).
    seconds: f64,
    /// This run's own prefill time.
    this_run_s: f64,
}

/// A prefill cancelled by `--cancel-after`.
#[derive(Serialize, Debug, Clone, Copy)]
pub struct Cancelled {
    chunks_done: usize,
    chunks_total: usize,
    rss_before_mb: Option<f64>,
    rss_at_cancel_mb: Option<f64>,
    rss_after_mb: Option<f64>,
}

/// Bytes received and sent through the machine's network interfaces over a span of work.
#[derive(Serialize, Debug, Clone, Copy)]
pub struct IoBytes {
    received: u64,
    sent: u64,
}

impl IoBytes {
    /// The bytes moved between two [`io_bytes`] readings, divided by `n`.
    fn between(before: Option<(u64, u64)>, after: Option<(u64, u64)>, n: usize) -> Option<Self> {
        let ((r0, w0), (r1, w1)) = (before?, after?);
        let n = n.max(1) as u64;
        Some(Self {
            received: r1.saturating_sub(r0) / n,
            sent: w1.saturating_sub(w0) / n,
        })
    }
}

/// What a bench row runs: the model (on the main device), the adapter applied to it, the device.
struct Target<'a, B: Backend> {
    model: &'a focusllm::models::LlamaModel<B>,
    /// What the candidates depend on besides the input (model file, adapter, dtypes), for
    /// `--checkpoint`.
    identity: &'a str,
    adapter: Option<&'a std::path::Path>,
    device: &'a B::Device,
}

// By hand: the derives would ask `B: Copy`, and only references are copied.
impl<B: Backend> Clone for Target<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<B: Backend> Copy for Target<'_, B> {}

struct Measured {
    row: Row,
    logits: Vec<Vec<f32>>,
}

impl Args {
    fn measure<B: Backend>(
        &self,
        target: Target<'_, B>,
        config: &focusllm::core::FocusConfig,
        ids: &[u32],
        method: &str,
        batch: usize,
    ) -> Result<Measured, AppError> {
        let Target {
            model,
            identity,
            adapter,
            device,
        } = target;
        // Focus rows always chunk (threshold 1) so that short inputs are measured too.
        let threshold = if method == "plain" { usize::MAX } else { 1 };
        let config = config
            .clone()
            .with_plain_threshold(Some(threshold))
            .with_chunk_batch_size(batch);
        let shards = self.engine.chunk_shards(model, adapter, device)?;
        let local = ShardedDecoder::new(shards.iter().collect(), device.clone())?;
        let engine = FocusEngine::with_decoders(&local, model, config)?;
        let view = ProgressView::new(&format!("{method} {}", ids.len()), self.engine.quiet);
        let cancel_at = self.cancel_after.filter(|_| method == "focus");
        let token = CancelToken::new();
        let at_cancel = std::sync::Mutex::new(None);
        let mut session = engine.session();
        if let Some(dir) = self.checkpoint.as_ref().filter(|_| method == "focus") {
            let dir = dir.join(format!("{}-tokens-batch-{batch}", ids.len()));
            session.set_checkpoint(PrefillCheckpoint::new(dir, identity, device)?);
        }
        session.set_cancel_token(token.clone());
        session.on_progress(|p| {
            view.update(p);
            if let Some(n) = cancel_at
                && p.stage == Stage::Chunks
                && p.done >= n
                && !token.is_cancelled()
            {
                *at_cancel.lock().unwrap() = Some((p.done, p.total, rss_mb()));
                token.cancel();
            }
        });
        release_free_memory();
        let rss_before = rss_mb();
        reset_peak_rss();
        let work = model.work();
        let (start, flops, io, cpu) = (Instant::now(), work.get(), io_bytes(), CpuTimes::now());
        let prefill = session.prefill(ids);
        let this_run_s = start.elapsed().as_secs_f64();
        let cpu_prefill = CpuShares::between(cpu, CpuTimes::now());
        let resumed = session.resumed().map(|r| ResumedRow {
            batches: r.batches,
            chunks: r.chunks,
            seconds: r.seconds,
            this_run_s,
        });
        let prefill_s = this_run_s + resumed.map_or(0.0, |r| r.seconds);
        if let (Err(FocusError::Cancelled), Some((done, total, rss))) =
            (&prefill, *at_cancel.lock().unwrap())
        {
            let cache = session.chunk_cache_bytes();
            drop(session);
            release_free_memory();
            std::thread::sleep(std::time::Duration::from_secs(1));
            let cancelled = Cancelled {
                chunks_done: done,
                chunks_total: total,
                rss_before_mb: rss_before,
                rss_at_cancel_mb: rss,
                rss_after_mb: rss_mb(),
            };
            eprintln!(
                "{} tokens: cancelled after {done} of {total} chunks ({prefill_s:.1} s); resident \
                 {:.0} MiB before the prefill, {:.0} MiB at the cancel, {:.0} MiB a second after \
                 (caches left: {cache} bytes)",
                ids.len(),
                rss_before.unwrap_or(f64::NAN),
                rss.unwrap_or(f64::NAN),
                cancelled.rss_after_mb.unwrap_or(f64::NAN),
            );
            return Ok(Measured {
                row: Row {
                    method: method.to_string(),
                    kernels: format!("{:?}", model.kernels()).to_lowercase(),
                    matmul: format!("{:?}", model.matmul_precision_in_effect()).to_lowercase(),
                    weights: weights_kind(model),
                    weights_mb: model.weight_bytes() as f64 / (1024.0 * 1024.0),
                    activations: activations_kind(model),
                    tokens: ids.len(),
                    prefill_s,
                    tokens_per_s: f64::NAN,
                    step_s: f64::NAN,
                    generated_per_s: f64::NAN,
                    prefill_gflops: f64::NAN,
                    step_gflops: f64::NAN,
                    peak_rss_mb: peak_rss_mb(),
                    chunk_batch: batch,
                    chunk_cache_mb: cache as f64 / (1024.0 * 1024.0),
                    io_prefill: None,
                    io_per_step: None,
                    cpu_prefill,
                    cpu_steps: None,
                    cancelled: Some(cancelled),
                    resumed,
                },
                logits: Vec::new(),
            });
        }
        let mut logits = vec![prefill?];
        let prefill_flops = work.get() - flops;
        let io_prefill = IoBytes::between(io, io_bytes(), 1);
        // As `Session::generate` does: room for the steps' tokens before the clock starts.
        session.reserve(self.steps);
        let (start, flops, io, cpu) = (Instant::now(), work.get(), io_bytes(), CpuTimes::now());
        for _ in 0..self.steps {
            let token = argmax(logits.last().expect("prefill logits"))?;
            logits.push(session.step(token)?);
        }
        let io_per_step = IoBytes::between(io, io_bytes(), self.steps);
        let cpu_steps = CpuShares::between(cpu, CpuTimes::now());
        let steps_s = start.elapsed().as_secs_f64();
        let step_flops = work.get() - flops;
        let step_s = steps_s / self.steps.max(1) as f64;
        let chunk_cache_mb = session.chunk_cache_bytes() as f64 / (1024.0 * 1024.0);
        let peak = peak_rss_mb();
        drop(session);
        view.finish();
        let row = Row {
            method: method.to_string(),
            kernels: format!("{:?}", model.kernels()).to_lowercase(),
            matmul: format!("{:?}", model.matmul_precision_in_effect()).to_lowercase(),
            weights: weights_kind(model),
            weights_mb: model.weight_bytes() as f64 / (1024.0 * 1024.0),
            activations: activations_kind(model),
            tokens: ids.len(),
            prefill_s,
            tokens_per_s: ids.len() as f64 / prefill_s,
            step_s,
            generated_per_s: 1.0 / step_s,
            prefill_gflops: prefill_flops as f64 / prefill_s / 1e9,
            step_gflops: step_flops as f64 / steps_s / 1e9,
            peak_rss_mb: peak,
            chunk_batch: batch,
            chunk_cache_mb,
            io_prefill,
            io_per_step,
            cpu_prefill,
            cpu_steps,
            cancelled: None,
            resumed,
        };
        if !self.json {
            eprintln!("{row:?}");
        }
        Ok(Measured { row, logits })
    }
}

/// GFLOP/s of the backend's matmul on the model's MLP shape (`[2048, hidden] × [hidden,
/// intermediate]`), best of ten: the machine's attainable speed, against which the rows'
/// effective GFLOP/s are read (the run takes the better of one before and one after its rows).
fn calibration_gflops<B: Backend>(
    config: &focusllm::models::LlamaConfig,
    device: &B::Device,
) -> f64 {
    use burn::tensor::{Distribution, Tensor};
    let (m, k, n) = (2048, config.hidden_size, config.intermediate_size);
    let a = Tensor::<B, 2>::random([m, k], Distribution::Default, device);
    let b = Tensor::<B, 2>::random([k, n], Distribution::Default, device);
    let best = (0..10)
        .map(|_| {
            let start = Instant::now();
            // Reading the result back makes lazy backends finish the product.
            let _ = a.clone().matmul(b.clone()).into_data();
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    2.0 * (m * k * n) as f64 / best / 1e9
}

/// The same product as [`calibration_gflops`] with bf16 operands (`--matmul bf16`: the ceiling
/// of rows in that precision), through the projection path the model's forwards take.
fn calibration_bf16_gflops<B: Backend>(
    config: &focusllm::models::LlamaConfig,
    kernels: Kernels,
    device: &B::Device,
) -> f64 {
    use burn::module::Param;
    use burn::tensor::{Distribution, Tensor};
    use focusllm::models::kernels::{MatmulPrecision, projection_in};
    use focusllm::models::llama::Projection;
    let (m, k, n) = (2048, config.hidden_size, config.intermediate_size);
    let x = Tensor::<B, 3>::random([1, m, k], Distribution::Default, device);
    let layer = Projection::from(burn::nn::Linear {
        weight: Param::from_tensor(Tensor::<B, 2>::random(
            [k, n],
            Distribution::Default,
            device,
        )),
        bias: None,
    });
    let best = (0..10)
        .map(|_| {
            let start = Instant::now();
            let _ = projection_in(kernels, MatmulPrecision::Bf16, x.clone(), &layer).into_data();
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    2.0 * (m * k * n) as f64 / best / 1e9
}

/// What a bench run measured.
pub struct Measurements {
    rows: Vec<Row>,
    batches: Option<(Row, Row, f32)>,
    /// The calibration before the rows and after them: a busy moment on a shared machine can
    /// halve one, and the larger is the machine's attainable speed in this run.
    calibrations: [f64; 2],
    /// With `--matmul bf16`: the same with bf16 products, before and after the rows.
    bf16_calibrations: Option<[f64; 2]>,
}

impl BackendRunner for &Args {
    type Output = Result<Measurements, AppError>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let loaded = self.engine.load::<B>(&device)?;
        let tokenizer = loaded
            .tokenizer
            .as_ref()
            .ok_or("the model has no tokenizer")?;
        eprintln!("model loaded; resident {:.0} MiB", rss_mb().unwrap_or(0.0));
        let before = calibration_gflops::<B>(loaded.model.config(), &device);
        eprintln!("calibration matmul: {before:.1} GFLOP/s");
        let bf16 =
            loaded.model.matmul_precision_in_effect() == focusllm::models::MatmulPrecision::Bf16;
        let bf16_calibration =
            || calibration_bf16_gflops::<B>(loaded.model.config(), loaded.model.kernels(), &device);
        let bf16_before = bf16.then(bf16_calibration);
        if let Some(g) = bf16_before {
            eprintln!("calibration matmul with bf16 products: {g:.1} GFLOP/s");
        }
        // Speed does not depend on the candidate weights: only `--adapter` is applied (its sizes
        // and step mode are then the defaults), never the bundled one.
        let adapted = self.engine.adapter_for(&loaded, false)?;
        let (model, config) = self.engine.model_and_config(&loaded, &adapted);
        let adapter = adapted.as_ref().map(|a| a.path.as_path());
        let identity = format!(
            "{} | adapter {:?} | untrained {} | dtype {} | step mode {:?}",
            loaded.path.display(),
            adapter,
            self.engine.untrained,
            self.engine.dtype,
            config.step_mode,
        );
        if self.compare_kernels && self.checkpoint.is_some() {
            return Err("--compare-kernels measures every prefill twice: drop --checkpoint".into());
        }
        if self.compare_kernels && !self.engine.devices.is_empty() {
            return Err("--compare-kernels measures the main device only: drop --devices".into());
        }
        let mut models = vec![model.clone()];
        if self.compare_kernels {
            let mut other = model.clone();
            other.set_kernels(match model.kernels() {
                Kernels::Fused => Kernels::Burn,
                Kernels::Burn => Kernels::Fused,
            });
            models.push(other);
        }
        let mut rows = Vec::new();
        for &length in &self.lengths {
            let ids = passkey_prompt(tokenizer, length, 0)?.ids;
            for method in &self.methods {
                if method == "plain" && length > self.plain_max {
                    eprintln!(
                        "plain at {length} skipped (above --plain-max {})",
                        self.plain_max
                    );
                    continue;
                }
                for model in &models {
                    rows.push(
                        self.measure(
                            Target {
                                model,
                                identity: &identity,
                                adapter,
                                device: &device,
                            },
                            &config,
                            &ids,
                            method,
                            self.engine.batch,
                        )?
                        .row,
                    );
                }
            }
        }
        let batches = if self.batch_compare > 0 {
            let ids = passkey_prompt(tokenizer, self.batch_compare, 0)?.ids;
            let target = Target {
                model,
                identity: &identity,
                adapter,
                device: &device,
            };
            let one = self.measure(target, &config, &ids, "focus", 1)?;
            let many = self.measure(target, &config, &ids, "focus", self.engine.batch)?;
            let diff = one
                .logits
                .iter()
                .zip(&many.logits)
                .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
                .fold(0.0f32, f32::max);
            Some((one.row, many.row, diff))
        } else {
            None
        };
        let after = calibration_gflops::<B>(loaded.model.config(), &device);
        eprintln!("calibration matmul after the rows: {after:.1} GFLOP/s");
        let bf16_calibrations = bf16_before.map(|before| [before, bf16_calibration()]);
        Ok(Measurements {
            rows,
            batches,
            calibrations: [before, after],
            bf16_calibrations,
        })
    }
}

/// Least-squares slope of ln(prefill time) against ln(length), over rows of `method` with at least
/// `from` tokens.
fn loglog_exponent(rows: &[Row], method: &str, from: usize) -> Option<f64> {
    let points: Vec<(f64, f64)> = rows
        .iter()
        .filter(|r| r.method == method && r.tokens >= from)
        .filter(|r| rows.first().is_some_and(|first| first.kernels == r.kernels))
        .map(|r| ((r.tokens as f64).ln(), r.prefill_s.ln()))
        .collect();
    if points.len() < 2 {
        return None;
    }
    let n = points.len() as f64;
    let (mx, my) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    Some(sxy / sxx)
}

/// Runs the job.
pub fn run(args: Args) -> Result<(), AppError> {
    let Measurements {
        rows,
        batches,
        calibrations,
        bf16_calibrations,
    } = run_on(args.engine.backend, args.engine.device, &args)??;
    let calibration_gflops = calibrations[0].max(calibrations[1]);
    let bf16_calibration_gflops = bf16_calibrations.map(|[a, b]| a.max(b));
    // Each row's efficiency against the ceiling of its own products.
    let ceiling = |r: &Row| match bf16_calibration_gflops {
        Some(g) if r.matmul == "bf16" => g,
        _ => calibration_gflops,
    };
    let focus_fit = loglog_exponent(&rows, "focus", 8192);
    let plain_fit = loglog_exponent(&rows, "plain", 8192);
    if args.json {
        let batch = batches.as_ref().map(|(one, many, diff)| {
            serde_json::json!({"one_by_one": one, "batched": many, "max_abs_logit_diff": diff})
        });
        let out = serde_json::json!({
            "rows": rows,
            "batch_comparison": batch,
            "loglog_exponent": {"focus": focus_fit, "plain": plain_fit},
            "calibration_gflops": calibration_gflops,
            "calibration_before_after": calibrations,
            "calibration_bf16_gflops": bf16_calibration_gflops,
            "calibration_bf16_before_after": bf16_calibrations,
        });
        println!("{out}");
        return Ok(());
    }
    println!(
        "calibration matmul ([2048, hidden] x [hidden, intermediate]): {calibration_gflops:.1} GFLOP/s"
    );
    if let Some(g) = bf16_calibration_gflops {
        println!("the same with bf16 products (the ceiling of `bf16` rows): {g:.1} GFLOP/s");
    }
    println!();
    println!(
        "| method | kernels (matmul) | weights (MiB) | tokens | prefill s | prompt tokens/s | prefill GFLOP/s (x calibration) | s / token | generated tokens/s | step GFLOP/s (x calibration) | peak RSS MiB | chunk caches MiB | CPUs to others + steal % (prefill, steps) |"
    );
    println!("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let peak = r
            .peak_rss_mb
            .map_or("n/a".to_string(), |m| format!("{m:.0}"));
        let elsewhere = |s: Option<CpuShares>| {
            s.map_or("n/a".to_string(), |s| {
                format!("{:.0}", 100.0 * (s.others + s.steal))
            })
        };
        println!(
            "| {} | {} ({}) | {} ({:.0}) | {} | {:.1} | {:.0} | {:.1} ({:.2}) | {:.3} | {:.2} | {:.1} ({:.2}) | {} | {:.0} | {}, {} |",
            r.method,
            r.kernels,
            r.matmul,
            if r.activations == "f32" {
                r.weights.clone()
            } else {
                format!("{}, {} activations", r.weights, r.activations)
            },
            r.weights_mb,
            r.tokens,
            r.prefill_s,
            r.tokens_per_s,
            r.prefill_gflops,
            r.prefill_gflops / ceiling(r),
            r.step_s,
            r.generated_per_s,
            r.step_gflops,
            r.step_gflops / ceiling(r),
            peak,
            r.chunk_cache_mb,
            elsewhere(r.cpu_prefill),
            elsewhere(r.cpu_steps),
        );
    }
    println!();
    for r in rows.iter().filter(|r| r.method == "plain") {
        if let Some(f) = rows
            .iter()
            .find(|f| f.method == "focus" && f.tokens == r.tokens && f.kernels == r.kernels)
        {
            println!(
                "{} tokens ({} kernels): FocusLLM prefill {:.2}x faster than plain; time per token {:.2}x",
                r.tokens,
                r.kernels,
                r.prefill_s / f.prefill_s,
                r.step_s / f.step_s
            );
        }
    }
    for fused in rows.iter().filter(|r| r.kernels == "fused") {
        if let Some(burn) = rows
            .iter()
            .find(|b| b.kernels == "burn" && b.method == fused.method && b.tokens == fused.tokens)
        {
            println!(
                "{} {} tokens: fused kernels {:.2}x faster prefill, {:.2}x faster per token than burn's operations",
                fused.method,
                fused.tokens,
                burn.prefill_s / fused.prefill_s,
                burn.step_s / fused.step_s
            );
        }
    }
    if let Some(e) = focus_fit {
        println!("log-log exponent of prefill time vs length (>= 8K): focus {e:.3}");
    }
    if let Some(e) = plain_fit {
        println!("log-log exponent of prefill time vs length (>= 8K): plain {e:.3}");
    }
    if let Some((one, many, diff)) = batches {
        println!(
            "chunk batch 1 vs {} at {} tokens: prefill {:.1} s vs {:.1} s ({:.2}x), max |logit diff| {diff:.2e}",
            many.chunk_batch,
            one.tokens,
            one.prefill_s,
            many.prefill_s,
            one.prefill_s / many.prefill_s
        );
    }
    Ok(())
}

/// `quantized` when the model keeps quantized matrices (`--weights auto|quantized`), else `f32` (or
/// the compute dtype).
fn activations_kind<B: Backend>(model: &focusllm::models::LlamaModel<B>) -> String {
    format!("{:?}", model.activation_precision()).to_lowercase()
}

fn weights_kind<B: Backend>(model: &focusllm::models::LlamaModel<B>) -> String {
    if model.quantized_bytes() > 0 {
        "quantized".into()
    } else {
        format!("{:?}", model.compute_dtype()).to_lowercase()
    }
}
