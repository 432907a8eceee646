//! The fast block loops: each kernel maps one block's bytes to its values in f32, written so
//! the compiler vectorises the inner loops; `run` converts them to the output type.
//!
//! Operations and their order are ggml's `dequantize_row_*` (see the module above): keep them.

use super::GgmlType;
use crate::dtype::KvElem;

/// The exact value of an IEEE half given by its bits (never depends on the FPU's
/// denormal mode: subnormals are built from an integer product).
#[inline(always)]
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h & 0x8000) as u32) << 16;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let magnitude = match exp {
        0 => (man as f32 * (1.0 / 16_777_216.0)).to_bits(), // man * 2^-24
        31 => 0x7f80_0000 | (man << 13),
        _ => ((exp + 112) << 23) | (man << 13),
    };
    f32::from_bits(sign | magnitude)
}

#[inline(always)]
fn half(b: &[u8], at: usize) -> f32 {
    f16_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

#[inline(always)]
fn word(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Whole blocks of `src` -> `out`, which holds exactly their values.
#[inline(always)]
pub(super) fn run<T: KvElem>(ty: GgmlType, src: &[u8], out: &mut [T]) {
    match ty {
        GgmlType::F32 => floats::<T, 4>(src, out, f32::from_le_bytes),
        GgmlType::F16 => floats::<T, 2>(src, out, |b| f16_to_f32(u16::from_le_bytes(b))),
        GgmlType::Bf16 => floats::<T, 2>(src, out, |b| f32::from_bits((u16::from_le_bytes(b) as u32) << 16)),
        GgmlType::Q4_0 => each::<T, 32, 18>(src, out, q4_0),
        GgmlType::Q4_1 => each::<T, 32, 20>(src, out, q4_1),
        GgmlType::Q5_0 => each::<T, 32, 22>(src, out, q5_0),
        GgmlType::Q5_1 => each::<T, 32, 24>(src, out, q5_1),
        GgmlType::Q8_0 => each::<T, 32, 34>(src, out, q8_0),
        GgmlType::Q2K => each::<T, 256, 84>(src, out, q2_k),
        GgmlType::Q3K => each::<T, 256, 110>(src, out, q3_k),
        GgmlType::Q4K => each::<T, 256, 144>(src, out, q4_k),
        GgmlType::Q5K => each::<T, 256, 176>(src, out, q5_k),
        GgmlType::Q6K => each::<T, 256, 210>(src, out, q6_k),
    }
}

#[inline(always)]
fn floats<T: KvElem, const N: usize>(src: &[u8], out: &mut [T], value: impl Fn([u8; N]) -> f32) {
    for (b, o) in src.chunks_exact(N).zip(out.iter_mut()) {
        *o = T::from_f32(value(b.try_into().unwrap()));
    }
}

/// Values converted per pass: small blocks are dequantised a group at a time into an f32
/// buffer on the stack, then the group is converted in one long loop.
const GROUP_VALUES: usize = 256;

/// Runs of blocks of `QK` values in `TS` bytes (QK divides GROUP_VALUES), a group at a time.
#[inline(always)]
fn each<T: KvElem, const QK: usize, const TS: usize>(
    src: &[u8],
    out: &mut [T],
    kernel: impl Fn(&[u8; TS], &mut [f32; QK]),
) {
    let mut values = [0f32; GROUP_VALUES];
    let per_group = GROUP_VALUES / QK;
    for (blocks, o) in src.chunks(TS * per_group).zip(out.chunks_mut(GROUP_VALUES)) {
        for (b, y) in blocks.chunks_exact(TS).zip(values.chunks_exact_mut(QK)) {
            kernel(b.try_into().unwrap(), y.try_into().unwrap());
        }
        for (o, &v) in o.iter_mut().zip(&values) {
            *o = T::from_f32(v);
        }
    }
}

#[inline(always)]
fn q4_0(b: &[u8; 18], y: &mut [f32; 32]) {
    let d = half(b, 0);
    let (lo, hi) = y.split_at_mut(16);
    for j in 0..16 {
        let q = b[2 + j];
        lo[j] = ((q & 15) as i32 - 8) as f32 * d;
        hi[j] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

#[inline(always)]
fn q4_1(b: &[u8; 20], y: &mut [f32; 32]) {
    let (d, m) = (half(b, 0), half(b, 2));
    let (lo, hi) = y.split_at_mut(16);
    for j in 0..16 {
        let q = b[4 + j];
        lo[j] = (q & 15) as f32 * d + m;
        hi[j] = (q >> 4) as f32 * d + m;
    }
}

/// Q5_0 (offset 16, no min) and Q5_1 (offset 0, min m): 4 low bits from qs, the fifth from qh.
#[inline(always)]
fn q5(d: f32, m: Option<f32>, qh: u32, qs: &[u8], y: &mut [f32; 32]) {
    let offset = if m.is_some() { 0 } else { 16 };
    let (lo, hi) = y.split_at_mut(16);
    for j in 0..16 {
        let x0 = ((qs[j] & 15) as u32 | ((qh >> j) & 1) << 4) as i32 - offset;
        let x1 = ((qs[j] >> 4) as u32 | ((qh >> (j + 16)) & 1) << 4) as i32 - offset;
        match m {
            Some(m) => {
                lo[j] = x0 as f32 * d + m;
                hi[j] = x1 as f32 * d + m;
            }
            None => {
                lo[j] = x0 as f32 * d;
                hi[j] = x1 as f32 * d;
            }
        }
    }
}

#[inline(always)]
fn q5_0(b: &[u8; 22], y: &mut [f32; 32]) {
    q5(half(b, 0), None, word(b, 2), &b[6..22], y)
}

#[inline(always)]
fn q5_1(b: &[u8; 24], y: &mut [f32; 32]) {
    q5(half(b, 0), Some(half(b, 2)), word(b, 4), &b[8..24], y)
}

#[inline(always)]
fn q8_0(b: &[u8; 34], y: &mut [f32; 32]) {
    let d = half(b, 0);
    for j in 0..32 {
        y[j] = b[2 + j] as i8 as f32 * d;
    }
}

#[inline(always)]
fn q2_k(b: &[u8; 84], y: &mut [f32; 256]) {
    let (scales, qs, d, dmin) = (&b[0..16], &b[16..80], half(b, 80), half(b, 82));
    for n in 0..2 {
        for j in 0..4 {
            for part in 0..2 {
                let sc = scales[8 * n + 2 * j + part];
                let (dl, ml) = (d * (sc & 15) as f32, dmin * (sc >> 4) as f32);
                let q = &qs[32 * n + 16 * part..][..16];
                let y = &mut y[128 * n + 32 * j + 16 * part..][..16];
                for l in 0..16 {
                    y[l] = dl * ((q[l] >> (2 * j)) & 3) as f32 - ml;
                }
            }
        }
    }
}

#[inline(always)]
fn q3_k(b: &[u8; 110], y: &mut [f32; 256]) {
    let (hmask, qs, d) = (&b[0..32], &b[32..96], half(b, 108));
    // 16 six-bit scales: low nibbles in bytes 96..104, two high bits each in bytes 104..108.
    const LOW: u32 = 0x0f0f_0f0f;
    const HIGH: u32 = 0x0303_0303;
    let (a0, a1, tmp) = (word(b, 96), word(b, 100), word(b, 104));
    let packed = [
        (a0 & LOW) | ((tmp & HIGH) << 4),
        (a1 & LOW) | (((tmp >> 2) & HIGH) << 4),
        ((a0 >> 4) & LOW) | (((tmp >> 4) & HIGH) << 4),
        ((a1 >> 4) & LOW) | (((tmp >> 6) & HIGH) << 4),
    ];
    let mut scales = [0u8; 16];
    for (s, w) in scales.chunks_exact_mut(4).zip(packed) {
        s.copy_from_slice(&w.to_le_bytes());
    }
    for n in 0..2 {
        for j in 0..4 {
            let bit = 1u8 << (4 * n + j);
            for part in 0..2 {
                let dl = d * (scales[8 * n + 2 * j + part] as i8 as i32 - 32) as f32;
                let q = &qs[32 * n + 16 * part..][..16];
                let h = &hmask[16 * part..][..16];
                let y = &mut y[128 * n + 32 * j + 16 * part..][..16];
                for l in 0..16 {
                    let low = ((q[l] >> (2 * j)) & 3) as i32;
                    y[l] = dl * (low - if h[l] & bit != 0 { 0 } else { 4 }) as f32;
                }
            }
        }
    }
}

/// Q4_K/Q5_K: (scale, min) of sub-block j from the 12 packed bytes (six bits each).
#[inline(always)]
fn scale_min(p: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (p[j] & 63, p[j + 4] & 63)
    } else {
        ((p[j + 4] & 15) | ((p[j - 4] >> 6) << 4), (p[j + 4] >> 4) | ((p[j] >> 6) << 4))
    }
}

/// Q4_K (no qh) and Q5_K: four groups of 32 bytes, low nibbles then high nibbles.
#[inline(always)]
fn q45_k(b: &[u8], qh: Option<&[u8]>, qs: &[u8], y: &mut [f32; 256]) {
    let (d, dmin, packed) = (half(b, 0), half(b, 2), &b[4..16]);
    for g in 0..4 {
        let (s1, m1) = scale_min(packed, 2 * g);
        let (s2, m2) = scale_min(packed, 2 * g + 1);
        let (d1, dm1, d2, dm2) = (d * s1 as f32, dmin * m1 as f32, d * s2 as f32, dmin * m2 as f32);
        let q = &qs[32 * g..][..32];
        let (lo, hi) = y[64 * g..][..64].split_at_mut(32);
        for l in 0..32 {
            let (mut x0, mut x1) = ((q[l] & 15) as u32, (q[l] >> 4) as u32);
            if let Some(qh) = qh {
                x0 += (((qh[l] >> (2 * g)) & 1) as u32) << 4;
                x1 += (((qh[l] >> (2 * g + 1)) & 1) as u32) << 4;
            }
            lo[l] = d1 * x0 as f32 - dm1;
            hi[l] = d2 * x1 as f32 - dm2;
        }
    }
}

#[inline(always)]
fn q4_k(b: &[u8; 144], y: &mut [f32; 256]) {
    q45_k(b, None, &b[16..144], y)
}

#[inline(always)]
fn q5_k(b: &[u8; 176], y: &mut [f32; 256]) {
    q45_k(b, Some(&b[16..48]), &b[48..176], y)
}

#[inline(always)]
fn q6_k(b: &[u8; 210], y: &mut [f32; 256]) {
    let (ql, qh, scales, d) = (&b[0..128], &b[128..192], &b[192..208], half(b, 208));
    for n in 0..2 {
        let (ql, qh, sc) = (&ql[64 * n..][..64], &qh[32 * n..][..32], &scales[8 * n..][..8]);
        let y = &mut y[128 * n..][..128];
        for s in 0..2 {
            let ds = [0, 2, 4, 6].map(|k| d * sc[s + k] as i8 as f32);
            for l in 16 * s..16 * s + 16 {
                let h = qh[l];
                let q1 = ((ql[l] & 15) | ((h & 3) << 4)) as i32 - 32;
                let q2 = ((ql[l + 32] & 15) | (((h >> 2) & 3) << 4)) as i32 - 32;
                let q3 = ((ql[l] >> 4) | (((h >> 4) & 3) << 4)) as i32 - 32;
                let q4 = ((ql[l + 32] >> 4) | (((h >> 6) & 3) << 4)) as i32 - 32;
                y[l] = ds[0] * q1 as f32;
                y[l + 32] = ds[1] * q2 as f32;
                y[l + 64] = ds[2] * q3 as f32;
                y[l + 96] = ds[3] * q4 as f32;
            }
        }
    }
}
