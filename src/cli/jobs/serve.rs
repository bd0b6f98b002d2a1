//! `focusllm serve`: a chunk shard server. It serves a backend over burn's remote protocol on a
//! port, so that another machine's `focusllm ... --devices ws://THIS_HOST:PORT` keeps the caches of
//! its chunk batches here and decodes them here; only candidates travel back.

use clap::Parser;
use focusllm_backends::BackendKind;

use crate::cli::app::AppError;

/// Flags of `focusllm serve`.
#[derive(Parser, Debug, Clone)]
#[command(about = "Serve a backend to other machines as a chunk shard (burn's remote backend)")]
pub struct Args {
    /// TCP port to listen on (every interface).
    #[arg(long, default_value_t = 3000)]
    pub port: u16,
    /// Backend to serve (the cpu backend in this build).
    #[arg(long, default_value = "cpu")]
    pub backend: BackendKind,
    /// Device index of the backend.
    #[arg(long, default_value_t = 0)]
    pub device: usize,
}

/// Runs the server until the process is stopped (Ctrl-C or SIGTERM end it cleanly).
pub fn run(args: Args) -> Result<(), AppError> {
    // Refuse a taken port by name before burn's server would fail on it.
    std::net::TcpListener::bind(("0.0.0.0", args.port))
        .map_err(|e| format!("port {}: {e}", args.port))?;
    eprintln!(
        "serving {} (device {}) on port {}",
        args.backend, args.device, args.port
    );
    focusllm_backends::remote::serve(args.backend, args.device, args.port)?;
    Ok(())
}
