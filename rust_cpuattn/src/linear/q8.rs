//! The integer-dot path's activations: each activation row quantised once per call to 8-bit
//! blocks of 32 values with one f32 scale (as ggml's Q8 activations), and the plain kernel
//! (scalar) that multiplies Q4_0 / Q4_1 / Q8_0 weight blocks by them with integer dots.
//!
//! Quantisation of a 32-value block x: `d = max|x| / 127`, `q_i = round_ties_even(x_i / d)`
//! (|q_i| <= 127; d = 0 gives q = 0). So `|x_i - d q_i| <= d / 2 = max|x| / 254`.
//! A non-finite value makes the block's scale NaN, so it reaches the outputs (never hidden).
//!
//! A weight block (scale dw, quants qw, and for Q4_1 a min mw) times the activation block:
//!   Q4_0: `dw * d * (sum_i nib_i q_i - 8 sum_i q_i)`       (qw = nib - 8)
//!   Q4_1: `dw * d * sum_i nib_i q_i + mw * sum_i x_i`       (the min times the exact sum)
//!   Q8_0: `dw * d * sum_i qw_i q_i`
//! Every integer sum is exact; the float combination is f32. Error against the float64
//! product of the dequantised weight with x: `|sum_i w'_i (x_i - d q_i)| <= (max|x| / 254)
//! sum_i |w'_i|` per block, where w' is the weight without its min (`dw qw`), plus f32
//! rounding of the sums; random rounding errors make the typical error about sqrt(32) times
//! smaller than that bound.

use super::Weight;
use crate::dequant::GgmlType;
use half::f16;

/// Activation rows as Q8 blocks: `q [M, K]`, and per block (`[M, K / 32]`) the scale `d`, the
/// integer sum of its quants `sumq`, and `sum_x8 = (sum of the block's f32 values) / 8`.
#[derive(Default)]
pub struct Q8Acts {
    pub q: Vec<i8>,
    pub d: Vec<f32>,
    pub sumq: Vec<i32>,
    pub sum_x8: Vec<f32>,
    pub m: usize,
    pub k: usize,
}

impl Q8Acts {
    /// Quantises `x` (`[m, k]` f32, k a multiple of 32), reusing the buffers.
    pub fn quantize(&mut self, x: &[f32], k: usize) {
        assert!(k > 0 && k.is_multiple_of(32) && x.len().is_multiple_of(k), "k {k} and {} values", x.len());
        let (m, nb) = (x.len() / k, k / 32);
        self.m = m;
        self.k = k;
        self.q.clear();
        self.q.resize(m * k, 0);
        for v in [&mut self.d, &mut self.sum_x8] {
            v.clear();
            v.resize(m * nb, 0.0);
        }
        self.sumq.clear();
        self.sumq.resize(m * nb, 0);
        quantize_any(x, &mut self.q, &mut self.d, &mut self.sumq, &mut self.sum_x8);
    }
}

/// Rounds to the nearest integer, ties to even, for |v| < 2^22 (the quants' range): adding
/// 1.5 * 2^23 leaves no fraction bits, and the sum rounds as the FPU does (to even). Unlike
/// `round_ties_even` it needs no SSE4.1, so the block loop vectorizes on every x86-64.
#[inline(always)]
fn round_small(v: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (v + MAGIC) - MAGIC
}

#[inline(always)]
fn quantize_blocks(x: &[f32], q: &mut [i8], d: &mut [f32], sumq: &mut [i32], sum_x8: &mut [f32]) {
    for (b, (xb, qb)) in x.chunks_exact(32).zip(q.chunks_exact_mut(32)).enumerate() {
        let amax = xb.iter().fold(0f32, |a, v| a.max(v.abs()));
        let finite = xb.iter().all(|v| v.is_finite());
        let scale = if finite { amax / 127.0 } else { f32::NAN };
        let id = if finite && scale != 0.0 { 1.0 / scale } else { 0.0 };
        let mut total = 0i32;
        for (qv, &v) in qb.iter_mut().zip(xb) {
            // |v * id| <= 127 up to rounding of id; the clamp keeps it a valid i8 anyway.
            let r = round_small(v * id).clamp(-127.0, 127.0) as i8;
            *qv = r;
            total += r as i32;
        }
        // Lanes summed in the order the AVX2 kernel's partial sums would: any fixed order
        // is fine, the min term is an f32 sum either way.
        let mut lanes = [0f32; 8];
        for (j, &v) in xb.iter().enumerate() {
            lanes[j % 8] += v;
        }
        let sum = ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
        d[b] = scale;
        sumq[b] = total;
        sum_x8[b] = sum / 8.0;
    }
}

/// `quantize_blocks` compiled for AVX2 when the CPU has it (the same arithmetic: no FMA
/// contraction), else for the baseline.
fn quantize_any(x: &[f32], q: &mut [i8], d: &mut [f32], sumq: &mut [i32], sum_x8: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx2")]
        unsafe fn wide(x: &[f32], q: &mut [i8], d: &mut [f32], sumq: &mut [i32], sum_x8: &mut [f32]) {
            quantize_blocks(x, q, d, sumq, sum_x8)
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2 (checked just above).
            return unsafe { wide(x, q, d, sumq, sum_x8) };
        }
    }
    quantize_blocks(x, q, d, sumq, sum_x8)
}

/// Whether the integer-dot path takes weights of `ty` (the others run the f32 path).
pub fn supports(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0)
}

fn half(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// Block `b` of a stored row: (quants as stored: nibbles 0..15 for Q4_*, i8 for Q8_0, in value
/// order), d, min.
pub(crate) fn weight_block(ty: GgmlType, row: &[u8], b: usize) -> ([i32; 32], f32, f32) {
    let mut q = [0i32; 32];
    match ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            let (bytes, off) = if ty == GgmlType::Q4_0 { (18, 2) } else { (20, 4) };
            let blk = &row[b * bytes..(b + 1) * bytes];
            for j in 0..16 {
                q[j] = (blk[off + j] & 15) as i32;
                q[j + 16] = (blk[off + j] >> 4) as i32;
            }
            let m = if ty == GgmlType::Q4_1 { half(&blk[2..4]) } else { 0.0 };
            (q, half(&blk[0..2]), m)
        }
        GgmlType::Q8_0 => {
            let blk = &row[b * 34..(b + 1) * 34];
            for j in 0..32 {
                q[j] = blk[2 + j] as i8 as i32;
            }
            (q, half(&blk[0..2]), 0.0)
        }
        _ => unreachable!("not an integer-dot type"),
    }
}

/// The integer dot of weight block (as `weight_block` returns it) with activation block `b` of
/// row `t`, the Q4_0 offset applied: `sum_i qw_i q_i` with qw the signed quant.
pub(crate) fn block_idot(ty: GgmlType, qw: &[i32; 32], acts: &Q8Acts, t: usize, b: usize) -> i32 {
    let qx = &acts.q[t * acts.k + 32 * b..][..32];
    let dot: i32 = qw.iter().zip(qx).map(|(&w, &x)| w * x as i32).sum();
    if ty == GgmlType::Q4_0 {
        dot - 8 * acts.sumq[t * (acts.k / 32) + b]
    } else {
        dot
    }
}

/// The portable integer-dot kernel: output columns [n0, n1) of every activation row.
pub(super) fn rows_range(w: &Weight<'_>, acts: &Q8Acts, n0: usize, n1: usize, store: &dyn Fn(usize, usize, f32)) {
    let (rb, nb) = (w.row_bytes(), w.cols / 32);
    for n in n0..n1 {
        let row = &w.data[n * rb..(n + 1) * rb];
        let mut acc = vec![0f32; acts.m];
        for b in 0..nb {
            let (qw, dw, mw) = weight_block(w.ty, row, b);
            for (t, a) in acc.iter_mut().enumerate() {
                let i = t * nb + b;
                *a += (dw * acts.d[i]) * block_idot(w.ty, &qw, acts, t, b) as f32;
                if w.ty == GgmlType::Q4_1 {
                    *a += mw * (8.0 * acts.sum_x8[i]);
                }
            }
        }
        for (t, &a) in acc.iter().enumerate() {
            store(t, n, a);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantisation_bounds_and_sums() {
        let x: Vec<f32> = (0..64).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.37).collect();
        let mut a = Q8Acts::default();
        a.quantize(&x, 64);
        for b in 0..2 {
            let xb = &x[32 * b..32 * (b + 1)];
            let d = a.d[b];
            let amax = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert_eq!(d, amax / 127.0);
            for (i, &v) in xb.iter().enumerate() {
                let q = a.q[32 * b + i];
                assert!((v - d * q as f32).abs() <= d / 2.0 * (1.0 + 1e-6));
            }
            assert_eq!(a.sumq[b], a.q[32 * b..32 * (b + 1)].iter().map(|&q| q as i32).sum::<i32>());
        }
    }

    #[test]
    fn zero_and_non_finite_blocks() {
        let mut x = vec![0f32; 96];
        x[40] = f32::INFINITY;
        x[70] = f32::NAN;
        let mut a = Q8Acts::default();
        a.quantize(&x, 96);
        assert_eq!(a.d[0], 0.0);
        assert!(a.q[..32].iter().all(|&q| q == 0));
        assert!(a.d[1].is_nan() && a.d[2].is_nan());
    }
}
