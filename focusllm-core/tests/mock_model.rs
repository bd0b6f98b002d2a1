//! A second model family and two more aggregators, plugged into the engine through the public API
//! only: proof that the traits are the seams. The mock "bag of tokens" decoder's candidate is the
//! histogram of its chunk's tokens, and its main pass adds the candidates (weighted by position,
//! so their order shows) to a histogram of the tokens it was fed. Every expected number below is
//! computed from those definitions, not from the engine.

use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::backend::Flex;
use burn::tensor::{Tensor, TensorData};
use focusllm_core::{
    CandidateAggregator, CandidateSet, ChunkSequence, FocusConfig, FocusEngine, FocusError,
    LayerKv, LocalDecoder, MainDecoder, Mode, Model, ModelSpec, NearestChunks, Result, StepMode,
    check_vocab,
};

type B = Flex;
const VOCAB: usize = 16;
const BOS: u32 = 1;

#[derive(Default)]
struct BagOfTokens {
    /// Chunk batches decoded so far (to check the engine batches as configured).
    batches: Cell<usize>,
    /// Chunk states alive now, and the most alive at once (to check what the engine keeps).
    live: Arc<AtomicUsize>,
    peak_live: Cell<usize>,
    /// The room asked of main states by `MainDecoder::reserve`, call by call.
    reserved: RefCell<Vec<usize>>,
}

fn histogram(tokens: &[u32]) -> Vec<f32> {
    let mut h = vec![0.0; VOCAB];
    for &t in tokens {
        h[t as usize] += 1.0;
    }
    h
}

/// Candidates whose values are the histograms of `sequences` (keys unused: zeros).
fn candidates(chunk_ids: Vec<usize>, sequences: &[Vec<u32>]) -> Result<CandidateSet<B>> {
    let n = sequences.len();
    let values: Vec<f32> = sequences.iter().flat_map(|s| histogram(s)).collect();
    let device = Default::default();
    let v = Tensor::<B, 4>::from_data(TensorData::new(values, [1, 1, n, VOCAB]), &device);
    let k = Tensor::<B, 4>::zeros([1, 1, n, VOCAB], &device);
    CandidateSet::new(chunk_ids, vec![LayerKv { k, v }])
}

/// The bag decoder's chunk state: every chunk's tokens, the candidate last.
struct Bags {
    chunk_ids: Vec<usize>,
    sequences: Vec<Vec<u32>>,
    live: Arc<AtomicUsize>,
}

impl Drop for Bags {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Model for BagOfTokens {
    fn spec(&self) -> ModelSpec {
        ModelSpec {
            vocab_size: VOCAB,
            bos_id: Some(BOS),
            eos_ids: vec![0],
            native_context: 24,
        }
    }
}

impl LocalDecoder<B> for BagOfTokens {
    type ChunkState = Bags;

    fn decode_chunks(&self, sequences: &[ChunkSequence]) -> Result<(Bags, CandidateSet<B>)> {
        for s in sequences {
            check_vocab(&s.tokens, VOCAB)?;
        }
        self.batches.set(self.batches.get() + 1);
        let chunk_ids: Vec<usize> = sequences.iter().map(|s| s.chunk_id).collect();
        let sequences: Vec<Vec<u32>> = sequences.iter().map(|s| s.tokens.clone()).collect();
        let set = candidates(chunk_ids.clone(), &sequences)?;
        let live = self.live.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak_live.set(self.peak_live.get().max(live));
        Ok((
            Bags {
                chunk_ids,
                sequences,
                live: self.live.clone(),
            },
            set,
        ))
    }

    fn extend_chunks(&self, bags: &mut Bags, prev: u32, new: u32) -> Result<CandidateSet<B>> {
        check_vocab(&[prev, new], VOCAB)?;
        // `prev` is the candidate every chunk ends with: it stays, as an ordinary token.
        if let Some(s) = bags.sequences.iter().find(|s| s.last() != Some(&prev)) {
            return Err(FocusError::Decoder(format!(
                "prev {prev} is not the candidate of {s:?}"
            )));
        }
        for s in &mut bags.sequences {
            s.push(new);
        }
        candidates(bags.chunk_ids.clone(), &bags.sequences)
    }

    fn state_bytes(&self, bags: &Bags) -> usize {
        bags.sequences.iter().map(|s| s.len() * 4).sum()
    }
}

/// The bag decoder's main state: the weighted sum of the candidates' histograms, the tokens fed,
/// and the number of candidates (its "attention" gives candidate `j` a share of `(j + 1) / 100`).
struct MainBag {
    memory: Vec<f32>,
    tokens: Vec<u32>,
    candidates: usize,
}

impl MainDecoder<B> for BagOfTokens {
    type MainState = MainBag;

    fn start(&self, past: Option<&CandidateSet<B>>) -> Result<MainBag> {
        let mut memory = vec![0.0; VOCAB];
        let candidates = past.map_or(0, |p| p.len());
        if let Some(past) = past.filter(|p| !p.is_empty()) {
            let values: Vec<f32> = past.layers()[0].v.clone().into_data().to_vec().unwrap();
            for (j, h) in values.chunks(VOCAB).enumerate() {
                for (m, x) in memory.iter_mut().zip(h) {
                    *m += (j + 1) as f32 * x;
                }
            }
        }
        Ok(MainBag {
            memory,
            tokens: Vec::new(),
            candidates,
        })
    }

    fn feed(&self, state: &mut MainBag, tokens: &[u32]) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(FocusError::EmptyInput);
        }
        check_vocab(tokens, VOCAB)?;
        state.tokens.extend_from_slice(tokens);
        let bag = histogram(&state.tokens);
        Ok(state
            .memory
            .iter()
            .zip(bag)
            .map(|(m, b)| m + 100.0 * b)
            .collect())
    }

    fn reserve(&self, state: &mut MainBag, additional: usize) {
        state.tokens.reserve(additional);
        self.reserved.borrow_mut().push(additional);
    }

    fn focus(&self, state: &MainBag) -> Option<Vec<f32>> {
        (state.candidates > 0).then(|| {
            (0..state.candidates)
                .map(|j| (j + 1) as f32 / 100.0)
                .collect()
        })
    }
}

/// What the bag model's logits must be: the candidates of `chunks` (in this order, weighted by
/// position) plus the histogram of the main input.
fn expected(chunks: &[Vec<u32>], main: &[u32]) -> Vec<f32> {
    let mut out: Vec<f32> = histogram(main).iter().map(|b| 100.0 * b).collect();
    for (j, c) in chunks.iter().enumerate() {
        for (o, h) in out.iter_mut().zip(histogram(c)) {
            *o += (j + 1) as f32 * h;
        }
    }
    out
}

fn config() -> FocusConfig {
    FocusConfig::default()
        .with_local_window(8)
        .with_chunk_size(8)
        .with_prompt_cap(4)
        .with_plain_threshold(Some(20))
        .with_chunk_batch_size(2)
}

/// 45 ids: BOS, then tokens 2..15 cycling (5 chunks of 8 and a local window of 8 after them).
fn input() -> Vec<u32> {
    std::iter::once(BOS)
        .chain((0..44).map(|i| 2 + (i * 5) % 14))
        .collect()
}

#[test]
fn the_engine_runs_a_second_model_family_in_every_step_mode() {
    let model = BagOfTokens::default();
    let ids = input();
    let engine = FocusEngine::new(&model, config()).unwrap();
    let plan = engine
        .plan(&ids)
        .unwrap()
        .expect("longer than the threshold");
    let chunks: Vec<Vec<u32>> = (0..plan.chunks.len())
        .map(|c| plan.chunk_sequence(&ids, c))
        .collect();
    assert_eq!(chunks.len(), 5);
    assert_eq!(*plan.prompt.last().unwrap(), *ids.last().unwrap());

    // Exact steps: every chunk gets each generated token; the main pass reads `local ++ generated`.
    let mut session = engine.session();
    assert_eq!(
        session.prefill(&ids).unwrap(),
        expected(&chunks, &plan.local)
    );
    assert_eq!(session.mode(), Mode::Focus { chunks: 5 });
    assert_eq!(model.batches.get(), 3, "5 chunks in batches of 2");
    assert_eq!(
        model.peak_live.get(),
        3,
        "exact mode keeps every batch's state"
    );
    assert!(session.chunk_cache_bytes() > 0);
    let (mut grown, mut main) = (chunks.clone(), plan.local.clone());
    for t in [3u32, 9, 3] {
        grown.iter_mut().for_each(|c| c.push(t));
        main.push(t);
        assert_eq!(
            session.step(t).unwrap(),
            expected(&grown, &main),
            "exact step {t}"
        );
    }

    // Frozen candidates: the prefill's candidates stay, the main pass keeps its state.
    let frozen =
        FocusEngine::new(&model, config().with_step_mode(StepMode::FrozenCandidates)).unwrap();
    let mut session = frozen.session();
    model.peak_live.set(model.live.load(Ordering::SeqCst));
    session.prefill(&ids).unwrap();
    assert_eq!(
        session.chunk_cache_bytes(),
        0,
        "frozen mode keeps no chunk state"
    );
    assert_eq!(
        model.peak_live.get(),
        model.live.load(Ordering::SeqCst) + 1,
        "frozen mode drops each batch's state before decoding the next"
    );
    let mut main = plan.local.clone();
    for t in [3u32, 9] {
        main.push(t);
        assert_eq!(
            session.step(t).unwrap(),
            expected(&chunks, &main),
            "frozen step {t}"
        );
    }

    // Below the threshold: plain decoding of the input with BOS.
    let mut session = engine.session();
    let short = &ids[5..15];
    let mut with_bos = vec![BOS];
    with_bos.extend_from_slice(short);
    assert_eq!(session.prefill(short).unwrap(), expected(&[], &with_bos));
    assert_eq!(session.mode(), Mode::Plain);
    with_bos.push(4);
    assert_eq!(session.step(4).unwrap(), expected(&[], &with_bos));
}

#[test]
fn nearest_chunks_keeps_the_chunks_before_the_local_context() {
    let model = BagOfTokens::default();
    let ids = input();
    let engine = FocusEngine::new(&model, config())
        .unwrap()
        .with_aggregator(NearestChunks { keep: 2 });
    let plan = engine.plan(&ids).unwrap().unwrap();
    let last_two: Vec<Vec<u32>> = (3..5).map(|c| plan.chunk_sequence(&ids, c)).collect();
    let mut session = engine.session();
    assert_eq!(
        session.prefill(&ids).unwrap(),
        expected(&last_two, &plan.local)
    );

    // Keeping at least every chunk is the reference aggregation.
    let all = FocusEngine::new(&model, config())
        .unwrap()
        .with_aggregator(NearestChunks { keep: 99 });
    let reference = FocusEngine::new(&model, config()).unwrap();
    assert_eq!(
        all.session().prefill(&ids).unwrap(),
        reference.session().prefill(&ids).unwrap()
    );

    let none = FocusEngine::new(&model, config())
        .unwrap()
        .with_aggregator(NearestChunks { keep: 0 });
    let err = none.session().prefill(&ids).unwrap_err();
    assert!(err.to_string().contains("keep"), "{err}");
}

/// A user's aggregator: the candidates in reverse chunk order, through `CandidateSet` alone.
struct Reversed;

impl CandidateAggregator<B> for Reversed {
    fn aggregate(&self, batches: &[CandidateSet<B>]) -> Result<CandidateSet<B>> {
        let all = CandidateSet::concat(batches)?.in_chunk_order()?;
        all.select(&(0..all.len()).rev().collect::<Vec<_>>())
    }
}

#[test]
fn a_user_aggregator_plugs_in_without_touching_the_engine() {
    let model = BagOfTokens::default();
    let ids = input();
    let engine = FocusEngine::new(&model, config())
        .unwrap()
        .with_aggregator(Reversed);
    let plan = engine.plan(&ids).unwrap().unwrap();
    let reversed: Vec<Vec<u32>> = (0..5).rev().map(|c| plan.chunk_sequence(&ids, c)).collect();
    let mut session = engine.session();
    assert_eq!(
        session.prefill(&ids).unwrap(),
        expected(&reversed, &plan.local)
    );
    // The order matters to this model: the reference order gives other logits.
    let forward: Vec<Vec<u32>> = reversed.into_iter().rev().collect();
    assert_ne!(
        expected(&forward, &plan.local),
        session.prefill(&ids).unwrap()
    );
    // The focus map is per chunk whatever the order of the candidates: position j (share
    // (j + 1) / 100) holds chunk 4 - j.
    let focus = session.focus().expect("the mock measures its focus");
    assert_eq!(focus.chunks, vec![0.05, 0.04, 0.03, 0.02, 0.01]);
    assert_eq!(focus.top(2), vec![(0, 0.05), (1, 0.04)]);
}

#[test]
fn focus_maps_follow_the_candidates_to_their_chunks() {
    let model = BagOfTokens::default();
    let ids = input();
    // All chunks in order: chunk j at position j.
    let engine = FocusEngine::new(&model, config()).unwrap();
    let mut session = engine.session();
    assert!(session.focus().is_none(), "nothing read yet");
    session.prefill(&ids).unwrap();
    assert_eq!(
        session.focus().unwrap().chunks,
        vec![0.01, 0.02, 0.03, 0.04, 0.05]
    );
    session.step(3).unwrap();
    assert_eq!(
        session.focus().unwrap().chunks,
        vec![0.01, 0.02, 0.03, 0.04, 0.05]
    );
    // The two nearest chunks only: the others get nothing.
    let nearest = FocusEngine::new(&model, config())
        .unwrap()
        .with_aggregator(NearestChunks { keep: 2 });
    let mut session = nearest.session();
    let options = focusllm_core::GenerateOptions {
        max_tokens: 2,
        stop_tokens: Some(Vec::new()),
        ..Default::default()
    };
    let mut maps = Vec::new();
    session
        .generate(&ids, &options, None, |t| {
            maps.push(t.focus.clone());
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(maps.len(), 2);
    for map in maps {
        assert_eq!(map.unwrap().chunks, vec![0.0, 0.0, 0.0, 0.01, 0.02]);
    }
    // Plain decoding has no memory to focus on.
    session.prefill(&ids[..10]).unwrap();
    assert!(session.focus().is_none());
}

#[test]
fn generation_makes_room_for_its_tokens_where_a_main_state_is_kept() {
    let model = BagOfTokens::default();
    let generate = |frozen: bool, prompt: usize, max_tokens: usize| {
        let config = if frozen {
            config().with_step_mode(StepMode::FrozenCandidates)
        } else {
            config()
        };
        let engine = FocusEngine::new(&model, config).unwrap();
        let options = focusllm_core::GenerateOptions {
            max_tokens,
            stop_tokens: Some(Vec::new()),
            ..Default::default()
        };
        let ids: Vec<u32> = (0..prompt as u32).map(|i| 2 + i % 13).collect();
        let mut session = engine.session();
        session
            .generate(
                &ids,
                &options,
                None,
                |_| std::ops::ControlFlow::Continue(()),
            )
            .unwrap();
        model.reserved.take()
    };
    // Plain decoding (10 tokens, under the threshold) and frozen FocusLLM: every token but the
    // last is fed back; a larger bound is reserved up to 4096 tokens.
    assert_eq!(generate(false, 10, 6), [5]);
    assert_eq!(generate(true, 40, 6), [5]);
    assert_eq!(generate(false, 10, 1), [0]);
    assert_eq!(generate(false, 10, 10_000), [4096]);
    // Exact mode starts its main pass afresh at every token: nothing kept to reserve.
    assert_eq!(generate(false, 40, 6), Vec::<usize>::new());
    // A step by step user asks for it.
    let engine = FocusEngine::new(&model, config()).unwrap();
    let mut session = engine.session();
    session.reserve(3);
    assert!(
        model.reserved.take().is_empty(),
        "nothing to reserve before a prefill"
    );
    session.prefill(&[2, 3, 4]).unwrap();
    session.reserve(3);
    assert_eq!(model.reserved.take(), [3]);
}

#[test]
fn candidate_sets_reject_bad_shapes_and_positions() {
    let device = Default::default();
    let kv = |n: usize| LayerKv {
        k: Tensor::<B, 4>::zeros([1, 1, n, 4], &device),
        v: Tensor::<B, 4>::zeros([1, 1, n, 4], &device),
    };
    let err = CandidateSet::new(vec![0, 1, 2], vec![kv(2)]).unwrap_err();
    assert!(err.to_string().contains("candidate layer 0"), "{err}");
    let set = CandidateSet::new(vec![4, 7], vec![kv(2), kv(2)]).unwrap();
    let err = set.select(&[0, 2]).unwrap_err();
    assert!(err.to_string().contains("position 2"), "{err}");
    let picked = set.select(&[1, 1, 0]).unwrap();
    assert_eq!(picked.chunk_ids(), &[7, 7, 4]);
    assert_eq!(picked.layers()[1].len(), 3);
    assert!(set.select(&[]).unwrap().is_empty());
    let other = CandidateSet::new(vec![9], vec![kv(1)]).unwrap();
    assert!(
        CandidateSet::concat(&[set, other]).is_err(),
        "2 layers vs 1"
    );
}

/// A `tracing` writer that keeps what it is given (the warnings of one test).
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn warnings(&self) -> usize {
        let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
        text.matches("beyond the model's native context").count()
    }
}

#[test]
fn plain_decoding_beyond_the_native_context_warns_once() {
    // The mock's native context is 24; a threshold of 100 makes these inputs plain.
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let model = BagOfTokens::default();
        let plain = config().with_plain_threshold(Some(100));
        let engine = FocusEngine::new(&model, plain).unwrap();
        let ids = input();
        let mut session = engine.session();
        // 30 tokens with BOS: beyond 24 from the start.
        session.prefill(&ids[1..30]).unwrap();
        assert_eq!(session.mode(), Mode::Plain);
        assert_eq!(captured.warnings(), 1);
        // 21 tokens with BOS: inside; the fourth step makes 25, and only that step warns.
        session.prefill(&ids[1..21]).unwrap();
        for (step, t) in [2, 3, 4, 5, 6, 7].into_iter().enumerate() {
            session.step(t).unwrap();
            let expected = if step < 3 { 1 } else { 2 };
            assert_eq!(captured.warnings(), expected, "after step {step}");
        }
        // FocusLLM reads a long input without the warning.
        let focus = FocusEngine::new(&model, config()).unwrap();
        let mut session = focus.session();
        session.prefill(&ids).unwrap();
        session.step(3).unwrap();
        assert_eq!(captured.warnings(), 2);
    });
}

/// A fresh directory under the system's temporary one, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("focusllm-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_cancelled_frozen_prefill_resumes_from_its_checkpoint() {
    use focusllm_core::{CancelToken, PrefillCheckpoint, Stage};

    let dir = TempDir::new("resume");
    let model = BagOfTokens::default();
    let ids = input();
    let frozen = config().with_step_mode(StepMode::FrozenCandidates);
    let engine = FocusEngine::new(&model, frozen.clone()).unwrap();
    let want = engine.session().prefill(&ids).unwrap();
    let checkpoint =
        || PrefillCheckpoint::<B>::new(&dir.0, "bags v1", &Default::default()).unwrap();

    // Cancelled once 2 of the 3 batches are decoded: both are on disk.
    let mut session = engine.session();
    session.set_checkpoint(checkpoint());
    let token = CancelToken::new();
    session.set_cancel_token(token.clone());
    session.on_progress(move |p| {
        if p.stage == Stage::Chunks && p.done >= 4 {
            token.cancel();
        }
    });
    assert!(matches!(session.prefill(&ids), Err(FocusError::Cancelled)));
    assert_eq!(checkpoint().saved_batches(), 2);
    drop(session);

    // A new session (a new process, as far as the engine knows) decodes only the last batch,
    // and reads the same logits as the uninterrupted prefill; then nothing is left to decode.
    for (decoded, restored) in [(1, 2), (0, 3)] {
        let before = model.batches.get();
        let mut session = engine.session();
        session.set_checkpoint(checkpoint());
        assert_eq!(session.prefill(&ids).unwrap(), want);
        assert_eq!(model.batches.get() - before, decoded);
        let resumed = session.resumed().expect("a checkpoint was set");
        // Batches of 2, 2 and 1 chunks.
        assert_eq!(
            (resumed.batches, resumed.chunks),
            (restored, [0, 2, 4, 5][restored])
        );
        assert!(resumed.seconds >= 0.0);
    }

    // A prefill in a new session with the checkpoint set.
    let resume = |ids: &[u32]| {
        let mut session = engine.session();
        session.set_checkpoint(checkpoint());
        session.prefill(ids)
    };
    // Another input (or model identity) refuses the directory, naming the file; nothing is
    // overwritten.
    let mut other = ids.clone();
    other[3] = 7;
    let err = resume(&other).unwrap_err().to_string();
    assert!(
        err.contains("batch-000000.json") && err.contains("another prefill"),
        "{err}"
    );
    let mut session = engine.session();
    session.set_checkpoint(PrefillCheckpoint::new(&dir.0, "bags v2", &Default::default()).unwrap());
    assert!(session.prefill(&ids).is_err());
    assert_eq!(checkpoint().saved_batches(), 3);

    // A truncated data file is named.
    let data = dir.0.join("batch-000001.f32");
    let len = std::fs::metadata(&data).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&data)
        .unwrap()
        .set_len(len - 4)
        .unwrap();
    let err = resume(&ids).unwrap_err().to_string();
    assert!(
        err.contains("batch-000001.f32") && err.contains("bytes, expected"),
        "{err}"
    );

    // Exact mode cannot resume: refused before any work.
    let exact = FocusEngine::new(&model, config()).unwrap();
    let mut session = exact.session();
    session.set_checkpoint(checkpoint());
    assert!(matches!(
        session.prefill(&ids),
        Err(FocusError::InvalidConfig {
            field: "step_mode",
            ..
        })
    ));
}
