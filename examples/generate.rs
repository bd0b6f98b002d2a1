//! Text generation with streaming output, FocusLLM for long prompts and plain decoding for short
//! ones. Uses the model's chat template for instruct models unless `--raw`.
//!
//! ```text
//! cargo run --release --example generate -- "What is the capital of France?"
//! cargo run --release --example generate -- --file notes.txt --max-tokens 200 --temperature 0.7 --top-p 0.9
//! ```

use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use burn::tensor::backend::Backend;
use clap::Parser;
use focusllm::app::{AppError, BackendRunner, EngineArgs, ProgressView, run_on};
use focusllm::core::{FocusEngine, GenerateOptions, Mode, SamplingConfig};

#[derive(Parser, Debug)]
#[command(about = "Generate text with FocusLLM (streams tokens to stdout)")]
struct Args {
    /// The prompt (or use --file).
    prompt: Option<String>,
    /// Read the prompt from a file.
    #[arg(long, conflicts_with = "prompt")]
    file: Option<PathBuf>,
    /// Do not wrap the prompt in the model's chat template.
    #[arg(long)]
    raw: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    max_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Nucleus sampling threshold.
    #[arg(long)]
    top_p: Option<f32>,
    /// Keep only the k most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Random seed for sampling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    engine: EngineArgs,
}

impl BackendRunner for &Args {
    type Output = Result<(), AppError>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let text = match (&self.prompt, &self.file) {
            (Some(p), _) => p.clone(),
            (None, Some(f)) => {
                std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?
            }
            (None, None) => return Err("give a prompt or --file".into()),
        };
        let loaded = self.engine.load::<B>(&device)?;
        let tokenizer = loaded
            .tokenizer
            .as_ref()
            .ok_or("the model has no tokenizer")?;
        let prompt = if self.raw {
            text
        } else {
            tokenizer.chat_prompt(&text)
        };
        let ids = tokenizer.encode(&prompt)?;
        let mut stops: Vec<u32> = loaded.model.config().eos_ids();
        stops.extend(
            ["<|im_end|>", "<|eot_id|>", "</s>"]
                .iter()
                .filter_map(|t| tokenizer.token_id(t)),
        );
        let engine = FocusEngine::new(&loaded.model, &loaded.model, self.engine.focus_config())?;
        let view = ProgressView::new("prompt", self.engine.quiet);
        let mut session = engine.session();
        session.on_progress(|p| view.update(p));
        let options = GenerateOptions {
            max_tokens: self.max_tokens,
            stop_tokens: stops.clone(),
            sampling: SamplingConfig {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                seed: self.seed,
            },
        };
        let start = Instant::now();
        let mut first_token = None;
        let mut stdout = std::io::stdout();
        let generation = session.generate(&ids, &options, Some(tokenizer), |t| {
            if first_token.is_none() {
                view.finish();
                first_token = Some(start.elapsed());
            }
            if !stops.contains(&t.id) {
                print!("{}", t.text);
                stdout.flush().ok();
            }
            ControlFlow::Continue(())
        })?;
        println!();
        let mode = match session.mode() {
            Mode::Focus { chunks } => format!("FocusLLM, {chunks} chunks"),
            _ => "plain".to_string(),
        };
        let total = start.elapsed().as_secs_f64();
        let prefill = first_token.map_or(total, |d| d.as_secs_f64());
        let rate = (generation.tokens.len().saturating_sub(1)) as f64 / (total - prefill).max(1e-9);
        eprintln!(
            "[{} prompt tokens, {mode}; prefill {prefill:.1} s; {} tokens at {rate:.2} tokens/s; stop: {:?}]",
            ids.len(),
            generation.tokens.len(),
            generation.stop
        );
        Ok(())
    }
}

#[global_allocator]
static ALLOC: focusllm::app::Allocator = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    focusllm::app::report(run())
}

fn run() -> Result<(), AppError> {
    let args = Args::parse();
    run_on(args.engine.backend, args.engine.device, &args)?
}
