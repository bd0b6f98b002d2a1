//! The passkey retrieval task's text (Mohtashami & Jaggi, 2023, as the FocusLLM paper uses it): the
//! filler, the sentence that states the key and the question. The passkey benchmark and the training
//! generator (whose first phrasing and filler this is) share it from here.

/// The filler sentence block, repeated around the key.
pub const FILLER: &str =
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ";

/// The sentence that states the key; `{key}` is replaced by it.
pub const NEEDLE: &str = "\nThe pass key is {key}. Remember it. {key} is the pass key.\n";

/// What follows the filler: the instruction and the question (the answer is the next tokens).
pub const QUESTION: &str = "\nThere is an important info hidden inside a lot of irrelevant text. Find it and memorize them. I will quiz you about the important information there.\nWhat is the pass key? The pass key is";
