//! Resuming a long frozen-mode prefill after it stopped (cancelled, killed, out of time).
//!
//! A [`PrefillCheckpoint`] is a directory. As a prefill decodes its chunk batches, it writes each
//! batch's candidates there: `batch-000000.json` (what the batch holds) and `batch-000000.f32`
//! (its keys and values), each written under a temporary name and renamed into place, so a file
//! that is there is whole. A later prefill of the same input, by the same model with the same
//! settings, reads them back instead of decoding those chunks again. A million-token prefill takes
//! hours on a laptop's CPU; with a checkpoint, stopping it loses one batch of work at most.
//!
//! Only frozen mode ([`crate::StepMode::FrozenCandidates`]) resumes: it keeps nothing of a chunk
//! but its candidates (a few kilobytes per chunk), where exact mode keeps every chunk's caches.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use burn::tensor::{DType, Tensor, TensorData, backend::Backend};
use serde::{Deserialize, Serialize};

use crate::candidates::{CandidateSet, LayerKv};
use crate::error::{FocusError, Result};
use crate::local::ChunkSequence;

/// Where a prefill keeps the candidates of its finished chunk batches (see the module docs and
/// [`crate::Session::set_checkpoint`]).
///
/// ```
/// use burn::backend::Flex;
/// use focusllm_core::PrefillCheckpoint;
///
/// let dir = std::env::temp_dir().join(format!("focusllm-doc-checkpoint-{}", std::process::id()));
/// // `identity` names what the candidates depend on besides the input: the model and adapter.
/// let checkpoint = PrefillCheckpoint::<Flex>::new(&dir, "SmolLM2-135M + no adapter", &Default::default())?;
/// assert_eq!(checkpoint.saved_batches(), 0);
/// # std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), focusllm_core::FocusError>(())
/// ```
#[derive(Debug, Clone)]
pub struct PrefillCheckpoint<B: Backend> {
    dir: PathBuf,
    identity: String,
    device: B::Device,
}

/// What a prefill restored from its checkpoint (see [`crate::Session::resumed`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Resumed {
    /// Chunk batches read back instead of decoded.
    pub batches: usize,
    /// Chunks in them.
    pub chunks: usize,
    /// The seconds the earlier runs spent decoding them.
    pub seconds: f64,
}

/// A batch file's description of its data.
#[derive(Debug, Serialize, Deserialize)]
struct BatchHeader {
    /// Which prefill wrote it ([`PrefillCheckpoint::key`]).
    key: String,
    /// The chunk each candidate belongs to.
    chunk_ids: Vec<usize>,
    layers: usize,
    kv_heads: usize,
    head_dim: usize,
    /// The candidates' dtype (stored as f32).
    dtype: String,
    /// Seconds spent decoding the batch.
    seconds: f64,
}

impl<B: Backend> PrefillCheckpoint<B> {
    /// A checkpoint in `dir` (created if missing) for candidates computed by `identity` (the model
    /// and adapter, as the caller names them: a prefill resumes only what the same identity,
    /// input and settings wrote), read back onto `device` (the main decoder's).
    pub fn new(
        dir: impl Into<PathBuf>,
        identity: impl Into<String>,
        device: &B::Device,
    ) -> Result<Self> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(FocusError::io_at(&dir))?;
        Ok(Self {
            dir,
            identity: identity.into(),
            device: device.clone(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How many batch files the directory holds (of whichever prefill wrote them).
    pub fn saved_batches(&self) -> usize {
        let mut n = 0;
        while self.header_path(n).exists() {
            n += 1;
        }
        n
    }

    fn header_path(&self, batch: usize) -> PathBuf {
        self.dir.join(format!("batch-{batch:06}.json"))
    }

    fn data_path(&self, batch: usize) -> PathBuf {
        self.dir.join(format!("batch-{batch:06}.f32"))
    }

    /// The fingerprint of a prefill: the identity and every batch's chunk ids and tokens, in
    /// order (the batches already reflect the chunk size, dynamic prompt and batch size).
    ///
    /// FNV-1a by hand: std's `DefaultHasher` may change between Rust releases, and a checkpoint
    /// must outlive the program that wrote it; no cryptographic strength is needed to tell one's
    /// own prefills apart.
    pub(crate) fn key(&self, batches: &[Vec<ChunkSequence>]) -> String {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                hash = (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
            }
        };
        eat(self.identity.as_bytes());
        for batch in batches {
            eat(&(batch.len() as u64).to_le_bytes());
            for seq in batch {
                eat(&(seq.chunk_id as u64).to_le_bytes());
                eat(&(seq.tokens.len() as u64).to_le_bytes());
                for t in &seq.tokens {
                    eat(&t.to_le_bytes());
                }
            }
        }
        format!("{hash:016x}")
    }

    /// The batches saved for prefill `key`, in order, with the seconds each took. Fails, naming
    /// the file, if a batch was written by another prefill or does not read back whole.
    pub(crate) fn load(&self, key: &str) -> Result<Vec<(CandidateSet<B>, f64)>> {
        let mut out = Vec::new();
        for batch in 0..self.saved_batches() {
            out.push(self.load_batch(key, batch)?);
        }
        Ok(out)
    }

    fn load_batch(&self, key: &str, batch: usize) -> Result<(CandidateSet<B>, f64)> {
        let (header_path, data_path) = (self.header_path(batch), self.data_path(batch));
        let bad =
            |path: &Path, why: String| FocusError::Checkpoint(format!("{}: {why}", path.display()));
        let io = FocusError::io_at;
        let text = fs::read_to_string(&header_path).map_err(io(&header_path))?;
        let header: BatchHeader =
            serde_json::from_str(&text).map_err(|e| bad(&header_path, e.to_string()))?;
        if header.key != key {
            return Err(bad(
                &header_path,
                format!(
                    "written by another prefill (key {}, this one {key}: another input, model or \
                     setting); remove the directory or choose another",
                    header.key
                ),
            ));
        }
        let dtype = match header.dtype.as_str() {
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            other => return Err(bad(&header_path, format!("unknown dtype `{other}`"))),
        };
        let n = header.chunk_ids.len();
        let per_tensor = n
            .checked_mul(header.kv_heads)
            .and_then(|x| x.checked_mul(header.head_dim))
            .ok_or_else(|| bad(&header_path, "shape overflows".into()))?;
        let expected = per_tensor
            .checked_mul(2 * header.layers)
            .and_then(|x| x.checked_mul(4))
            .ok_or_else(|| bad(&header_path, "shape overflows".into()))?;
        let bytes = fs::read(&data_path).map_err(io(&data_path))?;
        if bytes.len() != expected {
            return Err(bad(
                &data_path,
                format!(
                    "{} bytes, expected {expected} ({} layers of keys and values [1, {}, {n}, {}] \
                     in f32)",
                    bytes.len(),
                    header.layers,
                    header.kv_heads,
                    header.head_dim
                ),
            ));
        }
        let floats: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let shape = [1, header.kv_heads, n, header.head_dim];
        let tensor = |i: usize| {
            let data = floats[i * per_tensor..(i + 1) * per_tensor].to_vec();
            let t = Tensor::<B, 4>::from_data(TensorData::new(data, shape), &self.device);
            if dtype == DType::F32 {
                t
            } else {
                t.cast(dtype)
            }
        };
        let layers = (0..header.layers)
            .map(|l| LayerKv {
                k: tensor(2 * l),
                v: tensor(2 * l + 1),
            })
            .collect();
        let set = CandidateSet::new(header.chunk_ids, layers)
            .map_err(|e| bad(&header_path, e.to_string()))?;
        Ok((set, header.seconds))
    }

    /// Saves batch `batch` of prefill `key`: the data first, then the header that makes it count.
    pub(crate) fn save(
        &self,
        key: &str,
        batch: usize,
        set: &CandidateSet<B>,
        seconds: f64,
    ) -> Result<()> {
        let layers = set.layers();
        let dims = layers.first().map(|l| l.k.dims()).unwrap_or([1, 0, 0, 0]);
        let dtype = layers.first().map(|l| l.k.dtype()).unwrap_or(DType::F32);
        let header = BatchHeader {
            key: key.to_string(),
            chunk_ids: set.chunk_ids().to_vec(),
            layers: layers.len(),
            kv_heads: dims[1],
            head_dim: dims[3],
            dtype: format!("{dtype:?}"),
            seconds,
        };
        let mut bytes = Vec::with_capacity(set.size_bytes() * 4 / dtype.size().max(1));
        for layer in layers {
            for t in [&layer.k, &layer.v] {
                let data = t.clone().cast(DType::F32).into_data();
                let floats = data
                    .to_vec::<f32>()
                    .map_err(|e| FocusError::Checkpoint(format!("candidates: {e:?}")))?;
                for f in floats {
                    bytes.extend_from_slice(&f.to_le_bytes());
                }
            }
        }
        let json = serde_json::to_string(&header).expect("a header serialises");
        write_whole(&self.data_path(batch), &bytes)?;
        write_whole(&self.header_path(batch), json.as_bytes())
    }
}

/// Writes `path` under a temporary name, then renames it into place.
fn write_whole(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let io = FocusError::io_at;
    let mut file = fs::File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    fs::rename(&tmp, path).map_err(io(path))
}
