//! A [`tokenizers::Tokenizer`] rebuilt from the vocabulary stored in a GGUF file.
//!
//! GGUF files carry the tokenizer as metadata (`tokenizer.ggml.*`): the token strings, their
//! types, the BPE merges and the name of the pre-tokenizer (`tokenizer.ggml.pre`). Only
//! byte-level BPE (`tokenizer.ggml.model = "gpt2"`, used by GPT-2, Llama 3, Qwen2, SmolLM, ...) is
//! supported. The pre-tokenizer is chosen from the name the converter recorded, reproducing the
//! Hugging Face `tokenizer.json` of the original model (which llama.cpp mirrors with its own
//! regexes).
//!
//! The tokenizer never adds tokens by itself: no BOS/EOS is inserted by `encode`, whatever its
//! `add_special_tokens` argument. Callers add [`GgufTokenizer::bos_id`] when
//! [`GgufTokenizer::add_bos`] says the model expects it, or use the chat template.

use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::NFC;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use super::{GgufFile, GgufValue};
use crate::ModelError;

/// llama.cpp's token type of control tokens (`<|im_start|>`, `<|endoftext|>`): special tokens.
const TOKEN_TYPE_CONTROL: u64 = 3;
/// llama.cpp's token type of user-defined tokens: matched verbatim in text, but not special.
const TOKEN_TYPE_USER_DEFINED: u64 = 4;

/// The Llama 3 split (llama.cpp's `LLAMA_VOCAB_PRE_TYPE_LLAMA3`, Hugging Face's `Split` of the
/// Llama 3 `tokenizer.json`): contractions, letters with one leading non-letter, numbers of up to
/// three digits, punctuation runs, newlines and other whitespace.
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The Qwen2 split (llama.cpp's `LLAMA_VOCAB_PRE_TYPE_QWEN2`): as Llama 3, but each digit alone.
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// A tokenizer rebuilt from GGUF metadata, with the ids and template a generation loop needs.
#[derive(Debug, Clone)]
pub struct GgufTokenizer {
    /// The byte-level BPE tokenizer. Its `encode` adds no special tokens; control tokens in the
    /// text (`<|im_start|>`) are recognised as single tokens.
    pub tokenizer: Tokenizer,
    /// `tokenizer.ggml.bos_token_id`, if the file has one.
    pub bos_id: Option<u32>,
    /// `tokenizer.ggml.eos_token_id`, if the file has one.
    pub eos_id: Option<u32>,
    /// `tokenizer.ggml.add_bos_token`: whether the model expects prompts to start with BOS
    /// (false when the key is absent, as for byte-level BPE models in llama.cpp).
    pub add_bos: bool,
    /// `tokenizer.chat_template`: the model's Jinja chat template, if the file has one.
    pub chat_template: Option<String>,
}

/// Build the tokenizer described by the `tokenizer.ggml.*` metadata of `gguf`.
///
/// Errors ([`ModelError::Tokenizer`]) if the tokenizer model is not `"gpt2"` (byte-level BPE),
/// the pre-tokenizer name is unknown, or the vocabulary, merges or token types are missing or
/// inconsistent.
pub fn tokenizer_from_gguf(gguf: &GgufFile) -> Result<GgufTokenizer, ModelError> {
    let model = gguf
        .get("tokenizer.ggml.model")
        .and_then(GgufValue::as_str)
        .ok_or_else(|| tok_err("the file has no `tokenizer.ggml.model` string"))?;
    if model != "gpt2" {
        return Err(tok_err(format!(
            "tokenizer model `{model}` is not supported (only `gpt2`, byte-level BPE)"
        )));
    }

    let tokens = string_array(gguf, "tokenizer.ggml.tokens")?;
    let n_vocab = tokens.len();
    let vocab_size = u32::try_from(n_vocab).map_err(|_| tok_err("vocabulary too large"))?;
    let token_types = match gguf.get("tokenizer.ggml.token_type") {
        None => vec![1; n_vocab],
        Some(v) => {
            let types = v
                .as_array()
                .ok_or_else(|| tok_err("`tokenizer.ggml.token_type` is not an array"))?
                .iter()
                .map(|t| t.as_u64().unwrap_or(0))
                .collect::<Vec<_>>();
            if types.len() != n_vocab {
                return Err(tok_err(format!(
                    "`tokenizer.ggml.token_type` has {} entries for {n_vocab} tokens",
                    types.len()
                )));
            }
            types
        }
    };

    // id = position in the token list; like llama.cpp, a duplicated string maps to its last id.
    let mut vocab: Vocab = Vocab::default();
    for (id, tok) in (0..vocab_size).zip(&tokens) {
        vocab.insert((*tok).to_owned(), id);
    }
    let merges = parse_merges(gguf, &vocab)?;

    let pre = gguf
        .get("tokenizer.ggml.pre")
        .and_then(GgufValue::as_str)
        .unwrap_or("default");
    let (pre_tokenizer, ignore_merges, nfc) = pre_tokenizer_for(pre)?;

    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| tok_err(format!("cannot build the BPE model: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    if nfc {
        tokenizer
            .with_normalizer(Some(NFC))
            .map_err(|e| tok_err(format!("cannot set the normalizer: {e}")))?;
    }
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    // The ByteLevel post-processor only trims offsets; it adds no tokens.
    tokenizer.with_post_processor(Some(ByteLevel::new(false, true, true)));

    // Control tokens are special (skipped by `decode(.., true)`); user-defined tokens are
    // matched verbatim but decoded as text. Neither goes through the normalizer.
    let mut special = Vec::new();
    let mut user = Vec::new();
    for (tok, &ty) in tokens.iter().zip(&token_types) {
        match ty {
            TOKEN_TYPE_CONTROL => special.push(AddedToken::from(*tok, true)),
            TOKEN_TYPE_USER_DEFINED => user.push(AddedToken::from(*tok, false).normalized(false)),
            _ => {}
        }
    }
    tokenizer
        .add_special_tokens(special)
        .map_err(|e| tok_err(format!("cannot add the control tokens: {e}")))?;
    tokenizer
        .add_tokens(user)
        .map_err(|e| tok_err(format!("cannot add the user-defined tokens: {e}")))?;

    let token_id = |key: &str| -> Result<Option<u32>, ModelError> {
        let Some(v) = gguf.get(key) else {
            return Ok(None);
        };
        match v.as_u64().and_then(|id| u32::try_from(id).ok()) {
            Some(id) if id < vocab_size => Ok(Some(id)),
            _ => Err(tok_err(format!(
                "`{key}` = {v:?} is not a token id of the {n_vocab}-token vocabulary"
            ))),
        }
    };
    let bos_id = token_id("tokenizer.ggml.bos_token_id")?;
    let eos_id = token_id("tokenizer.ggml.eos_token_id")?;
    let add_bos = matches!(
        gguf.get("tokenizer.ggml.add_bos_token"),
        Some(GgufValue::Bool(true))
    );
    let chat_template = gguf
        .get("tokenizer.chat_template")
        .and_then(GgufValue::as_str)
        .map(str::to_owned);

    Ok(GgufTokenizer {
        tokenizer,
        bos_id,
        eos_id,
        add_bos,
        chat_template,
    })
}

fn tok_err(reason: impl Into<String>) -> ModelError {
    ModelError::Tokenizer(reason.into())
}

/// The strings of the string-array metadata `key`.
fn string_array<'a>(gguf: &'a GgufFile, key: &str) -> Result<Vec<&'a str>, ModelError> {
    let arr = gguf
        .get(key)
        .ok_or_else(|| tok_err(format!("the file has no `{key}`")))?
        .as_array()
        .ok_or_else(|| tok_err(format!("`{key}` is not an array")))?;
    arr.iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str()
                .ok_or_else(|| tok_err(format!("`{key}`[{i}] is not a string")))
        })
        .collect()
}

/// The merges of `tokenizer.ggml.merges` ("left right", in priority order), each checked to
/// join two vocabulary tokens into a third: the BPE builder assumes this.
fn parse_merges(gguf: &GgufFile, vocab: &Vocab) -> Result<Vec<(String, String)>, ModelError> {
    let lines = string_array(gguf, "tokenizer.ggml.merges")?;
    let mut merges = Vec::with_capacity(lines.len());
    // Checked merges are joined in one buffer to avoid an allocation per lookup.
    let mut joined = String::new();
    for (i, line) in lines.iter().enumerate() {
        // As in llama.cpp, the separator is the first space after the first character, so
        // that a left part that is itself a space is kept.
        let split = line
            .char_indices()
            .skip(1)
            .find(|&(_, c)| c == ' ')
            .map(|(at, _)| at)
            .ok_or_else(|| tok_err(format!("merge {i} ({line:?}) has no separating space")))?;
        let (left, right) = (&line[..split], &line[split + 1..]);
        joined.clear();
        joined.push_str(left);
        joined.push_str(right);
        for part in [left, right, joined.as_str()] {
            if !vocab.contains_key(part) {
                return Err(tok_err(format!(
                    "merge {i} ({line:?}) uses {part:?}, which is not in the vocabulary"
                )));
            }
        }
        merges.push((left.to_owned(), right.to_owned()));
    }
    Ok(merges)
}

/// The pre-tokenizer for a `tokenizer.ggml.pre` name, whether BPE should take whole words found
/// in the vocabulary before merging (`ignore_merges`, set by Llama 3), and whether text is NFC
/// normalized first (Qwen2).
fn pre_tokenizer_for(pre: &str) -> Result<(PreTokenizerWrapper, bool, bool), ModelError> {
    let byte_level_regex = || ByteLevel::new(false, true, true);
    let split = |regex: &str| -> Result<PreTokenizerWrapper, ModelError> {
        let split = Split::new(
            SplitPattern::Regex(regex.to_owned()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| tok_err(format!("bad split regex for `{pre}`: {e}")))?;
        Ok(Sequence::new(vec![
            split.into(),
            ByteLevel::new(false, true, false).into(),
        ])
        .into())
    };
    Ok(match pre {
        // GPT-2's own split (contractions, letters, numbers, punctuation, whitespace) as built
        // into the ByteLevel pre-tokenizer.
        "default" | "gpt2" | "gpt-2" => (byte_level_regex().into(), false, false),
        // StarCoder-style: every digit alone, then the GPT-2 split. SmolLM reuses it.
        "smollm" | "starcoder" | "refact" => (
            Sequence::new(vec![Digits::new(true).into(), byte_level_regex().into()]).into(),
            false,
            false,
        ),
        "llama3" | "llama-v3" | "llama-bpe" => (split(LLAMA3_REGEX)?, true, false),
        "qwen2" => (split(QWEN2_REGEX)?, false, true),
        other => {
            return Err(tok_err(format!(
                "pre-tokenizer `{other}` (tokenizer.ggml.pre) is not supported; supported: \
                 default, gpt2, smollm, starcoder, refact, llama3, llama-bpe, qwen2"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_pre_tokenizers_build_and_unknown_ones_are_named() {
        for name in [
            "default",
            "gpt2",
            "smollm",
            "starcoder",
            "llama-bpe",
            "llama3",
            "qwen2",
        ] {
            assert!(pre_tokenizer_for(name).is_ok(), "{name}");
        }
        let err = pre_tokenizer_for("deepseek-coder")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("deepseek-coder"), "{err}");
    }

    #[test]
    fn llama3_split_matches_reference_pieces() {
        use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};
        let (pt, _, _) = pre_tokenizer_for("llama-bpe").expect("builds");
        let mut s = PreTokenizedString::from("Hello world's 12345!!\n\n  x");
        pt.pre_tokenize(&mut s).expect("pre-tokenizes");
        let pieces: Vec<String> = s
            .get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(p, _, _)| p.to_owned())
            .collect();
        // Ġ is the byte-level image of a space, Ċ of a newline.
        assert_eq!(
            pieces,
            ["Hello", "Ġworld", "'s", "Ġ", "123", "45", "!!ĊĊ", "Ġ", "Ġx"]
        );
    }
}
