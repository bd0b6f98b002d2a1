//! Progress reporting and cancellation for long work.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Which part of the work a [`Progress`] report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Plain (unchunked) prefill.
    PlainPrefill,
    /// Decoding memory chunks; `done`/`total` count chunks.
    Chunks,
    /// The main decoder's pass over the local context.
    Main,
    /// Generating or teacher-forcing tokens; `done`/`total` count tokens.
    Tokens,
}

/// A progress report: `done` of `total` units of `stage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The stage.
    pub stage: Stage,
    /// Units done.
    pub done: usize,
    /// Units in all.
    pub total: usize,
}

/// A cloneable flag that stops long work at the next batch boundary with
/// [`crate::FocusError::Cancelled`].
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A fresh, un-cancelled token.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the work to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    /// Clears the flag so the token can be reused.
    pub fn reset(&self) {
        self.0.store(false, Ordering::Relaxed);
    }
}
