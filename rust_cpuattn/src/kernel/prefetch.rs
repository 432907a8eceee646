//! Software prefetch of the K/V slabs an item reads next.
//!
//! Blocks are scattered, so the hardware prefetchers see short runs only (a tile, a slab)
//! and the first lines of each run would be demand misses; reads are started ahead instead.

use std::ops::Range;

use super::{Job, Seq};
use crate::pool::PoolRef;

/// Blocks ahead of the current one whose slabs get their reads started while it is processed.
pub(crate) const PREFETCH_BLOCKS: usize = 1;
/// The hardware streamers follow sequential reads only within a 4 KiB page.
pub(crate) const PAGE_BYTES: usize = 4096;
/// Cache lines prefetched at the start of each page segment of a slab.
pub(crate) const PREFETCH_LINES: usize = 12;
/// Cache lines prefetched at the start of each tile of the block ahead (AVX-512 path).
pub(crate) const TILE_PREFETCH_LINES: usize = 8;
/// K+V bytes between the tile being processed and the one whose every line is prefetched
/// (AVX2 path; see `Paced`).
pub(crate) const PREFETCH_AHEAD_BYTES: usize = 16 << 10;

/// Prefetches (into L2) every line of the `bytes` bytes at `base`; a hint that never faults.
#[inline(always)]
fn prefetch_lines_l2(base: *const u8, bytes: usize) {
    prefetch_lines::<false>(base, bytes)
}

/// Prefetches every line of the `bytes` bytes at `base` into L1 (`L1`) or L2; a hint that
/// never faults.
#[inline(always)]
fn prefetch_lines<const L1: bool>(base: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0, _MM_HINT_T1};
        let mut off = 0;
        while off < bytes {
            let p = base.wrapping_add(off).cast::<i8>();
            // SAFETY: a prefetch never faults.
            unsafe {
                if L1 {
                    _mm_prefetch::<_MM_HINT_T0>(p)
                } else {
                    _mm_prefetch::<_MM_HINT_T1>(p)
                }
            };
            off += 64;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (base, bytes);
}

/// Prefetches (into L2) the first `PREFETCH_LINES` lines of each 4 KiB page segment of the
/// `bytes` bytes at `base`. A prefetch is a hint that never faults, whatever the address.
#[inline(always)]
pub(crate) fn prefetch_page_starts(base: *const u8, bytes: usize) {
    let mut off = 0;
    while off < bytes {
        let seg_end = (((base as usize + off) / PAGE_BYTES + 1) * PAGE_BYTES - base as usize).min(bytes);
        prefetch_lines_l2(base.wrapping_add(off), (seg_end - off).min(PREFETCH_LINES * 64));
        off = seg_end;
    }
}

impl<'a, T> Job<'a, T> {
    /// Starts the reads of the K and V slabs of `block`: the first lines of each 4 KiB page
    /// segment of each slab are prefetched (into L2), and the L2 streamer, triggered by them,
    /// fetches the rest of the segment on its own.
    ///
    /// NOTE: on the reference machines, prefetching every line of the slabs is slower than no
    /// prefetch at all (the fill buffers fill up with prefetches and the streamer stalls).
    /// On a Sapphire Rapids class VM with K/V in DRAM (pools 4x its 300 MiB LLC), starting
    /// the next block's pages with 12 lines each beat two blocks ahead with 2 lines by about
    /// 10-25% (9/3/64) and 5-10% (32/8/128); more blocks ahead, or lines spread over the page,
    /// were slower.
    #[inline(always)]
    pub fn prefetch_slabs(&self, block: usize) {
        let start = self.layout.slab_offset(self.layer, block);
        let bytes = self.layout.slab_len() * std::mem::size_of::<T>();
        for pool in [self.k, self.v] {
            // The slab of a validated block id lies inside the pool: `wrapping_add` never wraps.
            prefetch_page_starts(pool.as_ptr().wrapping_add(start).cast::<u8>(), bytes);
        }
    }

    /// The id of the block `PREFETCH_BLOCKS` after block index `j` of an item processing
    /// `blocks` of `seq` (past the item's end, of the next item's first blocks), if known.
    #[inline(always)]
    pub fn block_ahead(&self, seq: &Seq<'_>, blocks: &Range<usize>, j: usize) -> Option<usize> {
        let idx = j + PREFETCH_BLOCKS;
        let id = if idx < blocks.end { seq.block_ids.get(idx) } else { seq.after.get(idx - blocks.end) };
        id.map(|&id| id as usize)
    }

    /// The slabs of an item's first blocks, up to the one `block_ahead` starts.
    #[inline(always)]
    pub fn prefetch_item_start(&self, seq: &Seq<'_>, blocks: &Range<usize>) {
        for jj in blocks.start..(blocks.start + PREFETCH_BLOCKS).min(blocks.end) {
            self.prefetch_slabs(seq.block_ids[jj] as usize);
        }
    }

    /// Prefetch for an item processing blocks `blocks` of `seq`, called as block index `j`
    /// starts: the slabs of the block `PREFETCH_BLOCKS` ahead (past the item's end, of the
    /// next item's first blocks); the item's first block also covers the blocks before that.
    #[inline(always)]
    pub fn prefetch_ahead(&self, seq: &Seq<'_>, blocks: &Range<usize>, j: usize) {
        if j == blocks.start {
            self.prefetch_item_start(seq, blocks);
        }
        if let Some(id) = self.block_ahead(seq, blocks, j) {
            self.prefetch_slabs(id);
        }
    }

    /// Prefetches (into L2) the first `TILE_PREFETCH_LINES` lines of the (block, kv_head)
    /// tile of `pool` (K or V); the L2 streamer, triggered by them, fetches the rest.
    ///
    /// NOTE: the SIMD paths start the block ahead this way, tile by tile as it works
    /// through the current block (K as a tile's scores start, V as its weighted sum starts)
    /// rather than all of its pages at once when the current block starts. Measured with K/V
    /// in DRAM, batch 16, bf16, 9/3/64 and 32/8/128: 4-16% faster at context 1024 and 3-21%
    /// at 128, with 1 and 2 threads; 4 lines were slower, 12 about the same.
    #[inline(always)]
    pub fn prefetch_tile_start(&self, pool: &PoolRef<'a, T>, block: usize, kv_head: usize) {
        let start = self.layout.row_offset(self.layer, block, kv_head, 0);
        let bytes = self.layout.block_size * self.layout.head_dim * std::mem::size_of::<T>();
        // The tile of a validated block id lies inside the pool: `wrapping_add` never wraps.
        prefetch_lines_l2(pool.as_ptr().wrapping_add(start).cast::<u8>(), bytes.min(TILE_PREFETCH_LINES * 64));
    }

    /// The (block id, kv head) of the tile `ahead` tiles after tile (block index `j`, `h`) in
    /// an item's order, continuing into the next item's first blocks.
    #[inline(always)]
    pub fn tile_ahead(
        &self,
        seq: &Seq<'_>,
        blocks: &Range<usize>,
        j: usize,
        h: usize,
        ahead: usize,
    ) -> Option<(usize, usize)> {
        let hkv = self.layout.num_kv_heads;
        let i = j * hkv + h + ahead;
        let (jj, hh) = (i / hkv, i % hkv);
        let id = if jj < blocks.end { seq.block_ids.get(jj) } else { seq.after.get(jj - blocks.end) };
        id.map(|&id| (id as usize, hh))
    }

    /// Tiles between the one processed and the one whose lines are prefetched.
    #[inline(always)]
    pub fn prefetch_distance(&self) -> usize {
        let tile_bytes = 2 * self.layout.block_size * self.layout.head_dim * std::mem::size_of::<T>();
        PREFETCH_AHEAD_BYTES.div_ceil(tile_bytes).max(1)
    }

    /// At an item's first block: every line of its first `prefetch_distance` tiles.
    #[inline(always)]
    pub fn prefetch_ahead_tiles(&self, seq: &Seq<'_>, blocks: &Range<usize>, j: usize) {
        if j == blocks.start {
            for a in 0..self.prefetch_distance() {
                if let Some((b, h)) = self.tile_ahead(seq, blocks, j, 0, a) {
                    self.prefetch_tile_all(b, h);
                }
            }
        }
    }

    /// Prefetches every line of the K and V tiles (block, kv_head).
    #[inline(always)]
    pub fn prefetch_tile_all(&self, block: usize, kv_head: usize) {
        let start = self.layout.row_offset(self.layer, block, kv_head, 0);
        let bytes = self.layout.block_size * self.layout.head_dim * std::mem::size_of::<T>();
        for pool in [self.k, self.v] {
            // The tile of a validated block id lies inside the pool: `wrapping_add` never wraps.
            let base = pool.as_ptr().wrapping_add(start).cast::<u8>();
            prefetch_lines::<true>(base, bytes);
        }
    }
}

/// Every line of two equal-length regions (the K and V rows of a chunk ahead), prefetched
/// into L1 a few lines at a time over a chunk's work rather than in one burst.
///
/// NOTE: the AVX2 path's scheme. Measured on a 2-core Zen 3 VM (K/V in DRAM, batch 16,
/// context 1024, bf16, one thread): the tile's ~100 lines prefetched in one burst as it
/// started left the kernel at about the sum of its compute and memory times (0.45-0.67 of
/// the scattered probe); the same lines spread over the V rows of a chunk, 0.68-0.95.
#[derive(Clone, Copy)]
pub(crate) struct Paced {
    k: *const u8,
    v: *const u8,
    bytes: usize,
    off: usize,
    /// Line pairs (K, V) per [`Paced::next`] call.
    per_call: usize,
    /// Calls are made every `mask + 1` steps of the caller's loop (a power of two).
    pub mask: usize,
}

impl Paced {
    /// Nothing to prefetch.
    pub fn none() -> Self {
        Paced { k: std::ptr::null(), v: std::ptr::null(), bytes: 0, off: 0, per_call: 1, mask: usize::MAX >> 1 }
    }

    /// Spreads all lines over a loop of `steps` steps that calls [`Paced::next`] on each step
    /// `i` with `i & mask == 0`: as few lines per call as possible, calls as far apart as the
    /// lines allow.
    #[inline(always)]
    pub fn spread_over(&mut self, steps: usize) {
        let lines = self.bytes.div_ceil(64);
        if lines == 0 {
            return;
        }
        let every = 1 << (steps / lines).max(1).ilog2();
        self.mask = every - 1;
        self.per_call = lines.div_ceil((steps / every).max(1)).max(1);
    }

    /// Prefetches the next `per_call` lines of both regions (the last line again once all
    /// are done, or the first when there is nothing to prefetch: no branch); a hint that
    /// never faults.
    #[inline(always)]
    pub fn next(&mut self) {
        self.pair();
        for _ in 1..self.per_call {
            self.pair();
        }
    }

    #[inline(always)]
    fn pair(&mut self) {
        let off = self.off.min(self.bytes.saturating_sub(64));
        prefetch_lines::<true>(self.k.wrapping_add(off), 1);
        prefetch_lines::<true>(self.v.wrapping_add(off), 1);
        self.off += 64;
    }
}

impl<'a, T> Job<'a, T> {
    /// Rows `r0..r0 + n` of the K and V tiles `prefetch_distance` tiles after tile (block index
    /// `j`, `h`), to prefetch with [`Paced`].
    #[inline(always)]
    pub fn paced_ahead(&self, seq: &Seq<'_>, blocks: &Range<usize>, j: usize, h: usize, r0: usize, n: usize) -> Paced {
        match self.tile_ahead(seq, blocks, j, h, self.prefetch_distance()) {
            Some((b, hh)) => {
                let start = self.layout.row_offset(self.layer, b, hh, r0);
                // Rows of a validated block id lie inside the pool: `wrapping_add` never wraps.
                let (k, v) = (self.k.as_ptr().wrapping_add(start), self.v.as_ptr().wrapping_add(start));
                let bytes = n * self.layout.head_dim * std::mem::size_of::<T>();
                Paced { k: k.cast(), v: v.cast(), bytes, off: 0, per_call: 0, mask: 0 }
            }
            None => Paced::none(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Paced;

    /// Every line of both regions is prefetched by the end of the caller's loop, whatever the
    /// ratio of lines to loop steps.
    #[test]
    fn paced_covers_every_line() {
        let (k, v) = ([0u8; 1], [0u8; 1]);
        for bytes in [0, 64, 100, 1024, 2048, 4096, 8192, 16384] {
            for steps in [1, 3, 16, 32, 64, 128, 200] {
                let mut pf = Paced { k: k.as_ptr(), v: v.as_ptr(), bytes, off: 0, per_call: 0, mask: 0 };
                pf.spread_over(steps);
                for i in 0..steps {
                    if i & pf.mask == 0 {
                        pf.next();
                    }
                }
                assert!(pf.off >= bytes, "bytes {bytes} steps {steps}: {} prefetched", pf.off);
                let lines = bytes.div_ceil(64);
                if lines > 0 && steps >= lines {
                    assert_eq!(pf.per_call, 1, "bytes {bytes} steps {steps}");
                }
            }
        }
    }
}
