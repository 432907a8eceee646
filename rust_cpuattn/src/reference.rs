//! The reference kernel: plain loops, no SIMD, no threads, every index checked, f64
//! arithmetic. It is the oracle the fast kernel is tested against, not a production path.

use crate::error::Result;
use crate::layout::{DecodeArgs, Layout};
use crate::pool::KvPool;

/// Paged decode attention, one (request, query head) at a time:
/// `out[b, hq] = softmax(scale * q[b, hq] . K[b, hq / G]) V[b, hq / G]` over the request's
/// first `seq_lens[b]` cached tokens, with `G = num_q_heads / num_kv_heads`.
/// `out` is `[num_seqs, num_q_heads, head_dim]`. Reads, of the pools, only the rows of those
/// tokens (within the slabs the fast kernel reads); writes only `out`.
pub fn paged_decode_attention_reference<'k>(
    args: &DecodeArgs<'_>,
    layout: &Layout,
    k_cache: impl Into<KvPool<'k>>,
    v_cache: impl Into<KvPool<'k>>,
    out: &mut [f32],
) -> Result<()> {
    let (k_cache, v_cache) = (k_cache.into(), v_cache.into());
    args.validate(layout, k_cache, v_cache, out.len())?;
    let d = layout.head_dim;
    let group = args.group_size(layout);
    let mut scores: Vec<f64> = Vec::new();
    let mut acc: Vec<f64> = vec![0.0; d];
    for b in 0..args.num_seqs() {
        let len = args.table.seq_lens[b] as usize;
        for hq in 0..args.num_q_heads {
            let h = hq / group;
            let q = &args.q[(b * args.num_q_heads + hq) * d..][..d];
            let row = |pool, t| {
                let (block, slot) = args.table.locate(layout, b, t);
                // SAFETY: a row of token t < seq_lens[b] of request b in `layer`: in a slab of
                // one of the call's validated blocks, which nobody writes during the call.
                unsafe { widened_row(pool, layout.row_offset(args.layer, block, h, slot), d) }
            };
            scores.clear();
            for t in 0..len {
                let dot: f64 = row(&k_cache, t).zip(q).map(|(k, &q)| q as f64 * k).sum();
                scores.push(dot * args.scale as f64);
            }
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let mut total = 0.0f64;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                total += *s;
            }
            acc.fill(0.0);
            for (t, &w) in scores.iter().enumerate() {
                for (a, v) in acc.iter_mut().zip(row(&v_cache, t)) {
                    *a += w * v;
                }
            }
            let o = &mut out[(b * args.num_q_heads + hq) * d..][..d];
            for (o, &a) in o.iter_mut().zip(&acc) {
                *o = (a / total) as f32;
            }
        }
    }
    Ok(())
}

/// Elements `start..start + len` of `pool`, widened to f64.
///
/// # Safety
/// As [`KvPool::slice`].
unsafe fn widened_row<'p>(pool: &'p KvPool<'_>, start: usize, len: usize) -> impl Iterator<Item = f64> + 'p {
    // SAFETY: forwarded contract.
    let row = unsafe { pool.slice(start, len) };
    (0..len).map(move |i| row.get_f32(i) as f64)
}
