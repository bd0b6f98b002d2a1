//! Training the candidate parameters on the tiny official model C: the training passes compute
//! exactly what inference computes, only candidate parameters get gradients, the loss falls on a
//! synthetic retrieval task, adapters round-trip through safetensors, and a resumed run continues
//! the same loss curve. Full-rank adapters use the official key names and shapes.

mod common;

use std::path::Path;

use burn::backend::Autodiff;
use burn::module::{AutodiffModule, Module};
use burn::optim::GradientsParams;
use common::*;
use focusllm::core::train::{
    CandidateTrainer, ExampleSampler, LossTarget, RetrievalGenerator, TaskKind, TaskMix,
    TextCorpus, TextEncoder, TrainConfig, TrainExample, TrainOutcome, Trainer,
};
use focusllm::core::{CancelToken, Chunker, FixedStrideChunker, StepMode, nll};
use focusllm::models::adapter::CandidateWeight;
use focusllm::models::train::LlamaTrainer;
use focusllm::models::{AdapterInfo, AdapterKind, CandidateAdapter, LlamaModel, load_model};

type A = Autodiff<B>;

fn model_c<Bk: burn::tensor::backend::Backend>() -> LlamaModel<Bk> {
    let dir = fixtures().join("official/C");
    load_model::<Bk>(&dir, &Default::default())
        .expect("load C")
        .model
}

/// One token per byte (C's vocabulary has 512 ids).
struct Bytes;
impl TextEncoder for Bytes {
    fn encode(&self, text: &str) -> focusllm::core::Result<Vec<u32>> {
        Ok(text.bytes().map(|b| b as u32 + 3).collect())
    }
}

fn small_config() -> TrainConfig {
    TrainConfig {
        steps: 40,
        batch_size: 2,
        lr: 1e-2,
        warmup_steps: 3,
        min_sample_tokens: 360,
        max_sample_tokens: 460,
        chunk_sizes: vec![64, 96],
        prompt_cap: 48,
        min_local: 30,
        max_local: 60,
        target: LossTarget::LocalTokens { max: 8 },
        tasks: TaskMix::Random { repetition: 0.25 },
        synthetic_ratio: 0.7,
        checkpoint_every: 3,
        ..TrainConfig::default()
    }
}

fn sampler(config: TrainConfig) -> ExampleSampler {
    let corpus = TextCorpus::from_texts(
        &["The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs. "
            .repeat(40)],
        &Bytes,
    )
    .unwrap();
    let generator = RetrievalGenerator::new(Box::new(Bytes), Some(1)).unwrap();
    ExampleSampler::new(config, Some(1), Some(corpus), Some(generator)).unwrap()
}

#[test]
fn training_loss_is_the_inference_nll_with_frozen_candidates() {
    // Fixture C's long input, read as the engine reads it; two targets after it.
    let (inference, dir) = official("C");
    let long = ids(&json(&dir.join("inputs.json"))["long_ids"]);
    let targets = vec![17u32, 301];
    let config = official_config(&dir).with_step_mode(StepMode::FrozenCandidates);
    let plan = FixedStrideChunker.plan(&long, &config, Some(1)).unwrap();
    assert_eq!(plan.chunks.len(), 7);
    let example = TrainExample {
        task: TaskKind::Continuation,
        ids: long.clone(),
        plan,
        generated: Vec::new(),
        targets: targets.clone(),
        step_mode: StepMode::FrozenCandidates,
    };

    let engine = engine(&inference, config);
    let mut session = engine.session();
    let first = session.prefill(&long).unwrap();
    let second = session.step(targets[0]).unwrap();
    let expected = (nll(&first, targets[0]).unwrap() + nll(&second, targets[1]).unwrap()) / 2.0;

    // The adapter holds copies of C's trained candidate projections: the same model. Its chunk
    // passes run as inference runs them: in one block, or (blocks of 50) over the caches of the
    // blocks before.
    for block in [focusllm::models::DEFAULT_PREFILL_BLOCK, 50] {
        let mut model = model_c::<A>();
        model.set_prefill_block(block);
        let trainer = LlamaTrainer::new(model);
        let adapter = CandidateAdapter::full(trainer.model());
        let out = trainer.example_loss(&adapter, &example).unwrap();
        let loss: f32 = out.loss.into_scalar();
        assert!(
            (loss as f64 - expected).abs() < 1e-4,
            "blocks of {block}: training loss {loss} vs inference {expected}"
        );
        assert_eq!(out.targets, 2);
    }
}

/// The engine's exact-mode NLL of `target` after prefilling `ids` and stepping through `generated`
/// (teacher-forced): what a training example with these tokens must compute.
fn exact_mode_nll(
    config: focusllm::core::FocusConfig,
    ids: &[u32],
    generated: &[u32],
    target: u32,
) -> f64 {
    exact_mode_nlls(config, ids, generated, &[target])[0]
}

/// The engine's exact-mode NLL of each of `targets` in turn (teacher-forced) after prefilling `ids`
/// and stepping through `generated`.
fn exact_mode_nlls(
    config: focusllm::core::FocusConfig,
    ids: &[u32],
    generated: &[u32],
    targets: &[u32],
) -> Vec<f64> {
    let (inference, _) = official("C");
    let engine = engine(&inference, config.with_step_mode(StepMode::Exact));
    let mut session = engine.session();
    let mut logits = session.prefill(ids).unwrap();
    for &g in generated {
        logits = session.step(g).unwrap();
    }
    let mut out = Vec::new();
    for (i, &t) in targets.iter().enumerate() {
        out.push(nll(&logits, t).unwrap());
        if i + 1 < targets.len() {
            logits = session.step(t).unwrap();
        }
    }
    out
}

#[test]
fn several_exact_steps_in_one_example_give_the_mean_inference_nll() {
    // One generated token, then three targets, each read through candidates refreshed after the
    // ones before it: one chunk pass, one candidate pass with a candidate per step (each seeing
    // only the ordinary tokens before it), and one main pass per step. Fixture C's long input (7
    // chunks), and a haystack whose short last chunk makes the candidate batch left-padded.
    let (_, dir) = official("C");
    let long = ids(&json(&dir.join("inputs.json"))["long_ids"]);
    let mut haystack: Vec<u32> = (0..9 * 96)
        .map(|i| 3 + (i * 7 + i / 96 * 31) % 500)
        .collect();
    haystack[0] = 1;
    haystack.extend((0..140).map(|i| 3 + (i * 13) % 500));
    let haystack_config = official_config(&dir)
        .with_local_window(100)
        .with_chunk_size(96)
        .with_prompt_cap(40)
        .with_plain_threshold(Some(64));
    let (generated, targets) = (vec![17u32], vec![301u32, 45, 9]);
    let trainer = LlamaTrainer::new(model_c::<A>()).with_chunk_pool(1 << 30);
    let adapter = CandidateAdapter::full(trainer.model());
    for (ids, config, chunks) in [
        (long, official_config(&dir), 7),
        (haystack, haystack_config, 10),
    ] {
        let plan = FixedStrideChunker.plan(&ids, &config, Some(1)).unwrap();
        assert_eq!(plan.chunks.len(), chunks);
        let example = TrainExample {
            task: TaskKind::Retrieval,
            ids: ids.clone(),
            plan,
            generated: generated.clone(),
            targets: targets.clone(),
            step_mode: StepMode::Exact,
        };
        assert_eq!(example.candidate_steps(), 3);
        let out = trainer.example_loss(&adapter, &example).unwrap();
        assert_eq!(out.targets, 3);
        let loss: f32 = out.loss.into_scalar();
        let each = exact_mode_nlls(config, &ids, &generated, &targets);
        let expected = each.iter().sum::<f64>() / 3.0;
        assert!(
            (loss as f64 - expected).abs() < 1e-4,
            "{chunks} chunks: training loss {loss} vs exact-mode inference {expected} ({each:?})"
        );
        // Read with frozen candidates, the same example scores differently (the steps matter).
        let frozen = TrainExample {
            step_mode: StepMode::FrozenCandidates,
            ..example
        };
        let frozen: f32 = trainer
            .example_loss(&adapter, &frozen)
            .unwrap()
            .loss
            .into_scalar();
        assert!(
            (frozen - loss).abs() > 1e-3,
            "{chunks} chunks: frozen {frozen} vs exact {loss}"
        );
    }
}

#[test]
fn training_loss_is_the_inference_nll_in_exact_mode() {
    // Fixture C's long input (7 chunks); two tokens generated, then the target: every chunk is
    // `chunk ++ prompt ++ generated` with the last generated token as its candidate, and the main
    // decoder reads `local ++ generated`, as exact-mode decoding does at the third step.
    let (_, dir) = official("C");
    let long = ids(&json(&dir.join("inputs.json"))["long_ids"]);
    let (generated, target) = (vec![17u32, 301], 45u32);
    let config = official_config(&dir);
    let plan = FixedStrideChunker.plan(&long, &config, Some(1)).unwrap();
    assert_eq!(plan.chunks.len(), 7);
    let example = TrainExample {
        task: TaskKind::Retrieval,
        ids: long.clone(),
        plan,
        generated: generated.clone(),
        targets: vec![target],
        step_mode: StepMode::Exact,
    };
    let trainer = LlamaTrainer::new(model_c::<A>());
    let adapter = CandidateAdapter::full(trainer.model());
    let loss: f32 = trainer
        .example_loss(&adapter, &example)
        .unwrap()
        .loss
        .into_scalar();
    let expected = exact_mode_nll(config, &long, &generated, target);
    assert!(
        (loss as f64 - expected).abs() < 1e-4,
        "training loss {loss} vs exact-mode inference {expected}"
    );
}

#[test]
fn pooled_chunk_caches_give_the_loss_of_computing_every_chunk() {
    // A haystack of recurring blocks (as prose haystacks are built): 9 chunks, 3 distinct, plus a
    // shorter last chunk. The pooled trainer computes each distinct chunk once, and on the second
    // call takes every chunk from its pool; the engine computes all 9 every time.
    let (_, dir) = official("C");
    let block =
        |seed: u32| -> Vec<u32> { (0..96).map(|i| 3 + (i * 7 + seed * 31) % 500).collect() };
    let blocks = [block(1), block(2), block(3)];
    let mut ids = Vec::new();
    for j in [0usize, 1, 0, 2, 2, 1, 0, 1, 2] {
        ids.extend_from_slice(&blocks[j]);
    }
    ids[0] = 1; // BOS opens chunk 0, as in prose haystacks: the blocks stay aligned to the chunks
    ids.extend((0..140).map(|i| 3 + (i * 13) % 500));
    let config = official_config(&dir)
        .with_local_window(100)
        .with_chunk_size(96)
        .with_prompt_cap(40)
        .with_plain_threshold(Some(64));
    let plan = FixedStrideChunker.plan(&ids, &config, Some(1)).unwrap();
    assert_eq!(plan.chunks.len(), 10);
    let generated = vec![211u32];
    let target = 77u32;
    let example = TrainExample {
        task: TaskKind::Retrieval,
        ids: ids.clone(),
        plan,
        generated: generated.clone(),
        targets: vec![target],
        step_mode: StepMode::Exact,
    };
    let expected = exact_mode_nll(config.clone(), &ids, &generated, target);
    let trainer = LlamaTrainer::new(model_c::<A>()).with_chunk_pool(1 << 30);
    let adapter = CandidateAdapter::full(trainer.model());
    for call in 0..2 {
        let loss: f32 = trainer
            .example_loss(&adapter, &example)
            .unwrap()
            .loss
            .into_scalar();
        assert!(
            (loss as f64 - expected).abs() < 1e-4,
            "call {call}: pooled loss {loss} vs every chunk computed {expected}"
        );
    }
    // Distinct chunks: the BOS-led first one, blocks 1, 0 and 2, and the short last chunk.
    let (hits, misses) = trainer.pool_hits();
    assert_eq!(misses, 5, "every distinct chunk computed once");
    assert_eq!(hits, 5, "the second call takes them all from the pool");

    // A chunk that begins like a pooled one (block 2 with a fact spliced in at token 50) reuses
    // the shared prefix and computes the rest.
    let mut edited = ids.clone();
    for (i, t) in edited[4 * 96 + 50..4 * 96 + 60].iter_mut().enumerate() {
        *t = 400 + i as u32;
    }
    let plan = FixedStrideChunker.plan(&edited, &config, Some(1)).unwrap();
    let example = TrainExample {
        ids: edited.clone(),
        plan,
        ..example
    };
    let loss: f32 = trainer
        .example_loss(&adapter, &example)
        .unwrap()
        .loss
        .into_scalar();
    let expected = exact_mode_nll(config, &edited, &generated, target);
    assert!(
        (loss as f64 - expected).abs() < 1e-4,
        "prefix-extended loss {loss} vs every chunk computed {expected}"
    );
    assert_eq!(
        trainer.pool_hits(),
        (10, 6),
        "one new chunk, from a pooled prefix"
    );
}

#[test]
fn only_candidate_parameters_get_gradients() {
    let trainer = LlamaTrainer::new(model_c::<A>());
    let mut params = CandidateAdapter::low_rank(trainer.model(), 4, 1).unwrap();
    let sampler = sampler(small_config());
    let example = &sampler.micro_batch(0, 0).unwrap()[0];

    // `up` starts at zero, so `down` has no gradient until `up` moves: give `up` a value first.
    params = params.map(&mut focusllm_test_fill::Fill(0.01));
    let loss = trainer.example_loss(&params, example).unwrap().loss;
    let grads = loss.backward();
    let base = GradientsParams::from_grads(grads, trainer.model());
    assert_eq!(base.len(), 0, "a base parameter got a gradient");

    let loss = trainer.example_loss(&params, example).unwrap().loss;
    let grads = GradientsParams::from_grads(loss.backward(), &params);
    // The last layer's candidate query and output only shape the candidate's own hidden state after
    // that layer, which nothing reads: their deltas get no gradient (as in the reference). Every
    // other candidate parameter does.
    let last = params.layers.len() - 1;
    assert_eq!(grads.len(), params.num_params_tensors() - 4);
    for (i, layer) in params.layers.iter().enumerate() {
        for (name, w) in [
            ("q", &layer.q),
            ("k", &layer.k),
            ("v", &layer.v),
            ("o", &layer.o),
        ] {
            let CandidateWeight::LowRank(d) = w else {
                panic!("low-rank expected")
            };
            for p in [&d.down, &d.up] {
                let g = grads.get::<B, 2>(p.id);
                if i == last && (name == "q" || name == "o") {
                    assert!(g.is_none(), "layer {i} {name}: unexpected gradient");
                    continue;
                }
                let norm: f32 = g.expect("gradient present").abs().sum().into_scalar();
                assert!(norm > 0.0, "layer {i} {name}: zero gradient");
            }
        }
    }
}

/// The gradient of a first-layer candidate parameter is the loss's slope: backpropagation runs
/// through every projection of the main decoder (and the chunks' candidate passes) down to it, so
/// a wrong backward of any product shows here. The slope along the gradient's own direction,
/// `|g|`, against a central difference of the loss at ±h along it (they agree to 0.1%; with the
/// gradient through every product halved, tried, the norm fell to 0.0013 and the slope to -0.025).
#[test]
fn candidate_gradients_match_finite_differences() {
    let trainer = LlamaTrainer::new(model_c::<A>());
    let params = CandidateAdapter::low_rank(trainer.model(), 4, 1)
        .unwrap()
        .map(&mut focusllm_test_fill::Fill(0.01));
    let sampler = sampler(small_config());
    let example = &sampler.micro_batch(0, 0).unwrap()[0];
    let loss = |p: &CandidateAdapter<A>| -> f64 {
        let l = trainer.example_loss(p, example).unwrap().loss;
        l.into_scalar().into()
    };
    let grads = trainer
        .example_loss(&params, example)
        .unwrap()
        .loss
        .backward();
    let grads = GradientsParams::from_grads(grads, &params);
    for (name, w) in [("v", &params.layers[0].v), ("k", &params.layers[0].k)] {
        let CandidateWeight::LowRank(d) = w else {
            panic!("low-rank expected")
        };
        let g = grads.get::<B, 2>(d.down.id).expect("a gradient");
        let norm = f64::from(g.clone().square().sum().sqrt().into_scalar());
        assert!(norm > 1e-4, "layer 0 {name}: gradient norm {norm}");
        let h = 1e-2;
        let step = |sign: f64| {
            let delta = g.clone().mul_scalar(sign * h / norm);
            params
                .clone()
                .map(&mut focusllm_test_fill::Shift(d.down.id, delta.into_data()))
        };
        let slope = (loss(&step(1.0)) - loss(&step(-1.0))) / (2.0 * h);
        assert!(
            (slope - norm).abs() <= 0.02 * norm,
            "layer 0 {name}: finite difference {slope} against gradient norm {norm}"
        );
    }
}

/// Test-only module mappers: every float parameter set to a constant ([`Fill`]), or one
/// parameter shifted by a tensor ([`Shift`]).
mod focusllm_test_fill {
    use burn::module::{ModuleMapper, Param, ParamId};
    use burn::tensor::backend::Backend;
    use burn::tensor::{Tensor, TensorData};

    pub struct Fill(pub f32);
    impl<Bk: Backend> ModuleMapper<Bk> for Fill {
        fn map_float<const D: usize>(
            &mut self,
            param: Param<Tensor<Bk, D>>,
        ) -> Param<Tensor<Bk, D>> {
            let v = self.0;
            param.map(|t| t.ones_like().mul_scalar(v).require_grad())
        }
    }

    pub struct Shift(pub ParamId, pub TensorData);
    impl<Bk: Backend> ModuleMapper<Bk> for Shift {
        fn map_float<const D: usize>(
            &mut self,
            param: Param<Tensor<Bk, D>>,
        ) -> Param<Tensor<Bk, D>> {
            if param.id != self.0 {
                return param;
            }
            let delta = self.1.clone();
            param.map(|t| {
                let delta = Tensor::from_data(delta, &t.device());
                (t + delta).detach().require_grad()
            })
        }
    }
}

trait CountTensors {
    fn num_params_tensors(&self) -> usize;
}
impl CountTensors for CandidateAdapter<A> {
    fn num_params_tensors(&self) -> usize {
        self.layers.len() * 4 * 2
    }
}

#[test]
fn loss_falls_on_synthetic_retrieval() {
    let trainer = LlamaTrainer::new(model_c::<A>());
    let params = CandidateAdapter::low_rank(trainer.model(), 8, 0).unwrap();
    let config = TrainConfig {
        synthetic_ratio: 1.0,
        tasks: TaskMix::Random { repetition: 0.0 },
        // Numeric keys: random codes and word pairs, one byte a token, are more than the tiny
        // model learns in 40 steps.
        key_kinds: [1.0, 0.0, 0.0],
        ..small_config()
    };
    let mut t = Trainer::new(&trainer, params, sampler(config)).unwrap();
    assert_eq!(t.run().unwrap(), TrainOutcome::Finished);
    let h = t.history();
    let mean = |r: &[focusllm::core::train::StepRecord]| {
        r.iter().map(|s| s.loss).sum::<f64>() / r.len() as f64
    };
    let (first, last) = (mean(&h[..8]), mean(&h[h.len() - 8..]));
    assert!(last < 0.8 * first, "loss {first:.3} -> {last:.3}");
}

#[test]
fn adapters_round_trip_and_change_the_engine() {
    let dir = tempdir("roundtrip");
    let (base, fixture) = official("C");
    let long = ids(&json(&fixture.join("inputs.json"))["long_ids"]);
    let config = official_config(&fixture);

    // A low-rank adapter moved away from zero by a few steps of training.
    let trainer = LlamaTrainer::new(model_c::<A>());
    let params = CandidateAdapter::low_rank(trainer.model(), 4, 3).unwrap();
    let mut t = Trainer::new(
        &trainer,
        params,
        sampler(TrainConfig {
            steps: 3,
            ..small_config()
        }),
    )
    .unwrap();
    t.run().unwrap();
    let adapter = t.into_params().valid();
    let info = AdapterInfo {
        step_mode: Some("frozen".into()),
        training: Some("test".into()),
        chunk_size: Some(96),
        ..Default::default()
    };
    let path = dir.join("a.safetensors");
    adapter.save(&path, &info).unwrap();
    let (loaded, loaded_info) = CandidateAdapter::<B>::load(&path, &base).unwrap();
    assert_eq!(loaded_info, info);
    assert_eq!(loaded.kind(), AdapterKind::LowRank { rank: 4 });

    let prefill = |model: &LlamaModel<B>| {
        engine(model, config.clone())
            .session()
            .prefill(&long)
            .unwrap()
    };
    let untrained = prefill(&base);
    let with_adapter = prefill(&adapter.apply(base.clone()).unwrap());
    let with_loaded = prefill(&loaded.apply(base.clone()).unwrap());
    assert_eq!(
        with_adapter, with_loaded,
        "save -> load changed the outputs"
    );
    assert!(
        max_abs_diff(&untrained, &with_adapter) > 1e-3,
        "the adapter changed nothing"
    );

    // A zero-delta adapter is the base model's ordinary projections (the untrained copy).
    let zero = CandidateAdapter::<B>::low_rank(&base, 2, 0).unwrap();
    let copied = focusllm::models::load_model_with::<B>(
        &fixture,
        &Default::default(),
        &focusllm::models::LoadOptions {
            trained_candidates: false,
            ..Default::default()
        },
    )
    .unwrap()
    .model;
    assert_eq!(
        prefill(&zero.apply(base.clone()).unwrap()),
        prefill(&copied)
    );
}

#[test]
fn adapter_errors_name_the_problem() {
    let dir = tempdir("errors");
    let (c, _) = official("C");
    let (d, _) = official("D");
    let path = dir.join("c.safetensors");
    CandidateAdapter::<B>::low_rank(&c, 2, 0)
        .unwrap()
        .save(&path, &AdapterInfo::default())
        .unwrap();
    // C's adapter on D: D has 2 layers and smaller projections.
    let err = CandidateAdapter::<B>::load(&path, &d)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("beacon_q_proj") && err.contains("shape"),
        "{err}"
    );
    let err = CandidateAdapter::<B>::load(&dir.join("missing.safetensors"), &c)
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.safetensors"), "{err}");
    std::fs::write(dir.join("bad.safetensors"), b"not a safetensors file").unwrap();
    let err = CandidateAdapter::<B>::load(&dir.join("bad.safetensors"), &c)
        .unwrap_err()
        .to_string();
    assert!(err.contains("bad.safetensors"), "{err}");
    let err = CandidateAdapter::<B>::low_rank(&c, 0, 0)
        .unwrap_err()
        .to_string();
    assert!(err.contains("rank"), "{err}");
}

#[test]
fn full_adapters_use_the_official_names_and_shapes() {
    let dir = tempdir("full");
    let (c, fixture) = official("C");
    let path = dir.join("full.safetensors");
    CandidateAdapter::<B>::full(&c)
        .save(&path, &AdapterInfo::default())
        .unwrap();
    let keys = json(&fixture.join("tensor_keys.json"));
    let official: std::collections::BTreeMap<String, Vec<u64>> = keys
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| {
            ["q", "k", "v", "o"]
                .iter()
                .any(|p| k.ends_with(&format!("self_attn.beacon_{p}_proj.weight")))
        })
        .map(|(k, v)| {
            (
                k.clone(),
                v.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_u64().unwrap())
                    .collect(),
            )
        })
        .collect();
    assert_eq!(official.len(), 3 * 4);
    let bytes = std::fs::read(&path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ours: std::collections::BTreeMap<String, Vec<u64>> = file
        .tensors()
        .into_iter()
        .map(|(k, v)| (k, v.shape().iter().map(|&x| x as u64).collect()))
        .collect();
    assert_eq!(ours, official);
    // And the saved values are C's trained candidate projections: loading reproduces the model.
    let (loaded, _) = CandidateAdapter::<B>::load(&path, &c).unwrap();
    let long = ids(&json(&fixture.join("inputs.json"))["long_ids"]);
    let config = official_config(&fixture);
    let a = engine(&c, config.clone()).session().prefill(&long).unwrap();
    let with_loaded = loaded.apply(c.clone()).unwrap();
    let b = engine(&with_loaded, config)
        .session()
        .prefill(&long)
        .unwrap();
    assert!(max_abs_diff(&a, &b) < 1e-5);
}

#[test]
fn resumed_run_continues_the_same_curve() {
    let config = TrainConfig {
        steps: 6,
        ..small_config()
    };
    let trainer = LlamaTrainer::new(model_c::<A>());
    let init = || CandidateAdapter::low_rank(trainer.model(), 4, 9).unwrap();

    let straight_dir = tempdir("straight");
    let mut straight = Trainer::new(&trainer, init(), sampler(config.clone()))
        .unwrap()
        .with_checkpoints(&straight_dir)
        .unwrap();
    straight.run().unwrap();

    // Interrupted after 3 steps, right after a periodic checkpoint (the cancel keeps it rather
    // than rewriting it), then resumed.
    let resumed_dir = tempdir("resumed");
    let token = CancelToken::new();
    let mut first = Trainer::new(&trainer, init(), sampler(config.clone()))
        .unwrap()
        .with_checkpoints(&resumed_dir)
        .unwrap();
    first.set_cancel_token(token.clone());
    let stop = token.clone();
    first.on_progress(move |p| {
        if p.step == 3 {
            stop.cancel()
        }
    });
    assert_eq!(first.run().unwrap(), TrainOutcome::Cancelled);
    assert_eq!(first.step(), 3);
    drop(first);
    // A fresh process would start from new random parameters: the checkpoint must replace them.
    let other_init = CandidateAdapter::low_rank(trainer.model(), 4, 12345).unwrap();
    let mut second = Trainer::new(&trainer, other_init, sampler(config.clone()))
        .unwrap()
        .with_checkpoints(&resumed_dir)
        .unwrap();
    assert_eq!(second.step(), 3);
    assert_eq!(second.run().unwrap(), TrainOutcome::Finished);

    let a: Vec<f64> = straight.history().iter().map(|r| r.loss).collect();
    let b: Vec<f64> = second.history().iter().map(|r| r.loss).collect();
    assert_eq!(a.len(), 6);
    assert_eq!(b.len(), 6, "the resumed history holds the logged steps too");
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-6 * x.abs().max(1.0), "{a:?} vs {b:?}");
    }
    // Parameters of another rank are refused before any tensor is read.
    let other_rank = CandidateAdapter::low_rank(trainer.model(), 8, 9).unwrap();
    let err = Trainer::new(&trainer, other_rank, sampler(config.clone()))
        .unwrap()
        .with_checkpoints(&resumed_dir)
        .err()
        .expect("rank mismatch");
    assert!(err.to_string().contains("another rank"), "{err}");
    // A different config in the same directory is refused, naming the field.
    let other = TrainConfig { lr: 0.5, ..config };
    let err = Trainer::new(&trainer, init(), sampler(other))
        .unwrap()
        .with_checkpoints(&resumed_dir)
        .err()
        .expect("config mismatch");
    assert!(err.to_string().contains("lr"), "{err}");
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("train-{name}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}
