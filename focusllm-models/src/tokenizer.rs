//! Tokenization: the `tokenizers` crate, loaded from `tokenizer.json` or rebuilt from GGUF metadata.

use std::path::Path;

use focusllm_core::{Detokenizer, FocusError};

use crate::error::ModelError;
use crate::gguf::GgufFile;

/// A model's tokenizer with its special tokens and chat template.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    chat_template: Option<String>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .finish()
    }
}

impl Tokenizer {
    /// Loads an HF `tokenizer.json` (and the chat template of a sibling `tokenizer_config.json`).
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        let bad =
            |e: &dyn std::fmt::Display| ModelError::Tokenizer(format!("{}: {e}", path.display()));
        // Parsed to a JSON value first: `tokenizers` 0.23 panics (an `expect` in its decoder
        // deserializer) instead of failing on malformed JSON, which the value parser reports.
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(&e))?;
        let inner: tokenizers::Tokenizer = guarded(&path.display().to_string(), || {
            serde_json::from_value(json).map_err(|e| bad(&e))
        })?;
        let config_path = path.with_file_name("tokenizer_config.json");
        let config: serde_json::Value = std::fs::read_to_string(&config_path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        let special = |key: &str| {
            let token = config.get(key)?;
            let text = token.as_str().or_else(|| token.get("content")?.as_str())?;
            inner.token_to_id(text)
        };
        Ok(Self {
            bos_id: special("bos_token"),
            eos_id: special("eos_token"),
            chat_template: config
                .get("chat_template")
                .and_then(|t| t.as_str())
                .map(str::to_string),
            inner,
        })
    }

    /// Rebuilds the tokenizer stored in a GGUF file's metadata.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, ModelError> {
        let built = crate::gguf::tokenizer_from_gguf(gguf)?;
        Ok(Self {
            inner: built.tokenizer,
            bos_id: built.bos_id,
            eos_id: built.eos_id,
            chat_template: built.chat_template,
        })
    }

    /// Encodes text; no special tokens are added (the engine applies the BOS rule).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        guarded("encode", || {
            let encoding = self
                .inner
                .encode(text, false)
                .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
            Ok(encoding.get_ids().to_vec())
        })
    }

    /// Decodes ids to text, special tokens kept. Ids outside the vocabulary are an error.
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        let vocab = self.vocab_size();
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(ModelError::TokenOutOfVocab { id, vocab });
        }
        guarded("decode", || {
            self.inner
                .decode(ids, false)
                .map_err(|e| ModelError::Tokenizer(e.to_string()))
        })
    }

    /// Vocabulary size, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// BOS id, if known.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    /// EOS id, if known.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    /// The id of a token string (e.g. `"<|im_end|>"`).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The chat template as stored in the checkpoint (a Jinja string).
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// Wraps one user message in the model's chat format, ready for generation. The checkpoint's
    /// Jinja template is recognised by family (ChatML, Llama 3, Llama 2 `[INST]`) rather than
    /// interpreted; without a template the message is returned as is.
    pub fn chat_prompt(&self, user: &str) -> String {
        let template = self.chat_template.as_deref().unwrap_or("");
        if template.contains("<|im_start|>") {
            format!("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n")
        } else if template.contains("<|start_header_id|>") {
            format!(
                "<|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
            )
        } else if template.contains("[INST]") {
            format!("[INST] {user} [/INST]")
        } else {
            user.to_string()
        }
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// Runs a call into the `tokenizers` crate, turning a panic into [`ModelError::Tokenizer`]
/// (`what` says which call). `tokenizers` 0.23 panics, rather than failing, on some crafted
/// `tokenizer.json` files: an invalid `Precompiled` normalizer or BPE merges while loading; a
/// `Strip` decoder, a truncation stride or a `Precompiled` char map while encoding or decoding.
/// The panic message is still printed by the panic hook; with `panic = "abort"` nothing is caught.
fn guarded<T>(what: &str, call: impl FnOnce() -> Result<T, ModelError>) -> Result<T, ModelError> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(call)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        Err(ModelError::Tokenizer(format!(
            "{what}: the tokenizer is inconsistent (the tokenizers library panicked: {message})"
        )))
    })
}

impl Detokenizer for Tokenizer {
    fn detokenize(&self, ids: &[u32]) -> Result<String, FocusError> {
        self.decode(ids)
            .map_err(|e| FocusError::Decoder(e.to_string()))
    }
}
