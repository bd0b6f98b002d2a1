//! Reference-comparison tool: prints, as one JSON object, the FocusLLM logits of a token sequence
//! (prefill and greedy steps) or its perplexity, so other implementations can be compared with ours.
//!
//! ```text
//! cargo run --release --example logits -- --model tests/fixtures/official/C --ids ids.json \
//!     --local-window 512 --chunk-size 700 --threshold 4096 --steps 5
//! ```

use clap::Parser;
use focusllm::cli;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::app::run_main(|| cli::jobs::logits::run(cli::jobs::logits::Args::parse()))
}
