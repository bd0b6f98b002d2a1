//! The one error type of `focusllm-models`: every loader and model entry point returns it.

use std::path::PathBuf;

/// What went wrong while loading or running a model. Each variant names the file, key, tensor or
/// shape at fault so that a user can act on it.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A candidate adapter does not fit the model or cannot be written.
    #[error("adapter: {0}")]
    Adapter(String),
    /// A file could not be opened, mapped or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A safetensors file (or its index) is truncated or malformed.
    #[error("{path}: invalid safetensors file: {reason}")]
    Safetensors {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A GGUF file is truncated or malformed, or lacks a metadata key the loader needs (named).
    #[error("{path}: invalid GGUF file: {reason}")]
    Gguf {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A tensor is stored in a type this crate cannot decode.
    #[error("{path}: tensor `{tensor}` has unsupported type {dtype}")]
    UnsupportedDtype {
        /// The file.
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
        /// The type found in the file.
        dtype: String,
    },
    /// A KV cache dtype other than f32, f16, bf16 or i8 (see `LlamaModel::set_cache_dtype`).
    #[error("unsupported cache dtype {dtype}: f32, f16, bf16 or i8")]
    UnsupportedCacheDtype {
        /// The dtype asked for.
        dtype: String,
    },
    /// A tensor the architecture needs is not in the checkpoint.
    #[error("{path}: missing tensor `{tensor}`")]
    MissingTensor {
        /// The checkpoint (file or directory).
        path: PathBuf,
        /// The tensor's name.
        tensor: String,
    },
    /// A tensor's shape disagrees with the model configuration.
    #[error("tensor `{tensor}` has shape {found:?}, but the config expects {expected:?}")]
    ShapeMismatch {
        /// The tensor's name.
        tensor: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape found in the checkpoint.
        found: Vec<usize>,
    },
    /// A configuration (`config.json`, or GGUF metadata with inconsistent sizes) has a missing key or
    /// a bad value.
    #[error("{path}: invalid model config: {reason}")]
    Config {
        /// The file the config came from.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A load option cannot be honoured with this backend or dtype.
    #[error("{option}: {reason}")]
    UnsupportedOption {
        /// The option (a field of [`crate::LoadOptions`]).
        option: &'static str,
        /// Why, and what would work.
        reason: String,
    },
    /// The checkpoint is of an architecture this crate does not implement.
    #[error("unsupported architecture `{arch}` (supported: {supported})")]
    UnsupportedArchitecture {
        /// The architecture named by the checkpoint.
        arch: String,
        /// The architectures this crate supports.
        supported: &'static str,
    },
    /// The tokenizer could not be built, or failed to encode/decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A chat template failed to compile or to render, or rejected the conversation itself
    /// (`raise_exception`, e.g. roles that do not alternate).
    #[error("{origin}: {message}")]
    ChatTemplate {
        /// Where the template came from: `chat_template.jinja` or `tokenizer_config.json` (with
        /// its path), the GGUF metadata key, or `chat template` for one given directly.
        origin: String,
        /// What failed.
        failure: ChatTemplateFailure,
        /// The template line at fault (1-based), when known.
        line: Option<usize>,
        /// What went wrong, with the line and its text; for [`ChatTemplateFailure::Raised`], the
        /// template's own message.
        message: String,
    },
    /// The checkpoint has no usable chat template: the caller decides whether to use the prompt
    /// raw (e.g. for a base model) or to supply a template.
    #[error("the checkpoint has no chat template: {reason}")]
    NoChatTemplate {
        /// Where the template was looked for.
        reason: String,
    },
    /// A token id is not in the model's vocabulary.
    #[error("token id {id} is out of the vocabulary (size {vocab})")]
    TokenOutOfVocab {
        /// The offending id.
        id: u32,
        /// The vocabulary size.
        vocab: usize,
    },
    /// A Hugging Face model id (`org/name[@revision][:file.gguf]`) is malformed.
    #[error("invalid model id `{id}`: {reason}")]
    InvalidModelId {
        /// The id as given.
        id: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A file of a Hugging Face Hub repository is neither in the local cache nor downloadable.
    #[error("{repo}@{revision}: `{file}`: {message}")]
    Hub {
        /// The repository (`org/name`).
        repo: String,
        /// The revision asked for (`main` unless the id named one).
        revision: String,
        /// The file of the repository at fault.
        file: String,
        /// What kind of failure it is.
        kind: HubErrorKind,
        /// What happened, and what to do about it.
        message: String,
    },
}

/// The kinds of [`ModelError::Hub`] failures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HubErrorKind {
    /// The file is not in the cache and offline mode (`HF_HUB_OFFLINE`) forbids downloading it.
    Offline,
    /// The Hub has no such file at that revision (HTTP 404), or no such repository or revision, or
    /// the repository holds neither `model.safetensors` nor `model.safetensors.index.json`.
    NotFound,
    /// The Hub refused access (HTTP 401/403): the repository does not exist, is private, or is gated.
    Unauthorized,
    /// The download failed (network, HTTP error, or writing into the cache).
    Download,
    /// The cache cannot be located or read.
    Cache,
    /// The repository's files are unusable (e.g. a shard index naming a path outside the snapshot).
    InvalidRepo,
}

impl ModelError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

/// What failed in a [`ModelError::ChatTemplate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChatTemplateFailure {
    /// The template is not valid Jinja (or uses a tag this renderer lacks).
    Compile,
    /// Rendering failed: an undefined attribute, an unsupported operation or filter, ...
    Render,
    /// The template called `raise_exception`: it rejects the conversation it was given.
    Raised,
}

impl std::fmt::Display for ChatTemplateFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Compile => "syntax error",
            Self::Render => "render error",
            Self::Raised => "the template raised an error",
        })
    }
}
