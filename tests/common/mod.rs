//! Shared helpers of the integration tests: fixtures, the CPU backend, tolerances.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use focusllm::core::{FocusConfig, FocusEngine};
use focusllm::models::{LlamaModel, load_model};
use serde_json::Value;

pub type B = focusllm::backends::Cpu;

/// The examples' model fetch and bundled adapter (not part of the published library).
#[path = "../../src/cli/fetch.rs"]
pub mod fetch;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

pub fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_u64().expect("id") as u32)
        .collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// One of the tiny official models (`C` or `D`) and its fixture directory.
pub fn official(name: &str) -> (LlamaModel<B>, PathBuf) {
    let dir = fixtures().join("official").join(name);
    let loaded = load_model::<B>(&dir, &Default::default()).expect("load official model");
    (loaded.model, dir)
}

/// The engine configuration of an official fixture (its local window and stride, threshold 4096).
pub fn official_config(dir: &Path) -> FocusConfig {
    let cfg = json(&dir.join("config.json"));
    FocusConfig::default()
        .with_local_window(cfg["local_window"].as_u64().unwrap() as usize)
        .with_chunk_size(cfg["memory_stride"][0].as_u64().unwrap() as usize)
        .with_plain_threshold(Some(4096))
}

pub fn engine(
    model: &LlamaModel<B>,
    config: FocusConfig,
) -> FocusEngine<'_, B, LlamaModel<B>, LlamaModel<B>> {
    FocusEngine::new(model, config).expect("engine")
}

/// The SmolLM2 GGUF when present: `None` (with a printed reason) locally, a failure under CI.
pub fn smollm2_path() -> Option<PathBuf> {
    let path = fetch::configured_model_path();
    if path.exists() {
        return Some(path);
    }
    let reason = format!(
        "SmolLM2 model not found at {} (run `bash scripts/fetch-model.sh` or set FOCUSLLM_MODEL)",
        path.display()
    );
    if std::env::var_os("CI").is_some() {
        panic!("CI is set and {reason}");
    }
    eprintln!("SKIP: {reason}");
    None
}
