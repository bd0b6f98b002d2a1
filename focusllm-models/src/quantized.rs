//! A weight matrix kept in a GGUF's quantized blocks, as stored: a quarter to a seventh of its
//! `f32` size, decoded block by block when it is multiplied (see [`crate::llama::Projection`]).
//!
//! The decoded values are exactly those [`crate::gguf::dequant`] gives when the whole model is
//! loaded in `f32`, so a product with a quantized matrix differs from the `f32` model's only in
//! the order its sums are added.

use std::sync::Arc;

use crate::gguf::dequant::{self, DequantError};

/// A `[rows, cols]` matrix (a linear layer's `[out, in]` weight, as HF and GGUF store it) in ggml
/// blocks: each row is `cols / block_elems` blocks.
///
/// ```
/// use focusllm_models::gguf::dequant::GGML_TYPE_Q8_0;
/// use focusllm_models::quantized::QuantizedMatrix;
///
/// // One Q8_0 block per row: an f16 scale (0.5 = 0x3800) and 32 signed bytes.
/// let mut data = Vec::new();
/// for row in 0..2u8 {
///     data.extend_from_slice(&0x3800u16.to_le_bytes());
///     data.extend((0..32).map(|j| (j + row) as u8));
/// }
/// let w = QuantizedMatrix::new(GGML_TYPE_Q8_0, 2, 32, data)?;
/// let dense = w.to_f32();
/// assert_eq!((dense[0], dense[1], dense[32 + 1]), (0.0, 0.5, 1.0));
/// # Ok::<(), focusllm_models::gguf::dequant::DequantError>(())
/// ```
#[derive(Clone)]
pub struct QuantizedMatrix {
    ggml_type: u32,
    rows: usize,
    cols: usize,
    row_bytes: usize,
    data: Arc<[u8]>,
}

impl std::fmt::Debug for QuantizedMatrix {
    /// The type and shape, not the bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuantizedMatrix")
            .field("ggml_type", &dequant::describe_type(self.ggml_type))
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish()
    }
}

impl QuantizedMatrix {
    /// `rows` rows of `cols` elements of ggml type `ggml_type`, from their bytes `data`.
    ///
    /// Errors: the type cannot be decoded, a row is not a whole number of blocks, or `data` is
    /// not exactly the matrix's size.
    pub fn new(
        ggml_type: u32,
        rows: usize,
        cols: usize,
        data: impl Into<Arc<[u8]>>,
    ) -> Result<Self, DequantError> {
        let data = data.into();
        if !dequant::is_supported(ggml_type) {
            return Err(DequantError::Unsupported(ggml_type));
        }
        let layout =
            dequant::block_layout(ggml_type).ok_or(DequantError::Unsupported(ggml_type))?;
        if !cols.is_multiple_of(layout.block_elems) {
            return Err(DequantError::PartialBlock {
                n_elements: cols,
                block_elems: layout.block_elems,
            });
        }
        let row_bytes = cols / layout.block_elems * layout.block_bytes;
        let expected = rows.checked_mul(row_bytes);
        if expected != Some(data.len()) {
            return Err(DequantError::WrongLength {
                expected: expected.unwrap_or(usize::MAX),
                found: data.len(),
            });
        }
        Ok(Self {
            ggml_type,
            rows,
            cols,
            row_bytes,
            data,
        })
    }

    /// The ggml type id of its blocks.
    pub fn ggml_type(&self) -> u32 {
        self.ggml_type
    }

    /// Rows (a linear layer's output features).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns (a linear layer's input features).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Bytes per row.
    pub fn row_bytes(&self) -> usize {
        self.row_bytes
    }

    /// The bytes of rows `start..start + count`.
    ///
    /// # Panics
    /// If the rows are out of range.
    pub fn row_data(&self, start: usize, count: usize) -> &[u8] {
        &self.data[start * self.row_bytes..(start + count) * self.row_bytes]
    }

    /// Bytes held (the blocks; what the matrix costs in memory).
    pub fn size_bytes(&self) -> usize {
        self.data.len()
    }

    /// Rows `start..start + out.len() / cols` decoded into `out`, row-major.
    ///
    /// # Panics
    /// If `out` is not a whole number of rows or the rows are out of range.
    pub fn decode_rows(&self, start: usize, out: &mut [f32]) {
        assert!(
            out.len().is_multiple_of(self.cols.max(1)),
            "decode_rows: {} values are not rows of {}",
            out.len(),
            self.cols
        );
        let count = out.len() / self.cols.max(1);
        dequant::dequantize_into(self.ggml_type, self.row_data(start, count), out)
            .expect("the type and sizes were checked when the matrix was made");
    }

    /// The whole matrix decoded, row-major `[rows, cols]`.
    pub fn to_f32(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.rows * self.cols];
        self.decode_rows(0, &mut out);
        out
    }
}
