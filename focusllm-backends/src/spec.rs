//! Devices named on a command line (`--devices cpu,cuda:1,ws://10.0.0.2:3000`).

use std::fmt;
use std::str::FromStr;

use crate::{BackendError, BackendKind};

/// One device that can decode chunks: a local backend and device index, or a shard server of
/// burn's remote backend (`focusllm serve`) at a WebSocket address.
///
/// ```
/// use focusllm_backends::{BackendKind, DeviceSpec};
///
/// let spec: DeviceSpec = "cuda:1".parse()?;
/// assert_eq!(spec, DeviceSpec::Local { kind: BackendKind::Cuda, index: 1 });
/// assert_eq!("cpu".parse::<DeviceSpec>()?, DeviceSpec::Local { kind: BackendKind::Cpu, index: 0 });
/// let remote: DeviceSpec = "ws://127.0.0.1:3000".parse()?;
/// assert_eq!(remote.to_string(), "ws://127.0.0.1:3000");
/// assert!("cuda:one".parse::<DeviceSpec>().is_err());
/// # Ok::<(), focusllm_backends::BackendError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// A device of a backend compiled into this program.
    Local {
        /// The backend.
        kind: BackendKind,
        /// The device index (0 for the CPU).
        index: usize,
    },
    /// A `focusllm serve` process (burn's remote backend), e.g. `ws://10.0.0.2:3000`.
    Remote(String),
}

impl FromStr for DeviceSpec {
    type Err = BackendError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.starts_with("ws://") || s.starts_with("wss://") {
            let rest = s.split_once("://").map_or("", |(_, r)| r);
            let port_ok = rest
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !port_ok {
                return Err(BackendError::BadDevice {
                    spec: s.to_string(),
                    reason: "a shard server is named `ws://HOST:PORT`".into(),
                });
            }
            return Ok(Self::Remote(s.to_string()));
        }
        let (name, index) = match s.split_once(':') {
            Some((name, index)) => {
                let index = index
                    .parse::<usize>()
                    .map_err(|_| BackendError::BadDevice {
                        spec: s.to_string(),
                        reason: format!("`{index}` is not a device index"),
                    })?;
                (name, index)
            }
            None => (s, 0),
        };
        let kind: BackendKind = name.parse()?;
        if kind == BackendKind::Cpu && index != 0 {
            return Err(BackendError::BadDevice {
                spec: s.to_string(),
                reason: "the CPU has one device, `cpu`".into(),
            });
        }
        Ok(Self::Local { kind, index })
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local {
                kind: BackendKind::Cpu,
                ..
            } => f.write_str("cpu"),
            Self::Local { kind, index } => write!(f, "{kind}:{index}"),
            Self::Remote(address) => f.write_str(address),
        }
    }
}
