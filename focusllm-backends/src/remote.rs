//! Chunk shards on other machines, through burn's remote backend (cargo feature `remote`): a
//! shard server ([`serve`]) runs a local backend behind a WebSocket port, and a program holds
//! tensors on it through [`Remote`] tensors on a [`RemoteDevice`].
//!
//! The protocol is burn's (operations are sent as burn's IR, tensors as data); focusllm adds
//! nothing to it.

use crate::{BackendError, BackendKind};

/// burn's remote backend: tensors live on a shard server, operations run there.
pub type Remote = burn::backend::RemoteBackend;

/// A shard server at a WebSocket address (`ws://HOST:PORT`).
pub type RemoteDevice = burn::backend::remote::RemoteDevice;

/// The remote device for `address` (`ws://HOST:PORT`). Nothing is contacted until the first
/// tensor is made on it.
pub fn remote_device(address: &str) -> RemoteDevice {
    RemoteDevice::new(address)
}

/// Serves backend `kind` (device `index`) on `port` of every interface until the process is
/// stopped (Ctrl-C ends it cleanly). Blocks.
pub fn serve(kind: BackendKind, index: usize, port: u16) -> Result<(), BackendError> {
    kind.ensure_compiled()?;
    let _ = (index, port);
    match kind {
        #[cfg(feature = "cpu")]
        BackendKind::Cpu => {
            burn::server::start_websocket::<crate::Cpu>(Default::default(), port);
            Ok(())
        }
        #[allow(unreachable_patterns)]
        other => Err(BackendError::Unavailable {
            kind: other,
            reason: "shard servers serve the cpu backend in this build".into(),
        }),
    }
}

/// Whether the shard server at `address` (`ws://HOST:PORT`) accepts connections: a TCP connect,
/// given a second. `Err` says why not (a refused connection: the server is gone).
///
/// ```
/// use focusllm_backends::remote::reachable;
///
/// // Port 1 of the loopback has no server.
/// assert!(reachable("ws://127.0.0.1:1").is_err());
/// assert!(reachable("not an address").is_err());
/// ```
pub fn reachable(address: &str) -> Result<(), String> {
    use std::net::{TcpStream, ToSocketAddrs};
    let host_port = address
        .split_once("://")
        .map_or(address, |(_, rest)| rest)
        .trim_end_matches('/');
    let addrs = host_port
        .to_socket_addrs()
        .map_err(|e| format!("{address}: {e}"))?;
    let mut last = format!("{address}: no address to connect to");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(1)) {
            Ok(_) => return Ok(()),
            Err(e) => last = format!("the server at {address} cannot be reached ({e})"),
        }
    }
    Err(last)
}
