//! A row-major weight `[n, k]` rewritten in a blocked layout of the kind oneDNN's matrix
//! products read (its `AB16b64a2b`, `AB16b64a`, ... formats), so a caller can fill a packed
//! weight at memory speed instead of through oneDNN's reorder.
//!
//! [`BlockedLayout`]: the matrix is cut into blocks of `n_block` rows by `k_block` columns,
//! `n` and `k` padded up to whole blocks with zeros. Blocks are stored one after another,
//! row-block major (`k_blocks_inner`: the blocks of one row-block are adjacent) or
//! column-block major. Inside a block, columns go in groups of `k_pair` adjacent values:
//! element (r, c) of the block is at `((c / k_pair) * n_block + r) * k_pair + c % k_pair`.
//! (`AB16b64a2b` is n_block 64, k_block 32, k_pair 2, row-block major.)

use rayon::prelude::*;

use crate::error::{bail, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockedLayout {
    pub n_block: usize,
    pub k_block: usize,
    pub k_pair: usize,
    pub k_blocks_inner: bool,
}

/// The pair widths with a kernel here.
const PAIRS: [usize; 3] = [1, 2, 4];

impl BlockedLayout {
    pub fn check(&self) -> Result<()> {
        if self.n_block == 0 || self.k_block == 0 || !PAIRS.contains(&self.k_pair) {
            bail!("blocked layout {self:?}: blocks must be non-empty and k_pair one of {PAIRS:?}");
        }
        if !self.k_block.is_multiple_of(self.k_pair) {
            bail!("blocked layout {self:?}: k_block is not a multiple of k_pair");
        }
        Ok(())
    }

    /// (rows, columns) after padding to whole blocks.
    pub fn padded(&self, n: usize, k: usize) -> (usize, usize) {
        (n.div_ceil(self.n_block) * self.n_block, k.div_ceil(self.k_block) * self.k_block)
    }

    /// Elements of the packed weight, padding included.
    pub fn packed_len(&self, n: usize, k: usize) -> usize {
        let (np, kp) = self.padded(n, k);
        np * kp
    }

    /// Where element (row, col) of an `[n, k]` weight lands.
    pub fn offset(&self, n: usize, k: usize, row: usize, col: usize) -> usize {
        let (row_blocks, col_blocks) = (n.div_ceil(self.n_block), k.div_ceil(self.k_block));
        let (rb, cb) = (row / self.n_block, col / self.k_block);
        let block = if self.k_blocks_inner { rb * col_blocks + cb } else { cb * row_blocks + rb };
        let (r, c) = (row % self.n_block, col % self.k_block);
        block * self.n_block * self.k_block + ((c / self.k_pair) * self.n_block + r) * self.k_pair + c % self.k_pair
    }
}

/// Blocks per work item of the parallel loop (column-block-major layouts).
const MIN_BLOCKS_PER_ITEM: usize = 16;

/// Writes the row-major `[n, k]` weight `src` into `dst` in `layout`, padding with zeros;
/// `dst` holds exactly `layout.packed_len(n, k)` elements. On rayon's global pool when
/// `parallel`; the result does not depend on it.
pub fn pack_blocked<T: Copy + Default + Send + Sync>(
    src: &[T],
    n: usize,
    k: usize,
    layout: &BlockedLayout,
    dst: &mut [T],
    parallel: bool,
) -> Result<()> {
    layout.check()?;
    if n.checked_mul(k) != Some(src.len()) {
        bail!("src has {} elements, not [{n}, {k}]", src.len());
    }
    if dst.len() != layout.packed_len(n, k) {
        bail!("dst has {} elements; {layout:?} of [{n}, {k}] takes {}", dst.len(), layout.packed_len(n, k));
    }
    if dst.is_empty() {
        return Ok(());
    }
    match layout.k_pair {
        1 => run::<T, 1>(src, n, k, layout, dst, parallel),
        2 => run::<T, 2>(src, n, k, layout, dst, parallel),
        _ => run::<T, 4>(src, n, k, layout, dst, parallel),
    }
    Ok(())
}

fn run<T: Copy + Default + Send + Sync, const KP: usize>(
    src: &[T],
    n: usize,
    k: usize,
    layout: &BlockedLayout,
    dst: &mut [T],
    parallel: bool,
) {
    let (nb, kb) = (layout.n_block, layout.k_block);
    let (row_blocks, col_blocks) = (n.div_ceil(nb), k.div_ceil(kb));
    // Row-block major: a row-block's blocks are adjacent, so a work item is its whole
    // (cache-sized) stretch of dst, its rows read in order, each once. Column-block major: a
    // work item is one block.
    let (chunk, min_items) =
        if layout.k_blocks_inner { (nb * col_blocks * kb, 1) } else { (nb * kb, MIN_BLOCKS_PER_ITEM) };
    let item = |(index, out): (usize, &mut [T])| {
        let (rb, cols) = if layout.k_blocks_inner {
            (index, (0, k))
        } else {
            let cb = index / row_blocks;
            (index % row_blocks, (cb * kb, kb.min(k - cb * kb)))
        };
        stretch::<T, KP>(src, k, (rb * nb, nb.min(n - rb * nb)), cols, nb, kb, out);
    };
    if parallel {
        dst.par_chunks_mut(chunk).enumerate().with_min_len(min_items).for_each(item);
    } else {
        dst.chunks_mut(chunk).enumerate().for_each(item);
    }
}

/// `rows.1` rows from row `rows.0` and `cols.1` columns from column `cols.0` of the
/// row-major `src` (rows `k` apart) into `out`: `out.len() / (nb * kb)` blocks one after
/// another, of which those columns fill the first; missing rows and columns are zero.
#[inline(always)]
fn stretch<T: Copy + Default, const KP: usize>(
    src: &[T],
    k: usize,
    rows: (usize, usize),
    cols: (usize, usize),
    nb: usize,
    kb: usize,
    out: &mut [T],
) {
    debug_assert!((rows.0 + rows.1) * k <= src.len() && cols.0 + cols.1 <= k && rows.1 <= nb);
    let unit = std::mem::size_of::<T>() * KP; // bytes of a column group
    let transposable = unit == 4 && kb == 16 * KP && nb.is_multiple_of(16) && (k * unit / KP).is_multiple_of(4);
    let block_len = nb * kb;
    let full_blocks =
        if transposable && rows.1 == nb && has_avx512f() { (cols.1 / kb).min(out.len() / block_len) } else { 0 };
    if full_blocks > 0 {
        // SAFETY: rows rows.0 .. rows.0 + nb and columns cols.0 .. cols.0 + full_blocks * kb
        // exist in src (the caller's bounds), out holds full_blocks * nb * kb elements, and a
        // group of KP elements is the 4-byte unit the transposes move (rows a whole number of
        // units apart).
        #[cfg(target_arch = "x86_64")]
        unsafe {
            transpose_blocks(
                src[rows.0 * k + cols.0..].as_ptr() as *const u32,
                k * unit / KP / 4,
                nb,
                full_blocks,
                out.as_mut_ptr() as *mut u32,
            )
        };
    }
    for (cb, block) in out.chunks_mut(block_len).enumerate().skip(full_blocks) {
        let first_col = cb * kb;
        let width = kb.min(cols.1.saturating_sub(first_col));
        let origin = rows.0 * k + cols.0 + first_col;
        if rows.1 < nb || width < kb {
            block.fill(T::default());
        }
        for r in 0..rows.1 {
            let part = &src[origin + r * k..][..width];
            for (g, pair) in part.chunks_exact(KP).enumerate() {
                let at = (g * nb + r) * KP;
                block[at..at + KP].copy_from_slice(pair);
            }
            for c in width / KP * KP..width {
                block[((c / KP) * nb + r) * KP + c % KP] = part[c];
            }
        }
    }
}

fn has_avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `num_blocks` blocks of `nb` rows (a multiple of 16) by 16 four-byte units, side by side in
/// src: row r's units start at `src + r * row_stride`; unit g of row r of block b goes to
/// `out[b * nb * 16 + g * nb + r]`. Sixteen rows at a time across all the blocks (sixteen
/// read streams), each a 16 x 16 transpose in registers. The caller guarantees AVX-512F and
/// that those places of src and out exist.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose_blocks(src: *const u32, row_stride: usize, nb: usize, num_blocks: usize, out: *mut u32) {
    for r0 in (0..nb).step_by(16) {
        for b in 0..num_blocks {
            transpose16(src.add(r0 * row_stride + b * 16), row_stride, out.add(b * nb * 16 + r0), nb);
        }
    }
}

/// Unit g of row r (units at `src + r * row_stride`, r < 16, g < 16) to `out[g * out_stride + r]`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transpose16(src: *const u32, row_stride: usize, out: *mut u32, out_stride: usize) {
    use std::arch::x86_64::*;
    let mut r = [_mm512_setzero_si512(); 16];
    for (i, v) in r.iter_mut().enumerate() {
        *v = _mm512_loadu_si512(src.add(i * row_stride) as *const __m512i);
    }
    let mut t = [_mm512_setzero_si512(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    // r[4i + m], 128-bit lane L: unit 4L + m of rows 4i .. 4i + 3
    for i in 0..4 {
        r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for m in 0..4 {
        let (a, b, c, d) = (r[m], r[4 + m], r[8 + m], r[12 + m]);
        let (ab_even, cd_even) = (_mm512_shuffle_i32x4::<0x88>(a, b), _mm512_shuffle_i32x4::<0x88>(c, d));
        let (ab_odd, cd_odd) = (_mm512_shuffle_i32x4::<0xDD>(a, b), _mm512_shuffle_i32x4::<0xDD>(c, d));
        let columns = [
            (m, _mm512_shuffle_i32x4::<0x88>(ab_even, cd_even)),
            (8 + m, _mm512_shuffle_i32x4::<0xDD>(ab_even, cd_even)),
            (4 + m, _mm512_shuffle_i32x4::<0x88>(ab_odd, cd_odd)),
            (12 + m, _mm512_shuffle_i32x4::<0xDD>(ab_odd, cd_odd)),
        ];
        for (g, v) in columns {
            _mm512_storeu_si512(out.add(g * out_stride) as *mut __m512i, v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layouts() -> Vec<BlockedLayout> {
        let mut all = Vec::new();
        for (n_block, k_block, k_pair) in [(64, 32, 2), (64, 16, 1), (16, 16, 4), (8, 6, 2), (3, 4, 1)] {
            for k_blocks_inner in [true, false] {
                all.push(BlockedLayout { n_block, k_block, k_pair, k_blocks_inner });
            }
        }
        all
    }

    #[test]
    fn every_element_lands_at_its_offset_and_padding_is_zero() {
        for layout in layouts() {
            for (n, k) in [(64, 32), (130, 70), (1, 1), (7, 9), (200, 96), (5, 0), (0, 5)] {
                let src: Vec<u32> = (1..=(n * k) as u32).collect();
                for parallel in [false, true] {
                    let mut dst = vec![u32::MAX; layout.packed_len(n, k)];
                    pack_blocked(&src, n, k, &layout, &mut dst, parallel).unwrap();
                    let mut expected = vec![0u32; dst.len()];
                    for row in 0..n {
                        for col in 0..k {
                            expected[layout.offset(n, k, row, col)] = src[row * k + col];
                        }
                    }
                    assert_eq!(dst, expected, "{layout:?} [{n}, {k}] parallel {parallel}");
                }
            }
        }
    }

    #[test]
    fn transposed_blocks_land_where_the_plain_loop_puts_them() {
        // bf16-like pairs (2 x 2 bytes) and f32-like singles: the 16 x 16 transposes' cases
        for (n_block, k_pair, k_blocks_inner) in [(64, 2, true), (32, 2, true), (16, 2, true), (64, 2, false)] {
            let layout = BlockedLayout { n_block, k_block: 16 * k_pair, k_pair, k_blocks_inner };
            for (n, k) in [(128, 64), (130, 70), (64, 32), (64, 66), (64, 33), (16, 96)] {
                let src: Vec<u16> = (0..n * k).map(|i| (i * 7 + 3) as u16).collect();
                let mut dst = vec![u16::MAX; layout.packed_len(n, k)];
                pack_blocked(&src, n, k, &layout, &mut dst, true).unwrap();
                for row in 0..n {
                    for col in 0..k {
                        assert_eq!(dst[layout.offset(n, k, row, col)], src[row * k + col], "{layout:?} ({row}, {col})");
                    }
                }
            }
        }
        let layout = BlockedLayout { n_block: 64, k_block: 16, k_pair: 1, k_blocks_inner: true };
        let (n, k) = (192, 48);
        let src: Vec<f32> = (0..n * k).map(|i| i as f32).collect();
        let mut dst = vec![f32::NAN; layout.packed_len(n, k)];
        pack_blocked(&src, n, k, &layout, &mut dst, false).unwrap();
        for row in 0..n {
            for col in 0..k {
                assert_eq!(dst[layout.offset(n, k, row, col)], src[row * k + col]);
            }
        }
    }

    #[test]
    fn offsets_are_a_bijection_onto_the_unpadded_slots() {
        for layout in layouts() {
            let (n, k) = (70, 45);
            let mut seen = vec![false; layout.packed_len(n, k)];
            for row in 0..n {
                for col in 0..k {
                    let at = layout.offset(n, k, row, col);
                    assert!(!seen[at], "{layout:?}: ({row}, {col}) collides");
                    seen[at] = true;
                }
            }
            assert_eq!(seen.iter().filter(|s| **s).count(), n * k);
        }
    }

    #[test]
    fn bad_arguments_are_errors() {
        let layout = BlockedLayout { n_block: 4, k_block: 4, k_pair: 2, k_blocks_inner: true };
        let src = vec![0f32; 12];
        let mut dst = vec![0f32; layout.packed_len(3, 4)];
        assert!(pack_blocked(&src, 3, 4, &layout, &mut dst, false).is_ok());
        assert!(pack_blocked(&src, 4, 4, &layout, &mut dst, false).is_err());
        assert!(pack_blocked(&src, 3, 4, &layout, &mut dst[1..], false).is_err());
        for bad in [
            BlockedLayout { k_pair: 3, ..layout },
            BlockedLayout { k_block: 6, k_pair: 4, ..layout },
            BlockedLayout { n_block: 0, ..layout },
        ] {
            assert!(pack_blocked(&src, 3, 4, &bad, &mut dst, false).is_err(), "{bad:?}");
        }
    }
}
