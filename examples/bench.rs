//! Speed and memory, FocusLLM against plain attention: the `focusllm bench` job as an example program.
//! The code is `src/cli/jobs/bench.rs`, shared with the installable command (`focusllm bench`).
//!
//! ```text
//! cargo run --release --example bench -- --lengths 4096,8192,16384,32768 --json
//! ```

use focusllm::cli;

use clap::Parser;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::app::run_main(|| cli::jobs::bench::run(cli::jobs::bench::Args::parse()))
}
