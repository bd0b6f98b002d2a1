//! Counting the floating-point work of forwards, for benchmarks that report effective GFLOP/s.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::config::LlamaConfig;

/// A running total of the analytic FLOPs of a model's forwards, shared by its clones.
#[derive(Debug, Clone, Default)]
pub struct WorkCounter(Arc<AtomicU64>);

impl WorkCounter {
    /// FLOPs counted so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn add(&self, flops: u64) {
        self.0.fetch_add(flops, Ordering::Relaxed);
    }
}

/// The analytic FLOPs of one forward: `batch` rows of `seq` new tokens after `past` keys, with
/// logits at `logits` positions per row. Linear layers cost 2 FLOPs per weight per token; each
/// (query, visible key) pair costs `4 · heads · head_dim` (scores and weighted values), with the
/// keys a causal query sees (padding and exact-mode candidates see fewer: an upper bound there).
/// `kv_only_last`: the last layer computes only keys and values.
pub(crate) fn forward_flops(
    config: &LlamaConfig,
    batch: usize,
    seq: usize,
    past: usize,
    logits: usize,
    kv_only_last: bool,
) -> u64 {
    let (hidden, inter) = (config.hidden_size as u64, config.intermediate_size as u64);
    let q_out = (config.num_attention_heads * config.head_dim()) as u64;
    let kv_out = (config.kv_heads() * config.head_dim()) as u64;
    let linear_per_token = 2 * hidden * (2 * q_out + 2 * kv_out) + 2 * 3 * hidden * inter;
    let (seq, past) = (seq as u64, past as u64);
    let pairs = seq * past + seq * (seq + 1) / 2;
    let per_pair = 4 * q_out;
    let layers = config.num_hidden_layers as u64;
    let head = 2 * hidden * config.vocab_size as u64 * logits as u64;
    let (full, kv_only) = match (kv_only_last, layers) {
        (true, 1..) => (layers - 1, 1),
        _ => (layers, 0),
    };
    let kv_per_token = 2 * hidden * 2 * kv_out;
    batch as u64
        * (full * (seq * linear_per_token + pairs * per_pair) + kv_only * seq * kv_per_token + head)
}
