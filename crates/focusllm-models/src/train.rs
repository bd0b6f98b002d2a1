//! Training the candidate parameters of a Llama-architecture model (feature `train`).
//!
//! A chunk's raw cache depends on the frozen base alone: nothing before the candidate (the last
//! position) attends to it. So each example runs
//! 1. the chunk passes without autodiff, on the inner backend, batched (`chunk ++ prompt`, minus the
//!    candidate);
//! 2. the candidate position of every chunk with the trainable projections, one token attending to
//!    its chunk's cache;
//! 3. the main pass over the local context and the targets, with the candidates as its past;
//!
//! and back-propagates through 2 and 3 only. The numbers are those of the inference passes
//! (`decode_chunks` and `decode_main`), which the tests check.

use burn::module::{AutodiffModule, Module};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::{Int, Tensor, TensorData};
use focusllm_core::train::{CandidateTrainer, ExampleLoss, TextEncoder, TrainExample};
use focusllm_core::{FocusError, LayerKv, MainDecoder, ModelSpec, Result, check_vocab};

use crate::adapter::CandidateAdapter;
use crate::focus::{PaddedRows, left_padded};
use crate::llama::{ForwardInput, LlamaModel, PastKeys};
use crate::tokenizer::Tokenizer;

/// A frozen Llama model whose candidate parameters a [`focusllm_core::train::Trainer`] trains
/// (as a [`CandidateAdapter`]).
#[derive(Debug)]
pub struct LlamaTrainer<B: AutodiffBackend> {
    model: LlamaModel<B>,
    inner: LlamaModel<B::InnerBackend>,
}

impl<B: AutodiffBackend> LlamaTrainer<B> {
    /// Freezes `model` (no parameter of it requires gradients).
    pub fn new(model: LlamaModel<B>) -> Self {
        let model = model.no_grad();
        let inner = model.valid();
        Self { model, inner }
    }

    /// The frozen base model.
    pub fn model(&self) -> &LlamaModel<B> {
        &self.model
    }
}

impl<B: AutodiffBackend> CandidateTrainer<B> for LlamaTrainer<B> {
    type Params = CandidateAdapter<B>;

    fn spec(&self) -> ModelSpec {
        self.model.spec()
    }

    fn example_loss(
        &self,
        params: &CandidateAdapter<B>,
        ex: &TrainExample,
    ) -> Result<ExampleLoss<B>> {
        let vocab = self.model.config().vocab_size;
        check_vocab(&ex.ids, vocab)?;
        check_vocab(&ex.targets, vocab)?;
        let plan = &ex.plan;
        if plan.chunks.is_empty() || ex.targets.is_empty() || plan.prompt.is_empty() {
            return Err(FocusError::Decoder(
                "a training example needs memory chunks, a prompt and targets".into(),
            ));
        }
        let chunks = plan.chunks.len();

        // 1. Raw caches of `chunk ++ prompt` without its last token, left-padded to one length.
        let contexts: Vec<Vec<u32>> = (0..chunks)
            .map(|j| {
                let mut s = plan.chunk_sequence(&ex.ids, j);
                s.pop();
                s
            })
            .collect();
        let PaddedRows {
            rows,
            positions,
            left_pad: pads,
            ..
        } = left_padded(contexts.iter().map(Vec::as_slice));
        let raw_out = self.inner.forward(ForwardInput {
            ids: self.inner.ids_tensor(&rows),
            positions: &positions,
            past: None,
            left_pad: Some(&pads),
            candidate_last: false,
            logits_last: 0,
        });
        let raw: Vec<LayerKv<B>> = raw_out
            .kv
            .into_iter()
            .map(|kv| LayerKv {
                k: Tensor::from_inner(kv.k_rotated),
                v: Tensor::from_inner(kv.v),
            })
            .collect();

        // 2. The candidate of every chunk, through the trainable projections.
        let candidate_model = params
            .apply(self.model.clone())
            .map_err(|e| FocusError::Decoder(e.to_string()))?;
        let candidate = *plan.prompt.last().expect("checked: not empty");
        let cand_positions: Vec<Vec<usize>> = contexts.iter().map(|c| vec![c.len()]).collect();
        let cand_out = candidate_model.forward(ForwardInput {
            ids: self.model.ids_tensor(&vec![vec![candidate]; chunks]),
            positions: &cand_positions,
            past: Some((&raw, PastKeys::Rotated)),
            left_pad: Some(&pads),
            candidate_last: true,
            logits_last: 0,
        });
        // [chunks, kv_heads, 1, d] -> [1, kv_heads, chunks, d]: one past position per chunk.
        let past: Vec<LayerKv<B>> = cand_out
            .kv
            .into_iter()
            .map(|kv| LayerKv {
                k: kv.k_unrotated.swap_dims(0, 2),
                v: kv.v.swap_dims(0, 2),
            })
            .collect();

        // 3. The main pass; its last `targets` logits predict the targets.
        let main = ex.main_input();
        let t = ex.targets.len();
        let past_positions = vec![(0..chunks).collect::<Vec<_>>()];
        let main_positions = vec![(chunks..chunks + main.len()).collect::<Vec<_>>()];
        let out = self.model.forward(ForwardInput {
            ids: self.model.ids_tensor(&[main]),
            positions: &main_positions,
            past: Some((&past, PastKeys::Unrotated(&past_positions))),
            left_pad: None,
            candidate_last: false,
            logits_last: t,
        });
        let logits = out
            .logits
            .ok_or_else(|| FocusError::Decoder("the main pass returned no logits".into()))?;
        let device = self.model.device();
        let targets: Vec<i64> = ex.targets.iter().map(|&x| x as i64).collect();
        let target_ids =
            Tensor::<B, 3, Int>::from_data(TensorData::new(targets.clone(), [1, t, 1]), &device);
        let predicted = logits
            .clone()
            .argmax(2)
            .into_data()
            .convert::<i64>()
            .to_vec::<i64>()
            .map_err(|e| FocusError::Decoder(format!("reading predictions: {e:?}")))?;
        let correct = predicted
            .iter()
            .zip(&targets)
            .filter(|(p, t)| p == t)
            .count();
        let nll = log_softmax(logits, 2).gather(2, target_ids).neg();
        Ok(ExampleLoss {
            loss: nll.mean().reshape([1]),
            correct,
            targets: t,
        })
    }
}

impl TextEncoder for Tokenizer {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Tokenizer::encode(self, text).map_err(|e| FocusError::Data(e.to_string()))
    }
}
