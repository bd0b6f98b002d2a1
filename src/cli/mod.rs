//! The `focusllm` command's code, outside the library's API (a hidden module, feature `cli`):
//! command-line flags, progress bars, the adapter policy, the model fetch (which shells out to
//! `pip`), passkey prompts, memory and CPU-time readings, the focus strip, and one module per job in [`jobs`].
//! The binary (`src/main.rs`) and each example program call a job's `run`, so all of them link the
//! one compiled copy; the tests include the few parts they need by `#[path]`.
//!
//! The command and the examples install mimalloc as their allocator (`#[global_allocator]`): the
//! glibc allocator returns the large activation buffers to the kernel after every op and
//! page-faults them back (measured: 41 s vs 29 s for one SmolLM2 prefill of 7K tokens). Library
//! users choose their own.

pub mod app;
pub mod fetch;
pub mod focus_strip;
pub mod host;
pub mod jobs;
pub mod memory;
pub mod passkey;
