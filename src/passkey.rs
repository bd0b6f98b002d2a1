//! The passkey retrieval task of the FocusLLM paper (after Mohtashami & Jaggi, 2023): a 5-digit key
//! hidden at a random depth in repetitive filler, followed by the question.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use focusllm_models::{ModelError, Tokenizer};

/// The filler sentence block, repeated.
pub const FILLER: &str =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ";
/// What follows the filler: the instruction and the question (the answer is the next tokens).
pub const QUESTION: &str = "\nThere is an important info hidden inside a lot of irrelevant text. Find it and memorize them. I will quiz you about the important information there.\nWhat is the pass key? The pass key is";

/// One passkey prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct PasskeyPrompt {
    /// Token ids (BOS first when the tokenizer has one), exactly the requested length.
    pub ids: Vec<u32>,
    /// The key to retrieve (5 digits).
    pub key: String,
    /// Where the key sentence sits, as a fraction of the filler.
    pub depth: f64,
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
    let needle = tokenizer.encode(&format!(
        "\nThe pass key is {key}. Remember it. {key} is the pass key.\n"
    ))?;
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
    Ok(PasskeyPrompt { ids, key, depth })
}

/// Exact-match scoring: the first run of digits in `answer` must equal `key`.
pub fn is_correct(answer: &str, key: &str) -> bool {
    let digits: String = answer
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    digits == key
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
}
