//! Shared plumbing of the example programs: choosing a backend at run time, resolving the model,
//! progress bars.

use std::path::PathBuf;

use burn::tensor::backend::Backend;
use focusllm_backends::{BackendError, BackendKind, DeviceSpec};
use focusllm_core::{AnyBackendDecoder, Progress, Stage};
use focusllm_models::{AdapterInfo, CandidateAdapter};
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
/// off is an error naming the feature; one that cannot start (no driver or device) is an error
/// with the runtime's reason.
pub fn run_on<R: BackendRunner>(
    kind: BackendKind,
    index: usize,
    runner: R,
) -> Result<R::Output, BackendError> {
    kind.ensure_compiled()?;
    let _ = (&runner, index);
    match kind {
        #[cfg(feature = "cpu")]
        BackendKind::Cpu => Ok(runner.run::<focusllm_backends::Cpu>(Default::default())),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => {
            let device = focusllm_backends::wgpu_device(index);
            focusllm_backends::probe::<focusllm_backends::Wgpu>(kind, &device)?;
            Ok(runner.run::<focusllm_backends::Wgpu>(device))
        }
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => {
            let device = focusllm_backends::cuda_device(index);
            focusllm_backends::probe::<focusllm_backends::Cuda>(kind, &device)?;
            Ok(runner.run::<focusllm_backends::Cuda>(device))
        }
        #[allow(unreachable_patterns)]
        other => Err(BackendError::NotCompiled {
            kind: other,
            feature: other.feature(),
        }),
    }
}

/// The model to load: `--model` when given (an existing path, else a Hugging Face id
/// `org/name[@revision][:file.gguf]` fetched through the standard HF cache), else
/// `$FOCUSLLM_MODEL`, else the default SmolLM2 GGUF (fetched into the cache on first use).
pub fn resolve_model(arg: Option<PathBuf>) -> Result<PathBuf, AppError> {
    let Some(arg) = arg else {
        return Ok(super::fetch::default_model()?);
    };
    let source = match arg.to_str() {
        Some(text) => focusllm_models::ModelSource::parse(text)?,
        None => focusllm_models::ModelSource::Local(arg),
    };
    let path = source.resolve(&focusllm_models::HubOptions::from_env())?;
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
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new(0)
        };
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>10} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
            )
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

/// Command-line flags shared by the examples: the model, the backend and the FocusLLM sizes.
#[derive(clap::Args, Debug, Clone)]
pub struct EngineArgs {
    /// GGUF file, HF model directory, or Hugging Face id `org/name[@revision][:file.gguf]` (through
    /// the HF cache; HF_HOME, HF_HUB_OFFLINE) (default: $FOCUSLLM_MODEL, else the
    /// SmolLM2-135M-Instruct GGUF, fetched into the cache on first use).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Backend: cpu, wgpu or cuda (the latter two need the cargo feature of the same name).
    #[arg(long, default_value = "cpu")]
    pub backend: BackendKind,
    /// Device index (GPU backends).
    #[arg(long, default_value_t = 0)]
    pub device: usize,
    /// Devices that decode the chunks, comma-separated: `cpu`, `cuda:N`, `wgpu:N`, or a shard
    /// server `ws://HOST:PORT` (`focusllm serve`; cargo feature `remote`). Each holds its own copy
    /// of the model and the caches of its chunks; chunk batches go to them in turn and only
    /// candidates come back to the main decoder (`--backend`, `--device`). Default: the main
    /// decoder's device.
    #[arg(long, value_delimiter = ',')]
    pub devices: Vec<DeviceSpec>,
    /// Local window L (tokens the main decoder reads in full) [default: 2048, or the adapter's].
    #[arg(long)]
    pub local_window: Option<usize>,
    /// Chunk size S [default: 2048, or the adapter's].
    #[arg(long)]
    pub chunk_size: Option<usize>,
    /// Dynamic-prompt cap [default: 512, or the adapter's].
    #[arg(long)]
    pub prompt_cap: Option<usize>,
    /// Inputs shorter than this are decoded plainly (default: the model's native context).
    #[arg(long)]
    pub threshold: Option<usize>,
    /// Chunks decoded per batch.
    #[arg(long, default_value_t = 4)]
    pub batch: usize,
    /// Use copies of the ordinary projections as candidate projections even when the checkpoint
    /// has trained ones, and apply no adapter.
    #[arg(long)]
    pub untrained: bool,
    /// Candidate adapter (safetensors, from `focusllm train`) to apply; its recorded sizes and
    /// step mode become the defaults. `passkey`, `ask` and `generate` apply the bundled SmolLM2
    /// adapter by default when they run the default model; `logits` and `bench` only this one.
    #[arg(long, conflicts_with = "untrained")]
    pub adapter: Option<PathBuf>,
    /// Compute dtype: f32 (default), f16 or bf16 (where the backend supports it).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
    pub dtype: String,
    /// Decoding after the prefill: `exact` (the reference: candidates refreshed at every token) or
    /// `frozen` (candidates kept, main decoder cached; much faster per token) [default: exact, or
    /// the mode the adapter was trained for].
    #[arg(long, value_parser = ["exact", "frozen"])]
    pub step_mode: Option<String>,
    /// Dtype of the KV caches kept between tokens (the chunks' raw caches; plain decoding's and
    /// frozen mode's main cache from the first step): f32 (default, exact), f16 or bf16 (half the
    /// memory; f16 is read in place by the CPU's step kernels), or i8 (8 bits per value and a
    /// scale per row: a bit over a quarter).
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16", "i8"])]
    pub cache_dtype: String,
    /// Attention and RoPE kernels: `fused` (CPU kernels on the cpu backend with f32 compute,
    /// burn's operations elsewhere) or `burn` (burn's operations everywhere, but for the products
    /// of weights kept quantized by `--weights quantized`).
    #[arg(long, default_value = "fused", value_parser = ["fused", "burn"])]
    pub kernels: String,
    /// Precision of the matrix products of long forwards (the projections and attention of
    /// prefills and exact steps): `f32`, or `bf16` (both operands rounded to bf16, sums in f32:
    /// up to twice as fast on CPUs with AVX-512 BF16, at bf16's rounding; fused CPU kernels
    /// only, decoding steps stay f32).
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    pub matmul: String,
    /// A GGUF's quantized matrices (projections, token table, LM head): `quantized` (kept in
    /// their blocks as stored and multiplied directly: a quarter to a seventh of the memory,
    /// faster decoding steps, the f32 model's numbers up to rounding; cpu backend with f32
    /// compute only), `f32` (decoded at load), or `auto`: quantized where that is supported,
    /// f32 elsewhere (GPU backends, f16/bf16 compute, `--kernels burn`).
    #[arg(long, default_value = "auto", value_parser = ["auto", "f32", "quantized"])]
    pub weights: String,
    /// How a decoding step's activations meet quantized weights: `f32` (the f32 model's numbers
    /// up to rounding) or `int8` (rounded to 8 bits per block of 32 and multiplied in integers,
    /// as llama.cpp does: faster steps, at the cost of the activations' rounding; needs quantized
    /// weights).
    #[arg(long, default_value = "f32", value_parser = ["f32", "int8"])]
    pub activations: String,
    /// Tokens per forward of a long prefill (the main decoder's and each chunk batch's): larger
    /// blocks take more memory for the same arithmetic; 0 runs a whole input in one forward.
    #[arg(long, default_value_t = focusllm_models::DEFAULT_PREFILL_BLOCK)]
    pub prefill_block: usize,
    /// No progress bars.
    #[arg(long)]
    pub quiet: bool,
}

impl EngineArgs {
    /// The engine configuration these flags describe.
    pub fn focus_config(&self) -> focusllm_core::FocusConfig {
        self.focus_config_for(None)
    }

    /// The engine configuration for a model carrying `adapter`: flags first, then the adapter's
    /// recommended sizes and step mode (what it was trained with), then the defaults.
    pub fn focus_config_for(&self, adapter: Option<&AdapterInfo>) -> focusllm_core::FocusConfig {
        let defaults = focusllm_core::FocusConfig::default();
        let step_mode = self
            .step_mode
            .clone()
            .or_else(|| adapter.and_then(|a| a.step_mode.clone()));
        defaults
            .clone()
            .with_local_window(
                self.local_window
                    .or(adapter.and_then(|a| a.local_window))
                    .unwrap_or(defaults.local_window),
            )
            .with_chunk_size(
                self.chunk_size
                    .or(adapter.and_then(|a| a.chunk_size))
                    .unwrap_or(defaults.chunk_size),
            )
            .with_prompt_cap(
                self.prompt_cap
                    .or(adapter.and_then(|a| a.prompt_cap))
                    .unwrap_or(defaults.prompt_cap),
            )
            .with_plain_threshold(self.threshold)
            .with_chunk_batch_size(self.batch)
            .with_step_mode(match step_mode.as_deref() {
                Some("frozen") => focusllm_core::StepMode::FrozenCandidates,
                _ => focusllm_core::StepMode::Exact,
            })
    }

    /// The adapter to apply to `loaded`: `--adapter`, else (when `bundled_default` and the model is
    /// the default SmolLM2 GGUF, and `--untrained` is off) the adapter committed with this crate;
    /// `None` otherwise. Returns the model with the adapter applied and the adapter's metadata.
    pub fn adapter_for<B: Backend>(
        &self,
        loaded: &focusllm_models::LoadedModel<B>,
        bundled_default: bool,
    ) -> Result<Option<AppliedAdapter<B>>, AppError> {
        let path = match &self.adapter {
            Some(p) => p.clone(),
            None if bundled_default && !self.untrained && is_default_model(&loaded.path) => {
                super::fetch::bundled_adapter().map_err(|e| {
                    format!(
                        "the bundled adapter: {e} (set FOCUSLLM_HOME to a writable directory, or \
                         pass --adapter PATH or --untrained)"
                    )
                })?
            }
            None => return Ok(None),
        };
        let (adapter, info) = CandidateAdapter::<B>::load(&path, &loaded.model)?;
        let model = adapter.apply(loaded.model.clone())?;
        Ok(Some(AppliedAdapter { path, info, model }))
    }

    /// The model to run, `adapted`'s when there is an adapter (its path printed to stderr), and the
    /// engine configuration for it (see [`EngineArgs::focus_config_for`]).
    pub fn model_and_config<'a, B: Backend>(
        &self,
        loaded: &'a focusllm_models::LoadedModel<B>,
        adapted: &'a Option<AppliedAdapter<B>>,
    ) -> (
        &'a focusllm_models::LlamaModel<B>,
        focusllm_core::FocusConfig,
    ) {
        match adapted {
            Some(a) => {
                if !self.quiet {
                    eprintln!("adapter {}", a.path.display());
                }
                (&a.model, self.focus_config_for(Some(&a.info)))
            }
            None => (&loaded.model, self.focus_config()),
        }
    }

    /// Resolves (and if needed fetches) the model, then loads it on `device`.
    pub fn load<B: Backend>(
        &self,
        device: &B::Device,
    ) -> Result<focusllm_models::LoadedModel<B>, AppError> {
        let path = resolve_model(self.model.clone())?;
        let options = focusllm_models::LoadOptions {
            trained_candidates: !self.untrained,
            dtype: parse_dtype(&self.dtype).unwrap_or(burn::tensor::DType::F32),
            keep_quantized: self.weights == "quantized",
            activations: match self.activations.as_str() {
                "int8" => focusllm_models::ActivationPrecision::Int8,
                _ => focusllm_models::ActivationPrecision::F32,
            },
        };
        // `auto` keeps blocks only with the fused kernels: `--kernels burn` promises burn's
        // operations everywhere, and quantized products run CPU kernels of our own.
        let options = match self.weights.as_str() {
            "auto" if self.kernels == "fused" => options.keep_quantized_where_supported::<B>(),
            _ => options,
        };
        if options.activations != focusllm_models::ActivationPrecision::F32
            && !options.keep_quantized
        {
            return Err(format!(
                "--activations {} multiplies quantized weights, but this run loads them as f32 \
                 (--weights {}, --kernels {}, --dtype {}, backend {:?}): quantized weights need \
                 the cpu backend, f32 compute and the fused kernels",
                self.activations, self.weights, self.kernels, self.dtype, self.backend
            )
            .into());
        }
        let mut loaded = focusllm_models::load_model_with::<B>(&path, device, &options)?;
        loaded
            .model
            .set_cache_dtype(match self.cache_dtype.as_str() {
                "i8" => Some(burn::tensor::DType::I8),
                other => parse_dtype(other),
            })?;
        loaded.model.set_kernels(parse_kernels(&self.kernels));
        loaded
            .model
            .set_matmul_precision(match self.matmul.as_str() {
                "bf16" => focusllm_models::MatmulPrecision::Bf16,
                _ => focusllm_models::MatmulPrecision::F32,
            });
        loaded.model.set_prefill_block(self.prefill_block);
        Ok(loaded)
    }
}

impl EngineArgs {
    /// The chunk decoders of a run, for a [`focusllm_core::ShardedDecoder`] whose main decoder is
    /// `model` on `device`: `model` itself when `--devices` is not given, else a copy of the model
    /// on each listed device, loaded as the main one was and with `adapter` (the file applied to
    /// `model`, if any) applied.
    pub fn chunk_shards<B: Backend>(
        &self,
        model: &focusllm_models::LlamaModel<B>,
        adapter: Option<&std::path::Path>,
        device: &B::Device,
    ) -> Result<Vec<AnyBackendDecoder<B>>, AppError> {
        if self.devices.is_empty() {
            let label = DeviceSpec::Local {
                kind: self.backend,
                index: self.device,
            };
            return Ok(vec![
                AnyBackendDecoder::new::<B, _>(model.clone(), device.clone())
                    .with_label(label.to_string()),
            ]);
        }
        self.devices
            .iter()
            .map(|spec| {
                let shard = self
                    .shard_on::<B>(spec, adapter, device)
                    .map_err(|e| AppError::from(format!("chunk shard {spec}: {e}")))?;
                if !self.quiet {
                    eprintln!("chunk shard on {spec}");
                }
                Ok(shard.with_label(spec.to_string()))
            })
            .collect()
    }

    /// A copy of the model on the device `spec`, as a chunk decoder for the main `device`.
    fn shard_on<B: Backend>(
        &self,
        spec: &DeviceSpec,
        adapter: Option<&std::path::Path>,
        device: &B::Device,
    ) -> Result<AnyBackendDecoder<B>, AppError> {
        match spec {
            DeviceSpec::Local { kind, index } => {
                kind.ensure_compiled()?;
                let _ = index;
                match kind {
                    #[cfg(feature = "cpu")]
                    BackendKind::Cpu => Ok(AnyBackendDecoder::new::<focusllm_backends::Cpu, _>(
                        self.shard_model(Default::default(), adapter)?,
                        device.clone(),
                    )),
                    #[cfg(feature = "wgpu")]
                    BackendKind::Wgpu => {
                        let shard_device = focusllm_backends::wgpu_device(*index);
                        focusllm_backends::probe::<focusllm_backends::Wgpu>(*kind, &shard_device)?;
                        Ok(AnyBackendDecoder::new::<focusllm_backends::Wgpu, _>(
                            self.shard_model(shard_device, adapter)?,
                            device.clone(),
                        ))
                    }
                    #[cfg(feature = "cuda")]
                    BackendKind::Cuda => {
                        let shard_device = focusllm_backends::cuda_device(*index);
                        focusllm_backends::probe::<focusllm_backends::Cuda>(*kind, &shard_device)?;
                        Ok(AnyBackendDecoder::new::<focusllm_backends::Cuda, _>(
                            self.shard_model(shard_device, adapter)?,
                            device.clone(),
                        ))
                    }
                    #[allow(unreachable_patterns)]
                    other => Err(BackendError::NotCompiled {
                        kind: *other,
                        feature: other.feature(),
                    }
                    .into()),
                }
            }
            #[cfg(feature = "remote")]
            DeviceSpec::Remote(address) => {
                use focusllm_backends::remote::{Remote, reachable, remote_device};
                // burn's client panics when the server cannot be reached: ask first.
                reachable(address)?;
                let model = self.shard_model::<Remote>(remote_device(address), adapter)?;
                let address = address.clone();
                // A lost server is an error, not a crash or a hang (see `isolated`).
                Ok(AnyBackendDecoder::isolated::<Remote, _>(
                    model,
                    device.clone(),
                    move || reachable(&address),
                ))
            }
            #[cfg(not(feature = "remote"))]
            DeviceSpec::Remote(_) => Err(
                "shard servers need the cargo feature `remote`: rebuild with `--features remote`"
                    .into(),
            ),
        }
    }

    /// Loads the model on `shard_device` (backend `S`) as [`EngineArgs::load`] does and applies
    /// `adapter`.
    fn shard_model<S: Backend>(
        &self,
        shard_device: S::Device,
        adapter: Option<&std::path::Path>,
    ) -> Result<focusllm_models::LlamaModel<S>, AppError> {
        let loaded = self.load::<S>(&shard_device)?;
        let model = match adapter {
            Some(path) => {
                let (adapter, _) = CandidateAdapter::<S>::load(path, &loaded.model)?;
                adapter.apply(loaded.model)?
            }
            None => loaded.model,
        };
        Ok(model)
    }
}

/// A candidate adapter applied to a model.
pub struct AppliedAdapter<B: Backend> {
    /// The adapter file.
    pub path: PathBuf,
    /// Its metadata (training, recommended settings).
    pub info: AdapterInfo,
    /// The model with the adapter's candidate projections.
    pub model: focusllm_models::LlamaModel<B>,
}

/// Whether `path` is the default model (the SmolLM2 GGUF the bundled adapter was trained on).
fn is_default_model(path: &std::path::Path) -> bool {
    path.file_name()
        .is_some_and(|n| n == super::fetch::DEFAULT_MODEL_FILE)
}

/// `"burn"` → [`focusllm_models::Kernels::Burn`]; anything else (`"fused"`) → the default.
pub fn parse_kernels(name: &str) -> focusllm_models::Kernels {
    match name {
        "burn" => focusllm_models::Kernels::Burn,
        _ => focusllm_models::Kernels::Fused,
    }
}

/// `"f16"` / `"bf16"` → that dtype; anything else (`"f32"`) → `None` (the default).
fn parse_dtype(name: &str) -> Option<burn::tensor::DType> {
    match name {
        "f16" => Some(burn::tensor::DType::F16),
        "bf16" => Some(burn::tensor::DType::BF16),
        _ => None,
    }
}

/// Runs an example's `run` and turns its result into the exit status, printing the error (and its
/// causes) readably. A closed stdout (`... | head`) ends the program quietly: SIGPIPE gets its
/// default action back (Rust ignores it, which turns the write into a panic in `println!`).
pub fn run_main(run: impl FnOnce() -> Result<(), AppError>) -> std::process::ExitCode {
    #[cfg(unix)]
    // SAFETY: called first thing in `main`, before any other thread exists; restoring a signal's
    // default disposition has no other effect on the process.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    crate::cli::memory::tune_allocator();
    init_logging();
    report(run())
}

/// Sends the library's `tracing` events to stderr, filtered by `FOCUSLLM_LOG` (the `RUST_LOG`
/// syntax, e.g. `FOCUSLLM_LOG=focusllm_core=debug`; warnings only by default).
/// `FOCUSLLM_TRAIN_PROFILE=1` adds the training passes' timings (`focusllm_models::train=debug`).
fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let mut filter =
        EnvFilter::try_from_env("FOCUSLLM_LOG").unwrap_or_else(|_| EnvFilter::new("warn"));
    if std::env::var_os("FOCUSLLM_TRAIN_PROFILE").is_some() {
        filter = filter.add_directive(
            "focusllm_models::train=debug"
                .parse()
                .expect("a valid directive"),
        );
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .init();
}

/// Turns a program's result into its exit status, printing the error (and its causes) readably.
pub fn report(result: Result<(), AppError>) -> std::process::ExitCode {
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = e.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// The ids that end a chat answer: the model's EOS ids plus the end-of-turn markers its tokenizer
/// knows (`<|im_end|>`, `<|eot_id|>`, `</s>`).
pub fn chat_stop_tokens(eos_ids: Vec<u32>, tokenizer: &focusllm_models::Tokenizer) -> Vec<u32> {
    let mut stops = eos_ids;
    stops.extend(
        ["<|im_end|>", "<|eot_id|>", "</s>"]
            .iter()
            .filter_map(|t| tokenizer.token_id(t)),
    );
    stops
}

/// What [`stream_to_stdout`] measured.
#[derive(Debug, Clone)]
pub struct Streamed {
    /// The generation.
    pub generation: focusllm_core::Generation,
    /// Seconds until the first token (the prefill).
    pub first_token_s: f64,
    /// Seconds in all.
    pub total_s: f64,
    /// How the prompt was read.
    pub mode: focusllm_core::Mode,
    /// Per chunk, its focus share summed over the generated tokens (`None` in plain mode).
    pub focus: Option<Vec<f32>>,
    /// Per generated token, its text and focus map (empty in plain mode).
    pub token_focus: Vec<(String, Vec<f32>)>,
}

/// Generates from `ids` and prints the text to stdout as it comes (stop tokens not printed);
/// clears `view` when the first token arrives.
pub fn stream_to_stdout<B, L, M, C, A>(
    session: &mut focusllm_core::Session<'_, B, L, M, C, A>,
    ids: &[u32],
    options: &focusllm_core::GenerateOptions,
    tokenizer: &focusllm_models::Tokenizer,
    view: &ProgressView,
) -> Result<Streamed, AppError>
where
    B: Backend,
    L: focusllm_core::LocalDecoder<B>,
    M: focusllm_core::MainDecoder<B>,
    C: focusllm_core::Chunker,
    A: focusllm_core::CandidateAggregator<B>,
{
    use std::io::Write;
    let start = std::time::Instant::now();
    let mut first_token = None;
    let mut stdout = std::io::stdout();
    let mut token_focus = Vec::new();
    let generation = session.generate(ids, options, Some(tokenizer), |t| {
        if first_token.is_none() {
            view.finish();
            first_token = Some(start.elapsed().as_secs_f64());
        }
        if let Some(map) = &t.focus {
            token_focus.push((t.text.clone(), map.chunks.clone()));
        }
        if !options
            .stop_tokens
            .as_ref()
            .is_some_and(|s| s.contains(&t.id))
        {
            print!("{}", t.text);
            stdout.flush().ok();
        }
        std::ops::ControlFlow::Continue(())
    })?;
    println!();
    let total_s = start.elapsed().as_secs_f64();
    Ok(Streamed {
        generation,
        first_token_s: first_token.unwrap_or(total_s),
        total_s,
        mode: session.mode(),
        focus: summed_focus(&token_focus),
        token_focus,
    })
}

/// Per-token focus maps summed per chunk (`None` when there are none: plain mode).
pub fn summed_focus(token_focus: &[(String, Vec<f32>)]) -> Option<Vec<f32>> {
    let (_, first) = token_focus.first()?;
    let mut sum = vec![0.0; first.len()];
    for (_, shares) in token_focus {
        sum.iter_mut().zip(shares).for_each(|(s, x)| *s += x);
    }
    Some(sum)
}
