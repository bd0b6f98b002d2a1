//! Loader and input errors: every corrupted checkpoint must give the right [`ModelError`] variant,
//! whose message names the file, tensor, key or shape at fault, and never a panic; token ids
//! outside the vocabulary must give [`FocusError::TokenOutOfVocab`] at every entry point.
//!
//! Each test builds its corrupted copy of the tiny official model C (or a hand-written GGUF) in
//! its own temporary directory, removed when the test ends. Safetensors files are read and written
//! by hand (8-byte little-endian header length, JSON header, data), independently of the loader.

mod common;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use common::*;
use focusllm::core::{ChunkSequence, FocusError, LocalDecoder, MainDecoder};
use focusllm::models::gguf::GgufFile;
use focusllm::models::{LlamaConfig, LoadedModel, ModelError, Tokenizer, load_model};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Scratch directories
// ---------------------------------------------------------------------------------------------

/// A fresh directory under the system temp dir, named after the test and the process, removed on
/// drop (also when the test fails).
struct Scratch(PathBuf);

impl Scratch {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "focusllm-loader-errors-{test}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        Self(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }

    /// A fresh subdirectory (one model directory per sub-case).
    fn subdir(&self, name: &str) -> PathBuf {
        let dir = self.0.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        dir
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write(path: &Path, bytes: impl AsRef<[u8]>) {
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

// ---------------------------------------------------------------------------------------------
// Safetensors by hand
// ---------------------------------------------------------------------------------------------

/// One tensor of a safetensors file: dtype name as written in the header, shape, raw bytes.
#[derive(Clone)]
struct StTensor {
    name: String,
    dtype: String,
    shape: Vec<usize>,
    data: Vec<u8>,
}

/// A whole safetensors file.
#[derive(Clone)]
struct StFile {
    metadata: Option<Value>,
    tensors: Vec<StTensor>,
}

impl StFile {
    fn read(path: &Path) -> Self {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Map<String, Value> =
            serde_json::from_slice(&bytes[8..8 + n]).expect("header");
        let data = &bytes[8 + n..];
        let mut metadata = None;
        let mut tensors = Vec::new();
        for (name, info) in header {
            if name == "__metadata__" {
                metadata = Some(info);
                continue;
            }
            let offsets: Vec<usize> = info["data_offsets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            let shape = info["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            let start = offsets[0];
            tensors.push((
                start,
                StTensor {
                    name,
                    dtype: info["dtype"].as_str().unwrap().to_string(),
                    shape,
                    data: data[start..offsets[1]].to_vec(),
                },
            ));
        }
        tensors.sort_by_key(|(start, _)| *start);
        Self {
            metadata,
            tensors: tensors.into_iter().map(|(_, t)| t).collect(),
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        if let Some(m) = &self.metadata {
            header.insert("__metadata__".into(), m.clone());
        }
        let mut offset = 0;
        for t in &self.tensors {
            header.insert(
                t.name.clone(),
                serde_json::json!({
                    "dtype": t.dtype,
                    "shape": t.shape,
                    "data_offsets": [offset, offset + t.data.len()],
                }),
            );
            offset += t.data.len();
        }
        let mut text = serde_json::to_vec(&Value::Object(header)).unwrap();
        while !text.len().is_multiple_of(8) {
            text.push(b' ');
        }
        let mut out = (text.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(&text);
        for t in &self.tensors {
            out.extend_from_slice(&t.data);
        }
        out
    }

    fn tensor_mut(&mut self, name: &str) -> &mut StTensor {
        self.tensors
            .iter_mut()
            .find(|t| t.name == name)
            .unwrap_or_else(|| panic!("no tensor {name}"))
    }
}

fn model_c_dir() -> PathBuf {
    fixtures().join("official").join("C")
}

fn model_c_config() -> String {
    let path = model_c_dir().join("config.json");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn model_c_weights() -> StFile {
    StFile::read(&model_c_dir().join("model.safetensors"))
}

/// Writes an HF model directory: `config.json` and `model.safetensors`.
fn write_model(dir: &Path, config: &str, weights: impl AsRef<[u8]>) {
    write(&dir.join("config.json"), config);
    write(&dir.join("model.safetensors"), weights);
}

/// `config.json` of model C with `edit` applied to its JSON.
fn edited_config(edit: impl FnOnce(&mut serde_json::Map<String, Value>)) -> String {
    let mut cfg: Value = serde_json::from_str(&model_c_config()).unwrap();
    edit(cfg.as_object_mut().unwrap());
    serde_json::to_string_pretty(&cfg).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Loading without panics
// ---------------------------------------------------------------------------------------------

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "<non-string panic payload>".into()
    }
}

/// `load_model`, turning a panic into a test failure that says what was being loaded.
fn try_load(path: &Path) -> Result<LoadedModel<B>, ModelError> {
    match catch_unwind(AssertUnwindSafe(|| {
        load_model::<B>(path, &Default::default())
    })) {
        Ok(result) => result,
        Err(payload) => panic!(
            "load_model panicked on {} instead of returning an error: {}",
            path.display(),
            panic_message(payload.as_ref())
        ),
    }
}

/// The error of loading `path`; fails the test if loading succeeds.
fn load_err(path: &Path) -> ModelError {
    match try_load(path) {
        Ok(_) => panic!(
            "loading {} succeeded, but an error was expected",
            path.display()
        ),
        Err(e) => e,
    }
}

/// Asserts that the error's message contains every needle.
fn assert_mentions(err: &ModelError, needles: &[&str]) {
    let msg = err.to_string();
    for needle in needles {
        assert!(
            msg.contains(needle),
            "error message does not mention `{needle}`: {msg}\n({err:?})"
        );
    }
}

fn shown(path: &Path) -> String {
    path.display().to_string()
}

// ---------------------------------------------------------------------------------------------
// 1-2. Truncated and malformed safetensors
// ---------------------------------------------------------------------------------------------

#[test]
fn truncated_safetensors_is_safetensors_error_naming_the_file() {
    let scratch = Scratch::new("truncated_safetensors");
    let full = std::fs::read(model_c_dir().join("model.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(full[..8].try_into().unwrap()) as usize;
    let data_start = 8 + header_len;
    let cuts = [
        ("empty file", 0),
        ("inside the length (3 bytes)", 3),
        ("inside the length (7 bytes)", 7),
        ("length only", 8),
        ("inside the header (first byte)", 9),
        ("inside the header (middle)", 8 + header_len / 2),
        ("inside the header (last byte missing)", data_start - 1),
        ("header only, no data", data_start),
        ("inside the data (first tensor)", data_start + 1000),
        (
            "inside the data (middle)",
            data_start + (full.len() - data_start) / 2,
        ),
        ("inside the data (last byte missing)", full.len() - 1),
    ];
    let config = model_c_config();
    for (i, (what, cut)) in cuts.into_iter().enumerate() {
        let dir = scratch.subdir(&format!("cut{i}"));
        write_model(&dir, &config, &full[..cut]);
        let file = dir.join("model.safetensors");
        let err = load_err(&dir);
        match &err {
            ModelError::Safetensors { path, .. } => {
                assert_eq!(path, &file, "cut {what} ({cut} bytes)")
            }
            other => {
                panic!("cut {what} ({cut} bytes): expected ModelError::Safetensors, got {other:?}")
            }
        }
        assert_mentions(&err, &[&shown(&file)]);
    }
    // Trailing garbage after the data is just as invalid as missing data.
    let dir = scratch.subdir("trailing");
    let mut longer = full.clone();
    longer.extend_from_slice(&[0u8; 16]);
    write_model(&dir, &config, &longer);
    let err = load_err(&dir);
    assert!(
        matches!(err, ModelError::Safetensors { .. }),
        "trailing bytes: got {err:?}"
    );
    assert_mentions(&err, &[&shown(&dir.join("model.safetensors"))]);
}

#[test]
fn corrupt_safetensors_header_is_safetensors_error() {
    let scratch = Scratch::new("corrupt_safetensors_header");
    let config = model_c_config();
    let valid = model_c_weights();
    let with_header = |header: &[u8], data_len: usize| {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header);
        out.extend(std::iter::repeat_n(0u8, data_len));
        out
    };
    // The valid header of model C, with its first tensor's offsets pointing past the data.
    let bad_offsets = {
        let mut bytes = valid.to_bytes();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let text = String::from_utf8(bytes[8..8 + n].to_vec()).unwrap();
        let patched = text.replacen("\"data_offsets\":[0,", "\"data_offsets\":[8,", 1);
        assert_ne!(patched, text, "the header was not patched");
        bytes[8..8 + n].copy_from_slice(patched.as_bytes());
        bytes
    };
    let mut huge_len = valid.to_bytes();
    huge_len[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let mut past_end = valid.to_bytes();
    let len = past_end.len() as u64;
    past_end[..8].copy_from_slice(&len.to_le_bytes());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "garbage JSON",
            with_header(b"{this is not json at all}", 64),
        ),
        (
            "not UTF-8",
            with_header(&[0xff, 0xfe, 0x7b, 0x7d, 0x80, 0x81, 0x82, 0x83], 64),
        ),
        ("JSON array", with_header(b"[1, 2, 3]       ", 0)),
        (
            "unknown dtype",
            with_header(
                br#"{"x":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}}"#,
                8,
            ),
        ),
        (
            "offsets disagree with shape",
            with_header(
                br#"{"x":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#,
                8,
            ),
        ),
        ("offsets past the data", bad_offsets),
        ("header length u64::MAX", huge_len),
        ("header length past the end", past_end),
    ];
    for (i, (what, bytes)) in cases.into_iter().enumerate() {
        let dir = scratch.subdir(&format!("case{i}"));
        write_model(&dir, &config, &bytes);
        let file = dir.join("model.safetensors");
        let err = load_err(&dir);
        match &err {
            ModelError::Safetensors { path, .. } => assert_eq!(path, &file, "{what}"),
            other => panic!("{what}: expected ModelError::Safetensors, got {other:?}"),
        }
        assert_mentions(&err, &[&shown(&file)]);
    }
}

// ---------------------------------------------------------------------------------------------
// 3-5. Missing tensor, wrong shape, unsupported dtype
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_tensor_is_named() {
    let scratch = Scratch::new("missing_tensor");
    let dir = scratch.subdir("model");
    let name = "model.layers.1.mlp.up_proj.weight";
    let mut weights = model_c_weights();
    let before = weights.tensors.len();
    weights.tensors.retain(|t| t.name != name);
    assert_eq!(weights.tensors.len(), before - 1);
    write_model(&dir, &model_c_config(), weights.to_bytes());
    let err = load_err(&dir);
    match &err {
        ModelError::MissingTensor { tensor, .. } => assert_eq!(tensor, name),
        other => panic!("expected ModelError::MissingTensor, got {other:?}"),
    }
    assert_mentions(&err, &[name, &shown(&dir)]);
}

#[test]
fn wrong_shape_is_shape_mismatch_with_both_shapes() {
    let scratch = Scratch::new("wrong_shape");
    let config = model_c_config();
    // (tensor, new shape, expected shape): data is resized to match the new shape, so the file
    // itself is valid and only the config disagrees.
    let cases: [(&str, Vec<usize>, Vec<usize>); 3] = [
        (
            "model.layers.0.self_attn.k_proj.weight",
            vec![33, 96],
            vec![32, 96],
        ),
        ("model.norm.weight", vec![95], vec![96]),
        ("lm_head.weight", vec![96, 512], vec![512, 96]),
    ];
    for (i, (name, shape, expected)) in cases.into_iter().enumerate() {
        let dir = scratch.subdir(&format!("case{i}"));
        let mut weights = model_c_weights();
        let t = weights.tensor_mut(name);
        t.data.resize(shape.iter().product::<usize>() * 4, 0);
        t.shape = shape.clone();
        write_model(&dir, &config, weights.to_bytes());
        let err = load_err(&dir);
        match &err {
            ModelError::ShapeMismatch {
                tensor,
                expected: e,
                found,
            } => {
                assert_eq!(tensor, name);
                assert_eq!(e, &expected, "{name}: expected shape");
                assert_eq!(found, &shape, "{name}: found shape");
            }
            other => panic!("{name}: expected ModelError::ShapeMismatch, got {other:?}"),
        }
        assert_mentions(
            &err,
            &[name, &format!("{shape:?}"), &format!("{expected:?}")],
        );
    }
}

#[test]
fn unsupported_dtype_is_named() {
    let scratch = Scratch::new("unsupported_dtype");
    let config = model_c_config();
    for (i, (name, dtype, size)) in [
        ("model.layers.0.self_attn.q_proj.weight", "I64", 8),
        ("model.layers.2.mlp.down_proj.weight", "U8", 1),
        ("model.norm.weight", "I32", 4),
    ]
    .into_iter()
    .enumerate()
    {
        let dir = scratch.subdir(&format!("case{i}"));
        let mut weights = model_c_weights();
        let t = weights.tensor_mut(name);
        t.dtype = dtype.into();
        t.data = vec![0u8; t.shape.iter().product::<usize>() * size];
        write_model(&dir, &config, weights.to_bytes());
        let file = dir.join("model.safetensors");
        let err = load_err(&dir);
        match &err {
            ModelError::UnsupportedDtype {
                path,
                tensor,
                dtype: found,
            } => {
                assert_eq!(tensor, name);
                assert_eq!(path, &file, "{name}");
                assert!(
                    found.contains(dtype),
                    "{name}: dtype {found:?} does not name {dtype}"
                );
            }
            other => {
                panic!("{name} as {dtype}: expected ModelError::UnsupportedDtype, got {other:?}")
            }
        }
        assert_mentions(&err, &[name, dtype, &shown(&file)]);
    }
}

/// Control for the tests above: model C written back by this file's safetensors writer loads,
/// and so does a copy with a tensor stored as F16 (a supported non-F32 type).
#[test]
fn rewritten_model_loads() {
    let scratch = Scratch::new("rewritten_model");
    let dir = scratch.subdir("f32");
    write_model(&dir, &model_c_config(), model_c_weights().to_bytes());
    if let Err(e) = try_load(&dir) {
        panic!("rewritten model C does not load: {e}");
    }
    let dir = scratch.subdir("f16");
    let mut weights = model_c_weights();
    let t = weights.tensor_mut("model.norm.weight");
    t.dtype = "F16".into();
    t.data = [0x00, 0x3c].repeat(96); // 1.0 in f16
    write_model(&dir, &model_c_config(), weights.to_bytes());
    if let Err(e) = try_load(&dir) {
        panic!("model C with an F16 tensor does not load: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// 6. config.json
// ---------------------------------------------------------------------------------------------

#[test]
fn config_gpt2_is_unsupported_architecture() {
    let scratch = Scratch::new("config_gpt2");
    let dir = scratch.subdir("model");
    let config = edited_config(|c| {
        c.insert("model_type".into(), "gpt2".into());
        c.insert(
            "architectures".into(),
            serde_json::json!(["GPT2LMHeadModel"]),
        );
    });
    write(&dir.join("config.json"), &config);
    std::fs::copy(
        model_c_dir().join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let err = load_err(&dir);
    match &err {
        ModelError::UnsupportedArchitecture { arch, .. } => assert_eq!(arch, "gpt2"),
        other => panic!("expected ModelError::UnsupportedArchitecture, got {other:?}"),
    }
    assert_mentions(&err, &["gpt2"]);
    // The same through the string parser.
    match LlamaConfig::from_json_str(&config, Path::new("somewhere/config.json")) {
        Err(ModelError::UnsupportedArchitecture { arch, .. }) => assert_eq!(arch, "gpt2"),
        other => panic!("expected ModelError::UnsupportedArchitecture, got {other:?}"),
    }
}

#[test]
fn config_not_json_is_config_error() {
    let scratch = Scratch::new("config_not_json");
    let dir = scratch.subdir("model");
    write(
        &dir.join("config.json"),
        "vocab_size = 512\nhidden_size = 96\n",
    );
    std::fs::copy(
        model_c_dir().join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let file = dir.join("config.json");
    let err = load_err(&dir);
    match &err {
        ModelError::Config { path, .. } => assert_eq!(path, &file),
        other => panic!("expected ModelError::Config, got {other:?}"),
    }
    assert_mentions(&err, &[&shown(&file)]);
    // A truncated config is no better.
    let text = model_c_config();
    match LlamaConfig::from_json_str(&text[..text.len() / 2], &file) {
        Err(ModelError::Config { path, .. }) => assert_eq!(path, file),
        other => panic!("truncated config: expected ModelError::Config, got {other:?}"),
    }
}

#[test]
fn config_heads_not_multiple_of_kv_heads_is_config_error() {
    let scratch = Scratch::new("config_heads");
    let dir = scratch.subdir("model");
    let config = edited_config(|c| {
        c.insert("num_key_value_heads".into(), 4.into());
    });
    write(&dir.join("config.json"), &config);
    std::fs::copy(
        model_c_dir().join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let file = dir.join("config.json");
    let err = load_err(&dir);
    match &err {
        ModelError::Config { path, .. } => assert_eq!(path, &file),
        other => panic!("expected ModelError::Config, got {other:?}"),
    }
    assert_mentions(
        &err,
        &[&shown(&file), "num_attention_heads", "num_key_value_heads"],
    );
}

#[test]
fn config_missing_or_zero_field_is_config_error_naming_it() {
    let path = Path::new("model/config.json");
    let missing = edited_config(|c| {
        c.remove("hidden_size");
    });
    match LlamaConfig::from_json_str(&missing, path) {
        Err(err @ ModelError::Config { .. }) => {
            assert_mentions(&err, &["hidden_size", "model/config.json"])
        }
        other => panic!("missing hidden_size: expected ModelError::Config, got {other:?}"),
    }
    let zero = edited_config(|c| {
        c.insert("num_hidden_layers".into(), 0.into());
    });
    match LlamaConfig::from_json_str(&zero, path) {
        Err(err @ ModelError::Config { .. }) => {
            assert_mentions(&err, &["num_hidden_layers", "model/config.json"])
        }
        other => panic!("zero num_hidden_layers: expected ModelError::Config, got {other:?}"),
    }
    let wrong_type = edited_config(|c| {
        c.insert("vocab_size".into(), "512".into());
    });
    match LlamaConfig::from_json_str(&wrong_type, path) {
        Err(err @ ModelError::Config { .. }) => assert_mentions(&err, &["model/config.json"]),
        other => panic!("string vocab_size: expected ModelError::Config, got {other:?}"),
    }
}

/// A config without `model_type` falls back to `architectures[0]`; HF writes class names there
/// (`LlamaForCausalLM`), which must be accepted as the llama architecture.
#[test]
fn config_without_model_type_uses_architectures() {
    let path = Path::new("model/config.json");
    let config = edited_config(|c| {
        c.remove("model_type");
    });
    if let Err(e) = LlamaConfig::from_json_str(&config, path) {
        panic!(
            "config with architectures [\"LlamaForCausalLM\"] and no model_type is rejected: {e}"
        );
    }
    let gpt2 = edited_config(|c| {
        c.remove("model_type");
        c.insert(
            "architectures".into(),
            serde_json::json!(["GPT2LMHeadModel"]),
        );
    });
    match LlamaConfig::from_json_str(&gpt2, path) {
        Err(err @ ModelError::UnsupportedArchitecture { .. }) => {
            assert_mentions(&err, &["GPT2LMHeadModel"])
        }
        other => {
            panic!("GPT2LMHeadModel: expected ModelError::UnsupportedArchitecture, got {other:?}")
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 7. Missing files
// ---------------------------------------------------------------------------------------------

#[test]
fn missing_config_is_io_error_naming_it() {
    let scratch = Scratch::new("missing_config");
    let dir = scratch.subdir("model");
    std::fs::copy(
        model_c_dir().join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let file = dir.join("config.json");
    let err = load_err(&dir);
    match &err {
        ModelError::Io { path, source } => {
            assert_eq!(path, &file);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected ModelError::Io, got {other:?}"),
    }
    assert_mentions(&err, &[&shown(&file)]);
}

#[test]
fn missing_model_dir_is_io_error_naming_it() {
    let scratch = Scratch::new("missing_model_dir");
    let missing = scratch.path().join("no-such-model");
    let err = load_err(&missing);
    match &err {
        ModelError::Io { path, source } => {
            assert_eq!(path, &missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected ModelError::Io, got {other:?}"),
    }
    assert_mentions(&err, &[&shown(&missing)]);
}

#[test]
fn missing_weights_are_named() {
    let scratch = Scratch::new("missing_weights");
    let dir = scratch.subdir("model");
    write(&dir.join("config.json"), model_c_config());
    let err = load_err(&dir);
    assert_mentions(&err, &["model.safetensors", &shown(&dir)]);
}

// ---------------------------------------------------------------------------------------------
// 8. Sharded checkpoints
// ---------------------------------------------------------------------------------------------

const SHARD_1: &str = "model-00001-of-00002.safetensors";
const SHARD_2: &str = "model-00002-of-00002.safetensors";

/// Writes model C as two shards and an index; `rename` may change the shard file an index entry
/// names (without moving the tensor).
fn write_sharded(dir: &Path, rename: impl Fn(&str, &str) -> String) {
    let weights = model_c_weights();
    let half = weights.tensors.len() / 2;
    let shards = [
        (
            SHARD_1,
            StFile {
                metadata: weights.metadata.clone(),
                tensors: weights.tensors[..half].to_vec(),
            },
        ),
        (
            SHARD_2,
            StFile {
                metadata: weights.metadata.clone(),
                tensors: weights.tensors[half..].to_vec(),
            },
        ),
    ];
    let mut weight_map = serde_json::Map::new();
    let mut total = 0;
    for (file, shard) in &shards {
        write(&dir.join(file), shard.to_bytes());
        for t in &shard.tensors {
            weight_map.insert(t.name.clone(), rename(&t.name, file).into());
            total += t.data.len();
        }
    }
    let index =
        serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
    write(
        &dir.join("model.safetensors.index.json"),
        serde_json::to_string_pretty(&index).unwrap(),
    );
    write(&dir.join("config.json"), model_c_config());
}

#[test]
fn sharded_checkpoint_matches_single_file() {
    let scratch = Scratch::new("sharded_matches");
    let dir = scratch.subdir("model");
    write_sharded(&dir, |_, file| file.to_string());
    let sharded = match try_load(&dir) {
        Ok(loaded) => loaded.model,
        Err(e) => panic!("sharded model C does not load: {e}"),
    };
    let (single, fixture_dir) = official("C");
    let inputs = json(&fixture_dir.join("inputs.json"));
    let short = ids(&inputs["short_ids"]);
    let config = official_config(&fixture_dir);
    let expected = engine(&single, config.clone())
        .session()
        .prefill(&short)
        .expect("single-file prefill");
    let got = engine(&sharded, config)
        .session()
        .prefill(&short)
        .expect("sharded prefill");
    assert_eq!(got.len(), 512);
    assert_eq!(
        max_abs_diff(&got, &expected),
        0.0,
        "sharded and single-file logits differ"
    );
}

#[test]
fn sharded_index_naming_missing_shard_is_io_error_naming_it() {
    let scratch = Scratch::new("sharded_missing_shard");
    let dir = scratch.subdir("model");
    let missing = "model-00003-of-00002.safetensors";
    write_sharded(&dir, |name, file| {
        if name == "model.norm.weight" {
            missing.to_string()
        } else {
            file.to_string()
        }
    });
    let file = dir.join(missing);
    let err = load_err(&dir);
    match &err {
        ModelError::Io { path, source } => {
            assert_eq!(path, &file);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("expected ModelError::Io, got {other:?}"),
    }
    assert_mentions(&err, &[&shown(&file)]);
}

#[test]
fn sharded_index_not_json_is_safetensors_error_naming_it() {
    let scratch = Scratch::new("sharded_bad_index");
    let dir = scratch.subdir("model");
    write_sharded(&dir, |_, file| file.to_string());
    let index = dir.join("model.safetensors.index.json");
    write(&index, "{\"weight_map\": [");
    let err = load_err(&dir);
    match &err {
        ModelError::Safetensors { path, .. } => assert_eq!(path, &index),
        other => panic!("expected ModelError::Safetensors, got {other:?}"),
    }
    assert_mentions(&err, &[&shown(&index)]);
}

#[test]
fn sharded_shard_missing_a_tensor_is_missing_tensor() {
    let scratch = Scratch::new("sharded_missing_tensor");
    let dir = scratch.subdir("model");
    write_sharded(&dir, |_, file| file.to_string());
    // Rewrite the second shard without the final norm (the index still names it).
    let name = "model.norm.weight";
    let shard = dir.join(SHARD_2);
    let mut weights = StFile::read(&shard);
    weights.tensors.retain(|t| t.name != name);
    write(&shard, weights.to_bytes());
    let err = load_err(&dir);
    match &err {
        ModelError::MissingTensor { tensor, .. } => assert_eq!(tensor, name),
        other => panic!("expected ModelError::MissingTensor, got {other:?}"),
    }
    assert_mentions(&err, &[name]);
}

// ---------------------------------------------------------------------------------------------
// 9. Token ids outside the vocabulary
// ---------------------------------------------------------------------------------------------

fn assert_out_of_vocab<T: std::fmt::Debug>(
    result: focusllm::core::Result<T>,
    id: u32,
    position: usize,
    what: &str,
) {
    match result {
        Err(FocusError::TokenOutOfVocab {
            id: i,
            position: p,
            vocab,
        }) => {
            assert_eq!((i, p, vocab), (id, position, 512), "{what}");
        }
        other => panic!(
            "{what}: expected FocusError::TokenOutOfVocab {{ id: {id}, position: {position} }}, got {other:?}"
        ),
    }
}

#[test]
fn session_rejects_token_out_of_vocab() {
    let (model, dir) = official("C");
    assert_eq!(model.config().vocab_size, 512);
    let engine = engine(&model, official_config(&dir));
    let mut session = engine.session();
    assert_out_of_vocab(session.prefill(&[1, 5, 512]), 512, 2, "prefill [1, 5, 512]");
    assert_out_of_vocab(
        session.prefill(&[u32::MAX, 5]),
        u32::MAX,
        0,
        "prefill [u32::MAX, 5]",
    );
    // A long (chunked) input is checked before any chunk is decoded.
    let mut long = ids(&json(&dir.join("inputs.json"))["long_ids"]);
    assert!(long.len() > 150);
    long[150] = 600;
    assert_out_of_vocab(session.prefill(&long), 600, 150, "long prefill");
    // After a valid prompt, `step` checks its token.
    session.prefill(&[1, 5, 7]).expect("valid prefill");
    assert_out_of_vocab(session.step(512), 512, 0, "step(512)");
    let err = session.prefill(&[1, 5, 512]).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("512") && msg.contains("position 2"),
        "message: {msg}"
    );
}

#[test]
fn decoders_reject_token_out_of_vocab() {
    let (model, _) = official("C");
    let chunk = |tokens: Vec<u32>| ChunkSequence {
        chunk_id: 0,
        tokens,
    };
    let decode = |seqs: &[ChunkSequence]| {
        catch_unwind(AssertUnwindSafe(|| {
            LocalDecoder::<B>::decode_chunks(&model, seqs)
        }))
        .unwrap_or_else(|p| panic!("decode_chunks panicked: {}", panic_message(p.as_ref())))
    };
    assert_out_of_vocab(
        decode(&[chunk(vec![1, 5, 512])]),
        512,
        2,
        "decode_chunks [1, 5, 512]",
    );
    assert_out_of_vocab(
        decode(&[chunk(vec![1, 5, 7]), chunk(vec![3, 4000, 5, 6])]),
        4000,
        1,
        "decode_chunks, second sequence",
    );

    let (mut batch, _) = decode(&[chunk(vec![1, 5, 7])]).expect("valid chunk");
    let extended = catch_unwind(AssertUnwindSafe(|| {
        LocalDecoder::<B>::extend_chunks(&model, &mut batch, 7, 512)
    }))
    .unwrap_or_else(|p| panic!("extend_chunks panicked: {}", panic_message(p.as_ref())));
    assert_out_of_vocab(extended, 512, 1, "extend_chunks(7, 512)");

    // A main state over candidates, then a bad feed: rejected, the state untouched.
    let (_, past) = decode(&[chunk(vec![1, 5, 7]), chunk(vec![3, 4, 5, 6])]).expect("valid");
    let mut main = MainDecoder::<B>::start(&model, Some(&past)).expect("start");
    assert_eq!(main.len(), 2, "the candidates are the first positions");
    let fed = catch_unwind(AssertUnwindSafe(|| {
        MainDecoder::<B>::feed(&model, &mut main, &[1, 5, 512])
    }))
    .unwrap_or_else(|p| panic!("feed panicked: {}", panic_message(p.as_ref())));
    assert_out_of_vocab(fed, 512, 2, "feed [1, 5, 512] after candidates");
    assert_eq!(
        main.len(),
        2,
        "a rejected feed must leave the state untouched"
    );

    let mut plain = MainDecoder::<B>::start(&model, None).expect("start");
    let fed = catch_unwind(AssertUnwindSafe(|| {
        MainDecoder::<B>::feed(&model, &mut plain, &[1, 512])
    }))
    .unwrap_or_else(|p| panic!("feed panicked: {}", panic_message(p.as_ref())));
    assert_out_of_vocab(fed, 512, 1, "feed [1, 512]");
    assert!(
        plain.is_empty(),
        "a rejected feed must leave the cache untouched"
    );
}

/// `Tokenizer::decode` of an id outside the vocabulary (SmolLM2 GGUF, when present).
#[test]
fn tokenizer_decode_rejects_token_out_of_vocab() {
    let Some(path) = smollm2_path() else { return };
    let gguf = GgufFile::open(&path).unwrap_or_else(|e| panic!("{e}"));
    let tokenizer = Tokenizer::from_gguf(&gguf).unwrap_or_else(|e| panic!("{e}"));
    let vocab = tokenizer.vocab_size();
    match tokenizer.decode(&[1, vocab as u32]) {
        Err(ModelError::TokenOutOfVocab { id, vocab: v }) => {
            assert_eq!((id as usize, v), (vocab, vocab))
        }
        other => panic!("expected ModelError::TokenOutOfVocab, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// 10. GGUF metadata
// ---------------------------------------------------------------------------------------------

enum GgufKv {
    Str(&'static str),
    U32(u32),
    F32(f32),
}

/// A GGUF v3 file with no tensors and the given metadata.
fn gguf_bytes(kvs: &[(&str, GgufKv)]) -> Vec<u8> {
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&0u64.to_le_bytes());
    out.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (key, value) in kvs {
        out.extend_from_slice(&(key.len() as u64).to_le_bytes());
        out.extend_from_slice(key.as_bytes());
        match value {
            GgufKv::Str(s) => {
                out.extend_from_slice(&8u32.to_le_bytes());
                out.extend_from_slice(&(s.len() as u64).to_le_bytes());
                out.extend_from_slice(s.as_bytes());
            }
            GgufKv::U32(v) => {
                out.extend_from_slice(&4u32.to_le_bytes());
                out.extend_from_slice(&v.to_le_bytes());
            }
            GgufKv::F32(v) => {
                out.extend_from_slice(&6u32.to_le_bytes());
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
    }
    out
}

#[test]
fn gguf_gpt2_is_unsupported_architecture() {
    let scratch = Scratch::new("gguf_gpt2");
    let file = scratch.path().join("gpt2.gguf");
    write(
        &file,
        gguf_bytes(&[
            ("general.architecture", GgufKv::Str("gpt2")),
            ("gpt2.block_count", GgufKv::U32(2)),
            ("gpt2.context_length", GgufKv::U32(1024)),
        ]),
    );
    let err = load_err(&file);
    match &err {
        ModelError::UnsupportedArchitecture { arch, .. } => assert_eq!(arch, "gpt2"),
        other => panic!("expected ModelError::UnsupportedArchitecture, got {other:?}"),
    }
    assert_mentions(&err, &["gpt2"]);
}

#[test]
fn gguf_missing_metadata_key_is_named() {
    let scratch = Scratch::new("gguf_missing_key");
    let file = scratch.path().join("llama.gguf");
    write(
        &file,
        gguf_bytes(&[
            ("general.architecture", GgufKv::Str("llama")),
            ("llama.attention.head_count", GgufKv::U32(6)),
            ("llama.attention.head_count_kv", GgufKv::U32(2)),
            ("llama.vocab_size", GgufKv::U32(512)),
            ("llama.embedding_length", GgufKv::U32(96)),
            ("llama.feed_forward_length", GgufKv::U32(160)),
            ("llama.context_length", GgufKv::U32(8192)),
            ("llama.attention.layer_norm_rms_epsilon", GgufKv::F32(1e-5)),
        ]),
    );
    let err = load_err(&file);
    match &err {
        ModelError::Gguf { path, .. } | ModelError::Config { path, .. } => assert_eq!(path, &file),
        other => panic!("expected ModelError::Gguf naming the key, got {other:?}"),
    }
    assert_mentions(&err, &["llama.block_count", &shown(&file)]);

    // No architecture at all.
    let file = scratch.path().join("anonymous.gguf");
    write(
        &file,
        gguf_bytes(&[("general.name", GgufKv::Str("nameless"))]),
    );
    let err = load_err(&file);
    assert!(matches!(err, ModelError::Gguf { .. }), "got {err:?}");
    assert_mentions(&err, &["general.architecture", &shown(&file)]);
}

// ---------------------------------------------------------------------------------------------
// 11. Values that parse but make no sense are refused by field
// ---------------------------------------------------------------------------------------------

#[test]
fn config_nonsense_values_are_config_errors_naming_the_field() {
    let path = Path::new("model/config.json");
    type Edit = Box<dyn Fn(&mut serde_json::Map<String, Value>)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "hidden_act",
            Box::new(|c| {
                c.insert("hidden_act".into(), "gelu".into());
            }),
        ),
        (
            "rope_theta",
            Box::new(|c| {
                c.insert("rope_theta".into(), 0.0.into());
            }),
        ),
        (
            "rope_theta",
            Box::new(|c| {
                c.insert("rope_theta".into(), (-10000.0).into());
            }),
        ),
        (
            "rms_norm_eps",
            Box::new(|c| {
                c.insert("rms_norm_eps".into(), 0.0.into());
            }),
        ),
        (
            "bos_token_id",
            Box::new(|c| {
                c.insert("bos_token_id".into(), 100000.into());
            }),
        ),
        (
            "eos_token_id",
            Box::new(|c| {
                c.insert("eos_token_id".into(), serde_json::json!([2, 512]));
            }),
        ),
        (
            "num_attention_heads",
            Box::new(|c| {
                c.remove("head_dim");
                c.insert("num_attention_heads".into(), 7.into());
                c.insert("num_key_value_heads".into(), 7.into());
            }),
        ),
        (
            "rope_scaling.factor",
            Box::new(|c| {
                c.insert(
                    "rope_scaling".into(),
                    serde_json::json!({"rope_type": "linear", "factor": -2.0}),
                );
            }),
        ),
    ];
    for (field, edit) in cases {
        let text = edited_config(|c| edit(c));
        match LlamaConfig::from_json_str(&text, path) {
            Err(err @ ModelError::Config { .. }) => {
                assert_mentions(&err, &[field, "model/config.json"])
            }
            other => panic!("{field}: expected ModelError::Config, got {other:?}"),
        }
    }
}

#[test]
fn a_huge_layer_count_is_refused_before_anything_is_allocated() {
    let scratch = Scratch::new("huge_layers");
    let config = edited_config(|c| {
        c.insert("num_hidden_layers".into(), (1u64 << 40).into());
    });
    write_model(scratch.path(), &config, model_c_weights().to_bytes());
    let err = load_err(scratch.path());
    assert!(
        matches!(err, ModelError::MissingTensor { .. }),
        "got {err:?}"
    );
    assert_mentions(&err, &["model.layers.1099511627775"]);
}

#[test]
fn gguf_mistyped_or_oversized_keys_are_errors_not_defaults() {
    let scratch = Scratch::new("gguf_mistyped");
    let base = || {
        vec![
            ("general.architecture", GgufKv::Str("llama")),
            ("llama.block_count", GgufKv::U32(2)),
            ("llama.attention.head_count", GgufKv::U32(6)),
            ("llama.attention.head_count_kv", GgufKv::U32(2)),
            ("llama.vocab_size", GgufKv::U32(512)),
            ("llama.embedding_length", GgufKv::U32(96)),
            ("llama.feed_forward_length", GgufKv::U32(160)),
            ("llama.context_length", GgufKv::U32(8192)),
            ("llama.attention.layer_norm_rms_epsilon", GgufKv::F32(1e-5)),
        ]
    };
    for (key, value) in [
        ("llama.vocab_size", GgufKv::Str("512")),
        ("llama.attention.head_count_kv", GgufKv::F32(2.0)),
        ("llama.rope.dimension_count", GgufKv::Str("16")),
        ("llama.rope.freq_base", GgufKv::Str("10000")),
        ("llama.rope.freq_base", GgufKv::F32(0.0)),
        (
            "llama.attention.layer_norm_rms_epsilon",
            GgufKv::F32(f32::NAN),
        ),
        ("tokenizer.ggml.bos_token_id", GgufKv::U32(100_000)),
    ] {
        let mut kvs: Vec<(&str, GgufKv)> = base().into_iter().filter(|(k, _)| *k != key).collect();
        kvs.push((key, value));
        let file = scratch.path().join("mistyped.gguf");
        write(&file, gguf_bytes(&kvs));
        let err = load_err(&file);
        assert!(
            matches!(err, ModelError::Gguf { .. } | ModelError::Config { .. }),
            "{key}: got {err:?}"
        );
        let field = key.rsplit('.').next().unwrap();
        let named = err.to_string().contains(key) || err.to_string().contains(field);
        assert!(named, "{key}: the error does not name it: {err}");
    }
}
