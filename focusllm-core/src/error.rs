//! The engine's error type.

/// What can go wrong while planning, decoding or sampling. Public APIs of `focusllm-core` return it.
#[derive(Debug, thiserror::Error)]
pub enum FocusError {
    /// A configuration value is out of range (the field and the reason are named).
    #[error("invalid config: `{field}` {reason}")]
    InvalidConfig {
        /// The field at fault.
        field: &'static str,
        /// Why its value is rejected.
        reason: String,
    },
    /// The input holds no tokens.
    #[error("empty input: at least one token is needed")]
    EmptyInput,
    /// A token id is not in the model's vocabulary.
    #[error("token id {id} at input position {position} is out of the vocabulary (size {vocab})")]
    TokenOutOfVocab {
        /// The offending id.
        id: u32,
        /// Where it occurs in the sequence handed to the engine.
        position: usize,
        /// The vocabulary size.
        vocab: usize,
    },
    /// The work was cancelled through a [`crate::CancelToken`].
    #[error("cancelled by the caller")]
    Cancelled,
    /// `step` or `generate` was called before `prefill`.
    #[error("no prompt: call `prefill` before `step`")]
    NotPrefilled,
    /// The sampler got logits it cannot sample from (empty, or all NaN).
    #[error("cannot sample: {0}")]
    Sampling(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory at fault.
        path: std::path::PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// Training data cannot be used as given.
    #[error("training data: {0}")]
    Data(String),
    /// A training checkpoint cannot be written, read or resumed.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A decoder (model implementation) failed.
    #[error("decoder: {0}")]
    Decoder(String),
    /// A chunk shard (a local decoder on another device, backend or machine) failed or was lost:
    /// the shard is named, then what its backend reported.
    #[error("chunk shard {shard}: {reason}")]
    Shard {
        /// The shard: its device as the user named it (e.g. `cuda:1`, `ws://10.0.0.2:3000`).
        shard: String,
        /// What went wrong.
        reason: String,
    },
}

impl FocusError {
    /// Turns an I/O error on `path` into [`FocusError::Io`] (for `map_err`).
    pub(crate) fn io_at(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self + use<> {
        let path = path.to_path_buf();
        move |source| Self::Io { path, source }
    }
}

/// Shorthand for results of this crate.
pub type Result<T, E = FocusError> = std::result::Result<T, E>;

/// Checks that every id is inside the vocabulary.
pub fn check_vocab(ids: &[u32], vocab: usize) -> Result<()> {
    match ids.iter().position(|&id| id as usize >= vocab) {
        Some(position) => Err(FocusError::TokenOutOfVocab {
            id: ids[position],
            position,
            vocab,
        }),
        None => Ok(()),
    }
}
