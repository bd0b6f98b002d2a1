//! Fused causal grouped-query attention with an online softmax (flash attention) on f32 data.
//!
//! One task is a (batch element, key/value head, block of query rows): the `groups` query heads
//! that share the key/value head are stacked as rows of one tile, so each key tile is read once
//! for all of them, in place (no repeated heads, no transposed copies). A task visits only the
//! key tiles its rows can see, masks where visibility needs it, and keeps a running maximum and
//! sum per row. Tasks run on rayon's pool; their matrix products are single-threaded: our own
//! tiles ([`tiles`]) on x86-64 CPUs with AVX2 or AVX-512 and FMA, `gemm` (the crate behind flex's
//! own matmul) elsewhere, and [`few_rows`] for a decoding step's few rows. A decoding step has
//! only one task per key/value head, so its keys are cut into segments of fixed length whose
//! states are merged afterwards (split-K, as flash decoding does), and every core reads its part
//! of the cache. The cut depends on the sequence's shape alone, so a chunk's numbers do not
//! depend on its batch.

use burn::tensor::TensorData;
use burn_flex::FlexTensor;
use gemm::{Parallelism, gemm};
use rayon::prelude::*;

use super::tiles::{self, KeyPanels};
use super::view::{KvView, View, inner_contiguous};
use super::{bf16, exp2, few_rows};

/// Query rows (positions) per task: each key and value tile read from the cache serves
/// `groups·ROWS` query rows.
const ROWS: usize = 64;
/// Keys per tile. A task's score tile (`groups·ROWS × TILE`, 192 KB for SmolLM2), its queries and
/// its accumulator stay in a 512 KB L2. Measured with criterion at SmolLM2's sizes (a prefill's
/// attention, 2K and 8K): 64 rows rather than 32 were 12-15% faster at 8K; then 256 keys rather
/// than 128 another 7-10% at both; 128 rows gained nothing more and would crowd a 256 KB L2.
const TILE: usize = 256;
/// Keys per segment of a decoding step's split key axis: two tiles, so that a step after 1K keys
/// already gives each key/value head (one task each) two segments, and a segment still amortises
/// its merge.
const SEGMENT: usize = 2 * TILE;
/// New rows per sequence up to which a call counts as a decoding step and splits its keys: a
/// generated token, an exact step's two rows per chunk, a few batched tokens.
const STEP_ROWS: usize = 4;

/// Which keys each new query may see: the rules of `AttentionPlan` (causal after `past` cached
/// keys, left padding, and FocusLLM's exact-mode candidates).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Visibility {
    /// Cached keys before the new tokens.
    pub past: usize,
    /// New tokens (queries).
    pub seq: usize,
    /// Per batch element, the leading padded keys (empty: none).
    pub pads: Vec<usize>,
    /// Every new position is the candidate of its own step (`Candidates::Each`).
    pub each: bool,
    /// Not a visibility rule but the plan's other setting: sequences of more than
    /// [`crate::kernels::BF16_AFTER_SEQ`] new positions multiply scores and weighted values with
    /// bf16 operands and f32 sums ([`crate::MatmulPrecision::Bf16`]).
    pub bf16: bool,
}

impl Visibility {
    fn pad(&self, b: usize) -> usize {
        self.pads.get(b).copied().unwrap_or(0)
    }

    /// Whether new query `i` of batch element with `pad` padded keys cannot see key `j`.
    #[inline(always)]
    fn hidden(&self, pad: usize, i: usize, j: usize) -> bool {
        let own = self.past + i;
        if self.each {
            let seen = (self.past + 1 + i).saturating_sub(self.seq);
            j < pad || (j >= seen && j != own)
        } else {
            j > own || (j < pad && j != own)
        }
    }

    /// The keys rows `i0..i1` may see lie in `lo..hi`.
    fn key_range(&self, pad: usize, i0: usize, i1: usize) -> (usize, usize) {
        (pad.min(self.past + i0), self.past + i1)
    }

    /// Whether some key of `j0..j1` is hidden from some row of `i0..i1`.
    fn needs_mask(&self, pad: usize, i0: usize, j0: usize, j1: usize) -> bool {
        self.each || j0 < pad || j1 > self.past + i0 + 1
    }
}

/// A raw pointer the tasks share to write disjoint parts of the output.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: each task writes only the rows of its own (batch, head group, query block).
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// The fixed sizes of one call.
struct Dims {
    heads: usize,
    groups: usize,
    seq: usize,
    dim: usize,
    keys: usize,
}

/// `q` `[b, heads, seq, d]`, `k`/`v` `[b, kv_heads, keys, d]` (any positive strides) →
/// `[b, heads, seq, d]` (a transposed view of contiguous `[b, seq, heads, d]`, which is what the
/// output projection reads), and the focus map `[b, focus_keys]` when asked.
pub(super) fn attend(
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    vis: &Visibility,
    focus_keys: Option<usize>,
) -> (FlexTensor, Option<FlexTensor>) {
    attend_scaled(q, (k, None), (v, None), vis, focus_keys)
}

/// [`attend`] over keys and values that may be 8-bit with a scale per row (`[b, kv_heads, keys,
/// 1]`, f32): each is `(values, scales)`.
pub(super) fn attend_scaled(
    q: &FlexTensor,
    k: (&FlexTensor, Option<&FlexTensor>),
    v: (&FlexTensor, Option<&FlexTensor>),
    vis: &Visibility,
    focus_keys: Option<usize>,
) -> (FlexTensor, Option<FlexTensor>) {
    let contiguous = |(t, scale): (&FlexTensor, Option<&FlexTensor>)| {
        (inner_contiguous(t), scale.map(inner_contiguous))
    };
    let (q, (k, k_scale), (v, v_scale)) = (inner_contiguous(q), contiguous(k), contiguous(v));
    let qs = q.layout().shape().to_vec();
    let ks = k.layout().shape().to_vec();
    let (batch, kv_heads) = (qs[0], ks[1]);
    let dims = Dims {
        heads: qs[1],
        groups: qs[1] / kv_heads,
        seq: qs[2],
        dim: qs[3],
        keys: ks[2],
    };
    assert_eq!(dims.keys, vis.past + dims.seq, "keys = past + new tokens");
    let (qv, kv, vv) = (
        View::<f32>::new(&q),
        KvView::new(&k, k_scale.as_ref()),
        KvView::new(&v, v_scale.as_ref()),
    );
    let blocks = dims.seq.div_ceil(ROWS);
    let mut out = vec![0.0f32; batch * dims.seq * dims.heads * dims.dim];
    let ptr = OutPtr(out.as_mut_ptr());
    let focus_keys = focus_keys.map(|n| n.min(dims.keys)).filter(|&n| n > 0);
    let tasks = batch * kv_heads * blocks;
    // With f32 tiles (`wide`), each sequence's keys from its first unpadded one, transposed once
    // for all the tasks that read them (each query block's task read its visible tiles).
    let key_panels: Vec<KeyPanels> = if wide(&dims, vis) {
        (0..batch * kv_heads)
            .into_par_iter()
            .map(|t| {
                let (b, h) = (t / kv_heads, t % kv_heads);
                let first = vis.pad(b).min(dims.keys);
                let n = dims.keys - first;
                let mut panels = KeyPanels::default();
                if n > 0 {
                    let mut scratch = Vec::new();
                    let (keys, row) = kv.rows(b, h, first, n, dims.dim, &mut scratch);
                    panels.set(keys, n, dims.dim, row);
                }
                panels
            })
            .collect()
    } else {
        Vec::new()
    };
    let task = |t: usize| {
        let (b, rest) = (t / (kv_heads * blocks), t % (kv_heads * blocks));
        let (h, block) = (rest / blocks, rest % blocks);
        let i0 = block * ROWS;
        Task {
            b,
            kv_head: h,
            i0,
            i1: (i0 + ROWS).min(dims.seq),
            dims: &dims,
            vis,
            key_panels: key_panels.get(b * kv_heads + h),
        }
    };
    let segments = key_segments(dims.seq, dims.keys);
    let partial_focus: Vec<(usize, Vec<f32>)> = if segments > 1 && focus_keys.is_none() {
        // A few new rows over many keys (a decoding step: one task per key/value head): each
        // task's keys are cut into segments so that every core has work, and the segments'
        // states merged left to right.
        let states: Vec<Softmax> = (0..tasks * segments)
            .into_par_iter()
            .map(|unit| task(unit / segments).run_segment(&qv, &kv, &vv, unit % segments))
            .collect();
        for (t, parts) in states.chunks(segments).enumerate() {
            let (first, rest) = parts.split_first().expect("at least one segment");
            task(t).write(&rest.iter().fold(first.clone(), Softmax::merge), ptr);
        }
        Vec::new()
    } else {
        (0..tasks)
            .into_par_iter()
            .filter_map(|t| {
                let tile = task(t);
                let focus = focus_keys.filter(|_| tile.i1 == dims.seq);
                tile.run(&qv, &kv, &vv, ptr, focus).map(|f| (tile.b, f))
            })
            .collect()
    };
    let out = FlexTensor::from_data(TensorData::new(
        out,
        [batch, dims.seq, dims.heads, dims.dim],
    ))
    .transpose(1, 2);
    let focus = focus_keys.map(|n| {
        let mut map = vec![0.0f32; batch * n];
        for (b, part) in partial_focus {
            for (m, p) in map[b * n..(b + 1) * n].iter_mut().zip(part) {
                *m += p;
            }
        }
        FlexTensor::from_data(TensorData::new(map, [batch, n]))
    });
    (out, focus)
}

/// The running state of an online softmax over some keys, per query row: the largest score (in
/// units of `log2`: see [`Task::queries`]), the sum of `2^(score - max)`, and those weights times
/// the values (`rows × dim`).
#[derive(Clone)]
struct Softmax {
    max: Vec<f32>,
    sum: Vec<f32>,
    acc: Vec<f32>,
}

impl Softmax {
    /// The state before any key.
    fn empty(rows: usize, dim: usize) -> Self {
        Self {
            max: vec![f32::NEG_INFINITY; rows],
            sum: vec![0.0; rows],
            acc: vec![0.0; rows * dim],
        }
    }

    /// The state over this state's keys and `other`'s (disjoint key sets): each side rescaled to
    /// the larger maximum, as the online softmax rescales between tiles.
    fn merge(mut self, other: &Softmax) -> Self {
        let dim = self.acc.len() / self.max.len().max(1);
        for r in 0..self.max.len() {
            let new_max = self.max[r].max(other.max[r]);
            if new_max == f32::NEG_INFINITY {
                continue;
            }
            let weight = |m: f32| {
                if m == f32::NEG_INFINITY {
                    0.0
                } else {
                    exp2::exp2(m - new_max)
                }
            };
            let (mine, theirs) = (weight(self.max[r]), weight(other.max[r]));
            self.sum[r] = self.sum[r] * mine + other.sum[r] * theirs;
            let row = r * dim..(r + 1) * dim;
            for (a, b) in self.acc[row.clone()].iter_mut().zip(&other.acc[row]) {
                *a = *a * mine + b * theirs;
            }
            self.max[r] = new_max;
        }
        self
    }
}

/// Into how many segments of [`SEGMENT`] keys each task's keys are cut: 1 for blocks of more than
/// [`STEP_ROWS`] new rows (a prefill has tasks enough) or keys that fit in one segment.
///
/// The cut never depends on the core count, and its non-empty segments not on the batch: each
/// starts at a multiple of [`SEGMENT`] from the sequence's first visible key, and the empty
/// segments a padded sequence gets beyond its last key merge exactly (their weight is 0 and its
/// own is `2^0 = 1`). So a chunk's numbers do not depend on which chunks share its batch
/// (sharded and unsharded runs agree to the bit), as they would if the merge order moved.
fn key_segments(seq: usize, keys: usize) -> usize {
    if seq > STEP_ROWS {
        return 1;
    }
    keys.div_ceil(SEGMENT).max(1)
}

/// Whether a call's tile products run on [`tiles`] (f32 on CPUs with AVX2 or AVX-512; more than a
/// step's few rows, whose keys a call would transpose for little use, and not bf16 products): a
/// rule of the sequence's shape and the CPU, as the other paths'.
fn wide(dims: &Dims, vis: &Visibility) -> bool {
    dims.seq > STEP_ROWS && !bf16_products(dims, vis) && tiles::available()
}

/// Whether a call's tiles take [`few_rows`]' products (a step's few rows, where `gemm`'s set-up
/// costs more than such a tile's products).
fn few(dims: &Dims) -> bool {
    dims.seq <= STEP_ROWS && few_rows::vectorised(dims.dim)
}

/// Whether a call multiplies scores and weighted values with bf16 operands.
fn bf16_products(dims: &Dims, vis: &Visibility) -> bool {
    vis.bf16 && dims.seq > crate::kernels::BF16_AFTER_SEQ
}

/// One (batch element, key/value head, query block).
struct Task<'a> {
    b: usize,
    kv_head: usize,
    i0: usize,
    i1: usize,
    dims: &'a Dims,
    vis: &'a Visibility,
    /// This sequence's and head's keys from its first unpadded one, transposed (with f32 tiles).
    key_panels: Option<&'a KeyPanels>,
}

impl Task<'_> {
    /// Computes the block's output rows into `out`; with `focus` (the block holds the last query),
    /// returns this head group's share of the focus map (already divided by the head count).
    fn run(
        &self,
        q: &View<'_>,
        k: &KvView<'_>,
        v: &KvView<'_>,
        out: OutPtr,
        focus: Option<usize>,
    ) -> Option<Vec<f32>> {
        let qt = self.queries(q);
        let pad = self.vis.pad(self.b);
        let (lo, hi) = self.vis.key_range(pad, self.i0, self.i1);
        let state = self.softmax_over(&qt, k, v, lo, hi);
        self.write(&state, out);
        focus.map(|n| self.focus_share(&qt, k, pad, &state.max, &state.sum, n))
    }

    /// [`Task::run`]'s state over segment `seg` of the visible keys only: [`SEGMENT`] keys counted
    /// from the first visible one (the first after the padding, so that a padded sequence is cut
    /// as it is alone), or none past the last. The caller merges the segments and writes the rows.
    fn run_segment(&self, q: &View<'_>, k: &KvView<'_>, v: &KvView<'_>, seg: usize) -> Softmax {
        let qt = self.queries(q);
        let pad = self.vis.pad(self.b);
        let (lo, hi) = self.vis.key_range(pad, self.i0, self.i1);
        let start = (lo + seg * SEGMENT).min(hi);
        self.softmax_over(&qt, k, v, start, (start + SEGMENT).min(hi))
    }

    /// The block's query rows, scaled by `log2(e)/√d`: row r is query position i0 + r / groups of
    /// head kv_head·groups + r % groups. The scores are then the usual ones in units of `log2`,
    /// and the softmax's `exp(s - max)` is `2^(s' - max')`, which costs half as much ([`exp2`]).
    fn queries(&self, q: &View<'_>) -> Vec<f32> {
        let Dims { groups, dim, .. } = *self.dims;
        let rows = groups * (self.i1 - self.i0);
        let scale = std::f32::consts::LOG2_E / (dim as f32).sqrt();
        let mut qt = vec![0.0f32; rows * dim];
        for (r, row) in qt.chunks_exact_mut(dim).enumerate() {
            let (i, g) = (self.i0 + r / groups, r % groups);
            let src = &q.data[q.at(self.b, self.kv_head * groups + g, i)..][..dim];
            for (d, s) in row.iter_mut().zip(src) {
                *d = s * scale;
            }
        }
        qt
    }

    /// The online softmax of rows `qt` over keys `lo..hi` (those the rows may see), tile by tile.
    fn softmax_over(
        &self,
        qt: &[f32],
        k: &KvView<'_>,
        v: &KvView<'_>,
        lo: usize,
        hi: usize,
    ) -> Softmax {
        let Dims { groups, dim, .. } = *self.dims;
        let rows = qt.len() / dim;
        let pad = self.vis.pad(self.b);
        let mut scores = vec![0.0f32; rows * TILE];
        let mut state = Softmax::empty(rows, dim);
        let Softmax { max, sum, acc } = &mut state;
        // A step's few rows (the same rule as the key segments: it depends on the sequence's
        // shape and the CPU only) skip `gemm`, whose set-up costs more than such a tile's products.
        let few = few(self.dims);
        let (mut k_scratch, mut v_scratch) = (Vec::new(), Vec::new());
        // With bf16 products: the queries rounded once, each tile's keys, weights and values
        // rounded into buffers reused from tile to tile.
        let bf16 = bf16_products(self.dims, self.vis);
        let mut q16 = bf16::Rows::default();
        if bf16 {
            q16.set(qt, rows, dim, dim);
        }
        let (mut k16, mut v16, mut p16) = (
            bf16::Packed::default(),
            bf16::Packed::default(),
            bf16::Rows::default(),
        );
        // Else, on CPUs with AVX2 or AVX-512, f32 tiles without `gemm`'s packing: the keys in panels
        // (the call's, or transposed here when this block's keys start elsewhere: its rows are
        // padding), queries, weights and values read where they are.
        let wide = wide(self.dims, self.vis);
        let mut own_panels = KeyPanels::default();
        let mut j0 = lo;
        while j0 < hi {
            let j1 = (j0 + TILE).min(hi);
            let n = j1 - j0;
            // This tile's keys are read (or widened from a compact cache) only in the branches
            // that use them: the call's panels need neither.
            let (b, h) = (self.b, self.kv_head);
            if few {
                // SAFETY: the pointers cover rows × dim, n keys × dim, and rows × n (stride TILE).
                // An f16 cache is read in place (widened as loaded: the same values).
                let (dims, s) = ((rows, n, dim), &mut scores);
                match k.f16_rows(b, h, j0, n, dim) {
                    Some((keys, at)) => unsafe {
                        few_rows::scores(dims, qt, keys.as_ptr(), at, s, TILE)
                    },
                    None => {
                        let (keys, at) = k.rows(b, h, j0, n, dim, &mut k_scratch);
                        unsafe { few_rows::scores(dims, qt, keys.as_ptr(), at, s, TILE) }
                    }
                }
            } else if bf16 {
                let (keys, k_row) = k.rows(b, h, j0, n, dim, &mut k_scratch);
                k16.set_n_major(keys, n, dim, k_row);
                bf16::multiply_here(&q16, &k16, &mut scores, TILE, false);
            } else if wide {
                // The call's panels where this tile starts on their grid (every tile of a block
                // of unpadded rows), else this tile's keys transposed here.
                let first = pad.min(self.dims.keys);
                let panels = match self.key_panels {
                    Some(panels) if j0 >= first && (j0 - first).is_multiple_of(tiles::NR) => {
                        panels.operand(j0 - first)
                    }
                    _ => {
                        let (keys, k_row) = k.rows(b, h, j0, n, dim, &mut k_scratch);
                        own_panels.set(keys, n, dim, k_row);
                        own_panels.operand(0)
                    }
                };
                let queries = tiles::Operand {
                    ptr: qt.as_ptr(),
                    ld: dim,
                    panel: 0,
                };
                // SAFETY: the CPU has the features (`wide`); `qt` is `rows × dim`, the panels
                // `dim ×` at least `n` keys, and `scores` `rows` rows of `TILE ≥ n`.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    tiles::multiply(
                        (rows, n, dim),
                        queries,
                        panels,
                        scores.as_mut_ptr(),
                        TILE,
                        false,
                    )
                };
                #[cfg(not(target_arch = "x86_64"))]
                let _ = (queries, panels);
            } else {
                let (keys, k_row) = k.rows(b, h, j0, n, dim, &mut k_scratch);
                // SAFETY: the pointers cover rows × dim, n keys × dim, and rows × n (stride TILE).
                unsafe {
                    gemm(
                        rows,
                        n,
                        dim,
                        scores.as_mut_ptr(),
                        1,
                        TILE as isize,
                        false,
                        qt.as_ptr(),
                        1,
                        dim as isize,
                        keys.as_ptr(),
                        k_row as isize,
                        1,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
            }
            let masked = self.vis.needs_mask(pad, self.i0, j0, j1);
            for r in 0..rows {
                let i = self.i0 + r / groups;
                let row = &mut scores[r * TILE..r * TILE + n];
                if masked {
                    for (jj, s) in row.iter_mut().enumerate() {
                        if self.vis.hidden(pad, i, j0 + jj) {
                            *s = f32::NEG_INFINITY;
                        }
                    }
                }
                let tile_max = exp2::max(row);
                let new_max = max[r].max(tile_max);
                if new_max == f32::NEG_INFINITY {
                    row.fill(0.0);
                    continue;
                }
                let tile_sum = exp2::exp2_sub_sum(row, new_max);
                let correction = if max[r] == f32::NEG_INFINITY {
                    0.0
                } else {
                    exp2::exp2(max[r] - new_max)
                };
                if correction != 1.0 {
                    acc[r * dim..(r + 1) * dim]
                        .iter_mut()
                        .for_each(|a| *a *= correction);
                }
                sum[r] = sum[r] * correction + tile_sum;
                max[r] = new_max;
            }
            // SAFETY: as above, with n keys × dim of values and rows × dim of accumulator.
            if few && let Some((values, v_row)) = v.f16_rows(self.b, self.kv_head, j0, n, dim) {
                unsafe {
                    few_rows::weighted_sum(
                        (rows, n, dim),
                        &scores,
                        TILE,
                        values.as_ptr(),
                        v_row,
                        acc,
                    )
                };
                j0 = j1;
                continue;
            }
            let (values, v_row) = v.rows(self.b, self.kv_head, j0, n, dim, &mut v_scratch);
            let v_tile = values.as_ptr();
            if few {
                unsafe {
                    few_rows::weighted_sum((rows, n, dim), &scores, TILE, v_tile, v_row, acc)
                };
            } else if bf16 {
                v16.set_k_major(values, n, dim, v_row);
                p16.set(&scores, rows, n, TILE);
                bf16::multiply_here(&p16, &v16, acc, dim, true);
            } else if wide {
                let (weights, values) = (
                    tiles::Operand {
                        ptr: scores.as_ptr(),
                        ld: TILE,
                        panel: 0,
                    },
                    tiles::Operand {
                        ptr: v_tile,
                        ld: v_row,
                        panel: tiles::NR,
                    },
                );
                // SAFETY: the CPU has the features; the weights are `rows × n` (`TILE` apart),
                // the values `n` rows `v_row` apart of `dim`, read in panels of their own
                // columns, and `acc` `rows × dim`.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    tiles::multiply((rows, dim, n), weights, values, acc.as_mut_ptr(), dim, true)
                };
                #[cfg(not(target_arch = "x86_64"))]
                let _ = (weights, values);
            } else {
                unsafe {
                    gemm(
                        rows,
                        dim,
                        n,
                        acc.as_mut_ptr(),
                        1,
                        dim as isize,
                        true,
                        scores.as_ptr(),
                        1,
                        TILE as isize,
                        v_tile,
                        1,
                        v_row as isize,
                        1.0,
                        1.0,
                        false,
                        false,
                        false,
                        Parallelism::None,
                    );
                }
            }
            j0 = j1;
        }
        state
    }

    /// Writes the block's output rows (`state`'s weighted values over its sums) into `out`.
    fn write(&self, state: &Softmax, out: OutPtr) {
        let Dims {
            heads, groups, dim, ..
        } = *self.dims;
        for r in 0..state.sum.len() {
            let (i, g) = (self.i0 + r / groups, r % groups);
            let inv = 1.0 / state.sum[r];
            let at = ((self.b * self.dims.seq + i) * heads + self.kv_head * groups + g) * dim;
            // SAFETY: `at..at + dim` is row (b, i, head) of the output, written by this task only.
            let dst = unsafe { std::slice::from_raw_parts_mut(out.0.add(at), dim) };
            for (d, a) in dst.iter_mut().zip(&state.acc[r * dim..(r + 1) * dim]) {
                *d = a * inv;
            }
        }
    }

    /// The last query's attention over keys `0..n`, summed over this group's heads and divided by
    /// the head count (the caller adds the groups up: the mean over heads).
    #[allow(clippy::too_many_arguments)]
    fn focus_share(
        &self,
        qt: &[f32],
        k: &KvView<'_>,
        pad: usize,
        max: &[f32],
        sum: &[f32],
        n: usize,
    ) -> Vec<f32> {
        let Dims {
            heads, groups, dim, ..
        } = *self.dims;
        let i = self.i1 - 1;
        let mut share = vec![0.0f32; n];
        let mut scratch = Vec::new();
        let (keys, row) = k.rows(self.b, self.kv_head, 0, n, dim, &mut scratch);
        for g in 0..groups {
            let r = (i - self.i0) * groups + g;
            let qrow = &qt[r * dim..(r + 1) * dim];
            for (j, s) in share.iter_mut().enumerate() {
                if self.vis.hidden(pad, i, j) {
                    continue;
                }
                let krow = &keys[j * row..][..dim];
                let score: f32 = qrow.iter().zip(krow).map(|(a, b)| a * b).sum();
                *s += exp2::exp2(score - max[r]) / sum[r] / heads as f32;
            }
        }
        share
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use burn::tensor::{Distribution, Tensor};

    use crate::llama::Candidates;
    use crate::llama::masked_attention::AttentionPlan;

    type B = Flex;

    /// One attention call, through burn's operations and through the fused kernel.
    struct Case {
        batch: usize,
        heads: usize,
        kv_heads: usize,
        dim: usize,
        past: usize,
        seq: usize,
        pads: Vec<usize>,
        candidates: Candidates,
        focus: usize,
        /// Keys and values are read as the first positions of a KV buffer this much longer.
        spare: usize,
    }

    impl Case {
        fn check(&self) {
            let device = Default::default();
            let Case {
                batch,
                heads,
                kv_heads,
                dim,
                past,
                seq,
                ..
            } = *self;
            let keys = past + seq;
            // q as the projections lay it out, [b, seq, heads, d], viewed [b, heads, seq, d].
            let q = Tensor::<B, 4>::random(
                [batch, seq, heads, dim],
                Distribution::Normal(0.0, 1.5),
                &device,
            )
            .swap_dims(1, 2);
            let buffer = [batch, kv_heads, keys + self.spare, dim];
            let k = Tensor::<B, 4>::random(buffer, Distribution::Normal(0.0, 1.5), &device)
                .narrow(2, 0, keys);
            let v =
                Tensor::<B, 4>::random(buffer, Distribution::Default, &device).narrow(2, 0, keys);
            let pads = (!self.pads.is_empty()).then_some(self.pads.as_slice());
            let plan = |fused| {
                AttentionPlan::<B>::new(
                    batch,
                    seq,
                    past,
                    kv_heads,
                    heads / kv_heads,
                    pads,
                    self.candidates,
                    fused,
                    &device,
                )
                .with_focus(self.focus)
            };
            let (want, want_focus) = plan(false).attend(q.clone(), k.clone(), v.clone());
            if seq > crate::kernels::BF16_AFTER_SEQ {
                // bf16 products: the scores and weighted values of rounded operands, and so
                // another result than f32's, as close as bf16's 8 bits allow.
                let bf16 = plan(true).with_bf16_products(true);
                let (got, _) = bf16.attend(q.clone(), k.clone(), v.clone());
                let diff = (got - want.clone()).abs().max().into_scalar();
                assert!(diff > 0.0 && diff < 3e-2, "bf16 output differs by {diff}");
            }
            let (got, got_focus) = plan(true).attend(q, k, v);
            assert_eq!(got.dims(), want.dims());
            let diff = (got - want).abs().max().into_scalar();
            assert!(diff < 2e-5, "output differs by {diff}");
            match (want_focus, got_focus) {
                (Some(w), Some(g)) => {
                    assert_eq!(g.dims(), w.dims());
                    let diff = (g - w).abs().max().into_scalar();
                    assert!(diff < 2e-6, "focus differs by {diff}");
                }
                (None, None) => assert_eq!(self.focus, 0),
                (w, g) => panic!("focus: burn {:?}, fused {:?}", w.is_some(), g.is_some()),
            }
        }
    }

    /// The plan of an exact step: `seq` new rows after `past` keys, left padding, the last new
    /// row the candidate.
    fn step_plan(
        batch: usize,
        seq: usize,
        past: usize,
        kv_heads: usize,
        groups: usize,
        pads: &[usize],
        fused: bool,
    ) -> AttentionPlan<B> {
        let device = Default::default();
        AttentionPlan::new(
            batch,
            seq,
            past,
            kv_heads,
            groups,
            Some(pads),
            Candidates::Last,
            fused,
            &device,
        )
    }

    #[test]
    fn compact_keys_and_values_are_read_widened_tile_by_tile() {
        // An exact step over f16 / bf16 chunk caches: two new rows after 300 cached keys, left
        // padding, a cache with spare capacity; burn's operations read the same values widened.
        // Heads of 64 take the step kernels (f16 read in place), heads of 16 `gemm`'s tiles.
        use burn::tensor::DType;
        let device = Default::default();
        let (batch, heads, kv_heads, past, seq) = (2, 6, 2, 300, 2);
        let keys = past + seq;
        for (dtype, dim) in [(DType::F16, 16), (DType::BF16, 16), (DType::F16, 64)] {
            let q = Tensor::<B, 4>::random(
                [batch, seq, heads, dim],
                Distribution::Normal(0.0, 1.5),
                &device,
            )
            .swap_dims(1, 2);
            let buffer = [batch, kv_heads, keys + 9, dim];
            let k = Tensor::<B, 4>::random(buffer, Distribution::Normal(0.0, 1.5), &device)
                .cast(dtype)
                .narrow(2, 0, keys);
            let v = Tensor::<B, 4>::random(buffer, Distribution::Default, &device)
                .cast(dtype)
                .narrow(2, 0, keys);
            let pads = [0, 41];
            let plan =
                |fused| step_plan(batch, seq, past, kv_heads, heads / kv_heads, &pads, fused);
            let (want, _) = plan(false).attend(
                q.clone(),
                k.clone().cast(DType::F32),
                v.clone().cast(DType::F32),
            );
            let (got, _) = plan(true).attend(q, k, v);
            let diff = (got - want).abs().max().into_scalar();
            assert!(diff < 2e-5, "{dtype:?}: output differs by {diff}");
        }
    }

    #[test]
    fn eight_bit_caches_read_raw_equal_burn_on_the_dequantized_values() {
        use burn::tensor::DType;
        use focusllm_core::LayerKv;

        use crate::llama::KvBuffer;
        let device = Default::default();
        let (batch, heads, kv_heads, dim, past) = (2, 9, 3, 16, 200);
        let random = |len: usize, std: f64| {
            Tensor::<B, 4>::random(
                [batch, kv_heads, len, dim],
                Distribution::Normal(0.0, std),
                &device,
            )
        };
        let mut cache = KvBuffer::stored_as(
            LayerKv {
                k: random(past, 1.5),
                v: random(past, 1.0),
            },
            DType::I8,
        );
        // An exact step: two new positions appended, then read.
        cache.append(random(2, 1.5), random(2, 1.0));
        let q = Tensor::<B, 4>::random([batch, 2, heads, dim], Distribution::Default, &device)
            .swap_dims(1, 2);
        let pads = [7, 0];
        let plan = |fused| step_plan(batch, 2, past, kv_heads, heads / kv_heads, &pads, fused);
        let (want, _) = plan(false).attend_read(q.clone(), cache.read(false));
        let (got, _) = plan(true).attend_read(q, cache.read(true));
        let diff = (got - want).abs().max().into_scalar();
        assert!(diff < 2e-5, "output differs by {diff}");
    }

    #[test]
    fn causal_prefill_over_several_query_blocks_with_grouped_heads() {
        Case {
            batch: 2,
            heads: 6,
            kv_heads: 2,
            dim: 16,
            past: 0,
            seq: 70,
            pads: vec![],
            candidates: Candidates::None,
            spare: 0,
            focus: 0,
        }
        .check();
    }

    #[test]
    fn long_past_over_several_key_tiles_with_left_padding() {
        Case {
            batch: 3,
            heads: 4,
            kv_heads: 4,
            dim: 24,
            past: 300,
            seq: 45,
            pads: vec![0, 37, 299],
            candidates: Candidates::Last,
            spare: 45,
            focus: 0,
        }
        .check();
    }

    #[test]
    fn padded_chunks_without_past_hide_padding_except_from_itself() {
        Case {
            batch: 2,
            heads: 9,
            kv_heads: 3,
            dim: 8,
            past: 0,
            seq: 33,
            pads: vec![5, 0],
            candidates: Candidates::Last,
            spare: 0,
            focus: 0,
        }
        .check();
    }

    #[test]
    fn exact_mode_candidates_see_their_prefix_and_themselves() {
        Case {
            batch: 2,
            heads: 6,
            kv_heads: 3,
            dim: 16,
            past: 150,
            seq: 5,
            pads: vec![0, 20],
            candidates: Candidates::Each,
            spare: 19,
            focus: 0,
        }
        .check();
    }

    #[test]
    fn single_query_step_measures_the_focus_over_the_first_keys() {
        Case {
            batch: 1,
            heads: 9,
            kv_heads: 3,
            dim: 64,
            past: 1000,
            seq: 1,
            pads: vec![],
            candidates: Candidates::None,
            spare: 128,
            focus: 7,
        }
        .check();
    }

    #[test]
    fn main_pass_block_focus_with_odd_sizes() {
        Case {
            batch: 2,
            heads: 3,
            kv_heads: 1,
            dim: 12,
            past: 131,
            seq: 37,
            pads: vec![],
            candidates: Candidates::None,
            spare: 0,
            focus: 129,
        }
        .check();
    }

    #[test]
    fn a_step_over_a_long_cache_is_split_into_key_segments() {
        // A step's keys are cut into segments of 512 and their states merged, whatever the
        // batch; a prefill's are not.
        assert_eq!(super::key_segments(1, 1001), 2);
        assert_eq!(super::key_segments(2, 512), 1);
        assert_eq!(super::key_segments(64, 4096), 1);
        Case {
            batch: 1,
            heads: 9,
            kv_heads: 3,
            dim: 64,
            past: 1300,
            seq: 1,
            pads: vec![],
            candidates: Candidates::None,
            spare: 40,
            focus: 0,
        }
        .check();
        Case {
            batch: 1,
            heads: 2,
            kv_heads: 1,
            dim: 16,
            past: 1000,
            seq: 2,
            pads: vec![300],
            candidates: Candidates::Last,
            spare: 0,
            focus: 0,
        }
        .check();
        // Every key of a segment hidden by padding: that segment's state is empty.
        Case {
            batch: 1,
            heads: 3,
            kv_heads: 1,
            dim: 8,
            past: 1100,
            seq: 1,
            pads: vec![900],
            candidates: Candidates::None,
            spare: 0,
            focus: 0,
        }
        .check();
    }

    #[test]
    fn a_sequence_gets_the_same_bits_alone_or_in_a_batch() {
        // Sharded and unsharded runs batch a chunk's steps with different neighbours, and pad
        // it to the batch's longest chunk: its rows must not change in the last bit (the step
        // cuts its keys the same way either way, counting from its first unpadded key).
        let device = Default::default();
        let (batch, kv_heads, groups, dim, past, seq) = (3, 3, 3, 64, 1400, 2);
        let keys = past + seq;
        let q = Tensor::<B, 4>::random(
            [batch, seq, kv_heads * groups, dim],
            Distribution::Normal(0.0, 1.5),
            &device,
        )
        .swap_dims(1, 2);
        let k = Tensor::<B, 4>::random(
            [batch, kv_heads, keys, dim],
            Distribution::Normal(0.0, 1.5),
            &device,
        );
        let v =
            Tensor::<B, 4>::random([batch, kv_heads, keys, dim], Distribution::Default, &device);
        let pads = [0, 200, 700];
        let (all, _) = step_plan(batch, seq, past, kv_heads, groups, &pads, true).attend(
            q.clone(),
            k.clone(),
            v.clone(),
        );
        for (b, &pad) in pads.iter().enumerate() {
            // Alone, the sequence has no padding.
            let one = |t: &Tensor<B, 4>| t.clone().narrow(0, b, 1);
            let unpadded = |t: &Tensor<B, 4>| one(t).narrow(2, pad, keys - pad);
            let (alone, _) = step_plan(1, seq, past - pad, kv_heads, groups, &[0], true).attend(
                one(&q),
                unpadded(&k),
                unpadded(&v),
            );
            let (want, got) = (
                all.clone()
                    .narrow(0, b, 1)
                    .into_data()
                    .to_vec::<f32>()
                    .unwrap(),
                alone.into_data().to_vec::<f32>().unwrap(),
            );
            assert!(
                super::super::same_bits(&want, &got),
                "sequence {b} differs alone and in a batch of {batch}"
            );
        }
    }
}
