//! AVX2 + FMA + F16C path: the AVX-512 algorithm with 8 lanes (chunks of 8 rows).

use std::arch::x86_64::*;
use std::ops::Range;

use half::{bf16, f16};

use super::{Job, Seq, State, CHUNK_ROWS, MAX_SLACK};
use crate::dtype::{KvDtype, KvElem};

const LANES: usize = 8;

/// KV elements loadable as 8 f32 lanes.
pub(crate) trait Wide8: KvElem {
    /// Loads `p[0..8]` widened to f32.
    ///
    /// # Safety
    /// `p[0..8]` must be readable and the CPU must have AVX2 and F16C.
    unsafe fn load8(p: *const Self) -> __m256;
}

impl Wide8 for f32 {
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> __m256 {
        _mm256_loadu_ps(p)
    }
}

impl Wide8 for f16 {
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    }
}

impl Wide8 for bf16 {
    #[inline(always)]
    unsafe fn load8(p: *const Self) -> __m256 {
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast()))))
    }
}

/// Runs blocks `blocks` of one request.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C, and `head_dim % 8 == 0`; `job`/`seq` validated,
/// `st` reset for this request.
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn attend<T: Wide8>(job: &Job<'_, T>, seq: &Seq<'_>, blocks: Range<usize>, st: &mut State) {
    match job.layout.head_dim {
        64 => body::<T, 64>(job, seq, blocks, st),
        128 => body::<T, 128>(job, seq, blocks, st),
        _ => body::<T, 0>(job, seq, blocks, st),
    }
}

#[inline(always)]
unsafe fn body<T: Wide8, const D: usize>(job: &Job<'_, T>, seq: &Seq<'_>, blocks: Range<usize>, st: &mut State) {
    let d = if D == 0 { job.layout.head_dim } else { D };
    let nc = d / LANES;
    let bs = job.layout.block_size;
    let g = job.group;
    let is_f32 = T::DTYPE == KvDtype::F32;
    let State { q, m, l, acc, kf, vf, dots, p, alpha, .. } = st;
    debug_assert!(kf.len() >= CHUNK_ROWS * d && vf.len() >= CHUNK_ROWS * d);
    debug_assert!(dots.len() >= g * LANES * LANES && p.len() >= g * LANES && alpha.len() >= g);
    let iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let scale = _mm256_set1_ps(job.scale);
    let range = blocks.clone();
    for j in blocks {
        let block = seq.block_ids[j] as usize;
        let n_blk = (seq.len - j * bs).min(bs);
        // As the AVX-512 path: the item's first block by its pages, the block ahead tile by
        // tile (see `Job::prefetch_tile_start`).
        if j == range.start {
            job.prefetch_item_start(seq, &range);
        }
        let ahead = job.block_ahead(seq, &range, j);
        for h in 0..job.layout.num_kv_heads {
            if let Some(a) = ahead {
                job.prefetch_tile_start(&job.k, a, h);
            }
            // SAFETY: `block` comes from the item's `Seq` and `n_blk <= block_size`.
            let (kt, vt) = unsafe { (job.tile(&job.k, block, h, n_blk), job.tile(&job.v, block, h, n_blk)) };
            let mut r0 = 0;
            while r0 < n_blk {
                let n = (n_blk - r0).min(LANES);
                let krows = &kt[r0 * d..(r0 + n) * d];
                let vrows = &vt[r0 * d..(r0 + n) * d];
                let kptr: *const f32 = if is_f32 {
                    krows.as_ptr().cast()
                } else {
                    widen(krows, kf);
                    kf.as_ptr()
                };
                let valid = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), iota));
                for gi in 0..g {
                    let hq = h * g + gi;
                    let dg = dots.as_mut_ptr().add(gi * LANES * LANES);
                    let qh = q.as_ptr().add(hq * d);
                    for t in 0..n {
                        let row = kptr.add(t * d);
                        let mut a = _mm256_setzero_ps();
                        for c in 0..nc {
                            a = _mm256_fmadd_ps(
                                _mm256_loadu_ps(qh.add(c * LANES)),
                                _mm256_loadu_ps(row.add(c * LANES)),
                                a,
                            );
                        }
                        _mm256_storeu_ps(dg.add(t * LANES), a);
                    }
                    for t in n..LANES {
                        _mm256_storeu_ps(dg.add(t * LANES), _mm256_setzero_ps());
                    }
                    let s = _mm256_blendv_ps(_mm256_set1_ps(f32::NEG_INFINITY), _mm256_mul_ps(hsum8(dg), scale), valid);
                    let mut lanes = [0.0f32; LANES];
                    _mm256_storeu_ps(lanes.as_mut_ptr(), s);
                    let m_old = m[hq];
                    let m_chunk = lanes.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                    let m_new = if m_chunk > m_old + MAX_SLACK { m_chunk } else { m_old };
                    let pv = _mm256_and_ps(valid, exp8(_mm256_sub_ps(s, _mm256_set1_ps(m_new))));
                    _mm256_storeu_ps(p.as_mut_ptr().add(gi * LANES), pv);
                    let sum: f32 = p[gi * LANES..(gi + 1) * LANES].iter().sum();
                    let a = if m_old == f32::NEG_INFINITY {
                        0.0
                    } else if m_old == m_new {
                        1.0
                    } else {
                        (m_old - m_new).exp()
                    };
                    l[hq] = l[hq] * a + sum;
                    m[hq] = m_new;
                    alpha[gi] = a;
                }
                if let (Some(a), 0) = (ahead, r0) {
                    job.prefetch_tile_start(&job.v, a, h);
                }
                let vptr: *const f32 = if is_f32 {
                    vrows.as_ptr().cast()
                } else {
                    widen(vrows, vf);
                    vf.as_ptr()
                };
                for gi in 0..g {
                    let a_ptr = acc.as_mut_ptr().add((h * g + gi) * d);
                    let av = _mm256_set1_ps(alpha[gi]);
                    let pg = p.as_ptr().add(gi * LANES);
                    if D != 0 {
                        let mut ar = [_mm256_setzero_ps(); 16];
                        for (c, r) in ar.iter_mut().enumerate().take(nc) {
                            *r = _mm256_mul_ps(_mm256_loadu_ps(a_ptr.add(c * LANES)), av);
                        }
                        for t in 0..n {
                            let w = _mm256_set1_ps(*pg.add(t));
                            let row = vptr.add(t * d);
                            for (c, r) in ar.iter_mut().enumerate().take(nc) {
                                *r = _mm256_fmadd_ps(w, _mm256_loadu_ps(row.add(c * LANES)), *r);
                            }
                        }
                        for (c, r) in ar.iter().enumerate().take(nc) {
                            _mm256_storeu_ps(a_ptr.add(c * LANES), *r);
                        }
                    } else {
                        for c in 0..nc {
                            let mut r = _mm256_mul_ps(_mm256_loadu_ps(a_ptr.add(c * LANES)), av);
                            for t in 0..n {
                                r = _mm256_fmadd_ps(
                                    _mm256_set1_ps(*pg.add(t)),
                                    _mm256_loadu_ps(vptr.add(t * d + c * LANES)),
                                    r,
                                );
                            }
                            _mm256_storeu_ps(a_ptr.add(c * LANES), r);
                        }
                    }
                }
                r0 += n;
            }
        }
    }
}

/// Widens `rows` (a multiple of 8 elements) into the front of `dst`.
#[inline(always)]
unsafe fn widen<T: Wide8>(rows: &[T], dst: &mut [f32]) {
    assert!(dst.len() >= rows.len() && rows.len() % LANES == 0);
    let (src, out) = (rows.as_ptr(), dst.as_mut_ptr());
    for i in (0..rows.len()).step_by(LANES) {
        _mm256_storeu_ps(out.add(i), T::load8(src.add(i)));
    }
}

/// `v` points at 8 vectors of 8 floats; lane t of the result is the sum of vector t.
#[inline(always)]
pub(crate) unsafe fn hsum8(v: *const f32) -> __m256 {
    // The tree leaves input slot PERM[t] in lane t (an involution): slot s gets vector PERM[s].
    const PERM: [usize; 8] = [0, 2, 1, 3, 4, 6, 5, 7];
    let a = |slot: usize| _mm256_loadu_ps(v.add(LANES * PERM[slot]));
    let mut w = [_mm256_setzero_ps(); 4];
    for (i, w) in w.iter_mut().enumerate() {
        let (x, y) = (a(i), a(i + 4));
        *w = _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(x, y), _mm256_permute2f128_ps::<0x31>(x, y));
    }
    let mut x = [_mm256_setzero_ps(); 2];
    for (i, x) in x.iter_mut().enumerate() {
        *x = _mm256_add_ps(_mm256_shuffle_ps::<0x44>(w[i], w[i + 2]), _mm256_shuffle_ps::<0xEE>(w[i], w[i + 2]));
    }
    _mm256_add_ps(_mm256_shuffle_ps::<0x88>(x[0], x[1]), _mm256_shuffle_ps::<0xDD>(x[0], x[1]))
}

/// exp for 8 lanes (as the AVX-512 one); inputs below -87 (including -inf) give 0.
#[inline(always)]
pub(crate) unsafe fn exp8(x: __m256) -> __m256 {
    let tiny = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(-87.0));
    let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0)), _mm256_set1_ps(88.3));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(std::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut poly = _mm256_set1_ps(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(c));
    }
    let scale =
        _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127))));
    _mm256_andnot_ps(tiny, _mm256_mul_ps(poly, scale))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsum8_and_exp8() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            return;
        }
        let v: Vec<f32> = (0..64).map(|i| ((i * 37) % 101) as f32 - 50.0).collect();
        let xs: Vec<f32> = (0..8).map(|i| -86.0 + i as f32 * 24.3).collect();
        let (mut got, mut e) = ([0.0f32; 8], [0.0f32; 8]);
        // SAFETY: features checked above; buffers hold 64 / 8 floats.
        unsafe { check(&v, &mut got, &xs, &mut e) };
        for t in 0..8 {
            assert_eq!(got[t], v[t * 8..(t + 1) * 8].iter().sum::<f32>(), "lane {t}");
            let want = (xs[t] as f64).exp();
            assert!(((e[t] as f64 - want) / want).abs() < 3e-7, "exp({}) = {} vs {want}", xs[t], e[t]);
        }

        #[target_feature(enable = "avx2,fma")]
        unsafe fn check(v: &[f32], got: &mut [f32; 8], xs: &[f32], e: &mut [f32; 8]) {
            _mm256_storeu_ps(got.as_mut_ptr(), hsum8(v.as_ptr()));
            _mm256_storeu_ps(e.as_mut_ptr(), exp8(_mm256_loadu_ps(xs.as_ptr())));
            let mut z = [1.0f32; 8];
            _mm256_storeu_ps(z.as_mut_ptr(), exp8(_mm256_set1_ps(f32::NEG_INFINITY)));
            assert!(z.iter().all(|&x| x == 0.0));
        }
    }
}
