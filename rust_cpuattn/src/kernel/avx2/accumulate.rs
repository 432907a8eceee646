//! The weighted V rows: `acc[gi] = acc[gi] * alpha[gi] + sum_{t<n} p[gi][t] * V[t]` for the
//! heads of a group, as rank-1 updates of accumulators held in registers.
//!
//! Columns go in slices of `16 * U` elements; per slice the accumulators of up to 4 heads
//! stay in registers over all rows (8 to 12 vectors, as many independent FMA chains: the FMA
//! latency times its throughput is 8 on the reference Zen 3), each V row slice is widened once
//! and used by every head, and each head's weight is broadcast from memory once per row.

use std::arch::x86_64::*;

use super::super::prefetch::Paced;
use super::super::CHUNK_ROWS;
use super::elem::Wide8;

/// `v`: rows `[n, d]` (native order); `p`: `[g, 16]` weights (each broadcast from memory as
/// its row starts: a load, where a shuffle would compete with the FMAs);
/// `alpha`: `[g]` rescale factors (read only when `rescale`); `acc`: `[g, d]` (native order).
/// All lines of `pf` are prefetched, a few at a time over the rows of the column slices
/// (one step per slice issued bursts of up to 32 lines, and K/V in DRAM came slower).
///
/// # Safety
/// AVX2 + FMA + F16C; `d % 8 == 0`, `n <= 16`; the pointers cover those ranges.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn accumulate<T: Wide8>(
    v: *const T,
    n: usize,
    d: usize,
    p: *const f32,
    alpha: *const f32,
    g: usize,
    rescale: bool,
    acc: *mut f32,
    pf: &mut Paced,
) {
    let slices = |u: usize| d / (16 * u) + d % (16 * u) / 16 + usize::from(d % 16 != 0);
    let steps: usize = (0..g).step_by(4).map(|g0| slices(unroll(g - g0)) * n).sum();
    pf.spread_over(steps);
    let mut g0 = 0;
    while g0 < g {
        let (p, alpha, acc) = (p.add(g0 * CHUNK_ROWS), alpha.add(g0), acc.add(g0 * d));
        match (g - g0, rescale) {
            (1, false) => heads::<T, 1, 4, false>(v, n, d, p, alpha, acc, pf),
            (2, false) => heads::<T, 2, 2, false>(v, n, d, p, alpha, acc, pf),
            (3, false) => heads::<T, 3, 2, false>(v, n, d, p, alpha, acc, pf),
            (_, false) => heads::<T, 4, 1, false>(v, n, d, p, alpha, acc, pf),
            (1, true) => heads::<T, 1, 4, true>(v, n, d, p, alpha, acc, pf),
            (2, true) => heads::<T, 2, 2, true>(v, n, d, p, alpha, acc, pf),
            (3, true) => heads::<T, 3, 2, true>(v, n, d, p, alpha, acc, pf),
            (_, true) => heads::<T, 4, 1, true>(v, n, d, p, alpha, acc, pf),
        }
        g0 += 4;
    }
}

/// 16-element chunks per column slice for `ng` heads (the `U` of [`heads`]).
fn unroll(ng: usize) -> usize {
    match ng {
        1 => 4,
        2 | 3 => 2,
        _ => 1,
    }
}

/// `NG` heads, slices of `U` 16-element chunks, then single chunks, then an 8-element tail.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn heads<T: Wide8, const NG: usize, const U: usize, const RESCALE: bool>(
    v: *const T,
    n: usize,
    d: usize,
    p: *const f32,
    alpha: *const f32,
    acc: *mut f32,
    pf: &mut Paced,
) {
    let mut c = 0;
    while c + 16 * U <= d {
        slice::<T, NG, U, RESCALE>(v, n, d, c, p, alpha, acc, pf);
        c += 16 * U;
    }
    while c + 16 <= d {
        slice::<T, NG, 1, RESCALE>(v, n, d, c, p, alpha, acc, pf);
        c += 16;
    }
    if c < d {
        for t in 0..n {
            if t & pf.mask == 0 {
                pf.next();
            }
        }
        for gi in 0..NG {
            let ap = acc.add(gi * d + c);
            let mut a = _mm256_loadu_ps(ap);
            if RESCALE {
                a = _mm256_mul_ps(a, _mm256_set1_ps(*alpha.add(gi)));
            }
            for t in 0..n {
                a = _mm256_fmadd_ps(_mm256_broadcast_ss(&*p.add(gi * CHUNK_ROWS + t)), T::load8(v.add(t * d + c)), a);
            }
            _mm256_storeu_ps(ap, a);
        }
    }
}

/// Columns `c..c + 16 * U` of `NG` heads.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn slice<T: Wide8, const NG: usize, const U: usize, const RESCALE: bool>(
    v: *const T,
    n: usize,
    d: usize,
    c: usize,
    p: *const f32,
    alpha: *const f32,
    acc: *mut f32,
    pf: &mut Paced,
) {
    let mut a = [[[_mm256_setzero_ps(); 2]; U]; NG];
    for (gi, a) in a.iter_mut().enumerate() {
        let av = _mm256_set1_ps(*alpha.add(gi));
        for (u, a) in a.iter_mut().enumerate() {
            for (h, a) in a.iter_mut().enumerate() {
                *a = _mm256_loadu_ps(acc.add(gi * d + c + 16 * u + 8 * h));
                if RESCALE {
                    *a = _mm256_mul_ps(*a, av);
                }
            }
        }
    }
    let (mut row, mut w) = (v.add(c), p);
    for t in 0..n {
        if t & pf.mask == 0 {
            pf.next();
        }
        let mut wv = [_mm256_setzero_ps(); NG];
        for (gi, wv) in wv.iter_mut().enumerate() {
            *wv = _mm256_broadcast_ss(&*w.add(gi * CHUNK_ROWS));
        }
        for u in 0..U {
            let x = T::load16(row.add(16 * u));
            for (gi, a) in a.iter_mut().enumerate() {
                let w = wv[gi];
                a[u][0] = _mm256_fmadd_ps(w, x[0], a[u][0]);
                a[u][1] = _mm256_fmadd_ps(w, x[1], a[u][1]);
            }
        }
        row = row.add(d);
        w = w.add(1);
    }
    for (gi, a) in a.iter().enumerate() {
        for (u, a) in a.iter().enumerate() {
            for (h, a) in a.iter().enumerate() {
                _mm256_storeu_ps(acc.add(gi * d + c + 16 * u + 8 * h), *a);
            }
        }
    }
}
