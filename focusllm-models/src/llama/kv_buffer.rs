//! A layer's KV cache with room to grow: new positions are written in place.
//!
//! Growing a cache with `Tensor::cat` copies all of it at every token: at 16K cached positions
//! that copy cost more than the attention that reads the cache. A [`KvBuffer`] holds
//! `[batch, kv_heads, capacity, head_dim]` tensors of which the first `len` positions are valid;
//! appending writes the new rows after them (in place on flex when nothing else holds the
//! storage, see `cpu::write_rows`), and the capacity grows geometrically when it runs out.

use burn::tensor::{DType, Tensor, backend::Backend};
use focusllm_core::LayerKv;

/// Keys (rotated) and values of one layer, with spare capacity after the valid positions.
#[derive(Debug, Clone)]
pub struct KvBuffer<B: Backend> {
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    len: usize,
}

/// The capacity for `needed` positions: 32 more and a thirty-second (3% of the memory), so a
/// cache that grows by one position per token is copied once every `32 + needed / 32` tokens
/// (a copy costs about what one attention pass over the cache does).
fn capacity_for(needed: usize) -> usize {
    needed + needed / 32 + 32
}

impl<B: Backend> KvBuffer<B> {
    /// A buffer holding `kv` (its keys already rotated), with no spare capacity yet: the first
    /// append grows it. The tensors are kept as they are (no copy).
    pub fn new(kv: LayerKv<B>) -> Self {
        let len = kv.len();
        Self {
            k: kv.k,
            v: kv.v,
            len,
        }
    }

    /// The first `len` positions of `kv` (keys rotated), with the rest of it as spare capacity
    /// (its contents are overwritten by later appends).
    pub(crate) fn with_prefix(kv: LayerKv<B>, len: usize) -> Self {
        assert!(
            len <= kv.len(),
            "a prefix of {len} of {} positions",
            kv.len()
        );
        Self {
            k: kv.k,
            v: kv.v,
            len,
        }
    }

    /// Number of valid positions.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the buffer can hold before it has to grow.
    pub fn capacity(&self) -> usize {
        self.k.dims()[2]
    }

    /// The dtype the cache is stored in.
    pub fn dtype(&self) -> DType {
        self.k.dtype()
    }

    /// Bytes allocated for keys and values (spare capacity included).
    pub fn size_bytes(&self) -> usize {
        (self.k.shape().num_elements() + self.v.shape().num_elements()) * self.k.dtype().size()
    }

    /// The valid positions (views, no copy while the buffer is not written).
    pub fn view(&self) -> LayerKv<B> {
        if self.len == self.capacity() {
            return LayerKv {
                k: self.k.clone(),
                v: self.v.clone(),
            };
        }
        LayerKv {
            k: self.k.clone().narrow(2, 0, self.len),
            v: self.v.clone().narrow(2, 0, self.len),
        }
    }

    /// Forgets every position from `len` on (their rows become spare capacity).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Appends keys (rotated) and values `[batch, kv_heads, n, head_dim]`, cast to the buffer's
    /// dtype. Views from [`KvBuffer::view`] must be dropped first, or the write copies the buffer.
    pub fn append(&mut self, k: Tensor<B, 4>, v: Tensor<B, 4>) {
        let n = k.dims()[2];
        let needed = self.len + n;
        if needed > self.capacity() {
            self.grow(capacity_for(needed));
        }
        let dtype = self.dtype();
        let cast = |t: Tensor<B, 4>| if t.dtype() == dtype { t } else { t.cast(dtype) };
        let at = self.len;
        self.k = write_rows(take(&mut self.k), at, cast(k));
        self.v = write_rows(take(&mut self.v), at, cast(v));
        self.len = needed;
    }

    /// Makes room for at least `additional` more positions without growing again (one copy now
    /// instead of later, if the capacity is short).
    pub fn reserve(&mut self, additional: usize) {
        if self.len + additional > self.capacity() {
            self.grow(self.len + additional);
        }
    }

    /// Moves the valid positions into a new buffer of `capacity` positions.
    fn grow(&mut self, capacity: usize) {
        let LayerKv { k, v } = self.view();
        self.k = with_capacity(k, capacity);
        self.v = with_capacity(v, capacity);
    }
}

/// `t`, leaving an empty tensor in its place: the buffer's storage then has one owner, so a write
/// can go in place (a clone would share it and force a copy).
fn take<B: Backend>(t: &mut Tensor<B, 4>) -> Tensor<B, 4> {
    let empty = Tensor::empty([0, 0, 0, 0], (&t.device(), t.dtype()));
    std::mem::replace(t, empty)
}

/// `t` `[b, h, len, d]` copied into the first `len` rows of a new `[b, h, capacity, d]` tensor.
fn with_capacity<B: Backend>(t: Tensor<B, 4>, capacity: usize) -> Tensor<B, 4> {
    #[cfg(feature = "cpu")]
    if crate::cpu::is_flex::<B>() {
        return crate::cpu::with_capacity(t, capacity);
    }
    let [b, h, len, d] = t.dims();
    let buffer = Tensor::<B, 4>::zeros([b, h, capacity, d], (&t.device(), t.dtype()));
    buffer.slice_assign([0..b, 0..h, 0..len, 0..d], t)
}

/// `buffer` with rows `at..at + n` replaced by `value` `[b, h, n, d]` (same dtype).
fn write_rows<B: Backend>(buffer: Tensor<B, 4>, at: usize, value: Tensor<B, 4>) -> Tensor<B, 4> {
    #[cfg(feature = "cpu")]
    if crate::cpu::is_flex::<B>() {
        return crate::cpu::write_rows(buffer, at, value);
    }
    let [b, h, n, d] = value.dims();
    buffer.slice_assign([0..b, 0..h, at..at + n, 0..d], value)
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use burn::tensor::{DType, Distribution, Tensor};
    use focusllm_core::LayerKv;

    use super::KvBuffer;

    fn random(len: usize) -> Tensor<Flex, 4> {
        Tensor::random([2, 3, len, 4], Distribution::Default, &Default::default())
    }

    fn assert_same(a: Tensor<Flex, 4>, b: Tensor<Flex, 4>) {
        assert_eq!(a.dims(), b.dims());
        let (a, b) = (
            a.into_data().convert::<f32>(),
            b.into_data().convert::<f32>(),
        );
        assert_eq!(a.to_vec::<f32>().unwrap(), b.to_vec::<f32>().unwrap());
    }

    #[test]
    fn appends_equal_concatenation_across_growth_and_truncation() {
        // Start from a strided view (keys as the projections lay them out), as the model does.
        let start = random(5).swap_dims(1, 2).swap_dims(1, 2);
        let mut buffer = KvBuffer::new(LayerKv {
            k: start.clone(),
            v: start.clone() * 2.0,
        });
        let mut want = start;
        for step in 0..60 {
            let n = 1 + step % 3;
            let new = random(n);
            buffer.append(new.clone(), new.clone() * 2.0);
            want = Tensor::cat(vec![want, new], 2);
            if step % 7 == 3 {
                // A candidate row computed with the cache and then dropped.
                buffer.append(random(1), random(1));
                buffer.truncate(want.dims()[2]);
            }
            let view = buffer.view();
            assert_same(view.k, want.clone());
            assert_same(view.v, want.clone() * 2.0);
        }
        assert!(buffer.capacity() >= buffer.len());
        assert!(buffer.capacity() <= buffer.len() + buffer.len() / 32 + 40);
        let len = buffer.len();
        buffer.reserve(100);
        assert_eq!(buffer.capacity(), len + 100);
        assert_same(buffer.view().k, want);
    }

    #[cfg(feature = "cpu")]
    #[test]
    fn appends_within_capacity_write_in_place() {
        let mut buffer = KvBuffer::new(LayerKv {
            k: random(4),
            v: random(4),
        });
        buffer.append(random(1), random(1));
        let (k, v) = (
            crate::cpu::storage_address(&buffer.k),
            crate::cpu::storage_address(&buffer.v),
        );
        for _ in 0..buffer.capacity() - buffer.len() {
            let view = buffer.view();
            drop(view);
            buffer.append(random(1), random(1));
        }
        assert_eq!(buffer.len(), buffer.capacity());
        assert_eq!(crate::cpu::storage_address(&buffer.k), k);
        assert_eq!(crate::cpu::storage_address(&buffer.v), v);
    }

    #[test]
    fn appends_keep_the_buffer_dtype_and_survive_shared_views() {
        let start = random(3).cast(DType::F16);
        let mut buffer = KvBuffer::new(LayerKv {
            k: start.clone(),
            v: start.clone(),
        });
        buffer.append(random(2), random(2));
        let held = buffer.view();
        let before = held.k.clone().into_data().convert::<f32>();
        // A view still alive while the buffer is written: it must keep its values.
        buffer.append(random(1), random(1));
        assert_eq!(buffer.dtype(), DType::F16);
        assert_eq!(buffer.len(), 6);
        assert_eq!(
            held.k.into_data().convert::<f32>().to_vec::<f32>().unwrap(),
            before.to_vec::<f32>().unwrap()
        );
    }
}
