//! Reference-comparison tool: prints, as one JSON object, the FocusLLM logits of a token sequence
//! (prefill and greedy steps) or its perplexity, so other implementations can be compared with ours.
//!
//! ```text
//! cargo run --release --example logits -- --model tests/fixtures/official/C --ids ids.json \
//!     --local-window 512 --chunk-size 700 --threshold 4096 --steps 5
//! ```

use std::ops::ControlFlow;
use std::path::PathBuf;

use burn::tensor::backend::Backend;
use clap::Parser;
use focusllm::app::{AppError, BackendRunner, ProgressView, resolve_model, run_on};
use focusllm::backends::BackendKind;
use focusllm::core::{FocusConfig, FocusEngine, GenerateOptions, Mode};
use focusllm::models::load_model;
use serde_json::json;

#[derive(Parser, Debug)]
#[command(about = "Print FocusLLM logits (or perplexity) of a token sequence as JSON")]
struct Args {
    /// HF model directory or GGUF file (default: the SmolLM2 GGUF).
    #[arg(long)]
    model: Option<PathBuf>,
    /// JSON file holding an array of token ids (used as is; the engine applies the BOS rule).
    #[arg(long)]
    ids: PathBuf,
    /// Local window L.
    #[arg(long, default_value_t = 2048)]
    local_window: usize,
    /// Chunk size S.
    #[arg(long, default_value_t = 2048)]
    chunk_size: usize,
    /// Dynamic-prompt cap.
    #[arg(long, default_value_t = 512)]
    prompt_cap: usize,
    /// Plain-decoding threshold (default: the model's native context).
    #[arg(long)]
    threshold: Option<usize>,
    /// Chunks decoded per batch.
    #[arg(long, default_value_t = 4)]
    batch: usize,
    /// Greedy tokens to generate (each with the logits it was chosen from).
    #[arg(long, default_value_t = 1)]
    steps: usize,
    /// Print the perplexity of the last 128 tokens instead.
    #[arg(long)]
    ppl: bool,
    /// Backend: cpu, wgpu or cuda.
    #[arg(long, default_value = "cpu")]
    backend: BackendKind,
    /// Device index (GPU backends).
    #[arg(long, default_value_t = 0)]
    device: usize,
    /// No progress bar.
    #[arg(long)]
    quiet: bool,
}

impl BackendRunner for Args {
    type Output = Result<serde_json::Value, AppError>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let path = resolve_model(self.model.clone())?;
        let ids: Vec<u32> = serde_json::from_str(&std::fs::read_to_string(&self.ids)?)
            .map_err(|e| format!("{}: expected a JSON array of token ids: {e}", self.ids.display()))?;
        let loaded = load_model::<B>(&path, &device)?;
        let config = FocusConfig::default()
            .with_local_window(self.local_window)
            .with_chunk_size(self.chunk_size)
            .with_prompt_cap(self.prompt_cap)
            .with_plain_threshold(self.threshold)
            .with_chunk_batch_size(self.batch);
        let engine = FocusEngine::new(&loaded.model, &loaded.model, config)?;
        let view = ProgressView::new("logits", self.quiet);
        let mut session = engine.session();
        session.on_progress(|p| view.update(p));
        if self.ppl {
            let report = session.perplexity(&ids, 128)?;
            view.finish();
            return Ok(json!({
                "chunks": report.chunks, "nll": report.nll, "loss": report.loss, "ppl": report.perplexity
            }));
        }
        let mut steps = Vec::new();
        let options = GenerateOptions { max_tokens: self.steps.max(1), stop_tokens: vec![u32::MAX], ..Default::default() };
        session.generate(&ids, &options, None, |t| {
            steps.push(json!({"token": t.id, "logits": t.logits}));
            ControlFlow::Continue(())
        })?;
        let chunks = match session.mode() {
            Mode::Focus { chunks } => chunks,
            _ => 0,
        };
        view.finish();
        let prefill = steps[0]["logits"].clone();
        Ok(json!({"chunks": chunks, "prefill_logits": prefill, "steps": steps}))
    }
}

fn main() -> Result<(), AppError> {
    let args = Args::parse();
    let out = run_on(args.backend, args.device, args)??;
    println!("{out}");
    Ok(())
}
