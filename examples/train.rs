//! Trains FocusLLM's candidate parameters: the `focusllm train` job as an example program.
//! The code is `src/cli/jobs/train.rs`, shared with the installable command (`focusllm train`).
//!
//! ```text
//! cargo run --release --example train -- --out adapter.safetensors
//! ```

use focusllm::cli;

use clap::Parser;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::app::run_main(|| cli::jobs::train::run(cli::jobs::train::Args::parse()))
}
