//! Where weights come from: HF safetensors (single file or sharded) and GGUF, behind one trait that
//! speaks HF tensor names and hands out f32 data in row-major (PyTorch) layout.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::error::ModelError;
use crate::gguf::{GgufFile, unpermute_qk_rows};

/// A checkpoint's tensors, by HF name (`model.layers.0.self_attn.q_proj.weight`, ...).
pub trait WeightSource {
    /// The file or directory the weights come from (for error messages).
    fn location(&self) -> &Path;
    /// The shape of tensor `name` (row-major), if present.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// Tensor `name` as f32, with its row-major shape.
    fn load_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), ModelError>;
    /// Every tensor name (HF naming).
    fn names(&self) -> Vec<String>;
}

struct SafetensorsEntry {
    file: usize,
    dtype: Dtype,
    shape: Vec<usize>,
    /// Byte range inside the file's mapping (header included in the offset).
    range: std::ops::Range<usize>,
}

/// Memory-mapped safetensors: `model.safetensors`, a sharded `model.safetensors.index.json`, or any
/// list of files.
pub struct SafetensorsWeights {
    location: PathBuf,
    files: Vec<(PathBuf, Mmap)>,
    entries: BTreeMap<String, SafetensorsEntry>,
}

impl SafetensorsWeights {
    /// Opens the weights of an HF model directory (`model.safetensors` or the sharded index).
    pub fn open_dir(dir: &Path) -> Result<Self, ModelError> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        if single.exists() {
            return Self::open_files(dir, &[single]);
        }
        if !index.exists() {
            let missing = std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "neither model.safetensors nor model.safetensors.index.json exists",
            );
            return Err(ModelError::io(&single, missing));
        }
        let text = std::fs::read_to_string(&index).map_err(|e| ModelError::io(&index, e))?;
        #[derive(serde::Deserialize)]
        struct Index {
            weight_map: HashMap<String, String>,
        }
        let parsed: Index = serde_json::from_str(&text).map_err(|e| ModelError::Safetensors {
            path: index.clone(),
            reason: e.to_string(),
        })?;
        let mut shards: Vec<String> = parsed.weight_map.into_values().collect();
        shards.sort();
        shards.dedup();
        let files: Vec<PathBuf> = shards.iter().map(|s| dir.join(s)).collect();
        Self::open_files(dir, &files)
    }

    /// Opens explicit safetensors files (later files win on duplicate names).
    pub fn open_files(location: &Path, paths: &[PathBuf]) -> Result<Self, ModelError> {
        let mut files = Vec::new();
        let mut entries = BTreeMap::new();
        for (index, path) in paths.iter().enumerate() {
            let file = File::open(path).map_err(|e| ModelError::io(path, e))?;
            // SAFETY: the mapping is read-only; a file changed under us could give wrong numbers,
            // which is the same contract every mmap-based loader has.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(path, e))?;
            let parsed = SafeTensors::deserialize(&mmap).map_err(|e| ModelError::Safetensors {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            let base = mmap.as_ptr() as usize;
            for (name, view) in parsed.iter() {
                let start = view.data().as_ptr() as usize - base;
                entries.insert(
                    name.to_string(),
                    SafetensorsEntry {
                        file: index,
                        dtype: view.dtype(),
                        shape: view.shape().to_vec(),
                        range: start..start + view.data().len(),
                    },
                );
            }
            files.push((path.clone(), mmap));
        }
        Ok(Self {
            location: location.into(),
            files,
            entries,
        })
    }
}

impl WeightSource for SafetensorsWeights {
    fn location(&self) -> &Path {
        &self.location
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.entries.get(name).map(|e| e.shape.clone())
    }

    fn names(&self) -> Vec<String> {
        self.entries.keys().cloned().collect()
    }

    fn load_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), ModelError> {
        let entry = self
            .entries
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.location.clone(),
                tensor: name.into(),
            })?;
        let (path, mmap) = &self.files[entry.file];
        let bytes = &mmap[entry.range.clone()];
        let data: Vec<f32> = match entry.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
                .collect(),
            Dtype::F64 => bytes
                .chunks_exact(8)
                .map(|b| {
                    f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
                })
                .collect(),
            other => {
                return Err(ModelError::UnsupportedDtype {
                    path: path.clone(),
                    tensor: name.into(),
                    dtype: format!("{other:?}"),
                });
            }
        };
        Ok((entry.shape.clone(), data))
    }
}

/// A GGUF file's tensors under HF names; Q/K rows are un-permuted back to HF's `rotate_half` layout.
pub struct GgufWeights {
    gguf: GgufFile,
    heads: usize,
    kv_heads: usize,
}

impl GgufWeights {
    /// Wraps an open GGUF file of a model with `heads` query heads and `kv_heads` key/value heads.
    pub fn new(gguf: GgufFile, heads: usize, kv_heads: usize) -> Self {
        Self {
            gguf,
            heads,
            kv_heads,
        }
    }

    /// The GGUF file.
    pub fn gguf(&self) -> &GgufFile {
        &self.gguf
    }

    /// The GGUF tensor name of an HF tensor name, and the head count whose Q/K permutation must be
    /// undone (0: none).
    fn gguf_name(&self, hf: &str) -> Option<(String, usize)> {
        let fixed = match hf {
            "model.embed_tokens.weight" => Some("token_embd.weight"),
            "model.norm.weight" => Some("output_norm.weight"),
            "lm_head.weight" => Some("output.weight"),
            _ => None,
        };
        if let Some(name) = fixed {
            return Some((name.to_string(), 0));
        }
        let rest = hf.strip_prefix("model.layers.")?;
        let (layer, tail) = rest.split_once('.')?;
        let (gguf, heads) = match tail {
            "self_attn.q_proj.weight" => ("attn_q.weight", self.heads),
            "self_attn.k_proj.weight" => ("attn_k.weight", self.kv_heads),
            "self_attn.q_proj.bias" => ("attn_q.bias", self.heads),
            "self_attn.k_proj.bias" => ("attn_k.bias", self.kv_heads),
            "self_attn.v_proj.weight" => ("attn_v.weight", 0),
            "self_attn.v_proj.bias" => ("attn_v.bias", 0),
            "self_attn.o_proj.weight" => ("attn_output.weight", 0),
            "mlp.gate_proj.weight" => ("ffn_gate.weight", 0),
            "mlp.up_proj.weight" => ("ffn_up.weight", 0),
            "mlp.down_proj.weight" => ("ffn_down.weight", 0),
            "input_layernorm.weight" => ("attn_norm.weight", 0),
            "post_attention_layernorm.weight" => ("ffn_norm.weight", 0),
            _ => return None,
        };
        Some((format!("blk.{layer}.{gguf}"), heads))
    }
}

impl WeightSource for GgufWeights {
    fn location(&self) -> &Path {
        self.gguf.path()
    }

    fn shape(&self, name: &str) -> Option<Vec<usize>> {
        let (gguf, _) = self.gguf_name(name)?;
        self.gguf.tensor_info(&gguf).map(|t| t.shape())
    }

    fn names(&self) -> Vec<String> {
        self.gguf.tensors().iter().map(|t| t.name.clone()).collect()
    }

    fn load_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), ModelError> {
        let missing = || ModelError::MissingTensor {
            path: self.gguf.path().into(),
            tensor: name.into(),
        };
        let (gguf, heads) = self.gguf_name(name).ok_or_else(missing)?;
        let (shape, data) = self.gguf.tensor_f32(&gguf)?;
        if heads == 0 {
            return Ok((shape, data));
        }
        let rows = shape[0];
        let cols = shape.get(1).copied().unwrap_or(1);
        if rows % (2 * heads) != 0 {
            return Err(ModelError::ShapeMismatch {
                tensor: gguf,
                expected: vec![heads * (rows / heads.max(1)), cols],
                found: shape,
            });
        }
        Ok((shape, unpermute_qk_rows(&data, rows, cols, heads)))
    }
}
