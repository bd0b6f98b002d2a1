//! Models by Hugging Face id (`focusllm_models::hub`), without the internet.
//!
//! Each test builds its own Hugging Face cache in a temporary directory, in the layout
//! `huggingface_hub` writes (`models--org--name/refs/<revision>` holding a commit hash,
//! `snapshots/<commit>/<file>` as relative symlinks into `blobs/`), from the tiny model D of
//! `tests/fixtures/official/` (plus a small `tokenizer.json` written here, and a GGUF conversion of
//! model D). Tests that download talk to a fake Hub served by the test itself on 127.0.0.1; they
//! are skipped when a proxy variable is set, since `ureq` (under hf-hub) would send even loopback
//! requests to the proxy. No test reads or changes the process environment (see
//! `options_from_variables`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use burn::backend::Flex;
use focusllm_models::hub::{HubOptions, ModelId, ModelSource, fetch, looks_like_hub_id};
use focusllm_models::llama::{Candidates, ForwardInput, Past};
use focusllm_models::{
    HubErrorKind, LlamaModel, ModelError, SafetensorsWeights, WeightSource, load_model,
};

type B = Flex;

/// A fake commit hash (40 hex digits, like the Hub's).
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const REPO: &str = "focusllm-test/tiny-llama";

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

fn model_d_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/official/D")
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

/// A small word-level `tokenizer.json`, enough for the loader (the model is driven by ids).
fn tokenizer_json() -> Vec<u8> {
    let mut vocab = serde_json::Map::new();
    for (id, word) in ["<unk>", "<s>", "</s>", "hello", "world"]
        .iter()
        .enumerate()
    {
        vocab.insert(word.to_string(), id.into());
    }
    serde_json::to_vec(&serde_json::json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<unk>"}
    }))
    .unwrap()
}

fn tokenizer_config_json() -> Vec<u8> {
    br#"{"bos_token": "<s>", "eos_token": "</s>", "chat_template": "{% for m in messages %}<|im_start|>{{ m.content }}{% endfor %}"}"#.to_vec()
}

/// The files of model D as an HF repository with one `model.safetensors`.
fn single_file_repo() -> Vec<(String, Vec<u8>)> {
    let d = model_d_dir();
    vec![
        ("config.json".into(), read(&d.join("config.json"))),
        ("tokenizer.json".into(), tokenizer_json()),
        ("tokenizer_config.json".into(), tokenizer_config_json()),
        (
            "generation_config.json".into(),
            br#"{"bos_token_id": 1, "eos_token_id": 2}"#.to_vec(),
        ),
        (
            "model.safetensors".into(),
            read(&d.join("model.safetensors")),
        ),
    ]
}

/// Model D sharded in two: each shard is a copy of the whole file (the loader lets later files win
/// on duplicate names, so the values are the same), and the index splits the names between them.
fn sharded_repo() -> Vec<(String, Vec<u8>)> {
    let d = model_d_dir();
    let weights = read(&d.join("model.safetensors"));
    let keys: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&read(&d.join("tensor_keys.json"))).unwrap();
    let weight_map: serde_json::Map<String, serde_json::Value> = keys
        .keys()
        .enumerate()
        .map(|(i, name)| {
            let shard = format!("model-0000{}-of-00002.safetensors", i % 2 + 1);
            (name.clone(), shard.into())
        })
        .collect();
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": weight_map});
    vec![
        ("config.json".into(), read(&d.join("config.json"))),
        ("tokenizer.json".into(), tokenizer_json()),
        (
            "model.safetensors.index.json".into(),
            serde_json::to_vec(&index).unwrap(),
        ),
        ("model-00001-of-00002.safetensors".into(), weights.clone()),
        ("model-00002-of-00002.safetensors".into(), weights),
    ]
}

/// Model D as a GGUF v3 file (F32 tensors under llama.cpp names, a 512-token BPE vocabulary with
/// no merges). Q/K rows are not permuted: only loading the same file two ways is compared.
fn model_d_gguf() -> Vec<u8> {
    fn string(out: &mut Vec<u8>, s: &str) {
        out.extend((s.len() as u64).to_le_bytes());
        out.extend(s.as_bytes());
    }
    enum V {
        U32(u32),
        F32(f32),
        Str(&'static str),
        Strs(Vec<String>),
        I32s(Vec<i32>),
    }
    let tokens: Vec<String> = (0..512).map(|i| format!("<t{i}>")).collect();
    let kvs: Vec<(&str, V)> = vec![
        ("general.architecture", V::Str("llama")),
        ("general.alignment", V::U32(32)),
        ("llama.block_count", V::U32(2)),
        ("llama.context_length", V::U32(8192)),
        ("llama.embedding_length", V::U32(64)),
        ("llama.feed_forward_length", V::U32(128)),
        ("llama.attention.head_count", V::U32(4)),
        ("llama.attention.head_count_kv", V::U32(1)),
        ("llama.vocab_size", V::U32(512)),
        ("llama.rope.dimension_count", V::U32(16)),
        ("llama.rope.freq_base", V::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon", V::F32(1e-5)),
        ("tokenizer.ggml.model", V::Str("gpt2")),
        ("tokenizer.ggml.tokens", V::Strs(tokens)),
        ("tokenizer.ggml.token_type", V::I32s(vec![1; 512])),
        ("tokenizer.ggml.merges", V::Strs(Vec::new())),
        ("tokenizer.ggml.bos_token_id", V::U32(1)),
        ("tokenizer.ggml.eos_token_id", V::U32(2)),
    ];
    let weights = SafetensorsWeights::open_dir(&model_d_dir()).unwrap();
    let keys: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&read(&model_d_dir().join("tensor_keys.json"))).unwrap();
    let mut tensors = Vec::new();
    for hf in keys.keys() {
        let Some((name, _)) = focusllm_models::gguf::gguf_name(hf, 4, 1) else {
            continue;
        };
        let (shape, values) = weights.load_f32(hf).unwrap();
        let data: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensors.push((name, shape, data));
    }

    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((kvs.len() as u64).to_le_bytes());
    for (key, value) in &kvs {
        string(&mut out, key);
        match value {
            V::U32(v) => {
                out.extend(4u32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            V::F32(v) => {
                out.extend(6u32.to_le_bytes());
                out.extend(v.to_le_bytes());
            }
            V::Str(s) => {
                out.extend(8u32.to_le_bytes());
                string(&mut out, s);
            }
            V::Strs(items) => {
                out.extend(9u32.to_le_bytes());
                out.extend(8u32.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for s in items {
                    string(&mut out, s);
                }
            }
            V::I32s(items) => {
                out.extend(9u32.to_le_bytes());
                out.extend(5u32.to_le_bytes());
                out.extend((items.len() as u64).to_le_bytes());
                for v in items {
                    out.extend(v.to_le_bytes());
                }
            }
        }
    }
    let align = |n: usize| n.div_ceil(32) * 32;
    let mut offset = 0usize;
    for (name, shape, data) in &tensors {
        string(&mut out, name);
        out.extend((shape.len() as u32).to_le_bytes());
        for &d in shape.iter().rev() {
            out.extend((d as u64).to_le_bytes());
        }
        out.extend(0u32.to_le_bytes()); // F32
        out.extend((offset as u64).to_le_bytes());
        offset = align(offset + data.len());
    }
    out.resize(align(out.len()), 0);
    for (_, _, data) in &tensors {
        out.extend(data);
        out.resize(align(out.len()), 0);
    }
    out
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "focusllm-hub-{tag}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A cheap content hash for blob names (the Hub uses the file's ETag).
fn etag(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}{:08x}", bytes.len())
}

/// Writes `files` into `cache` the way `huggingface_hub` does: the bytes in `blobs/<etag>`, the
/// snapshot's entries as relative symlinks to them (copies where symlinks are not available), and
/// `refs/<revision>` holding the commit (`revision: None`: no ref, as for a commit hash).
fn write_cache(
    cache: &Path,
    repo: &str,
    revision: Option<&str>,
    commit: &str,
    files: &[(String, Vec<u8>)],
) -> PathBuf {
    let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    let snapshot = repo_dir.join("snapshots").join(commit);
    std::fs::create_dir_all(repo_dir.join("blobs")).unwrap();
    for (name, bytes) in files {
        let blob = repo_dir.join("blobs").join(etag(bytes));
        std::fs::write(&blob, bytes).unwrap();
        let link = snapshot.join(name);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        let _ = std::fs::remove_file(&link);
        #[cfg(unix)]
        {
            let depth = name.matches('/').count() + 2;
            let target = format!("{}blobs/{}", "../".repeat(depth), etag(bytes));
            std::os::unix::fs::symlink(target, &link).unwrap();
        }
        #[cfg(not(unix))]
        std::fs::copy(&blob, &link).unwrap();
    }
    if let Some(revision) = revision {
        let ref_path = repo_dir.join("refs").join(revision);
        std::fs::create_dir_all(ref_path.parent().unwrap()).unwrap();
        // A trailing newline, as a hand-written ref would have: it must be trimmed.
        std::fs::write(ref_path, format!("{commit}\n")).unwrap();
    }
    snapshot
}

/// Model D with the tokenizer files, as a plain directory under `tmp`: what ids are compared to.
fn plain_model(tmp: &TempDir) -> PathBuf {
    let dir = tmp.path().join("plain");
    write_dir(&dir, &single_file_repo());
    dir
}

/// Writes `files` as a plain directory.
fn write_dir(dir: &Path, files: &[(String, Vec<u8>)]) {
    for (name, bytes) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, bytes).unwrap();
    }
}

/// Options reading only `cache`, with a Hub address nothing listens on (so even a bug in the
/// offline logic could not leave this machine).
fn offline(cache: &Path) -> HubOptions {
    HubOptions {
        endpoint: Some("http://127.0.0.1:9".into()),
        ..HubOptions::offline_in(cache)
    }
}

/// Next-token logits (shape and values) at every position of a short prompt.
fn logits(model: &LlamaModel<B>) -> (Vec<usize>, Vec<f32>) {
    let ids = vec![1u32, 5, 7, 300, 42, 511];
    let positions = vec![(0..ids.len()).collect::<Vec<_>>()];
    let out = model.forward(ForwardInput {
        ids: model.ids_tensor(std::slice::from_ref(&ids)),
        positions: &positions,
        past: Past::None,
        left_pad: None,
        candidates: Candidates::None,
        logits_last: ids.len(),
        focus_keys: 0,
    });
    let logits = out.logits.expect("logits were asked for");
    (
        logits.dims().to_vec(),
        logits.into_data().to_vec::<f32>().unwrap(),
    )
}

/// Loads `by_id` (a path `fetch` returned) and `by_path`, and checks they are the same model.
fn assert_same_model(by_id: &Path, by_path: &Path) {
    let device = Default::default();
    let a = load_model::<B>(by_id, &device).unwrap_or_else(|e| panic!("load by id: {e}"));
    let b = load_model::<B>(by_path, &device).unwrap_or_else(|e| panic!("load by path: {e}"));
    let (shape_a, values_a) = logits(&a.model);
    let (shape_b, values_b) = logits(&b.model);
    assert_eq!(shape_a, [1, 6, 512]);
    assert_eq!(shape_a, shape_b);
    assert_eq!(values_a, values_b, "same weights, same logits");
    assert_eq!(
        a.tokenizer.as_ref().map(|t| t.vocab_size()),
        b.tokenizer.as_ref().map(|t| t.vocab_size())
    );
}

/// The parts of a [`ModelError::Hub`].
fn hub_error(
    result: Result<PathBuf, ModelError>,
) -> (String, String, String, HubErrorKind, String) {
    match result {
        Err(ModelError::Hub {
            repo,
            revision,
            file,
            kind,
            message,
        }) => (repo, revision, file, kind, message),
        Err(other) => panic!("expected a Hub error, got {other:?}"),
        Ok(path) => panic!("expected a Hub error, got {}", path.display()),
    }
}

fn id(s: &str) -> ModelId {
    ModelId::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Cached models, offline
// ---------------------------------------------------------------------------------------------

#[test]
fn safetensors_repo_by_id_loads_like_the_directory_by_path() {
    let tmp = TempDir::new("single");
    let cache = tmp.path().join("hub");
    let files = single_file_repo();
    let snapshot = write_cache(&cache, REPO, Some("main"), COMMIT, &files);
    let plain = plain_model(&tmp);

    let path = fetch(&id(REPO), &offline(&cache)).expect("cached model");
    assert_eq!(path, snapshot);
    assert_same_model(&path, &plain);

    // The tokenizer's sibling `tokenizer_config.json` is found through the snapshot's symlinks.
    let device = Default::default();
    let loaded = load_model::<B>(&path, &device).unwrap();
    let tokenizer = loaded.tokenizer.expect("tokenizer.json");
    assert!(tokenizer.chat_template().is_some());
    assert_eq!((tokenizer.bos_id(), tokenizer.eos_id()), (Some(1), Some(2)));

    // Optional files may be absent from the cache.
    let lean: Vec<_> = files
        .iter()
        .filter(|(name, _)| !name.ends_with("_config.json"))
        .cloned()
        .collect();
    let lean_cache = tmp.path().join("lean");
    let lean_snapshot = write_cache(&lean_cache, REPO, Some("main"), COMMIT, &lean);
    assert_eq!(
        fetch(&id(REPO), &offline(&lean_cache)).unwrap(),
        lean_snapshot
    );
}

#[test]
fn sharded_repo_by_id_resolves_the_index_and_every_shard() {
    let tmp = TempDir::new("sharded");
    let cache = tmp.path().join("hub");
    let files = sharded_repo();
    let snapshot = write_cache(&cache, REPO, Some("main"), COMMIT, &files);
    let path = fetch(&id(REPO), &offline(&cache)).expect("cached sharded model");
    assert_eq!(path, snapshot);
    assert_same_model(&path, &plain_model(&tmp));

    std::fs::remove_file(snapshot.join("model-00002-of-00002.safetensors")).unwrap();
    let (repo, _, file, kind, _) = hub_error(fetch(&id(REPO), &offline(&cache)));
    assert_eq!(
        (repo.as_str(), file.as_str(), kind),
        (
            REPO,
            "model-00002-of-00002.safetensors",
            HubErrorKind::Offline
        )
    );
}

#[test]
fn gguf_file_by_id_with_revisions() {
    let tmp = TempDir::new("gguf");
    let cache = tmp.path().join("hub");
    let gguf = model_d_gguf();
    let files = vec![
        ("README.md".to_string(), b"# tiny".to_vec()),
        ("q/tiny-F32.gguf".to_string(), gguf.clone()),
    ];
    let tagged = "fedcba9876543210fedcba9876543210fedcba98";
    let snapshot = write_cache(&cache, REPO, Some("main"), COMMIT, &files);
    let tagged_snapshot = write_cache(&cache, REPO, Some("v1.0"), tagged, &files);
    let plain = tmp.path().join("tiny.gguf");
    std::fs::write(&plain, &gguf).unwrap();

    let path = fetch(&id(&format!("{REPO}:q/tiny-F32.gguf")), &offline(&cache)).unwrap();
    assert_eq!(path, snapshot.join("q/tiny-F32.gguf"));
    assert_same_model(&path, &plain);

    // A tag through its ref, a commit hash through its snapshot folder (no ref).
    let by_tag = fetch(
        &id(&format!("{REPO}@v1.0:q/tiny-F32.gguf")),
        &offline(&cache),
    )
    .unwrap();
    assert_eq!(by_tag, tagged_snapshot.join("q/tiny-F32.gguf"));
    let by_commit = fetch(
        &id(&format!("{REPO}@{tagged}:q/tiny-F32.gguf")),
        &offline(&cache),
    )
    .unwrap();
    assert_eq!(by_commit, by_tag);

    // The file of an id without a file is a safetensors repo: config.json is what is missing.
    let (_, revision, file, kind, _) = hub_error(fetch(&id(REPO), &offline(&cache)));
    assert_eq!(
        (revision.as_str(), file.as_str(), kind),
        ("main", "config.json", HubErrorKind::Offline)
    );
}

#[test]
fn offline_missing_files_are_typed_errors_naming_repo_and_file() {
    let tmp = TempDir::new("missing");
    let cache = tmp.path().join("hub");

    // Nothing cached at all.
    let (repo, revision, file, kind, message) = hub_error(fetch(&id(REPO), &offline(&cache)));
    assert_eq!(
        (repo.as_str(), revision.as_str(), file.as_str(), kind),
        (REPO, "main", "config.json", HubErrorKind::Offline)
    );
    assert!(message.contains("HF_HUB_OFFLINE"), "{message}");
    assert!(message.contains("refs/main"), "{message}");

    // A partial snapshot: the first missing required file is named.
    let files = single_file_repo();
    let only_config: Vec<_> = files[..1].to_vec();
    write_cache(&cache, REPO, Some("main"), COMMIT, &only_config);
    let err = fetch(&id(REPO), &offline(&cache)).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(REPO) && text.contains("tokenizer.json"),
        "{text}"
    );
    let (_, _, file, kind, _) = hub_error(Err(err));
    assert_eq!(
        (file.as_str(), kind),
        ("tokenizer.json", HubErrorKind::Offline)
    );

    // Config and tokenizer, but no weights of either layout.
    write_cache(&cache, REPO, Some("main"), COMMIT, &files[..2]);
    let (_, _, file, kind, message) = hub_error(fetch(&id(REPO), &offline(&cache)));
    assert_eq!(
        (file.as_str(), kind),
        ("model.safetensors", HubErrorKind::Offline)
    );
    assert!(
        message.contains("model.safetensors.index.json"),
        "{message}"
    );

    // A GGUF file the snapshot lacks; an unknown revision.
    let gguf = id(&format!("{REPO}:absent.gguf"));
    let (_, _, file, kind, _) = hub_error(fetch(&gguf, &offline(&cache)));
    assert_eq!(
        (file.as_str(), kind),
        ("absent.gguf", HubErrorKind::Offline)
    );
    let (_, revision, file, kind, _) =
        hub_error(fetch(&id(&format!("{REPO}@dev")), &offline(&cache)));
    assert_eq!(
        (revision.as_str(), file.as_str(), kind),
        ("dev", "config.json", HubErrorKind::Offline)
    );

    // No cache directory known at all.
    let none = HubOptions {
        cache_dir: None,
        ..offline(&cache)
    };
    let (_, _, _, kind, _) = hub_error(fetch(&id(REPO), &none));
    assert_eq!(kind, HubErrorKind::Cache);
}

// ---------------------------------------------------------------------------------------------
// Ids and sources
// ---------------------------------------------------------------------------------------------

#[test]
fn malformed_ids_are_typed_errors() {
    let cases = [
        "",
        "   ",
        "org/",
        "/name",
        "name",
        "a/b/c",
        "org/name:",
        "org/name@",
        "org/name@:model.gguf",
        "org/name:model.bin",
        "org/name:../model.gguf",
        "org/name:/abs/model.gguf",
        "org/name:dir//model.gguf",
        "org/name@../../etc:model.gguf",
        "org/name@a b",
        "org/name:model.gguf@main",
        "org/na me",
        "org/na--me",
        "-org/name",
        "org/name.",
        "org/näme",
    ];
    for case in cases {
        match ModelId::parse(case) {
            Err(ModelError::InvalidModelId { id, reason }) => {
                assert_eq!(id, case);
                assert!(!reason.is_empty());
                let shown = ModelError::InvalidModelId {
                    id: id.clone(),
                    reason,
                }
                .to_string();
                assert!(shown.contains(&format!("`{case}`")), "{shown}");
            }
            other => panic!("{case:?}: expected InvalidModelId, got {other:?}"),
        }
    }
    let hint = ModelId::parse("org/name:model.gguf@main")
        .unwrap_err()
        .to_string();
    assert!(hint.contains("org/name@revision:file.gguf"), "{hint}");
    let long = format!("org/{}", "n".repeat(100));
    assert!(ModelId::parse(&long).is_err());
}

#[test]
fn well_formed_ids_parse_and_print_back() {
    let cases: [(&str, &str, &str, Option<&str>); 6] = [
        (
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "HuggingFaceTB/SmolLM2-135M-Instruct",
            "main",
            None,
        ),
        ("org/name@v1.0", "org/name", "v1.0", None),
        (
            "org/name:model.Q4_K_M.gguf",
            "org/name",
            "main",
            Some("model.Q4_K_M.gguf"),
        ),
        (
            "org/name@refs/pr/3:sub/dir/model.GGUF",
            "org/name",
            "refs/pr/3",
            Some("sub/dir/model.GGUF"),
        ),
        (
            "org/name:weird@name.gguf",
            "org/name",
            "main",
            Some("weird@name.gguf"),
        ),
        ("_o.r-g/n_a.m-e", "_o.r-g/n_a.m-e", "main", None),
    ];
    for (text, repo, revision, file) in cases {
        let parsed: ModelId = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(
            (parsed.repo(), parsed.revision(), parsed.file()),
            (repo, revision, file)
        );
        assert_eq!(parsed.to_string(), text);
    }
    let pinned = id("org/name:m.gguf").with_revision(COMMIT).unwrap();
    assert_eq!(pinned.to_string(), format!("org/name@{COMMIT}:m.gguf"));
    assert!(id("org/name").with_revision("..").is_err());
}

#[test]
fn existing_local_paths_win_over_hub_ids() {
    // Integration tests run in the package directory: `tests/hub_cache.rs` has the shape of an id.
    assert!(looks_like_hub_id("tests/hub_cache.rs"));
    assert_eq!(
        ModelSource::parse("tests/hub_cache.rs").unwrap(),
        ModelSource::Local("tests/hub_cache.rs".into())
    );
    assert_eq!(
        ModelSource::parse("HuggingFaceTB/SmolLM2-135M-Instruct").unwrap(),
        ModelSource::Hub(id("HuggingFaceTB/SmolLM2-135M-Instruct"))
    );
    assert_eq!(
        ModelSource::parse("org/name@main:x.gguf").unwrap(),
        ModelSource::Hub(id("org/name@main:x.gguf"))
    );
    for path in [
        "/no/such/model",
        "./no-such/dir",
        "../x/y",
        "~/models/m",
        "models/missing.gguf",
        "models/missing.safetensors",
        "a/b/c",
        "model.gguf",
        "C:/models/x",
        "C:\\models\\x",
        "https://huggingface.co/org/name",
    ] {
        assert!(!looks_like_hub_id(path), "{path}");
        assert_eq!(
            ModelSource::parse(path).unwrap(),
            ModelSource::Local(path.into()),
            "{path}"
        );
    }
    for bad in ["org/", "org/name:", "org/na me"] {
        let err = ModelSource::parse(bad).unwrap_err();
        assert!(
            matches!(err, ModelError::InvalidModelId { .. }),
            "{bad}: {err:?}"
        );
        assert!(err.to_string().contains("no file or directory"), "{err}");
    }
    assert!(ModelSource::parse("").is_err());

    // `resolve`: a local path is returned as is, an id goes through the cache.
    let tmp = TempDir::new("source");
    let cache = tmp.path().join("hub");
    let snapshot = write_cache(&cache, REPO, Some("main"), COMMIT, &single_file_repo());
    assert_eq!(
        ModelSource::parse(REPO)
            .unwrap()
            .resolve(&offline(&cache))
            .unwrap(),
        snapshot
    );
    let local = ModelSource::Local("/x/y".into());
    assert_eq!(
        local.resolve(&offline(&cache)).unwrap(),
        PathBuf::from("/x/y")
    );
    assert_eq!(local.to_string(), "/x/y");
}

/// `HubOptions::from_env` is `from_vars` over `std::env::var`; the variables are given here as a
/// map instead of changing the process environment, which other tests of this binary read
/// concurrently (hf-hub's HTTP client reads the proxy variables; `set_var` is `unsafe` for that).
#[test]
fn options_from_variables() {
    let tmp = TempDir::new("vars");
    let vars = |pairs: &[(&str, String)]| {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        HubOptions::from_vars(move |key| map.get(key).cloned())
    };
    let home = tmp.path().join("home");
    let hf_home = tmp.path().join("hf-home");
    let s = |p: &Path| p.display().to_string();

    let default = vars(&[("HOME", s(&home))]);
    assert_eq!(default.cache_dir, Some(home.join(".cache/huggingface/hub")));
    assert!(!default.offline && default.progress);
    assert_eq!(
        (default.token.as_deref(), default.endpoint.as_deref()),
        (None, None)
    );

    let xdg = vars(&[
        ("HOME", s(&home)),
        ("XDG_CACHE_HOME", s(&tmp.path().join("xdg"))),
    ]);
    assert_eq!(xdg.cache_dir, Some(tmp.path().join("xdg/huggingface/hub")));

    // HF_HOME, and the token file in it.
    std::fs::create_dir_all(&hf_home).unwrap();
    std::fs::write(hf_home.join("token"), "hf_from_file\n").unwrap();
    let with_home = vars(&[("HOME", s(&home)), ("HF_HOME", s(&hf_home))]);
    assert_eq!(with_home.cache_dir, Some(hf_home.join("hub")));
    assert_eq!(with_home.token.as_deref(), Some("hf_from_file"));
    assert!(
        !format!("{with_home:?}").contains("hf_from_file"),
        "the token is redacted"
    );
    let tilde = vars(&[("HOME", s(&home)), ("HF_HOME", "~/hf".into())]);
    assert_eq!(tilde.cache_dir, Some(home.join("hf/hub")));

    // HF_HUB_CACHE over HF_HOME; HF_TOKEN over the file; HF_ENDPOINT; empty means unset.
    let all = vars(&[
        ("HOME", s(&home)),
        ("HF_HOME", s(&hf_home)),
        ("HF_HUB_CACHE", s(&tmp.path().join("elsewhere"))),
        ("HF_TOKEN", "hf_env".into()),
        ("HF_ENDPOINT", "https://mirror.example".into()),
        ("XDG_CACHE_HOME", String::new()),
    ]);
    assert_eq!(all.cache_dir, Some(tmp.path().join("elsewhere")));
    assert_eq!(all.token.as_deref(), Some("hf_env"));
    assert_eq!(all.endpoint.as_deref(), Some("https://mirror.example"));
    let legacy = vars(&[("HUGGINGFACE_HUB_CACHE", s(&tmp.path().join("old")))]);
    assert_eq!(legacy.cache_dir, Some(tmp.path().join("old")));
    assert_eq!(vars(&[]).cache_dir, None, "no home, no cache");

    for (value, offline) in [
        ("1", true),
        ("TRUE", true),
        ("yes", true),
        ("On", true),
        ("0", false),
        ("false", false),
        ("", false),
    ] {
        let options = vars(&[("HOME", s(&home)), ("HF_HUB_OFFLINE", value.into())]);
        assert_eq!(options.offline, offline, "HF_HUB_OFFLINE={value:?}");
    }

    // A model cached under $HF_HOME/hub is found through options built from HF_HOME.
    let snapshot = write_cache(
        &hf_home.join("hub"),
        REPO,
        Some("main"),
        COMMIT,
        &single_file_repo(),
    );
    let options = HubOptions {
        endpoint: Some("http://127.0.0.1:9".into()),
        ..vars(&[("HF_HOME", s(&hf_home)), ("HF_HUB_OFFLINE", "1".into())])
    };
    assert!(options.offline);
    assert_eq!(fetch(&id(REPO), &options).unwrap(), snapshot);
}

// ---------------------------------------------------------------------------------------------
// Downloads, from a fake Hub on 127.0.0.1
// ---------------------------------------------------------------------------------------------

/// Whether `ureq` would send requests through a proxy (it has no `NO_PROXY`).
fn proxy_configured() -> bool {
    let set = [
        "ALL_PROXY",
        "all_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
    ]
    .iter()
    .any(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()));
    if set {
        println!("SKIP: a proxy variable is set; the fake Hub on 127.0.0.1 would not be reached");
    }
    set
}

/// A minimal Hub: `GET /<org>/<name>/resolve/<revision>/<file>` with the headers hf-hub reads
/// (`etag`, `x-repo-commit`, `Content-Range`) and `Range` support. Any revision serves the files;
/// `statuses` overrides the answer for `<org>/<name>/<file>` (or `<org>/<name>/*`).
struct FakeHub {
    endpoint: String,
    /// Every request's path, in order.
    requests: Arc<Mutex<Vec<String>>>,
}

impl FakeHub {
    fn start(files: HashMap<String, Vec<u8>>, statuses: HashMap<String, u16>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&requests);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let _ = serve(stream, &files, &statuses, &log);
            }
        });
        Self { endpoint, requests }
    }

    fn count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    fn options(&self, cache: &Path) -> HubOptions {
        HubOptions {
            cache_dir: Some(cache.to_path_buf()),
            offline: false,
            progress: false,
            token: None,
            endpoint: Some(self.endpoint.clone()),
        }
    }
}

fn serve(
    stream: TcpStream,
    files: &HashMap<String, Vec<u8>>,
    statuses: &HashMap<String, u16>,
    log: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
    let mut start = 0usize;
    let mut end: Option<usize> = None;
    loop {
        let mut header = String::new();
        if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
            break;
        }
        let lower = header.to_ascii_lowercase();
        if let Some(range) = lower.strip_prefix("range: bytes=") {
            let (a, b) = range.trim().split_once('-').unwrap_or(("0", ""));
            start = a.parse().unwrap_or(0);
            end = b.parse().ok();
        }
    }
    log.lock().unwrap().push(path.clone());
    // /<org>/<name>/resolve/<revision>/<file...>; revisions here never contain `/`.
    let parts: Vec<&str> = path.trim_start_matches('/').splitn(5, '/').collect();
    let (key, repo) = match parts.as_slice() {
        [org, name, "resolve", _revision, file] => {
            (format!("{org}/{name}/{file}"), format!("{org}/{name}/*"))
        }
        _ => (String::new(), String::new()),
    };
    let mut out = stream;
    let status = statuses.get(&key).or_else(|| statuses.get(&repo)).copied();
    let body = match (status, files.get(&key)) {
        (None, Some(body)) => body,
        (status, _) => {
            let status = status.unwrap_or(404);
            return write!(
                out,
                "HTTP/1.1 {status} Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    };
    let last = end
        .unwrap_or(body.len().saturating_sub(1))
        .min(body.len() - 1);
    let slice = &body[start.min(body.len())..=last];
    write!(
        out,
        "HTTP/1.1 206 Partial Content\r\netag: \"{}\"\r\nx-repo-commit: {COMMIT}\r\n\
         Content-Range: bytes {start}-{last}/{}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        etag(body),
        body.len(),
        slice.len()
    )?;
    out.write_all(slice)?;
    out.flush()
}

fn served(repo: &str, files: &[(String, Vec<u8>)]) -> impl Iterator<Item = (String, Vec<u8>)> {
    files
        .iter()
        .map(move |(name, bytes)| (format!("{repo}/{name}"), bytes.clone()))
}

#[test]
fn downloads_into_an_empty_cache_then_serves_from_it() {
    if proxy_configured() {
        return;
    }
    let full = "org/full";
    let sharded = "org/sharded";
    let mut files: HashMap<String, Vec<u8>> = served(full, &single_file_repo()).collect();
    files.extend(served(sharded, &sharded_repo()));
    files.insert(format!("{full}/q/tiny.gguf"), model_d_gguf());
    let statuses = HashMap::from([(format!("{sharded}/tokenizer_config.json"), 500)]);
    let hub = FakeHub::start(files, statuses);
    let tmp = TempDir::new("download");
    let cache = tmp.path().join("hub");
    let options = hub.options(&cache);

    // Every file of a single-file repository: the first one at `main`, the others at the commit
    // it resolved to.
    let path = fetch(&id(full), &options).expect("download");
    let repo_dir = cache.join("models--org--full");
    assert_eq!(path, repo_dir.join("snapshots").join(COMMIT));
    assert_eq!(
        std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(),
        COMMIT
    );
    assert!(
        !repo_dir.join("refs").join(COMMIT).exists(),
        "no ref named after a commit"
    );
    let requests = hub.requests.lock().unwrap().clone();
    assert_eq!(
        requests.len(),
        10,
        "metadata + body for 5 files: {requests:?}"
    );
    assert!(
        requests[0].contains("/resolve/main/config.json"),
        "{requests:?}"
    );
    assert!(
        requests[2..]
            .iter()
            .all(|r| r.contains(&format!("/resolve/{COMMIT}/"))),
        "{requests:?}"
    );
    assert_same_model(&path, &plain_model(&tmp));

    // Cache-first: no request at all the second time, online or offline.
    let before = hub.count();
    assert_eq!(fetch(&id(full), &options).unwrap(), path);
    assert_eq!(fetch(&id(full), &offline(&cache)).unwrap(), path);
    assert_eq!(hub.count(), before, "a cached model makes no request");

    // A GGUF file of the same repository, at the cached commit.
    let gguf = fetch(&id(&format!("{full}:q/tiny.gguf")), &options).unwrap();
    assert_eq!(gguf, path.join("q/tiny.gguf"));
    assert_eq!(read(&gguf), model_d_gguf());

    // Pinned to a commit, into an empty cache: found by its snapshot folder, no ref written.
    let pinned_cache = tmp.path().join("pinned");
    let pinned = id(&format!("{full}@{COMMIT}:q/tiny.gguf"));
    let gguf = fetch(&pinned, &hub.options(&pinned_cache)).unwrap();
    let pinned_repo = pinned_cache.join("models--org--full");
    assert_eq!(
        gguf,
        pinned_repo
            .join("snapshots")
            .join(COMMIT)
            .join("q/tiny.gguf")
    );
    assert!(!pinned_repo.join("refs").join(COMMIT).exists());
    assert!(!pinned_repo.join("refs/main").exists());
    let before = hub.count();
    assert_eq!(fetch(&pinned, &offline(&pinned_cache)).unwrap(), gguf);
    assert_eq!(hub.count(), before);

    // A sharded repository: model.safetensors is a 404 (recorded in `.no_exist`, like
    // huggingface_hub does), then the index and both shards; the optional tokenizer_config.json
    // fails (500) and is skipped, generation_config.json is a 404.
    let path = fetch(&id(sharded), &options).expect("sharded download");
    let repo_dir = cache.join("models--org--sharded");
    assert_eq!(path, repo_dir.join("snapshots").join(COMMIT));
    let no_exist = repo_dir.join(".no_exist").join(COMMIT);
    assert!(no_exist.join("model.safetensors").exists());
    assert!(no_exist.join("generation_config.json").exists());
    assert!(
        !no_exist.join("tokenizer_config.json").exists(),
        "a 500 is not a 404"
    );
    assert!(!path.join("tokenizer_config.json").exists());
    assert_same_model(&path, &plain_model(&tmp));
    // Offline, the skipped optional file does not matter.
    assert_eq!(fetch(&id(sharded), &offline(&cache)).unwrap(), path);
}

#[test]
fn hub_failures_are_classified_and_name_the_file() {
    if proxy_configured() {
        return;
    }
    let d = single_file_repo();
    let mut files: HashMap<String, Vec<u8>> = HashMap::new();
    // Config and weights, but no tokenizer.json.
    files.insert("org/no-tokenizer/config.json".into(), d[0].1.clone());
    files.insert("org/no-tokenizer/model.safetensors".into(), d[4].1.clone());
    // Config and tokenizer, but neither weight layout.
    files.insert("org/no-weights/config.json".into(), d[0].1.clone());
    files.insert("org/no-weights/tokenizer.json".into(), d[1].1.clone());
    let statuses = HashMap::from([
        ("org/gated/*".to_string(), 401),
        ("org/private/*".into(), 403),
    ]);
    let hub = FakeHub::start(files, statuses);
    let tmp = TempDir::new("classify");
    let cache = tmp.path().join("hub");
    let options = hub.options(&cache);

    for (model, file, kind) in [
        ("org/gated", "config.json", HubErrorKind::Unauthorized),
        ("org/private:m.gguf", "m.gguf", HubErrorKind::Unauthorized),
        ("org/missing", "config.json", HubErrorKind::NotFound),
        ("org/no-tokenizer", "tokenizer.json", HubErrorKind::NotFound),
        (
            "org/no-weights",
            "model.safetensors",
            HubErrorKind::NotFound,
        ),
        (
            "org/no-tokenizer:absent.gguf",
            "absent.gguf",
            HubErrorKind::NotFound,
        ),
    ] {
        let model = id(model);
        let (repo, _, got_file, got_kind, message) = hub_error(fetch(&model, &options));
        assert_eq!(
            (repo.as_str(), got_file.as_str(), got_kind),
            (model.repo(), file, kind),
            "{model}: {message}"
        );
        if kind == HubErrorKind::Unauthorized {
            assert!(message.contains("HF_TOKEN"), "{message}");
        }
    }

    // Nothing listening: a download error, naming the first file.
    let closed = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let unreachable = HubOptions {
        endpoint: Some(closed),
        ..hub.options(&tmp.path().join("other"))
    };
    let (_, _, file, kind, _) = hub_error(fetch(&id("org/anything"), &unreachable));
    assert_eq!(
        (file.as_str(), kind),
        ("config.json", HubErrorKind::Download)
    );
}
