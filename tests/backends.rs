//! The same engine on other backends: wgpu parity with the official fixtures (CI runs it on Mesa's
//! lavapipe software Vulkan driver), and clear errors for backends that are missing or cannot start.

mod common;
#[path = "sharding/mod.rs"]
mod shards;

use std::process::Command;

use common::*;

fn example(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    profile_dir
        .join("examples")
        .join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// `--backend cuda`: without the feature, an error naming it; with it but without a GPU, an error
/// saying so. Never a crash (exit code 101) or a signal.
#[test]
fn cuda_backend_missing_or_unavailable_is_a_clear_error() {
    let ids =
        std::env::temp_dir().join(format!("focusllm-backend-ids-{}.json", std::process::id()));
    std::fs::write(&ids, "[1, 5, 6, 7]").unwrap();
    let model = fixtures().join("official/C");
    let out = Command::new(example("logits"))
        .arg("--model")
        .arg(&model)
        .arg("--ids")
        .arg(&ids)
        .args(["--backend", "cuda", "--quiet"])
        .output()
        .expect("run the logits example");
    std::fs::remove_file(&ids).ok();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let gpu_present = std::path::Path::new("/dev/nvidia0").exists();
    if cfg!(feature = "cuda") && gpu_present {
        assert!(
            out.status.success(),
            "cuda run failed on a GPU machine: {stderr}"
        );
        return;
    }
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected a clean failure, got {:?}: {stderr}",
        out.status
    );
    if cfg!(feature = "cuda") {
        assert!(stderr.contains("backend `cuda` is unavailable"), "{stderr}");
    } else {
        assert!(stderr.contains("--features cuda"), "{stderr}");
    }
}

/// Prefill, greedy steps and perplexity of official model `name` on backend `B` against the
/// reference fixtures (tolerance 1e-3 on logits, tokens identical).
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn parity<B: burn::tensor::backend::Backend>(name: &str, device: &B::Device) {
    use focusllm::core::{FocusEngine, GenerateOptions};
    const TOL: f32 = 1e-3;
    let dir = fixtures().join("official").join(name);
    let model = focusllm::models::load_model::<B>(&dir, device)
        .expect("load on the device")
        .model;
    let long = ids(&json(&dir.join("inputs.json"))["long_ids"]);
    let engine = FocusEngine::new(&model, official_config(&dir)).unwrap();

    // Prefill (step 0) and greedy steps.
    let greedy = json(&dir.join("c_greedy.json"));
    let mut steps = Vec::new();
    let options = GenerateOptions {
        max_tokens: 5,
        stop_tokens: Some(Vec::new()),
        ..Default::default()
    };
    let generation = engine
        .session()
        .generate(&long, &options, None, |t| {
            steps.push(t.logits.clone());
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(
        generation.tokens,
        ids(&greedy["tokens"]),
        "{name}: greedy tokens"
    );
    for (k, (got, want)) in steps
        .iter()
        .zip(greedy["steps"].as_array().unwrap())
        .enumerate()
    {
        let diff = max_abs_diff(got, &floats(&want["logits"]));
        assert!(diff < TOL, "{name}: step {k} logits max diff {diff}");
    }

    // Perplexity.
    let ppl = json(&dir.join("d_ppl.json"));
    let report = engine.session().perplexity(&long, 128).unwrap();
    let want = ppl["loss"].as_f64().unwrap();
    assert!(
        (report.loss - want).abs() / want < 1e-4,
        "{name}: loss {} vs {want}",
        report.loss
    );
}

#[cfg(feature = "wgpu")]
mod wgpu {
    use super::*;
    use focusllm::backends::{BackendKind, Wgpu, probe, wgpu_device};

    /// The wgpu device, or `None` (printed) when no Vulkan/Metal/DX12 adapter exists; under CI a
    /// missing driver fails the test.
    fn device() -> Option<burn::backend::wgpu::WgpuDevice> {
        let device = wgpu_device(0);
        match probe::<Wgpu>(BackendKind::Wgpu, &device) {
            Ok(()) => Some(device),
            Err(e) if std::env::var_os("CI").is_some() => {
                panic!("CI is set and wgpu cannot start: {e}")
            }
            Err(e) => {
                eprintln!("SKIP: {e} (install mesa-vulkan-drivers and libvulkan1 for lavapipe)");
                None
            }
        }
    }

    #[test]
    fn c_parity_on_wgpu() {
        if let Some(device) = device() {
            parity::<Wgpu>("C", &device);
        }
    }

    #[test]
    fn d_parity_on_wgpu() {
        if let Some(device) = device() {
            parity::<Wgpu>("D", &device);
        }
    }
}

/// CUDA parity runs only where an NVIDIA GPU answers (CI has none: it skips with a printed reason;
/// `scripts/gpu-check.sh` runs it on a GPU machine).
#[cfg(feature = "cuda")]
mod cuda {
    use super::*;
    use focusllm::backends::{BackendKind, Cuda, cuda_device, probe};

    fn device() -> Option<burn::backend::cuda::CudaDevice> {
        let device = cuda_device(0);
        match probe::<Cuda>(BackendKind::Cuda, &device) {
            Ok(()) => Some(device),
            Err(e) => {
                eprintln!("SKIP: {e}");
                None
            }
        }
    }

    #[test]
    fn c_parity_on_cuda() {
        if let Some(device) = device() {
            parity::<Cuda>("C", &device);
        }
    }

    #[test]
    fn d_parity_on_cuda() {
        if let Some(device) = device() {
            parity::<Cuda>("D", &device);
        }
    }
}
