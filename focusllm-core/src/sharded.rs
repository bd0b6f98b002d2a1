//! Chunk batches spread over several local decoders, one per device: sharding is a property of
//! where batches run, not a second copy of the algorithm.
//!
//! A chunk's caches stay on the device that decoded it, and so does every extension of it; only
//! its candidates (one position per chunk and layer) move to the main decoder's device. Batches
//! given together ([`LocalDecoder::decode_batches`], [`LocalDecoder::extend_batches`]) run on their
//! shards at the same time, one thread per shard.

use std::sync::atomic::{AtomicUsize, Ordering};

use burn::tensor::backend::Backend;

use crate::candidates::CandidateSet;
use crate::error::{FocusError, Result};
use crate::local::{ChunkSequence, LocalDecoder};

/// A [`LocalDecoder`] whose chunk batches run on several decoders in turn (each usually a copy of
/// one model on its own device), their candidates moved to the main decoder's device.
///
/// ```
/// # include!(concat!(env!("CARGO_MANIFEST_DIR"), "/doc/counter.rs"));
/// # fn main() -> focusllm_core::Result<()> {
/// use burn::backend::Flex;
/// use focusllm_core::{FocusConfig, FocusEngine, ShardedDecoder};
///
/// // Two shards (here the toy model twice, on the one CPU device).
/// let local = ShardedDecoder::<Flex, _>::new(vec![&Counter, &Counter], Default::default())?;
/// let config = FocusConfig::default().with_local_window(8).with_chunk_size(8);
/// let engine = FocusEngine::with_decoders(&local, &Counter, config)?;
/// let ids: Vec<u32> = (0..40).collect();
/// let mut session = engine.session();
/// session.prefill(&ids)?;
/// assert_eq!(session.focus().unwrap().chunks, [0.125; 4]);
/// # Ok(())
/// # }
/// ```
pub struct ShardedDecoder<'m, B: Backend, L> {
    shards: Vec<&'m L>,
    main_device: B::Device,
    next: AtomicUsize,
}

/// A batch's state on a [`ShardedDecoder`]: which shard holds it, and that shard's state.
#[derive(Debug, Clone)]
pub struct ShardState<S> {
    shard: usize,
    state: S,
}

impl<S> ShardState<S> {
    /// The index of the shard holding the batch.
    pub fn shard(&self) -> usize {
        self.shard
    }
}

impl<'m, B: Backend, L> ShardedDecoder<'m, B, L> {
    /// Batches go to `shards` in turn; their candidates move to `main_device`. Fails with no
    /// shard.
    pub fn new(shards: Vec<&'m L>, main_device: B::Device) -> Result<Self> {
        if shards.is_empty() {
            return Err(FocusError::InvalidConfig {
                field: "shards",
                reason: "a sharded decoder needs at least one shard".into(),
            });
        }
        Ok(Self {
            shards,
            main_device,
            next: AtomicUsize::new(0),
        })
    }

    /// Number of shards.
    pub fn shards(&self) -> usize {
        self.shards.len()
    }
}

impl<B, L> LocalDecoder<B> for ShardedDecoder<'_, B, L>
where
    B: Backend,
    L: LocalDecoder<B> + Sync,
    L::ChunkState: Send,
{
    type ChunkState = ShardState<L::ChunkState>;

    fn decode_chunks(
        &self,
        sequences: &[ChunkSequence],
    ) -> Result<(Self::ChunkState, CandidateSet<B>)> {
        let mut decoded = self.decode_batches(&[sequences.to_vec()])?;
        Ok(decoded.pop().expect("one batch in, one out"))
    }

    fn decode_batches(
        &self,
        batches: &[Vec<ChunkSequence>],
    ) -> Result<Vec<(Self::ChunkState, CandidateSet<B>)>> {
        let first = self.next.fetch_add(batches.len(), Ordering::Relaxed);
        let shard_of = |i: usize| (first + i) % self.shards.len();
        let mut work: Vec<Vec<(usize, &Vec<ChunkSequence>)>> = vec![Vec::new(); self.shards.len()];
        for (i, batch) in batches.iter().enumerate() {
            work[shard_of(i)].push((i, batch));
        }
        let per_shard = on_shards(&self.shards, work, |shard, items| {
            items
                .into_iter()
                .map(|(i, batch)| {
                    let (state, candidates) = shard.decode_chunks(batch)?;
                    Ok((i, state, candidates))
                })
                .collect::<Result<Vec<_>>>()
        })?;
        let mut out: Vec<Option<(Self::ChunkState, CandidateSet<B>)>> =
            (0..batches.len()).map(|_| None).collect();
        for (shard, results) in per_shard.into_iter().enumerate() {
            for (i, state, candidates) in results {
                out[i] = Some((
                    ShardState { shard, state },
                    candidates.to_device(&self.main_device),
                ));
            }
        }
        Ok(out
            .into_iter()
            .map(|o| o.expect("every batch ran"))
            .collect())
    }

    fn parallel_batches(&self) -> usize {
        self.shards.len()
    }

    fn extend_chunks(
        &self,
        state: &mut Self::ChunkState,
        prev: u32,
        new: u32,
    ) -> Result<CandidateSet<B>> {
        let candidates = self.shards[state.shard].extend_chunks(&mut state.state, prev, new)?;
        Ok(candidates.to_device(&self.main_device))
    }

    fn extend_batches(
        &self,
        states: &mut [&mut Self::ChunkState],
        prev: u32,
        new: u32,
    ) -> Result<Vec<CandidateSet<B>>> {
        let mut work: Vec<(Vec<usize>, Vec<&mut L::ChunkState>)> =
            (0..self.shards.len()).map(|_| Default::default()).collect();
        for (i, state) in states.iter_mut().enumerate() {
            let (indices, shard_states) = &mut work[state.shard];
            indices.push(i);
            shard_states.push(&mut state.state);
        }
        let per_shard = on_shards(&self.shards, work, |shard, (indices, mut shard_states)| {
            let candidates = shard.extend_batches(&mut shard_states, prev, new)?;
            Ok(indices.into_iter().zip(candidates).collect::<Vec<_>>())
        })?;
        let mut out: Vec<Option<CandidateSet<B>>> = (0..states.len()).map(|_| None).collect();
        for (i, candidates) in per_shard.into_iter().flatten() {
            out[i] = Some(candidates.to_device(&self.main_device));
        }
        Ok(out
            .into_iter()
            .map(|o| o.expect("every batch ran"))
            .collect())
    }

    fn state_bytes(&self, state: &Self::ChunkState) -> usize {
        self.shards[state.shard].state_bytes(&state.state)
    }
}

/// Runs `job` on every shard that has work, each on its own thread (inline when only one has),
/// and returns the results in shard order; the first error wins.
fn on_shards<L, W, T, F>(shards: &[&L], work: Vec<W>, job: F) -> Result<Vec<T>>
where
    L: Sync,
    W: Send + HasWork,
    T: Send + Default,
    F: Fn(&L, W) -> Result<T> + Sync,
{
    let busy = work.iter().filter(|w| w.has_work()).count();
    if busy <= 1 {
        return shards
            .iter()
            .zip(work)
            .map(|(shard, w)| {
                if w.has_work() {
                    job(shard, w)
                } else {
                    Ok(T::default())
                }
            })
            .collect();
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = shards
            .iter()
            .zip(work)
            .map(|(shard, w)| {
                let job = &job;
                w.has_work().then(|| scope.spawn(move || job(shard, w)))
            })
            .collect();
        // Every thread is joined before the first error is returned.
        let results: Vec<Result<T>> = handles
            .into_iter()
            .map(|h| match h {
                None => Ok(T::default()),
                Some(h) => h.join().unwrap_or_else(|_| {
                    Err(FocusError::Decoder("a shard's thread panicked".into()))
                }),
            })
            .collect();
        results.into_iter().collect()
    })
}

/// Whether a shard's share of the work holds anything.
trait HasWork {
    fn has_work(&self) -> bool;
}

impl<T> HasWork for Vec<T> {
    fn has_work(&self) -> bool {
        !self.is_empty()
    }
}

impl<T, U> HasWork for (Vec<T>, Vec<U>) {
    fn has_work(&self) -> bool {
        !self.0.is_empty()
    }
}
