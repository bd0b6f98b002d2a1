//! The `logits` example's job (reference comparisons): prints, as one JSON object, the FocusLLM
//! logits of a token sequence (prefill and greedy steps) or its perplexity.

use std::ops::ControlFlow;
use std::path::PathBuf;

use crate::cli::app::{AppError, BackendRunner, EngineArgs, ProgressView, run_on};
use burn::tensor::backend::Backend;
use clap::Parser;
use focusllm::core::{FocusEngine, GenerateOptions, ShardedDecoder};
use serde_json::json;

/// The `logits` example's flags.
#[derive(Parser, Debug)]
#[command(about = "Print FocusLLM logits (or perplexity) of a token sequence as JSON")]
pub struct Args {
    /// JSON file holding an array of token ids (used as is; the engine applies the BOS rule).
    #[arg(long)]
    ids: PathBuf,
    /// Greedy tokens to generate (each with the logits it was chosen from).
    #[arg(long, default_value_t = 1)]
    steps: usize,
    /// Print the perplexity of the last 128 tokens instead.
    #[arg(long)]
    ppl: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

impl BackendRunner for Args {
    type Output = Result<serde_json::Value, AppError>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let ids: Vec<u32> =
            serde_json::from_str(&std::fs::read_to_string(&self.ids)?).map_err(|e| {
                format!(
                    "{}: expected a JSON array of token ids: {e}",
                    self.ids.display()
                )
            })?;
        let loaded = self.engine.load::<B>(&device)?;
        // Reference comparisons: only an adapter given with `--adapter`, never the bundled one.
        let adapted = self.engine.adapter_for(&loaded, false)?;
        let (model, config) = self.engine.model_and_config(&loaded, &adapted);
        let adapter = adapted.as_ref().map(|a| a.path.as_path());
        let shards = self.engine.chunk_shards(model, adapter, &device)?;
        let local = ShardedDecoder::new(shards.iter().collect(), device.clone())?;
        let engine = FocusEngine::with_decoders(&local, model, config)?;
        let view = ProgressView::new("logits", self.engine.quiet);
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
        let options = GenerateOptions {
            max_tokens: self.steps.max(1),
            stop_tokens: Some(Vec::new()),
            ..Default::default()
        };
        session.generate(&ids, &options, None, |t| {
            steps.push(json!({"token": t.id, "logits": t.logits}));
            ControlFlow::Continue(())
        })?;
        let chunks = session.mode().chunks();
        view.finish();
        let prefill = steps[0]["logits"].clone();
        Ok(json!({"chunks": chunks, "prefill_logits": prefill, "steps": steps}))
    }
}

/// Runs the job on the backend `--backend` names and prints its JSON object.
pub fn run(args: Args) -> Result<(), AppError> {
    let out = run_on(args.engine.backend, args.engine.device, args)??;
    println!("{out}");
    Ok(())
}
