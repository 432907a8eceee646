//! Row-wise layer operations around the projections of a decoder layer (RMSNorm, residual
//! add + RMSNorm, rotary embedding, SiLU-gated product), each one pass over its rows.
//!
//! They exist because the CPU device runs many small rows: one call here replaces the chain
//! of small tensor operations a framework would dispatch one by one. Arithmetic is f32;
//! every stored value is rounded once to its element type, at the same points as the
//! unfused formulation (`x.float()` ... `.to(dtype)`), so results match it to f32 rounding.

use crate::dtype::KvElem;
use crate::error::{bail, Result};

fn check_rows(name: &str, len: usize, width: usize) -> Result<usize> {
    if width == 0 || len % width != 0 {
        bail!("{name} has {len} elements, not a whole number of rows of {width}");
    }
    Ok(len / width)
}

/// 1 / sqrt(mean(row^2) + eps), with 8 running partial sums (they vectorize).
#[inline(always)]
fn inv_rms<T: KvElem>(row: &[T], eps: f32) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = row.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|v| v.to_f32() * v.to_f32()).sum();
    for chunk in chunks {
        for (a, v) in acc.iter_mut().zip(chunk) {
            *a += v.to_f32() * v.to_f32();
        }
    }
    let sum = acc.iter().sum::<f32>() + tail;
    1.0 / (sum / row.len() as f32 + eps).sqrt()
}

/// e^x to about 1 ulp for x in [-87, 88] (clamped outside): x = n ln2 + r, |r| <= ln2 / 2,
/// e^r by its Taylor series to r^7, 2^n built in the exponent bits. Branch-free, so loops
/// over it vectorize.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer in the low bits
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * 0.693_145_75 - n * 1.428_606_8e-6; // ln 2 split in two for an exact product
    let p = 1.0
        + r * (1.0
            + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r / 5040.0))))));
    let n_int = t.to_bits().wrapping_sub(MAGIC.to_bits()) as i32;
    p * f32::from_bits(((n_int + 127) as u32) << 23)
}

/// Defines `$name`, which runs the `#[inline(always)]` loop `$body` compiled for AVX2 when
/// the CPU has it, else for the baseline: the same arithmetic (no contraction into FMAs), so
/// the same results on both paths.
macro_rules! widest {
    (fn $name:ident<$T:ident>($($arg:ident: $ty:ty),*) = $body:ident) => {
        fn $name<$T: KvElem>($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2")]
                unsafe fn wide<$T: KvElem>($($arg: $ty),*) {
                    $body::<$T>($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU supports AVX2 (checked just above).
                    return unsafe { wide::<$T>($($arg),*) };
                }
            }
            $body::<$T>($($arg),*)
        }
    };
}

#[inline(always)]
fn rms_norm_rows<T: KvElem>(x: &[T], weight: &[f32], eps: f32, out: &mut [T]) {
    let width = weight.len();
    for (xs, os) in x.chunks_exact(width).zip(out.chunks_exact_mut(width)) {
        let scale = inv_rms(xs, eps);
        for ((o, v), w) in os.iter_mut().zip(xs).zip(weight) {
            *o = T::from_f32(v.to_f32() * scale * w);
        }
    }
}
widest!(fn rms_norm_any<T>(x: &[T], weight: &[f32], eps: f32, out: &mut [T]) = rms_norm_rows);

#[inline(always)]
fn add_rows<T: KvElem>(residual: &mut [T], x: &[T]) {
    for (r, v) in residual.iter_mut().zip(x) {
        *r = T::from_f32(r.to_f32() + v.to_f32());
    }
}
widest!(fn add_any<T>(residual: &mut [T], x: &[T]) = add_rows);

#[inline(always)]
fn rope_rows<T: KvElem>(x: &mut [T], row_width: usize, rotated: usize, half: usize, cos: &[f32], sin: &[f32]) {
    for ((row, c), s) in x.chunks_exact_mut(row_width).zip(cos.chunks_exact(half)).zip(sin.chunks_exact(half)) {
        for head in row[..rotated].chunks_exact_mut(2 * half) {
            let (x1, x2) = head.split_at_mut(half);
            for (((p, q), c), s) in x1.iter_mut().zip(x2.iter_mut()).zip(c).zip(s) {
                let (a, b) = (p.to_f32(), q.to_f32());
                *p = T::from_f32(a * c - b * s);
                *q = T::from_f32(b * c + a * s);
            }
        }
    }
}
widest!(fn rope_any<T>(x: &mut [T], row_width: usize, rotated: usize, half: usize, cos: &[f32], sin: &[f32]) = rope_rows);

#[inline(always)]
fn silu_mul_rows<T: KvElem>(gate_up: &[T], out_width: usize, out: &mut [T]) {
    for (row, os) in gate_up.chunks_exact(2 * out_width).zip(out.chunks_exact_mut(out_width)) {
        let (gate, up) = row.split_at(out_width);
        for ((o, g), u) in os.iter_mut().zip(gate).zip(up) {
            let g = g.to_f32();
            let silu = T::from_f32(g / (1.0 + exp_f32(-g))).to_f32();
            *o = T::from_f32(silu * u.to_f32());
        }
    }
}
widest!(fn silu_mul_any<T>(gate_up: &[T], out_width: usize, out: &mut [T]) = silu_mul_rows);

/// The arguments of an RMSNorm over `len` elements: whole rows of `weight_len`, `out` as long,
/// `eps` >= 0.
fn check_norm(len: usize, weight_len: usize, eps: f32, out_len: usize) -> Result<()> {
    check_rows("x", len, weight_len)?;
    if out_len != len {
        bail!("out has {out_len} elements, x has {len}");
    }
    if !(eps >= 0.0) {
        bail!("eps must be >= 0, got {eps}");
    }
    Ok(())
}

/// `out[t] = x[t] * rsqrt(mean(x[t]^2) + eps) * weight` for each row t of width `weight.len()`.
pub fn rms_norm<T: KvElem>(x: &[T], weight: &[f32], eps: f32, out: &mut [T]) -> Result<()> {
    check_norm(x.len(), weight.len(), eps, out.len())?;
    rms_norm_any(x, weight, eps, out);
    Ok(())
}

/// `residual[t] += x[t]` (rounded to the element type), then `out[t] = rms_norm(residual[t])`.
/// Every argument is checked before `residual` is written: a rejected call changes nothing.
pub fn add_rms_norm<T: KvElem>(residual: &mut [T], x: &[T], weight: &[f32], eps: f32, out: &mut [T]) -> Result<()> {
    if residual.len() != x.len() {
        bail!("residual has {} elements, x has {}", residual.len(), x.len());
    }
    check_norm(x.len(), weight.len(), eps, out.len())?;
    add_any(residual, x);
    rms_norm_any(residual, weight, eps, out);
    Ok(())
}

/// `residual[t] += x[t]`, rounded to the element type (a residual connection).
pub fn add<T: KvElem>(residual: &mut [T], x: &[T]) -> Result<()> {
    if residual.len() != x.len() {
        bail!("residual has {} elements, x has {}", residual.len(), x.len());
    }
    add_any(residual, x);
    Ok(())
}

/// Rotates, in place, the first `num_heads` heads of each row of `x` (rows of `row_width`
/// elements, heads of `head_dim = 2 * half` contiguous elements) by the row's angles:
/// `(x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin)` over the two halves of each head, with
/// `cos`, `sin` of shape `[rows, half]` (the "rotate half" convention).
pub fn rope<T: KvElem>(x: &mut [T], row_width: usize, num_heads: usize, cos: &[f32], sin: &[f32]) -> Result<()> {
    let rows = check_rows("x", x.len(), row_width)?;
    if cos.len() != sin.len() || rows == 0 && !cos.is_empty() || rows > 0 && cos.len() % rows != 0 {
        bail!("cos ({}) and sin ({}) must both be [rows={rows}, head_dim/2]", cos.len(), sin.len());
    }
    if rows == 0 {
        return Ok(());
    }
    let half = cos.len() / rows;
    if half == 0 || num_heads * 2 * half > row_width {
        bail!("{num_heads} heads of head_dim {} do not fit rows of {row_width}", 2 * half);
    }
    rope_any(x, row_width, num_heads * 2 * half, half, cos, sin);
    Ok(())
}

/// `out[t] = silu(gate[t]) * up[t]` for rows of `out_width` outputs, where each row of
/// `gate_up` is `[gate | up]` (`2 * out_width`); the SiLU is rounded to the element type before
/// the product, as an unfused `silu(gate) * up` is.
pub fn silu_mul<T: KvElem>(gate_up: &[T], out_width: usize, out: &mut [T]) -> Result<()> {
    check_rows("out", out.len(), out_width)?;
    if gate_up.len() != 2 * out.len() {
        bail!("gate_up has {} elements, expected {} ([rows, 2 * {out_width}])", gate_up.len(), 2 * out.len());
    }
    silu_mul_any(gate_up, out_width, out);
    Ok(())
}
