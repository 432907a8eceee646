//! AVX2 + FMA + F16C path.
//!
//! Per (block, KV head) tile, rows go in chunks of 16: raw scores of every head of the group
//! (each K row widened once in registers for all of them, see [`scores`]), the online softmax
//! on two 8-lane score vectors per head, then the weighted V rows as rank-1 updates of
//! accumulators held in registers (see [`accumulate`]). q and the accumulators are kept in the
//! element order rows widen to (see [`elem`]); the accumulators are put back in order when the
//! item ends. The lines of the tiles some 16 KiB ahead are prefetched a pair at a time over the
//! weighted V rows (see `Paced`), so memory and arithmetic overlap.

mod accumulate;
mod elem;
mod scores;
mod vmath;

use std::arch::x86_64::*;
use std::ops::Range;

pub(crate) use elem::Wide8;

use super::prefetch::Paced;
use super::{Job, Seq, State, CHUNK_ROWS, MAX_SLACK};
use accumulate::accumulate;
use elem::{from_evenodd, to_evenodd};
use scores::{scores, scores_rows, ROWS};
use vmath::{exp8, exp_scalar, hadd8, hmax8};

/// Runs blocks `blocks` of one request.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C, and `head_dim % 8 == 0`; `job`/`seq` validated,
/// `st` reset for this request.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn attend<T: Wide8>(job: &Job<'_, T>, seq: &Seq<'_>, blocks: Range<usize>, st: &mut State) {
    body::<T>(job, seq, blocks, st)
}

/// The weighted V rows of a chunk whose softmax is done, run after the next chunk's scores.
struct Pending<T> {
    /// First V row of the chunk, `[n, d]`.
    v: *const T,
    n: usize,
    /// First accumulator of the group `[g, d]`.
    acc: *mut f32,
    /// Which half of the double-buffered weights.
    buf: usize,
    rescale: bool,
    /// The same rows of the tiles `prefetch_distance` ahead.
    pf: Paced,
}

#[inline(always)]
unsafe fn body<T: Wide8>(job: &Job<'_, T>, seq: &Seq<'_>, blocks: Range<usize>, st: &mut State) {
    // NOTE: head_dim stays a run-time value: with it constant, the fully unrolled loops
    // spilled registers and ran slower.
    let d = job.layout.head_dim;
    let bs = job.layout.block_size;
    let g = job.group;
    let State { q, q_evenodd, m, l, l_lanes, acc, dots, pb, alpha, .. } = st;
    debug_assert!(d % 8 == 0 && q.len() == job.num_q_heads * d && acc.len() == q.len());
    // Weights and rescale factors are double-buffered: `[2, g, 16]` and `[2, g]`.
    let pb_len = g * CHUNK_ROWS;
    assert!(dots.len() >= g * CHUNK_ROWS && pb.len() >= 2 * pb_len && alpha.len() >= 2 * g);
    assert!(l_lanes.len() >= job.num_q_heads * ROWS);
    let qn: *const f32 = if T::EVENODD {
        q_evenodd.resize(q.len(), 0.0);
        to_evenodd(q, q_evenodd, d);
        q_evenodd.as_ptr()
    } else {
        q.as_ptr()
    };
    let (dots, pb, l_lanes, alpha) = (dots.as_mut_ptr(), pb.as_mut_ptr(), l_lanes.as_mut_ptr(), alpha.as_mut_ptr());
    let iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let eight = _mm256_set1_epi32(ROWS as i32);
    let scale = _mm256_set1_ps(job.scale);
    let neg_inf = _mm256_set1_ps(f32::NEG_INFINITY);
    let range = blocks.clone();
    // NOTE: a chunk's weighted V rows run after the next chunk's scores and softmax, so the
    // latency of a softmax (a chain of shuffles, compares and the exp polynomial) overlaps
    // the previous chunk's FMAs instead of stalling the pipeline between the two phases.
    let mut pending: Option<Pending<T>> = None;
    let mut buf = 0;
    for j in blocks {
        let block = seq.block_ids[j] as usize;
        let n_blk = (seq.len - j * bs).min(bs);
        job.prefetch_ahead_tiles(seq, &range, j);
        for h in 0..job.layout.num_kv_heads {
            // All `bs` rows of the K tile: a window of 8 rows past the length is read (in
            // bounds, the tile is the block's) and its extra lanes masked out.
            // SAFETY: `block` comes from the item's `Seq` and `n_blk <= bs`.
            let (kt, vt) = unsafe { (job.tile(&job.k, block, h, bs), job.tile(&job.v, block, h, n_blk)) };
            let (q_h, acc_h) = (qn.add(h * g * d), acc.as_mut_ptr().add(h * g * d));
            let mut r0 = 0;
            while r0 < n_blk {
                let n = (n_blk - r0).min(CHUNK_ROWS);
                // Raw scores of rows r0.. and r0 + 8.., to dots[half][gi][t].
                for half in 0..n.div_ceil(ROWS) {
                    let (rh, out) = (r0 + half * ROWS, dots.add(half * g * ROWS));
                    let krows = kt.as_ptr().add(rh * d);
                    if rh + ROWS <= bs {
                        scores(krows, d, q_h, g, out);
                    } else {
                        scores_rows(krows, (n_blk - rh).min(ROWS), d, q_h, g, out);
                    }
                }
                // Online softmax, one independent step per head. The sum of exp stays per
                // lane; alpha = 1 (the max did not move) is exact, so skipping the rescale
                // then changes nothing.
                let (pbuf, abuf) = (pb.add(buf * pb_len), alpha.add(buf * g));
                let n_i = _mm256_set1_epi32(n as i32);
                let valid0 = _mm256_castsi256_ps(_mm256_cmpgt_epi32(n_i, iota));
                let valid1 = _mm256_castsi256_ps(_mm256_cmpgt_epi32(n_i, _mm256_add_epi32(iota, eight)));
                let mut rescale = false;
                for gi in 0..g {
                    let hq = h * g + gi;
                    let mut s0 = _mm256_mul_ps(_mm256_loadu_ps(dots.add(gi * ROWS)), scale);
                    let mut s1 = neg_inf;
                    if n > ROWS {
                        s1 = _mm256_mul_ps(_mm256_loadu_ps(dots.add((g + gi) * ROWS)), scale);
                        s1 = _mm256_blendv_ps(neg_inf, s1, valid1);
                    } else if n < ROWS {
                        s0 = _mm256_blendv_ps(neg_inf, s0, valid0);
                    }
                    let m_old = m[hq];
                    let m_chunk = hmax8(_mm256_max_ps(s0, s1));
                    let m_new = if m_chunk > m_old + MAX_SLACK { m_chunk } else { m_old };
                    // Masked lanes are -inf: exp gives 0.
                    let mv = _mm256_set1_ps(m_new);
                    let p0 = exp8(_mm256_sub_ps(s0, mv));
                    let p1 = if n > ROWS { exp8(_mm256_sub_ps(s1, mv)) } else { _mm256_setzero_ps() };
                    _mm256_storeu_ps(pbuf.add(gi * CHUNK_ROWS), p0);
                    _mm256_storeu_ps(pbuf.add(gi * CHUNK_ROWS + ROWS), p1);
                    let ps = _mm256_add_ps(p0, p1);
                    let lp = l_lanes.add(hq * ROWS);
                    let a = if m_old == m_new {
                        _mm256_storeu_ps(lp, _mm256_add_ps(_mm256_loadu_ps(lp), ps));
                        1.0
                    } else {
                        // exp(-inf) = 0 on the first chunk.
                        let a = exp_scalar(m_old - m_new);
                        _mm256_storeu_ps(lp, _mm256_fmadd_ps(_mm256_loadu_ps(lp), _mm256_set1_ps(a), ps));
                        rescale = true;
                        a
                    };
                    m[hq] = m_new;
                    *abuf.add(gi) = a;
                }
                if let Some(mut w) = pending.take() {
                    let (pw, aw) = (pb.add(w.buf * pb_len), alpha.add(w.buf * g));
                    accumulate(w.v, w.n, d, pw, aw, g, w.rescale, w.acc, &mut w.pf);
                }
                let pf = job.paced_ahead(seq, &range, j, h, r0, n);
                pending = Some(Pending { v: vt.as_ptr().add(r0 * d), n, acc: acc_h, buf, rescale, pf });
                buf ^= 1;
                r0 += n;
            }
        }
    }
    if let Some(mut w) = pending.take() {
        let (pw, aw) = (pb.add(w.buf * pb_len), alpha.add(w.buf * g));
        accumulate(w.v, w.n, d, pw, aw, g, w.rescale, w.acc, &mut w.pf);
    }
    if T::EVENODD {
        from_evenodd(acc, d);
    }
    for (hq, l) in l.iter_mut().enumerate() {
        *l = hadd8(_mm256_loadu_ps(l_lanes.add(hq * ROWS)));
    }
}
