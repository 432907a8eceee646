//! Raw scores (q.k before the scale) of 8 K rows against the query heads of a group.
//!
//! Each K row is widened once in registers and used by up to 4 heads (q read from L1); the
//! per-(head, row) partial vectors live in registers, up to 8 independent FMA chains at a
//! time (enough to cover the FMA latency at two per cycle), and are reduced 8 at a time by
//! one transpose-and-add tree, then put in per-head order (lane t = row t).

use std::arch::x86_64::*;

use super::elem::Wide8;
use super::vmath::hsum8;

/// Rows per score vector.
pub(crate) const ROWS: usize = 8;

/// Raw scores of rows `rows[0..8]` (each `d` elements, native order) against the `g` heads of
/// `q` (`[g, d]`, native order), to `out[gi * 8 + t]`.
///
/// # Safety
/// AVX2 + FMA + F16C; `d % 8 == 0`; `rows[0..8 * d]`, `q[0..g * d]` readable, `out[0..8 * g]`
/// writable.
#[inline(always)]
pub(crate) unsafe fn scores<T: Wide8>(rows: *const T, d: usize, q: *const f32, g: usize, out: *mut f32) {
    let mut g0 = 0;
    while g0 < g {
        let (q, out) = (q.add(g0 * d), out.add(g0 * ROWS));
        match g - g0 {
            1 => {
                let s = pass::<T, 1, 8, true>(rows, d, q);
                _mm256_storeu_ps(out, s);
            }
            2 => {
                let (p0, p1) = (pass::<T, 2, 4, true>(rows, d, q), pass::<T, 2, 4, true>(rows.add(4 * d), d, q));
                // Lane gi * 4 + r of pass p: head gi, row 4p + r.
                _mm256_storeu_ps(out, _mm256_permute2f128_ps::<0x20>(p0, p1));
                _mm256_storeu_ps(out.add(ROWS), _mm256_permute2f128_ps::<0x31>(p0, p1));
            }
            3 => pairs::<T, 3>(rows, d, q, out),
            _ => pairs::<T, 4>(rows, d, q, out),
        }
        g0 += 4;
    }
}

/// Scores of `NG` (3 or 4) heads, rows two at a time.
#[inline(always)]
unsafe fn pairs<T: Wide8, const NG: usize>(rows: *const T, d: usize, q: *const f32, out: *mut f32) {
    let p0 = pass::<T, NG, 2, false>(rows, d, q);
    let p1 = pass::<T, NG, 2, false>(rows.add(2 * d), d, q);
    let p2 = pass::<T, NG, 2, false>(rows.add(4 * d), d, q);
    let p3 = pass::<T, NG, 2, false>(rows.add(6 * d), d, q);
    // Lane 2 gi + r of pass p: head gi, row 2p + r. A 4 x 4 transpose of the (row pair)
    // 64-bit elements: head gi's vector takes pair gi of each pass.
    let (p0, p1, p2, p3) = (_mm256_castps_pd(p0), _mm256_castps_pd(p1), _mm256_castps_pd(p2), _mm256_castps_pd(p3));
    let lo01 = _mm256_unpacklo_pd(p0, p1);
    let hi01 = _mm256_unpackhi_pd(p0, p1);
    let lo23 = _mm256_unpacklo_pd(p2, p3);
    let hi23 = _mm256_unpackhi_pd(p2, p3);
    let s = [
        _mm256_permute2f128_pd::<0x20>(lo01, lo23),
        _mm256_permute2f128_pd::<0x20>(hi01, hi23),
        _mm256_permute2f128_pd::<0x31>(lo01, lo23),
        _mm256_permute2f128_pd::<0x31>(hi01, hi23),
    ];
    for (gi, s) in s.iter().enumerate().take(NG) {
        _mm256_storeu_ps(out.add(gi * ROWS), _mm256_castpd_ps(*s));
    }
}

/// Sums of `R` rows (`NG * R <= 8`) against `NG` heads: lane `gi * R + r` = q[gi] . row r.
/// `QFIRST`: per 16 columns the heads' q chunks are loaded once and each row streams past
/// them (few heads); otherwise the rows' chunks are loaded once and each head's q streams
/// past them.
#[inline(always)]
unsafe fn pass<T: Wide8, const NG: usize, const R: usize, const QFIRST: bool>(
    rows: *const T,
    d: usize,
    q: *const f32,
) -> __m256 {
    let zero = _mm256_setzero_ps();
    let mut a = [[zero; R]; NG];
    let mut c = 0;
    while c + 16 <= d {
        if QFIRST {
            let mut qv = [[zero; 2]; NG];
            for (gi, qv) in qv.iter_mut().enumerate() {
                *qv = [_mm256_loadu_ps(q.add(gi * d + c)), _mm256_loadu_ps(q.add(gi * d + c + 8))];
            }
            for r in 0..R {
                let k = T::load16(rows.add(r * d + c));
                for (gi, a) in a.iter_mut().enumerate() {
                    a[r] = _mm256_fmadd_ps(k[1], qv[gi][1], _mm256_fmadd_ps(k[0], qv[gi][0], a[r]));
                }
            }
        } else {
            let mut k = [[zero; 2]; R];
            for (r, k) in k.iter_mut().enumerate() {
                *k = T::load16(rows.add(r * d + c));
            }
            for (gi, a) in a.iter_mut().enumerate() {
                let (q0, q1) = (_mm256_loadu_ps(q.add(gi * d + c)), _mm256_loadu_ps(q.add(gi * d + c + 8)));
                for r in 0..R {
                    a[r] = _mm256_fmadd_ps(k[r][1], q1, _mm256_fmadd_ps(k[r][0], q0, a[r]));
                }
            }
        }
        c += 16;
    }
    if c < d {
        for r in 0..R {
            let k = T::load8(rows.add(r * d + c));
            for (gi, a) in a.iter_mut().enumerate() {
                a[r] = _mm256_fmadd_ps(k, _mm256_loadu_ps(q.add(gi * d + c)), a[r]);
            }
        }
    }
    let mut v = [zero; 8];
    for (gi, a) in a.iter().enumerate() {
        v[gi * R..(gi + 1) * R].copy_from_slice(a);
    }
    hsum8(&v)
}

/// Raw scores of rows `rows[0..n]` (`n <= 8`; lanes past `n` get 0) against the `g` heads of
/// `q`, to `out[gi * 8 + t]`, one row at a time: for tiles whose last rows do not fill a
/// window of 8.
///
/// # Safety
/// As [`scores`], with only `rows[0..n * d]` readable.
#[inline(always)]
pub(crate) unsafe fn scores_rows<T: Wide8>(rows: *const T, n: usize, d: usize, q: *const f32, g: usize, out: *mut f32) {
    let zero = _mm256_setzero_ps();
    for gi in 0..g {
        let mut v = [zero; 8];
        for (t, v) in v.iter_mut().enumerate().take(n) {
            let (row, qg) = (rows.add(t * d), q.add(gi * d));
            let mut c = 0;
            let mut a = zero;
            while c + 16 <= d {
                let [k0, k1] = T::load16(row.add(c));
                a = _mm256_fmadd_ps(k0, _mm256_loadu_ps(qg.add(c)), a);
                a = _mm256_fmadd_ps(k1, _mm256_loadu_ps(qg.add(c + 8)), a);
                c += 16;
            }
            if c < d {
                a = _mm256_fmadd_ps(T::load8(row.add(c)), _mm256_loadu_ps(qg.add(c)), a);
            }
            *v = a;
        }
        _mm256_storeu_ps(out.add(gi * ROWS), hsum8(&v));
    }
}
