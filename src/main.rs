//! `focusllm`: FocusLLM long-context inference from the command line. Install it with
//! `cargo install --path .` (from a checkout) and ask a question of a long file:
//!
//! ```text
//! focusllm ask --file book.txt --question "Who wrote the letter?"
//! ```
//!
//! Subcommands: `generate`, `ask`, `passkey`, `train`, `bench`, and `serve` (a chunk shard server,
//! cargo feature `remote`); `focusllm help <subcommand>` lists
//! each one's flags. The model, backend and FocusLLM sizes are the same flags everywhere.

use focusllm::cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use cli::jobs;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// FocusLLM: read inputs far longer than the model's context, in parallel chunks.
#[derive(Parser, Debug)]
#[command(name = "focusllm", version, propagate_version = true)]
struct Command {
    #[command(subcommand)]
    job: Job,
}

#[derive(Subcommand, Debug)]
enum Job {
    /// Generate text from a prompt (or a file), streaming it.
    Generate(jobs::generate::Args),
    /// Answer a question about a long text file, and show the passages the answer drew on.
    Ask(jobs::ask::Args),
    /// Passkey retrieval: FocusLLM against the plain model, over lengths and seeds.
    Passkey(jobs::passkey::Args),
    /// Train FocusLLM candidate parameters (an adapter) on a frozen model; resumable.
    #[cfg(feature = "train")]
    Train(jobs::train::Args),
    /// Prefill and decoding speed and memory, FocusLLM against plain attention.
    Bench(jobs::bench::Args),
    /// Serve this machine's backend as a chunk shard for `--devices ws://HOST:PORT` elsewhere.
    #[cfg(feature = "remote")]
    Serve(jobs::serve::Args),
}

fn main() -> ExitCode {
    cli::app::run_main(|| match Command::parse().job {
        Job::Generate(args) => jobs::generate::run(args),
        Job::Ask(args) => jobs::ask::run(args),
        Job::Passkey(args) => jobs::passkey::run(args),
        #[cfg(feature = "train")]
        Job::Train(args) => jobs::train::run(args),
        Job::Bench(args) => jobs::bench::run(args),
        #[cfg(feature = "remote")]
        Job::Serve(args) => jobs::serve::run(args),
    })
}
