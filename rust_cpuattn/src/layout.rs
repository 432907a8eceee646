//! Shapes of the KV pools and of one decode call, and their validation.
//!
//! Every public kernel validates its arguments with these functions before touching memory,
//! whatever the caller; the fast kernels rely on it for their unchecked indexing.

use crate::dtype::{KvDtype, KvSlice};
use crate::error::{bail, Result};
use crate::pool::KvPool;

/// Shape of one KV pool: `[num_layers, num_blocks, num_kv_heads, block_size, head_dim]`,
/// row-major. The K and V pools share one layout. One (layer, block) "slab" over all KV heads
/// is contiguous: `num_kv_heads * block_size * head_dim` elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub num_layers: usize,
    pub num_blocks: usize,
    pub num_kv_heads: usize,
    pub block_size: usize,
    pub head_dim: usize,
}

impl Layout {
    /// Checks that every dimension is at least 1 and that the element count fits in `usize`.
    pub fn new(
        num_layers: usize,
        num_blocks: usize,
        num_kv_heads: usize,
        block_size: usize,
        head_dim: usize,
    ) -> Result<Self> {
        let layout = Layout { num_layers, num_blocks, num_kv_heads, block_size, head_dim };
        layout.check()?;
        Ok(layout)
    }

    /// Re-checks a layout built field by field.
    pub fn check(&self) -> Result<()> {
        let dims = [
            ("num_layers", self.num_layers),
            ("num_blocks", self.num_blocks),
            ("num_kv_heads", self.num_kv_heads),
            ("block_size", self.block_size),
            ("head_dim", self.head_dim),
        ];
        for (name, value) in dims {
            if value == 0 {
                bail!("KV cache {name} must be at least 1");
            }
        }
        if self.checked_numel().is_none() {
            bail!("KV cache shape {:?} is too large", self.shape());
        }
        Ok(())
    }

    pub fn shape(&self) -> [usize; 5] {
        [self.num_layers, self.num_blocks, self.num_kv_heads, self.block_size, self.head_dim]
    }

    fn checked_numel(&self) -> Option<usize> {
        self.shape().iter().try_fold(1usize, |acc, &d| acc.checked_mul(d))
    }

    /// Elements in the whole pool.
    pub fn numel(&self) -> usize {
        self.num_layers * self.num_blocks * self.slab_len()
    }

    /// Elements in one (layer, block) slab: `[num_kv_heads, block_size, head_dim]`.
    pub fn slab_len(&self) -> usize {
        self.num_kv_heads * self.block_size * self.head_dim
    }

    /// Elements in one (layer, block, kv head) tile: `[block_size, head_dim]`.
    pub fn tile_len(&self) -> usize {
        self.block_size * self.head_dim
    }

    /// Offset of the slab of (layer, block).
    #[inline]
    pub fn slab_offset(&self, layer: usize, block: usize) -> usize {
        (layer * self.num_blocks + block) * self.slab_len()
    }

    /// Offset of the row of (layer, block, kv head, slot within the block).
    #[inline]
    pub fn row_offset(&self, layer: usize, block: usize, kv_head: usize, slot: usize) -> usize {
        self.slab_offset(layer, block) + (kv_head * self.block_size + slot) * self.head_dim
    }
}

/// Which cached tokens each request of a decode batch attends to.
///
/// Request `b` reads block table row `rows[b]`; its first `seq_lens[b]` tokens are cached in
/// blocks `block_table[rows[b], 0..ceil(seq_lens[b] / block_size)]` (entries past that are
/// never read and may hold anything, e.g. -1). `seq_lens` include the token being decoded.
///
/// These "used" blocks are all a call for `layer` touches in the pools (the pool contract of
/// [`crate::pool`]): it reads their (layer, block) slabs, whole (rows past a request's length
/// in its last block may be read, never used), and a store writes one row of each request.
#[derive(Debug, Clone, Copy)]
pub struct BlockTable<'a> {
    /// `[num_rows, width]`, row-major, block ids into the pool.
    pub block_ids: &'a [i32],
    pub width: usize,
    /// `[num_seqs]`: block table row of each request.
    pub rows: &'a [i32],
    /// `[num_seqs]`: tokens of each request, `1 <= len <= width * block_size`.
    pub seq_lens: &'a [i32],
}

impl<'a> BlockTable<'a> {
    pub fn num_seqs(&self) -> usize {
        self.rows.len()
    }

    /// Checks every index that a kernel or a store will follow for `layer`.
    pub fn validate(&self, layout: &Layout, layer: usize) -> Result<()> {
        layout.check()?;
        if layer >= layout.num_layers {
            bail!("layer {layer} out of range for a KV cache of {} layers", layout.num_layers);
        }
        if self.seq_lens.len() != self.rows.len() {
            bail!("rows has {} entries but seq_lens has {}", self.rows.len(), self.seq_lens.len());
        }
        if self.rows.is_empty() {
            return Ok(());
        }
        if self.width == 0 {
            bail!("block_table must have at least one column");
        }
        if self.block_ids.len() % self.width != 0 {
            bail!("block_table length {} is not a multiple of its width {}", self.block_ids.len(), self.width);
        }
        let num_rows = self.block_ids.len() / self.width;
        let max_len = self.width.saturating_mul(layout.block_size);
        for (b, (&row, &len)) in self.rows.iter().zip(self.seq_lens).enumerate() {
            if row < 0 || row as usize >= num_rows {
                bail!("rows[{b}] = {row} out of range for a block table of {num_rows} rows");
            }
            if len < 1 || len as usize > max_len {
                bail!(
                    "seq_lens[{b}] = {len} out of range [1, {max_len}] (block table width {} x block_size {})",
                    self.width,
                    layout.block_size
                );
            }
            let row = row as usize;
            let num_used = (len as usize).div_ceil(layout.block_size);
            let ids = &self.block_ids[row * self.width..row * self.width + num_used];
            for (j, &id) in ids.iter().enumerate() {
                if id < 0 || id as usize >= layout.num_blocks {
                    bail!(
                        "block_table[{row}, {j}] = {id} (used by request {b}) out of range for {} blocks",
                        layout.num_blocks
                    );
                }
            }
        }
        Ok(())
    }

    /// Block id of token `t` of request `b`, and its slot within the block. Only valid after
    /// `validate` (then it cannot fail); panics on a bad index otherwise.
    #[inline]
    pub fn locate(&self, layout: &Layout, b: usize, t: usize) -> (usize, usize) {
        let row = self.rows[b] as usize;
        let id = self.block_ids[row * self.width + t / layout.block_size];
        (id as usize, t % layout.block_size)
    }
}

/// One decode attention call for a batch of `num_seqs` requests.
#[derive(Debug, Clone, Copy)]
pub struct DecodeArgs<'a> {
    /// `[num_seqs, num_q_heads, head_dim]`: the new token's queries.
    pub q: &'a [f32],
    pub num_q_heads: usize,
    pub table: BlockTable<'a>,
    pub layer: usize,
    /// Multiplies q.k (usually `1 / sqrt(head_dim)`).
    pub scale: f32,
}

impl<'a> DecodeArgs<'a> {
    pub fn num_seqs(&self) -> usize {
        self.table.num_seqs()
    }

    /// Query heads per KV head (valid after `validate`).
    pub fn group_size(&self, layout: &Layout) -> usize {
        self.num_q_heads / layout.num_kv_heads
    }

    /// Checks the whole call: shapes, dtypes and every index the kernel will follow.
    pub fn validate(&self, layout: &Layout, k: KvPool<'_>, v: KvPool<'_>, out_len: usize) -> Result<()> {
        self.table.validate(layout, self.layer)?;
        check_pool("k_cache", layout, k)?;
        check_pool("v_cache", layout, v)?;
        if k.dtype() != v.dtype() {
            bail!("k_cache is {} but v_cache is {}", k.dtype().name(), v.dtype().name());
        }
        if self.num_q_heads == 0 || self.num_q_heads % layout.num_kv_heads != 0 {
            bail!(
                "number of query heads {} must be a positive multiple of the number of KV heads {}",
                self.num_q_heads,
                layout.num_kv_heads
            );
        }
        let q_len = self.num_seqs().checked_mul(self.num_q_heads).and_then(|n| n.checked_mul(layout.head_dim));
        if q_len != Some(self.q.len()) {
            bail!(
                "q has {} elements, expected [{}, {}, {}]",
                self.q.len(),
                self.num_seqs(),
                self.num_q_heads,
                layout.head_dim
            );
        }
        if out_len != self.q.len() {
            bail!("out has {out_len} elements, expected {} (the shape of q)", self.q.len());
        }
        if !self.scale.is_finite() {
            bail!("scale must be finite, got {}", self.scale);
        }
        Ok(())
    }
}

/// Checks that a pool view matches its layout.
pub fn check_pool(name: &str, layout: &Layout, pool: KvPool<'_>) -> Result<()> {
    if pool.len() != layout.numel() {
        bail!("{name} has {} elements, expected {:?}", pool.len(), layout.shape());
    }
    Ok(())
}

/// Checks new K/V rows `[num_seqs, num_kv_heads, head_dim]` against a pool of `dtype`: same
/// dtype, or f32 (converted when stored).
pub fn check_new_rows(name: &str, layout: &Layout, num_seqs: usize, dtype: KvDtype, rows: KvSlice<'_>) -> Result<()> {
    if rows.dtype() != dtype && rows.dtype() != KvDtype::F32 {
        bail!("{name} is {} but the cache is {} (give {} or float32)", rows.dtype().name(), dtype.name(), dtype.name());
    }
    let expected = num_seqs * layout.num_kv_heads * layout.head_dim;
    if rows.len() != expected {
        bail!(
            "{name} has {} elements, expected [{num_seqs}, {}, {}]",
            rows.len(),
            layout.num_kv_heads,
            layout.head_dim
        );
    }
    Ok(())
}
