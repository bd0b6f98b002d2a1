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
///
/// ```
/// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/doc/counter.rs"));
/// # fn main() -> focusllm_core::Result<()> {
/// use focusllm_core::{CancelToken, FocusConfig, FocusEngine, FocusError, Stage};
///
/// // `Counter`: the toy model family of `LocalDecoder`'s example; 40 tokens make 4 chunks,
/// // decoded one per batch here.
/// let config = FocusConfig::default()
///     .with_local_window(8)
///     .with_chunk_size(8)
///     .with_chunk_batch_size(1);
/// let engine = FocusEngine::new(&Counter, config)?;
/// let mut session = engine.session();
/// let ids: Vec<u32> = (0..40).collect();
///
/// let token = CancelToken::new();
/// session.set_cancel_token(token.clone());
/// // Any clone cancels: from another thread (a Ctrl-C handler, a UI), or from the progress
/// // callback, as here after two chunks.
/// let clone = token.clone();
/// session.on_progress(move |p| {
///     if p.stage == Stage::Chunks && p.done == 2 {
///         clone.cancel();
///     }
/// });
/// assert!(matches!(session.prefill(&ids), Err(FocusError::Cancelled)));
/// assert!(token.is_cancelled());
///
/// token.reset(); // the token can be reused
/// session.on_progress(|_| {});
/// assert_eq!(session.prefill(&ids)?.len(), 64); // the next-token logits
/// # Ok(())
/// # }
/// ```
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
