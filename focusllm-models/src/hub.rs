//! Models by Hugging Face id, through the standard Hugging Face cache (`hf-hub`, sync API).
//!
//! An id is `org/name`, optionally followed by `@revision` (a branch, tag or commit hash; `main`
//! when absent) and then by `:file.gguf` (one GGUF file of the repository, possibly in a
//! subfolder): `HuggingFaceTB/SmolLM2-135M-Instruct`, `org/name@v1.0`,
//! `org/name:model-Q4_K_M.gguf`, `org/name@refs/pr/3:gguf/model.gguf`. The revision comes
//! before the file because a file name may contain `@` but a Git revision cannot contain `:`.
//!
//! [`fetch`] is **cache-first**: it looks in the cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`,
//! else `~/.cache/huggingface/hub`) first, in the layout `huggingface_hub` (Python) and `hf-hub`
//! (Rust) share: `models--org--name/refs/<revision>` holds a commit hash,
//! `models--org--name/snapshots/<commit>/<file>` the files. When every file it needs is there, no
//! network request is made at all. Otherwise it downloads the missing files (offline mode,
//! `HF_HUB_OFFLINE=1`, turns that into a [`HubErrorKind::Offline`] error naming the repository
//! and the file). Files missing from a cached snapshot are downloaded at that snapshot's commit,
//! so one snapshot never mixes two commits; to pick up a newer `main`, delete the ref (or the
//! repository's cache folder) or name the revision. An optional file the Hub lacks (HTTP 404) is
//! recorded in `models--org--name/.no_exist/<commit>/`, as `huggingface_hub` does, and not asked
//! for again; one that failed for another reason is skipped (with a warning) and retried on the
//! next call.
//!
//! It returns what [`crate::load_model`] takes: the snapshot directory of a safetensors repository
//! (`config.json`, `tokenizer.json`, the optional `tokenizer_config.json` and
//! `generation_config.json`, and `model.safetensors` or `model.safetensors.index.json` with every
//! shard it lists), or the path of the GGUF file.
//!
//! ```no_run
//! use focusllm_models::hub::{HubOptions, ModelSource};
//!
//! # fn main() -> Result<(), focusllm_models::ModelError> {
//! // An existing local path always wins; anything else shaped like `org/name` is a Hub id.
//! let source = ModelSource::parse("HuggingFaceTB/SmolLM2-135M-Instruct")?;
//! let options = HubOptions { progress: true, ..HubOptions::from_env() };
//! let path = source.resolve(&options)?; // downloads on first use, then works offline
//! let device = Default::default();
//! let loaded = focusllm_models::load_model::<burn::backend::Flex>(&path, &device)?;
//! # let _ = loaded;
//! # Ok(())
//! # }
//! ```

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{HubErrorKind, ModelError};

/// The revision used when an id names none.
const DEFAULT_REVISION: &str = "main";
/// The longest repository id the Hub accepts (`org/name`).
const MAX_REPO_ID_LEN: usize = 96;
const CONFIG: &str = "config.json";
const TOKENIZER: &str = "tokenizer.json";
const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
const GENERATION_CONFIG: &str = "generation_config.json";
const SINGLE_WEIGHTS: &str = "model.safetensors";
const WEIGHTS_INDEX: &str = "model.safetensors.index.json";

// ---------------------------------------------------------------------------------------------
// Ids
// ---------------------------------------------------------------------------------------------

/// A model on the Hugging Face Hub: `org/name[@revision][:file.gguf]` (see the [module](self)
/// docs). Built by [`ModelId::parse`], which validates every part, so a `ModelId` always names a
/// well-formed repository, revision and file.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ModelId {
    repo: String,
    revision: Option<String>,
    file: Option<String>,
}

impl ModelId {
    /// Parses `org/name[@revision][:file.gguf]`. Malformed ids (an empty part, not exactly one
    /// `/` in the repository, characters the Hub refuses, a revision or file path with `..`, a
    /// file that is not `.gguf`) are [`ModelError::InvalidModelId`] errors saying what is wrong.
    ///
    /// ```
    /// use focusllm_models::hub::ModelId;
    ///
    /// let id = ModelId::parse("org/name@v1:q4/model.gguf").unwrap();
    /// assert_eq!((id.repo(), id.revision(), id.file()), ("org/name", "v1", Some("q4/model.gguf")));
    /// assert_eq!(ModelId::parse("org/name").unwrap().revision(), "main");
    /// assert!(ModelId::parse("org/").is_err());
    /// ```
    pub fn parse(id: &str) -> Result<Self, ModelError> {
        let invalid = |reason: String| ModelError::InvalidModelId {
            id: id.to_string(),
            reason,
        };
        if id.trim().is_empty() {
            return Err(invalid(
                "the id is empty (expected `org/name[@revision][:file.gguf]`)".into(),
            ));
        }
        let repo_end = id.find(['@', ':']).unwrap_or(id.len());
        let repo = &id[..repo_end];
        check_repo(repo).map_err(invalid)?;
        let rest = &id[repo_end..];
        let (revision, file) = if let Some(rest) = rest.strip_prefix('@') {
            match rest.split_once(':') {
                Some((revision, file)) => (Some(revision), Some(file)),
                None => (Some(rest), None),
            }
        } else if let Some(file) = rest.strip_prefix(':') {
            (None, Some(file))
        } else {
            (None, None)
        };
        if let Some(revision) = revision {
            check_revision(revision).map_err(invalid)?;
        }
        if let Some(file) = file {
            check_file(file).map_err(invalid)?;
        }
        Ok(Self {
            repo: repo.to_string(),
            revision: revision.map(str::to_string),
            file: file.map(str::to_string),
        })
    }

    /// The repository, `org/name`.
    pub fn repo(&self) -> &str {
        &self.repo
    }

    /// The revision: the one the id named, else `main`.
    pub fn revision(&self) -> &str {
        self.revision.as_deref().unwrap_or(DEFAULT_REVISION)
    }

    /// The GGUF file inside the repository, when the id names one (`None`: a safetensors
    /// repository).
    pub fn file(&self) -> Option<&str> {
        self.file.as_deref()
    }

    /// The same id at another revision (validated like [`ModelId::parse`] does).
    pub fn with_revision(mut self, revision: &str) -> Result<Self, ModelError> {
        check_revision(revision).map_err(|reason| ModelError::InvalidModelId {
            id: format!("{}@{revision}", self.repo),
            reason,
        })?;
        self.revision = Some(revision.to_string());
        Ok(self)
    }

    /// [`fetch`]es this model: the path [`crate::load_model`] takes.
    pub fn fetch(&self, options: &HubOptions) -> Result<PathBuf, ModelError> {
        fetch(self, options)
    }
}

impl fmt::Display for ModelId {
    /// The id as [`ModelId::parse`] reads it back (the revision only when one was named).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.repo)?;
        if let Some(revision) = &self.revision {
            write!(f, "@{revision}")?;
        }
        if let Some(file) = &self.file {
            write!(f, ":{file}")?;
        }
        Ok(())
    }
}

impl FromStr for ModelId {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// `org/name` as the Hub accepts it (the rules of `huggingface_hub.validate_repo_id`).
fn check_repo(repo: &str) -> Result<(), String> {
    let parts: Vec<&str> = repo.split('/').collect();
    if parts.len() != 2 {
        return Err(format!(
            "the repository `{repo}` must be `org/name`, with exactly one `/` (found {})",
            parts.len() - 1
        ));
    }
    if repo.len() > MAX_REPO_ID_LEN {
        return Err(format!(
            "the repository `{repo}` is longer than {MAX_REPO_ID_LEN} characters"
        ));
    }
    for (part, what) in parts.iter().zip(["organisation", "name"]) {
        if part.is_empty() {
            return Err(format!(
                "the repository's {what} is empty (expected `org/name`)"
            ));
        }
        if let Some(c) = part
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
        {
            return Err(format!(
                "the repository's {what} `{part}` contains {c:?} (allowed: letters, digits, `-`, `_`, `.`)"
            ));
        }
        let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
        if !part.starts_with(word) || !part.ends_with(word) {
            return Err(format!(
                "the repository's {what} `{part}` must start and end with a letter, a digit or `_`"
            ));
        }
        if part.contains("--") || part.contains("..") {
            return Err(format!(
                "the repository's {what} `{part}` contains `--` or `..`"
            ));
        }
    }
    Ok(())
}

/// A branch, tag or commit: no empty, `.` or `..` path segment (it becomes a path under `refs/`),
/// no whitespace, control character or backslash.
fn check_revision(revision: &str) -> Result<(), String> {
    if revision.is_empty() {
        return Err("the revision after `@` is empty".into());
    }
    if let Some(c) = revision
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || *c == '\\')
    {
        return Err(format!("the revision `{revision}` contains {c:?}"));
    }
    if revision
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(format!(
            "the revision `{revision}` has an empty, `.` or `..` segment"
        ));
    }
    Ok(())
}

/// A relative path inside the repository, without `.`/`..` segments.
fn check_relative_path(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("the file path is empty".into());
    }
    if let Some(c) = path.chars().find(|c| c.is_control() || *c == '\\') {
        return Err(format!("the file path `{path}` contains {c:?}"));
    }
    if path
        .split('/')
        .any(|seg| seg.is_empty() || seg == "." || seg == "..")
    {
        return Err(format!(
            "the file path `{path}` is not a relative path inside the repository (an empty, `.` or `..` segment)"
        ));
    }
    Ok(())
}

/// The file part of an id: a relative `.gguf` path.
fn check_file(file: &str) -> Result<(), String> {
    if file.is_empty() {
        return Err("the file after `:` is empty (expected `org/name:file.gguf`)".into());
    }
    check_relative_path(file)?;
    if !file.to_ascii_lowercase().ends_with(".gguf") {
        let hint = if file.contains('@') {
            " (a revision goes before the file: `org/name@revision:file.gguf`)"
        } else {
            " (safetensors repositories are named without a file: `org/name`)"
        };
        return Err(format!("the file `{file}` is not a `.gguf` file{hint}"));
    }
    Ok(())
}

/// Whether a model argument that is **not** an existing path should be read as a Hub id: it does
/// not start like a path (`/`, `.`, `~`, a backslash or `://` anywhere), its repository part (before
/// the first `@` or `:`) has exactly one `/`, and that part does not end in `.gguf` or
/// `.safetensors` (`models/x.gguf` is a missing file, not a repository). `org/` counts as an id,
/// so that [`ModelId::parse`] can say what is wrong with it. Callers check for an existing path
/// first; [`ModelSource::parse`] does both.
pub fn looks_like_hub_id(s: &str) -> bool {
    if s.is_empty() || s.starts_with(['/', '.', '~']) || s.contains('\\') || s.contains("://") {
        return false;
    }
    let repo = &s[..s.find(['@', ':']).unwrap_or(s.len())];
    let lower = repo.to_ascii_lowercase();
    repo.matches('/').count() == 1 && !lower.ends_with(".gguf") && !lower.ends_with(".safetensors")
}

/// Where a model comes from: a local path, or a Hub id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A local HF directory or GGUF file (it may not exist: [`crate::load_model`] reports that).
    Local(PathBuf),
    /// A model on the Hugging Face Hub.
    Hub(ModelId),
}

impl ModelSource {
    /// Reads a `--model` argument: an existing path is [`ModelSource::Local`] whatever its shape;
    /// otherwise a string that [`looks_like_hub_id`] is parsed as a [`ModelId`] (a malformed one
    /// is an error that also says no such path exists), and anything else is a local path.
    ///
    /// ```
    /// use focusllm_models::hub::{ModelId, ModelSource};
    ///
    /// // An existing path is local whatever its shape (this crate's directory, say).
    /// let here = env!("CARGO_MANIFEST_DIR");
    /// assert_eq!(ModelSource::parse(here)?, ModelSource::Local(here.into()));
    /// // Otherwise `org/name[@revision][:file.gguf]` is a Hub id, anything else a local path.
    /// let id = "HuggingFaceTB/SmolLM2-135M-Instruct";
    /// assert_eq!(ModelSource::parse(id)?, ModelSource::Hub(ModelId::parse(id)?));
    /// assert_eq!(ModelSource::parse("model.gguf")?, ModelSource::Local("model.gguf".into()));
    /// // A malformed id is an error (here: the file is not a GGUF file).
    /// assert!(ModelSource::parse("org/name:model.bin").is_err());
    /// # Ok::<(), focusllm_models::ModelError>(())
    /// ```
    pub fn parse(s: &str) -> Result<Self, ModelError> {
        if s.trim().is_empty() {
            return Err(ModelError::InvalidModelId {
                id: s.to_string(),
                reason: "the model is empty (expected a local path or `org/name[@revision][:file.gguf]`)"
                    .into(),
            });
        }
        if Path::new(s).exists() || !looks_like_hub_id(s) {
            return Ok(Self::Local(PathBuf::from(s)));
        }
        ModelId::parse(s).map(Self::Hub).map_err(|e| match e {
            ModelError::InvalidModelId { id, reason } => ModelError::InvalidModelId {
                id,
                reason: format!("{reason}; no file or directory of that name exists either"),
            },
            other => other,
        })
    }

    /// The path [`crate::load_model`] takes: a local path as is, a Hub id through [`fetch`].
    pub fn resolve(&self, options: &HubOptions) -> Result<PathBuf, ModelError> {
        match self {
            Self::Local(path) => Ok(path.clone()),
            Self::Hub(id) => fetch(id, options),
        }
    }
}

impl fmt::Display for ModelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Local(path) => write!(f, "{}", path.display()),
            Self::Hub(id) => write!(f, "{id}"),
        }
    }
}

impl FromStr for ModelSource {
    type Err = ModelError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

// ---------------------------------------------------------------------------------------------
// Options
// ---------------------------------------------------------------------------------------------

/// How [`fetch`] reaches the cache and the Hub. [`Default`] is [`HubOptions::from_env`].
#[derive(Clone, PartialEq, Eq)]
pub struct HubOptions {
    /// The hub cache: the directory holding `models--org--name` folders. `None` only when no
    /// default could be found (no home directory); [`fetch`] then fails with
    /// [`HubErrorKind::Cache`].
    pub cache_dir: Option<PathBuf>,
    /// Never use the network: files missing from the cache are [`HubErrorKind::Offline`] errors
    /// (optional files are skipped).
    pub offline: bool,
    /// Show a progress bar (indicatif, on stderr; drawn only when stderr is a terminal) for each
    /// download.
    pub progress: bool,
    /// The access token for private or gated repositories.
    pub token: Option<String>,
    /// The Hub's base URL (`None`: `https://huggingface.co`).
    pub endpoint: Option<String>,
}

impl fmt::Debug for HubOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubOptions")
            .field("cache_dir", &self.cache_dir)
            .field("offline", &self.offline)
            .field("progress", &self.progress)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

impl Default for HubOptions {
    fn default() -> Self {
        Self::from_env()
    }
}

impl HubOptions {
    /// The options the environment asks for, like Python's `huggingface_hub` reads them:
    /// - cache: `HF_HUB_CACHE` (or the older `HUGGINGFACE_HUB_CACHE`), else `$HF_HOME/hub`,
    ///   where `HF_HOME` defaults to `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`;
    /// - offline: `HF_HUB_OFFLINE` set to `1`, `true`, `yes` or `on` (any case);
    /// - token: `HF_TOKEN` (or the older `HUGGING_FACE_HUB_TOKEN`), else the token file
    ///   (`HF_TOKEN_PATH`, else `$HF_HOME/token`, written by `huggingface-cli login`);
    /// - endpoint: `HF_ENDPOINT`.
    ///
    /// `progress` is `true`. Empty variables count as unset; a leading `~/` is the home directory.
    pub fn from_env() -> Self {
        Self::from_vars(|key| std::env::var(key).ok())
    }

    /// [`HubOptions::from_env`] with the variables read through `var` (e.g. a map, in tests, or
    /// the environment overlaid with a configuration file). Only the token file is read from disk.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Self {
        let get = |key: &str| var(key).filter(|v| !v.is_empty());
        let home = get("HOME")
            .or_else(|| get("USERPROFILE"))
            .map(PathBuf::from);
        let expand = |value: String| -> PathBuf {
            match (value.strip_prefix("~/"), &home) {
                (Some(rest), Some(home)) => home.join(rest),
                _ if value == "~" => home.clone().unwrap_or_else(|| value.clone().into()),
                _ => PathBuf::from(value),
            }
        };
        let hf_home = get("HF_HOME").map(&expand).or_else(|| {
            get("XDG_CACHE_HOME")
                .map(&expand)
                .or_else(|| home.as_ref().map(|h| h.join(".cache")))
                .map(|cache| cache.join("huggingface"))
        });
        let cache_dir = get("HF_HUB_CACHE")
            .or_else(|| get("HUGGINGFACE_HUB_CACHE"))
            .map(&expand)
            .or_else(|| hf_home.as_ref().map(|h| h.join("hub")));
        let offline = get("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        });
        let token = get("HF_TOKEN")
            .or_else(|| get("HUGGING_FACE_HUB_TOKEN"))
            .or_else(|| {
                let path = get("HF_TOKEN_PATH")
                    .map(&expand)
                    .or_else(|| hf_home.as_ref().map(|h| h.join("token")))?;
                let text = std::fs::read_to_string(path).ok()?;
                Some(text.trim().to_string()).filter(|t| !t.is_empty())
            })
            .map(|t| t.trim().to_string());
        Self {
            cache_dir,
            offline,
            progress: true,
            token,
            endpoint: get("HF_ENDPOINT"),
        }
    }

    /// Options that only read `cache_dir`: offline, no progress bar, no token.
    pub fn offline_in(cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            cache_dir: Some(cache_dir.into()),
            offline: true,
            progress: false,
            token: None,
            endpoint: None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Fetching
// ---------------------------------------------------------------------------------------------

/// How much a file is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Need {
    /// Must be there.
    Required,
    /// Used when there (absence is fine).
    Optional,
    /// One of the two weight layouts (`model.safetensors`, or the index and its shards).
    Weights,
}

/// What the cache lacks, or the path to return.
enum Plan {
    Ready(PathBuf),
    Missing {
        file: String,
        need: Need,
        /// The cached snapshot's commit, when there is one.
        commit: Option<String>,
    },
}

/// The state of one [`fetch`] call.
struct Fetcher<'a> {
    id: &'a ModelId,
    options: &'a HubOptions,
    cache_dir: PathBuf,
    /// `cache_dir/models--org--name`.
    repo_dir: PathBuf,
    /// Files known to be absent from the repository, or that could not be downloaded and are
    /// optional: not asked for again during this call.
    skipped: HashSet<String>,
    /// Files downloaded during this call.
    downloaded: HashSet<String>,
    api: Option<hf_hub::api::sync::Api>,
}

/// Makes a model available locally and returns the path [`crate::load_model`] takes: the snapshot
/// directory of a safetensors repository, or the GGUF file an id with `:file.gguf` names. See the
/// [module](self) docs for what is fetched and the cache-first rules. Every failure is a
/// [`ModelError::Hub`] naming the repository, the revision and the file (a malformed shard index
/// is a [`ModelError::Safetensors`] error), never a panic.
pub fn fetch(id: &ModelId, options: &HubOptions) -> Result<PathBuf, ModelError> {
    let error = |kind, file: &str, message: String| ModelError::Hub {
        repo: id.repo.clone(),
        revision: id.revision().to_string(),
        file: file.to_string(),
        kind,
        message,
    };
    let first_file = id.file().unwrap_or(CONFIG);
    let Some(cache_dir) = &options.cache_dir else {
        return Err(error(
            HubErrorKind::Cache,
            first_file,
            "no Hugging Face cache directory is known (no home directory): set HF_HOME or HF_HUB_CACHE"
                .into(),
        ));
    };
    // hf-hub builds relative symlinks between absolute paths.
    let cache_dir = std::path::absolute(cache_dir).map_err(|e| {
        error(
            HubErrorKind::Cache,
            first_file,
            format!(
                "cannot use the cache directory {}: {e}",
                cache_dir.display()
            ),
        )
    })?;
    let repo_dir = cache_dir.join(format!("models--{}", id.repo.replace('/', "--")));
    let mut fetcher = Fetcher {
        id,
        options,
        cache_dir,
        repo_dir,
        skipped: HashSet::new(),
        downloaded: HashSet::new(),
        api: None,
    };
    loop {
        match fetcher.plan()? {
            Plan::Ready(path) => {
                tracing::debug!(model = %id, path = %path.display(), "model resolved from the Hugging Face cache");
                return Ok(path);
            }
            Plan::Missing { file, need, commit } => fetcher.get(&file, need, commit.as_deref())?,
        }
    }
}

impl Fetcher<'_> {
    fn error(&self, kind: HubErrorKind, file: &str, message: impl Into<String>) -> ModelError {
        ModelError::Hub {
            repo: self.id.repo.clone(),
            revision: self.id.revision().to_string(),
            file: file.to_string(),
            kind,
            message: message.into(),
        }
    }

    /// The cached snapshot's commit for the id's revision: the revision itself when it is a full
    /// commit hash with a snapshot folder, else the content of `refs/<revision>`.
    fn commit(&self) -> Result<Option<String>, ModelError> {
        let revision = self.id.revision();
        if is_commit_hash(revision) && self.repo_dir.join("snapshots").join(revision).is_dir() {
            return Ok(Some(revision.to_string()));
        }
        let ref_path = self.repo_dir.join("refs").join(revision);
        let text = match std::fs::read_to_string(&ref_path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(self.error(
                    HubErrorKind::Cache,
                    self.id.file().unwrap_or(CONFIG),
                    format!("cannot read {}: {e}", ref_path.display()),
                ));
            }
        };
        let commit = text.trim();
        if commit.is_empty() {
            return Ok(None);
        }
        if commit.contains(['/', '\\']) || commit == "." || commit == ".." {
            return Err(self.error(
                HubErrorKind::Cache,
                self.id.file().unwrap_or(CONFIG),
                format!(
                    "{} holds `{commit}`, which is not a commit hash",
                    ref_path.display()
                ),
            ));
        }
        Ok(Some(commit.to_string()))
    }

    /// Whether the repository is known to lack `file` at `commit`: asked during this call, or
    /// recorded in the cache's `.no_exist/<commit>/` (as `huggingface_hub` records 404s).
    fn known_absent(&self, commit: &str, file: &str) -> bool {
        self.skipped.contains(file)
            || self
                .repo_dir
                .join(".no_exist")
                .join(commit)
                .join(file)
                .exists()
    }

    /// Decides whether the cache holds everything, or which file to get next.
    fn plan(&self) -> Result<Plan, ModelError> {
        let Some(commit) = self.commit()? else {
            return Ok(Plan::Missing {
                file: self.id.file().unwrap_or(CONFIG).to_string(),
                need: Need::Required,
                commit: None,
            });
        };
        let snapshot = self.repo_dir.join("snapshots").join(&commit);
        let missing = |file: &str, need| {
            Ok(Plan::Missing {
                file: file.to_string(),
                need,
                commit: Some(commit.clone()),
            })
        };
        if let Some(file) = self.id.file() {
            let path = snapshot.join(file);
            return if path.is_file() {
                Ok(Plan::Ready(path))
            } else {
                missing(file, Need::Required)
            };
        }
        for (file, need) in [
            (CONFIG, Need::Required),
            (TOKENIZER, Need::Required),
            (TOKENIZER_CONFIG, Need::Optional),
            (GENERATION_CONFIG, Need::Optional),
        ] {
            let optional_skip = need == Need::Optional
                && (self.options.offline || self.known_absent(&commit, file));
            if !snapshot.join(file).is_file() && !optional_skip {
                return missing(file, need);
            }
        }
        if snapshot.join(SINGLE_WEIGHTS).is_file() {
            return Ok(Plan::Ready(snapshot));
        }
        let index = snapshot.join(WEIGHTS_INDEX);
        if index.is_file() {
            for shard in shards(&index)? {
                check_relative_path(&shard).map_err(|reason| {
                    self.error(
                        HubErrorKind::InvalidRepo,
                        WEIGHTS_INDEX,
                        format!("the index lists a shard outside the repository: {reason}"),
                    )
                })?;
                if !snapshot.join(&shard).is_file() {
                    return missing(&shard, Need::Required);
                }
            }
            return Ok(Plan::Ready(snapshot));
        }
        if !self.known_absent(&commit, SINGLE_WEIGHTS) {
            return missing(SINGLE_WEIGHTS, Need::Weights);
        }
        if !self.known_absent(&commit, WEIGHTS_INDEX) {
            return missing(WEIGHTS_INDEX, Need::Weights);
        }
        Err(self.error(
            HubErrorKind::NotFound,
            SINGLE_WEIGHTS,
            format!(
                "the repository has neither {SINGLE_WEIGHTS} nor {WEIGHTS_INDEX} at commit {commit}"
            ),
        ))
    }

    /// Gets one missing file from the Hub (at the cached snapshot's commit when there is one), or
    /// records why not.
    fn get(&mut self, file: &str, need: Need, commit: Option<&str>) -> Result<(), ModelError> {
        if self.options.offline {
            let what = match need {
                Need::Weights => format!(
                    "neither {SINGLE_WEIGHTS} nor {WEIGHTS_INDEX} (with its shards) is in the Hugging Face cache"
                ),
                _ => "not in the Hugging Face cache".into(),
            };
            let snapshot = match commit {
                Some(commit) => format!("snapshot {commit}"),
                None => format!(
                    "no snapshot of revision `{}` (refs/{} is missing)",
                    self.id.revision(),
                    self.id.revision()
                ),
            };
            return Err(self.error(
                HubErrorKind::Offline,
                file,
                format!(
                    "{what} ({}, {snapshot}), and offline mode (HF_HUB_OFFLINE) forbids downloading",
                    self.repo_dir.display()
                ),
            ));
        }
        if !self.downloaded.insert(file.to_string()) {
            return Err(self.error(
                HubErrorKind::Download,
                file,
                "downloaded, but not found in the cache's snapshot afterwards (did the revision move meanwhile? try again)",
            ));
        }
        // At the cached commit, so that a snapshot never mixes commits.
        let revision = commit.unwrap_or(self.id.revision()).to_string();
        let stray_ref = self.repo_dir.join("refs").join(&revision);
        let stray_ref = (is_commit_hash(&revision) && !stray_ref.exists()).then_some(stray_ref);
        if let Some(commit) = commit {
            // A dangling symlink (its blob deleted) would make hf-hub's own link fail.
            let link = self.repo_dir.join("snapshots").join(commit).join(file);
            if link.symlink_metadata().is_ok() && link.metadata().is_err() {
                let _ = std::fs::remove_file(&link);
            }
        }
        tracing::info!(repo = %self.id.repo, %revision, file, "downloading from the Hugging Face Hub");
        let result = self.download(file, &revision);
        if let Some(stray_ref) = stray_ref {
            // hf-hub records a ref named after the commit it was asked for; huggingface_hub
            // writes refs for branches and tags only (a commit is found by its snapshot folder).
            let _ = std::fs::remove_file(stray_ref);
        }
        let (kind, message) = match result {
            Ok(()) => return Ok(()),
            Err(failure) => failure,
        };
        match (kind, need) {
            (HubErrorKind::NotFound, Need::Optional | Need::Weights) => {
                if let Some(commit) = commit {
                    self.mark_absent(commit, file);
                }
                self.skipped.insert(file.to_string());
                Ok(())
            }
            (_, Need::Optional) => {
                tracing::warn!(repo = %self.id.repo, file, "optional file not downloaded, going on without it: {message}");
                self.skipped.insert(file.to_string());
                Ok(())
            }
            _ => Err(self.error(kind, file, message)),
        }
    }

    /// One download through hf-hub, its failure classified.
    fn download(&mut self, file: &str, revision: &str) -> Result<(), (HubErrorKind, String)> {
        if self.api.is_none() {
            let mut builder = ApiBuilder::from_cache(Cache::new(self.cache_dir.clone()))
                .with_progress(self.options.progress)
                .with_token(self.options.token.clone())
                .with_user_agent("focusllm", env!("CARGO_PKG_VERSION"));
            if let Some(endpoint) = &self.options.endpoint {
                builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_string());
            }
            let api = builder.build().map_err(|e| {
                (
                    HubErrorKind::Download,
                    format!("cannot set up the HTTP client: {e}"),
                )
            })?;
            self.api = Some(api);
        }
        let api = self.api.as_ref().expect("built above");
        let repo: ApiRepo = api.repo(Repo::with_revision(
            self.id.repo.clone(),
            RepoType::Model,
            revision.to_string(),
        ));
        // hf-hub has a few `unwrap`s and `assert`s on server responses; a panic is an error here.
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| repo.download(file)));
        match outcome {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(classify(&e, self.endpoint(), revision)),
            Err(payload) => {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                Err((
                    HubErrorKind::Download,
                    format!("download failed (the hf-hub library panicked: {message})"),
                ))
            }
        }
    }

    fn endpoint(&self) -> &str {
        self.options
            .endpoint
            .as_deref()
            .unwrap_or("https://huggingface.co")
    }

    /// Records a 404 the way `huggingface_hub` does (best effort).
    fn mark_absent(&self, commit: &str, file: &str) {
        let marker = self.repo_dir.join(".no_exist").join(commit).join(file);
        if let Some(parent) = marker.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let _ = std::fs::File::create(marker);
    }
}

/// A hf-hub error as a kind and a message. HTTP statuses are read from the error's text: hf-hub
/// wraps `ureq`'s error, whose type this crate does not depend on (its text is
/// `"<url>: status code <n>"`).
fn classify(e: &ApiError, endpoint: &str, revision: &str) -> (HubErrorKind, String) {
    let text = e.to_string();
    let status = |code: u16| text.contains(&format!("status code {code}"));
    match e {
        ApiError::RequestError(_) if status(404) => (
            HubErrorKind::NotFound,
            format!(
                "not found on {endpoint} at revision `{revision}`: the repository lacks the file, or the repository or revision does not exist ({text})"
            ),
        ),
        ApiError::RequestError(_) if status(401) || status(403) => (
            HubErrorKind::Unauthorized,
            format!(
                "access refused by {endpoint} ({text}): the repository does not exist, is private, or is gated; check the id, and set HF_TOKEN (or run `huggingface-cli login`) for an account with access"
            ),
        ),
        ApiError::LockAcquisition(path) => (
            HubErrorKind::Download,
            format!(
                "another process is downloading it (lock {}); try again when it is done",
                path.display()
            ),
        ),
        _ => (HubErrorKind::Download, format!("download failed: {text}")),
    }
}

/// A full (40 hex digits) commit hash.
fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The distinct shard files a `model.safetensors.index.json` lists, sorted.
fn shards(index: &Path) -> Result<Vec<String>, ModelError> {
    let text = std::fs::read_to_string(index).map_err(|e| ModelError::io(index, e))?;
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: std::collections::HashMap<String, String>,
    }
    let parsed: Index = serde_json::from_str(&text).map_err(|e| ModelError::Safetensors {
        path: index.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut shards: Vec<String> = parsed.weight_map.into_values().collect();
    shards.sort();
    shards.dedup();
    Ok(shards)
}
