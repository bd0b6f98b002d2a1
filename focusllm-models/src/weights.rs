//! Where weights come from, behind one trait that speaks HF tensor names and hands out f32 data in
//! row-major (PyTorch) layout: HF safetensors here (single file or sharded), GGUF in
//! [`crate::gguf::GgufWeights`]. [`Weights`] is what the modules' `load` functions read through,
//! and the one place where HF's `[out, in]` matrices become burn's `[in, out]`.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{Tensor, TensorData, backend::Backend};
use memmap2::Mmap;
use safetensors::{Dtype, SafeTensors};

use crate::error::ModelError;
use crate::llama::{Projection, QuantizedLinear, TokenTable};
use crate::quantized::QuantizedMatrix;

/// A checkpoint's tensors, by HF name (`model.layers.0.self_attn.q_proj.weight`, ...).
pub trait WeightSource {
    /// The file or directory the weights come from (for error messages).
    fn location(&self) -> &Path;
    /// The shape of tensor `name` (row-major), if present.
    fn shape(&self, name: &str) -> Option<Vec<usize>>;
    /// Tensor `name` as f32, with its row-major shape.
    fn load_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), ModelError>;
    /// Matrix `name` in the quantized blocks it is stored in, rows in HF order, or `None` when it
    /// is stored as plain floats (or the format has no quantized types: the default).
    fn load_quantized(&self, name: &str) -> Result<Option<QuantizedMatrix>, ModelError> {
        let _ = name;
        Ok(None)
    }
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

/// The tensors of a [`WeightSource`] under a name prefix, on a device: what a module's `load`
/// reads (`w.pp("self_attn").linear("q_proj", ..)` reads `...self_attn.q_proj.weight`). Shapes are
/// checked against what the module expects.
pub struct Weights<'a, B: Backend> {
    source: &'a dyn WeightSource,
    device: &'a B::Device,
    prefix: String,
    keep_quantized: bool,
}

impl<'a, B: Backend> Weights<'a, B> {
    /// The tensors of `source`, unprefixed, loaded onto `device`.
    pub fn new(source: &'a dyn WeightSource, device: &'a B::Device) -> Self {
        Self {
            source,
            device,
            prefix: String::new(),
            keep_quantized: false,
        }
    }

    /// These weights with [`Weights::projection`] keeping quantized matrices as stored (`true`)
    /// or decoding them to dense `f32` (`false`, the default).
    pub fn keep_quantized(self, keep: bool) -> Self {
        Self {
            keep_quantized: keep,
            ..self
        }
    }

    /// The tensors under `name.` (nested prefixes join with dots).
    pub fn pp(&self, name: &str) -> Self {
        Self {
            source: self.source,
            device: self.device,
            prefix: self.name(name),
            keep_quantized: self.keep_quantized,
        }
    }

    fn name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Whether tensor `name` is present.
    pub fn has(&self, name: &str) -> bool {
        self.source.shape(&self.name(name)).is_some()
    }

    /// Tensor `name` as f32, checked to have shape `expected`.
    pub fn raw(&self, name: &str, expected: &[usize]) -> Result<Vec<f32>, ModelError> {
        let name = self.name(name);
        let (shape, data) = self.source.load_f32(&name)?;
        if shape != expected {
            return Err(ModelError::ShapeMismatch {
                tensor: name,
                expected: expected.to_vec(),
                found: shape,
            });
        }
        Ok(data)
    }

    /// Vector `name` of `len` values.
    pub fn vector(&self, name: &str, len: usize) -> Result<Tensor<B, 1>, ModelError> {
        let data = self.raw(name, &[len])?;
        Ok(Tensor::from_data(TensorData::new(data, [len]), self.device))
    }

    /// Matrix `name`, `[rows, cols]` as stored.
    pub fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Tensor<B, 2>, ModelError> {
        let data = self.raw(name, &[rows, cols])?;
        Ok(upload_rows(data, rows, cols, self.device))
    }

    /// Matrix `name`, stored `[rows, cols]`, as `[cols, rows]` (see [`transposed_host`]).
    pub fn transposed(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Tensor<B, 2>, ModelError> {
        let data = self.raw(name, &[rows, cols])?;
        Ok(upload_rows(
            transposed_host(&data, rows, cols),
            cols,
            rows,
            self.device,
        ))
    }

    /// Bias `name.bias` `[out_features]` when `present`.
    fn bias(
        &self,
        name: &str,
        out_features: usize,
        present: bool,
    ) -> Result<Option<Param<Tensor<B, 1>>>, ModelError> {
        present
            .then(|| {
                Ok(Param::from_tensor(
                    self.vector(&format!("{name}.bias"), out_features)?,
                ))
            })
            .transpose()
    }

    /// Linear layer `name` (`name.weight` `[out, in]` as in HF, and `name.bias` `[out]` when
    /// `bias`), as burn's `Linear` (weight `[in, out]`).
    pub fn linear(
        &self,
        name: &str,
        out_features: usize,
        in_features: usize,
        bias: bool,
    ) -> Result<Linear<B>, ModelError> {
        let weight = self.transposed(&format!("{name}.weight"), out_features, in_features)?;
        let bias = self.bias(name, out_features, bias)?;
        Ok(Linear {
            weight: Param::from_tensor(weight),
            bias,
        })
    }

    /// Matrix `full_name` (already prefixed) in its quantized blocks, checked to be `[rows,
    /// cols]`, when these weights keep quantized matrices and the file stores it quantized.
    fn kept_quantized(
        &self,
        full_name: &str,
        rows: usize,
        cols: usize,
    ) -> Result<Option<QuantizedMatrix>, ModelError> {
        if !self.keep_quantized {
            return Ok(None);
        }
        let Some(matrix) = self.source.load_quantized(full_name)? else {
            return Ok(None);
        };
        if [matrix.rows(), matrix.cols()] != [rows, cols] {
            return Err(ModelError::ShapeMismatch {
                tensor: full_name.into(),
                expected: vec![rows, cols],
                found: vec![matrix.rows(), matrix.cols()],
            });
        }
        Ok(Some(matrix))
    }

    /// Token table `name` `[vocab, hidden]`: its quantized blocks as stored when these weights
    /// keep them ([`Weights::keep_quantized`]) and the file has them, else dense.
    pub fn token_table(
        &self,
        name: &str,
        vocab: usize,
        hidden: usize,
    ) -> Result<TokenTable<B>, ModelError> {
        if let Some(table) = self.kept_quantized(&self.name(name), vocab, hidden)? {
            return Ok(TokenTable::quantized(table));
        }
        Ok(TokenTable::Dense(Param::from_tensor(
            self.matrix(name, vocab, hidden)?,
        )))
    }

    /// Linear layer `name` as a decoder projection: its quantized blocks as stored when these
    /// weights keep them ([`Weights::keep_quantized`]) and the file has them, else dense as
    /// [`Weights::linear`] loads it.
    pub fn projection(
        &self,
        name: &str,
        out_features: usize,
        in_features: usize,
        bias: bool,
    ) -> Result<Projection<B>, ModelError> {
        let weight_name = self.name(&format!("{name}.weight"));
        if let Some(weight) = self.kept_quantized(&weight_name, out_features, in_features)? {
            let bias = self.bias(name, out_features, bias)?;
            return Ok(Projection::Quantized(QuantizedLinear { weight, bias }));
        }
        Ok(Projection::Dense(self.linear(
            name,
            out_features,
            in_features,
            bias,
        )?))
    }
}

/// A row-major `[rows, cols]` matrix as row-major `[cols, rows]`, copied on the host: HF stores
/// linear weights `[out, in]`, burn's matmul wants `[in, out]`, and a contiguous copy keeps every
/// later matmul off strided views. The one transpose of the loaders (checkpoints and adapters).
pub fn transposed_host(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    assert_eq!(
        data.len(),
        rows * cols,
        "transposed_host: data is not [{rows}, {cols}]"
    );
    let mut out = vec![0f32; data.len()];
    for (r, row) in data.chunks_exact(cols.max(1)).enumerate() {
        for (c, x) in row.iter().enumerate() {
            out[c * rows + r] = *x;
        }
    }
    out
}

/// Largest block of a weight sent to a device in one piece. burn's remote backend carries a tensor
/// in one WebSocket message, and its server refuses messages over 64 MiB (frames over 16 MiB): an
/// embedding of 49K x 576 f32 is 113 MB. Larger matrices go in blocks of rows, joined on the device.
const UPLOAD_BLOCK_BYTES: usize = 8 << 20;

/// `data` (`[rows, cols]`, row-major) on `device`, in blocks of rows of at most
/// [`UPLOAD_BLOCK_BYTES`].
fn upload_rows<B: Backend>(
    data: Vec<f32>,
    rows: usize,
    cols: usize,
    device: &B::Device,
) -> Tensor<B, 2> {
    let bytes = data.len() * std::mem::size_of::<f32>();
    if bytes <= UPLOAD_BLOCK_BYTES || cols == 0 {
        return Tensor::from_data(TensorData::new(data, [rows, cols]), device);
    }
    let block_rows = (UPLOAD_BLOCK_BYTES / (cols * std::mem::size_of::<f32>())).max(1);
    let blocks = data
        .chunks(block_rows * cols)
        .map(|block| {
            Tensor::from_data(
                TensorData::new(block.to_vec(), [block.len() / cols, cols]),
                device,
            )
        })
        .collect();
    Tensor::cat(blocks, 0)
}
