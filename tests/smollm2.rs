//! The real SmolLM2-135M-Instruct GGUF against transformers and the official FocusLLM code
//! (`tests/fixtures/smollm2`). Needs the fetched model: skipped with a printed reason when absent,
//! a failure when `CI` is set.

mod common;

use std::ops::ControlFlow;
use std::sync::OnceLock;

use common::*;
use focusllm::core::{FocusConfig, GenerateOptions, Mode};
use focusllm::models::{CandidateSource, LoadedModel, load_model};

const TOL: f32 = 2e-3;

fn smollm2() -> Option<&'static LoadedModel<B>> {
    static MODEL: OnceLock<Option<LoadedModel<B>>> = OnceLock::new();
    MODEL
        .get_or_init(|| {
            let path = smollm2_path()?;
            Some(load_model::<B>(&path, &Default::default()).expect("load SmolLM2 GGUF"))
        })
        .as_ref()
}

fn greedy(
    engine_model: &LoadedModel<B>,
    config: FocusConfig,
    ids: &[u32],
    n: usize,
) -> Vec<Vec<f32>> {
    let engine = engine(&engine_model.model, config);
    let mut session = engine.session();
    let mut logits = Vec::new();
    let options = GenerateOptions {
        max_tokens: n,
        stop_tokens: vec![u32::MAX],
        ..Default::default()
    };
    session
        .generate(ids, &options, None, |t| {
            logits.push(t.logits.clone());
            ControlFlow::Continue(())
        })
        .unwrap();
    logits
}

#[test]
fn plain_forward_matches_transformers() {
    let Some(loaded) = smollm2() else { return };
    assert_eq!(
        loaded.model.candidate_source(),
        CandidateSource::CopiedFromBase
    );
    let fixture = json(&fixtures().join("smollm2/plain_forward.json"));
    for case in fixture["cases"].as_array().unwrap() {
        let input = ids(&case["ids"]);
        let steps = greedy(loaded, FocusConfig::default(), &input, 12);
        let diff = max_abs_diff(&steps[0], &floats(&case["last_logits_full"]));
        assert!(diff < TOL, "{}: last logits max diff {diff}", case["text"]);
        let tokens: Vec<u32> = steps
            .iter()
            .map(|l| focusllm::core::argmax(l).unwrap())
            .collect();
        assert_eq!(tokens, ids(&case["greedy_12"]), "{}", case["text"]);
    }
}

#[test]
fn focus_passkey_matches_official() {
    let Some(loaded) = smollm2() else { return };
    let fixture = json(&fixtures().join("smollm2/focus_passkey.json"));
    let input = ids(&fixture["input_ids"]);
    let config = FocusConfig::default()
        .with_local_window(2048)
        .with_chunk_size(2048)
        .with_plain_threshold(Some(4096));
    let engine = engine(&loaded.model, config.clone());
    assert_eq!(
        engine.plan(&input).unwrap().unwrap().chunks.len() as u64,
        fixture["chunks"].as_u64().unwrap()
    );
    let steps = greedy(loaded, config, &input, 5);
    let diff = max_abs_diff(&steps[0], &floats(&fixture["prefill_last_logits_full"]));
    assert!(diff < TOL, "prefill logits max diff {diff}");
    for (k, (got, want)) in steps
        .iter()
        .zip(fixture["greedy_steps_top20"].as_array().unwrap())
        .enumerate()
    {
        let top_ids = ids(&want["ids"]);
        let top_logits = floats(&want["logits"]);
        for (id, logit) in top_ids.iter().zip(&top_logits) {
            let d = (got[*id as usize] - logit).abs();
            assert!(d < TOL, "step {k}: token {id} logit diff {d}");
        }
    }
    let tokens: Vec<u32> = steps
        .iter()
        .map(|l| focusllm::core::argmax(l).unwrap())
        .collect();
    assert_eq!(tokens, ids(&fixture["greedy_tokens"]));
    let text = loaded.tokenizer.as_ref().unwrap().decode(&tokens).unwrap();
    assert_eq!(text, fixture["greedy_text"].as_str().unwrap());
    let mut session = engine.session();
    session.prefill(&input).unwrap();
    assert_eq!(session.mode(), Mode::Focus { chunks: 3 });
}
