//! Portable path: the same algorithm as the SIMD paths, one element at a time.

use std::ops::Range;

use super::{Job, Seq, State};
use crate::dtype::KvElem;

pub(crate) fn attend<T: KvElem>(job: &Job<'_, T>, seq: &Seq<'_>, blocks: Range<usize>, st: &mut State) {
    let d = job.layout.head_dim;
    let bs = job.layout.block_size;
    let g = job.group;
    let State { q, m, l, acc, p, .. } = st;
    p.resize(bs, 0.0);
    let range = blocks.clone();
    for j in blocks {
        let block = seq.block_ids[j] as usize;
        let n = (seq.len - j * bs).min(bs);
        job.prefetch_ahead(seq, &range, j);
        for h in 0..job.layout.num_kv_heads {
            // SAFETY: `block` comes from the item's `Seq` and `n <= block_size`.
            let (kt, vt) = unsafe { (job.tile(&job.k, block, h, n), job.tile(&job.v, block, h, n)) };
            for hq in h * g..(h + 1) * g {
                let qh = &q[hq * d..][..d];
                let s = &mut p[..n];
                for (t, s) in s.iter_mut().enumerate() {
                    *s = qh.iter().zip(&kt[t * d..][..d]).map(|(&a, &b)| a * b.to_f32()).sum::<f32>() * job.scale;
                }
                let m_new = s.iter().cloned().fold(m[hq], f32::max);
                let alpha = if m[hq] == f32::NEG_INFINITY { 0.0 } else { (m[hq] - m_new).exp() };
                let mut sum = 0.0;
                for s in s.iter_mut() {
                    *s = (*s - m_new).exp();
                    sum += *s;
                }
                l[hq] = l[hq] * alpha + sum;
                m[hq] = m_new;
                let a = &mut acc[hq * d..][..d];
                if alpha != 1.0 {
                    a.iter_mut().for_each(|x| *x *= alpha);
                }
                for (t, &w) in s.iter().enumerate() {
                    for (x, &vv) in a.iter_mut().zip(&vt[t * d..][..d]) {
                        *x += w * vv.to_f32();
                    }
                }
            }
        }
    }
}
