//! The storage of a KV buffer's keys or values: floats, or 8-bit integers with a scale per row.
//!
//! 8-bit rows (`q · scale`, the scale of each row of `head_dim` values its largest magnitude
//! / 127) take a quarter of f32's memory, plus 4 bytes per row: what lets exact mode keep a
//! million tokens of chunk caches in this machine's memory. The fused CPU attention reads them as
//! they are (widening tile by tile); burn's operations read them dequantized.

use burn::tensor::{DType, FloatDType, Int, IntDType, Tensor, backend::Backend};

use super::ops::to_f32;

/// Rows `[batch, kv_heads, capacity, head_dim]` of keys or values.
#[derive(Debug, Clone)]
pub(crate) enum Rows<B: Backend> {
    /// In a float dtype.
    Float(Tensor<B, 4>),
    /// `q · scale`: `q` in i8, `scale` `[batch, kv_heads, capacity, 1]` in f32.
    Int8 {
        q: Tensor<B, 4, Int>,
        scale: Tensor<B, 4>,
    },
}

impl<B: Backend> Rows<B> {
    /// `x` quantized to 8 bits per value with a scale per row.
    pub(crate) fn quantize(x: Tensor<B, 4>) -> Self {
        let x = to_f32(x);
        let scale = x
            .clone()
            .abs()
            .max_dim(3)
            .div_scalar(127.0)
            .clamp_min(f32::MIN_POSITIVE);
        let q = (x / scale.clone())
            .round()
            .clamp(-127.0, 127.0)
            .cast(IntDType::I8);
        Self::Int8 { q, scale }
    }

    /// `x` stored as `like` stores its rows (quantized, or cast to its float dtype).
    pub(crate) fn like(like: &Self, x: Tensor<B, 4>) -> Self {
        match like {
            Self::Float(t) if t.dtype() == x.dtype() => Self::Float(x),
            Self::Float(t) => Self::Float(cast(x, t.dtype())),
            Self::Int8 { .. } => Self::quantize(x),
        }
    }

    /// `x` stored in `dtype`: a float dtype (a cast), or [`DType::I8`] (8 bits per value and a
    /// scale per row).
    pub(crate) fn stored_as(x: Tensor<B, 4>, dtype: DType) -> Self {
        match dtype {
            DType::I8 => Self::quantize(x),
            d if d == x.dtype() => Self::Float(x),
            d => Self::Float(cast(x, d)),
        }
    }

    /// Positions held (spare capacity included).
    pub(crate) fn capacity(&self) -> usize {
        match self {
            Self::Float(t) => t.dims()[2],
            Self::Int8 { q, .. } => q.dims()[2],
        }
    }

    /// The dtype of the stored values (`I8` for 8-bit rows).
    pub(crate) fn dtype(&self) -> DType {
        match self {
            Self::Float(t) => t.dtype(),
            Self::Int8 { .. } => DType::I8,
        }
    }

    /// Bytes allocated.
    pub(crate) fn size_bytes(&self) -> usize {
        match self {
            Self::Float(t) => t.shape().num_elements() * t.dtype().size(),
            Self::Int8 { q, scale } => {
                q.shape().num_elements() + scale.shape().num_elements() * DType::F32.size()
            }
        }
    }

    /// The first `len` positions (views).
    pub(crate) fn prefix(&self, len: usize) -> Self {
        if len == self.capacity() {
            return self.clone();
        }
        match self {
            Self::Float(t) => Self::Float(t.clone().narrow(2, 0, len)),
            Self::Int8 { q, scale } => Self::Int8 {
                q: q.clone().narrow(2, 0, len),
                scale: scale.clone().narrow(2, 0, len),
            },
        }
    }

    /// The values as floats (8-bit rows dequantized to f32, a copy).
    pub(crate) fn float(self) -> Tensor<B, 4> {
        match self {
            Self::Float(t) => t,
            Self::Int8 { q, scale } => q.cast(FloatDType::F32) * scale,
        }
    }

    /// These rows in the first positions of new storage of `capacity` positions.
    pub(crate) fn with_capacity(self, capacity: usize) -> Self {
        match self {
            Self::Float(t) => Self::Float(float_with_capacity(t, capacity)),
            Self::Int8 { q, scale } => Self::Int8 {
                q: int_with_capacity(q, capacity),
                scale: float_with_capacity(scale, capacity),
            },
        }
    }

    /// These rows stored in `dtype` (a float dtype, or [`DType::I8`] for 8-bit rows) in the first
    /// positions of new storage of `capacity` positions. On flex, f32 rows become f16 or bf16 in
    /// one pass on every core.
    pub(crate) fn cast_with_capacity(self, dtype: DType, capacity: usize) -> Self {
        #[cfg(feature = "cpu")]
        if let Self::Float(t) = &self
            && crate::cpu::is_flex::<B>()
            && let Some(t) = crate::cpu::cast_with_capacity(t, dtype, capacity)
        {
            return Self::Float(t);
        }
        let stored = match dtype {
            d if d == self.dtype() => self,
            d => Self::stored_as(self.float(), d),
        };
        stored.with_capacity(capacity)
    }

    /// These rows with positions `at..at + n` replaced by `value` (stored alike), in place when
    /// the storage is not shared.
    pub(crate) fn write(self, at: usize, value: Self) -> Self {
        match (self, value) {
            (Self::Float(t), Self::Float(v)) => Self::Float(float_write(t, at, v)),
            (Self::Int8 { q, scale }, Self::Int8 { q: vq, scale: vs }) => Self::Int8 {
                q: int_write(q, at, vq),
                scale: float_write(scale, at, vs),
            },
            _ => unreachable!("rows are written as they are stored (see `Rows::like`)"),
        }
    }

    /// These rows, leaving empty ones in their place: the storage then has one owner, so a write
    /// can go in place (a clone would share it and force a copy).
    pub(crate) fn take(&mut self) -> Self {
        let empty = match self {
            Self::Float(t) => Self::Float(Tensor::empty([0, 0, 0, 0], (&t.device(), t.dtype()))),
            Self::Int8 { q, .. } => Self::Int8 {
                q: Tensor::empty([0, 0, 0, 0], &q.device()),
                scale: Tensor::empty([0, 0, 0, 0], &q.device()),
            },
        };
        std::mem::replace(self, empty)
    }
}

/// `x` cast to the float `dtype`, rounded the same way whichever way a row enters a cache: on
/// flex, f32 to f16 or bf16 through `cpu::cast_with_capacity` (to nearest even from the f32
/// value), elsewhere burn's cast.
fn cast<B: Backend>(x: Tensor<B, 4>, dtype: DType) -> Tensor<B, 4> {
    #[cfg(feature = "cpu")]
    if crate::cpu::is_flex::<B>()
        && let Some(t) = crate::cpu::cast_with_capacity(&x, dtype, x.dims()[2])
    {
        return t;
    }
    x.cast(dtype)
}

/// Whether the flex row copies serve `dtype` (the float dtypes of caches; burn's operations do the
/// rest).
#[cfg(feature = "cpu")]
fn flex_rows<B: Backend>(dtype: DType) -> bool {
    crate::cpu::is_flex::<B>() && matches!(dtype, DType::F32 | DType::F16 | DType::BF16)
}

/// `t` `[b, h, len, d]` copied into the first `len` rows of a new `[b, h, capacity, d]` tensor.
fn float_with_capacity<B: Backend>(t: Tensor<B, 4>, capacity: usize) -> Tensor<B, 4> {
    #[cfg(feature = "cpu")]
    if flex_rows::<B>(t.dtype()) {
        return crate::cpu::with_capacity(t, capacity);
    }
    let [b, h, len, d] = t.dims();
    let buffer = Tensor::<B, 4>::zeros([b, h, capacity, d], (&t.device(), t.dtype()));
    buffer.slice_assign([0..b, 0..h, 0..len, 0..d], t)
}

/// As [`float_with_capacity`], for 8-bit rows.
fn int_with_capacity<B: Backend>(t: Tensor<B, 4, Int>, capacity: usize) -> Tensor<B, 4, Int> {
    #[cfg(feature = "cpu")]
    if crate::cpu::is_flex::<B>() {
        return crate::cpu::int_with_capacity(t, capacity);
    }
    let [b, h, len, d] = t.dims();
    let buffer = Tensor::<B, 4, Int>::zeros([b, h, capacity, d], (&t.device(), t.dtype()));
    buffer.slice_assign([0..b, 0..h, 0..len, 0..d], t)
}

/// `buffer` with rows `at..at + n` replaced by `value` `[b, h, n, d]` (same dtype).
fn float_write<B: Backend>(buffer: Tensor<B, 4>, at: usize, value: Tensor<B, 4>) -> Tensor<B, 4> {
    #[cfg(feature = "cpu")]
    if flex_rows::<B>(buffer.dtype()) {
        return crate::cpu::write_rows(buffer, at, value);
    }
    let [b, h, n, d] = value.dims();
    buffer.slice_assign([0..b, 0..h, at..at + n, 0..d], value)
}

/// As [`float_write`], for 8-bit rows.
fn int_write<B: Backend>(
    buffer: Tensor<B, 4, Int>,
    at: usize,
    value: Tensor<B, 4, Int>,
) -> Tensor<B, 4, Int> {
    #[cfg(feature = "cpu")]
    if crate::cpu::is_flex::<B>() {
        return crate::cpu::int_write_rows(buffer, at, value);
    }
    let [b, h, n, d] = value.dims();
    buffer.slice_assign([0..b, 0..h, at..at + n, 0..d], value)
}
