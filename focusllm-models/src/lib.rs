//! # focusllm-models
//!
//! Real model families for [`focusllm_core`]: a Llama-architecture decoder (Llama 2/3, Mistral,
//! Qwen2, SmolLM2) on any burn backend, loaders for HF safetensors directories and GGUF files, and
//! tokenizers. The decoder implements [`focusllm_core::LocalDecoder`] and
//! [`focusllm_core::MainDecoder`], so it plugs straight into [`focusllm_core::FocusEngine`].

#![warn(missing_docs)]

pub mod adapter;
pub mod chat;
pub mod config;
#[cfg(feature = "cpu")]
mod cpu;
pub mod error;
mod focus;
pub mod gguf;
#[cfg(feature = "hub")]
pub mod hub;
pub mod kernels;
pub mod llama;
pub mod loader;
pub mod quantized;
pub mod rope;
pub mod tokenizer;
#[cfg(feature = "train")]
pub mod train;
pub mod weights;

pub use adapter::{AdapterInfo, AdapterKind, CandidateAdapter};
pub use chat::{ChatMessage, ChatRole, ChatTemplate, ChatTemplateFailure};
pub use config::LlamaConfig;
pub use error::{HubErrorKind, ModelError};
pub use focus::{LlamaChunks, LlamaKvCache};
pub use gguf::GgufWeights;
#[cfg(feature = "hub")]
pub use hub::{HubOptions, ModelId, ModelSource};
pub use kernels::{Kernels, MatmulPrecision};
pub use llama::{CandidateSource, DEFAULT_PREFILL_BLOCK, LlamaModel};
pub use loader::{
    LoadOptions, LoadedModel, build_model, build_model_with, config_from_gguf, load_model,
    load_model_with,
};
pub use quantized::ActivationPrecision;
pub use tokenizer::Tokenizer;
pub use weights::{SafetensorsWeights, WeightSource, Weights};
