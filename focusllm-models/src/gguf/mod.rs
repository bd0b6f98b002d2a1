//! Reader for GGUF files, llama.cpp's single-file model format (versions 2 and 3).
//!
//! A GGUF file is, all little-endian: the magic `GGUF`, a `u32` version, a `u64` tensor count,
//! a `u64` metadata count, the metadata key/value pairs, the tensor descriptions, padding up to
//! the next multiple of `general.alignment` (32 by default), and the tensor data section. Tensor
//! offsets are relative to the start of the data section.
//!
//! [`GgufFile::open`] memory-maps the file, parses and validates the whole header, and checks
//! that every tensor of a known type lies inside the file. Tensor data is only read, and
//! dequantized to `f32`, on request ([`GgufFile::tensor_f32`]). Malformed input of any kind gives
//! a [`ModelError`], never a panic: every read is bounds-checked, and counts and lengths read
//! from the file are checked against the bytes that remain before anything is allocated.

pub mod dequant;
pub mod tokenizer;
mod weights;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::ModelError;
use crate::quantized::QuantizedMatrix;

pub use tokenizer::{GgufTokenizer, tokenizer_from_gguf};
pub use weights::{GgufWeights, gguf_name, unpermute_qk_rows};

/// The four bytes every GGUF file starts with.
const MAGIC: [u8; 4] = *b"GGUF";
/// Data-section alignment when `general.alignment` is absent.
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Nesting limit for array values, so that a crafted file cannot exhaust the stack. Real files
/// never nest arrays at all.
const MAX_ARRAY_DEPTH: usize = 8;

/// A metadata value of a GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// Type 0.
    U8(u8),
    /// Type 1.
    I8(i8),
    /// Type 2.
    U16(u16),
    /// Type 3.
    I16(i16),
    /// Type 4.
    U32(u32),
    /// Type 5.
    I32(i32),
    /// Type 6.
    F32(f32),
    /// Type 7.
    Bool(bool),
    /// Type 8. Invalid UTF-8 in a value is replaced by U+FFFD rather than rejected.
    String(String),
    /// Type 9: elements of one type.
    Array(Vec<GgufValue>),
    /// Type 10.
    U64(u64),
    /// Type 11.
    I64(i64),
    /// Type 12.
    F64(f64),
}

impl GgufValue {
    /// The value as an unsigned integer: any integer type holding a non-negative value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float: either float type, or any integer type (converted, possibly
    /// rounding 64-bit integers), since writers are not consistent about e.g. `rope.freq_base`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            Self::U8(v) => Some(v.into()),
            Self::I8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::U64(v) => Some(v as f64),
            Self::I64(v) => Some(v as f64),
            _ => None,
        }
    }

    /// The value as a string slice, if it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The elements, if the value is an array.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The GGUF name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::U8(_) => "u8",
            Self::I8(_) => "i8",
            Self::U16(_) => "u16",
            Self::I16(_) => "i16",
            Self::U32(_) => "u32",
            Self::I32(_) => "i32",
            Self::F32(_) => "f32",
            Self::Bool(_) => "bool",
            Self::String(_) => "string",
            Self::Array(_) => "array",
            Self::U64(_) => "u64",
            Self::I64(_) => "i64",
            Self::F64(_) => "f64",
        }
    }
}

/// The description of one tensor in a GGUF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GgufTensorInfo {
    /// The tensor's name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// The dimensions as stored by ggml: fastest-varying first (the reverse of PyTorch order).
    pub dims: Vec<u64>,
    /// The ggml type id (see [`dequant`]).
    pub ggml_type: u32,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
}

impl GgufTensorInfo {
    /// The shape in row-major (PyTorch) order: `dims` reversed. [`GgufFile::open`] has checked
    /// that every dimension, and the element count, fit in `usize`.
    pub fn shape(&self) -> Vec<usize> {
        self.dims
            .iter()
            .rev()
            .map(|&d| usize::try_from(d).unwrap_or(usize::MAX))
            .collect()
    }

    /// The number of elements (1 for a tensor with no dimensions).
    pub fn n_elements(&self) -> u64 {
        // `open` rejects tensors whose element count overflows, so this saturation never bites.
        self.dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .unwrap_or(u64::MAX)
    }

    /// The ggml name of the tensor's type (`"Q4_K"`), or `"type N"` for unknown ids.
    pub fn type_name(&self) -> String {
        match dequant::type_name(self.ggml_type) {
            Some(name) => name.to_owned(),
            None => format!("type {}", self.ggml_type),
        }
    }

    /// The size of the tensor's data in bytes, if its type's layout is known.
    pub fn data_size(&self) -> Option<u64> {
        let n = usize::try_from(self.n_elements()).ok()?;
        dequant::data_size(self.ggml_type, n).and_then(|s| u64::try_from(s).ok())
    }
}

/// An open, memory-mapped GGUF file with its parsed header.
#[derive(Debug)]
pub struct GgufFile {
    path: PathBuf,
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
    /// Tensor name -> index into `tensors`.
    index: HashMap<String, usize>,
    mmap: Mmap,
    alignment: u64,
    data_offset: u64,
}

impl GgufFile {
    /// Open, map and parse a GGUF file (version 2 or 3), validating its header.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ModelError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| ModelError::io(&path, e))?;
        let len = file.metadata().map_err(|e| ModelError::io(&path, e))?.len();
        if len == 0 {
            // Mapping an empty file fails on some platforms; report it as what it is.
            return Err(gguf_err(&path, "the file is empty"));
        }
        // SAFETY: the map is read-only and private to this struct. As with any memory map, the
        // contents are undefined if another process truncates or rewrites the file while it is
        // mapped; model files are not modified while a model is loaded from them.
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| ModelError::io(&path, e))?;
        let header = parse_header(&mmap).map_err(|reason| gguf_err(&path, reason))?;
        let index = header
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), i))
            .collect();
        Ok(Self {
            path,
            version: header.version,
            metadata: header.metadata,
            tensors: header.tensors,
            index,
            mmap,
            alignment: header.alignment,
            data_offset: header.data_offset,
        })
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The GGUF format version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// All metadata key/value pairs.
    pub fn metadata(&self) -> &BTreeMap<String, GgufValue> {
        &self.metadata
    }

    /// The metadata value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// The metadata value of `key` as an unsigned integer; an error naming the key if it is
    /// missing or not a non-negative integer.
    pub fn get_u64(&self, key: &str) -> Result<u64, ModelError> {
        let v = self.require(key)?;
        v.as_u64()
            .ok_or_else(|| self.wrong_type(key, v, "a non-negative integer"))
    }

    /// The metadata value of `key` as a float (integers are converted); an error naming the key
    /// if it is missing or not a number.
    pub fn get_f64(&self, key: &str) -> Result<f64, ModelError> {
        let v = self.require(key)?;
        v.as_f64()
            .ok_or_else(|| self.wrong_type(key, v, "a number"))
    }

    /// The metadata value of `key` as an unsigned integer if present (`None` when absent); an
    /// error naming the key if it has another type (a mistyped key is not silently defaulted).
    pub fn get_opt_u64(&self, key: &str) -> Result<Option<u64>, ModelError> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, v, "a non-negative integer")),
        }
    }

    /// The metadata value of `key` as a float if present (`None` when absent); an error naming the
    /// key if it is not a number.
    pub fn get_opt_f64(&self, key: &str) -> Result<Option<f64>, ModelError> {
        match self.metadata.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.wrong_type(key, v, "a number")),
        }
    }

    /// The metadata value of `key` as a string; an error naming the key if it is missing or not
    /// a string.
    pub fn get_str(&self, key: &str) -> Result<&str, ModelError> {
        let v = self.require(key)?;
        v.as_str()
            .ok_or_else(|| self.wrong_type(key, v, "a string"))
    }

    /// The descriptions of all tensors, in file order.
    pub fn tensors(&self) -> &[GgufTensorInfo] {
        &self.tensors
    }

    /// The description of the tensor `name`, if present.
    pub fn tensor_info(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.index.get(name).and_then(|&i| self.tensors.get(i))
    }

    /// The data-section alignment in bytes (`general.alignment`, 32 by default).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// The absolute file offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The raw bytes of tensor `name` as stored (still quantized).
    ///
    /// Errors: [`ModelError::MissingTensor`] if absent, [`ModelError::UnsupportedDtype`] if its
    /// type's layout is unknown, [`ModelError::Gguf`] if its data lies outside the file.
    pub fn tensor_data(&self, name: &str) -> Result<&[u8], ModelError> {
        self.info_and_data(name).map(|(_, data)| data)
    }

    /// The tensor's info and raw bytes, or the error [`GgufFile::tensor_data`] documents.
    fn info_and_data(&self, name: &str) -> Result<(&GgufTensorInfo, &[u8]), ModelError> {
        let info = self
            .tensor_info(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: self.path.clone(),
                tensor: name.to_owned(),
            })?;
        let size = info.data_size().ok_or_else(|| self.unsupported(info))?;
        let range = tensor_range(self.data_offset, info.offset, size, self.mmap.len() as u64)
            .map_err(|reason| gguf_err(&self.path, format!("tensor `{name}`: {reason}")))?;
        let data = self
            .mmap
            .get(range)
            .ok_or_else(|| gguf_err(&self.path, format!("tensor `{name}`: data out of bounds")))?;
        Ok((info, data))
    }

    /// Tensor `name` dequantized to `f32`, with its row-major (PyTorch-order) shape, i.e. the
    /// GGUF dims reversed.
    ///
    /// Errors: [`ModelError::MissingTensor`] if absent, [`ModelError::UnsupportedDtype`] (naming
    /// the tensor and its type) if its type cannot be decoded, [`ModelError::Gguf`] if its data
    /// lies outside the file.
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>), ModelError> {
        let (info, data) = self.info_and_data(name)?;
        if !dequant::is_supported(info.ggml_type) {
            return Err(self.unsupported(info));
        }
        let n = usize::try_from(info.n_elements()).map_err(|_| {
            gguf_err(
                &self.path,
                format!("tensor `{name}` is too large for this platform"),
            )
        })?;
        let values = dequant::dequantize(info.ggml_type, data, n).map_err(|e| match e {
            dequant::DequantError::Unsupported(_) => self.unsupported(info),
            other => gguf_err(&self.path, format!("tensor `{name}`: {other}")),
        })?;
        Ok((info.shape(), values))
    }

    fn require(&self, key: &str) -> Result<&GgufValue, ModelError> {
        self.metadata
            .get(key)
            .ok_or_else(|| gguf_err(&self.path, format!("metadata key `{key}` is missing")))
    }

    fn wrong_type(&self, key: &str, v: &GgufValue, expected: &str) -> ModelError {
        gguf_err(
            &self.path,
            format!(
                "metadata key `{key}` is a {}, expected {expected}",
                v.type_name()
            ),
        )
    }

    /// Matrix `name` in its quantized blocks as stored, `[rows, cols]` row-major (the GGUF dims
    /// reversed), or `None` when it is stored as plain floats (`F32`, `F16`, `BF16`) or is not a
    /// matrix.
    ///
    /// Errors: as [`GgufFile::tensor_f32`].
    pub fn tensor_quantized(&self, name: &str) -> Result<Option<QuantizedMatrix>, ModelError> {
        let (info, data) = self.info_and_data(name)?;
        if matches!(
            info.ggml_type,
            dequant::GGML_TYPE_F32 | dequant::GGML_TYPE_F16 | dequant::GGML_TYPE_BF16
        ) {
            return Ok(None);
        }
        let [rows, cols] = info.shape()[..] else {
            return Ok(None);
        };
        if !dequant::is_supported(info.ggml_type) {
            return Err(self.unsupported(info));
        }
        QuantizedMatrix::new(info.ggml_type, rows, cols, data.to_vec())
            .map(Some)
            .map_err(|e| gguf_err(&self.path, format!("tensor `{name}`: {e}")))
    }

    fn unsupported(&self, info: &GgufTensorInfo) -> ModelError {
        ModelError::UnsupportedDtype {
            path: self.path.clone(),
            tensor: info.name.clone(),
            dtype: dequant::describe_type(info.ggml_type),
        }
    }
}

fn gguf_err(path: &Path, reason: impl Into<String>) -> ModelError {
    ModelError::Gguf {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// The byte range of a tensor's data in the file, checked against the file length.
fn tensor_range(
    data_offset: u64,
    offset: u64,
    size: u64,
    file_len: u64,
) -> Result<std::ops::Range<usize>, String> {
    let start = data_offset
        .checked_add(offset)
        .ok_or("data offset overflows")?;
    let end = start.checked_add(size).ok_or("data size overflows")?;
    if end > file_len {
        return Err(format!(
            "data (bytes {start}..{end}) extends past the end of the file ({file_len} bytes); the file is truncated or corrupt"
        ));
    }
    // Both fit in usize: they are at most the length of a mapped file.
    let start = usize::try_from(start).map_err(|_| "data offset too large")?;
    let end = usize::try_from(end).map_err(|_| "data end too large")?;
    Ok(start..end)
}

/// The parsed header of a GGUF file.
struct Header {
    version: u32,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<GgufTensorInfo>,
    alignment: u64,
    data_offset: u64,
}

/// Parse and validate the header in `bytes` (the whole file).
fn parse_header(bytes: &[u8]) -> Result<Header, String> {
    let mut r = Reader { bytes, pos: 0 };
    let magic = r
        .take(4)
        .map_err(|_| "the file is too short to be GGUF".to_owned())?;
    if magic != MAGIC {
        return Err(format!(
            "bad magic {magic:02x?}, expected \"GGUF\" (47 47 55 46): not a GGUF file"
        ));
    }
    let version = ctx(r.u32(), || "reading the version".to_owned())?;
    match version {
        2 | 3 => {}
        1 => {
            return Err(
                "GGUF version 1 is not supported (only versions 2 and 3); re-convert the model"
                    .to_owned(),
            );
        }
        v if v.swap_bytes() == 2 || v.swap_bytes() == 3 => {
            return Err(format!(
                "big-endian GGUF (version {}) is not supported",
                v.swap_bytes()
            ));
        }
        v => {
            return Err(format!(
                "unsupported GGUF version {v} (only versions 2 and 3 are supported)"
            ));
        }
    }
    let n_tensors = ctx(r.u64(), || "reading the tensor count".to_owned())?;
    let n_kv = ctx(r.u64(), || "reading the metadata count".to_owned())?;

    // Each key/value takes at least 13 bytes (key length, type, a 1-byte value); each tensor
    // description at least 24 (name length, n_dims, type, offset). Rejecting larger counts up
    // front keeps allocations bounded by the file size.
    ctx(r.check_count(n_kv, 13), || "metadata count".to_owned())?;
    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = ctx(r.string_strict(), || {
            format!("reading the key of metadata entry {i}")
        })?;
        let ty = ctx(r.u32(), || {
            format!("reading the type of metadata key `{key}`")
        })?;
        let value = r.value(ty, &key, 0)?;
        if metadata.insert(key.clone(), value).is_some() {
            return Err(format!("duplicate metadata key `{key}`"));
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a > 0 && a.is_power_of_two() && a <= (1 << 30) => a,
            _ => {
                return Err(format!(
                    "bad `general.alignment` {v:?}: must be a power of two"
                ));
            }
        },
    };

    ctx(r.check_count(n_tensors, 24), || "tensor count".to_owned())?;
    let mut tensors = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for i in 0..n_tensors {
        let info = r.tensor_info(i)?;
        if !seen.insert(info.name.clone()) {
            return Err(format!("duplicate tensor `{}`", info.name));
        }
        tensors.push(info);
    }

    let header_end = r.pos as u64;
    let data_offset = header_end
        .checked_next_multiple_of(alignment)
        .ok_or("data section offset overflows")?;
    let file_len = bytes.len() as u64;
    for t in &tensors {
        if t.offset % alignment != 0 {
            return Err(format!(
                "tensor `{}` has offset {} that is not a multiple of the alignment {alignment}",
                t.name, t.offset
            ));
        }
        // Tensors of unknown type are reported when they are read: their size is unknown.
        if let Some(size) = t.data_size() {
            tensor_range(data_offset, t.offset, size, file_len)
                .map_err(|e| format!("tensor `{}`: {e}", t.name))?;
        }
    }
    Ok(Header {
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
    })
}

/// A bounds-checked little-endian cursor over the file bytes.
///
/// Reads fail with a context-free message; callers add what was being read with `ctx`, whose
/// closure only runs on failure, so that reading a 100k-entry vocabulary formats nothing.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

/// Prefix an error with a lazily built description of what was being read.
fn ctx<T>(r: Result<T, String>, what: impl FnOnce() -> String) -> Result<T, String> {
    r.map_err(|e| format!("{}: {e}", what()))
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let out = end.and_then(|end| self.bytes.get(self.pos..end));
        let (Some(end), Some(out)) = (end, out) else {
            return Err(format!(
                "unexpected end of file at byte {} (needed {n} more bytes, {} left)",
                self.pos,
                self.remaining()
            ));
        };
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let b = self.take(N)?;
        b.try_into().map_err(|_| "short read".to_owned())
    }

    fn u32(&mut self) -> Result<u32, String> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, String> {
        self.array().map(u64::from_le_bytes)
    }

    /// Fail unless `count` items of at least `min_size` bytes each can fit in what remains.
    fn check_count(&self, count: u64, min_size: u64) -> Result<(), String> {
        if count.saturating_mul(min_size) > self.remaining() as u64 {
            return Err(format!(
                "count {count} is impossible: the {} bytes left in the file cannot hold that many",
                self.remaining()
            ));
        }
        Ok(())
    }

    /// A GGUF string: `u64` length, then the bytes.
    fn string_bytes(&mut self) -> Result<&'a [u8], String> {
        let len = self.u64()?;
        if len > self.remaining() as u64 {
            return Err(format!(
                "string length {len} exceeds the {} bytes left in the file",
                self.remaining()
            ));
        }
        // Fits in usize: it is at most `remaining`.
        let len = usize::try_from(len).map_err(|_| "string too long".to_owned())?;
        self.take(len)
    }

    /// A string that must be valid UTF-8 (keys and tensor names).
    fn string_strict(&mut self) -> Result<String, String> {
        let b = self.string_bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| "not valid UTF-8".to_owned())
    }

    /// A value of GGUF type `ty` for metadata key `key`; `depth` counts enclosing arrays.
    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<GgufValue, String> {
        let v = match ty {
            0 => self.array().map(|b| GgufValue::U8(u8::from_le_bytes(b))),
            1 => self.array().map(|b| GgufValue::I8(i8::from_le_bytes(b))),
            2 => self.array().map(|b| GgufValue::U16(u16::from_le_bytes(b))),
            3 => self.array().map(|b| GgufValue::I16(i16::from_le_bytes(b))),
            4 => self.array().map(|b| GgufValue::U32(u32::from_le_bytes(b))),
            5 => self.array().map(|b| GgufValue::I32(i32::from_le_bytes(b))),
            6 => self.array().map(|b| GgufValue::F32(f32::from_le_bytes(b))),
            7 => self.array::<1>().map(|[b]| GgufValue::Bool(b != 0)),
            // Values (chat templates, vocabulary entries) are kept even if not valid UTF-8.
            8 => self
                .string_bytes()
                .map(|b| GgufValue::String(String::from_utf8_lossy(b).into_owned())),
            9 => return self.array_value(key, depth),
            10 => self.array().map(|b| GgufValue::U64(u64::from_le_bytes(b))),
            11 => self.array().map(|b| GgufValue::I64(i64::from_le_bytes(b))),
            12 => self.array().map(|b| GgufValue::F64(f64::from_le_bytes(b))),
            other => {
                return Err(format!(
                    "metadata key `{key}` has unknown value type {other}"
                ));
            }
        };
        ctx(v, || format!("reading the value of `{key}`"))
    }

    /// An array value (after its type id) for metadata key `key`.
    fn array_value(&mut self, key: &str, depth: usize) -> Result<GgufValue, String> {
        if depth >= MAX_ARRAY_DEPTH {
            return Err(format!(
                "`{key}`: arrays nested deeper than {MAX_ARRAY_DEPTH}"
            ));
        }
        let elem_ty = ctx(self.u32(), || {
            format!("reading the element type of `{key}`")
        })?;
        let count = ctx(self.u64(), || format!("reading the length of `{key}`"))?;
        let min_size = match elem_ty {
            0 | 1 | 7 => 1,
            2 | 3 => 2,
            4..=6 => 4,
            8 | 10..=12 => 8,
            9 => 12,
            other => return Err(format!("`{key}`: unknown array element type {other}")),
        };
        ctx(self.check_count(count, min_size), || {
            format!("array `{key}`")
        })?;
        // Bounded by the file size thanks to the check above.
        let capacity = usize::try_from(count).map_err(|_| format!("array `{key}` is too long"))?;
        let mut items = Vec::with_capacity(capacity);
        for _ in 0..count {
            items.push(self.value(elem_ty, key, depth + 1)?);
        }
        Ok(GgufValue::Array(items))
    }

    /// The description of tensor number `i`.
    fn tensor_info(&mut self, i: u64) -> Result<GgufTensorInfo, String> {
        let name = ctx(self.string_strict(), || {
            format!("reading the name of tensor {i}")
        })?;
        let what = || format!("reading the description of tensor `{name}`");
        let n_dims = ctx(self.u32(), what)?;
        if n_dims > MAX_DIMS {
            return Err(format!(
                "tensor `{name}` has {n_dims} dimensions (at most {MAX_DIMS} are allowed)"
            ));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(ctx(self.u64(), what)?);
        }
        let ggml_type = ctx(self.u32(), what)?;
        let offset = ctx(self.u64(), what)?;

        // ggml stores dims as i64, and the element count must be addressable.
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| {
                n <= i64::MAX as u64
                    && usize::try_from(n).is_ok()
                    && dims.iter().all(|&d| d <= i64::MAX as u64)
            })
            .ok_or_else(|| format!("tensor `{name}` has absurd dimensions {dims:?}"))?;
        if let Some(layout) = dequant::block_layout(ggml_type) {
            let row = dims.first().copied().unwrap_or(1);
            if row % layout.block_elems as u64 != 0 {
                return Err(format!(
                    "tensor `{name}` of type {} has rows of {row} elements, not a multiple of its block size {}",
                    dequant::describe_type(ggml_type),
                    layout.block_elems
                ));
            }
            let size =
                (n_elements / layout.block_elems as u64).checked_mul(layout.block_bytes as u64);
            if size.is_none() {
                return Err(format!("tensor `{name}` is too large"));
            }
        }
        Ok(GgufTensorInfo {
            name,
            dims,
            ggml_type,
            offset,
        })
    }
}
