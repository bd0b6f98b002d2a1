//! Dequantization of ggml tensor data to `f32`.
//!
//! Each ggml type stores its elements in fixed-size blocks (one element per block for the plain
//! float types). The decoders here follow the reference (scalar) dequantizers of ggml
//! (`dequantize_row_*` in `ggml-quants.c`) operation by operation, so that they give the same
//! `f32` values as llama.cpp's reference path: products are formed in the same order, in `f32`.
//!
//! Every decoder works on whole blocks obtained with `as_chunks`, so that all indexing inside a
//! block uses constant offsets into a fixed-size array and cannot go out of bounds.

use half::{bf16, f16};

/// ggml type id of 32-bit IEEE floats.
pub const GGML_TYPE_F32: u32 = 0;
/// ggml type id of 16-bit IEEE floats.
pub const GGML_TYPE_F16: u32 = 1;
/// ggml type id of `Q4_0`: blocks of 32, an `f16` scale and 4-bit values offset by 8.
pub const GGML_TYPE_Q4_0: u32 = 2;
/// ggml type id of `Q4_1`: blocks of 32, an `f16` scale, an `f16` minimum and 4-bit values.
pub const GGML_TYPE_Q4_1: u32 = 3;
/// ggml type id of `Q5_0`: blocks of 32, an `f16` scale and 5-bit values offset by 16.
pub const GGML_TYPE_Q5_0: u32 = 6;
/// ggml type id of `Q5_1`: blocks of 32, an `f16` scale, an `f16` minimum and 5-bit values.
pub const GGML_TYPE_Q5_1: u32 = 7;
/// ggml type id of `Q8_0`: blocks of 32, an `f16` scale and signed 8-bit values.
pub const GGML_TYPE_Q8_0: u32 = 8;
/// ggml type id of `Q8_1` (an intermediate type of ggml's matmuls, not found in model files).
pub const GGML_TYPE_Q8_1: u32 = 9;
/// ggml type id of `Q2_K`: super-blocks of 256 with 4-bit scales and minimums, 2-bit values.
pub const GGML_TYPE_Q2_K: u32 = 10;
/// ggml type id of `Q3_K`: super-blocks of 256 with 6-bit scales, 3-bit values.
pub const GGML_TYPE_Q3_K: u32 = 11;
/// ggml type id of `Q4_K`: super-blocks of 256 with 6-bit scales and minimums, 4-bit values.
pub const GGML_TYPE_Q4_K: u32 = 12;
/// ggml type id of `Q5_K`: super-blocks of 256 with 6-bit scales and minimums, 5-bit values.
pub const GGML_TYPE_Q5_K: u32 = 13;
/// ggml type id of `Q6_K`: super-blocks of 256 with 8-bit scales, 6-bit values.
pub const GGML_TYPE_Q6_K: u32 = 14;
/// ggml type id of `Q8_K`: super-blocks of 256 with an `f32` scale and 8-bit values.
pub const GGML_TYPE_Q8_K: u32 = 15;
/// ggml type id of bfloat16.
pub const GGML_TYPE_BF16: u32 = 30;

/// Elements per super-block of the K-quants.
const QK_K: usize = 256;

/// How a ggml type packs its elements: `block_elems` elements take `block_bytes` bytes, and a
/// tensor row's length must be a multiple of `block_elems`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockLayout {
    /// Number of elements per block.
    pub block_elems: usize,
    /// Number of bytes per block.
    pub block_bytes: usize,
}

/// The name ggml gives to a type id (`"Q4_K"`, `"F16"`, ...), or `None` for ids this module does
/// not know at all.
pub fn type_name(ggml_type: u32) -> Option<&'static str> {
    Some(match ggml_type {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return None,
    })
}

/// The block layout of a ggml type, for every type whose layout is fixed and known (including
/// types that [`dequantize`] cannot decode), so that the size of any such tensor can be checked
/// against the file. `None` for unknown ids.
pub fn block_layout(ggml_type: u32) -> Option<BlockLayout> {
    let (block_elems, block_bytes) = match ggml_type {
        0 => (1, 4),
        1 => (1, 2),
        2 => (32, 18),
        3 => (32, 20),
        6 => (32, 22),
        7 => (32, 24),
        8 => (32, 34),
        // Q8_1 stores two f16 (scale and scaled sum) before its 32 values in current ggml.
        9 => (32, 36),
        10 => (QK_K, 84),
        11 => (QK_K, 110),
        12 => (QK_K, 144),
        13 => (QK_K, 176),
        14 => (QK_K, 210),
        15 => (QK_K, 292),
        16 => (QK_K, 66),
        17 => (QK_K, 74),
        18 => (QK_K, 98),
        19 => (QK_K, 50),
        20 => (32, 18),
        21 => (QK_K, 110),
        22 => (QK_K, 82),
        23 => (QK_K, 136),
        24 => (1, 1),
        25 => (1, 2),
        26 => (1, 4),
        27 => (1, 8),
        28 => (1, 8),
        29 => (QK_K, 56),
        30 => (1, 2),
        34 => (QK_K, 54),
        35 => (QK_K, 66),
        39 => (32, 17),
        _ => return None,
    };
    Some(BlockLayout {
        block_elems,
        block_bytes,
    })
}

/// Whether [`dequantize`] can decode this ggml type.
pub fn is_supported(ggml_type: u32) -> bool {
    matches!(
        ggml_type,
        GGML_TYPE_F32
            | GGML_TYPE_F16
            | GGML_TYPE_BF16
            | GGML_TYPE_Q4_0
            | GGML_TYPE_Q4_1
            | GGML_TYPE_Q5_0
            | GGML_TYPE_Q5_1
            | GGML_TYPE_Q8_0
            | GGML_TYPE_Q2_K
            | GGML_TYPE_Q3_K
            | GGML_TYPE_Q4_K
            | GGML_TYPE_Q5_K
            | GGML_TYPE_Q6_K
            | GGML_TYPE_Q8_K
    )
}

/// The number of bytes `n_elements` elements of a type take, or `None` if the type's layout is
/// unknown, `n_elements` is not a whole number of blocks, or the size overflows `usize`.
pub fn data_size(ggml_type: u32, n_elements: usize) -> Option<usize> {
    let layout = block_layout(ggml_type)?;
    if !n_elements.is_multiple_of(layout.block_elems) {
        return None;
    }
    (n_elements / layout.block_elems).checked_mul(layout.block_bytes)
}

/// Why [`dequantize`] refused its input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DequantError {
    /// The type id is not one [`dequantize`] can decode.
    #[error("unsupported ggml type {}", describe_type(*.0))]
    Unsupported(u32),
    /// The number of elements is not a whole number of the type's blocks.
    #[error("{n_elements} elements are not a whole number of blocks of {block_elems}")]
    PartialBlock {
        /// The requested number of elements.
        n_elements: usize,
        /// The type's block size in elements.
        block_elems: usize,
    },
    /// The data does not have the size the element count implies.
    #[error("expected {expected} bytes of data, got {found}")]
    WrongLength {
        /// The size implied by the type and element count.
        expected: usize,
        /// The size given.
        found: usize,
    },
}

/// A type id as a human-readable string: `"Q4_K (type 12)"`, or `"type 99"` when unknown.
pub fn describe_type(ggml_type: u32) -> String {
    match type_name(ggml_type) {
        Some(name) => format!("{name} (type {ggml_type})"),
        None => format!("type {ggml_type}"),
    }
}

/// Decode `n_elements` elements of ggml type `ggml_type` from `data` into `f32`.
///
/// `data` must be exactly the bytes of those elements (`data_size(ggml_type, n_elements)`).
pub fn dequantize(
    ggml_type: u32,
    data: &[u8],
    n_elements: usize,
) -> Result<Vec<f32>, DequantError> {
    let mut out = vec![0.0f32; n_elements];
    dequantize_into(ggml_type, data, &mut out)?;
    Ok(out)
}

/// [`dequantize`] into `out`: its length is the number of elements, `data` must be exactly their
/// bytes. Nothing is written when the input is refused.
pub fn dequantize_into(ggml_type: u32, data: &[u8], out: &mut [f32]) -> Result<(), DequantError> {
    let n_elements = out.len();
    if !is_supported(ggml_type) {
        return Err(DequantError::Unsupported(ggml_type));
    }
    let layout = block_layout(ggml_type).ok_or(DequantError::Unsupported(ggml_type))?;
    if !n_elements.is_multiple_of(layout.block_elems) {
        return Err(DequantError::PartialBlock {
            n_elements,
            block_elems: layout.block_elems,
        });
    }
    let expected = (n_elements / layout.block_elems).checked_mul(layout.block_bytes);
    if expected != Some(data.len()) {
        return Err(DequantError::WrongLength {
            expected: expected.unwrap_or(usize::MAX),
            found: data.len(),
        });
    }
    match ggml_type {
        GGML_TYPE_F32 => decode_elems::<4>(data, out, |b| f32::from_le_bytes(*b)),
        GGML_TYPE_F16 => decode_elems::<2>(data, out, |b| f16::from_le_bytes(*b).to_f32()),
        GGML_TYPE_BF16 => decode_elems::<2>(data, out, |b| bf16::from_le_bytes(*b).to_f32()),
        GGML_TYPE_Q4_0 => decode_blocks::<18, 32>(data, out, q4_0),
        GGML_TYPE_Q4_1 => decode_blocks::<20, 32>(data, out, q4_1),
        GGML_TYPE_Q5_0 => decode_blocks::<22, 32>(data, out, q5_0),
        GGML_TYPE_Q5_1 => decode_blocks::<24, 32>(data, out, q5_1),
        GGML_TYPE_Q8_0 => decode_blocks::<34, 32>(data, out, q8_0),
        GGML_TYPE_Q2_K => decode_blocks::<84, QK_K>(data, out, q2_k),
        GGML_TYPE_Q3_K => decode_blocks::<110, QK_K>(data, out, q3_k),
        GGML_TYPE_Q4_K => decode_blocks::<144, QK_K>(data, out, q4_k),
        GGML_TYPE_Q5_K => decode_blocks::<176, QK_K>(data, out, q5_k),
        GGML_TYPE_Q6_K => decode_blocks::<210, QK_K>(data, out, q6_k),
        GGML_TYPE_Q8_K => decode_blocks::<292, QK_K>(data, out, q8_k),
        _ => return Err(DequantError::Unsupported(ggml_type)),
    }
    Ok(())
}

/// Decode one-element-per-block types. The lengths were checked by the caller, so the two
/// chunk sequences have the same length and no remainder.
fn decode_elems<const B: usize>(data: &[u8], out: &mut [f32], f: impl Fn(&[u8; B]) -> f32) {
    let (elems, _) = data.as_chunks::<B>();
    for (y, b) in out.iter_mut().zip(elems) {
        *y = f(b);
    }
}

/// Decode block types: `B` bytes per block, `N` elements per block.
fn decode_blocks<const B: usize, const N: usize>(
    data: &[u8],
    out: &mut [f32],
    f: impl Fn(&[u8; B], &mut [f32; N]),
) {
    let (blocks, _) = data.as_chunks::<B>();
    let (outs, _) = out.as_chunks_mut::<N>();
    for (b, y) in blocks.iter().zip(outs.iter_mut()) {
        f(b, y);
    }
}

/// The `f16` stored little-endian at `at`, as `f32`.
#[inline(always)]
fn f16_at<const B: usize>(b: &[u8; B], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// `Q4_0`: `f16 d; u8 qs[16]`. Low nibble of `qs[j]` is element `j`, high nibble element
/// `j + 16`; `w = (q - 8) * d`.
fn q4_0(b: &[u8; 18], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    for j in 0..16 {
        let q = b[2 + j];
        y[j] = ((q & 0x0F) as i32 - 8) as f32 * d;
        y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

/// `Q4_1`: `f16 d; f16 m; u8 qs[16]`, nibbles as in `Q4_0`; `w = q * d + m`.
fn q4_1(b: &[u8; 20], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    for j in 0..16 {
        let q = b[4 + j];
        y[j] = (q & 0x0F) as f32 * d + m;
        y[j + 16] = (q >> 4) as f32 * d + m;
    }
}

/// `Q5_0`: `f16 d; u8 qh[4]; u8 qs[16]`. Bit `j` of the little-endian `qh` is the fifth bit of
/// element `j` (`j < 32`); `w = (q - 16) * d`.
fn q5_0(b: &[u8; 22], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for j in 0..16 {
        let q = b[6 + j];
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        y[j] = (((q & 0x0F) as u32 | h0) as i32 - 16) as f32 * d;
        y[j + 16] = (((q >> 4) as u32 | h1) as i32 - 16) as f32 * d;
    }
}

/// `Q5_1`: `f16 d; f16 m; u8 qh[4]; u8 qs[16]`, bits as in `Q5_0`; `w = q * d + m`.
fn q5_1(b: &[u8; 24], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    let m = f16_at(b, 2);
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for j in 0..16 {
        let q = b[8 + j];
        let h0 = ((qh >> j) << 4) & 0x10;
        let h1 = (qh >> (j + 12)) & 0x10;
        y[j] = ((q & 0x0F) as u32 | h0) as f32 * d + m;
        y[j + 16] = ((q >> 4) as u32 | h1) as f32 * d + m;
    }
}

/// `Q8_0`: `f16 d; i8 qs[32]`; `w = q * d`.
fn q8_0(b: &[u8; 34], y: &mut [f32; 32]) {
    let d = f16_at(b, 0);
    for j in 0..32 {
        y[j] = (b[2 + j] as i8) as f32 * d;
    }
}

/// `Q2_K`: `u8 scales[16]; u8 qs[64]; f16 d; f16 dmin`. Sixteen sub-blocks of 16; each scale
/// byte holds a 4-bit scale (low) and a 4-bit minimum (high); `w = d*sc * q - dmin*m`.
fn q2_k(b: &[u8; 84], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 80);
    let dmin = f16_at(b, 82);
    let mut out = 0;
    let mut is = 0;
    // Two halves of 128 elements, each using 32 bytes of `qs` four times (one 2-bit field per pass).
    for half in 0..2 {
        let q = 16 + 32 * half;
        for shift in [0u32, 2, 4, 6] {
            for sub in 0..2 {
                let sc = b[is];
                is += 1;
                let dl = d * (sc & 0x0F) as f32;
                let ml = dmin * (sc >> 4) as f32;
                for l in 0..16 {
                    let v = (b[q + 16 * sub + l] >> shift) & 3;
                    y[out] = dl * v as f32 - ml;
                    out += 1;
                }
            }
        }
    }
}

/// The sixteen signed 6-bit scales of a `Q3_K` block, unpacked from its 12 scale bytes: the low
/// four bits of scale `i` are in byte `i % 8` (low nibble for `i < 8`, high nibble otherwise), the
/// high two bits in byte `8 + i % 4` at bit offset `2 * (i / 4)`; the stored value is offset by 32.
fn q3_k_scales(s: &[u8]) -> [i32; 16] {
    let mut out = [0i32; 16];
    for (i, o) in out.iter_mut().enumerate() {
        let low = if i < 8 { s[i] & 0x0F } else { s[i - 8] >> 4 };
        let high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        *o = (low | (high << 4)) as i32 - 32;
    }
    out
}

/// `Q3_K`: `u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d`. Low two bits from `qs` (as in
/// `Q2_K`), the third bit from `hmask`; a clear `hmask` bit means the value is offset by -4.
fn q3_k(b: &[u8; 110], y: &mut [f32; QK_K]) {
    let d_all = f16_at(b, 108);
    let scales = q3_k_scales(&b[96..108]);
    let mut out = 0;
    let mut is = 0;
    let mut m = 1u8;
    for half in 0..2 {
        let q = 32 + 32 * half;
        for shift in [0u32, 2, 4, 6] {
            for sub in 0..2 {
                let dl = d_all * scales[is] as f32;
                is += 1;
                for l in 0..16 {
                    let low = ((b[q + 16 * sub + l] >> shift) & 3) as i32;
                    let high = if b[16 * sub + l] & m != 0 { 0 } else { 4 };
                    y[out] = dl * (low - high) as f32;
                    out += 1;
                }
            }
            m = m.wrapping_shl(1);
        }
    }
}

/// Scale and minimum `j` (0..8) of a `Q4_K`/`Q5_K` block, packed as 6-bit values in 12 bytes
/// (ggml's `get_scale_min_k4`).
#[inline(always)]
fn scale_min_k4(j: usize, s: &[u8]) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// `Q4_K`: `f16 d; f16 dmin; u8 scales[12]; u8 qs[128]`. Eight sub-blocks of 32; each 32 bytes
/// of `qs` hold two sub-blocks (low nibbles, then high nibbles); `w = d*sc * q - dmin*m`.
fn q4_k(b: &[u8; 144], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 0);
    let min = f16_at(b, 2);
    let scales = &b[4..16];
    for chunk in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let q = 16 + 32 * chunk;
        let base = 64 * chunk;
        for l in 0..32 {
            let v = b[q + l];
            y[base + l] = d1 * (v & 0x0F) as f32 - m1;
            y[base + 32 + l] = d2 * (v >> 4) as f32 - m2;
        }
    }
}

/// `Q5_K`: `f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]`; as `Q4_K` with a fifth bit
/// for element `l` of sub-block `s` at bit `s` of `qh[l]`.
fn q5_k(b: &[u8; 176], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 0);
    let min = f16_at(b, 2);
    let scales = &b[4..16];
    for chunk in 0..4 {
        let (sc1, m1) = scale_min_k4(2 * chunk, scales);
        let (sc2, m2) = scale_min_k4(2 * chunk + 1, scales);
        let (d1, m1) = (d * sc1 as f32, min * m1 as f32);
        let (d2, m2) = (d * sc2 as f32, min * m2 as f32);
        let u1 = 1u8 << (2 * chunk);
        let u2 = 2u8 << (2 * chunk);
        let q = 48 + 32 * chunk;
        let base = 64 * chunk;
        for l in 0..32 {
            let v = b[q + l];
            let h = b[16 + l];
            let hi1 = if h & u1 != 0 { 16 } else { 0 };
            let hi2 = if h & u2 != 0 { 16 } else { 0 };
            y[base + l] = d1 * ((v & 0x0F) + hi1) as f32 - m1;
            y[base + 32 + l] = d2 * ((v >> 4) + hi2) as f32 - m2;
        }
    }
}

/// `Q6_K`: `u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d`. Two halves of 128; in each, element
/// `l + 32k` (k = 0..4) takes its low four bits from `ql` (nibble `k / 2` of byte `l + 32 (k % 2)`)
/// and its high two bits from bits `2k..2k+2` of `qh[l]`; `w = d * scale * (q - 32)`.
fn q6_k(b: &[u8; 210], y: &mut [f32; QK_K]) {
    let d = f16_at(b, 208);
    for half in 0..2 {
        let ql = 64 * half;
        let qh = 128 + 32 * half;
        let sc = 192 + 8 * half;
        let base = 128 * half;
        for l in 0..32 {
            let is = l / 16;
            let h = b[qh + l];
            let q1 = ((b[ql + l] & 0x0F) | ((h & 3) << 4)) as i32 - 32;
            let q2 = ((b[ql + l + 32] & 0x0F) | (((h >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((b[ql + l] >> 4) | (((h >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((b[ql + l + 32] >> 4) | (((h >> 6) & 3) << 4)) as i32 - 32;
            let s = |k: usize| (b[sc + is + k] as i8) as f32;
            y[base + l] = d * s(0) * q1 as f32;
            y[base + l + 32] = d * s(2) * q2 as f32;
            y[base + l + 64] = d * s(4) * q3 as f32;
            y[base + l + 96] = d * s(6) * q4 as f32;
        }
    }
}

/// `Q8_K`: `f32 d; i8 qs[256]; i16 bsums[16]` (the sums are only used by matmuls); `w = d * q`.
fn q8_k(b: &[u8; 292], y: &mut [f32; QK_K]) {
    let d = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    for (j, v) in y.iter_mut().enumerate() {
        *v = d * (b[4 + j] as i8) as f32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_agree_with_supported_types() {
        for t in 0..64 {
            if is_supported(t) {
                assert!(block_layout(t).is_some(), "type {t}");
                assert!(type_name(t).is_some(), "type {t}");
            }
            assert_eq!(
                block_layout(t).is_some(),
                type_name(t).is_some(),
                "type {t}"
            );
        }
    }

    #[test]
    fn wrong_lengths_are_errors() {
        assert_eq!(
            dequantize(GGML_TYPE_Q8_0, &[0; 33], 32),
            Err(DequantError::WrongLength {
                expected: 34,
                found: 33
            })
        );
        assert_eq!(
            dequantize(GGML_TYPE_Q4_K, &[0; 144], 100),
            Err(DequantError::PartialBlock {
                n_elements: 100,
                block_elems: 256
            })
        );
        assert_eq!(dequantize(99, &[], 0), Err(DequantError::Unsupported(99)));
        // A known layout (IQ2_XXS) that this module does not decode.
        assert_eq!(dequantize(16, &[], 0), Err(DequantError::Unsupported(16)));
    }

    #[test]
    fn q3_k_scale_unpacking_matches_ggml_bit_shuffle() {
        // ggml unpacks with 32-bit masks over the 12 bytes; redo it that way and compare.
        let mut s = [0u8; 12];
        let mut x = 0x1234_5678u32;
        for v in s.iter_mut() {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            *v = (x >> 24) as u8;
        }
        let mut aux = [0u32; 4];
        for (i, a) in aux.iter_mut().take(3).enumerate() {
            *a = u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
        }
        let (k1, k2) = (0x0303_0303u32, 0x0f0f_0f0fu32);
        let tmp = aux[2];
        aux[2] = ((aux[0] >> 4) & k2) | (((tmp >> 4) & k1) << 4);
        aux[3] = ((aux[1] >> 4) & k2) | (((tmp >> 6) & k1) << 4);
        aux[0] = (aux[0] & k2) | ((tmp & k1) << 4);
        aux[1] = (aux[1] & k2) | (((tmp >> 2) & k1) << 4);
        let expected: Vec<i32> = aux
            .iter()
            .flat_map(|a| a.to_le_bytes())
            .map(|v| (v as i8) as i32 - 32)
            .collect();
        assert_eq!(q3_k_scales(&s).to_vec(), expected);
    }
}
