//! Criterion benchmarks of the engine on the tiny official model C (self-contained, seconds per
//! run): prefill with chunk batches of 1 and 4, prefill plus four generation steps, and plain prefill of the same
//! input. The SmolLM2 tables come from `examples/bench.rs` (see BENCHMARKS.md).

use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, criterion_group, criterion_main};
use focusllm::backends::Cpu;
use focusllm::core::{FocusConfig, FocusEngine};
use focusllm::models::load_model;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn engine_benches(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/official/C");
    let model = load_model::<Cpu>(&dir, &Default::default())
        .expect("fixture model C")
        .model;
    let inputs: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("inputs.json")).unwrap()).unwrap();
    let ids: Vec<u32> = inputs["long_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let config = FocusConfig::default()
        .with_local_window(512)
        .with_chunk_size(700)
        .with_plain_threshold(Some(4096));

    let mut group = c.benchmark_group("model C, 5000 tokens");
    group.sample_size(10);
    for batch in [1, 4] {
        let engine = FocusEngine::new(&model, config.clone().with_chunk_batch_size(batch)).unwrap();
        group.bench_function(format!("focus prefill, chunk batch {batch}"), |b| {
            b.iter(|| black_box(engine.session().prefill(&ids).unwrap()))
        });
    }
    // Steps grow the session, so each sample is a fresh prefill plus four steps (exact mode).
    let engine = FocusEngine::new(&model, config.clone()).unwrap();
    group.bench_function("focus prefill + 4 steps", |b| {
        b.iter(|| {
            let mut session = engine.session();
            session.prefill(&ids).unwrap();
            for t in [7, 8, 9, 10] {
                black_box(session.step(t).unwrap());
            }
        })
    });
    let plain = FocusEngine::new(&model, config.with_plain_threshold(Some(usize::MAX))).unwrap();
    group.bench_function("plain prefill", |b| {
        b.iter(|| black_box(plain.session().prefill(&ids).unwrap()))
    });
    group.finish();
}

criterion_group!(benches, engine_benches);
criterion_main!(benches);
