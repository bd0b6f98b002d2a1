//! A GGUF file as a [`WeightSource`]: llama.cpp's tensor names mapped to HF's (the one name map of
//! the format) and the Q/K row permutation of `convert_hf_to_gguf.py` undone, so that the Llama
//! modules load GGUF and safetensors checkpoints alike.

use std::path::Path;

use super::GgufFile;
use crate::error::ModelError;
use crate::quantized::QuantizedMatrix;
use crate::weights::WeightSource;

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
        gguf_name(hf, self.heads, self.kv_heads)
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
        // Only a vector or a matrix has rows to un-permute. Any other shape (no dimension, or more
        // than two) is returned as stored: the caller's shape check rejects it by name.
        let (rows, cols) = match shape[..] {
            [rows] => (rows, 1),
            [rows, cols] => (rows, cols),
            _ => return Ok((shape, data)),
        };
        if !rows.is_multiple_of(heads.saturating_mul(2)) {
            return Err(ModelError::ShapeMismatch {
                tensor: gguf,
                expected: vec![heads * (rows / heads.max(1)), cols],
                found: shape,
            });
        }
        Ok((shape, unpermute_qk_rows(&data, rows, cols, heads)))
    }

    fn load_quantized(&self, name: &str) -> Result<Option<QuantizedMatrix>, ModelError> {
        let missing = || ModelError::MissingTensor {
            path: self.gguf.path().into(),
            tensor: name.into(),
        };
        let (gguf, heads) = self.gguf_name(name).ok_or_else(missing)?;
        let Some(matrix) = self.gguf.tensor_quantized(&gguf)? else {
            return Ok(None);
        };
        if heads == 0 {
            return Ok(Some(matrix));
        }
        let rows = matrix.rows();
        if !rows.is_multiple_of(heads.saturating_mul(2)) {
            return Err(ModelError::ShapeMismatch {
                tensor: gguf,
                expected: vec![heads * (rows / heads.max(1)), matrix.cols()],
                found: vec![rows, matrix.cols()],
            });
        }
        // A row is a whole number of blocks: rows move as runs of bytes.
        let bytes = unpermute_qk_rows(matrix.row_data(0, rows), rows, matrix.row_bytes(), heads);
        QuantizedMatrix::new(matrix.ggml_type(), rows, matrix.cols(), bytes)
            .map(Some)
            .map_err(|e| ModelError::Gguf {
                path: self.gguf.path().into(),
                reason: format!("tensor `{gguf}`: {e}"),
            })
    }
}

/// Undo llama.cpp's permutation of the rows of `attn_q`/`attn_k` weights.
///
/// `convert_hf_to_gguf.py` reorders the rows of each head of the Hugging Face `q_proj`/`k_proj`
/// weights so that ggml's RoPE, which rotates adjacent pairs, matches Hugging Face's
/// `rotate_half`, which rotates the two halves of each head. Given the row-major `[rows, cols]`
/// GGUF weight (any element type: quantized rows move as runs of `cols` bytes) and the number of
/// heads (`n_head` for Q, `n_kv_head` for K), this returns the
/// Hugging Face layout:
/// `w.reshape(n_heads, rows / n_heads / 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)`.
///
/// # Panics
///
/// If `data.len() != rows * cols`, or `rows` is not a multiple of `2 * n_heads` (including
/// `n_heads == 0`). Callers check the tensor shape against the configuration first.
pub fn unpermute_qk_rows<T: Copy>(data: &[T], rows: usize, cols: usize, n_heads: usize) -> Vec<T> {
    assert_eq!(
        Some(data.len()),
        rows.checked_mul(cols),
        "unpermute_qk_rows: data is not [rows, cols]"
    );
    assert!(
        n_heads > 0 && rows.is_multiple_of(2 * n_heads),
        "unpermute_qk_rows: {rows} rows do not split into {n_heads} heads of pairs"
    );
    let head_dim = rows / n_heads;
    let half = head_dim / 2;
    let mut out = Vec::with_capacity(data.len());
    for h in 0..n_heads {
        // Hugging Face row `j * half + i` of head `h` is GGUF row `i * 2 + j` of that head.
        for j in 0..2 {
            for i in 0..half {
                let src = (h * head_dim + i * 2 + j) * cols;
                out.extend_from_slice(&data[src..src + cols]);
            }
        }
    }
    out
}

/// The llama.cpp (GGUF) name of an HF tensor name of a model with `heads` query and `kv_heads`
/// key/value heads, and the head count whose Q/K row permutation `convert_hf_to_gguf.py` applied
/// (0: none). `None` for tensors GGUF has no name for. The one name map of the format.
pub fn gguf_name(hf: &str, heads: usize, kv_heads: usize) -> Option<(String, usize)> {
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
        "self_attn.q_proj.weight" => ("attn_q.weight", heads),
        "self_attn.k_proj.weight" => ("attn_k.weight", kv_heads),
        "self_attn.q_proj.bias" => ("attn_q.bias", heads),
        "self_attn.k_proj.bias" => ("attn_k.bias", kv_heads),
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
