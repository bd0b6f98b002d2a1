//! Question answering over a long text file: the whole document is read through FocusLLM's chunks,
//! the question sits in the local context.
//!
//! ```text
//! focusllm ask --file book.txt --question "Who is the narrator?"
//! ```
//!
//! For retrieval evaluations, `--insert` hides a sentence at `--depth` of the document, `--tokens`
//! cuts the document so the whole input has that many tokens, and `--expect` checks the answer
//! (`scripts/eval-longdoc.sh` runs held-out facts this way).

use std::path::PathBuf;

use crate::cli::app::{
    AppError, BackendRunner, EngineArgs, ProgressView, chat_stop_tokens, run_on, stream_to_stdout,
    summed_focus,
};
use crate::cli::focus_strip::{FocusRow, write_svg};
use burn::tensor::backend::Backend;
use clap::Parser;
use focusllm::core::{FocusEngine, FocusMap, GenerateOptions, ShardedDecoder};

#[derive(Parser, Debug)]
#[command(about = "Answer a question about a long text file with FocusLLM")]
pub struct Args {
    /// The document.
    #[arg(long)]
    file: PathBuf,
    /// The question.
    #[arg(long, required_unless_present = "ppl", default_value = "")]
    question: String,
    /// Most tokens in the answer.
    #[arg(long, default_value_t = 64)]
    max_tokens: usize,
    /// No chat template: the document, then "Question: ...", then `--answer-start`.
    #[arg(long)]
    raw: bool,
    /// What the answer begins with after the question in `--raw` mode.
    #[arg(long, default_value = "Answer:")]
    answer_start: String,
    /// Cut the document so that the whole input holds this many tokens.
    #[arg(long)]
    tokens: Option<usize>,
    /// A sentence to hide in the document (a retrieval test).
    #[arg(long)]
    insert: Option<String>,
    /// Where `--insert` goes, as a fraction of the (cut) document.
    #[arg(long, default_value_t = 0.5)]
    depth: f64,
    /// Text the answer must contain: prints one JSON line with the verdict instead of the stream.
    #[arg(long)]
    expect: Option<String>,
    /// How many source passages to print after the answer: the chunks the main decoder attended
    /// to most while answering (its focus map, summed over the answer's tokens).
    #[arg(long, default_value_t = 3)]
    sources: usize,
    /// Draw the focus map as an SVG heat strip over the document: one row per answer token (and
    /// one for the whole answer), each chunk coloured by the attention its candidate received.
    #[arg(long)]
    focus_svg: Option<PathBuf>,
    /// Print one JSON object (the answer, the input's size, the mode and the source passages)
    /// instead of streaming the answer.
    #[arg(long)]
    json: bool,
    /// Instead of answering: the perplexity of the document's last 128 tokens (the reference
    /// protocol; the document is cut to `--tokens` and no question is asked), as one JSON line.
    #[arg(long, conflicts_with_all = ["expect", "insert"])]
    ppl: bool,
    #[command(flatten)]
    engine: EngineArgs,
}

impl BackendRunner for &Args {
    type Output = Result<(), AppError>;

    fn run<B: Backend>(self, device: B::Device) -> Self::Output {
        let document = std::fs::read_to_string(&self.file)
            .map_err(|e| format!("{}: {e}", self.file.display()))?;
        let loaded = self.engine.load::<B>(&device)?;
        let tokenizer = loaded
            .tokenizer
            .as_ref()
            .ok_or("the model has no tokenizer")?;
        let ids = match self.ppl {
            true => self.document_ids(&document, tokenizer)?,
            false => self.input_ids(&document, tokenizer)?,
        };
        let stops = chat_stop_tokens(loaded.model.config().eos_ids(), tokenizer);
        let adapted = self.engine.adapter_for(&loaded, true)?;
        let (model, config) = self.engine.model_and_config(&loaded, &adapted);
        let adapter = adapted.as_ref().map(|a| a.path.as_path());
        let shards = self.engine.chunk_shards(model, adapter, &device)?;
        let local = ShardedDecoder::new(shards.iter().collect(), device.clone())?;
        let engine = FocusEngine::with_decoders(&local, model, config)?;
        let view = ProgressView::new(
            "document",
            self.engine.quiet || self.expect.is_some() || self.ppl,
        );
        let mut session = engine.session();
        session.on_progress(|p| view.update(p));
        let options = GenerateOptions {
            max_tokens: self.max_tokens,
            stop_tokens: Some(stops),
            ..Default::default()
        };
        if self.ppl {
            let report = session.perplexity(&ids, 128)?;
            println!(
                "{}",
                serde_json::json!({
                    "tokens": ids.len(), "chunks": report.chunks, "loss": report.loss,
                    "ppl": report.perplexity, "mode": session.mode().to_string(),
                })
            );
            return Ok(());
        }
        if let Some(expect) = &self.expect {
            let generation = session.generate(&ids, &options, Some(tokenizer), |_| {
                std::ops::ControlFlow::Continue(())
            })?;
            let found = generation.text.contains(expect.as_str());
            println!(
                "{}",
                serde_json::json!({
                    "tokens": ids.len(), "depth": self.depth, "expect": expect,
                    "answer": generation.text, "found": found, "mode": session.mode().to_string(),
                })
            );
            return Ok(());
        }
        let answer = if self.json {
            // The answer is printed in the JSON object, not streamed.
            let mut token_focus = Vec::new();
            let generation = session.generate(&ids, &options, Some(tokenizer), |t| {
                if let Some(map) = &t.focus {
                    token_focus.push((t.text.clone(), map.chunks.clone()));
                }
                std::ops::ControlFlow::Continue(())
            })?;
            let focus = summed_focus(&token_focus);
            Answer {
                text: generation.text,
                tokens: generation.tokens.len(),
                focus,
                token_focus,
            }
        } else {
            let streamed = stream_to_stdout(&mut session, &ids, &options, tokenizer, &view)?;
            eprintln!("[{} tokens read with {}]", ids.len(), streamed.mode);
            Answer {
                text: streamed.generation.text,
                tokens: streamed.generation.tokens.len(),
                focus: streamed.focus,
                token_focus: streamed.token_focus,
            }
        };
        let plan = engine.plan(&ids)?;
        let mut sources = Vec::new();
        if let (Some(focus), Some(plan)) = (&answer.focus, &plan) {
            if let Some(path) = &self.focus_svg {
                let mut rows = vec![FocusRow {
                    label: "whole answer".into(),
                    shares: focus.clone(),
                }];
                rows.extend(answer.token_focus.iter().map(|(text, shares)| FocusRow {
                    label: format!("{text:?}"),
                    shares: shares.clone(),
                }));
                let title = format!("{}: where each answer token drew on", self.file.display());
                write_svg(path, &title, &plan.chunks, &rows)?;
                eprintln!("[focus strip written to {}]", path.display());
            }
            let tokens = answer.tokens.max(1) as f32;
            let summed = FocusMap {
                chunks: focus.clone(),
            };
            for (chunk, share) in summed.top(self.sources) {
                let range = plan.chunks[chunk].clone();
                let text = tokenizer.decode(&ids[range.clone()])?;
                // Where the passage sits in the file (found by its text; the tokenizer keeps none
                // of the character offsets).
                let snippet: String = text.trim().chars().take(60).collect();
                let character = document.find(&snippet);
                let shown: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
                sources.push(Source {
                    chunk,
                    tokens: [range.start, range.end],
                    character,
                    attention: share / tokens,
                    text: shown,
                });
            }
        }
        if self.json {
            println!(
                "{}",
                serde_json::json!({
                    "answer": answer.text, "tokens": ids.len(), "mode": session.mode().to_string(),
                    "sources": sources,
                })
            );
            return Ok(());
        }
        for (rank, source) in sources.iter().enumerate() {
            let at = source.character.map_or("?".to_string(), |i| i.to_string());
            let shown: String = source.text.chars().take(160).collect();
            eprintln!(
                "[source {}] chunk {} (tokens {}..{}, character {at}), attention {:.3}: \"{shown}…\"",
                rank + 1,
                source.chunk,
                source.tokens[0],
                source.tokens[1],
                source.attention
            );
        }
        Ok(())
    }
}

/// What `ask` generated, with where each token drew on.
struct Answer {
    text: String,
    tokens: usize,
    /// Per chunk, the focus share summed over the answer's tokens (`None` in plain mode).
    focus: Option<Vec<f32>>,
    /// Per answer token, its text and focus map.
    token_focus: Vec<(String, Vec<f32>)>,
}

/// A passage the answer drew on: a chunk, its token range, where it starts in the file (when its
/// text is found there), its mean attention share per answer token, and its text.
#[derive(serde::Serialize)]
struct Source {
    chunk: usize,
    tokens: [usize; 2],
    character: Option<usize>,
    attention: f32,
    text: String,
}

impl Args {
    /// BOS and the document's first `--tokens` tokens (a perplexity input).
    fn document_ids(
        &self,
        document: &str,
        tokenizer: &focusllm::models::Tokenizer,
    ) -> Result<Vec<u32>, AppError> {
        let mut ids: Vec<u32> = tokenizer.bos_id().into_iter().collect();
        ids.extend(tokenizer.encode(document)?);
        if let Some(total) = self.tokens {
            if ids.len() < total {
                return Err(format!(
                    "{} has {} tokens, fewer than --tokens {total}",
                    self.file.display(),
                    ids.len()
                )
                .into());
            }
            ids.truncate(total);
        }
        Ok(ids)
    }

    /// The input: the document (cut to `--tokens`, with `--insert` hidden at `--depth`), then the
    /// question, in the chat template unless `--raw`.
    fn input_ids(
        &self,
        document: &str,
        tokenizer: &focusllm::models::Tokenizer,
    ) -> Result<Vec<u32>, AppError> {
        let question = format!(
            "\n\nAnswer the question using the text above.\nQuestion: {}",
            self.question
        );
        let (head, tail) = if self.raw {
            (String::new(), format!("{question}\n{}", self.answer_start))
        } else {
            let wrapped = match tokenizer.chat_prompt("\u{0}") {
                Err(focusllm::models::ModelError::NoChatTemplate { .. }) => {
                    eprintln!("[the model has no chat template: the question is given raw]");
                    "\u{0}".to_string()
                }
                wrapped => wrapped?,
            };
            let (head, tail) = wrapped.split_once('\u{0}').ok_or("chat template")?;
            (head.to_string(), format!("{question}{tail}"))
        };
        // BOS opens a raw input; the chat input is what the template gives (as before; the
        // engine's BOS rule applies to the local context and the prompt either way).
        let mut ids: Vec<u32> = match self.raw {
            true => tokenizer.bos_id().into_iter().collect(),
            false => Vec::new(),
        };
        ids.extend(tokenizer.encode(&head)?);
        let tail = tokenizer.encode(&tail)?;
        let insert = match &self.insert {
            Some(text) => tokenizer.encode(&format!(" {text}"))?,
            None => Vec::new(),
        };
        let mut doc = tokenizer.encode(document)?;
        if let Some(total) = self.tokens {
            let fixed = ids.len() + tail.len() + insert.len();
            let room = total.checked_sub(fixed).ok_or_else(|| {
                format!("--tokens {total} leaves no room for the document ({fixed} tokens of question and insert)")
            })?;
            if doc.len() < room {
                return Err(format!(
                    "{} has {} tokens, fewer than the {room} that --tokens {total} asks for",
                    self.file.display(),
                    doc.len()
                )
                .into());
            }
            doc.truncate(room);
        }
        if !(0.0..=1.0).contains(&self.depth) {
            return Err(format!("--depth {} must be in [0, 1]", self.depth).into());
        }
        let at = (doc.len() as f64 * self.depth).round() as usize;
        doc.splice(at..at, insert);
        ids.extend(doc);
        ids.extend(tail);
        Ok(ids)
    }
}

/// Runs the job.
pub fn run(args: Args) -> Result<(), AppError> {
    run_on(args.engine.backend, args.engine.device, &args)?
}
