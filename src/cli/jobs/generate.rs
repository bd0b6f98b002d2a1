//! Text generation with streaming output, FocusLLM for long prompts and plain decoding for short
//! ones. Uses the model's chat template for instruct models unless `--raw`.
//!
//! ```text
//! focusllm generate "What is the capital of France?"
//! focusllm generate --file notes.txt --max-tokens 200 --temperature 0.7 --top-p 0.9
//! ```

use std::path::PathBuf;

use crate::cli::app::{
    AppError, BackendRunner, EngineArgs, ProgressView, chat_stop_tokens, run_on, stream_to_stdout,
};
use burn::tensor::backend::Backend;
use clap::Parser;
use focusllm::core::{FocusEngine, GenerateOptions, SamplingConfig, ShardedDecoder};

#[derive(Parser, Debug)]
#[command(about = "Generate text with FocusLLM (streams tokens to stdout)")]
pub struct Args {
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
            match tokenizer.chat_prompt(&text) {
                Err(focusllm::models::ModelError::NoChatTemplate { .. }) => {
                    eprintln!("[the model has no chat template: the prompt is used raw]");
                    text
                }
                wrapped => wrapped?,
            }
        };
        let ids = tokenizer.encode(&prompt)?;
        let stops = chat_stop_tokens(loaded.model.config().eos_ids(), tokenizer);
        let adapted = self.engine.adapter_for(&loaded, true)?;
        let (model, config) = self.engine.model_and_config(&loaded, &adapted);
        let adapter = adapted.as_ref().map(|a| a.path.as_path());
        let shards = self.engine.chunk_shards(model, adapter, &device)?;
        let local = ShardedDecoder::new(shards.iter().collect(), device.clone())?;
        let engine = FocusEngine::with_decoders(&local, model, config)?;
        let view = ProgressView::new("prompt", self.engine.quiet);
        let mut session = engine.session();
        session.on_progress(|p| view.update(p));
        let options = GenerateOptions {
            max_tokens: self.max_tokens,
            stop_tokens: Some(stops),
            sampling: SamplingConfig {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                seed: self.seed,
            },
        };
        let streamed = stream_to_stdout(&mut session, &ids, &options, tokenizer, &view)?;
        let mode = streamed.mode;
        let n = streamed.generation.tokens.len();
        let rate =
            n.saturating_sub(1) as f64 / (streamed.total_s - streamed.first_token_s).max(1e-9);
        eprintln!(
            "[{} prompt tokens, {mode}; prefill {:.1} s; {n} tokens at {rate:.2} tokens/s; stop: {:?}]",
            ids.len(),
            streamed.first_token_s,
            streamed.generation.stop
        );
        Ok(())
    }
}

/// Runs the job.
pub fn run(args: Args) -> Result<(), AppError> {
    run_on(args.engine.backend, args.engine.device, &args)?
}
