//! `examples/logits.rs` against the official fixtures: the tool other implementations are compared
//! with must itself agree with the reference (prefill, greedy steps, perplexity, chunk count).

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;

/// The example binary that `cargo test` builds next to this test binary.
fn logits_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    let path = profile_dir
        .join("examples")
        .join(format!("logits{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.exists(),
        "{} missing: `cargo test` builds the examples",
        path.display()
    );
    path
}

fn run(name: &str, extra: &[&str]) -> serde_json::Value {
    let dir = fixtures().join("official").join(name);
    let inputs = json(&dir.join("inputs.json"));
    let ids_file = std::env::temp_dir().join(format!(
        "focusllm-logits-{name}-{}.json",
        std::process::id()
    ));
    std::fs::write(&ids_file, inputs["long_ids"].to_string()).unwrap();
    let config = official_config(&dir);
    let out = Command::new(logits_binary())
        .arg("--model")
        .arg(&dir)
        .arg("--ids")
        .arg(&ids_file)
        .args(["--local-window", &config.local_window.to_string()])
        .args(["--chunk-size", &config.chunk_size.to_string()])
        .args(["--threshold", "4096", "--quiet"])
        .args(extra)
        .output()
        .expect("run logits example");
    std::fs::remove_file(&ids_file).ok();
    assert!(
        out.status.success(),
        "logits failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object on stdout")
}

fn check_greedy(name: &str) {
    let dir = fixtures().join("official").join(name);
    let fixture = json(&dir.join("c_greedy.json"));
    let prefill = json(&dir.join("b_prefill.json"));
    let out = run(name, &["--steps", "5"]);
    assert_eq!(out["chunks"], prefill["structure"]["n_chunks"]);
    assert!(
        max_abs_diff(
            &floats(&out["prefill_logits"]),
            &floats(&prefill["final_logits"])
        ) < 1e-4
    );
    let steps = out["steps"].as_array().unwrap();
    let tokens: Vec<u32> = steps
        .iter()
        .map(|s| s["token"].as_u64().unwrap() as u32)
        .collect();
    assert_eq!(tokens, ids(&fixture["tokens"]));
    for (got, want) in steps.iter().zip(fixture["steps"].as_array().unwrap()) {
        assert!(max_abs_diff(&floats(&got["logits"]), &floats(&want["logits"])) < 1e-4);
    }
}

#[test]
fn logits_example_greedy_c() {
    check_greedy("C");
}

#[test]
fn logits_example_greedy_d() {
    check_greedy("D");
}

#[test]
fn logits_example_perplexity() {
    for name in ["C", "D"] {
        let dir = fixtures().join("official").join(name);
        let want = json(&dir.join("d_ppl.json"));
        let out = run(name, &["--ppl"]);
        let (loss, expected) = (
            out["loss"].as_f64().unwrap(),
            want["loss"].as_f64().unwrap(),
        );
        assert!(
            (loss - expected).abs() / expected < 1e-5,
            "{name}: {loss} vs {expected}"
        );
        assert_eq!(out["nll"].as_array().unwrap().len(), 128);
        assert_eq!(
            out["chunks"],
            want["structure_of_context_prefill"]["n_chunks"]
        );
    }
}

#[cfg(unix)]
#[test]
fn a_closed_stdout_ends_the_program_quietly() {
    use std::io::Read;
    use std::process::Stdio;
    let dir = fixtures().join("official").join("C");
    let inputs = json(&dir.join("inputs.json"));
    let ids_file =
        std::env::temp_dir().join(format!("focusllm-logits-pipe-{}.json", std::process::id()));
    std::fs::write(&ids_file, inputs["long_ids"].to_string()).unwrap();
    let mut child = Command::new(logits_binary())
        .arg("--model")
        .arg(&dir)
        .arg("--ids")
        .arg(&ids_file)
        .arg("--quiet")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run logits example");
    // The reader goes away before the program writes its answer.
    drop(child.stdout.take());
    let status = child.wait().unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    std::fs::remove_file(&ids_file).ok();
    assert!(!stderr.contains("panicked"), "stderr: {stderr}");
    use std::os::unix::process::ExitStatusExt;
    assert!(
        status.success() || status.signal() == Some(13),
        "ended by {status:?}; stderr: {stderr}"
    );
}
