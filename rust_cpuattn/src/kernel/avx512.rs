//! AVX-512F path; for bf16 keys optionally AVX512_BF16 dot products (`vdpbf16ps`).
//!
//! Per (block, KV head) tile, rows go in chunks of 16: one 16-lane vector of scores per query
//! head (a transpose-and-add tree turns 16 per-row partial dot vectors into it), online
//! softmax on that vector, then the weighted V rows are added to the head's accumulator.
//! 16-bit K/V rows are widened to f32 once per chunk into L1-resident scratch and reused by
//! all G query heads of the group.

use std::arch::x86_64::*;
use std::ops::Range;

use half::{bf16, f16};

use super::{Job, Seq, State, CHUNK_ROWS, MAX_SLACK};
use crate::dtype::{KvDtype, KvElem};

const LANES: usize = 16;

/// KV elements loadable as 16 f32 lanes.
pub(crate) trait Wide16: KvElem {
    /// Loads `p[0..16]` widened to f32.
    ///
    /// # Safety
    /// `p[0..16]` must be readable and the CPU must have AVX-512F.
    unsafe fn load16(p: *const Self) -> __m512;
}

/// 64 consecutive elements of a V row as 4 f32 vectors, in the accumulator order: natural,
/// or for bf16 (even, odd) halves of each 32-element chunk (see `widen_bf16_evenodd`).
///
/// # Safety
/// `p[0..64]` must be readable and the CPU must have AVX-512F.
#[inline(always)]
unsafe fn load64<T: Wide16>(p: *const T) -> [__m512; 4] {
    if T::DTYPE == KvDtype::Bf16 {
        let hi = _mm512_set1_epi32(0xFFFF_0000u32 as i32);
        let x0 = _mm512_loadu_si512(p.cast());
        let x1 = _mm512_loadu_si512(p.add(32).cast());
        [
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(x0)),
            _mm512_castsi512_ps(_mm512_and_si512(x0, hi)),
            _mm512_castsi512_ps(_mm512_slli_epi32::<16>(x1)),
            _mm512_castsi512_ps(_mm512_and_si512(x1, hi)),
        ]
    } else {
        [T::load16(p), T::load16(p.add(16)), T::load16(p.add(32)), T::load16(p.add(48))]
    }
}

impl Wide16 for f32 {
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> __m512 {
        _mm512_loadu_ps(p)
    }
}

impl Wide16 for f16 {
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> __m512 {
        _mm512_cvtph_ps(_mm256_loadu_si256(p.cast()))
    }
}

impl Wide16 for bf16 {
    #[inline(always)]
    unsafe fn load16(p: *const Self) -> __m512 {
        // bf16 is the upper half of an f32: zero-extend and shift.
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(p.cast()))))
    }
}

/// Runs blocks `blocks` of one request.
///
/// # Safety
/// The CPU must have AVX-512F and `head_dim % 16 == 0`; `job`/`seq` validated (block ids
/// `< num_blocks`), `st` reset for this request.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn attend<T: Wide16>(job: &Job<'_, T>, seq: &Seq<'_>, blocks: Range<usize>, st: &mut State) {
    match job.layout.head_dim {
        64 => body::<T, 64, false>(job, seq, blocks, st),
        128 => body::<T, 128, false>(job, seq, blocks, st),
        _ => body::<T, 0, false>(job, seq, blocks, st),
    }
}

/// As [`attend`], with bf16 dot products for the scores when q is bf16-exact (products of
/// bf16 values are exact in f32, so this is as accurate as the f32 path).
///
/// # Safety
/// As [`attend`], plus AVX512_BF16, `T` = bf16, `head_dim % 32 == 0`, `st.q_bf16` filled when
/// `!st.q_has_lo`.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(crate) unsafe fn attend_bf16dot<T: Wide16>(job: &Job<'_, T>, seq: &Seq<'_>, blocks: Range<usize>, st: &mut State) {
    debug_assert!(T::DTYPE == KvDtype::Bf16 && job.layout.head_dim % 32 == 0);
    match job.layout.head_dim {
        64 => body::<T, 64, true>(job, seq, blocks, st),
        128 => body::<T, 128, true>(job, seq, blocks, st),
        _ => body::<T, 0, true>(job, seq, blocks, st),
    }
}

/// `D` = head_dim for the fast paths, 0 = read it at run time.
///
/// Per chunk of up to 16 rows, in phases whose iterations over the G heads are independent
/// (so the out-of-order core overlaps them): dot products, one score vector per head, the
/// online-softmax update, then the weighted V rows.
#[inline(always)]
unsafe fn body<T: Wide16, const D: usize, const DOT: bool>(
    job: &Job<'_, T>,
    seq: &Seq<'_>,
    blocks: Range<usize>,
    st: &mut State,
) {
    let d = if D == 0 { job.layout.head_dim } else { D };
    let bs = job.layout.block_size;
    let g = job.group;
    let is_f32 = T::DTYPE == KvDtype::F32;
    let State { q, q_evenodd, q_bf16, q_has_lo, m, l, l_lanes, acc, kf, vf, dots, p, alpha, .. } = st;
    let use_dot = DOT && !*q_has_lo;
    // Full chunks of a head_dim multiple of 64 without bf16 dot products: K rows widened in
    // registers once for all heads of a group, q in the same element order.
    let wide = D != 0 && D % 64 == 0 && !use_dot;
    let q_wide: *const f32 = if wide && T::DTYPE == KvDtype::Bf16 {
        q_evenodd.resize(q.len(), 0.0);
        permute_evenodd(q, q_evenodd);
        q_evenodd.as_ptr()
    } else {
        q.as_ptr()
    };
    let scale = _mm512_set1_ps(job.scale);
    debug_assert!(kf.len() >= CHUNK_ROWS * d && vf.len() >= CHUNK_ROWS * d);
    debug_assert!(dots.len() >= g * LANES * LANES && p.len() >= g * LANES && alpha.len() >= g);
    debug_assert!(q.len() == job.num_q_heads * d && acc.len() == job.num_q_heads * d);
    assert!(l_lanes.len() == job.num_q_heads * LANES);
    let dots = dots.as_mut_ptr();
    let p = p.as_mut_ptr();
    let l_lanes = l_lanes.as_mut_ptr();
    // bf16 V rows widen fastest as (even, odd) element halves of each 32-element chunk; the
    // accumulators then hold that order and are put back in order at the end.
    let evenodd = T::DTYPE == KvDtype::Bf16 && d % 32 == 0;
    let range = blocks.clone();
    for j in blocks {
        let block = seq.block_ids[j] as usize;
        let n_blk = (seq.len - j * bs).min(bs);
        // The item's first block by its pages; the block ahead tile by tile, as this one goes
        // (see `Job::prefetch_tile_start`).
        if j == range.start {
            job.prefetch_item_start(seq, &range);
        }
        let ahead = job.block_ahead(seq, &range, j);
        for h in 0..job.layout.num_kv_heads {
            if let Some(a) = ahead {
                job.prefetch_tile_start(&job.k, a, h);
            }
            // All `bs` rows of the K tile: rows past the length are read (in bounds, the tile
            // is the block's) by the full-width score paths and masked out.
            // SAFETY: `block` comes from the item's `Seq` and `n_blk <= bs`.
            let (kt, vt) = unsafe { (job.tile(&job.k, block, h, bs), job.tile(&job.v, block, h, n_blk)) };
            let q_h = q.as_ptr().add(h * g * d);
            let mut r0 = 0;
            while r0 < n_blk {
                let n = (n_blk - r0).min(LANES);
                let krows = &kt[r0 * d..(r0 + n) * d];
                let vrows = &vt[r0 * d..(r0 + n) * d];
                // A fast head_dim with 16 rows left in the tile: the full-width score paths
                // read all 16 (`krows16`), and lanes past `n` are masked in the softmax.
                let full = D != 0 && bs - r0 >= LANES;
                let krows16 = if full { &kt[r0 * d..(r0 + LANES) * d] } else { krows };
                // K rows as f32 for the f32 path: in place for f32 pools, else widened (not
                // read at all on the bf16 dot-product path).
                let kptr: *const f32 = if full && (use_dot || is_f32 || wide) {
                    krows16.as_ptr().cast()
                } else if use_dot || is_f32 {
                    krows.as_ptr().cast()
                } else {
                    widen(krows, kf);
                    kf.as_ptr()
                };
                if !full {
                    // Tail chunk or generic head_dim: per-row partial dot vectors in memory.
                    if use_dot {
                        let qb = q_bf16.as_ptr().add(h * g * d);
                        row_dots_bf16(krows.as_ptr().cast(), n, d, qb, g, dots);
                    } else {
                        row_dots_f32(kptr, n, d, q_h, g, dots);
                    }
                }
                // Scores and online softmax, one independent step per head. The sum of exp
                // stays per lane (`l_lanes`); alpha = 1 (the max did not move) is exact, so
                // skipping the rescale then changes nothing.
                let valid: __mmask16 = if n == LANES { 0xFFFF } else { (1u16 << n) - 1 };
                let mut rescale = false;
                if wide && full {
                    // Raw scores of every head, to `dots[gi]`.
                    let (k, qw) = (krows16.as_ptr(), q_wide.add(h * g * D));
                    let mut g0 = 0;
                    while g0 < g {
                        let (qg, out) = (qw.add(g0 * D), dots.add(g0 * LANES));
                        match g - g0 {
                            1 => scores_wide::<T, D, 1>(k, qg, out),
                            2 => scores_wide::<T, D, 2>(k, qg, out),
                            3 => scores_wide::<T, D, 3>(k, qg, out),
                            _ => scores_wide::<T, D, 4>(k, qg, out),
                        }
                        g0 += 4;
                    }
                }
                for gi in 0..g {
                    let raw = if wide && full {
                        _mm512_loadu_ps(dots.add(gi * LANES))
                    } else if !full {
                        let dg = dots.add(gi * LANES * LANES);
                        for t in n..LANES {
                            _mm512_storeu_ps(dg.add(t * LANES), _mm512_setzero_ps());
                        }
                        hsum16(dg)
                    } else if use_dot {
                        scores_bf16::<D>(krows16.as_ptr().cast(), q_bf16.as_ptr().add((h * g + gi) * D))
                    } else {
                        scores_f32::<D>(kptr, q_h.add(gi * D))
                    };
                    let mut s = _mm512_mul_ps(raw, scale);
                    if n != LANES {
                        s = _mm512_mask_blend_ps(valid, _mm512_set1_ps(f32::NEG_INFINITY), s);
                    }
                    let hq = h * g + gi;
                    let m_old = m[hq];
                    let m_chunk = _mm512_reduce_max_ps(s);
                    let m_new = if m_chunk > m_old + MAX_SLACK { m_chunk } else { m_old };
                    let mut pv = exp16(_mm512_sub_ps(s, _mm512_set1_ps(m_new)));
                    if n != LANES {
                        pv = _mm512_maskz_mov_ps(valid, pv);
                    }
                    _mm512_storeu_ps(p.add(gi * LANES), pv);
                    let lp = l_lanes.add(hq * LANES);
                    // exp(-inf) = 0 on the first chunk; the scalar is off the vector chains.
                    let a = if m_old == m_new {
                        _mm512_storeu_ps(lp, _mm512_add_ps(_mm512_loadu_ps(lp), pv));
                        1.0
                    } else {
                        let a = exp_scalar(m_old - m_new);
                        _mm512_storeu_ps(lp, _mm512_fmadd_ps(_mm512_loadu_ps(lp), _mm512_set1_ps(a), pv));
                        rescale = true;
                        a
                    };
                    m[hq] = m_new;
                    alpha[gi] = a;
                }
                if let (Some(a), 0) = (ahead, r0) {
                    job.prefetch_tile_start(&job.v, a, h);
                }
                // acc = acc * alpha + sum_t p[t] * V[t], for each head of the group.
                let acc_h = acc.as_mut_ptr().add(h * g * d);
                if D != 0 && D % 64 == 0 {
                    let v = vrows.as_ptr();
                    let mut g0 = 0;
                    while g0 < g {
                        let (pg, ag, accg) = (p.add(g0 * LANES), alpha.as_ptr().add(g0), acc_h.add(g0 * D));
                        match (g - g0, rescale) {
                            (1, false) => accumulate_rows::<T, D, 1, false>(v, n, pg, ag, accg),
                            (2, false) => accumulate_rows::<T, D, 2, false>(v, n, pg, ag, accg),
                            (3, false) => accumulate_rows::<T, D, 3, false>(v, n, pg, ag, accg),
                            (_, false) => accumulate_rows::<T, D, 4, false>(v, n, pg, ag, accg),
                            (1, true) => accumulate_rows::<T, D, 1, true>(v, n, pg, ag, accg),
                            (2, true) => accumulate_rows::<T, D, 2, true>(v, n, pg, ag, accg),
                            (3, true) => accumulate_rows::<T, D, 3, true>(v, n, pg, ag, accg),
                            (_, true) => accumulate_rows::<T, D, 4, true>(v, n, pg, ag, accg),
                        }
                        g0 += 4;
                    }
                } else {
                    let vptr: *const f32 = if is_f32 {
                        vrows.as_ptr().cast()
                    } else if evenodd {
                        widen_bf16_evenodd(vrows.as_ptr().cast(), vrows.len(), vf);
                        vf.as_ptr()
                    } else {
                        widen(vrows, vf);
                        vf.as_ptr()
                    };
                    accumulate(vptr, n, d, p, alpha.as_ptr(), g, acc_h);
                }
                r0 += n;
            }
        }
    }
    if evenodd {
        unpermute_evenodd(acc);
    }
    for (hq, l) in l.iter_mut().enumerate() {
        *l = _mm512_reduce_add_ps(_mm512_loadu_ps(l_lanes.add(hq * LANES)));
    }
}

/// Widens bf16 rows (`len` a multiple of 32) into `dst` as, per 32-element chunk, the 16
/// even elements then the 16 odd ones.
#[inline(always)]
unsafe fn widen_bf16_evenodd(rows: *const u16, len: usize, dst: &mut [f32]) {
    assert!(dst.len() >= len && len % 32 == 0);
    let out = dst.as_mut_ptr();
    let hi = _mm512_set1_epi32(0xFFFF_0000u32 as i32);
    for i in (0..len).step_by(32) {
        let x = _mm512_loadu_si512(rows.add(i).cast());
        _mm512_storeu_ps(out.add(i), _mm512_castsi512_ps(_mm512_slli_epi32::<16>(x)));
        _mm512_storeu_ps(out.add(i + 16), _mm512_castsi512_ps(_mm512_and_si512(x, hi)));
    }
}

/// Copies `src` (a multiple of 32 elements) to `dst` in the (even, odd) chunk order of
/// `widen_bf16_evenodd`: per 32-element chunk, the 16 even elements then the 16 odd ones.
#[inline(always)]
unsafe fn permute_evenodd(src: &[f32], dst: &mut [f32]) {
    assert!(src.len() % 32 == 0 && dst.len() == src.len());
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let (s, o) = (src.as_ptr(), dst.as_mut_ptr());
    for i in (0..src.len()).step_by(32) {
        let (lo, hi) = (_mm512_loadu_ps(s.add(i)), _mm512_loadu_ps(s.add(i + 16)));
        _mm512_storeu_ps(o.add(i), _mm512_permutex2var_ps(lo, even, hi));
        _mm512_storeu_ps(o.add(i + 16), _mm512_permutex2var_ps(lo, odd, hi));
    }
}

/// Inverse of the (even, odd) chunk order of `widen_bf16_evenodd`, in place.
#[inline(always)]
unsafe fn unpermute_evenodd(acc: &mut [f32]) {
    assert!(acc.len() % 32 == 0);
    let lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    let a = acc.as_mut_ptr();
    for i in (0..acc.len()).step_by(32) {
        let (even, odd) = (_mm512_loadu_ps(a.add(i)), _mm512_loadu_ps(a.add(i + 16)));
        _mm512_storeu_ps(a.add(i), _mm512_permutex2var_ps(even, lo, odd));
        _mm512_storeu_ps(a.add(i + 16), _mm512_permutex2var_ps(even, hi, odd));
    }
}

/// Expands `$e` for `$t` = 0..16 into an array, without closures (which would not inherit
/// the caller's target features) and with constant indices (so it stays in registers).
macro_rules! each16 {
    ($t:ident => $e:expr) => {
        [
            {
                let $t = 0;
                $e
            },
            {
                let $t = 1;
                $e
            },
            {
                let $t = 2;
                $e
            },
            {
                let $t = 3;
                $e
            },
            {
                let $t = 4;
                $e
            },
            {
                let $t = 5;
                $e
            },
            {
                let $t = 6;
                $e
            },
            {
                let $t = 7;
                $e
            },
            {
                let $t = 8;
                $e
            },
            {
                let $t = 9;
                $e
            },
            {
                let $t = 10;
                $e
            },
            {
                let $t = 11;
                $e
            },
            {
                let $t = 12;
                $e
            },
            {
                let $t = 13;
                $e
            },
            {
                let $t = 14;
                $e
            },
            {
                let $t = 15;
                $e
            },
        ]
    };
}

/// Raw scores (before scale) of 16 bf16 rows against one bf16 query, lane t = row t, all in
/// registers.
#[inline(always)]
unsafe fn scores_bf16<const D: usize>(rows: *const u16, qb: *const u16) -> __m512 {
    let nc = D / 32;
    let q0 = _mm512_loadu_si512(qb.cast());
    let q1 = _mm512_loadu_si512(qb.add(32).cast());
    let q2 = if nc > 2 { _mm512_loadu_si512(qb.add(64).cast()) } else { q0 };
    let q3 = if nc > 2 { _mm512_loadu_si512(qb.add(96).cast()) } else { q0 };
    let a = each16!(t => {
        let row = rows.add(t * D);
        let mut a = _mm512_dpbf16_ps(_mm512_setzero_ps(), as_bh(q0), as_bh(_mm512_loadu_si512(row.cast())));
        a = _mm512_dpbf16_ps(a, as_bh(q1), as_bh(_mm512_loadu_si512(row.add(32).cast())));
        if nc > 2 {
            a = _mm512_dpbf16_ps(a, as_bh(q2), as_bh(_mm512_loadu_si512(row.add(64).cast())));
            a = _mm512_dpbf16_ps(a, as_bh(q3), as_bh(_mm512_loadu_si512(row.add(96).cast())));
        }
        a
    });
    hsum16_regs(&a)
}

/// Raw scores (before scale) of 16 full rows against the queries of `NG` heads (`q` then
/// `q + D`, ..., in the element order of [`load64`]), lane t = row t, to `out[gi * 16..]`.
/// Each K row is widened once in registers and used by all `NG` heads; per-row partial
/// sums are reduced four rows at a time (two levels of the transpose-and-add tree), then
/// across the quads.
#[inline(always)]
unsafe fn scores_wide<T: Wide16, const D: usize, const NG: usize>(rows: *const T, q: *const f32, out: *mut f32) {
    let zero = _mm512_setzero_ps();
    let mut halves = [[zero; 2]; NG];
    for oct in 0..2 {
        let mut quads = [[zero; 2]; NG];
        for qd in 0..2 {
            let mut a = [[zero; 4]; NG];
            for i in 0..4 {
                let row = rows.add((oct * 8 + qd * 4 + i) * D);
                for s in 0..D / 64 {
                    let k = load64(row.add(s * 64));
                    for (gi, a) in a.iter_mut().enumerate() {
                        let qp = q.add(gi * D + s * 64);
                        for (c, &k) in k.iter().enumerate() {
                            a[i] = _mm512_fmadd_ps(k, _mm512_loadu_ps(qp.add(c * LANES)), a[i]);
                        }
                    }
                }
            }
            for (gi, a) in a.iter().enumerate() {
                let w0 = fold256(a[0], a[1]);
                let w1 = fold256(a[2], a[3]);
                quads[gi][qd] = fold128(w0, w1);
            }
        }
        for gi in 0..NG {
            halves[gi][oct] = fold64(quads[gi][0], quads[gi][1]);
        }
    }
    // Lane 4i + j now holds row 4j + i: transpose back.
    let idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    for (gi, h) in halves.iter().enumerate() {
        _mm512_storeu_ps(out.add(gi * LANES), _mm512_permutexvar_ps(idx, fold32(h[0], h[1])));
    }
}

/// `[x.lo256 + x.hi256, y.lo256 + y.hi256]`: 16 lanes per input to 8.
#[inline(always)]
unsafe fn fold256(x: __m512, y: __m512) -> __m512 {
    _mm512_add_ps(_mm512_shuffle_f32x4::<0x44>(x, y), _mm512_shuffle_f32x4::<0xEE>(x, y))
}

/// Two vectors of two 8-lane groups (inputs a, b | c, d) to one of four 4-lane groups.
#[inline(always)]
unsafe fn fold128(x: __m512, y: __m512) -> __m512 {
    _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(x, y), _mm512_shuffle_f32x4::<0xDD>(x, y))
}

/// Two vectors of four 4-lane groups to 2-lane groups, interleaved per 128-bit lane.
#[inline(always)]
unsafe fn fold64(x: __m512, y: __m512) -> __m512 {
    _mm512_add_ps(_mm512_shuffle_ps::<0x44>(x, y), _mm512_shuffle_ps::<0xEE>(x, y))
}

/// Two vectors of 2-lane groups to single lanes.
#[inline(always)]
unsafe fn fold32(x: __m512, y: __m512) -> __m512 {
    _mm512_add_ps(_mm512_shuffle_ps::<0x88>(x, y), _mm512_shuffle_ps::<0xDD>(x, y))
}

/// Raw scores of 16 f32 rows against one query, lane t = row t, in registers.
#[inline(always)]
unsafe fn scores_f32<const D: usize>(rows: *const f32, q: *const f32) -> __m512 {
    let nc = D / LANES;
    let a = each16!(t => {
        let row = rows.add(t * D);
        let mut a0 = _mm512_mul_ps(_mm512_loadu_ps(q), _mm512_loadu_ps(row));
        let mut a1 = _mm512_mul_ps(_mm512_loadu_ps(q.add(LANES)), _mm512_loadu_ps(row.add(LANES)));
        let mut c = 2;
        while c < nc {
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q.add(c * LANES)), _mm512_loadu_ps(row.add(c * LANES)), a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q.add((c + 1) * LANES)), _mm512_loadu_ps(row.add((c + 1) * LANES)), a1);
            c += 2;
        }
        _mm512_add_ps(a0, a1)
    });
    hsum16_regs(&a)
}

/// Lane t of the result is the sum of `v[t]` (the tree of `hsum16`, on registers).
#[inline(always)]
unsafe fn hsum16_regs(v: &[__m512; 16]) -> __m512 {
    const PERM: [usize; 16] = [0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15];
    // No closures here: they would not inherit the caller's target features.
    let mut w = [_mm512_setzero_ps(); 8];
    for i in 0..8 {
        let (x, y) = (v[PERM[i]], v[PERM[i + 8]]);
        w[i] = _mm512_add_ps(_mm512_shuffle_f32x4::<0x44>(x, y), _mm512_shuffle_f32x4::<0xEE>(x, y));
    }
    let mut x = [_mm512_setzero_ps(); 4];
    for i in 0..4 {
        x[i] =
            _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(w[i], w[i + 4]), _mm512_shuffle_f32x4::<0xDD>(w[i], w[i + 4]));
    }
    let mut y = [_mm512_setzero_ps(); 2];
    for i in 0..2 {
        y[i] = _mm512_add_ps(_mm512_shuffle_ps::<0x44>(x[i], x[i + 2]), _mm512_shuffle_ps::<0xEE>(x[i], x[i + 2]));
    }
    _mm512_add_ps(_mm512_shuffle_ps::<0x88>(y[0], y[1]), _mm512_shuffle_ps::<0xDD>(y[0], y[1]))
}

/// `dots[gi][t] = q[gi] (bf16) * K[t]` lane-wise partial sums (bf16 pairs), t < n (tail
/// chunks and generic head_dim; full chunks of the fast paths use `scores_bf16`).
#[inline(always)]
unsafe fn row_dots_bf16(rows: *const u16, n: usize, d: usize, qb: *const u16, g: usize, dots: *mut f32) {
    for gi in 0..g {
        let qg = qb.add(gi * d);
        for t in 0..n {
            let row = rows.add(t * d);
            let mut a = _mm512_setzero_ps();
            for c in 0..d / 32 {
                let k = as_bh(_mm512_loadu_si512(row.add(32 * c).cast()));
                a = _mm512_dpbf16_ps(a, as_bh(_mm512_loadu_si512(qg.add(32 * c).cast())), k);
            }
            _mm512_storeu_ps(dots.add((gi * LANES + t) * LANES), a);
        }
    }
}

/// `dots[gi][t] = q[gi] * K[t]` lane-wise partial sums (f32 rows), t < n (tail chunks and
/// generic head_dim).
#[inline(always)]
unsafe fn row_dots_f32(rows: *const f32, n: usize, d: usize, q: *const f32, g: usize, dots: *mut f32) {
    for gi in 0..g {
        let qg = q.add(gi * d);
        for t in 0..n {
            let row = rows.add(t * d);
            let mut a = _mm512_setzero_ps();
            for c in 0..d / LANES {
                a = _mm512_fmadd_ps(_mm512_loadu_ps(qg.add(c * LANES)), _mm512_loadu_ps(row.add(c * LANES)), a);
            }
            _mm512_storeu_ps(dots.add((gi * LANES + t) * LANES), a);
        }
    }
}

/// For each head gi of the group: `acc[gi] = acc[gi] * alpha[gi] + sum_{t<n} p[gi][t] * V[t]`
/// with V rows already f32 (generic head_dim path).
#[inline(always)]
unsafe fn accumulate(v: *const f32, n: usize, d: usize, p: *const f32, alpha: *const f32, g: usize, acc: *mut f32) {
    for gi in 0..g {
        let a_ptr = acc.add(gi * d);
        let pg = p.add(gi * LANES);
        let av = _mm512_set1_ps(*alpha.add(gi));
        for c in 0..d / LANES {
            let mut r = _mm512_mul_ps(_mm512_loadu_ps(a_ptr.add(c * LANES)), av);
            for t in 0..n {
                r = _mm512_fmadd_ps(_mm512_set1_ps(*pg.add(t)), _mm512_loadu_ps(v.add(t * d + c * LANES)), r);
            }
            _mm512_storeu_ps(a_ptr.add(c * LANES), r);
        }
    }
}

/// For heads `0..NG` (NG <= 4) of a group: `acc[gi] = acc[gi] * alpha[gi] +
/// sum_{t<n} p[gi][t] * V[t]`, with V rows widened once in registers and shared by the heads;
/// `D / 64` slices of 64 columns keep `4 * NG` accumulators in registers.
#[inline(always)]
unsafe fn accumulate_rows<T: Wide16, const D: usize, const NG: usize, const RESCALE: bool>(
    v: *const T,
    n: usize,
    p: *const f32,
    alpha: *const f32,
    acc: *mut f32,
) {
    for s in 0..D / 64 {
        let mut a = [[_mm512_setzero_ps(); 4]; NG];
        for (gi, a) in a.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*alpha.add(gi));
            for (c, a) in a.iter_mut().enumerate() {
                *a = _mm512_loadu_ps(acc.add(gi * D + s * 64 + c * LANES));
                if RESCALE {
                    *a = _mm512_mul_ps(*a, av);
                }
            }
        }
        for t in 0..n {
            let r = load64(v.add(t * D + s * 64));
            for (gi, a) in a.iter_mut().enumerate() {
                let w = _mm512_set1_ps(*p.add(gi * LANES + t));
                for (c, a) in a.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(w, r[c], *a);
                }
            }
        }
        for (gi, a) in a.iter().enumerate() {
            for (c, a) in a.iter().enumerate() {
                _mm512_storeu_ps(acc.add(gi * D + s * 64 + c * LANES), *a);
            }
        }
    }
}

/// exp of one f32 through the vector routine (same rounding as the lanes).
#[inline(always)]
unsafe fn exp_scalar(x: f32) -> f32 {
    _mm512_cvtss_f32(exp16(_mm512_set1_ps(x)))
}

#[inline(always)]
unsafe fn as_bh(x: __m512i) -> __m512bh {
    // SAFETY: both are plain 512-bit vectors; the bits are bf16 pairs already.
    std::mem::transmute::<__m512i, __m512bh>(x)
}

/// Widens `rows` (a multiple of 16 elements) into the front of `dst`.
#[inline(always)]
unsafe fn widen<T: Wide16>(rows: &[T], dst: &mut [f32]) {
    assert!(dst.len() >= rows.len() && rows.len() % LANES == 0);
    let (src, out) = (rows.as_ptr(), dst.as_mut_ptr());
    for i in (0..rows.len()).step_by(LANES) {
        _mm512_storeu_ps(out.add(i), T::load16(src.add(i)));
    }
}

/// `v` points at 16 vectors of 16 floats; lane t of the result is the sum of vector t.
#[inline(always)]
pub(crate) unsafe fn hsum16(v: *const f32) -> __m512 {
    // The tree below leaves the sum of input slot PERM[t] in lane t (PERM is an involution),
    // so slot s is fed vector PERM[s].
    const PERM: [usize; 16] = [0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15];
    let mut w = [_mm512_setzero_ps(); 8];
    for (i, w) in w.iter_mut().enumerate() {
        let (x, y) = (_mm512_loadu_ps(v.add(LANES * PERM[i])), _mm512_loadu_ps(v.add(LANES * PERM[i + 8])));
        *w = _mm512_add_ps(_mm512_shuffle_f32x4::<0x44>(x, y), _mm512_shuffle_f32x4::<0xEE>(x, y));
    }
    let mut x = [_mm512_setzero_ps(); 4];
    for (i, x) in x.iter_mut().enumerate() {
        *x = _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(w[i], w[i + 4]), _mm512_shuffle_f32x4::<0xDD>(w[i], w[i + 4]));
    }
    let mut y = [_mm512_setzero_ps(); 2];
    for (i, y) in y.iter_mut().enumerate() {
        *y = _mm512_add_ps(_mm512_shuffle_ps::<0x44>(x[i], x[i + 2]), _mm512_shuffle_ps::<0xEE>(x[i], x[i + 2]));
    }
    _mm512_add_ps(_mm512_shuffle_ps::<0x88>(y[0], y[1]), _mm512_shuffle_ps::<0xDD>(y[0], y[1]))
}

/// exp for 16 lanes: 2^n * P(r), |r| <= ln2/2, degree-6 polynomial (about 1 ulp);
/// inputs below `EXP_MIN` (including -inf) give 0.
///
/// NOTE: results are never subnormal: producing one (vscalefps by 2^-127 or less) costs a
/// microcode assist of hundreds of cycles on Intel cores, and every masked lane of a tail
/// chunk and the first rescale of each head (exp(-inf)) would take one.
#[inline(always)]
pub(crate) unsafe fn exp16(x: __m512) -> __m512 {
    let keep = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, _mm512_set1_ps(EXP_MIN));
    let x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(EXP_MIN)), _mm512_set1_ps(88.5));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
        x,
        _mm512_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut poly = _mm512_set1_ps(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(c));
    }
    _mm512_maskz_scalef_ps(keep, poly, n)
}

/// Inputs of [`exp16`] below this give 0 (e^-87 is about 1.6e-38, still a normal f32).
const EXP_MIN: f32 = -87.0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsum16_and_exp16() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        let v: Vec<f32> = (0..256).map(|i| ((i * 37) % 101) as f32 - 50.0).collect();
        let mut got = [0.0f32; 16];
        let xs: Vec<f32> = (0..16).map(|i| -80.0 + i as f32 * 10.5).collect();
        let mut e = [0.0f32; 16];
        // SAFETY: AVX-512F checked above; buffers hold 256 / 16 floats.
        unsafe {
            check(&v, &mut got, &xs, &mut e);
        }
        for t in 0..16 {
            let want: f32 = v[t * 16..(t + 1) * 16].iter().sum();
            assert_eq!(got[t], want, "lane {t}");
            let want = (xs[t] as f64).exp();
            assert!(((e[t] as f64 - want) / want).abs() < 3e-7, "exp({}) = {} vs {want}", xs[t], e[t]);
        }

        #[target_feature(enable = "avx512f")]
        unsafe fn check(v: &[f32], got: &mut [f32; 16], xs: &[f32], e: &mut [f32; 16]) {
            _mm512_storeu_ps(got.as_mut_ptr(), hsum16(v.as_ptr()));
            _mm512_storeu_ps(e.as_mut_ptr(), exp16(_mm512_loadu_ps(xs.as_ptr())));
            let zero = exp16(_mm512_set1_ps(f32::NEG_INFINITY));
            assert_eq!(_mm512_reduce_add_ps(zero), 0.0);
        }
    }
}
