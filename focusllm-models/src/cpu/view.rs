//! Reading flex tensors in place: 4-d views over their storage.

use burn::tensor::{DType, Element};
use burn_flex::FlexTensor;
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};

/// `t`, with a unit stride along its last dimension (a copy only when it has none).
pub(super) fn inner_contiguous(t: &FlexTensor) -> FlexTensor {
    if t.layout().strides().last() == Some(&1) {
        t.clone()
    } else {
        t.to_contiguous()
    }
}

/// A 4-d view: storage, start offset and strides (the last one 1).
pub(super) struct View<'a, E = f32> {
    pub(super) data: &'a [E],
    start: usize,
    pub(super) strides: [usize; 3],
}

impl<'a, E: Element + bytemuck::Pod> View<'a, E> {
    pub(super) fn new(t: &'a FlexTensor) -> Self {
        let s = t.layout().strides();
        let stride = |i: usize| usize::try_from(s[i]).expect("kernel inputs have positive strides");
        Self {
            data: t.storage::<E>(),
            start: t.layout().start_offset(),
            strides: [stride(0), stride(1), stride(2)],
        }
    }

    /// The element offset of `[i0, i1, i2, 0]`.
    pub(super) fn at(&self, i0: usize, i1: usize, i2: usize) -> usize {
        self.start + i0 * self.strides[0] + i1 * self.strides[1] + i2 * self.strides[2]
    }

    /// Rows `j0..j0 + n` (`n > 0`) of `(b, h)` as stored: from the first row's start to the
    /// last row's `dim`-th element, and the distance between rows.
    fn rows_in_place(
        &self,
        b: usize,
        h: usize,
        j0: usize,
        n: usize,
        dim: usize,
    ) -> (&'a [E], usize) {
        let (at, row) = (self.at(b, h, j0), self.strides[2]);
        (&self.data[at..at + (n - 1) * row + dim], row)
    }
}

/// Keys or values `[batch, kv_heads, keys, dim]` in f32, or in a compact cache's f16 or bf16,
/// read as f32 rows: in place for f32, converted tile by tile otherwise (so a compact cache is
/// never widened whole).
pub(super) enum KvView<'a> {
    F32(View<'a, f32>),
    F16(View<'a, f16>),
    BF16(View<'a, bf16>),
    /// 8-bit values and the f32 scale of each row (`[batch, kv_heads, keys, 1]`).
    Int8(View<'a, i8>, View<'a, f32>),
}

impl<'a> KvView<'a> {
    /// A view of `t`, whose rows are scaled by `scale` when it is 8-bit.
    pub(super) fn new(t: &'a FlexTensor, scale: Option<&'a FlexTensor>) -> Self {
        match t.dtype() {
            DType::I8 => Self::Int8(
                View::new(t),
                View::new(scale.expect("8-bit rows come with their scales")),
            ),
            DType::F32 => Self::F32(View::new(t)),
            DType::F16 => Self::F16(View::new(t)),
            DType::BF16 => Self::BF16(View::new(t)),
            other => unreachable!("keys and values are float tensors, not {other:?}"),
        }
    }

    /// Rows `j0..j0 + n` of `(b, h)` of an `f16` view as they are stored (the values from the
    /// first row's to the last row's end, and the distance between rows); `None` for other
    /// element types, or when `n` is 0.
    pub(super) fn f16_rows(
        &self,
        b: usize,
        h: usize,
        j0: usize,
        n: usize,
        dim: usize,
    ) -> Option<(&[f16], usize)> {
        match self {
            Self::F16(view) if n > 0 => Some(view.rows_in_place(b, h, j0, n, dim)),
            _ => None,
        }
    }

    /// Rows `j0..j0 + n` of `(b, h)` as f32 (each `dim` long): the values from the first row's
    /// to the last row's end, and the distance between rows; in the tensor (f32) or in
    /// `scratch` (converted). Empty when `n` is 0.
    pub(super) fn rows<'s>(
        &'s self,
        b: usize,
        h: usize,
        j0: usize,
        n: usize,
        dim: usize,
        scratch: &'s mut Vec<f32>,
    ) -> (&'s [f32], usize) {
        fn convert<'s, E: Element + bytemuck::Pod>(
            view: &View<'_, E>,
            at: usize,
            n: usize,
            dim: usize,
            scratch: &'s mut Vec<f32>,
            widen: impl Fn(&[E], &mut [f32]),
        ) -> (&'s [f32], usize) {
            scratch.resize(n * dim, 0.0);
            for (r, dst) in scratch.chunks_exact_mut(dim).enumerate() {
                widen(&view.data[at + r * view.strides[2]..][..dim], dst);
            }
            (scratch, dim)
        }
        if n == 0 {
            return (&[], dim);
        }
        match self {
            Self::F32(view) => view.rows_in_place(b, h, j0, n, dim),
            Self::F16(view) => convert(view, view.at(b, h, j0), n, dim, scratch, |s, d| {
                s.convert_to_f32_slice(d)
            }),
            Self::BF16(view) => convert(view, view.at(b, h, j0), n, dim, scratch, |s, d| {
                s.convert_to_f32_slice(d)
            }),
            Self::Int8(view, scales) => {
                scratch.resize(n * dim, 0.0);
                for (r, dst) in scratch.chunks_exact_mut(dim).enumerate() {
                    let scale = scales.data[scales.at(b, h, j0 + r)];
                    let src = &view.data[view.at(b, h, j0 + r)..][..dim];
                    for (d, &s) in dst.iter_mut().zip(src) {
                        *d = f32::from(s) * scale;
                    }
                }
                (scratch, dim)
            }
        }
    }
}
