//! The oracle: each value of a block computed on its own, element by element, from the GGUF
//! block layouts (ggml's `block_*` structs and `dequantize_row_*` formulas), in f32 with the
//! format's operations in the format's order. Slow and plain on purpose.

use super::GgmlType;
use crate::error::{bail, Result};
use half::{bf16, f16};

fn half_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Value `i` of one block `b` of type `ty`.
pub fn block_value(ty: GgmlType, b: &[u8], i: usize) -> f32 {
    match ty {
        GgmlType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => half_at(b, 0),
        GgmlType::Bf16 => bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        // block_q4_0 { d: f16, qs: [u8; 16] }: value j < 16 is the low nibble of qs[j], value
        // j + 16 its high nibble.
        GgmlType::Q4_0 => {
            let q = nibble(&b[2..18], i);
            (q - 8) as f32 * half_at(b, 0)
        }
        // block_q4_1 { d, m: f16, qs: [u8; 16] }
        GgmlType::Q4_1 => nibble(&b[4..20], i) as f32 * half_at(b, 0) + half_at(b, 2),
        // block_q5_0 { d: f16, qh: u32, qs: [u8; 16] }: bit i of qh is value i's fifth bit.
        GgmlType::Q5_0 => {
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            let q = nibble(&b[6..22], i) | (((qh >> i) & 1) << 4) as i32;
            (q - 16) as f32 * half_at(b, 0)
        }
        // block_q5_1 { d, m: f16, qh: u32, qs: [u8; 16] }
        GgmlType::Q5_1 => {
            let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
            let q = nibble(&b[8..24], i) | (((qh >> i) & 1) << 4) as i32;
            q as f32 * half_at(b, 0) + half_at(b, 2)
        }
        // block_q8_0 { d: f16, qs: [i8; 32] }
        GgmlType::Q8_0 => (b[2 + i] as i8) as f32 * half_at(b, 0),
        // block_q2_K { scales: [u8; 16], qs: [u8; 64], d, dmin: f16 }: value i is in half
        // n = i / 128, shift 2j with j = (i % 128) / 32, and sub-block 8n + 2j + part of 16
        // values, whose 2-bit quants come from qs[32n + 16 part + l].
        GgmlType::Q2K => {
            let (n, j, part, l) = k_quarters(i);
            let sc = b[8 * n + 2 * j + part];
            let q = (b[16 + 32 * n + 16 * part + l] >> (2 * j)) & 3;
            let dl = half_at(b, 80) * (sc & 15) as f32;
            let ml = half_at(b, 82) * (sc >> 4) as f32;
            dl * q as f32 - ml
        }
        // block_q3_K { hmask: [u8; 32], qs: [u8; 64], scales: [u8; 12], d: f16 }: 2-bit
        // quants as in Q2_K, minus 4 where bit 4n + j of hmask[16 part + l] is clear; six-bit
        // scales (minus 32): low nibble of scales[s] (s < 8) or high nibble of scales[s - 8],
        // high two bits from scales[8 + s % 4] at bit 2 (s / 4).
        GgmlType::Q3K => {
            let (n, j, part, l) = k_quarters(i);
            let s = 8 * n + 2 * j + part;
            let low = if s < 8 { b[96 + s] & 15 } else { b[96 + s - 8] >> 4 };
            let high = (b[96 + 8 + s % 4] >> (2 * (s / 4))) & 3;
            let scale = (low | (high << 4)) as i32 - 32;
            let q = ((b[32 + 32 * n + 16 * part + l] >> (2 * j)) & 3) as i32;
            let set = (b[16 * part + l] >> (4 * n + j)) & 1 == 1;
            let dl = half_at(b, 108) * scale as f32;
            dl * (q - if set { 0 } else { 4 }) as f32
        }
        // block_q4_K { d, dmin: f16, scales: [u8; 12], qs: [u8; 128] }: sub-block s = i / 32;
        // value from the low (s even) or high nibble of qs[32 (s / 2) + i % 32].
        GgmlType::Q4K | GgmlType::Q5K => {
            let (s, l) = (i / 32, i % 32);
            let (sc, m) = k_scale_min(&b[4..16], s);
            let mut q = if ty == GgmlType::Q4K { b[16 + 32 * (s / 2) + l] } else { b[48 + 32 * (s / 2) + l] };
            q = if s % 2 == 0 { q & 15 } else { q >> 4 };
            // block_q5_K { d, dmin, scales: [u8; 12], qh: [u8; 32], qs: [u8; 128] }: the fifth
            // bit of value i is bit s of qh[l].
            if ty == GgmlType::Q5K {
                q += ((b[16 + l] >> s) & 1) << 4;
            }
            let d1 = half_at(b, 0) * sc as f32;
            let m1 = half_at(b, 2) * m as f32;
            d1 * q as f32 - m1
        }
        // block_q6_K { ql: [u8; 128], qh: [u8; 64], scales: [i8; 16], d: f16 }: in half n,
        // quarter k = (i % 128) / 32 and l = i % 32: low four bits from ql[64n + l + 32 (k % 2)]
        // (low nibble for k < 2), two high bits from qh[32n + l] at bit 2k; scale
        // scales[8n + l / 16 + 2k]; minus 32.
        GgmlType::Q6K => {
            let (n, k, l) = (i / 128, (i % 128) / 32, i % 32);
            let low = b[64 * n + l + 32 * (k % 2)];
            let low = if k < 2 { low & 15 } else { low >> 4 };
            let high = (b[128 + 32 * n + l] >> (2 * k)) & 3;
            let q = (low | (high << 4)) as i32 - 32;
            let sc = b[192 + 8 * n + l / 16 + 2 * k] as i8;
            half_at(b, 208) * sc as f32 * q as f32
        }
    }
}

/// Value i < 32 of a 32-value block with nibbles `qs`: low nibbles first, then high nibbles.
fn nibble(qs: &[u8], i: usize) -> i32 {
    (if i < 16 { qs[i] & 15 } else { qs[i - 16] >> 4 }) as i32
}

/// Q2_K/Q3_K: value i -> (half n, shift index j, part, l).
fn k_quarters(i: usize) -> (usize, usize, usize, usize) {
    (i / 128, (i % 128) / 32, (i % 32) / 16, i % 16)
}

fn k_scale_min(p: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (p[j] & 63, p[j + 4] & 63)
    } else {
        ((p[j + 4] & 15) | ((p[j - 4] >> 6) << 4), (p[j + 4] >> 4) | ((p[j] >> 6) << 4))
    }
}

/// Every value of `src` (whole blocks of `ty`), in order, into `out` (f32).
pub fn dequantize_reference(ty: GgmlType, src: &[u8], out: &mut [f32]) -> Result<()> {
    let (block_values, block_bytes) = ty.block();
    if !src.len().is_multiple_of(block_bytes) || src.len() / block_bytes * block_values != out.len() {
        bail!("{ty:?} data of {} bytes does not fill {} values", src.len(), out.len());
    }
    for (b, y) in src.chunks_exact(block_bytes).zip(out.chunks_exact_mut(block_values)) {
        for (i, v) in y.iter_mut().enumerate() {
            *v = block_value(ty, b, i);
        }
    }
    Ok(())
}
