//! Synthetic retrieval: facts (keys of several kinds in several phrasings) hidden in filler or in
//! prose, and asked about after it.

use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;

use crate::error::{FocusError, Result};
use crate::passkey;
use crate::train::corpus::TextEncoder;

/// A fact template: where the key is stated, the question, and the answer. `{key}` is replaced.
struct FactTemplate {
    needle: &'static str,
    question: &'static str,
    answer: &'static str,
}

/// The training phrasings. The first is the passkey task's own; evaluations of held-out phrasings
/// (`examples/longdoc.rs`, `BENCHMARKS.md`) use none of these.
const TEMPLATES: &[FactTemplate] = &[
    FactTemplate {
        needle: passkey::NEEDLE,
        question: passkey::QUESTION,
        answer: " {key}.",
    },
    FactTemplate {
        needle: "\nThe secret number is {key}. Keep it in mind.\n",
        question: "\nSomewhere above a secret number was given.\nWhat is the secret number? The secret number is",
        answer: " {key}.",
    },
    FactTemplate {
        needle: " Note: the access code for the vault is {key}. ",
        question: "\nQuestion: what is the access code for the vault?\nAnswer: the access code is",
        answer: " {key}.",
    },
    FactTemplate {
        needle: "\nImportant: the magic number is {key}.\n",
        question: "\nWhat was the magic number mentioned in the text? The magic number is",
        answer: " {key}.",
    },
    FactTemplate {
        needle: "\nMy locker number is {key}, do not forget it.\n",
        question: "\nRead the text again and tell me the locker number. The locker number is",
        answer: " {key}.",
    },
    FactTemplate {
        needle: " The password to the archive is {key}. ",
        question: "\nWhich password opens the archive? The password is",
        answer: " {key}.",
    },
    FactTemplate {
        needle: "\n(The ticket reference is {key}.)\n",
        question: "\nLook back for the ticket reference. The ticket reference is",
        answer: " {key}.",
    },
    FactTemplate {
        needle: " Remember this serial number: {key}. ",
        question: "\nWhat serial number were you asked to remember? The serial number is",
        answer: " {key}.",
    },
    FactTemplate {
        needle: "\nPS: the name of the ship is {key}.\n",
        question: "\nAccording to the text, what is the name of the ship? The ship is called",
        answer: " {key}.",
    },
    FactTemplate {
        needle: " The meeting room has the code {key} written on its door. ",
        question: "\nWhat code is written on the door of the meeting room? The code is",
        answer: " {key}.",
    },
];

/// Filler paragraphs the facts are hidden in (the first is the passkey task's own).
const FILLERS: &[&str] = &[
    passkey::FILLER,
    "The river runs past the old mill. Birds sing in the morning. The market opens at dawn. ",
    "A train leaves the station every hour. People read newspapers on the platform. The coffee is hot. ",
    "Clouds drift over the hills. The wind is cold today. Children play in the park after school. ",
    "The library is quiet. Shelves are full of old books. A clock ticks on the wall. ",
];

/// Words for word keys (two are drawn and joined by a space or a hyphen).
const KEY_WORDS: &[&str] = &[
    "amber", "anchor", "apple", "arrow", "badger", "bamboo", "basil", "beacon", "birch", "blue",
    "bottle", "bridge", "candle", "canyon", "carbon", "cedar", "cherry", "cobalt", "comet",
    "copper", "coral", "cotton", "crystal", "dragon", "eagle", "ember", "falcon", "feather",
    "forest", "garden", "ginger", "glacier", "granite", "harbor", "hazel", "island", "ivory",
    "jasper", "kettle", "lantern", "lemon", "lilac", "marble", "meadow", "melon", "mirror",
    "monkey", "needle", "nickel", "ocean", "olive", "orange", "orchid", "otter", "panda", "pepper",
    "pigeon", "pillow", "planet", "potato", "purple", "rabbit", "raven", "ribbon", "river",
    "rocket", "saddle", "salmon", "silver", "spider", "spruce", "tiger", "tomato", "tulip",
    "velvet", "violet", "walnut", "willow", "winter", "yellow", "zebra",
];

/// What a key looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    /// 4 to 8 digits.
    Number,
    /// Two words, such as `amber-falcon` or `cedar river`.
    Words,
    /// A code such as `K7-QX2`.
    Code,
}

/// One fact: the sentence that states it, the question about it and its answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Fact {
    /// The sentence that states the key.
    pub needle: Vec<u32>,
    /// The question that follows the document.
    pub question: Vec<u32>,
    /// The answer (the key and a full stop).
    pub answer: Vec<u32>,
    /// The key, as text.
    pub key: String,
}

/// One synthetic retrieval sample.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrievalSample {
    /// BOS (if any), filler or prose with the fact's needle at a random depth.
    pub document: Vec<u32>,
    /// The fact: its question follows the document, its answer is what to predict.
    pub fact: Fact,
}

/// Generates facts (numbers of 4 to 8 digits, word pairs, codes such as `K7-QX2`, in ten
/// phrasings) hidden in filler, followed by a question whose answer is the key: the retrieval
/// skill the candidates must learn, at any length and depth.
pub struct RetrievalGenerator {
    encoder: Box<dyn TextEncoder>,
    fillers: Vec<Vec<u32>>,
    bos: Option<u32>,
}

impl std::fmt::Debug for RetrievalGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetrievalGenerator")
            .field("fillers", &self.fillers.len())
            .field("templates", &TEMPLATES.len())
            .finish()
    }
}

impl RetrievalGenerator {
    /// A generator with the built-in templates, fillers and key kinds.
    pub fn new(encoder: Box<dyn TextEncoder>, bos: Option<u32>) -> Result<Self> {
        let fillers = FILLERS
            .iter()
            .map(|f| encoder.encode(f))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            encoder,
            fillers,
            bos,
        })
    }

    /// The most tokens a sample's fixed parts take (BOS, the longest fact and its question).
    pub fn longest_fixed_part(&self) -> Result<usize> {
        let keys = ["99999999", "granite-granite", "W9-WW9-W9"];
        let mut longest = 0;
        for t in TEMPLATES {
            let question = self.encoder.encode(t.question)?;
            for key in keys {
                let needle = self.encoder.encode(&t.needle.replace("{key}", key))?;
                longest = longest.max(needle.len() + question.len());
            }
        }
        Ok(longest + usize::from(self.bos.is_some()))
    }

    /// Draws a key and a phrasing; `kinds` weighs numbers, word pairs and codes (see
    /// [`TrainConfig::key_kinds`](crate::train::TrainConfig::key_kinds)).
    pub fn fact(&self, kinds: [f64; 3], rng: &mut StdRng) -> Result<Fact> {
        let template = TEMPLATES.choose(rng).expect("templates are not empty");
        let total: f64 = kinds.iter().sum();
        let mut draw = rng.random_range(0.0..total.max(f64::MIN_POSITIVE));
        let mut kind = KeyKind::Number;
        for (k, w) in [KeyKind::Number, KeyKind::Words, KeyKind::Code]
            .into_iter()
            .zip(kinds)
        {
            if draw < w {
                kind = k;
                break;
            }
            draw -= w;
        }
        let key = random_key(kind, rng);
        Ok(Fact {
            needle: self
                .encoder
                .encode(&template.needle.replace("{key}", &key))?,
            question: self.encoder.encode(template.question)?,
            answer: self
                .encoder
                .encode(&template.answer.replace("{key}", &key))?,
            key,
        })
    }

    /// `len` tokens of one built-in filler paragraph, repeated from a random offset.
    pub fn filler(&self, len: usize, rng: &mut StdRng) -> Vec<u32> {
        let unit = self.fillers.choose(rng).expect("fillers are not empty");
        let offset = rng.random_range(0..unit.len());
        unit.iter()
            .copied()
            .cycle()
            .skip(offset)
            .take(len)
            .collect()
    }

    /// Draws a sample whose document and question together hold `tokens` tokens, in the built-in
    /// filler, with the fact outside the last `local` tokens (so a local window of that size cannot
    /// see it: only the candidates can carry it).
    pub fn sample(
        &self,
        tokens: usize,
        local: usize,
        kinds: [f64; 3],
        rng: &mut StdRng,
    ) -> Result<RetrievalSample> {
        let fact = self.fact(kinds, rng)?;
        let bos: Vec<u32> = self.bos.into_iter().collect();
        let fixed = bos.len() + fact.needle.len() + fact.question.len();
        let budget = tokens
            .checked_sub(fixed)
            .filter(|&b| b > 0)
            .ok_or_else(|| {
                FocusError::Data(format!(
                    "a retrieval sample needs more than {fixed} tokens, got {tokens} (raise min_sample_tokens)"
                ))
            })?;
        let filler = self.filler(budget, rng);
        let tail = local.saturating_sub(fact.question.len()).min(budget);
        let before = rng.random_range(0..=budget - tail);
        let mut document = Vec::with_capacity(tokens);
        document.extend_from_slice(&bos);
        document.extend_from_slice(&filler[..before]);
        document.extend_from_slice(&fact.needle);
        document.extend_from_slice(&filler[before..]);
        Ok(RetrievalSample { document, fact })
    }
}

fn random_key(kind: KeyKind, rng: &mut StdRng) -> String {
    let digit = |rng: &mut StdRng, low: u8| char::from(b'0' + rng.random_range(low..10u8));
    match kind {
        KeyKind::Number => {
            let digits = rng.random_range(4..=8);
            (0..digits)
                .map(|i| digit(rng, if i == 0 { 1 } else { 0 }))
                .collect()
        }
        KeyKind::Words => {
            let a = KEY_WORDS.choose(rng).expect("not empty");
            let b = KEY_WORDS.choose(rng).expect("not empty");
            let sep = if rng.random_bool(0.5) { "-" } else { " " };
            format!("{a}{sep}{b}")
        }
        KeyKind::Code => {
            let letter = |rng: &mut StdRng| char::from(b'A' + rng.random_range(0..26u8));
            let mut key = String::new();
            for i in 0..rng.random_range(5..=7) {
                if i == 2 || i == 5 {
                    key.push('-');
                }
                let c = if rng.random_bool(0.5) {
                    letter(rng)
                } else {
                    digit(rng, 0)
                };
                key.push(c);
            }
            key
        }
    }
}
