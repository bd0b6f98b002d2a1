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
//! The command's and examples' plumbing (flags, progress bars, the model fetch) lives in `src/cli/`, not
//! here: the library never shells out or prints.
//!
//! ## Reading a long input
//!
//! ```no_run
//! use std::ops::ControlFlow;
//! use focusllm::backends::Cpu;
//! use focusllm::core::{FocusConfig, FocusEngine, GenerateOptions};
//! use focusllm::models::load_model;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let loaded = load_model::<Cpu>("model.gguf".as_ref(), &Default::default())?;
//! let tokenizer = loaded.tokenizer.as_ref().expect("GGUF files carry a tokenizer");
//! let ids = tokenizer.encode(&std::fs::read_to_string("book.txt")?)?;
//! let engine = FocusEngine::new(&loaded.model, FocusConfig::default())?;
//! let mut session = engine.session();
//! session.on_progress(|p| eprintln!("{:?} {}/{}", p.stage, p.done, p.total));
//! let options = GenerateOptions { max_tokens: 64, ..Default::default() };
//! let answer = session.generate(&ids, &options, Some(tokenizer), |token| {
//!     print!("{}", token.text);
//!     ControlFlow::Continue(())
//! })?;
//! println!("\n{} tokens", answer.tokens.len());
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub use focusllm_backends as backends;
pub use focusllm_core as core;
pub use focusllm_models as models;
