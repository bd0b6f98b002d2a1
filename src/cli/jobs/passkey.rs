//! The passkey retrieval benchmark: FocusLLM against the plain model, for several input lengths and
//! seeds, on the SmolLM2 GGUF by default (fetched when absent).
//!
//! ```text
//! focusllm passkey --lengths 8192,16384,32768 --seeds 2
//! ```

use std::ops::ControlFlow;
use std::time::Instant;

use crate::cli::app::{AppError, BackendRunner, EngineArgs, ProgressView, run_on};
use crate::cli::passkey::{digit_accuracy, is_correct, passkey_prompt};
use burn::tensor::backend::Backend;
use clap::Parser;
use focusllm::core::{FocusEngine, GenerateOptions, ShardedDecoder};
use serde::Serialize;

#[derive(Parser, Debug)]
#[command(about = "Passkey retrieval: FocusLLM vs the plain model")]
pub struct Args {
    #[command(flatten)]
    engine: EngineArgs,
    /// Prompt lengths in tokens, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "8192,16384,32768")]
    lengths: Vec<usize>,
    /// Trials (seeds) per length and method.
    #[arg(long, default_value_t = 2)]
    seeds: u64,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    first_seed: u64,
    /// Methods to compare, comma-separated: focus (with the adapter: `--adapter`, or the bundled
    /// one on the default model), focus-untrained (candidates copied from the ordinary
    /// projections, same settings as focus), plain.
    #[arg(long, value_delimiter = ',', default_value = "focus,plain")]
    methods: Vec<String>,
    /// Plain decoding is skipped above this length (its cost is quadratic, and beyond SmolLM2's
    /// native 8K context it fails anyway: a 32K plain trial takes half an hour here).
    #[arg(long, default_value_t = 16384)]
    plain_max: usize,
    /// Tokens generated for the answer.
    #[arg(long, default_value_t = 7)]
    answer_tokens: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize, Debug, Clone)]
pub struct Row {
    method: String,
    tokens: usize,
    accuracy: f64,
    /// Mean share of key digits right at their positions (partial credit).
    digits: f64,
    trials: usize,
    chunks: usize,
    /// Share of the trials with the key in memory whose focus map, at the first answer token,
    /// ranks the key's chunk first (`None` without chunks).
    focus: Option<f64>,
    mean_seconds: f64,
    answers: Vec<String>,
    keys: Vec<String>,
}

impl BackendRunner for &Args {
    type Output = Result<Vec<Row>, AppError>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let loaded = self.engine.load::<B>(&device)?;
        let tokenizer = loaded
            .tokenizer
            .as_ref()
            .ok_or("the model has no tokenizer")?;
        eprintln!(
            "model {} ({} layers, candidates: {:?})",
            loaded.path.display(),
            loaded.model.config().num_hidden_layers,
            loaded.model.candidate_source()
        );
        let adapted = self.engine.adapter_for(&loaded, true)?;
        if let Some(a) = &adapted {
            eprintln!(
                "adapter {} (trained for {:?} decoding)",
                a.path.display(),
                a.info.step_mode
            );
        }
        let mut focus_config = self
            .engine
            .focus_config_for(adapted.as_ref().map(|a| &a.info));
        // FocusLLM reads every length with chunks here (the engine's default threshold would
        // decode inputs inside the native context plainly, making both methods the same).
        if self.engine.threshold.is_none() {
            focus_config = focus_config.with_plain_threshold(Some(1));
        }
        let mut rows = Vec::new();
        for &length in &self.lengths {
            for method in &self.methods {
                let mut model = &loaded.model;
                let mut adapter = None;
                let config = match method.as_str() {
                    "focus" => {
                        if let Some(a) = &adapted {
                            model = &a.model;
                            adapter = Some(a.path.as_path());
                        }
                        focus_config.clone()
                    }
                    "focus-untrained" => focus_config.clone(),
                    "plain" if length > self.plain_max => {
                        eprintln!(
                            "plain at {length} tokens skipped (above --plain-max {})",
                            self.plain_max
                        );
                        continue;
                    }
                    "plain" => self
                        .engine
                        .focus_config()
                        .with_plain_threshold(Some(usize::MAX)),
                    other => {
                        return Err(format!(
                            "unknown method `{other}` (focus, focus-untrained, plain)"
                        )
                        .into());
                    }
                };
                let shards = self.engine.chunk_shards(model, adapter, &device)?;
                let local = ShardedDecoder::new(shards.iter().collect(), device.clone())?;
                let engine = FocusEngine::with_decoders(&local, model, config)?;
                let mut row = Row {
                    method: method.clone(),
                    tokens: length,
                    accuracy: 0.0,
                    digits: 0.0,
                    trials: 0,
                    chunks: 0,
                    focus: None,
                    mean_seconds: 0.0,
                    answers: Vec::new(),
                    keys: Vec::new(),
                };
                let mut correct = 0;
                let mut seconds = 0.0;
                let (mut focused, mut in_memory) = (0usize, 0usize);
                for seed in self.first_seed..self.first_seed + self.seeds {
                    let prompt = passkey_prompt(tokenizer, length, seed)?;
                    let view =
                        ProgressView::new(&format!("{method} {length} #{seed}"), self.engine.quiet);
                    let mut session = engine.session();
                    session.on_progress(|p| view.update(p));
                    let options = GenerateOptions {
                        max_tokens: self.answer_tokens,
                        ..Default::default()
                    };
                    let start = Instant::now();
                    let mut first_focus = None;
                    let generation =
                        session.generate(&prompt.ids, &options, Some(tokenizer), |t| {
                            if first_focus.is_none() {
                                first_focus = Some(t.focus.clone());
                            }
                            ControlFlow::Continue(())
                        })?;
                    // Where the main decoder looked for the first answer token.
                    let key_chunk = engine.plan(&prompt.ids)?.and_then(|plan| {
                        plan.chunks.iter().position(|r| r.contains(&prompt.key_at))
                    });
                    if let (Some(key_chunk), Some(Some(map))) = (key_chunk, &first_focus) {
                        in_memory += 1;
                        focused += usize::from(map.top(1).first().map(|t| t.0) == Some(key_chunk));
                    }
                    seconds += start.elapsed().as_secs_f64();
                    row.chunks = session.mode().chunks();
                    drop(session);
                    view.finish();
                    let ok = is_correct(&generation.text, &prompt.key);
                    correct += usize::from(ok);
                    row.digits += digit_accuracy(&generation.text, &prompt.key);
                    if !self.json {
                        eprintln!(
                            "{method:>15} {length:>6} seed {seed}: key {} at depth {:.2} -> {:?} {}",
                            prompt.key,
                            prompt.depth,
                            generation.text,
                            if ok { "ok" } else { "wrong" }
                        );
                    }
                    row.answers.push(generation.text);
                    row.keys.push(prompt.key);
                    row.trials += 1;
                }
                row.accuracy = correct as f64 / row.trials.max(1) as f64;
                row.digits /= row.trials.max(1) as f64;
                row.mean_seconds = seconds / row.trials.max(1) as f64;
                row.focus = (in_memory > 0).then(|| focused as f64 / in_memory as f64);
                rows.push(row);
            }
        }
        Ok(rows)
    }
}

/// Runs the job.
pub fn run(args: Args) -> Result<(), AppError> {
    let rows = run_on(args.engine.backend, args.engine.device, &args)??;
    if args.json {
        let rows: Vec<_> = rows
            .iter()
            .map(|r| serde_json::json!({"method": r.method, "tokens": r.tokens, "accuracy": r.accuracy, "digits": r.digits, "focus": r.focus, "trials": r.trials}))
            .collect();
        println!("{}", serde_json::json!({ "rows": rows }));
        return Ok(());
    }
    println!(
        "| method | tokens | chunks | accuracy | digits | focus on key | trials | s / trial |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        let focus = r.focus.map_or("–".to_string(), |f| format!("{f:.2}"));
        println!(
            "| {} | {} | {} | {:.2} | {:.2} | {focus} | {} | {:.1} |",
            r.method, r.tokens, r.chunks, r.accuracy, r.digits, r.trials, r.mean_seconds
        );
    }
    Ok(())
}
