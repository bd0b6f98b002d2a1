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
//! [`fetch`] finds or downloads the default model (SmolLM2-135M-Instruct, GGUF) for the examples.

pub use focusllm_backends as backends;
pub use focusllm_core as core;
pub use focusllm_models as models;

pub mod fetch;
pub mod app;
pub mod passkey;
