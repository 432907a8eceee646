//! Row operations against float64 on random rows, in f32 and bf16, and their argument checks.

mod common;

use common::Rng;
use rust_cpuattn::bf16;
use rust_cpuattn::rowops::{add_rms_norm, rms_norm, rope, silu_mul};

fn randn(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.unit() * 3.0).collect()
}

fn rms_ref(x: &[f64], w: &[f32], eps: f64) -> Vec<f64> {
    let width = w.len();
    x.chunks(width)
        .flat_map(|row| {
            let scale = 1.0 / (row.iter().map(|v| v * v).sum::<f64>() / width as f64 + eps).sqrt();
            row.iter().zip(w).map(move |(v, &wi)| v * scale * wi as f64).collect::<Vec<_>>()
        })
        .collect()
}

fn assert_close(got: impl Iterator<Item = f64>, want: &[f64], tol: f64, what: &str) {
    for (i, (g, w)) in got.zip(want).enumerate() {
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "{what}[{i}]: {g} vs {w}");
    }
}

#[test]
fn rms_norm_and_add_rms_norm_match_f64() {
    let mut rng = Rng::new(7);
    for (rows, width) in [(1, 576), (5, 64), (33, 1000)] {
        let x = randn(&mut rng, rows * width);
        let r = randn(&mut rng, rows * width);
        let w = randn(&mut rng, width);
        let mut out = vec![0f32; x.len()];
        rms_norm(&x, &w, 1e-5, &mut out).unwrap();
        let xd: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        assert_close(out.iter().map(|&v| v as f64), &rms_ref(&xd, &w, 1e-5), 1e-5, "rms_norm f32");

        let mut residual = r.clone();
        add_rms_norm(&mut residual, &x, &w, 1e-6, &mut out).unwrap();
        let sum: Vec<f64> = r.iter().zip(&x).map(|(&a, &b)| (a + b) as f64).collect();
        assert_close(residual.iter().map(|&v| v as f64), &sum, 1e-7, "residual f32");
        assert_close(out.iter().map(|&v| v as f64), &rms_ref(&sum, &w, 1e-6), 1e-5, "add_rms_norm f32");

        // bf16: the residual is rounded once, the output once (relative error <= 2^-8 each).
        let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
        let mut rb: Vec<bf16> = r.iter().map(|&v| bf16::from_f32(v)).collect();
        let sum_b: Vec<f64> =
            rb.iter().zip(&xb).map(|(a, b)| bf16::from_f32(a.to_f32() + b.to_f32()).to_f32() as f64).collect();
        let mut out_b = vec![bf16::ZERO; x.len()];
        add_rms_norm(&mut rb, &xb, &w, 1e-6, &mut out_b).unwrap();
        assert!(rb.iter().zip(&sum_b).all(|(g, &w)| g.to_f32() as f64 == w), "bf16 residual is the rounded sum");
        assert_close(
            out_b.iter().map(|v| v.to_f32() as f64),
            &rms_ref(&sum_b, &w, 1e-6),
            1.0 / 128.0,
            "add_rms_norm bf16",
        );
    }
}

#[test]
fn rope_rotates_the_leading_heads_only() {
    let mut rng = Rng::new(11);
    let (rows, heads, rotated, head_dim) = (7, 5, 4, 64);
    let width = heads * head_dim + 3; // trailing columns (such as V) stay untouched
    let x = randn(&mut rng, rows * width);
    let angles: Vec<f64> = (0..rows * head_dim / 2).map(|i| (i as f64) * 0.37).collect();
    let cos: Vec<f32> = angles.iter().map(|a| a.cos() as f32).collect();
    let sin: Vec<f32> = angles.iter().map(|a| a.sin() as f32).collect();
    let mut got = x.clone();
    rope(&mut got, width, rotated, &cos, &sin).unwrap();
    let half = head_dim / 2;
    for t in 0..rows {
        for col in 0..width {
            let i = t * width + col;
            let want = if col < rotated * head_dim {
                let (h, d) = (col / head_dim, col % head_dim);
                let base = t * width + h * head_dim;
                let (c, s) = (cos[t * half + d % half] as f64, sin[t * half + d % half] as f64);
                let (x1, x2) = (x[base + d % half] as f64, x[base + half + d % half] as f64);
                if d < half {
                    x1 * c - x2 * s
                } else {
                    x2 * c + x1 * s
                }
            } else {
                x[i] as f64
            };
            assert!(
                (got[i] as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()),
                "row {t} col {col}: {} vs {want}",
                got[i]
            );
        }
    }
}

#[test]
fn silu_mul_matches_f64() {
    let mut rng = Rng::new(5);
    let (rows, width) = (9, 1536);
    let mut gu = randn(&mut rng, rows * 2 * width);
    // Gates far in both tails: e^-g overflows or vanishes there, the product must not.
    for (i, g) in [-1000.0, -90.0, -30.0, 30.0, 90.0, 1000.0].into_iter().enumerate() {
        gu[i] = g;
    }
    let mut out = vec![0f32; rows * width];
    silu_mul(&gu, width, &mut out).unwrap();
    let want: Vec<f64> = (0..rows * width)
        .map(|i| {
            let (t, c) = (i / width, i % width);
            let g = gu[t * 2 * width + c] as f64;
            let silu = if g < -700.0 { 0.0 } else { g / (1.0 + (-g).exp()) };
            silu * gu[t * 2 * width + width + c] as f64
        })
        .collect();
    assert!(out.iter().all(|v| v.is_finite()));
    assert_close(out.iter().map(|&v| v as f64), &want, 1e-6, "silu_mul");
}

#[test]
fn bad_shapes_are_errors() {
    let w = vec![1f32; 8];
    let mut out = vec![0f32; 16];
    assert!(rms_norm(&[0f32; 12], &w, 1e-5, &mut out[..12]).is_err()); // not whole rows
    assert!(rms_norm(&[0f32; 16], &w, 1e-5, &mut out[..8]).is_err()); // out too small
    assert!(rms_norm(&[0f32; 16], &w, -1.0, &mut out).is_err());
    assert!(rms_norm(&[0f32; 16], &w, f32::NAN, &mut out).is_err());
    assert!(add_rms_norm(&mut [0f32; 8], &[0f32; 16], &w, 1e-5, &mut out).is_err());
    let mut residual = [1f32; 16];
    assert!(add_rms_norm(&mut residual, &[1f32; 16], &w, 1e-5, &mut out[..8]).is_err());
    assert!(add_rms_norm(&mut residual, &[1f32; 16], &w, -1.0, &mut out).is_err());
    assert_eq!(residual, [1f32; 16], "a rejected call leaves the residual as it was");
    let mut x = vec![0f32; 2 * 64];
    assert!(rope(&mut x, 64, 2, &[1.0; 64], &[0.0; 64]).is_err()); // 2 heads of 64 in rows of 64
    assert!(rope(&mut x, 64, 1, &[1.0; 64], &[0.0; 63]).is_err());
    assert!(rope(&mut x, 64, 1, &[1.0; 3], &[0.0; 3]).is_err());
    assert!(silu_mul(&[0f32; 10], 4, &mut [0f32; 4]).is_err());
    assert!(silu_mul(&[0f32; 8], 3, &mut [0f32; 4]).is_err());
    assert!(silu_mul(&[0f32; 8], 0, &mut [0f32; 4]).is_err());
}

#[test]
fn bf16_rounding_matches_the_half_crate() {
    let mut rng = Rng::new(3);
    let specials =
        [0.0f32, -0.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN, f32::MAX, f32::MIN_POSITIVE, 1e-40];
    let randoms = (0..200_000).map(|_| f32::from_bits(rng.next_u64() as u32));
    for x in specials.into_iter().chain(randoms) {
        let ours = <bf16 as rust_cpuattn::KvElem>::from_f32(x);
        assert_eq!(ours.to_bits(), bf16::from_f32(x).to_bits(), "{x:e} ({:#010x})", x.to_bits());
    }
}
