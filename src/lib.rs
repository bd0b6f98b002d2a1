//! # focusllm
//!
//! FocusLLM long-context inference for decoder-only LLMs, on [burn](https://burn.dev). This crate
//! re-exports the three crates of the workspace and owns the examples, integration tests and
//! benchmarks:
//!
//! - [`core`] (`focusllm-core`): the engine and its traits, backend-generic;
//! - [`models`] (`focusllm-models`): Llama-family decoders, safetensors/GGUF loaders, tokenizers;
//! - [`backends`] (`focusllm-backends`): the burn backends behind cargo features.
//!
//! The command's and examples' plumbing (flags, progress bars, the model fetch) lives in `src/cli/`,
//! outside the library API: the library never shells out or prints. With feature `cli` (a default
//! one) it is compiled into this crate as a hidden module, so that the `focusllm` command and the
//! example programs link one compiled copy of it instead of each compiling its own (each copy
//! instantiates the engine for every backend: about 700 CPU-seconds of a release build apiece).
//! Library users who want none of it turn default features off (`default-features = false,
//! features = ["cpu"]`).
//!
//! ## Reading a long input
//!
//! The model below is `tests/fixtures/official/C`, a tiny random Llama (3 layers, a vocabulary of
//! 512) with trained candidate projections, and the input is the one the official FocusLLM code
//! read in its reference run: 5000 token ids. That checkpoint has no tokenizer; with a real one,
//! the tokenizer that comes with it turns text into ids and streams text back (the commented
//! lines; the README's example does that).
//!
//! ```
//! use std::ops::ControlFlow;
//! use std::path::Path;
//!
//! use focusllm::backends::Cpu;
//! use focusllm::core::{FocusConfig, FocusEngine, GenerateOptions, Mode};
//! use focusllm::models::load_model;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // An HF directory (config.json and safetensors, tokenizer.json if any) or a GGUF file.
//! let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/official/C"));
//! let loaded = load_model::<Cpu>(dir, &Default::default())?;
//! // let tokenizer = loaded.tokenizer.as_ref().expect("GGUF files carry a tokenizer");
//! // let ids = tokenizer.encode(&std::fs::read_to_string("book.txt")?)?;
//! let inputs: serde_json::Value =
//!     serde_json::from_str(&std::fs::read_to_string(dir.join("inputs.json"))?)?;
//! let ids: Vec<u32> = serde_json::from_value(inputs["long_ids"].clone())?;
//!
//! // The reference's sizes for this model: a local window of 512 tokens, memory chunks of 700,
//! // plain decoding below 4096 tokens (`FocusConfig::default()` suits real models).
//! let config = FocusConfig::default()
//!     .with_local_window(512)
//!     .with_chunk_size(700)
//!     .with_plain_threshold(Some(4096));
//! let engine = FocusEngine::new(&loaded.model, config)?;
//! let mut session = engine.session();
//! session.on_progress(|p| eprintln!("{:?} {}/{}", p.stage, p.done, p.total));
//! // Five tokens whatever they are (no stop token).
//! let options = GenerateOptions {
//!     max_tokens: 5,
//!     stop_tokens: Some(vec![]),
//!     ..Default::default()
//! };
//! let answer = session.generate(&ids, &options, None, |token| {
//!     // (`None` above: with `Some(tokenizer)`, `token.text` streams the text.)
//!     // Where the prediction drew on the memory: the main decoder's attention per chunk.
//!     let focus = token.focus.as_ref().expect("a chunked read measures its focus");
//!     let (chunk, share) = focus.top(1)[0];
//!     println!("token {}: most attention on chunk {chunk} ({share:.3})", token.id);
//!     assert!(focus.total() > 0.0 && focus.total() <= 1.0);
//!     ControlFlow::Continue(())
//! })?;
//! // 4488 tokens of memory in chunks of 700: 7 chunks, each read in parallel to one candidate.
//! assert_eq!(session.mode(), Mode::Focus { chunks: 7 });
//! // What the official FocusLLM implementation generates from this input (greedy decoding).
//! assert_eq!(answer.tokens, [247, 192, 196, 419, 370]);
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub use focusllm_backends as backends;
pub use focusllm_core as core;
pub use focusllm_models as models;

// The command's code names the crate `focusllm::…` as the programs that use it do.
extern crate self as focusllm;

#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod cli;

// The README's code blocks, compiled by `cargo test --doc` (only `rust` blocks are: `sh` ones
// are not Rust). Its library example is `no_run`: it needs a real model and a text file.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
