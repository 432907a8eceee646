//! The linear kernels against the float64 product of the dequantised weight: every block type,
//! every ISA this CPU has, batch sizes across the tile shapes, teams of 1 and 3 threads, f32
//! and bf16 activations and outputs, an output with stride and offset; and the reference.

mod common;

use common::Rng;
use rust_cpuattn::dequant::reference::dequantize_reference;
use rust_cpuattn::dequant::GgmlType;
use rust_cpuattn::linear::{linear_reference, linear_with, Out, Weight};
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
