//! Question answering over a long text file: the whole document is read through FocusLLM's chunks,
//! the question sits in the local context.
//!
//! ```text
//! cargo run --release --example longdoc -- --file book.txt --question "Who is the narrator?"
//! ```

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use clap::Parser;
use focusllm::app::{
    AppError, BackendRunner, EngineArgs, ProgressView, chat_stop_tokens, run_on, stream_to_stdout,
};
use focusllm::core::{FocusEngine, GenerateOptions};

#[derive(Parser, Debug)]
#[command(about = "Answer a question about a long text file with FocusLLM")]
struct Args {
    /// The document.
    #[arg(long)]
    file: PathBuf,
    /// The question.
    #[arg(long)]
    question: String,
    /// Most tokens in the answer.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    #[command(flatten)]
    engine: EngineArgs,
}

impl BackendRunner for &Args {
    type Output = Result<(), AppError>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let document = std::fs::read_to_string(&self.file)
            .map_err(|e| format!("{}: {e}", self.file.display()))?;
        let loaded = self.engine.load::<B>(&device)?;
        let tokenizer = loaded
            .tokenizer
            .as_ref()
            .ok_or("the model has no tokenizer")?;
        let request = format!(
            "{document}\n\nAnswer the question using the text above.\nQuestion: {}",
            self.question
        );
        let ids = tokenizer.encode(&tokenizer.chat_prompt(&request))?;
        let stops = chat_stop_tokens(loaded.model.config().eos_ids(), tokenizer);
        let adapted = self.engine.adapter_for(&loaded, true)?;
        let (model, config) = match &adapted {
            Some(a) => {
                eprintln!("adapter {}", a.path.display());
                (&a.model, self.engine.focus_config_for(Some(&a.info)))
            }
            None => (&loaded.model, self.engine.focus_config()),
        };
        let engine = FocusEngine::new(model, model, config)?;
        let view = ProgressView::new("document", self.engine.quiet);
        let mut session = engine.session();
        session.on_progress(|p| view.update(p));
        let options = GenerateOptions {
            max_tokens: self.max_tokens,
            stop_tokens: stops,
            ..Default::default()
        };
        let streamed = stream_to_stdout(&mut session, &ids, &options, tokenizer, &view)?;
        let mode = streamed.mode;
        eprintln!("[{} tokens read with {mode}]", ids.len());
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
