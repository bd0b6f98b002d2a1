//! Streaming generation: the `focusllm generate` job as an example program.
//! The code is `src/cli/jobs/generate.rs`, shared with the installable command (`focusllm generate`).
//!
//! ```text
//! cargo run --release --example generate -- "What is the capital of France?"
//! cargo run --release --example generate -- --file notes.txt --max-tokens 200 --temperature 0.7 --top-p 0.9
//! ```

use focusllm::cli;

use clap::Parser;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::app::run_main(|| cli::jobs::generate::run(cli::jobs::generate::Args::parse()))
}
