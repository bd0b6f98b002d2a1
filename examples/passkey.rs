//! The passkey retrieval benchmark (the README's main job): the `focusllm passkey` job as an example program.
//! The code is `src/cli/jobs/passkey.rs`, shared with the installable command (`focusllm passkey`).
//!
//! ```text
//! cargo run --release --example passkey -- --lengths 8192,16384,32768 --seeds 2
//! ```

use focusllm::cli;

use clap::Parser;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::app::run_main(|| cli::jobs::passkey::run(cli::jobs::passkey::Args::parse()))
}
