//! The linear kernels against the float64 product of the dequantised weight: every block type,
//! every ISA this CPU has, batch sizes across the tile shapes, teams of 1 and 3 threads, f32
//! and bf16 activations and outputs, an output with stride and offset; and the reference.

mod common;

use common::Rng;
use rust_cpuattn::dequant::reference::dequantize_reference;
use rust_cpuattn::dequant::GgmlType;
use rust_cpuattn::linear::q8::Q8Acts;
use rust_cpuattn::linear::{linear_arith_with, linear_reference, linear_with, Arith, Out, Weight};
use rust_cpuattn::team::Team;
use rust_cpuattn::{bf16, f16, Isa, KvElem, KvSlice, KvSliceMut};

fn f16_fields(ty: GgmlType) -> &'static [usize] {
    match ty {
        GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q2K => &[80, 82],
        GgmlType::Q3K => &[108],
        GgmlType::Q6K => &[208],
        GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 => &[],
    }
}

/// Random blocks with finite scales (including zero and an f16 subnormal) and finite values.
fn random_weight(ty: GgmlType, num_blocks: usize, rng: &mut Rng) -> Vec<u8> {
    let (_, block_bytes) = ty.block();
    let mut data: Vec<u8> = (0..num_blocks * block_bytes).map(|_| rng.next_u64() as u8).collect();
    for (k, b) in data.chunks_exact_mut(block_bytes).enumerate() {
        let scale = |rng: &mut Rng| -> f32 {
            match k % 11 {
                0 => 0.0,
                1 => -3.0e-7,
                _ => rng.unit() * 0.05,
            }
        };
        match ty {
            GgmlType::F32 => b.copy_from_slice(&rng.unit().to_le_bytes()),
            GgmlType::F16 => b.copy_from_slice(&f16::from_f32(rng.unit()).to_le_bytes()),
            GgmlType::Bf16 => b.copy_from_slice(&bf16::from_f32(rng.unit()).to_le_bytes()),
            _ => {
                for &at in f16_fields(ty) {
                    b[at..at + 2].copy_from_slice(&f16::from_f32(scale(rng)).to_le_bytes());
                }
            }
        }
    }
    data
}

fn isas() -> Vec<Isa> {
    let mut isas = Isa::supported();
    isas.dedup_by_key(|isa| matches!(isa, Isa::Avx512 | Isa::Avx512Bf16));
    isas
}

/// The float64 product and, per output, the bound on an f32 evaluation's error:
/// 2 (K + 8) u * sum_i (|w_i| + max|w|) |x_i|. The max|w| term covers the factored min of
/// Q4_1-style blocks (|m| is the value of a zero quant, at most the block's largest |w|).
fn oracle(values: &[f32], x: &[f32], rows: usize, cols: usize) -> (Vec<f64>, Vec<f64>) {
    let m = x.len() / cols;
    let max_w = values.iter().fold(0f64, |a, &v| a.max(v.abs() as f64));
    let u = f32::EPSILON as f64 / 2.0;
    let mut y = vec![0f64; m * rows];
    let mut tol = vec![0f64; m * rows];
    for mi in 0..m {
        for n in 0..rows {
            let (mut s, mut a) = (0f64, 0f64);
            for k in 0..cols {
                let (wv, xv) = (values[n * cols + k] as f64, x[mi * cols + k] as f64);
                s += wv * xv;
                a += (wv.abs() + max_w) * xv.abs();
            }
            y[mi * rows + n] = s;
            tol[mi * rows + n] = 2.0 * (cols as f64 + 8.0) * u * a + 1e-30;
        }
    }
    (y, tol)
}

fn check_outputs<T: KvElem>(got: &[T], stride: usize, offset: usize, want: &[f64], tol: &[f64], rows: usize, what: &str) {
    let out_round = match T::DTYPE {
        rust_cpuattn::KvDtype::F32 => 0.0,
        _ => 2f64.powi(-8),
    };
    for (i, (&w, &t)) in want.iter().zip(tol).enumerate() {
        let (mi, n) = (i / rows, i % rows);
        let g = got[mi * stride + offset + n].to_f32() as f64;
        let bound = t + out_round * (w.abs() + t);
        assert!(g.is_finite() && (g - w).abs() <= bound, "{what}: row {mi} col {n}: got {g}, want {w} (bound {bound})");
    }
}

fn run_case(ty: GgmlType, rows: usize, cols: usize, m: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let (bv, _) = ty.block();
    let data = random_weight(ty, rows * cols / bv, &mut rng);
    let w = Weight::new(ty, &data, rows, cols).unwrap();
    let mut values = vec![0f32; rows * cols];
    dequantize_reference(ty, &data, &mut values).unwrap();
    let x: Vec<f32> = (0..m * cols).map(|_| rng.unit() * 2.0).collect();
    let xb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
    let xbf: Vec<f32> = xb.iter().map(|v| v.to_f32()).collect();
    let (want, tol) = oracle(&values, &x, rows, cols);
    let (want_b, tol_b) = oracle(&values, &xbf, rows, cols);
    let (stride, offset) = (rows + 5, 3);
    let teams = [None, Some(Team::new(3).unwrap())];
    for isa in isas() {
        for team in &teams {
            let what = format!("{ty:?} [{rows}, {cols}] m {m} {} team {:?}", isa.name(), team.as_ref().map(|t| t.num_threads()));
            let mut y = vec![f32::NAN; m * stride];
            let out = Out { y: KvSliceMut::F32(&mut y), stride, offset };
            linear_with(&w, KvSlice::F32(&x), out, isa, team.as_ref()).unwrap();
            check_outputs(&y, stride, offset, &want, &tol, rows, &what);
            // Columns outside [offset, offset + rows) are never written.
            for mi in 0..m {
                assert!(y[mi * stride..mi * stride + offset].iter().all(|v| v.is_nan()), "{what}: wrote before offset");
                assert!(y[mi * stride + offset + rows..(mi + 1) * stride].iter().all(|v| v.is_nan()), "{what}: wrote past rows");
            }
            let mut yb = vec![bf16::from_f32(0.0); m * rows];
            let out = Out { y: KvSliceMut::Bf16(&mut yb), stride: rows, offset: 0 };
            linear_with(&w, KvSlice::Bf16(&xb), out, isa, team.as_ref()).unwrap();
            check_outputs(&yb, rows, 0, &want_b, &tol_b, rows, &format!("{what} bf16"));
        }
    }
    let mut y = vec![0f32; m * rows];
    linear_reference(&w, KvSlice::F32(&x), Out { y: KvSliceMut::F32(&mut y), stride: rows, offset: 0 }).unwrap();
    check_outputs(&y, rows, 0, &want, &tol, rows, &format!("{ty:?} reference"));
}

const TYPES: [GgmlType; 13] = GgmlType::ALL;

#[test]
fn every_type_matches_float64_across_tiles() {
    for (i, ty) in TYPES.into_iter().enumerate() {
        let (bv, _) = ty.block();
        let cols = if bv == 256 { 512 } else { 96 };
        for (j, m) in [1, 2, 3, 4, 5, 9].into_iter().enumerate() {
            // Row counts with every remainder of the 4- and 2-row tiles.
            for rows in [1, 7, 37] {
                run_case(ty, rows, cols, m, (i * 100 + j * 10 + rows) as u64);
            }
        }
    }
}

#[test]
fn float_rows_with_a_partial_block() {
    for ty in [GgmlType::F32, GgmlType::F16, GgmlType::Bf16] {
        for cols in [1, 31, 33, 70] {
            run_case(ty, 9, cols, 3, cols as u64);
        }
    }
}

#[test]
fn wide_rows_and_many_items() {
    // Enough rows that a team splits them into several items; K of a real projection.
    for ty in [GgmlType::Q4_1, GgmlType::Q8_0, GgmlType::Q4K, GgmlType::Q6K, GgmlType::Bf16] {
        run_case(ty, 300, 1536, 2, 7);
        run_case(ty, 300, 1536, 16, 8);
    }
}

#[test]
fn results_do_not_depend_on_the_team() {
    let mut rng = Rng::new(3);
    let data = random_weight(GgmlType::Q4_1, 512 * 18, &mut rng);
    let w = Weight::new(GgmlType::Q4_1, &data, 512, 576).unwrap();
    let x: Vec<f32> = (0..3 * 576).map(|_| rng.unit()).collect();
    let isa = Isa::selected().unwrap();
    let mut results = Vec::new();
    for threads in [1, 2, 3, 7] {
        let team = Team::new(threads).unwrap();
        let mut y = vec![0f32; 3 * 512];
        linear_with(&w, KvSlice::F32(&x), Out { y: KvSliceMut::F32(&mut y), stride: 512, offset: 0 }, isa, Some(&team))
            .unwrap();
        results.push(y.iter().map(|v| v.to_bits()).collect::<Vec<_>>());
    }
    assert!(results.windows(2).all(|p| p[0] == p[1]));
}

#[test]
fn bad_arguments_are_errors() {
    let data = vec![0u8; 20 * 2];
    assert!(Weight::new(GgmlType::Q4_1, &data, 2, 33).is_err());
    assert!(Weight::new(GgmlType::Q4_1, &data, 3, 32).is_err());
    assert!(Weight::new(GgmlType::Q4_1, &data, 1, 0).is_err());
    let w = Weight { ty: GgmlType::Q4_1, data: &data[..30], rows: 2, cols: 32 };
    let x = vec![0f32; 32];
    let mut y = vec![0f32; 2];
    let r = linear_with(&w, KvSlice::F32(&x), Out { y: KvSliceMut::F32(&mut y), stride: 2, offset: 0 }, Isa::Scalar, None);
    assert!(r.is_err(), "a weight built without `new` is still checked");
    let unsupported = Isa::ALL.into_iter().find(|i| !i.is_supported());
    if let Some(isa) = unsupported {
        let w = Weight::new(GgmlType::Q4_1, &data, 2, 32).unwrap();
        let r = linear_with(&w, KvSlice::F32(&x), Out { y: KvSliceMut::F32(&mut y), stride: 2, offset: 0 }, isa, None);
        assert!(r.is_err());
    }
}

// ---- the integer-dot path ------------------------------------------------------------------

/// The integer-dot oracle, from the stored bytes: per output, the float64 sum over blocks of
/// `dw * d * (exact integer dot)` (+ `mw * sum x` for Q4_1) with x quantised by `Q8Acts`, and
/// the bound on an f32 evaluation of it; plus the documented bound of its distance from the
/// float64 product of the dequantised weight.
fn int8_oracle(ty: GgmlType, data: &[u8], rows: usize, cols: usize, x: &[f32]) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let mut acts = Q8Acts::default();
    acts.quantize(x, cols);
    let (nb, bytes) = (cols / 32, ty.block().1);
    let half = |b: &[u8]| f16::from_le_bytes([b[0], b[1]]).to_f32() as f64;
    let u = f32::EPSILON as f64 / 2.0;
    let m = x.len() / cols;
    let (mut y, mut tol, mut qerr) = (vec![0f64; m * rows], vec![0f64; m * rows], vec![0f64; m * rows]);
    for t in 0..m {
        for n in 0..rows {
            let (mut s, mut a, mut e) = (0f64, 0f64, 0f64);
            for b in 0..nb {
                let blk = &data[(n * nb + b) * bytes..][..bytes];
                let (dw, mw, qw): (f64, f64, Vec<i64>) = match ty {
                    GgmlType::Q4_0 => (half(&blk[0..2]), 0.0, (0..32).map(|j| ((blk[2 + j % 16] >> (4 * (j / 16))) & 15) as i64 - 8).collect()),
                    GgmlType::Q4_1 => (half(&blk[0..2]), half(&blk[2..4]), (0..32).map(|j| ((blk[4 + j % 16] >> (4 * (j / 16))) & 15) as i64).collect()),
                    _ => (half(&blk[0..2]), 0.0, (0..32).map(|j| blk[2 + j] as i8 as i64).collect()),
                };
                let xq = &acts.q[t * cols + 32 * b..][..32];
                let idot: i64 = qw.iter().zip(xq).map(|(&w, &q)| w * q as i64).sum();
                let xb = &x[t * cols + 32 * b..][..32];
                let sum_x: f64 = xb.iter().map(|&v| v as f64).sum();
                let d = acts.d[t * nb + b] as f64;
                let term = dw * d * idot as f64;
                let min_term = mw * sum_x;
                s += term + min_term;
                // The kernel's lanes hold partial integer sums (for Q4_0 of the unsigned
                // nibbles, less the quant sum), which can exceed the block's total.
                let lanes: i64 = qw.iter().zip(xq).map(|(&w, &q)| (w.abs() + 16) * (q as i64).abs()).sum();
                a += (dw * d).abs() * lanes as f64 + min_term.abs() + mw.abs() * xb.iter().map(|v| v.abs() as f64).sum::<f64>();
                let amax = xb.iter().fold(0f64, |z, v| z.max(v.abs() as f64));
                e += amax / 254.0 * qw.iter().map(|&w| (dw * w as f64).abs()).sum::<f64>();
            }
            y[t * rows + n] = s;
            tol[t * rows + n] = 4.0 * (nb as f64 + 16.0) * u * a + 1e-30;
            qerr[t * rows + n] = e;
        }
    }
    (y, tol, qerr)
}

fn run_int8_case(ty: GgmlType, rows: usize, cols: usize, m: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let data = random_weight(ty, rows * cols / 32, &mut rng);
    let w = Weight::new(ty, &data, rows, cols).unwrap();
    let x: Vec<f32> = (0..m * cols).map(|_| rng.unit() * 2.0).collect();
    let (want, tol, qerr) = int8_oracle(ty, &data, rows, cols, &x);
    let mut values = vec![0f32; rows * cols];
    dequantize_reference(ty, &data, &mut values).unwrap();
    let (exact, exact_tol) = oracle(&values, &x, rows, cols);
    let (stride, offset) = (rows + 3, 2);
    let teams = [None, Some(Team::new(3).unwrap())];
    for isa in isas() {
        for team in &teams {
            let what = format!("int8 {ty:?} [{rows}, {cols}] m {m} {} team {:?}", isa.name(), team.as_ref().map(|t| t.num_threads()));
            let mut y = vec![f32::NAN; m * stride];
            let out = Out { y: KvSliceMut::F32(&mut y), stride, offset };
            linear_arith_with(&w, KvSlice::F32(&x), out, isa, team.as_ref(), Arith::Int8).unwrap();
            check_outputs(&y, stride, offset, &want, &tol, rows, &what);
            for mi in 0..m {
                assert!(y[mi * stride..mi * stride + offset].iter().all(|v| v.is_nan()), "{what}: wrote before offset");
                assert!(y[mi * stride + offset + rows..(mi + 1) * stride].iter().all(|v| v.is_nan()), "{what}: wrote past rows");
            }
            // The documented error against the exact product.
            let bound: Vec<f64> = qerr.iter().zip(&tol).zip(&exact_tol).map(|((q, t), e)| q + t + e).collect();
            check_outputs(&y, stride, offset, &exact, &bound, rows, &format!("{what} vs float64"));
        }
    }
}

#[test]
fn int8_path_matches_the_integer_reference() {
    for (i, ty) in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0].into_iter().enumerate() {
        for (j, m) in [1, 2, 3, 4, 5, 9, 16].into_iter().enumerate() {
            for rows in [1, 7, 37] {
                run_int8_case(ty, rows, 96, m, (1000 + i * 100 + j * 10 + rows) as u64);
            }
        }
        run_int8_case(ty, 300, 1536, 16, 11);
        // one activation row over many blocks (a decode stream), block counts odd and even
        for (k, cols) in [256, 576, 1536, 32 * 17].into_iter().enumerate() {
            run_int8_case(ty, 37, cols, 1, (2000 + i * 100 + k) as u64);
        }
    }
}

#[test]
fn int8_extreme_weights_do_not_saturate() {
    // Q8_0 quants of -128 and 127 against activation quants of +-127: the largest pair sums.
    for (fill, xv) in [(0x80u8, 1.0f32), (0x80, -1.0), (0x7f, 1.0), (0x7f, -1.0)] {
        let mut data = vec![fill; 34 * 4];
        for b in data.chunks_exact_mut(34) {
            b[0..2].copy_from_slice(&f16::from_f32(1.0).to_le_bytes());
        }
        let w = Weight::new(GgmlType::Q8_0, &data, 1, 128).unwrap();
        let x = vec![xv; 128];
        let want = (fill as i8 as f64) * xv as f64 * 128.0;
        for isa in isas() {
            let mut y = vec![0f32; 1];
            linear_arith_with(&w, KvSlice::F32(&x), Out { y: KvSliceMut::F32(&mut y), stride: 1, offset: 0 }, isa, None, Arith::Int8)
                .unwrap();
            assert_eq!(y[0] as f64, want, "{}", isa.name());
        }
    }
}

#[test]
fn int8_non_finite_activations_reach_the_output() {
    let mut rng = Rng::new(5);
    let data = random_weight(GgmlType::Q4_1, 8 * 3, &mut rng);
    let w = Weight::new(GgmlType::Q4_1, &data, 8, 96).unwrap();
    let mut x: Vec<f32> = (0..96).map(|_| rng.unit()).collect();
    x[40] = f32::INFINITY;
    for isa in isas() {
        let mut y = vec![0f32; 8];
        linear_arith_with(&w, KvSlice::F32(&x), Out { y: KvSliceMut::F32(&mut y), stride: 8, offset: 0 }, isa, None, Arith::Int8).unwrap();
        assert!(y.iter().all(|v| !v.is_finite()), "{}: {y:?}", isa.name());
    }
}
