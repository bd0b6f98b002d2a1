//! Reading flex tensors in place: a 4-d f32 view over their storage.

use burn_flex::FlexTensor;

/// `t`, with a unit stride along its last dimension (a copy only when it has none).
pub(super) fn inner_contiguous(t: &FlexTensor) -> FlexTensor {
    if t.layout().strides().last() == Some(&1) {
        t.clone()
    } else {
        t.to_contiguous()
    }
}

/// A 4-d f32 view: storage, start offset and strides (the last one 1).
pub(super) struct View<'a> {
    pub(super) data: &'a [f32],
    start: usize,
    pub(super) strides: [usize; 3],
}

impl<'a> View<'a> {
    pub(super) fn new(t: &'a FlexTensor) -> Self {
        let s = t.layout().strides();
        let stride = |i: usize| usize::try_from(s[i]).expect("kernel inputs have positive strides");
        Self {
            data: t.storage::<f32>(),
            start: t.layout().start_offset(),
            strides: [stride(0), stride(1), stride(2)],
        }
    }

    /// The element offset of `[i0, i1, i2, 0]`.
    pub(super) fn at(&self, i0: usize, i1: usize, i2: usize) -> usize {
        self.start + i0 * self.strides[0] + i1 * self.strides[1] + i2 * self.strides[2]
    }
}
