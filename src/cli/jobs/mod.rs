//! The jobs of the `focusllm` command, one module each: its flags (`Args`, a clap parser that is
//! also the subcommand's arguments) and `run`.

pub mod ask;
pub mod bench;
pub mod generate;
pub mod logits;
pub mod passkey;
#[cfg(feature = "remote")]
pub mod serve;
#[cfg(feature = "train")]
pub mod train;
