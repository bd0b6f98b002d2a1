//! Text for training: files tokenized into one stream, sampled as windows.

use std::path::{Path, PathBuf};

use rand::Rng;
use rand::rngs::StdRng;

use crate::error::{FocusError, Result};

/// Text to token ids (a model's tokenizer). Object-safe so that data sources can hold one.
pub trait TextEncoder: Send + Sync {
    /// Encodes `text` without special tokens.
    fn encode(&self, text: &str) -> Result<Vec<u32>>;
}

/// A token stream made of text files, from which samples are windows at random offsets.
#[derive(Debug, Clone)]
pub struct TextCorpus {
    tokens: Vec<u32>,
    files: usize,
}

impl TextCorpus {
    /// Tokenizes `texts` and joins them (separated by a blank line).
    pub fn from_texts<S: AsRef<str>>(texts: &[S], encoder: &dyn TextEncoder) -> Result<Self> {
        let separator = encoder.encode("\n\n")?;
        let mut tokens = Vec::new();
        for text in texts {
            tokens.extend(encoder.encode(text.as_ref())?);
            tokens.extend_from_slice(&separator);
        }
        Ok(Self {
            tokens,
            files: texts.len(),
        })
    }

    /// Reads text files: each path is a file, or a directory whose `.txt` and `.md` files are read
    /// recursively (in name order, so a corpus is the same on every machine).
    pub fn from_paths<P: AsRef<Path>>(paths: &[P], encoder: &dyn TextEncoder) -> Result<Self> {
        let mut files = Vec::new();
        for path in paths {
            collect_text_files(path.as_ref(), &mut files)?;
        }
        if files.is_empty() {
            return Err(FocusError::Data(format!(
                "no .txt or .md file under {:?}",
                paths
                    .iter()
                    .map(|p| p.as_ref().display().to_string())
                    .collect::<Vec<_>>()
            )));
        }
        let texts = files
            .iter()
            .map(|f| {
                std::fs::read_to_string(f).map_err(|source| FocusError::Io {
                    path: f.clone(),
                    source,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Self::from_texts(&texts, encoder)
    }

    /// The token stream.
    pub(crate) fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Tokens in the corpus.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether the corpus holds no tokens.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Texts (files) the corpus was made of.
    pub fn files(&self) -> usize {
        self.files
    }

    /// A window of `n` tokens at a random offset.
    pub(crate) fn window(&self, n: usize, rng: &mut StdRng) -> &[u32] {
        let start = rng.random_range(0..=self.tokens.len() - n);
        &self.tokens[start..start + n]
    }
}

fn collect_text_files(path: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    let io = |source| FocusError::Io {
        path: path.to_path_buf(),
        source,
    };
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io)?
            .map(|e| e.map(|e| e.path()))
            .collect::<std::io::Result<_>>()
            .map_err(io)?;
        entries.sort();
        for entry in entries {
            let text = matches!(
                entry.extension().and_then(|e| e.to_str()),
                Some("txt" | "md")
            );
            if entry.is_dir() || text {
                collect_text_files(&entry, out)?;
            }
        }
        Ok(())
    } else {
        std::fs::metadata(path).map_err(io)?;
        out.push(path.to_path_buf());
        Ok(())
    }
}
