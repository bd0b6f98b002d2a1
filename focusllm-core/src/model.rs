//! What the engine knows of a model apart from its passes.

use crate::error::Result;

/// A model's vocabulary, special tokens and native context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    /// Vocabulary size (ids must be below it).
    pub vocab_size: usize,
    /// The BOS id, if the model uses one (the reference's BOS rule prepends it).
    pub bos_id: Option<u32>,
    /// Ids that end generation.
    pub eos_ids: Vec<u32>,
    /// The context the model was trained on (the default plain-decoding threshold).
    pub native_context: usize,
}

/// A model the engine can read with: it describes itself. The passes are
/// [`crate::LocalDecoder`] and [`crate::MainDecoder`] (the former's example implements all three).
pub trait Model {
    /// The model's vocabulary, special tokens and native context.
    fn spec(&self) -> ModelSpec;
}

/// Turns token ids back into text (implemented by the model crate's tokenizer); used to stream text.
pub trait Detokenizer {
    /// Decodes `ids` to text (special tokens kept).
    fn detokenize(&self, ids: &[u32]) -> Result<String>;
}
