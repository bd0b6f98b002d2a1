//! Tokenization: the `tokenizers` crate, loaded from `tokenizer.json` or rebuilt from GGUF metadata.

use std::path::Path;
use std::sync::{Arc, OnceLock};

use focusllm_core::{Detokenizer, FocusError};

use crate::chat::{ChatMessage, ChatTemplate};
use crate::error::ModelError;
use crate::gguf::GgufFile;

/// A model's tokenizer with its special tokens and chat template.
///
/// ```
/// # let dir = std::env::temp_dir().join(format!("focusllm-doc-tokenizer-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// # let vocab = ["<unk>", "<s>", "</s>", "hello", "world", "<|user|>", "<|assistant|>"];
/// # let words: serde_json::Map<_, _> =
/// #     vocab.iter().enumerate().map(|(id, word)| (word.to_string(), id.into())).collect();
/// # let special = |id: usize| serde_json::json!({"id": id, "content": vocab[id],
/// #     "single_word": false, "lstrip": false, "rstrip": false, "normalized": false,
/// #     "special": true});
/// # let tokenizer = serde_json::json!({"version": "1.0", "truncation": null, "padding": null,
/// #     "added_tokens": [special(1), special(2), special(5), special(6)], "normalizer": null,
/// #     "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
/// #     "model": {"type": "WordLevel", "unk_token": "<unk>", "vocab": words}});
/// # std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string())?;
/// # let config = serde_json::json!({"bos_token": "<s>", "eos_token": "</s>", "chat_template":
/// #     "{{ bos_token }}{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}\
/// #     {% if add_generation_prompt %}<|assistant|>{% endif %}"});
/// # std::fs::write(dir.join("tokenizer_config.json"), config.to_string())?;
/// use focusllm_models::{ChatMessage, Tokenizer};
///
/// // `dir`: a checkpoint's directory. Its `tokenizer.json` here is word-level (`<unk>`, `<s>`,
/// // `</s>`, `hello`, `world`, `<|user|>`, `<|assistant|>`); its `tokenizer_config.json` names
/// // BOS and EOS and holds the chat template, which writes `<|role|>content` for each message.
/// let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
/// let ids = tokenizer.encode("hello world")?; // no BOS: the engine adds it
/// assert_eq!(ids, [3, 4]);
/// assert_eq!(tokenizer.decode(&ids)?, "hello world");
/// assert_eq!((tokenizer.bos_id(), tokenizer.eos_id()), (Some(1), Some(2)));
///
/// // A prompt in the model's chat format, as `transformers`' `apply_chat_template` writes it.
/// let prompt = tokenizer.chat_prompt("hello")?;
/// assert_eq!(prompt, "<s><|user|>hello<|assistant|>");
/// assert_eq!(tokenizer.encode(&prompt)?, [1, 5, 3, 6]); // special tokens recognised
/// let chat = [ChatMessage::user("hello"), ChatMessage::assistant("world")];
/// assert_eq!(tokenizer.apply_chat_template(&chat, false)?, "<s><|user|>hello<|assistant|>world");
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    bos_token: Option<String>,
    eos_token: Option<String>,
    chat: ChatSource,
}

/// The checkpoint's chat template: its source, where it came from, and (once used) the compiled
/// template, shared between clones.
#[derive(Clone)]
struct ChatSource {
    /// The Jinja source, or why there is none.
    template: Result<String, String>,
    /// Where the template came from, for errors.
    origin: String,
    compiled: Arc<OnceLock<Result<ChatTemplate, ModelError>>>,
}

impl ChatSource {
    fn new(template: Result<String, String>, origin: String) -> Self {
        Self {
            template,
            origin,
            compiled: Arc::default(),
        }
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .field("bos_token", &self.bos_token)
            .field("eos_token", &self.eos_token)
            .field("chat_template_origin", &self.chat.origin)
            .finish()
    }
}

impl Tokenizer {
    /// Loads an HF `tokenizer.json`, with the special tokens and chat template of its siblings.
    ///
    /// The chat template is read as `transformers` reads it: a sibling `chat_template.jinja` if
    /// there is one (the file newer `transformers` versions save), else `chat_template` of
    /// `tokenizer_config.json` — a string, or a list of `{name, template}` objects of which the
    /// one named `default` is used. The BOS/EOS strings come from `bos_token`/`eos_token` of
    /// `tokenizer_config.json` (strings or `{content: ...}` objects). The template is compiled
    /// when first used: a malformed one does not fail the load.
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
            Some(text.to_string())
        };
        let bos_token = special("bos_token");
        let eos_token = special("eos_token");
        let jinja_path = path.with_file_name("chat_template.jinja");
        let chat = match std::fs::read_to_string(&jinja_path) {
            Ok(template) => ChatSource::new(Ok(template), jinja_path.display().to_string()),
            Err(_) => ChatSource::new(
                template_from_config(&config),
                format!("{} `chat_template`", config_path.display()),
            ),
        };
        Ok(Self {
            bos_id: bos_token.as_deref().and_then(|t| inner.token_to_id(t)),
            eos_id: eos_token.as_deref().and_then(|t| inner.token_to_id(t)),
            bos_token,
            eos_token,
            chat,
            inner,
        })
    }

    /// Rebuilds the tokenizer stored in a GGUF file's metadata, with its chat template
    /// (`tokenizer.chat_template`, compiled when first used) and the BOS/EOS strings (the tokens
    /// of `tokenizer.ggml.bos_token_id` / `eos_token_id`).
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self, ModelError> {
        let built = crate::gguf::tokenizer_from_gguf(gguf)?;
        let token = |id: Option<u32>| id.and_then(|id| built.tokenizer.id_to_token(id));
        let template = built
            .chat_template
            .ok_or_else(|| "the GGUF file has no `tokenizer.chat_template`".to_string());
        Ok(Self {
            bos_token: token(built.bos_id),
            eos_token: token(built.eos_id),
            inner: built.tokenizer,
            bos_id: built.bos_id,
            eos_id: built.eos_id,
            chat: ChatSource::new(template, "GGUF `tokenizer.chat_template`".to_string()),
        })
    }

    /// The same tokenizer with `template` (Jinja source) as its chat template, replacing the
    /// checkpoint's (or supplying one a base model lacks).
    pub fn with_chat_template(mut self, template: impl Into<String>) -> Self {
        self.chat = ChatSource::new(Ok(template.into()), "chat template".to_string());
        self
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

    /// The BOS token string (e.g. `"<|begin_of_text|>"`), as chat templates see it, if known.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos_token.as_deref()
    }

    /// The EOS token string (e.g. `"</s>"`), as chat templates see it, if known.
    pub fn eos_token(&self) -> Option<&str> {
        self.eos_token.as_deref()
    }

    /// The id of a token string (e.g. `"<|im_end|>"`).
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The chat template as stored in the checkpoint (a Jinja string), if it has one.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat.template.as_deref().ok()
    }

    /// The checkpoint's chat template, compiled (once, on first use) with this tokenizer's
    /// BOS/EOS strings.
    ///
    /// Errors: [`ModelError::NoChatTemplate`] if the checkpoint has none (saying where it was
    /// looked for), [`ModelError::ChatTemplate`] if it does not compile.
    pub fn compiled_chat_template(&self) -> Result<&ChatTemplate, ModelError> {
        let source = self
            .chat
            .template
            .as_ref()
            .map_err(|reason| ModelError::NoChatTemplate {
                reason: reason.clone(),
            })?;
        let compiled = self.chat.compiled.get_or_init(|| {
            ChatTemplate::with_origin(
                &self.chat.origin,
                source,
                self.bos_token.as_deref(),
                self.eos_token.as_deref(),
            )
        });
        compiled.as_ref().map_err(|e| match e {
            ModelError::ChatTemplate {
                origin,
                failure,
                line,
                message,
            } => ModelError::ChatTemplate {
                origin: origin.clone(),
                failure: *failure,
                line: *line,
                message: message.clone(),
            },
            other => ModelError::Tokenizer(other.to_string()),
        })
    }

    /// Renders a conversation with the checkpoint's chat template (as `transformers`'
    /// `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)` does). The
    /// result is text: special tokens the template prints (`<|im_start|>`, a BOS string) are
    /// recognised by [`Tokenizer::encode`]; nothing is added to it.
    ///
    /// Errors: [`ModelError::NoChatTemplate`] without a template (use the text raw, or supply one
    /// with [`Tokenizer::with_chat_template`]); [`ModelError::ChatTemplate`] if the template does
    /// not compile, fails, or rejects the conversation (e.g. roles that do not alternate).
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, ModelError> {
        self.compiled_chat_template()?
            .render(messages, add_generation_prompt)
    }

    /// One user message in the model's chat format, ready for generation (the template's
    /// generation prompt appended): [`Tokenizer::apply_chat_template`] of `[user]`.
    ///
    /// Errors as [`Tokenizer::apply_chat_template`]; in particular
    /// [`ModelError::NoChatTemplate`] for a checkpoint without a template — a caller that wants
    /// the raw text then says so explicitly:
    ///
    /// ```no_run
    /// # fn wrap(tokenizer: &focusllm_models::Tokenizer, text: &str) -> Result<String, focusllm_models::ModelError> {
    /// use focusllm_models::ModelError;
    /// let prompt = match tokenizer.chat_prompt(text) {
    ///     Err(ModelError::NoChatTemplate { .. }) => text.to_string(),
    ///     other => other?,
    /// };
    /// # Ok(prompt) }
    /// ```
    pub fn chat_prompt(&self, user: &str) -> Result<String, ModelError> {
        self.apply_chat_template(&[ChatMessage::user(user)], true)
    }

    /// The underlying `tokenizers` tokenizer.
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

/// The template of a `tokenizer_config.json`: its `chat_template` string, or from a list of
/// `{name, template}` objects the one named `default` (as `transformers` picks it); otherwise why
/// there is none.
fn template_from_config(config: &serde_json::Value) -> Result<String, String> {
    match config.get("chat_template") {
        None | Some(serde_json::Value::Null) => Err(
            "neither `chat_template.jinja` nor a `chat_template` in `tokenizer_config.json`"
                .to_string(),
        ),
        Some(serde_json::Value::String(template)) => Ok(template.clone()),
        Some(serde_json::Value::Array(list)) => {
            let named = |entry: &serde_json::Value| {
                let name = entry.get("name")?.as_str()?;
                let template = entry.get("template")?.as_str()?;
                Some((name.to_string(), template.to_string()))
            };
            let entries: Vec<(String, String)> = list.iter().filter_map(named).collect();
            match entries.iter().find(|(name, _)| name == "default") {
                Some((_, template)) => Ok(template.clone()),
                None => Err(format!(
                    "`tokenizer_config.json` lists chat templates ({}) but none named `default`",
                    entries
                        .iter()
                        .map(|(name, _)| format!("`{name}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            }
        }
        Some(_) => Err(
            "`chat_template` in `tokenizer_config.json` is neither a string nor a list".to_string(),
        ),
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
