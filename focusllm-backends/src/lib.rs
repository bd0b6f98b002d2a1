//! # focusllm-backends
//!
//! Which burn backend runs focusllm. Cargo features choose what is compiled in:
//! `cpu` (default: burn's `flex` backend, pure Rust with SIMD and threads), `wgpu`
//! (Vulkan / Metal / DX12 through burn-wgpu) and `cuda` (NVIDIA, through burn-cuda); `remote` adds
//! burn's remote backend and its server (the `remote` module), for chunk shards on other machines.
//!
//! Library code stays generic over `B: Backend`; this crate gives the concrete types and a small
//! runtime chooser ([`BackendKind`]) for command-line programs.

#![warn(missing_docs)]

use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

#[cfg(feature = "remote")]
pub mod remote;
mod spec;

pub use spec::DeviceSpec;

/// The CPU backend (burn `flex`, f32).
///
/// ```
/// use burn::tensor::Tensor;
/// use focusllm_backends::{BackendKind, Cpu, probe};
///
/// let device = Default::default();
/// probe::<Cpu>(BackendKind::Cpu, &device)?; // a self-test (GPU backends may fail it)
/// let x = Tensor::<Cpu, 1>::from_floats([1.0, 2.0, 3.0], &device);
/// assert_eq!(x.sum().into_data().to_vec::<f32>().unwrap(), [6.0]);
/// # Ok::<(), focusllm_backends::BackendError>(())
/// ```
#[cfg(feature = "cpu")]
pub type Cpu = burn::backend::Flex;

/// The wgpu backend (f32).
#[cfg(feature = "wgpu")]
pub type Wgpu = burn::backend::Wgpu;

/// The CUDA backend (f32).
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda;

/// A backend named at run time (e.g. by `--backend`).
///
/// ```
/// use focusllm_backends::{BackendError, BackendKind};
///
/// // `cpu` (or `flex`), `wgpu` (or `vulkan`, `metal`), `cuda`, in any case.
/// let kind: BackendKind = "CPU".parse()?;
/// assert_eq!(kind, BackendKind::Cpu);
/// assert!(matches!("tpu".parse::<BackendKind>(), Err(BackendError::Unknown(_))));
/// // A backend this build left out says which cargo feature brings it in.
/// if !BackendKind::Cuda.is_compiled() {
///     let err = BackendKind::Cuda.ensure_compiled().unwrap_err();
///     assert!(err.to_string().ends_with("rebuild with `--features cuda`"));
/// }
/// # Ok::<(), BackendError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// burn `flex` on the CPU.
    Cpu,
    /// burn `wgpu` (Vulkan, Metal, DX12).
    Wgpu,
    /// burn `cuda`.
    Cuda,
}

/// A backend that cannot be used: unknown name, or not compiled in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BackendError {
    /// The name is not one of `cpu`, `wgpu`, `cuda`.
    #[error("unknown backend `{0}` (expected cpu, wgpu or cuda)")]
    Unknown(String),
    /// The backend's cargo feature was not enabled at build time.
    #[error("backend `{kind}` is not compiled in: rebuild with `--features {feature}`")]
    NotCompiled {
        /// The backend asked for.
        kind: BackendKind,
        /// The cargo feature that enables it.
        feature: &'static str,
    },
    /// A device named on the command line cannot be parsed.
    #[error("device `{spec}`: {reason}")]
    BadDevice {
        /// The text as given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The backend is compiled in but cannot start here (no driver, no device).
    #[error("backend `{kind}` is unavailable on this machine: {reason}")]
    Unavailable {
        /// The backend asked for.
        kind: BackendKind,
        /// What the backend reported.
        reason: String,
    },
}

/// Probes in flight: while any runs, panic messages are not printed.
static PROBES: AtomicUsize = AtomicUsize::new(0);

/// Installs, once per process, a panic hook that stays silent while a probe runs and otherwise
/// hands the panic to the hook that was installed before. Installed once and never swapped back,
/// so concurrent probes cannot leave the process with the wrong hook.
fn install_quiet_hook() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if PROBES.load(Ordering::SeqCst) == 0 {
                previous(info);
            }
        }));
    });
}

/// Checks that backend `B` can run a tensor operation on `device`.
///
/// GPU runtimes report a missing driver or device by panicking on first use (cudarc cannot load
/// `libcuda`, wgpu finds no adapter, sometimes on a worker thread); this turns that into
/// [`BackendError::Unavailable`] with the runtime's message. Panic messages of every thread are
/// silenced while a probe runs (through a hook installed once, which otherwise defers to the hook
/// installed before the first probe); safe to call from several threads.
pub fn probe<B: burn::tensor::backend::Backend>(
    kind: BackendKind,
    device: &B::Device,
) -> Result<(), BackendError> {
    install_quiet_hook();
    PROBES.fetch_add(1, Ordering::SeqCst);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let t = burn::tensor::Tensor::<B, 1>::ones([4], device);
        t.sum()
            .into_data()
            .to_vec::<f32>()
            .map(|v| v.first().copied())
    }));
    PROBES.fetch_sub(1, Ordering::SeqCst);
    match result {
        Ok(Ok(Some(sum))) if (sum - 4.0).abs() < 1e-3 => Ok(()),
        Ok(Ok(other)) => Err(BackendError::Unavailable {
            kind,
            reason: format!("self-test gave {other:?}, not 4"),
        }),
        Ok(Err(e)) => Err(BackendError::Unavailable {
            kind,
            reason: format!("{e:?}"),
        }),
        Err(panic) => {
            let reason = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "the runtime panicked".into());
            // The runtimes' own messages are often terse (a channel error from a worker thread).
            let reason = match kind {
                BackendKind::Cuda => {
                    format!("no CUDA driver or GPU could be initialised ({reason})")
                }
                BackendKind::Wgpu => {
                    format!("no Vulkan, Metal or DX12 adapter could be initialised ({reason})")
                }
                BackendKind::Cpu => reason,
            };
            Err(BackendError::Unavailable { kind, reason })
        }
    }
}

/// The wgpu device for an index: 0 is the default (best) adapter, `n` the n-th discrete GPU.
#[cfg(feature = "wgpu")]
pub fn wgpu_device(index: usize) -> burn::backend::wgpu::WgpuDevice {
    if index == 0 {
        burn::backend::wgpu::WgpuDevice::DefaultDevice
    } else {
        burn::backend::wgpu::WgpuDevice::DiscreteGpu(index)
    }
}

/// The CUDA device with this index.
#[cfg(feature = "cuda")]
pub fn cuda_device(index: usize) -> burn::backend::cuda::CudaDevice {
    burn::backend::cuda::CudaDevice::new(index)
}

impl BackendKind {
    /// The cargo feature that compiles this backend in.
    pub fn feature(self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Wgpu => "wgpu",
            Self::Cuda => "cuda",
        }
    }

    /// Whether this build includes the backend.
    pub fn is_compiled(self) -> bool {
        match self {
            Self::Cpu => cfg!(feature = "cpu"),
            Self::Wgpu => cfg!(feature = "wgpu"),
            Self::Cuda => cfg!(feature = "cuda"),
        }
    }

    /// Errors with the feature to enable when the backend is not compiled in.
    pub fn ensure_compiled(self) -> Result<Self, BackendError> {
        if self.is_compiled() {
            Ok(self)
        } else {
            Err(BackendError::NotCompiled {
                kind: self,
                feature: self.feature(),
            })
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.feature())
    }
}

impl FromStr for BackendKind {
    type Err = BackendError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "cpu" | "flex" => Ok(Self::Cpu),
            "wgpu" | "vulkan" | "metal" => Ok(Self::Wgpu),
            "cuda" => Ok(Self::Cuda),
            _ => Err(BackendError::Unknown(s.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_missing_features_are_named() {
        assert_eq!("CPU".parse::<BackendKind>().unwrap(), BackendKind::Cpu);
        assert!(matches!(
            "tpu".parse::<BackendKind>(),
            Err(BackendError::Unknown(_))
        ));
        if !cfg!(feature = "cuda") {
            let err = BackendKind::Cuda.ensure_compiled().unwrap_err();
            assert!(err.to_string().contains("--features cuda"), "{err}");
        }
    }

    #[cfg(feature = "cpu")]
    #[test]
    fn concurrent_probes_leave_the_previous_panic_hook_in_charge() {
        static SEEN: AtomicUsize = AtomicUsize::new(0);
        std::panic::set_hook(Box::new(|_| {
            SEEN.fetch_add(1, Ordering::SeqCst);
        }));
        let probes: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| probe::<Cpu>(BackendKind::Cpu, &Default::default())))
            .collect();
        for p in probes {
            p.join()
                .expect("probe thread")
                .expect("the CPU backend works");
        }
        let _ = std::panic::catch_unwind(|| panic!("after the probes"));
        assert_eq!(
            SEEN.load(Ordering::SeqCst),
            1,
            "the user's hook saw the later panic"
        );
    }
}
