//! Row copies for KV buffers on flex: growing a buffer and writing new positions in place.

use burn::tensor::{Element, TensorData};
use burn_flex::FlexTensor;
use rayon::prelude::*;

/// The storage offset of row `[i, h, r, 0]` of a 4-d tensor with a unit inner stride.
fn row_at(t: &FlexTensor, i: usize, h: usize, r: usize) -> usize {
    let s = t.layout().strides();
    let stride = |k: usize| usize::try_from(s[k]).expect("KV tensors have positive strides");
    t.layout().start_offset() + i * stride(0) + h * stride(1) + r * stride(2)
}

/// Values from which a copy splits its rows across rayon's pool (128 KiB of f32).
const PARALLEL_FROM: usize = 1 << 15;

/// `t` `[b, h, len, d]` (unit inner stride) in the first `len` rows of a new `[b, h, capacity, d]`.
pub(super) fn with_capacity<E: Element + bytemuck::Pod>(
    t: &FlexTensor,
    capacity: usize,
) -> FlexTensor {
    with_capacity_as::<E, E>(t, capacity, |src, dst| dst.copy_from_slice(src))
}

/// [`with_capacity`] into elements of `D`, each row converted by `convert` from `t`'s `S`: a
/// cache cast and given room in one pass (rows split across rayon's pool).
pub(super) fn with_capacity_as<S: Element + bytemuck::Pod, D: Element + bytemuck::Pod>(
    t: &FlexTensor,
    capacity: usize,
    convert: impl Fn(&[S], &mut [D]) + Sync,
) -> FlexTensor {
    let shape = t.layout().shape();
    let [b, h, len, d] = [shape[0], shape[1], shape[2], shape[3]];
    assert!(len <= capacity, "{len} rows into a capacity of {capacity}");
    let src = t.storage::<S>();
    let mut out = vec![D::zeroed(); b * h * capacity * d];
    let fill = |(row, dst): (usize, &mut [D])| {
        let (i, head) = (row / h, row % h);
        for r in 0..len {
            let at = row_at(t, i, head, r);
            convert(&src[at..at + d], &mut dst[r * d..(r + 1) * d]);
        }
    };
    // A step's new rows (a few hundred values) are done before the pool would wake.
    if b * h * len * d < PARALLEL_FROM {
        out.chunks_mut(capacity * d).enumerate().for_each(fill);
    } else {
        out.par_chunks_mut(capacity * d).enumerate().for_each(fill);
    }
    FlexTensor::from_data(TensorData::new(out, [b, h, capacity, d]))
}

/// Writes `value` `[b, h, n, d]` (unit inner stride) into rows `at..at + n` of `buffer`, which
/// becomes contiguous and unshared first if it is not (a copy: the values other holders of its
/// storage see stay as they were).
pub(super) fn write_rows<E: Element + bytemuck::Pod>(
    buffer: &mut FlexTensor,
    at: usize,
    value: &FlexTensor,
) {
    let owned_whole = buffer.is_contiguous()
        && buffer.layout().start_offset() == 0
        && buffer.bytes().len() == buffer.layout().num_elements() * size_of::<E>();
    if !owned_whole {
        *buffer = buffer.to_contiguous();
    }
    let shape = buffer.layout().shape();
    let [b, h, capacity, d] = [shape[0], shape[1], shape[2], shape[3]];
    let vs = value.layout().shape();
    let n = vs[2];
    assert!(
        [vs[0], vs[1], vs[3]] == [b, h, d] && at + n <= capacity,
        "rows {at}..{} of {vs:?} into [{b}, {h}, {capacity}, {d}]",
        at + n
    );
    let src = value.storage::<E>();
    // Copy on write when the storage is shared (`Arc::make_mut`), in place otherwise.
    let dst = buffer.storage_mut::<E>();
    for row in 0..b * h {
        let (i, head) = (row / h, row % h);
        for r in 0..n {
            let from = row_at(value, i, head, r);
            let to = (row * capacity + at + r) * d;
            dst[to..to + d].copy_from_slice(&src[from..from + d]);
        }
    }
}
