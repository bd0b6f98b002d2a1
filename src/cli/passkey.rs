//! The passkey retrieval task of the FocusLLM paper (after Mohtashami & Jaggi, 2023): a 5-digit key
//! hidden at a random depth in repetitive filler, followed by the question.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use focusllm_models::{ModelError, Tokenizer};

pub use focusllm_core::passkey::{FILLER, NEEDLE, QUESTION};

/// One passkey prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct PasskeyPrompt {
    /// Token ids (BOS first when the tokenizer has one), exactly the requested length.
    pub ids: Vec<u32>,
    /// The key to retrieve (5 digits).
    pub key: String,
    /// Where the key sentence sits, as a fraction of the filler.
    pub depth: f64,
    /// The token index of the key's first digits (inside the key sentence).
    pub key_at: usize,
}

/// Builds a prompt of exactly `total_tokens` tokens; `seed` draws the key and its depth.
pub fn passkey_prompt(
    tokenizer: &Tokenizer,
    total_tokens: usize,
    seed: u64,
) -> Result<PasskeyPrompt, ModelError> {
    let mut rng = StdRng::seed_from_u64(seed);
    let key = rng.random_range(10000..100000u32).to_string();
    let depth: f64 = rng.random();
    let needle = tokenizer.encode(&NEEDLE.replace("{key}", &key))?;
    // The sentence's words before the key, as tokens (the key follows them).
    let key_offset = tokenizer
        .encode(NEEDLE.split("{key}").next().unwrap_or(""))?
        .len();
    let question = tokenizer.encode(QUESTION)?;
    let bos: Vec<u32> = tokenizer.bos_id().into_iter().collect();
    let fixed = bos.len() + needle.len() + question.len();
    let budget = total_tokens.checked_sub(fixed).ok_or_else(|| {
        ModelError::Tokenizer(format!(
            "a passkey prompt needs more than {fixed} tokens, got {total_tokens}"
        ))
    })?;
    let unit = tokenizer.encode(FILLER)?;
    let filler: Vec<u32> = unit.iter().copied().cycle().take(budget).collect();
    let before = (budget as f64 * depth).round() as usize;
    let mut ids = Vec::with_capacity(total_tokens);
    ids.extend_from_slice(&bos);
    ids.extend_from_slice(&filler[..before]);
    ids.extend_from_slice(&needle);
    ids.extend_from_slice(&filler[..budget - before]);
    ids.extend_from_slice(&question);
    Ok(PasskeyPrompt {
        ids,
        key,
        depth,
        key_at: bos.len() + before + key_offset,
    })
}

/// The first run of digits in `answer`.
fn first_number(answer: &str) -> String {
    answer
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect()
}

/// Exact-match scoring: the first run of digits in `answer` must equal `key`.
pub fn is_correct(answer: &str, key: &str) -> bool {
    first_number(answer) == key
}

/// Partial credit: the share of the key's digits that the answer's first number has at the same
/// positions (a missing or extra digit costs its position).
pub fn digit_accuracy(answer: &str, key: &str) -> f64 {
    let got = first_number(answer);
    let hits = got.chars().zip(key.chars()).filter(|(a, b)| a == b).count();
    hits as f64 / key.len().max(got.len()).max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scoring_takes_the_first_number() {
        assert!(is_correct(" 49690. Remember", "49690"));
        assert!(!is_correct(" 4969", "49690"));
        assert!(!is_correct(" 1234 49690", "49690"));
        assert!(!is_correct("no digits", "49690"));
    }

    #[test]
    fn digit_accuracy_gives_partial_credit_by_position() {
        assert_eq!(digit_accuracy(" 49690.", "49690"), 1.0);
        assert_eq!(digit_accuracy(" 4969", "49690"), 0.8);
        assert_eq!(digit_accuracy(" 8888. It", "82131"), 0.2);
        assert_eq!(digit_accuracy(" 496901", "49690"), 5.0 / 6.0);
        assert_eq!(digit_accuracy("a password", "49690"), 0.0);
    }
}
