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

use super::{Job, Seq, State, CHUNK_ROWS};
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
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(
            _mm256_loadu_si256(p.cast()),
        )))
    }
}

/// Runs blocks `blocks` of one request.
///
/// # Safety
/// The CPU must have AVX-512F and `head_dim % 16 == 0`; `job`/`seq` validated (block ids
/// `< num_blocks`), `st` reset for this request.
#[target_feature(enable = "avx512f")]
pub(crate) unsafe fn attend<T: Wide16>(
    job: &Job<'_, T>,
    seq: &Seq<'_>,
    blocks: Range<usize>,
    st: &mut State,
) {
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
pub(crate) unsafe fn attend_bf16dot<T: Wide16>(
    job: &Job<'_, T>,
    seq: &Seq<'_>,
    blocks: Range<usize>,
    st: &mut State,
) {
    debug_assert!(T::DTYPE == KvDtype::Bf16 && job.layout.head_dim % 32 == 0);
    match job.layout.head_dim {
        64 => body::<T, 64, true>(job, seq, blocks, st),
        128 => body::<T, 128, true>(job, seq, blocks, st),
        _ => body::<T, 0, true>(job, seq, blocks, st),
    }
}

/// `D` = head_dim for the fast paths, 0 = read it at run time.
#[inline(always)]
unsafe fn body<T: Wide16, const D: usize, const DOT: bool>(
    job: &Job<'_, T>,
    seq: &Seq<'_>,
    blocks: Range<usize>,
    st: &mut State,
) {
    let d = if D == 0 { job.layout.head_dim } else { D };
    let nc = d / LANES;
    let bs = job.layout.block_size;
    let g = job.group;
    let num_q_heads = job.num_q_heads;
    let is_f32 = T::DTYPE == KvDtype::F32;
    let State {
        q,
        q_bf16,
        q_has_lo,
        m,
        l,
        acc,
        kf,
        vf,
        dots,
        p,
        alpha,
        ..
    } = st;
    let use_dot = DOT && !*q_has_lo;
    let scale = _mm512_set1_ps(job.scale);
    debug_assert!(kf.len() >= CHUNK_ROWS * d && vf.len() >= CHUNK_ROWS * d);
    debug_assert!(dots.len() >= g * LANES * LANES && p.len() >= g * LANES && alpha.len() >= g);
    debug_assert!(q.len() == num_q_heads * d && acc.len() == num_q_heads * d);
    for j in blocks {
        let block = seq.block_ids[j] as usize;
        let n_blk = (seq.len - j * bs).min(bs);
        for h in 0..job.layout.num_kv_heads {
            let kt = job.tile(job.k, block, h, n_blk);
            let vt = job.tile(job.v, block, h, n_blk);
            let mut r0 = 0;
            while r0 < n_blk {
                let n = (n_blk - r0).min(LANES);
                let krows = &kt[r0 * d..(r0 + n) * d];
                let vrows = &vt[r0 * d..(r0 + n) * d];
                // K rows as f32: in place for f32 pools, else widened into `kf`.
                let kptr: *const f32 = if use_dot {
                    std::ptr::null()
                } else if is_f32 {
                    krows.as_ptr().cast()
                } else {
                    widen(krows, kf);
                    kf.as_ptr()
                };
                for gi in 0..g {
                    let hq = h * g + gi;
                    let dg = dots.as_mut_ptr().add(gi * LANES * LANES);
                    if use_dot {
                        let qb = q_bf16.as_ptr().add(hq * d);
                        let rows = krows.as_ptr().cast::<u16>();
                        for t in 0..n {
                            let row = rows.add(t * d);
                            let mut a = _mm512_setzero_ps();
                            for c in 0..d / 32 {
                                let kv = as_bh(_mm512_loadu_si512(row.add(32 * c).cast()));
                                a = _mm512_dpbf16_ps(
                                    a,
                                    as_bh(_mm512_loadu_si512(qb.add(32 * c).cast())),
                                    kv,
                                );
                            }
                            _mm512_storeu_ps(dg.add(t * LANES), a);
                        }
                    } else {
                        let qh = q.as_ptr().add(hq * d);
                        let mut qr = [_mm512_setzero_ps(); 8];
                        if D != 0 {
                            for (c, r) in qr.iter_mut().enumerate().take(nc) {
                                *r = _mm512_loadu_ps(qh.add(c * LANES));
                            }
                        }
                        for t in 0..n {
                            let row = kptr.add(t * d);
                            let mut a = _mm512_setzero_ps();
                            for c in 0..nc {
                                let qv = if D != 0 {
                                    qr[c]
                                } else {
                                    _mm512_loadu_ps(qh.add(c * LANES))
                                };
                                a = _mm512_fmadd_ps(qv, _mm512_loadu_ps(row.add(c * LANES)), a);
                            }
                            _mm512_storeu_ps(dg.add(t * LANES), a);
                        }
                    }
                    for t in n..LANES {
                        _mm512_storeu_ps(dg.add(t * LANES), _mm512_setzero_ps());
                    }
                    // Online softmax over this chunk's scores.
                    let valid: __mmask16 = if n == LANES { 0xFFFF } else { (1u16 << n) - 1 };
                    let s = _mm512_mask_blend_ps(
                        valid,
                        _mm512_set1_ps(f32::NEG_INFINITY),
                        _mm512_mul_ps(hsum16(dg), scale),
                    );
                    let m_old = m[hq];
                    let m_new = m_old.max(_mm512_reduce_max_ps(s));
                    let pv =
                        _mm512_maskz_mov_ps(valid, exp16(_mm512_sub_ps(s, _mm512_set1_ps(m_new))));
                    let a = if m_old == f32::NEG_INFINITY {
                        0.0
                    } else if m_old == m_new {
                        1.0
                    } else {
                        (m_old - m_new).exp()
                    };
                    l[hq] = l[hq] * a + _mm512_reduce_add_ps(pv);
                    m[hq] = m_new;
                    alpha[gi] = a;
                    _mm512_storeu_ps(p.as_mut_ptr().add(gi * LANES), pv);
                }
                // acc = acc * alpha + sum_t p[t] * V[t], per head of the group.
                let vptr: *const f32 = if is_f32 {
                    vrows.as_ptr().cast()
                } else {
                    widen(vrows, vf);
                    vf.as_ptr()
                };
                for gi in 0..g {
                    let a_ptr = acc.as_mut_ptr().add((h * g + gi) * d);
                    let av = _mm512_set1_ps(alpha[gi]);
                    let pg = p.as_ptr().add(gi * LANES);
                    if D != 0 {
                        let mut ar = [_mm512_setzero_ps(); 8];
                        for (c, r) in ar.iter_mut().enumerate().take(nc) {
                            *r = _mm512_mul_ps(_mm512_loadu_ps(a_ptr.add(c * LANES)), av);
                        }
                        for t in 0..n {
                            let w = _mm512_set1_ps(*pg.add(t));
                            let row = vptr.add(t * d);
                            for (c, r) in ar.iter_mut().enumerate().take(nc) {
                                *r = _mm512_fmadd_ps(w, _mm512_loadu_ps(row.add(c * LANES)), *r);
                            }
                        }
                        for (c, r) in ar.iter().enumerate().take(nc) {
                            _mm512_storeu_ps(a_ptr.add(c * LANES), *r);
                        }
                    } else {
                        for c in 0..nc {
                            let mut r = _mm512_mul_ps(_mm512_loadu_ps(a_ptr.add(c * LANES)), av);
                            for t in 0..n {
                                r = _mm512_fmadd_ps(
                                    _mm512_set1_ps(*pg.add(t)),
                                    _mm512_loadu_ps(vptr.add(t * d + c * LANES)),
                                    r,
                                );
                            }
                            _mm512_storeu_ps(a_ptr.add(c * LANES), r);
                        }
                    }
                }
                r0 += n;
            }
        }
    }
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
    let a = |slot: usize| _mm512_loadu_ps(v.add(LANES * PERM[slot]));
    let mut w = [_mm512_setzero_ps(); 8];
    for (i, w) in w.iter_mut().enumerate() {
        let (x, y) = (a(i), a(i + 8));
        *w = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x44>(x, y),
            _mm512_shuffle_f32x4::<0xEE>(x, y),
        );
    }
    let mut x = [_mm512_setzero_ps(); 4];
    for (i, x) in x.iter_mut().enumerate() {
        *x = _mm512_add_ps(
            _mm512_shuffle_f32x4::<0x88>(w[i], w[i + 4]),
            _mm512_shuffle_f32x4::<0xDD>(w[i], w[i + 4]),
        );
    }
    let mut y = [_mm512_setzero_ps(); 2];
    for (i, y) in y.iter_mut().enumerate() {
        *y = _mm512_add_ps(
            _mm512_shuffle_ps::<0x44>(x[i], x[i + 2]),
            _mm512_shuffle_ps::<0xEE>(x[i], x[i + 2]),
        );
    }
    _mm512_add_ps(
        _mm512_shuffle_ps::<0x88>(y[0], y[1]),
        _mm512_shuffle_ps::<0xDD>(y[0], y[1]),
    )
}

/// exp for 16 lanes: 2^n * P(r), |r| <= ln2/2, degree-6 polynomial (about 1 ulp);
/// inputs below -104 (including -inf) give 0.
#[inline(always)]
pub(crate) unsafe fn exp16(x: __m512) -> __m512 {
    let x = _mm512_min_ps(
        _mm512_max_ps(x, _mm512_set1_ps(-104.0)),
        _mm512_set1_ps(88.5),
    );
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
        _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
    );
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
    let mut poly = _mm512_set1_ps(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(poly, n)
}

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
            assert!(
                ((e[t] as f64 - want) / want).abs() < 3e-7,
                "exp({}) = {} vs {want}",
                xs[t],
                e[t]
            );
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
