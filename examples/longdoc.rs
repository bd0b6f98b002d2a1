//! Question answering over a long text file: the `focusllm ask` job as an example program.
//! The code is `src/cli/jobs/ask.rs`, shared with the installable command (`focusllm ask`).
//!
//! ```text
//! cargo run --release --example longdoc -- --file book.txt --question "Who is the narrator?"
//! ```

use focusllm::cli;

use clap::Parser;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::app::run_main(|| cli::jobs::ask::run(cli::jobs::ask::Args::parse()))
}
