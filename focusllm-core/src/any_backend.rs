//! A local decoder on any backend, seen from the main decoder's backend: what lets one
//! [`crate::ShardedDecoder`] hold shards on a CPU, on GPUs and on remote machines at once.
//!
//! The shard's chunk states stay on its own backend and device; only its candidates (one position
//! per chunk and layer, a few kilobytes) cross over, through host memory. A shard that panics
//! (GPU runtimes and burn's remote client report a lost device or connection by panicking) gives
//! a [`FocusError::Shard`] instead of taking the process down.

use std::any::Any;
use std::panic::{AssertUnwindSafe, catch_unwind};

use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};

use crate::candidates::{CandidateSet, LayerKv};
use crate::error::{FocusError, Result};
use crate::isolated::{Isolated, StateHandle};
use crate::local::{ChunkSequence, LocalDecoder};

/// A batch's state on an [`AnyBackendDecoder`]: the wrapped decoder's own state, type-erased.
pub struct AnyChunkState(Box<dyn Any + Send>);

impl std::fmt::Debug for AnyChunkState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AnyChunkState")
    }
}

/// The object-safe face of a local decoder on backend `S`, delivering candidates on `B`.
trait ErasedLocal<B: Backend>: Send + Sync {
    fn decode_chunks(
        &self,
        sequences: &[ChunkSequence],
    ) -> Result<(AnyChunkState, CandidateSet<B>)>;
    fn extend_batches(
        &self,
        states: &mut [&mut AnyChunkState],
        prev: u32,
        new: u32,
    ) -> Result<Vec<CandidateSet<B>>>;
    fn state_bytes(&self, state: &AnyChunkState) -> usize;
    fn set_label(&mut self, label: String);
    fn label(&self) -> &str;
}

/// A [`LocalDecoder`] on backend `S` (any burn backend: CPU, GPU, remote), owned and type-erased,
/// whose candidates arrive on backend `B`'s `device`. Shards of different backends then share
/// one type, so one [`crate::ShardedDecoder`] spreads chunk batches over all of them.
///
/// ```
/// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/doc/counter.rs"));
/// # fn main() -> focusllm_core::Result<()> {
/// use burn::backend::Flex;
/// use focusllm_core::{AnyBackendDecoder, FocusConfig, FocusEngine, ShardedDecoder};
///
/// // The toy model twice, each behind the erasing adaptor (real shards sit on other devices or
/// // backends); candidates arrive on the main decoder's device.
/// let shards = [
///     AnyBackendDecoder::<Flex>::new::<Flex, _>(Counter, Default::default()),
///     AnyBackendDecoder::<Flex>::new::<Flex, _>(Counter, Default::default()),
/// ];
/// let local = ShardedDecoder::<Flex, _>::new(shards.iter().collect(), Default::default())?;
/// let config = FocusConfig::default().with_local_window(8).with_chunk_size(8);
/// let engine = FocusEngine::with_decoders(&local, &Counter, config)?;
/// let mut session = engine.session();
/// session.prefill(&(0..40).collect::<Vec<u32>>())?;
/// assert_eq!(session.focus().unwrap().chunks, [0.125; 4]);
/// # Ok(())
/// # }
/// ```
pub struct AnyBackendDecoder<B: Backend> {
    inner: Box<dyn ErasedLocal<B>>,
}

/// What an [`AnyBackendDecoder`] is called in errors.
const UNNAMED: &str = "(unnamed)";

impl<B: Backend> AnyBackendDecoder<B> {
    /// Wraps `decoder`, a local decoder on backend `S`; its candidates move to `device` (backend
    /// `B`): by [`Tensor::to_device`] when `S` is `B`, through host memory otherwise.
    pub fn new<S, L>(decoder: L, device: B::Device) -> Self
    where
        S: Backend,
        L: LocalDecoder<S> + Send + Sync + 'static,
        L::ChunkState: Send + 'static,
    {
        Self {
            inner: Box::new(Erased::<S, L, B> {
                decoder,
                device,
                label: UNNAMED.into(),
                _backend: std::marker::PhantomData,
            }),
        }
    }

    /// Wraps `decoder` as [`AnyBackendDecoder::new`] does, but runs it on a thread of its own, for
    /// a shard that may be lost (a remote machine): losing it is then a [`FocusError::Shard`]
    /// for the caller, never a crash or a hang. `alive` is asked every 200 ms while an answer is
    /// awaited (a remote shard: can its server still be reached?); an `Err` gives up on the shard
    /// with that reason. Where the shard's backend panics, its worker thread is parked for good
    /// instead of unwinding (burn's remote client would panic again in every tensor's `Drop`,
    /// which aborts), through a panic hook installed once that defers every other panic to the
    /// hook installed before it. The cost of that: a parked worker stays inside the panic hook,
    /// so once a shard has been lost this way, `std::panic::set_hook` and `take_hook` wait
    /// forever (the Rust test harness calls `take_hook` as it ends: a test that loses a shard
    /// ends its process itself).
    pub fn isolated<S, L>(
        decoder: L,
        device: B::Device,
        alive: impl Fn() -> std::result::Result<(), String> + Send + Sync + 'static,
    ) -> Self
    where
        S: Backend,
        L: LocalDecoder<S> + Send + 'static,
    {
        let deliver = move |set: CandidateSet<S>| deliver::<S, B>(set, &device);
        Self {
            inner: Box::new(Isolated::start::<S, L, _>(
                decoder,
                deliver,
                UNNAMED.into(),
                Box::new(alive),
            )),
        }
    }

    /// Names the shard in its errors ([`FocusError::Shard`]), e.g. by its device: `cuda:1`,
    /// `ws://10.0.0.2:3000`.
    pub fn with_label(mut self, label: impl Into<String>) -> Self {
        self.inner.set_label(label.into());
        self
    }

    /// The shard's name in errors.
    pub fn label(&self) -> &str {
        self.inner.label()
    }
}

struct Erased<S: Backend, L, B: Backend> {
    decoder: L,
    device: B::Device,
    label: String,
    _backend: std::marker::PhantomData<fn() -> S>,
}

impl<S, L, B> Erased<S, L, B>
where
    S: Backend,
    B: Backend,
{
    fn deliver(&self, set: CandidateSet<S>) -> Result<CandidateSet<B>> {
        deliver(set, &self.device)
    }
}

/// `set` on `device` of backend `B`.
fn deliver<S: Backend, B: Backend>(
    set: CandidateSet<S>,
    device: &B::Device,
) -> Result<CandidateSet<B>> {
    let chunk_ids = set.chunk_ids().to_vec();
    let layers = set
        .layers()
        .iter()
        .map(|l| LayerKv {
            k: move_tensor::<S, B>(l.k.clone(), device),
            v: move_tensor::<S, B>(l.v.clone(), device),
        })
        .collect();
    CandidateSet::new(chunk_ids, layers)
}

/// `tensor` on `device` of backend `B`: the same tensor moved when `S` is `B`, its values copied
/// through host memory when not.
fn move_tensor<S: Backend, B: Backend>(tensor: Tensor<S, 4>, device: &B::Device) -> Tensor<B, 4> {
    let any: Box<dyn Any> = Box::new(tensor);
    match any.downcast::<Tensor<B, 4>>() {
        Ok(same) => same.to_device(device),
        Err(other) => {
            let tensor = *other
                .downcast::<Tensor<S, 4>>()
                .expect("the box holds the tensor it was given");
            let data: TensorData = tensor.into_data();
            Tensor::from_data(data, device)
        }
    }
}

/// Runs `job` for shard `label`, turning a panic (how GPU runtimes and burn's remote client report
/// a lost device or connection) into [`FocusError::Shard`].
fn guarded<T>(label: &str, job: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(job)).unwrap_or_else(|panic| {
        Err(FocusError::Shard {
            shard: label.to_string(),
            reason: format!("its backend failed: {}", panic_message(panic.as_ref())),
        })
    })
}

/// The message a panic carried (`panic!`'s text), or a generic one.
pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "its backend panicked".into())
}

/// The error for a chunk state that belongs to another decoder.
fn foreign_state() -> FocusError {
    FocusError::Decoder("a chunk state from another decoder was handed over".into())
}

impl<S, L, B> ErasedLocal<B> for Erased<S, L, B>
where
    S: Backend,
    B: Backend,
    L: LocalDecoder<S> + Send + Sync,
    L::ChunkState: Send + 'static,
{
    fn decode_chunks(
        &self,
        sequences: &[ChunkSequence],
    ) -> Result<(AnyChunkState, CandidateSet<B>)> {
        guarded(&self.label, || {
            let (state, candidates) = self.decoder.decode_chunks(sequences)?;
            Ok((AnyChunkState(Box::new(state)), self.deliver(candidates)?))
        })
    }

    fn extend_batches(
        &self,
        states: &mut [&mut AnyChunkState],
        prev: u32,
        new: u32,
    ) -> Result<Vec<CandidateSet<B>>> {
        let mut own: Vec<&mut L::ChunkState> = Vec::with_capacity(states.len());
        for state in states.iter_mut() {
            own.push(state.0.downcast_mut().ok_or_else(foreign_state)?);
        }
        guarded(&self.label, || {
            self.decoder
                .extend_batches(&mut own, prev, new)?
                .into_iter()
                .map(|c| self.deliver(c))
                .collect()
        })
    }

    fn state_bytes(&self, state: &AnyChunkState) -> usize {
        state
            .0
            .downcast_ref()
            .map_or(0, |s| self.decoder.state_bytes(s))
    }

    fn set_label(&mut self, label: String) {
        self.label = label;
    }

    fn label(&self) -> &str {
        &self.label
    }
}

impl<B: Backend> LocalDecoder<B> for AnyBackendDecoder<B> {
    type ChunkState = AnyChunkState;

    fn decode_chunks(
        &self,
        sequences: &[ChunkSequence],
    ) -> Result<(Self::ChunkState, CandidateSet<B>)> {
        self.inner.decode_chunks(sequences)
    }

    fn extend_chunks(
        &self,
        state: &mut Self::ChunkState,
        prev: u32,
        new: u32,
    ) -> Result<CandidateSet<B>> {
        let mut out = self.inner.extend_batches(&mut [state], prev, new)?;
        Ok(out.pop().expect("one batch in, one out"))
    }

    fn extend_batches(
        &self,
        states: &mut [&mut Self::ChunkState],
        prev: u32,
        new: u32,
    ) -> Result<Vec<CandidateSet<B>>> {
        self.inner.extend_batches(states, prev, new)
    }

    fn state_bytes(&self, state: &Self::ChunkState) -> usize {
        self.inner.state_bytes(state)
    }
}

impl<B: Backend> ErasedLocal<B> for Isolated<B> {
    fn decode_chunks(
        &self,
        sequences: &[ChunkSequence],
    ) -> Result<(AnyChunkState, CandidateSet<B>)> {
        let (handle, candidates) = Isolated::decode_chunks(self, sequences)?;
        Ok((AnyChunkState(Box::new(handle)), candidates))
    }

    fn extend_batches(
        &self,
        states: &mut [&mut AnyChunkState],
        prev: u32,
        new: u32,
    ) -> Result<Vec<CandidateSet<B>>> {
        let mut handles: Vec<&StateHandle<B>> = Vec::with_capacity(states.len());
        for state in states.iter() {
            handles.push(state.0.downcast_ref().ok_or_else(foreign_state)?);
        }
        Isolated::extend_batches(self, &handles, prev, new)
    }

    fn state_bytes(&self, state: &AnyChunkState) -> usize {
        state
            .0
            .downcast_ref()
            .map_or(0, |h| Isolated::state_bytes(self, h))
    }

    fn set_label(&mut self, label: String) {
        Isolated::set_label(self, label);
    }

    fn label(&self) -> &str {
        Isolated::label(self)
    }
}
