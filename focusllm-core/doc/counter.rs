// A toy model family (`focusllm-core/doc/counter.rs`, which the examples of the crate's
// documentation include).
use burn::backend::Flex;
use focusllm_core::{
    CandidateSet, ChunkSequence, FocusError, LocalDecoder, MainDecoder, Model, ModelSpec, Result,
};

/// Continues any input by counting up (`.., 6, 7` → `8, 9, ..`), in a vocabulary of 64.
struct Counter;

impl Model for Counter {
    fn spec(&self) -> ModelSpec {
        // Inputs of 16 tokens or more are read with FocusLLM (the default plain threshold is the
        // native context).
        ModelSpec {
            vocab_size: 64,
            bos_id: None,
            eos_ids: vec![],
            native_context: 16,
        }
    }
}

// The chunk pass. A real decoder keeps every chunk's keys and values and returns, per layer, those
// of each chunk's last token (its candidate); this toy's candidates hold no layer at all, only the
// chunk each stands for.
impl LocalDecoder<Flex> for Counter {
    type ChunkState = Vec<usize>; // the chunks of the batch

    fn decode_chunks(&self, seqs: &[ChunkSequence]) -> Result<(Vec<usize>, CandidateSet<Flex>)> {
        let chunks: Vec<usize> = seqs.iter().map(|s| s.chunk_id).collect();
        Ok((chunks.clone(), CandidateSet::new(chunks, vec![])?))
    }

    fn extend_chunks(
        &self,
        chunks: &mut Vec<usize>,
        _prev: u32,
        _new: u32,
    ) -> Result<CandidateSet<Flex>> {
        CandidateSet::new(chunks.clone(), vec![])
    }

    fn state_bytes(&self, chunks: &Vec<usize>) -> usize {
        chunks.len() * size_of::<usize>()
    }
}

/// The main pass's state (a real decoder's: a KV cache): how many candidates it reads.
struct CounterState {
    candidates: usize,
}

impl MainDecoder<Flex> for Counter {
    type MainState = CounterState;

    fn start(&self, past: Option<&CandidateSet<Flex>>) -> Result<CounterState> {
        Ok(CounterState {
            candidates: past.map_or(0, CandidateSet::len),
        })
    }

    fn feed(&self, _state: &mut CounterState, tokens: &[u32]) -> Result<Vec<f32>> {
        let last = *tokens.last().ok_or(FocusError::EmptyInput)?;
        let mut logits = vec![0.0; 64];
        logits[(last as usize + 1) % 64] = 1.0; // the next number
        Ok(logits)
    }

    fn focus(&self, state: &CounterState) -> Option<Vec<f32>> {
        // Half of the attention on the memory, evenly over its candidates.
        let n = state.candidates;
        (n > 0).then(|| vec![0.5 / n as f32; n])
    }
}
