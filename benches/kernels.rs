//! Criterion benchmarks of the CPU kernels at SmolLM2-135M's sizes (9 query heads over 3
//! key/value heads of 64, hidden 576, MLP 1536), random weights, at 2K and 8K tokens of context:
//!
//! - `attention`: causal grouped-query attention alone (`kernels::causal_attention`), a prefill
//!   (every position a query) and a step (one query after the context);
//! - `linear`: one projection (576 → 1536, the MLP's up projection) over the rows of a decoding
//!   step: one generated token, or the two rows of each of 4 chunks in an exact step; and the
//!   same weight in `Q8_0` and `Q4_1` blocks (`--weights quantized`), also over a prefill block
//!   of 512 rows and a chunk batch's 2048, where f32 and bf16 products (`--matmul bf16`) are
//!   compared, and with 8-bit activations (`--activations int8`, the steps' rows);
//! - `step weights`: one row through every projection of SmolLM2-135M's 30 layers and its LM head
//!   (`Q4_1` layers, a `Q8_0` head: 96 MB, as in its GGUF), one after the other, the weights
//!   streamed from memory rather than cache, as in a decoding step (which multiplies q, k and v,
//!   and gate and up, together: fewer waits for the pool than here); f32 and 8-bit activations;
//! - `decoder layer`: one whole layer (norms, projections, RoPE, attention, SwiGLU MLP) through
//!   `LlamaModel::forward`, a prefill and a step that appends to a KV buffer; the prefill also
//!   with bf16 products.
//!
//! Each is run with the fused kernels and with burn's operations (`Kernels::Fused` / `Burn`).
//! `cargo bench --bench kernels`; a filter narrows it, e.g. `cargo bench --bench kernels -- step`.

use std::hint::black_box;

use burn::module::Param;
use burn::nn::LinearConfig;
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use focusllm::backends::Cpu;
use focusllm::core::LayerKv;
use focusllm::models::gguf::dequant::{GGML_TYPE_Q4_1, GGML_TYPE_Q8_0};
use focusllm::models::kernels::{
    Kernels, MatmulPrecision, causal_attention, linear, projection, projection_in,
};
use focusllm::models::llama::{
    Attention, Candidates, DecoderLayer, ForwardInput, KvBuffer, Mlp, Past, Projection,
    QuantizedLinear,
};
use focusllm::models::quantized::{ActivationPrecision, QuantizedMatrix};
use focusllm::models::{CandidateSource, LlamaConfig, LlamaModel};

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

const HEADS: usize = 9;
const KV_HEADS: usize = 3;
const HEAD_DIM: usize = 64;
const HIDDEN: usize = HEADS * HEAD_DIM;
const MLP: usize = 1536;
const VOCAB: usize = 512;
const CONTEXTS: [usize; 2] = [2048, 8192];
const KERNELS: [(Kernels, &str); 2] = [(Kernels::Fused, "fused"), (Kernels::Burn, "burn")];

fn random(shape: [usize; 4]) -> Tensor<Cpu, 4> {
    Tensor::random(shape, Distribution::Normal(0.0, 1.0), &Default::default())
}

fn attention_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("attention");
    group.sample_size(10);
    for context in CONTEXTS {
        let k = random([1, KV_HEADS, context, HEAD_DIM]);
        let v = random([1, KV_HEADS, context, HEAD_DIM]);
        for (queries, what) in [(context, "prefill"), (1, "step")] {
            let q = random([1, HEADS, queries, HEAD_DIM]);
            for (kernels, name) in KERNELS {
                group.bench_function(format!("{what} {context}/{name}"), |b| {
                    b.iter(|| black_box(causal_attention(kernels, q.clone(), k.clone(), v.clone())))
                });
            }
        }
    }
    group.finish();
}

fn linear_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("linear");
    let device = Default::default();
    let layer = LinearConfig::new(HIDDEN, MLP)
        .with_bias(false)
        .init::<Cpu>(&device);
    // The same weight in GGUF blocks (`--weights quantized`): 8 and 4.5 bits per weight.
    let values: Vec<f32> = layer
        .weight
        .val()
        .transpose()
        .into_data()
        .into_vec()
        .unwrap();
    // Each with f32 activations and with 8-bit ones (`--activations int8`; steps only: a prefill
    // block multiplies f32 either way).
    let quantized = [
        (GGML_TYPE_Q8_0, "q8_0", ActivationPrecision::F32),
        (GGML_TYPE_Q4_1, "q4_1", ActivationPrecision::F32),
        (GGML_TYPE_Q8_0, "q8_0 int8", ActivationPrecision::Int8),
        (GGML_TYPE_Q4_1, "q4_1 int8", ActivationPrecision::Int8),
    ]
    .map(|(ty, name, activations)| {
        let weight = QuantizedMatrix::quantize(ty, MLP, HIDDEN, &values)
            .unwrap()
            .with_activation_precision(activations);
        (
            Projection::Quantized(QuantizedLinear { weight, bias: None }),
            name,
        )
    });
    for rows in [1, 8, 512] {
        let x = Tensor::<Cpu, 3>::random([1, rows, HIDDEN], Distribution::Default, &device);
        for (kernels, name) in KERNELS {
            group.bench_function(format!("{rows} rows {HIDDEN}x{MLP}/{name}"), |b| {
                b.iter(|| black_box(linear(kernels, x.clone(), &layer)))
            });
        }
        for (weight, name) in &quantized {
            if rows > 16 && name.ends_with("int8") {
                continue;
            }
            group.bench_function(format!("{rows} rows {HIDDEN}x{MLP}/{name}"), |b| {
                b.iter(|| black_box(projection(Kernels::Fused, x.clone(), weight)))
            });
        }
    }
    // Many rows in f32 and in bf16, dense and quantized.
    let dense = Projection::from(layer.clone());
    for rows in [512, 2048] {
        let x = Tensor::<Cpu, 3>::random([1, rows, HIDDEN], Distribution::Default, &device);
        let weights = [(&dense, "f32 weight")].into_iter();
        let weights = weights.chain(
            quantized
                .iter()
                .filter(|(_, name)| !name.ends_with("int8"))
                .map(|(w, name)| (w, *name)),
        );
        for (weight, name) in weights {
            for (precision, products) in [
                (MatmulPrecision::F32, "f32"),
                (MatmulPrecision::Bf16, "bf16"),
            ] {
                group.bench_function(
                    format!("{rows} rows {HIDDEN}x{MLP}/{name}, {products} products"),
                    |b| {
                        b.iter(|| {
                            black_box(projection_in(Kernels::Fused, precision, x.clone(), weight))
                        })
                    },
                );
            }
        }
    }
    group.finish();
}

/// SmolLM2-135M's layers (and its vocabulary of 49152 for the head).
const LAYERS: usize = 30;
const FULL_VOCAB: usize = 49152;

/// Every projection a decoding step multiplies, at SmolLM2-135M's sizes and in its GGUF's
/// types, applied to one row in turn: 96 MB of weights, more than this machine's caches hold, so
/// the weights stream from memory as in a step (compare the time with reading 96 MB).
fn step_weight_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("step weights");
    group.sample_size(20);
    let kv = KV_HEADS * HEAD_DIM;
    let shapes = [
        (HIDDEN, HIDDEN),
        (kv, HIDDEN),
        (kv, HIDDEN),
        (HIDDEN, HIDDEN),
        (MLP, HIDDEN),
        (MLP, HIDDEN),
        (HIDDEN, MLP),
    ];
    // Values of a normal spread (the same for every layer: only the bytes' places matter here).
    let values: Vec<f32> = Tensor::<Cpu, 1>::random(
        [FULL_VOCAB * HIDDEN],
        Distribution::Normal(0.0, 0.05),
        &Default::default(),
    )
    .into_data()
    .into_vec()
    .unwrap();
    let quantize = |ty, (rows, cols): (usize, usize)| {
        QuantizedMatrix::quantize(ty, rows, cols, &values[..rows * cols]).unwrap()
    };
    let mut weights: Vec<QuantizedMatrix> = (0..LAYERS)
        .flat_map(|_| shapes.map(|shape| quantize(GGML_TYPE_Q4_1, shape)))
        .collect();
    weights.push(quantize(GGML_TYPE_Q8_0, (FULL_VOCAB, HIDDEN)));
    let bytes: usize = weights.iter().map(|w| w.rows() * w.row_bytes()).sum();
    group.throughput(criterion::Throughput::Bytes(bytes as u64));
    for (activations, name) in [
        (ActivationPrecision::F32, "f32 activations"),
        (ActivationPrecision::Int8, "int8 activations"),
    ] {
        let projections: Vec<Projection<Cpu>> = weights
            .iter()
            .map(|w| {
                let weight = w.clone().with_activation_precision(activations);
                Projection::Quantized(QuantizedLinear { weight, bias: None })
            })
            .collect();
        let rows: Vec<Tensor<Cpu, 3>> = [HIDDEN, MLP]
            .map(|width| Tensor::random([1, 1, width], Distribution::Default, &Default::default()))
            .into();
        // On a thread of the pool, as a forward runs (from outside, each product's split would
        // put the caller to sleep until the pool is done).
        group.bench_function(format!("1 row/{name}"), |b| {
            b.iter(|| {
                rayon::scope(|_| {
                    for p in &projections {
                        let x = if p.dims()[0] == MLP {
                            &rows[1]
                        } else {
                            &rows[0]
                        };
                        black_box(projection(Kernels::Fused, x.clone(), p));
                    }
                })
            })
        });
    }
    group.finish();
}

/// A one-layer model at SmolLM2-135M's sizes with random weights.
fn one_layer() -> LlamaModel<Cpu> {
    let device = Default::default();
    let config = LlamaConfig::new(
        VOCAB, HIDDEN, MLP, 1, HEADS, KV_HEADS, 100_000.0, 1e-5, 8192,
    );
    let linear = |input, output| {
        Projection::from(
            LinearConfig::new(input, output)
                .with_bias(false)
                .init::<Cpu>(&device),
        )
    };
    let kv = KV_HEADS * HEAD_DIM;
    let layer = DecoderLayer {
        input_norm: Param::from_tensor(Tensor::ones([HIDDEN], &device)),
        attn: Attention::new(
            linear(HIDDEN, HIDDEN),
            linear(HIDDEN, kv),
            linear(HIDDEN, kv),
            linear(HIDDEN, HIDDEN),
            None,
            &config,
        ),
        post_attn_norm: Param::from_tensor(Tensor::ones([HIDDEN], &device)),
        mlp: Mlp {
            gate: linear(HIDDEN, MLP),
            up: linear(HIDDEN, MLP),
            down: linear(MLP, HIDDEN),
            candidate: None,
        },
    };
    let embed = Tensor::random([VOCAB, HIDDEN], Distribution::Normal(0.0, 1.0), &device);
    let norm = Tensor::ones([HIDDEN], &device);
    LlamaModel::from_parts(
        config,
        embed,
        vec![layer],
        norm,
        None,
        CandidateSource::CopiedFromBase,
    )
}

fn ids(model: &LlamaModel<Cpu>, n: usize) -> Tensor<Cpu, 2, Int> {
    let ids: Vec<i64> = (0..n).map(|i| (i * 7919 % VOCAB) as i64).collect();
    Tensor::from_data(TensorData::new(ids, [1, n]), &model.device())
}

fn input<'a>(
    model: &LlamaModel<Cpu>,
    n: usize,
    positions: &'a [Vec<usize>],
    past: Past<'a, Cpu>,
) -> ForwardInput<'a, Cpu> {
    ForwardInput {
        ids: ids(model, n),
        positions,
        past,
        left_pad: None,
        candidates: Candidates::None,
        // Logits at the last position (512 vocab: under 2% of a step's work): without logits or
        // focus a forward's last layer computes only its keys and values.
        logits_last: 1,
        focus_keys: 0,
    }
}

fn layer_benches(c: &mut Criterion) {
    let mut model = one_layer();
    let mut group = c.benchmark_group("decoder layer");
    group.sample_size(10);
    for context in CONTEXTS {
        let prefill = vec![(0..context).collect::<Vec<_>>()];
        let step = vec![vec![context]];
        for (kernels, name) in KERNELS {
            model.set_kernels(kernels);
            group.bench_function(format!("prefill {context}/{name}"), |b| {
                b.iter(|| black_box(model.forward(input(&model, context, &prefill, Past::None))))
            });
            let out = model.forward(input(&model, context, &prefill, Past::None));
            let cache: Vec<KvBuffer<Cpu>> = out
                .kv
                .into_iter()
                .map(|kv| {
                    let mut buffer = KvBuffer::new(LayerKv {
                        k: kv.k_rotated,
                        v: kv.v,
                    });
                    buffer.reserve(1);
                    buffer
                })
                .collect();
            // Each sample appends to its own copy of the cache (the copy is not timed).
            group.bench_function(format!("step {context}/{name}"), |b| {
                b.iter_batched(
                    || {
                        let mut copy = cache.clone();
                        for buffer in &mut copy {
                            // A buffer of its own (the timed append then writes in place).
                            *buffer = KvBuffer::new(buffer.view());
                            buffer.reserve(1);
                        }
                        copy
                    },
                    |mut copy| {
                        black_box(model.forward(input(&model, 1, &step, Past::Cache(&mut copy))))
                    },
                    BatchSize::PerIteration,
                )
            });
        }
        // The fused kernels with bf16 products (projections and attention).
        model.set_kernels(Kernels::Fused);
        model.set_matmul_precision(MatmulPrecision::Bf16);
        group.bench_function(format!("prefill {context}/fused, bf16 products"), |b| {
            b.iter(|| black_box(model.forward(input(&model, context, &prefill, Past::None))))
        });
        model.set_matmul_precision(MatmulPrecision::F32);
    }
    group.finish();
}

criterion_group!(
    benches,
    attention_benches,
    linear_benches,
    step_weight_benches,
    layer_benches
);
criterion_main!(benches);
