//! Lane arithmetic of the AVX2 path: exp, horizontal sums of 8 vectors, horizontal max.

use std::arch::x86_64::*;

/// Lane t of the result is the sum of the lanes of `v[t]`, all in registers.
#[inline(always)]
pub(crate) unsafe fn hsum8(v: &[__m256; 8]) -> __m256 {
    // Halves first: w[i] = [v[i].lo + v[i].hi | v[i + 4].lo + v[i + 4].hi], lanes i and i + 4
    // of the result end up in 128-bit lane 0 and 1 of the same vector.
    let mut w = [_mm256_setzero_ps(); 4];
    for (i, w) in w.iter_mut().enumerate() {
        let (x, y) = (v[i], v[i + 4]);
        *w = _mm256_add_ps(_mm256_permute2f128_ps::<0x20>(x, y), _mm256_permute2f128_ps::<0x31>(x, y));
    }
    // Pairs: x0 = sums of 2-element groups of (v0, v1 | v4, v5), x1 of (v2, v3 | v6, v7).
    let x0 = _mm256_add_ps(_mm256_shuffle_ps::<0x44>(w[0], w[1]), _mm256_shuffle_ps::<0xEE>(w[0], w[1]));
    let x1 = _mm256_add_ps(_mm256_shuffle_ps::<0x44>(w[2], w[3]), _mm256_shuffle_ps::<0xEE>(w[2], w[3]));
    _mm256_add_ps(_mm256_shuffle_ps::<0x88>(x0, x1), _mm256_shuffle_ps::<0xDD>(x0, x1))
}

/// The largest lane of `x` (NaN lanes are ignored unless all are NaN).
#[inline(always)]
pub(crate) unsafe fn hmax8(x: __m256) -> f32 {
    let m = _mm256_max_ps(x, _mm256_permute2f128_ps::<1>(x, x));
    let m = _mm256_max_ps(m, _mm256_shuffle_ps::<0x4E>(m, m));
    let m = _mm256_max_ps(m, _mm256_shuffle_ps::<0xB1>(m, m));
    _mm256_cvtss_f32(m)
}

/// The sum of the lanes of `x`.
#[inline(always)]
pub(crate) unsafe fn hadd8(x: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps::<1>(x));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<0x55>(s, s));
    _mm_cvtss_f32(s)
}

/// exp for 8 lanes: 2^n * P(r), |r| <= ln2/2, degree-6 polynomial; inputs below -87
/// (including -inf) give 0, so results are never subnormal.
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

/// exp of one f32 through the vector routine (same rounding as the lanes).
#[inline(always)]
pub(crate) unsafe fn exp_scalar(x: f32) -> f32 {
    _mm256_cvtss_f32(exp8(_mm256_set1_ps(x)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hsum8_hmax8_and_exp8() {
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
            let mut regs = [_mm256_setzero_ps(); 8];
            for (t, r) in regs.iter_mut().enumerate() {
                *r = _mm256_loadu_ps(v.as_ptr().add(8 * t));
            }
            _mm256_storeu_ps(got.as_mut_ptr(), hsum8(&regs));
            for (t, r) in regs.iter().enumerate() {
                let row = &v[8 * t..8 * t + 8];
                assert_eq!(hmax8(*r), row.iter().cloned().fold(f32::NEG_INFINITY, f32::max));
                assert_eq!(hadd8(*r), row.iter().sum::<f32>());
            }
            _mm256_storeu_ps(e.as_mut_ptr(), exp8(_mm256_loadu_ps(xs.as_ptr())));
            let mut z = [1.0f32; 8];
            _mm256_storeu_ps(z.as_mut_ptr(), exp8(_mm256_set1_ps(f32::NEG_INFINITY)));
            assert!(z.iter().all(|&x| x == 0.0));
        }
    }
}
