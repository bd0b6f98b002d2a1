//! A shard that may die under us (a remote machine, a GPU that falls off the bus), run on a
//! thread of its own so that losing it is an error for the caller, never a crash or a hang.
//!
//! Why a thread: burn's runtimes report a lost connection or device by panicking, and then panic
//! again in the `Drop` of every tensor still held there (a drop is a message to the lost device);
//! a panic during unwinding aborts the process. So a shard's work runs on a worker thread whose
//! panics do not unwind: the panic hook parks the thread for good (its tensors are never dropped)
//! and the caller, which waits on a channel, gets [`FocusError::Shard`]. A shard that stops
//! answering without panicking (a read whose reply never comes) is found by the caller's
//! `alive` check while it waits: the worker is then left where it hangs.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use burn::tensor::backend::Backend;

use crate::any_backend::panic_message;
use crate::candidates::CandidateSet;
use crate::error::{FocusError, Result};
use crate::local::{ChunkSequence, LocalDecoder};

/// Prefix of the worker threads' names; the panic hook parks threads so named.
const WORKER: &str = "focusllm-shard-worker";

/// Panic messages of parked workers, by thread name.
fn parked() -> &'static Mutex<HashMap<String, String>> {
    static PARKED: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    PARKED.get_or_init(Default::default)
}

/// Installs, once per process, a panic hook that parks a panicking shard worker for good (after
/// recording its message) and hands every other panic to the hook installed before.
fn install_parking_hook() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let thread = std::thread::current();
            match thread.name() {
                Some(name) if name.starts_with(WORKER) => {
                    let message = panic_message(info.payload());
                    if let Ok(mut parked) = parked().lock() {
                        parked.insert(name.to_string(), message);
                    }
                    loop {
                        std::thread::park();
                    }
                }
                _ => previous(info),
            }
        }));
    });
}

/// A job for the worker, with the channel its answer goes back on.
enum Job<B: Backend> {
    Decode(Vec<ChunkSequence>, Sender<Result<(u64, CandidateSet<B>)>>),
    Extend(Vec<u64>, u32, u32, Sender<Result<Vec<CandidateSet<B>>>>),
    Bytes(u64, Sender<usize>),
    Drop(u64),
    /// Release every state and the decoder now, answer, and end.
    Stop(Sender<()>),
}

/// What a caller holds of a batch whose state lives on the worker: its number there. Dropping it
/// drops the state on the worker.
pub(crate) struct StateHandle<B: Backend> {
    id: u64,
    jobs: Sender<Job<B>>,
}

impl<B: Backend> Drop for StateHandle<B> {
    fn drop(&mut self) {
        // A lost worker never reads it: its states stay where they are.
        let _ = self.jobs.send(Job::Drop(self.id));
    }
}

/// A local decoder on its own worker thread, delivering candidates of backend `B`.
pub(crate) struct Isolated<B: Backend> {
    jobs: Mutex<Sender<Job<B>>>,
    thread_name: String,
    label: String,
    alive: Box<dyn Fn() -> std::result::Result<(), String> + Send + Sync>,
    poll: Duration,
}

impl<B: Backend> Drop for Isolated<B> {
    /// Has the worker release its states and its decoder before this returns, while the shard
    /// still answers: released later, on the worker's own time, they could reach a remote shard
    /// whose server the caller stopped right after this drop, and every release would then panic
    /// (its worker parked for good, holding the panic hook's lock: a test harness that restores
    /// its hook at the end then hung). A parked worker is not asked, and a worker that hangs on a
    /// lost shard is waited for ten seconds at most.
    fn drop(&mut self) {
        let is_parked = parked()
            .lock()
            .map(|p| p.contains_key(&self.thread_name))
            .unwrap_or(true);
        if is_parked {
            return;
        }
        let (done, released) = mpsc::channel();
        if self.sender().send(Job::Stop(done)).is_ok() {
            let _ = released.recv_timeout(Duration::from_secs(10));
        }
    }
}

/// Worker thread names are unique per process.
static NEXT_WORKER: AtomicU64 = AtomicU64::new(0);

impl<B: Backend> Isolated<B> {
    /// Starts the worker running `decode` (a decode of one batch), `extend` and `bytes` over its
    /// own states, and returns the caller's side.
    pub(crate) fn start<S, L, Deliver>(
        decoder: L,
        deliver: Deliver,
        label: String,
        alive: Box<dyn Fn() -> std::result::Result<(), String> + Send + Sync>,
    ) -> Self
    where
        S: Backend,
        L: LocalDecoder<S> + Send + 'static,
        Deliver: Fn(CandidateSet<S>) -> Result<CandidateSet<B>> + Send + 'static,
    {
        install_parking_hook();
        let thread_name = format!("{WORKER}-{}", NEXT_WORKER.fetch_add(1, Ordering::Relaxed));
        let (jobs, queue) = mpsc::channel::<Job<B>>();
        std::thread::Builder::new()
            .name(thread_name.clone())
            .spawn(move || work::<S, B, L, Deliver>(decoder, deliver, queue))
            .expect("the OS starts a thread");
        Self {
            jobs: Mutex::new(jobs),
            thread_name,
            label,
            alive,
            poll: Duration::from_millis(200),
        }
    }

    pub(crate) fn label(&self) -> &str {
        &self.label
    }

    pub(crate) fn set_label(&mut self, label: String) {
        self.label = label;
    }

    fn sender(&self) -> Sender<Job<B>> {
        self.jobs
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    fn lost(&self, reason: String) -> FocusError {
        FocusError::Shard {
            shard: self.label.clone(),
            reason,
        }
    }

    /// Waits for the worker's answer, checking while it waits that the worker has not panicked
    /// and that the shard is alive.
    fn wait<T>(&self, answer: Receiver<T>) -> Result<T> {
        loop {
            match answer.recv_timeout(self.poll) {
                Ok(value) => return Ok(value),
                Err(RecvTimeoutError::Disconnected) => {
                    let reason = parked()
                        .lock()
                        .ok()
                        .and_then(|p| p.get(&self.thread_name).cloned())
                        .unwrap_or_else(|| "its worker ended".into());
                    return Err(self.lost(format!("lost: {reason}")));
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(reason) = parked()
                        .lock()
                        .ok()
                        .and_then(|p| p.get(&self.thread_name).cloned())
                    {
                        return Err(self.lost(format!("lost: {reason}")));
                    }
                    (self.alive)().map_err(|reason| self.lost(format!("lost: {reason}")))?;
                }
            }
        }
    }

    fn ask<T>(&self, job: impl FnOnce(Sender<T>) -> Job<B>) -> Result<T> {
        let (tx, rx) = mpsc::channel();
        self.sender()
            .send(job(tx))
            .map_err(|_| self.lost("lost: its worker ended".into()))?;
        self.wait(rx)
    }

    pub(crate) fn decode_chunks(
        &self,
        sequences: &[ChunkSequence],
    ) -> Result<(StateHandle<B>, CandidateSet<B>)> {
        let (id, candidates) = self.ask(|tx| Job::Decode(sequences.to_vec(), tx))??;
        Ok((
            StateHandle {
                id,
                jobs: self.sender(),
            },
            candidates,
        ))
    }

    pub(crate) fn extend_batches(
        &self,
        states: &[&StateHandle<B>],
        prev: u32,
        new: u32,
    ) -> Result<Vec<CandidateSet<B>>> {
        let ids = states.iter().map(|s| s.id).collect();
        self.ask(|tx| Job::Extend(ids, prev, new, tx))?
    }

    pub(crate) fn state_bytes(&self, state: &StateHandle<B>) -> usize {
        self.ask(|tx| Job::Bytes(state.id, tx)).unwrap_or(0)
    }
}

/// The worker: owns the decoder and the states of its batches, and answers jobs until its caller
/// is gone.
fn work<S, B, L, Deliver>(decoder: L, deliver: Deliver, queue: Receiver<Job<B>>)
where
    S: Backend,
    B: Backend,
    L: LocalDecoder<S>,
    Deliver: Fn(CandidateSet<S>) -> Result<CandidateSet<B>>,
{
    let mut states: HashMap<u64, L::ChunkState> = HashMap::new();
    let mut next = 0u64;
    while let Ok(job) = queue.recv() {
        match job {
            Job::Decode(sequences, answer) => {
                let result = decoder.decode_chunks(&sequences).and_then(|(state, c)| {
                    let candidates = deliver(c)?;
                    next += 1;
                    states.insert(next, state);
                    Ok((next, candidates))
                });
                let _ = answer.send(result);
            }
            Job::Extend(ids, prev, new, answer) => {
                let result = extend(&decoder, &mut states, &ids, prev, new)
                    .and_then(|sets| sets.into_iter().map(&deliver).collect());
                let _ = answer.send(result);
            }
            Job::Bytes(id, answer) => {
                let _ = answer.send(states.get(&id).map_or(0, |s| decoder.state_bytes(s)));
            }
            Job::Drop(id) => {
                states.remove(&id);
            }
            Job::Stop(done) => {
                drop(states);
                drop(decoder);
                let _ = done.send(());
                return;
            }
        }
    }
}

/// Extends the states numbered `ids` together.
fn extend<S: Backend, L: LocalDecoder<S>>(
    decoder: &L,
    states: &mut HashMap<u64, L::ChunkState>,
    ids: &[u64],
    prev: u32,
    new: u32,
) -> Result<Vec<CandidateSet<S>>> {
    // Take the states out so that several can be borrowed mutably at once, then put them back.
    let mut taken = Vec::with_capacity(ids.len());
    for id in ids {
        match states.remove(id) {
            Some(state) => taken.push((*id, state)),
            None => {
                for (id, state) in taken {
                    states.insert(id, state);
                }
                return Err(FocusError::Decoder(format!(
                    "chunk state {id} is not on this shard"
                )));
            }
        }
    }
    let result = {
        let mut refs: Vec<&mut L::ChunkState> = taken.iter_mut().map(|(_, s)| s).collect();
        decoder.extend_batches(&mut refs, prev, new)
    };
    for (id, state) in taken {
        states.insert(id, state);
    }
    result
}
