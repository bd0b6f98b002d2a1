//! One loaded model serves several sessions at once: the engine types are `Send + Sync` (checked
//! at compile time), and four threads reading different prompts get exactly what each prompt gets
//! alone.

mod common;

use common::*;
use focusllm::core::{CandidateSet, FocusEngine, Session, argmax};
use focusllm::models::{LlamaChunks, LlamaKvCache, LlamaModel};

type Engine<'m> = FocusEngine<'m, B, LlamaModel<B>, LlamaModel<B>>;

#[allow(dead_code)]
fn the_engine_types_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    fn send<T: Send>() {}
    send_sync::<LlamaModel<B>>();
    send_sync::<Engine<'static>>();
    send_sync::<CandidateSet<B>>();
    send_sync::<LlamaChunks<B>>();
    send_sync::<LlamaKvCache<B>>();
    send::<
        Session<
            'static,
            B,
            LlamaModel<B>,
            LlamaModel<B>,
            focusllm::core::FixedStrideChunker,
            focusllm::core::ConcatAggregator,
        >,
    >();
}

/// Prefill and three greedy steps: every logit vector on the way.
fn read(engine: &Engine<'_>, ids: &[u32]) -> Vec<Vec<f32>> {
    let mut session = engine.session();
    let mut out = vec![session.prefill(ids).unwrap()];
    for _ in 0..3 {
        let token = argmax(out.last().unwrap()).unwrap();
        out.push(session.step(token).unwrap());
    }
    out
}

#[test]
fn four_threads_read_four_prompts_as_one_thread_does() {
    let (model, dir) = official("C");
    let long = ids(&json(&dir.join("inputs.json"))["long_ids"]);
    let mut edited = long.clone();
    for (i, t) in edited.iter_mut().enumerate().skip(100).step_by(37) {
        *t = 3 + (i as u32 * 7) % 500;
    }
    let prompts = [
        long.clone(),
        long[..long.len() - 300].to_vec(),
        edited,
        long[..200].to_vec(), // plain decoding
    ];
    let engine = engine(&model, official_config(&dir));
    let alone: Vec<Vec<Vec<f32>>> = prompts.iter().map(|p| read(&engine, p)).collect();
    let together: Vec<Vec<Vec<f32>>> = std::thread::scope(|s| {
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| {
                let engine = &engine;
                s.spawn(move || read(engine, p))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        for (step, (x, y)) in a.iter().zip(t).enumerate() {
            let diff = max_abs_diff(x, y);
            assert!(diff <= 1e-6, "prompt {i}, step {step}: {diff}");
        }
    }
    // The prompts really differ (no thread could pass by reading another's).
    assert!(max_abs_diff(&alone[0][0], &alone[2][0]) > 1e-3);
}
