//! Shared plumbing of the example programs: choosing a backend at run time, resolving the model,
//! progress bars.

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use focusllm_backends::{BackendError, BackendKind};
use focusllm_core::{Progress, Stage};
use indicatif::{ProgressBar, ProgressStyle};

/// Boxed error of the example programs.
pub type AppError = Box<dyn std::error::Error + Send + Sync>;

/// A program body generic over the backend; [`run_on`] picks the backend at run time.
pub trait BackendRunner {
    /// What the body returns.
    type Output;
    /// Runs the body on backend `B` and `device`.
    fn run<B: Backend>(self, device: B::Device) -> Self::Output;
}

/// Runs `runner` on the backend `kind` (device `index` for GPUs). A backend whose cargo feature is
/// off is an error naming the feature.
pub fn run_on<R: BackendRunner>(kind: BackendKind, index: usize, runner: R) -> Result<R::Output, BackendError> {
    kind.ensure_compiled()?;
    let _ = (&runner, index);
    match kind {
        #[cfg(feature = "cpu")]
        BackendKind::Cpu => Ok(runner.run::<focusllm_backends::Cpu>(Default::default())),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => {
            let device = if index == 0 {
                burn::backend::wgpu::WgpuDevice::DefaultDevice
            } else {
                burn::backend::wgpu::WgpuDevice::DiscreteGpu(index)
            };
            Ok(runner.run::<focusllm_backends::Wgpu>(device))
        }
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => {
            Ok(runner.run::<focusllm_backends::Cuda>(burn::backend::cuda::CudaDevice::new(index)))
        }
        #[allow(unreachable_patterns)]
        other => Err(BackendError::NotCompiled { kind: other, feature: other.feature() }),
    }
}

/// The model to load: `--model` when given, else `$FOCUSLLM_MODEL`, else the default SmolLM2 GGUF
/// (fetched into the cache on first use).
pub fn resolve_model(arg: Option<PathBuf>) -> Result<PathBuf, AppError> {
    let path = match arg {
        Some(p) => p,
        None => crate::fetch::default_model()?,
    };
    if !path.exists() {
        return Err(format!("model not found: {}", path.display()).into());
    }
    Ok(path)
}

/// A progress bar on stderr fed by the engine's progress reports (hidden when `quiet`).
pub struct ProgressView {
    bar: ProgressBar,
}

impl ProgressView {
    /// A bar labelled `label`.
    pub fn new(label: &str, quiet: bool) -> Self {
        let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(0) };
        bar.set_style(
            ProgressStyle::with_template("{prefix:>10} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
                .expect("static template")
                .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        Self { bar }
    }

    /// Shows one engine report.
    pub fn update(&self, p: Progress) {
        let what = match p.stage {
            Stage::PlainPrefill => "plain prefill",
            Stage::Chunks => "chunks",
            Stage::Main => "main pass",
            Stage::Tokens => "tokens",
        };
        self.bar.set_length(p.total as u64);
        self.bar.set_position(p.done as u64);
        self.bar.set_message(what);
    }

    /// Sets the label.
    pub fn set_label(&self, label: String) {
        self.bar.set_prefix(label);
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
