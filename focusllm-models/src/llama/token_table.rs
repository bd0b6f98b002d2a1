//! The token embedding table `[vocab, hidden]`, which a model with tied embeddings also reads as
//! its LM head: dense, or a GGUF's quantized blocks kept as stored (see
//! [`crate::LoadOptions::keep_quantized`]).

use std::marker::PhantomData;

use burn::module::{Module, Param};
use burn::tensor::module::embedding;
use burn::tensor::{Int, Tensor, TensorData, backend::Backend};

use super::ops;
use crate::quantized::QuantizedMatrix;

/// A token table kept in its quantized blocks: a lookup decodes the rows it reads, the tied LM
/// head multiplies the blocks directly.
#[derive(Module, Debug)]
pub struct QuantizedTable<B: Backend> {
    /// The table `[vocab, hidden]`, as stored.
    #[module(skip)]
    pub table: QuantizedMatrix,
    _backend: PhantomData<B>,
}

/// The token embedding table `[vocab, hidden]`.
#[derive(Module, Debug)]
pub enum TokenTable<B: Backend> {
    /// Dense (any backend and dtype).
    Dense(Param<Tensor<B, 2>>),
    /// A GGUF's quantized table, as stored (flex backend, f32 compute).
    Quantized(QuantizedTable<B>),
}

impl<B: Backend> TokenTable<B> {
    /// A quantized table.
    pub fn quantized(table: QuantizedMatrix) -> Self {
        Self::Quantized(QuantizedTable {
            table,
            _backend: PhantomData,
        })
    }

    /// `[vocab, hidden]`.
    pub fn dims(&self) -> [usize; 2] {
        match self {
            Self::Dense(p) => p.dims(),
            Self::Quantized(q) => [q.table.rows(), q.table.cols()],
        }
    }

    /// The embeddings of `ids` `[batch, seq]`: `[batch, seq, hidden]`, in the table's dtype (f32
    /// for a quantized table).
    ///
    /// # Panics
    /// If an id is outside the vocabulary (the engine refuses such ids with a typed error first).
    pub fn lookup(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        match self {
            Self::Dense(p) => embedding(p.val(), ids),
            Self::Quantized(q) => {
                let [batch, seq] = ids.dims();
                let device = ids.device();
                let hidden = q.table.cols();
                let ids: Vec<i64> = ids
                    .into_data()
                    .convert::<i64>()
                    .into_vec()
                    .expect("integer ids");
                let mut out = vec![0.0f32; ids.len() * hidden];
                for (&id, row) in ids.iter().zip(out.chunks_exact_mut(hidden.max(1))) {
                    let vocab = q.table.rows();
                    let id = usize::try_from(id)
                        .ok()
                        .filter(|&i| i < vocab)
                        .unwrap_or_else(|| {
                            panic!("token id {id} outside the vocabulary ({vocab})")
                        });
                    q.table.decode_rows(id, row);
                }
                Tensor::from_data(TensorData::new(out, [batch, seq, hidden]), &device)
            }
        }
    }

    /// `x` `[b, k, hidden]` times the table transposed: the logits `[b, k, vocab]` of a tied
    /// LM head. `fused`: see [`crate::kernels::fused`].
    pub(crate) fn logits(&self, x: Tensor<B, 3>, fused: bool) -> Tensor<B, 3> {
        let [b, k, hidden] = x.dims();
        match self {
            Self::Dense(p) => {
                // `x · embedᵀ` makes CPU backends copy the transposed table (113 MB for SmolLM2)
                // at every call, which dominated short-context generation. For the few rows of
                // decoding steps the product is taken the other way round, `embed · xᵀ`, reading
                // the table as stored; only the small result is transposed. Many rows
                // (perplexity) keep the direct product, whose copy is then amortised.
                let embed = p.val();
                if b * k > 64 {
                    return x.matmul(embed.transpose().unsqueeze::<3>());
                }
                let vocab = embed.dims()[0];
                ops::matmul(embed, x.reshape([b * k, hidden]).transpose(), fused)
                    .transpose()
                    .reshape([b, k, vocab])
            }
            Self::Quantized(q) => {
                let vocab = q.table.rows();
                super::projection::quantized_product(x.reshape([b * k, hidden]), &q.table, false)
                    .reshape([b, k, vocab])
            }
        }
    }
}
