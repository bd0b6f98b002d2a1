//! The on-disk format of a training run: `step-N/` checkpoint directories (tensors and
//! `state.json`), the `latest` pointer, and the `loss.jsonl` log, written so that an interruption
//! never leaves a run without a whole checkpoint.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use burn::record::{FullPrecisionSettings, NamedMpkFileRecorder};
use serde::{Deserialize, Serialize};

use crate::error::{FocusError, Result};
use crate::train::config::TrainConfig;
use crate::train::trainer::StepRecord;

/// What the checkpoint's `state.json` holds besides the tensors.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct TrainState {
    pub(crate) step: usize,
    pub(crate) tokens: u64,
    pub(crate) seconds: f64,
    /// Scalar parameters of the trained module: tells full from low-rank and one rank from another.
    pub(crate) params: usize,
    pub(crate) config: TrainConfig,
}

pub(crate) type CheckpointRecorder = NamedMpkFileRecorder<FullPrecisionSettings>;

/// Writes checkpoint `state.step` into `dir`: `files` fills a fresh staging directory (tensors),
/// `state.json` joins them, the directory takes its final name `step-N` at once, and `latest` is
/// switched to it last, so an interruption at any point leaves the previous checkpoint whole. Older
/// checkpoints are then removed. A step already saved is left as it is.
pub(crate) fn write(
    dir: &Path,
    state: &TrainState,
    files: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    let name = format!("step-{:06}", state.step);
    if latest_checkpoint(dir)?.as_deref() == Some(name.as_str()) {
        // This step is saved already (a cancel right after a periodic checkpoint): rewriting the
        // only checkpoint in place could leave none whole.
        return Ok(());
    }
    let target = dir.join(&name);
    let staging = dir.join(format!("{name}.tmp"));
    let io = FocusError::io_at;
    if staging.exists() {
        fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    fs::create_dir_all(&staging).map_err(io(&staging))?;
    files(&staging)?;
    let json = serde_json::to_string_pretty(state).expect("state serialises");
    fs::write(staging.join("state.json"), json).map_err(io(&staging))?;
    if target.exists() {
        fs::remove_dir_all(&target).map_err(io(&target))?;
    }
    fs::rename(&staging, &target).map_err(io(&target))?;
    let latest = dir.join(LATEST);
    let tmp = dir.join(format!("{LATEST}.tmp"));
    fs::write(&tmp, &name).map_err(io(&tmp))?;
    fs::rename(&tmp, &latest).map_err(io(&latest))?;
    for entry in fs::read_dir(dir).map_err(io(dir))?.flatten() {
        let file_name = entry.file_name();
        let file_name = file_name.to_string_lossy();
        if file_name.starts_with("step-") && file_name != name {
            fs::remove_dir_all(entry.path()).map_err(io(&entry.path()))?;
        }
    }
    Ok(())
}

/// The `state.json` of checkpoint directory `source`.
pub(crate) fn read_state(source: &Path) -> Result<TrainState> {
    let path = source.join("state.json");
    let text = fs::read_to_string(&path).map_err(|e| FocusError::Io {
        path: path.clone(),
        source: e,
    })?;
    serde_json::from_str(&text)
        .map_err(|e| FocusError::Checkpoint(format!("{}: {e}", path.display())))
}

/// The loss log of a run directory (JSON lines, one [`StepRecord`] per step).
pub(crate) const LOG: &str = "loss.jsonl";
/// The file naming the latest checkpoint directory.
const LATEST: &str = "latest";

pub(crate) fn error(path: &Path, e: impl std::fmt::Display) -> FocusError {
    FocusError::Checkpoint(format!("{}: {e}", path.display()))
}

/// The checkpoint directory name `latest` points to, if any.
pub(crate) fn latest_checkpoint(dir: &Path) -> Result<Option<String>> {
    let path = dir.join(LATEST);
    match fs::read_to_string(&path) {
        Ok(name) => Ok(Some(name.trim().to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(FocusError::Io { path, source }),
    }
}

pub(crate) fn config_diff(a: &TrainConfig, b: &TrainConfig) -> String {
    let (a, b) = (
        serde_json::to_value(a).expect("config serialises"),
        serde_json::to_value(b).expect("config serialises"),
    );
    let fields: Vec<String> = a
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, v)| b.get(k.as_str()) != Some(v))
        .map(|(k, v)| format!("{k}: {v} there, {} here", b[k.as_str()]))
        .collect();
    fields.join("; ")
}

pub(crate) fn append_log(path: &Path, record: &StepRecord) -> Result<()> {
    let io = |source| FocusError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(io)?;
    let line = serde_json::to_string(record).expect("record serialises");
    writeln!(file, "{line}").map_err(io)
}

pub(crate) fn read_log(path: &Path) -> Result<Vec<StepRecord>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(FocusError::Io {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let lines = BufReader::new(file)
        .lines()
        .collect::<std::io::Result<Vec<String>>>()
        .map_err(|source| FocusError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    let last = lines.len().saturating_sub(1);
    let mut records = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        match serde_json::from_str(line) {
            Ok(r) => records.push(r),
            // A process killed mid-write leaves a partial last line: that step was never
            // checkpointed, so it is dropped.
            Err(_) if i == last => {}
            Err(e) => {
                return Err(FocusError::Checkpoint(format!(
                    "{} line {}: {e}",
                    path.display(),
                    i + 1
                )));
            }
        }
    }
    Ok(records)
}

/// Drops log lines of steps at or after `step` (written after the checkpoint being resumed).
pub(crate) fn truncate_log(path: &Path, step: usize) -> Result<()> {
    let kept: Vec<StepRecord> = read_log(path)?
        .into_iter()
        .filter(|r| r.step < step)
        .collect();
    if kept.is_empty() && !path.exists() {
        return Ok(());
    }
    let mut text = String::new();
    for r in &kept {
        text.push_str(&serde_json::to_string(r).expect("record serialises"));
        text.push('\n');
    }
    let io = |source| FocusError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("jsonl.tmp");
    fs::write(&tmp, text).map_err(io)?;
    fs::rename(&tmp, path).map_err(io)
}
