//! Storing the new token's K and V rows into the pools (the "fused store" of a decode call).

use crate::dtype::{KvElem, KvSlice};
use crate::error::{bail, Result};
use crate::layout::{check_new_rows, check_pool, BlockTable, Layout};
use crate::pool::{KvPoolMut, PoolMut};

/// Writes `k_new[b]` / `v_new[b]` (`[num_seqs, num_kv_heads, head_dim]`, the pool's dtype or
/// f32, rounded to nearest even) at position `seq_lens[b] - 1` of request `b` in `layer`.
/// Exactly one row per (request, KV head) is written in each pool, and nothing else of the
/// pools is touched (the pool contract of [`crate::pool`]); requests are written in order, so
/// if two requests share a slot the later one wins.
pub fn store_new_rows<'k>(
    layout: &Layout,
    table: &BlockTable<'_>,
    layer: usize,
    k_cache: impl Into<KvPoolMut<'k>>,
    v_cache: impl Into<KvPoolMut<'k>>,
    k_new: KvSlice<'_>,
    v_new: KvSlice<'_>,
) -> Result<()> {
    let (k_cache, v_cache) = (k_cache.into(), v_cache.into());
    table.validate(layout, layer)?;
    check_pool("k_cache", layout, k_cache.read_only())?;
    check_pool("v_cache", layout, v_cache.read_only())?;
    if k_cache.dtype() != v_cache.dtype() {
        bail!("k_cache is {} but v_cache is {}", k_cache.dtype().name(), v_cache.dtype().name());
    }
    let num_seqs = table.num_seqs();
    check_new_rows("k_new", layout, num_seqs, k_cache.dtype(), k_new)?;
    check_new_rows("v_new", layout, num_seqs, v_cache.dtype(), v_new)?;
    store_pool(layout, table, layer, &k_cache, k_new);
    store_pool(layout, table, layer, &v_cache, v_new);
    Ok(())
}

fn store_pool(layout: &Layout, table: &BlockTable<'_>, layer: usize, pool: &KvPoolMut<'_>, new: KvSlice<'_>) {
    match pool {
        KvPoolMut::F32(p) => store_typed(layout, table, layer, p, new),
        KvPoolMut::F16(p) => store_typed(layout, table, layer, p, new),
        KvPoolMut::Bf16(p) => store_typed(layout, table, layer, p, new),
    }
}

/// Requires a validated `table` and a pool checked against `layout`.
fn store_typed<T: KvElem>(
    layout: &Layout,
    table: &BlockTable<'_>,
    layer: usize,
    pool: &PoolMut<'_, T>,
    new: KvSlice<'_>,
) {
    let d = layout.head_dim;
    for b in 0..table.num_seqs() {
        let (block, slot) = table.locate(layout, b, table.seq_lens[b] as usize - 1);
        for h in 0..layout.num_kv_heads {
            // SAFETY: one of the rows this call writes (validated table), which the pool
            // contract keeps from everybody else, `new` and the other pool included; the slice
            // is the only reference to it and ends with this iteration.
            let dst = unsafe { pool.slice_mut(layout.row_offset(layer, block, h, slot), d) };
            let src = (b * layout.num_kv_heads + h) * d;
            match (T::view(new), new) {
                (Some(same), _) => dst.copy_from_slice(&same[src..src + d]),
                (None, KvSlice::F32(f)) => {
                    for (x, &y) in dst.iter_mut().zip(&f[src..src + d]) {
                        *x = T::from_f32(y);
                    }
                }
                // check_new_rows admits only the pool's dtype or f32.
                (None, _) => unreachable!("new rows dtype checked before storing"),
            }
        }
    }
}
