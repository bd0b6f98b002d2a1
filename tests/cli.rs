//! The `focusllm` command: its subcommands, and bad input reported by name with a failing exit
//! status (no panic, nothing written). Runs the built binary.

use std::path::PathBuf;
use std::process::{Command, Output};

use sha2::{Digest, Sha256};

fn focusllm(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_focusllm"));
    command.args(args);
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().expect("the focusllm binary runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("focusllm-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn help_lists_the_jobs() {
    let output = focusllm(&["--help"], &[]);
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for job in ["generate", "ask", "passkey", "train", "bench"] {
        assert!(help.contains(job), "{job} missing from:\n{help}");
    }
    let ask = focusllm(&["help", "ask"], &[]);
    let ask = String::from_utf8_lossy(&ask.stdout);
    assert!(
        ask.contains("--focus-svg") && ask.contains("--model"),
        "{ask}"
    );
}

#[test]
fn a_missing_document_is_named() {
    let output = focusllm(
        &[
            "ask",
            "--file",
            "/nonexistent/book.txt",
            "--question",
            "Who?",
        ],
        &[],
    );
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(err.contains("/nonexistent/book.txt"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn an_uncached_model_id_offline_names_the_repository_and_file() {
    let home = scratch("hf-home");
    let output = focusllm(
        &["generate", "--model", "someone/no-such-model", "hello"],
        &[("HF_HOME", home.to_str().unwrap()), ("HF_HUB_OFFLINE", "1")],
    );
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains("someone/no-such-model")
            && err.contains("config.json")
            && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
    let output = focusllm(&["generate", "--model", "a/b/c", "hello"], &[]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    std::fs::remove_dir_all(&home).ok();
}

#[test]
fn train_init_resumes_only_the_run_it_started() {
    let dir = scratch("train");
    let run = dir.join("run");
    std::fs::create_dir_all(run.join("latest")).unwrap();
    let adapter = dir.join("a.safetensors");
    std::fs::write(&adapter, b"not read for its content here").unwrap();
    // A run started from another adapter: refused, both digests named.
    std::fs::write(run.join("init.sha256"), "0123abcd\n").unwrap();
    let out = dir.join("out.safetensors");
    let args = [
        "train",
        "--out",
        out.to_str().unwrap(),
        "--run-dir",
        run.to_str().unwrap(),
        "--init",
        adapter.to_str().unwrap(),
        "--model",
        "/nonexistent/model.gguf",
    ];
    let output = focusllm(&args, &[]);
    assert_eq!(output.status.code(), Some(1));
    let err = stderr(&output);
    assert!(
        err.contains("0123abcd") && err.contains("a.safetensors"),
        "{err}"
    );
    assert!(err.contains("fresh --run-dir"), "{err}");
    // The same adapter: accepted (the run then stops at the missing model).
    let sha = format!("{:x}", Sha256::digest(b"not read for its content here"));
    std::fs::write(run.join("init.sha256"), format!("{sha}\n")).unwrap();
    let output = focusllm(&args, &[]);
    let err = stderr(&output);
    assert!(err.contains("resuming it"), "{err}");
    assert!(err.contains("/nonexistent/model.gguf"), "{err}");
    assert!(!out.exists(), "nothing written");
    std::fs::remove_dir_all(&dir).ok();
}
