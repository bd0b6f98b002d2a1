//! Candidate parameters kept apart from the frozen base model, so they can be trained, saved and
//! loaded on their own: full projections (the official layout and `beacon_*` names) or low-rank
//! deltas on the ordinary projections (`W_candidate = W + down·up`, a file of a few MB).
//!
//! Applying an adapter merges it into the model's candidate projections once
//! ([`CandidateAdapter::apply`]); inference then costs exactly what it costs with the official
//! full checkpoints.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use burn::module::{Module, Param, ParamId};
use burn::nn::Linear;
use burn::tensor::{Tensor, TensorData, backend::Backend};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::error::ModelError;
use crate::llama::{CandidateProjections, CandidateSource, LlamaModel, Projection};
use crate::weights::{SafetensorsWeights, WeightSource, transposed_host};

/// A low-rank delta `down·up` on an ordinary projection weight `[in, out]`.
#[derive(Module, Debug)]
pub struct LowRankDelta<B: Backend> {
    /// `[in, rank]`, random at initialisation.
    pub down: Param<Tensor<B, 2>>,
    /// `[rank, out]`, zero at initialisation (so an untrained delta changes nothing).
    pub up: Param<Tensor<B, 2>>,
}

/// One candidate projection's trainable weight.
#[derive(Module, Debug)]
pub enum CandidateWeight<B: Backend> {
    /// The whole candidate weight `[in, out]` (the official layout, as burn stores it).
    Full(Param<Tensor<B, 2>>),
    /// A low-rank delta on the ordinary weight.
    LowRank(LowRankDelta<B>),
}

/// A layer's candidate q, k, v and o projections.
#[derive(Module, Debug)]
pub struct CandidateLayer<B: Backend> {
    /// Query.
    pub q: CandidateWeight<B>,
    /// Key.
    pub k: CandidateWeight<B>,
    /// Value.
    pub v: CandidateWeight<B>,
    /// Output.
    pub o: CandidateWeight<B>,
}

/// Candidate parameters of every layer.
#[derive(Module, Debug)]
pub struct CandidateAdapter<B: Backend> {
    /// One entry per decoder layer.
    pub layers: Vec<CandidateLayer<B>>,
}

/// Full or low-rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdapterKind {
    /// Full candidate projections.
    Full,
    /// Low-rank deltas of this rank.
    LowRank {
        /// The rank `r`.
        rank: usize,
    },
}

/// What an adapter file says about how it was trained (stored in the safetensors metadata).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AdapterInfo {
    /// The step mode the adapter was trained for (`"frozen"` or `"exact"`), if known.
    pub step_mode: Option<String>,
    /// Free-form description of the training run (loss, steps, data).
    pub training: Option<String>,
    /// The base model it was trained on.
    pub base_model: Option<String>,
    /// Recommended local window for inference (what the adapter was trained with).
    pub local_window: Option<usize>,
    /// Recommended chunk size for inference.
    pub chunk_size: Option<usize>,
    /// Recommended dynamic-prompt cap for inference.
    pub prompt_cap: Option<usize>,
}

const PROJECTIONS: [&str; 4] = ["q", "k", "v", "o"];

impl<B: Backend> CandidateLayer<B> {
    fn weights(&self) -> [&CandidateWeight<B>; 4] {
        [&self.q, &self.k, &self.v, &self.o]
    }
}

impl<B: Backend> CandidateWeight<B> {
    /// The candidate weight `[in, out]` given the ordinary one (asked for only by a low-rank
    /// delta: a quantized ordinary weight is decoded then).
    fn merged(&self, ordinary: impl FnOnce() -> Tensor<B, 2>) -> Tensor<B, 2> {
        match self {
            Self::Full(w) => w.val(),
            Self::LowRank(d) => ordinary() + d.down.val().matmul(d.up.val()),
        }
    }
}

/// The ordinary q, k, v, o projections of layer `i`.
fn ordinary<B: Backend>(model: &LlamaModel<B>, i: usize) -> [&Projection<B>; 4] {
    let a = &model.layers[i].attn;
    [&a.q, &a.k, &a.v, &a.o]
}

/// A weight we create (merged or initialised) as a parameter whose value keeps its autodiff graph.
fn param<B: Backend>(t: Tensor<B, 2>) -> Param<Tensor<B, 2>> {
    Param::initialized(ParamId::new(), t)
}

impl<B: Backend> CandidateAdapter<B> {
    /// Low-rank deltas of rank `rank` for every layer of `model`: `down` uniform with standard
    /// deviation `1/sqrt(in)` (seeded), `up` zero, so the adapter starts as the untrained model.
    pub fn low_rank(model: &LlamaModel<B>, rank: usize, seed: u64) -> Result<Self, ModelError> {
        if rank == 0 {
            return Err(ModelError::Adapter(
                "the rank of a low-rank adapter must be at least 1".into(),
            ));
        }
        let device = model.device();
        let mut rng = StdRng::seed_from_u64(seed);
        let layers = (0..model.layers.len())
            .map(|i| {
                let mut make = |projection: &Projection<B>| {
                    let [inp, out] = projection.dims();
                    let bound = (3.0 / inp as f32).sqrt();
                    let down: Vec<f32> = (0..inp * rank)
                        .map(|_| rng.random_range(-bound..bound))
                        .collect();
                    CandidateWeight::LowRank(LowRankDelta {
                        down: Param::from_tensor(Tensor::from_data(
                            TensorData::new(down, [inp, rank]),
                            &device,
                        )),
                        up: Param::from_tensor(Tensor::zeros([rank, out], &device)),
                    })
                };
                let [q, k, v, o] = ordinary(model, i).map(&mut make);
                CandidateLayer { q, k, v, o }
            })
            .collect();
        Ok(Self { layers })
    }

    /// Full candidate projections, initialised from the model's current candidate projections
    /// (copies of the ordinary ones when it has none, as the reference initialises them).
    pub fn full(model: &LlamaModel<B>) -> Self {
        let layers = model
            .layers
            .iter()
            .enumerate()
            .map(|(i, layer)| {
                let source = match &layer.attn.candidate {
                    Some(c) => [&c.q, &c.k, &c.v, &c.o].map(|l| l.weight.val()),
                    None => ordinary(model, i).map(|p| p.dense_weight(&model.device())),
                };
                let [q, k, v, o] =
                    source.map(|w| CandidateWeight::Full(Param::from_tensor(w.detach())));
                CandidateLayer { q, k, v, o }
            })
            .collect();
        Self { layers }
    }

    /// Full or low-rank (and the rank).
    pub fn kind(&self) -> AdapterKind {
        match self.layers.first().map(|l| &l.q) {
            Some(CandidateWeight::LowRank(d)) => AdapterKind::LowRank {
                rank: d.down.val().dims()[1],
            },
            _ => AdapterKind::Full,
        }
    }

    /// Checks that the adapter fits `model` (layer count and every weight's shape).
    pub fn check_fits(&self, model: &LlamaModel<B>) -> Result<(), ModelError> {
        if self.layers.len() != model.layers.len() {
            return Err(ModelError::Adapter(format!(
                "the adapter has {} layers, the model {}",
                self.layers.len(),
                model.layers.len()
            )));
        }
        for (i, layer) in self.layers.iter().enumerate() {
            for ((name, w), base) in PROJECTIONS
                .iter()
                .zip(layer.weights())
                .zip(ordinary(model, i))
            {
                let expected = base.dims();
                let found = match w {
                    CandidateWeight::Full(p) => p.val().dims(),
                    CandidateWeight::LowRank(d) => [d.down.val().dims()[0], d.up.val().dims()[1]],
                };
                if found != expected {
                    return Err(ModelError::ShapeMismatch {
                        tensor: hf_name(i, name, "weight"),
                        expected: vec![expected[1], expected[0]],
                        found: vec![found[1], found[0]],
                    });
                }
            }
        }
        Ok(())
    }

    /// The merged candidate projections for `model`, one per layer (ordinary biases kept). On an
    /// autodiff backend they carry the graph back to the adapter's parameters.
    pub fn projections(
        &self,
        model: &LlamaModel<B>,
    ) -> Result<Vec<CandidateProjections<B>>, ModelError> {
        self.check_fits(model)?;
        Ok(self
            .layers
            .iter()
            .enumerate()
            .map(|(i, layer)| {
                let base = ordinary(model, i);
                let device = model.device();
                let [q, k, v, o] = [0, 1, 2, 3].map(|j| Linear {
                    weight: param(layer.weights()[j].merged(|| base[j].dense_weight(&device))),
                    bias: base[j].bias().cloned(),
                });
                CandidateProjections { q, k, v, o }
            })
            .collect())
    }

    /// `model` with this adapter's candidate projections in place of its own.
    pub fn apply(&self, model: LlamaModel<B>) -> Result<LlamaModel<B>, ModelError> {
        let projections = self.projections(&model)?;
        Ok(model.with_candidate_projections(projections, CandidateSource::Adapter))
    }

    /// Writes the adapter as safetensors: full projections under the official names
    /// (`model.layers.{i}.self_attn.beacon_q_proj.weight`, `[out, in]`), low-rank deltas under
    /// PEFT's (`...beacon_q_proj.lora_A.weight` `[r, in]`, `lora_B.weight` `[out, r]`, so that
    /// `W_candidate = W + B·A`). An existing file at `path` is replaced only as a whole.
    pub fn save(&self, path: &Path, info: &AdapterInfo) -> Result<(), ModelError> {
        let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
        let mut push = |name: String, t: Tensor<B, 2>| {
            // Stored as HF does, `[out, in]`: the transpose of burn's layout.
            let t = t.transpose();
            let shape = t.dims().to_vec();
            let data = t.into_data().convert::<f32>();
            let bytes = data
                .to_vec::<f32>()
                .expect("converted to f32")
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect();
            tensors.push((name, shape, bytes));
        };
        for (i, layer) in self.layers.iter().enumerate() {
            for (name, w) in PROJECTIONS.iter().zip(layer.weights()) {
                match w {
                    CandidateWeight::Full(p) => push(hf_name(i, name, "weight"), p.val()),
                    CandidateWeight::LowRank(d) => {
                        push(hf_name(i, name, "lora_A.weight"), d.down.val());
                        push(hf_name(i, name, "lora_B.weight"), d.up.val());
                    }
                }
            }
        }
        let views = tensors
            .iter()
            .map(|(name, shape, bytes)| {
                TensorView::new(Dtype::F32, shape.clone(), bytes).map(|v| (name.clone(), v))
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ModelError::Adapter(format!("{}: {e}", path.display())))?;
        let mut metadata = HashMap::new();
        metadata.insert("format".to_string(), "focusllm-candidates".to_string());
        metadata.insert(
            "kind".to_string(),
            match self.kind() {
                AdapterKind::Full => "full".to_string(),
                AdapterKind::LowRank { rank } => format!("low-rank {rank}"),
            },
        );
        for (key, value) in [
            ("step_mode", info.step_mode.clone()),
            ("training", info.training.clone()),
            ("base_model", info.base_model.clone()),
            ("local_window", info.local_window.map(|x| x.to_string())),
            ("chunk_size", info.chunk_size.map(|x| x.to_string())),
            ("prompt_cap", info.prompt_cap.map(|x| x.to_string())),
        ] {
            if let Some(v) = value {
                metadata.insert(key.to_string(), v);
            }
        }
        let tmp = path.with_extension("safetensors.tmp");
        safetensors::serialize_to_file(views, Some(metadata), &tmp)
            .map_err(|e| ModelError::Adapter(format!("{}: {e}", tmp.display())))?;
        std::fs::rename(&tmp, path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Reads an adapter written by [`CandidateAdapter::save`] (or any safetensors file with the
    /// official `beacon_{q,k,v,o}_proj` weights of every layer) for `model`.
    ///
    /// ```
    /// use std::path::Path;
    ///
    /// use burn::backend::Flex;
    /// use focusllm_models::{
    ///     AdapterInfo, AdapterKind, CandidateAdapter, CandidateSource, load_model,
    /// };
    ///
    /// // The tiny test model C of the focusllm workspace (this crate's directory is in it): an HF
    /// // directory with `config.json` and `model.safetensors`, and no tokenizer.
    /// let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/official/C"));
    /// let model = load_model::<Flex>(dir, &Default::default())?.model;
    /// // A rank-4 adapter as training starts it (it changes nothing yet), saved with the sizes to
    /// // run it with. The bundled SmolLM2 adapters (`adapters/`) load the same way.
    /// let info = AdapterInfo {
    ///     step_mode: Some("exact".into()),
    ///     chunk_size: Some(512),
    ///     ..Default::default()
    /// };
    /// # let name = format!("focusllm-doc-adapter-{}.safetensors", std::process::id());
    /// # let path = std::env::temp_dir().join(name);
    /// CandidateAdapter::low_rank(&model, 4, 7)?.save(&path, &info)?;
    ///
    /// let (adapter, read) = CandidateAdapter::load(&path, &model)?;
    /// assert_eq!(adapter.kind(), AdapterKind::LowRank { rank: 4 });
    /// assert_eq!(read, info);
    /// let model = adapter.apply(model)?; // merged once: inference costs what it cost before
    /// assert_eq!(model.candidate_source(), CandidateSource::Adapter);
    /// # std::fs::remove_file(&path)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn load(path: &Path, model: &LlamaModel<B>) -> Result<(Self, AdapterInfo), ModelError> {
        let weights = SafetensorsWeights::open_files(path, &[path.to_path_buf()])?;
        let info = read_info(path)?;
        let device = model.device();
        let load = |name: &str, expected: [usize; 2]| -> Result<Tensor<B, 2>, ModelError> {
            let (shape, data) = weights.load_f32(name)?;
            if shape != expected {
                let mismatch = ModelError::ShapeMismatch {
                    tensor: name.to_string(),
                    expected: expected.to_vec(),
                    found: shape,
                };
                return Err(ModelError::Adapter(format!(
                    "{}: {mismatch}",
                    path.display()
                )));
            }
            // `[out, in]` on disk, `[in, out]` in burn.
            let [rows, cols] = expected;
            Ok(Tensor::<B, 2>::from_data(
                TensorData::new(transposed_host(&data, rows, cols), [cols, rows]),
                &device,
            ))
        };
        let low_rank = weights.shape(&hf_name(0, "q", "lora_A.weight"));
        if let Some(shape) = &low_rank
            && (shape.len() != 2 || shape[0] == 0)
        {
            return Err(ModelError::Adapter(format!(
                "{}: `{}` has shape {shape:?}; a low-rank adapter needs [rank >= 1, in]",
                path.display(),
                hf_name(0, "q", "lora_A.weight")
            )));
        }
        let layers = (0..model.layers.len())
            .map(|i| {
                let base = ordinary(model, i);
                let mut out = Vec::with_capacity(4);
                for (name, projection) in PROJECTIONS.iter().zip(base) {
                    let [inp, outf] = projection.dims();
                    let w = match &low_rank {
                        Some(shape) => {
                            let rank = shape[0];
                            let down = load(&hf_name(i, name, "lora_A.weight"), [rank, inp])?;
                            let up = load(&hf_name(i, name, "lora_B.weight"), [outf, rank])?;
                            CandidateWeight::LowRank(LowRankDelta {
                                down: Param::from_tensor(down),
                                up: Param::from_tensor(up),
                            })
                        }
                        None => CandidateWeight::Full(Param::from_tensor(load(
                            &hf_name(i, name, "weight"),
                            [outf, inp],
                        )?)),
                    };
                    out.push(w);
                }
                let [q, k, v, o]: [CandidateWeight<B>; 4] = out
                    .try_into()
                    .map_err(|_| ModelError::Adapter("four projections".into()))?;
                Ok(CandidateLayer { q, k, v, o })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let adapter = Self { layers };
        adapter
            .check_fits(model)
            .map_err(|e| ModelError::Adapter(format!("{}: {e}", path.display())))?;
        // A file with more layers than the model is a mismatch too.
        let extra = hf_name(
            model.layers.len(),
            "q",
            if low_rank.is_some() {
                "lora_A.weight"
            } else {
                "weight"
            },
        );
        if weights.shape(&extra).is_some() {
            return Err(ModelError::Adapter(format!(
                "{}: the adapter has more layers than the model ({}), e.g. `{extra}`",
                path.display(),
                model.layers.len()
            )));
        }
        Ok((adapter, info))
    }
}

fn hf_name(layer: usize, proj: &str, suffix: &str) -> String {
    format!("model.layers.{layer}.self_attn.beacon_{proj}_proj.{suffix}")
}

fn read_info(path: &Path) -> Result<AdapterInfo, ModelError> {
    let io = |source| ModelError::Io {
        path: PathBuf::from(path),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    // SAFETY: the file is only read; a concurrent writer would at worst garble the metadata,
    // which the parser rejects.
    let bytes = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
    let (_, metadata) =
        SafeTensors::read_metadata(&bytes).map_err(|e| ModelError::Safetensors {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    let map = metadata.metadata().clone().unwrap_or_default();
    let size = |key: &str| -> Result<Option<usize>, ModelError> {
        map.get(key)
            .map(|v| {
                v.parse().map_err(|_| {
                    ModelError::Adapter(format!(
                        "{}: metadata `{key}` is {v:?}, not a size",
                        path.display()
                    ))
                })
            })
            .transpose()
    };
    Ok(AdapterInfo {
        step_mode: map.get("step_mode").cloned(),
        training: map.get("training").cloned(),
        base_model: map.get("base_model").cloned(),
        local_window: size("local_window")?,
        chunk_size: size("chunk_size")?,
        prompt_cap: size("prompt_cap")?,
    })
}
