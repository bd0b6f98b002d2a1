//! A layer's KV cache with room to grow: new positions are written in place.
//!
//! Growing a cache with `Tensor::cat` copies all of it at every token: at 16K cached positions
//! that copy cost more than the attention that reads the cache. A [`KvBuffer`] holds
//! `[batch, kv_heads, capacity, head_dim]` tensors of which the first `len` positions are valid;
//! appending writes the new rows after them (in place on flex when nothing else holds the
//! storage, see `cpu::write_rows`), and the capacity grows geometrically when it runs out.

use burn::tensor::{DType, Int, Tensor, backend::Backend};
use focusllm_core::LayerKv;

use super::kv_rows::Rows;

/// Keys (rotated) and values of one layer, with spare capacity after the valid positions.
#[derive(Debug, Clone)]
pub struct KvBuffer<B: Backend> {
    k: Rows<B>,
    v: Rows<B>,
    len: usize,
}

/// What attention reads from a buffer: float keys and values, or 8-bit ones with their scales
/// (`[batch, kv_heads, len, 1]`), which only the fused CPU kernel reads as they are.
pub(crate) enum CacheRead<B: Backend> {
    Float(LayerKv<B>),
    // Read raw only by the fused kernel (feature `cpu`).
    #[cfg_attr(not(feature = "cpu"), allow(dead_code))]
    Int8 {
        k: (Tensor<B, 4, Int>, Tensor<B, 4>),
        v: (Tensor<B, 4, Int>, Tensor<B, 4>),
    },
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
            k: Rows::Float(kv.k),
            v: Rows::Float(kv.v),
            len,
        }
    }

    /// A buffer holding `kv` stored in `dtype`: a float dtype (a cast), or [`DType::I8`] (8 bits
    /// per value and an f32 scale per row of `head_dim`: a quarter of f32's memory).
    pub fn stored_as(kv: LayerKv<B>, dtype: DType) -> Self {
        let len = kv.len();
        Self {
            k: Rows::stored_as(kv.k, dtype),
            v: Rows::stored_as(kv.v, dtype),
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
        self.k.capacity()
    }

    /// The dtype the cache is stored in (`I8` for 8-bit rows).
    pub fn dtype(&self) -> DType {
        self.k.dtype()
    }

    /// Bytes allocated for keys and values (spare capacity and scales included).
    pub fn size_bytes(&self) -> usize {
        self.k.size_bytes() + self.v.size_bytes()
    }

    /// The valid positions as floats: views while the buffer is not written, or a dequantized
    /// f32 copy of 8-bit rows.
    pub fn view(&self) -> LayerKv<B> {
        LayerKv {
            k: self.k.prefix(self.len).float(),
            v: self.v.prefix(self.len).float(),
        }
    }

    /// The valid positions as attention reads them: 8-bit rows stay 8-bit when `raw_int8`.
    pub(crate) fn read(&self, raw_int8: bool) -> CacheRead<B> {
        match (self.k.prefix(self.len), self.v.prefix(self.len)) {
            (Rows::Int8 { q: kq, scale: ks }, Rows::Int8 { q: vq, scale: vs }) if raw_int8 => {
                CacheRead::Int8 {
                    k: (kq, ks),
                    v: (vq, vs),
                }
            }
            (k, v) => CacheRead::Float(LayerKv {
                k: k.float(),
                v: v.float(),
            }),
        }
    }

    /// Forgets every position from `len` on (their rows become spare capacity).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Appends keys (rotated) and values `[batch, kv_heads, n, head_dim]`, stored as the buffer
    /// stores its rows. Views from [`KvBuffer::view`] must be dropped first, or the write copies
    /// the buffer.
    pub fn append(&mut self, k: Tensor<B, 4>, v: Tensor<B, 4>) {
        let n = k.dims()[2];
        let needed = self.len + n;
        if needed > self.capacity() {
            self.grow(capacity_for(needed));
        }
        let at = self.len;
        let (k, v) = (Rows::like(&self.k, k), Rows::like(&self.v, v));
        self.k = self.k.take().write(at, k);
        self.v = self.v.take().write(at, v);
        self.len = needed;
    }

    /// Makes room for at least `additional` more positions without growing again (one copy now
    /// instead of later, if the capacity is short), with the usual spare room after them.
    pub fn reserve(&mut self, additional: usize) {
        let needed = self.len + additional;
        if needed > self.capacity() {
            self.grow(capacity_for(needed));
        }
    }

    /// Stores the valid positions in `dtype` (as [`KvBuffer::stored_as`] stores them), with room
    /// for `additional` more (and the usual spare room after them): one new copy, written on
    /// every core on the CPU backend.
    pub(crate) fn convert(&mut self, dtype: DType, additional: usize) {
        let capacity = capacity_for(self.len + additional);
        self.k = self.k.prefix(self.len).cast_with_capacity(dtype, capacity);
        self.v = self.v.prefix(self.len).cast_with_capacity(dtype, capacity);
    }

    /// Moves the valid positions into new storage of `capacity` positions.
    fn grow(&mut self, capacity: usize) {
        self.k = self.k.prefix(self.len).with_capacity(capacity);
        self.v = self.v.prefix(self.len).with_capacity(capacity);
    }
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
        assert_eq!(buffer.capacity(), len + 100 + (len + 100) / 32 + 32);
        let capacity = buffer.capacity();
        buffer.reserve(capacity - len);
        assert_eq!(buffer.capacity(), capacity, "room enough: no growth");
        assert_same(buffer.view().k, want);
    }

    #[test]
    fn eight_bit_rows_stay_within_half_a_step_of_each_row_and_grow_like_floats() {
        let start = random(5);
        let mut buffer = KvBuffer::stored_as(
            LayerKv {
                k: start.clone(),
                v: start.clone() * -3.0,
            },
            DType::I8,
        );
        let mut want = start;
        for step in 0..40 {
            let new = random(1 + step % 2);
            buffer.append(new.clone(), new.clone() * -3.0);
            want = Tensor::cat(vec![want, new], 2);
        }
        assert_eq!(buffer.dtype(), DType::I8);
        let view = buffer.view();
        for (got, want) in [(view.k, want.clone()), (view.v, want * -3.0)] {
            // Each row is within half a quantization step (its largest magnitude / 254).
            let step = want.clone().abs().max_dim(3) / 254.0;
            let excess = ((got - want).abs() - step * 1.0001).max().into_scalar();
            assert!(excess <= 0.0, "error beyond half a step by {excess}");
        }
        // One byte per value (head_dim 4 here) and a 4-byte scale per row, for keys and values.
        let rows = 2 * 3 * buffer.capacity();
        assert_eq!(buffer.size_bytes(), 2 * (rows * 4 + rows * 4));
    }

    #[test]
    fn a_conversion_stores_what_a_cast_stores_with_room_for_what_follows() {
        // A strided start (as the projections lay keys out: `[b, s, h, d]` with the heads moved
        // forward) with spare rows past `len`.
        let start =
            Tensor::<Flex, 4>::random([2, 9, 3, 4], Distribution::Default, &Default::default())
                .swap_dims(1, 2);
        for dtype in [DType::F16, DType::BF16, DType::I8, DType::F32] {
            let mut buffer = KvBuffer::new(LayerKv {
                k: start.clone(),
                v: start.clone() * 2.0,
            });
            buffer.truncate(7);
            let kept = buffer.view();
            let want = KvBuffer::stored_as(kept, dtype).view();
            buffer.convert(dtype, 5);
            assert_eq!((buffer.dtype(), buffer.len()), (dtype, 7));
            // 7 kept + 5 more, and the spare room: 32 and a thirty-second (none at 12).
            assert_eq!(buffer.capacity(), 12 + 32);
            let got = buffer.view();
            assert_same(got.k, want.k.clone());
            assert_same(got.v, want.v);
            // The room is used in place of a growth, and the rows stay as they were.
            let capacity = buffer.capacity();
            buffer.append(random(5), random(5));
            assert_eq!(buffer.capacity(), capacity);
            assert_same(buffer.view().k.narrow(2, 0, 7), want.k);
        }
    }

    #[test]
    fn rows_converted_and_rows_appended_round_alike() {
        // 1.0039064 (`0x3F808001`) lies just above halfway between two bf16 values: rounded to
        // nearest it is `0x3F81`. A cache's converted rows and its appended rows must agree.
        let value = f32::from_bits(0x3F80_8001);
        let row = || Tensor::<Flex, 4>::full([1, 1, 1, 4], value, &Default::default());
        for (dtype, want) in [
            (DType::BF16, 0x3F81u16),
            (DType::F16, half::f16::from_f32(value).to_bits()),
        ] {
            let mut buffer = KvBuffer::new(LayerKv { k: row(), v: row() });
            buffer.convert(dtype, 1);
            buffer.append(row(), row());
            // Both dtypes are 16 bits: the stored bits as they lie.
            let data = buffer.view().k.into_data();
            let bits: Vec<u16> = data
                .as_bytes()
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect();
            assert_eq!(bits, vec![want; 8], "{dtype:?}");
        }
    }

    #[cfg(feature = "cpu")]
    #[test]
    fn appends_within_capacity_write_in_place() {
        let mut buffer = KvBuffer::new(LayerKv {
            k: random(4),
            v: random(4),
        });
        buffer.append(random(1), random(1));
        let address = |rows: &super::Rows<Flex>| match rows {
            super::Rows::Float(t) => crate::cpu::storage_address(t),
            super::Rows::Int8 { .. } => unreachable!("float rows"),
        };
        let (k, v) = (address(&buffer.k), address(&buffer.v));
        for _ in 0..buffer.capacity() - buffer.len() {
            let view = buffer.view();
            drop(view);
            buffer.append(random(1), random(1));
        }
        assert_eq!(buffer.len(), buffer.capacity());
        assert_eq!(address(&buffer.k), k);
        assert_eq!(address(&buffer.v), v);
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
