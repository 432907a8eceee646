//! The reference kernel: plain loops, no SIMD, no threads, every index checked, f64
//! arithmetic. It is the oracle the fast kernel is tested against, not a production path.

use crate::dtype::KvSlice;
use crate::error::Result;
use crate::layout::{DecodeArgs, Layout};

/// Paged decode attention, one (request, query head) at a time:
/// `out[b, hq] = softmax(scale * q[b, hq] . K[b, hq / G]) V[b, hq / G]` over the request's
/// first `seq_lens[b]` cached tokens, with `G = num_q_heads / num_kv_heads`.
/// `out` is `[num_seqs, num_q_heads, head_dim]`.
pub fn paged_decode_attention_reference(
    args: &DecodeArgs<'_>,
    layout: &Layout,
    k_cache: KvSlice<'_>,
    v_cache: KvSlice<'_>,
    out: &mut [f32],
) -> Result<()> {
    args.validate(layout, k_cache, v_cache, out.len())?;
    let d = layout.head_dim;
    let group = args.group_size(layout);
    let mut scores: Vec<f64> = Vec::new();
    for b in 0..args.num_seqs() {
        let len = args.table.seq_lens[b] as usize;
        for hq in 0..args.num_q_heads {
            let h = hq / group;
            let q = &args.q[(b * args.num_q_heads + hq) * d..][..d];
            scores.clear();
            for t in 0..len {
                let (block, slot) = args.table.locate(layout, b, t);
                let base = layout.row_offset(args.layer, block, h, slot);
                let dot: f64 = (0..d).map(|i| q[i] as f64 * k_cache.get_f32(base + i) as f64).sum();
                scores.push(dot * args.scale as f64);
            }
            let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let mut total = 0.0f64;
            for s in scores.iter_mut() {
                *s = (*s - max).exp();
                total += *s;
            }
            let o = &mut out[(b * args.num_q_heads + hq) * d..][..d];
            for (i, o) in o.iter_mut().enumerate() {
                let mut acc = 0.0f64;
                for (t, &w) in scores.iter().enumerate() {
                    let (block, slot) = args.table.locate(layout, b, t);
                    acc += w * v_cache.get_f32(layout.row_offset(args.layer, block, h, slot) + i) as f64;
                }
                *o = (acc / total) as f32;
            }
        }
    }
    Ok(())
}
