//! A weight matrix kept in a GGUF's quantized blocks, as stored: a quarter to a seventh of its
//! `f32` size, decoded block by block when it is multiplied (see [`crate::llama::Projection`]).
//!
//! The blocks hold exactly the weights [`crate::gguf::dequant`] gives when the whole model is
//! loaded in `f32`, so a product with a quantized matrix differs from the `f32` model's only by
//! rounding (the order of its sums; see [`crate::llama::Projection`]).

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
    activations: ActivationPrecision,
}

/// How the activations of a decoding step (a product of at most 16 rows) meet a
/// [`QuantizedMatrix`]'s blocks.
///
/// A prefill's products (many rows) decode the weight to `f32` and multiply in `f32` either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ActivationPrecision {
    /// `f32` activations times the decoded weights: the `f32` model's numbers up to rounding.
    #[default]
    F32,
    /// Activations rounded to 8-bit integers per block of 32 (a scale `max |x| / 127` kept in
    /// `f32`, each value to the nearest level: ggml's `Q8_0`, as llama.cpp multiplies its 4- and
    /// 8-bit weights), each block's dot product taken in integers. A decoding step's products run
    /// faster (the weights' integers need no conversion to floats), at the cost of the activations'
    /// rounding: each activation moves by at most half its block's scale (`max |x| / 254`), so a
    /// product moves by at most `Σ_i |w_i| · s_i / 2`. Applies to `Q4_0`, `Q4_1` and `Q8_0` blocks on
    /// x86-64 CPUs with AVX-512 VNNI and VBMI (`vpdpbusd`: a step's products of `Q4_1` weights
    /// 1.3-1.7x faster than with `f32` activations) or else AVX2, FMA and F16C (about 1.3x); other
    /// types and CPUs multiply `f32` activations. Each CPU gives a row the same bits whatever
    /// the rows beside it; the two kernels differ in the order of their sums.
    Int8,
}

impl std::fmt::Debug for QuantizedMatrix {
    /// The type and shape, not the bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuantizedMatrix")
            .field("ggml_type", &dequant::describe_type(self.ggml_type))
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .field("activations", &self.activations)
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
            activations: ActivationPrecision::F32,
        })
    }

    /// This matrix with a decoding step's activations multiplied at `precision` (the blocks are
    /// shared, not copied).
    pub fn with_activation_precision(self, precision: ActivationPrecision) -> Self {
        Self {
            activations: precision,
            ..self
        }
    }

    /// How a decoding step's activations meet this matrix (see [`ActivationPrecision`]).
    pub fn activation_precision(&self) -> ActivationPrecision {
        self.activations
    }

    /// `data` (`[rows, cols]` row-major) quantized to `Q8_0`, `Q4_0` or `Q4_1` the way ggml's
    /// reference quantizers (`quantize_row_*_ref`) do: per block of 32, the scale (and for
    /// `Q4_1` the minimum) from the block's range, each value rounded to the nearest level.
    ///
    /// Errors: another type, a row that is not a whole number of blocks, or `data` not
    /// `rows · cols` values.
    pub fn quantize(
        ggml_type: u32,
        rows: usize,
        cols: usize,
        data: &[f32],
    ) -> Result<Self, DequantError> {
        let block = match ggml_type {
            dequant::GGML_TYPE_Q8_0 | dequant::GGML_TYPE_Q4_0 | dequant::GGML_TYPE_Q4_1 => 32,
            other => return Err(DequantError::Unsupported(other)),
        };
        if !cols.is_multiple_of(block) {
            return Err(DequantError::PartialBlock {
                n_elements: cols,
                block_elems: block,
            });
        }
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(DequantError::WrongLength {
                expected: rows.saturating_mul(cols),
                found: data.len(),
            });
        }
        let mut bytes = Vec::new();
        let half = |v: f32| half::f16::from_f32(v).to_le_bytes();
        let inverse = |d: f32| if d != 0.0 { 1.0 / d } else { 0.0 };
        for x in data.chunks_exact(block) {
            match ggml_type {
                dequant::GGML_TYPE_Q8_0 => {
                    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
                    let d = amax / 127.0;
                    let id = inverse(d);
                    bytes.extend_from_slice(&half(d));
                    bytes.extend(x.iter().map(|v| (v * id).round() as i8 as u8));
                }
                dequant::GGML_TYPE_Q4_0 => {
                    // The value of largest magnitude, with its sign, maps to -8.
                    let max = x
                        .iter()
                        .fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                    let d = max / -8.0;
                    let id = inverse(d);
                    bytes.extend_from_slice(&half(d));
                    let q = |v: f32| ((v * id + 8.5) as i8).min(15) as u8;
                    bytes.extend((0..16).map(|j| q(x[j]) | (q(x[j + 16]) << 4)));
                }
                _ => {
                    let min = x.iter().copied().fold(f32::INFINITY, f32::min);
                    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let d = (max - min) / 15.0;
                    let id = inverse(d);
                    bytes.extend_from_slice(&half(d));
                    bytes.extend_from_slice(&half(min));
                    let q = |v: f32| (((v - min) * id + 0.5) as i8).min(15) as u8;
                    bytes.extend((0..16).map(|j| q(x[j]) | (q(x[j + 16]) << 4)));
                }
            }
        }
        Self::new(ggml_type, rows, cols, bytes)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gguf::dequant::{GGML_TYPE_Q4_0, GGML_TYPE_Q4_1, GGML_TYPE_Q6_K, GGML_TYPE_Q8_0};

    #[test]
    fn quantized_values_are_within_half_a_level_of_the_input() {
        let (rows, cols) = (3, 64);
        let data: Vec<f32> = (0..rows * cols)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1 + i % 3) as f32)
            .collect();
        for ty in [GGML_TYPE_Q8_0, GGML_TYPE_Q4_0, GGML_TYPE_Q4_1] {
            let m = QuantizedMatrix::quantize(ty, rows, cols, &data).unwrap();
            assert_eq!((m.rows(), m.cols(), m.ggml_type()), (rows, cols, ty));
            let back = m.to_f32();
            for (block, (x, y)) in data.chunks(32).zip(back.chunks(32)).enumerate() {
                let (lo, hi) = x
                    .iter()
                    .fold((f32::MAX, f32::MIN), |(a, b), &v| (a.min(v), b.max(v)));
                let amax = lo.abs().max(hi.abs());
                // The step between levels, plus the f16 rounding of the scale and minimum.
                let step = match ty {
                    GGML_TYPE_Q8_0 => amax / 127.0,
                    GGML_TYPE_Q4_0 => amax / 8.0,
                    _ => (hi - lo) / 15.0,
                };
                // Q4_0's levels run from -8 to 7 steps: the side opposite the largest magnitude
                // clips at 7 steps, up to a whole step away.
                let reach = if ty == GGML_TYPE_Q4_0 { 1.0 } else { 0.5 };
                for (a, b) in x.iter().zip(y) {
                    assert!(
                        (a - b).abs() <= step * reach + amax * 4e-3,
                        "type {ty}, block {block}: {a} came back as {b} (step {step})"
                    );
                }
            }
        }
    }

    #[test]
    fn bad_shapes_and_types_are_refused() {
        assert_eq!(
            QuantizedMatrix::quantize(GGML_TYPE_Q6_K, 1, 256, &[0.0; 256]).unwrap_err(),
            DequantError::Unsupported(GGML_TYPE_Q6_K)
        );
        assert!(matches!(
            QuantizedMatrix::quantize(GGML_TYPE_Q8_0, 1, 48, &[0.0; 48]),
            Err(DequantError::PartialBlock {
                n_elements: 48,
                block_elems: 32
            })
        ));
        assert!(matches!(
            QuantizedMatrix::quantize(GGML_TYPE_Q8_0, 2, 32, &[0.0; 32]),
            Err(DequantError::WrongLength { .. })
        ));
        assert!(matches!(
            QuantizedMatrix::new(GGML_TYPE_Q4_1, 2, 32, vec![0u8; 39]),
            Err(DequantError::WrongLength {
                expected: 40,
                found: 39
            })
        ));
    }
}
