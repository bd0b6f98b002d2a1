//! The library API on one page: load a model, read a long file through FocusLLM, stream the
//! answer, and show which chunks of the file it drew on. (The other examples run the `focusllm`
//! command's jobs, with all their flags; this one is the code a program of yours would hold.)
//!
//! ```text
//! cargo run --release --example quickstart -- model.gguf book.txt "Who wrote the letter?"
//! ```
//!
//! Another backend is one type away: `focusllm::backends::Wgpu` (feature `wgpu`) or `Cuda`
//! (feature `cuda`) in place of `Cpu`.

use std::ops::ControlFlow;

use focusllm::backends::Cpu;
use focusllm::core::{FocusConfig, FocusEngine, GenerateOptions};
use focusllm::models::load_model;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(model), Some(file), Some(question)) = (args.next(), args.next(), args.next()) else {
        return Err(
            "usage: quickstart MODEL FILE QUESTION (MODEL: a GGUF file or an HF directory)".into(),
        );
    };
    let loaded = load_model::<Cpu>(model.as_ref(), &Default::default())?;
    let tokenizer = loaded
        .tokenizer
        .as_ref()
        .ok_or("the model has no tokenizer")?;
    let document = std::fs::read_to_string(&file).map_err(|e| format!("{file}: {e}"))?;
    // The model's own chat template around the document and the question.
    let prompt = tokenizer.chat_prompt(&format!("{document}\n\nQuestion: {question}"))?;
    let ids = tokenizer.encode(&prompt)?;

    // The reference's sizes; inputs longer than the model's native context are read in chunks.
    let engine = FocusEngine::new(&loaded.model, FocusConfig::default())?;
    let mut session = engine.session();
    let options = GenerateOptions {
        max_tokens: 64,
        ..Default::default()
    };
    session.generate(&ids, &options, Some(tokenizer), |token| {
        print!("{}", token.text);
        ControlFlow::Continue(())
    })?;
    println!("\n[{} tokens read with {}]", ids.len(), session.mode());

    // Where the last token drew on: the main decoder's attention over the chunks' candidates.
    if let (Some(focus), Some(plan)) = (session.focus(), engine.plan(&ids)?) {
        for (chunk, share) in focus.top(3) {
            let range = plan.chunks[chunk].clone();
            let text = tokenizer.decode(&ids[range.clone()])?;
            let text: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
            let text: String = text.chars().take(100).collect();
            println!("chunk {chunk} (tokens {range:?}), attention {share:.3}: {text}…");
        }
    }
    Ok(())
}
