//! Batched copies of (layer, block) slabs between two pools of the same block shape and
//! dtype (device <-> host swaps). Pairs are sorted and coalesced into runs of consecutive
//! source and destination blocks: one memcpy per (layer, run).
//!
//! A copy reads only the source slabs it names and writes only the destination slabs it
//! names (the pool contract of [`crate::pool`]): other threads may use the other slabs of
//! both pools meanwhile.

use std::ops::Range;

use crate::error::{bail, Result};
use crate::layout::Layout;
use crate::pool::{KvPool, KvPoolMut, PoolMut, PoolRef};
use crate::team::{run_each, Team};

/// Which slabs to copy: `src_block_ids[i]` of the source goes to `dst_block_ids[i]` of the
/// destination, in every layer of `layers`.
#[derive(Debug, Clone)]
pub struct BlockCopy<'a> {
    pub src_block_ids: &'a [i64],
    pub dst_block_ids: &'a [i64],
    pub layers: Range<usize>,
}

/// A run of `len` consecutive blocks starting at `src` / `dst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    pub src: usize,
    pub dst: usize,
    pub len: usize,
}

/// Checks ids and layers against both layouts; returns the coalesced runs (sorted by
/// destination). Destination ids must be distinct (each destination block written once).
pub fn plan_runs(src: &Layout, dst: &Layout, copy: &BlockCopy<'_>) -> Result<Vec<Run>> {
    src.check()?;
    dst.check()?;
    let same = (src.num_layers, src.num_kv_heads, src.block_size, src.head_dim)
        == (dst.num_layers, dst.num_kv_heads, dst.block_size, dst.head_dim);
    if !same {
        bail!("source pool {:?} and destination pool {:?} differ in more than num_blocks", src.shape(), dst.shape());
    }
    if copy.src_block_ids.len() != copy.dst_block_ids.len() {
        bail!(
            "src_block_ids has {} entries but dst_block_ids has {}",
            copy.src_block_ids.len(),
            copy.dst_block_ids.len()
        );
    }
    if copy.layers.start > copy.layers.end || copy.layers.end > src.num_layers {
        bail!("layers {:?} out of range for {} layers", copy.layers, src.num_layers);
    }
    let mut pairs = Vec::with_capacity(copy.src_block_ids.len());
    for (i, (&s, &d)) in copy.src_block_ids.iter().zip(copy.dst_block_ids).enumerate() {
        if s < 0 || s as u64 >= src.num_blocks as u64 {
            bail!("src_block_ids[{i}] = {s} out of range for {} blocks", src.num_blocks);
        }
        if d < 0 || d as u64 >= dst.num_blocks as u64 {
            bail!("dst_block_ids[{i}] = {d} out of range for {} blocks", dst.num_blocks);
        }
        pairs.push((d as usize, s as usize));
    }
    pairs.sort_unstable();
    if let Some(w) = pairs.windows(2).find(|w| w[0].0 == w[1].0) {
        bail!("dst_block_ids repeats block {}", w[0].0);
    }
    let mut runs: Vec<Run> = Vec::new();
    for (d, s) in pairs {
        match runs.last_mut() {
            Some(r) if r.dst + r.len == d && r.src + r.len == s => r.len += 1,
            _ => runs.push(Run { src: s, dst: d, len: 1 }),
        }
    }
    Ok(runs)
}

/// Copies the slabs of `copy` from `src` to `dst` (same dtype) on `team` (or the calling
/// thread): reads slabs (layer, `src_block_ids[i]`) of `src` and writes slabs (layer,
/// `dst_block_ids[i]`) of `dst` for each layer of `copy.layers`, nothing else. Returns the
/// number of coalesced runs per layer.
pub fn copy_blocks<'s, 'd>(
    src_layout: &Layout,
    dst_layout: &Layout,
    src: impl Into<KvPool<'s>>,
    dst: impl Into<KvPoolMut<'d>>,
    copy: &BlockCopy<'_>,
    team: Option<&Team>,
) -> Result<usize> {
    let (src, dst) = (src.into(), dst.into());
    let runs = plan_runs(src_layout, dst_layout, copy)?;
    if src.len() != src_layout.numel() || dst.len() != dst_layout.numel() {
        bail!("pool lengths do not match their shapes");
    }
    match (src, dst) {
        (KvPool::F32(s), KvPoolMut::F32(d)) => copy_runs(src_layout, dst_layout, s, &d, &runs, &copy.layers, team),
        (KvPool::F16(s), KvPoolMut::F16(d)) => copy_runs(src_layout, dst_layout, s, &d, &runs, &copy.layers, team),
        (KvPool::Bf16(s), KvPoolMut::Bf16(d)) => copy_runs(src_layout, dst_layout, s, &d, &runs, &copy.layers, team),
        (s, d) => bail!("source is {} but destination is {}", s.dtype().name(), d.dtype().name()),
    }
    Ok(runs.len())
}

/// Largest piece one task copies (keeps threads balanced when runs are long).
const MAX_TASK_BYTES: usize = 1 << 20;

/// Requires `runs` from `plan_runs` and pools checked against their layouts.
fn copy_runs<T: Copy + Send + Sync>(
    src_layout: &Layout,
    dst_layout: &Layout,
    src: PoolRef<'_, T>,
    dst: &PoolMut<'_, T>,
    runs: &[Run],
    layers: &Range<usize>,
    team: Option<&Team>,
) {
    let slab = src_layout.slab_len();
    // Tasks: (src offset, dst offset, elements), each inside one (layer, run).
    let max_elems = (MAX_TASK_BYTES / std::mem::size_of::<T>().max(1)).max(slab);
    let mut tasks: Vec<(usize, usize, usize)> = Vec::new();
    for layer in layers.clone() {
        for r in runs {
            let (s0, d0) = (src_layout.slab_offset(layer, r.src), dst_layout.slab_offset(layer, r.dst));
            let total = r.len * slab;
            let mut done = 0;
            while done < total {
                let n = (total - done).min(max_elems);
                tasks.push((s0 + done, d0 + done, n));
                done += n;
            }
        }
    }
    run_each(team, tasks, &|_, (s, d, n)| {
        // SAFETY: the source piece lies in slabs the call reads, which nobody writes during
        // the call (pool contract). The destination piece lies in slabs the call writes, which
        // nobody else touches during the call (pool contract, `src` included), and tasks
        // write disjoint pieces (distinct destination blocks, checked by `plan_runs`), so
        // this slice is the only reference to it.
        let (s, d) = unsafe { (src.slice(s, n), dst.slice_mut(d, n)) };
        d.copy_from_slice(s);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(blocks: usize) -> Layout {
        Layout::new(3, blocks, 2, 4, 8).unwrap()
    }

    #[test]
    fn runs_coalesce_after_sorting() {
        let copy = BlockCopy { src_block_ids: &[5, 3, 4, 9, 0], dst_block_ids: &[2, 0, 1, 7, 3], layers: 0..3 };
        let runs = plan_runs(&layout(10), &layout(8), &copy).unwrap();
        assert_eq!(
            runs,
            vec![Run { src: 3, dst: 0, len: 3 }, Run { src: 0, dst: 3, len: 1 }, Run { src: 9, dst: 7, len: 1 }]
        );
    }

    #[test]
    fn bad_copies_are_errors() {
        let (a, b) = (layout(10), layout(8));
        let bad = [
            BlockCopy { src_block_ids: &[10], dst_block_ids: &[0], layers: 0..3 },
            BlockCopy { src_block_ids: &[0], dst_block_ids: &[8], layers: 0..3 },
            BlockCopy { src_block_ids: &[-1], dst_block_ids: &[0], layers: 0..3 },
            BlockCopy { src_block_ids: &[0, 1], dst_block_ids: &[0], layers: 0..3 },
            BlockCopy { src_block_ids: &[0, 1], dst_block_ids: &[2, 2], layers: 0..3 },
            BlockCopy { src_block_ids: &[0], dst_block_ids: &[0], layers: 0..4 },
            #[allow(clippy::reversed_empty_ranges)]
            BlockCopy { src_block_ids: &[0], dst_block_ids: &[0], layers: 2..1 },
        ];
        for c in &bad {
            assert!(plan_runs(&a, &b, c).is_err(), "{c:?}");
        }
        assert!(plan_runs(&a, &Layout::new(3, 8, 2, 8, 8).unwrap(), &bad[0]).is_err());
    }
}
