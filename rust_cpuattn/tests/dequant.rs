//! The fast dequantiser against the per-element reference on random blocks: every block type,
//! every output type, every ISA this CPU has, serial and parallel, with and without a row
//! permutation; and its argument checks.

mod common;

use common::Rng;
use rust_cpuattn::dequant::reference::dequantize_reference;
use rust_cpuattn::dequant::{dequantize, dequantize_with, GgmlType};
use rust_cpuattn::{bf16, f16, Isa, KvSliceMut};

/// Byte offsets of each type's f16 scales: random bits there could be inf or NaN.
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

/// Random bytes for `num_blocks` blocks, with finite scales (normal, subnormal, zero, both
/// signs) and finite float values.
fn random_blocks(ty: GgmlType, num_blocks: usize, rng: &mut Rng) -> Vec<u8> {
    let (_, block_bytes) = ty.block();
    let mut data: Vec<u8> = (0..num_blocks * block_bytes).map(|_| rng.next_u64() as u8).collect();
    for (k, b) in data.chunks_exact_mut(block_bytes).enumerate() {
        let finite = |rng: &mut Rng| -> f32 {
            match k % 7 {
                0 => 0.0,
                1 => -3.0e-7, // an f16 subnormal
                _ => rng.unit() * 0.05,
            }
        };
        match ty {
            GgmlType::F32 => b.copy_from_slice(&(finite(rng) * 40.0).to_le_bytes()),
            GgmlType::F16 => b.copy_from_slice(&f16::from_f32(finite(rng) * 40.0).to_le_bytes()),
            GgmlType::Bf16 => b.copy_from_slice(&bf16::from_f32(finite(rng) * 40.0).to_le_bytes()),
            _ => {
                for &at in f16_fields(ty) {
                    b[at..at + 2].copy_from_slice(&f16::from_f32(finite(rng)).to_le_bytes());
                }
            }
        }
    }
    data
}

fn reference(ty: GgmlType, src: &[u8], num_values: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; num_values];
    dequantize_reference(ty, src, &mut out).unwrap();
    out
}

/// Rows of `reference` moved to their destination rows.
fn permuted(values: &[f32], row_len: usize, dest_rows: Option<&[i64]>) -> Vec<f32> {
    let Some(dest_rows) = dest_rows else { return values.to_vec() };
    let mut out = vec![f32::NAN; values.len()];
    for (r, row) in values.chunks(row_len).enumerate() {
        let d = dest_rows[r] as usize;
        out[d * row_len..(d + 1) * row_len].copy_from_slice(row);
    }
    out
}

fn isas() -> Vec<Isa> {
    let mut isas = Isa::supported();
    isas.dedup_by_key(|isa| matches!(isa, Isa::Avx512 | Isa::Avx512Bf16));
    isas
}

/// Runs every ISA x serial/parallel x dest_rows case of `ty` into f32, f16 and bf16, and
/// compares bits with the reference (rounded with `half`'s own conversions for f16/bf16).
fn check_type(ty: GgmlType, num_rows: usize, blocks_per_row: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let (block_values, _) = ty.block();
    let row_len = blocks_per_row * block_values;
    let src = random_blocks(ty, num_rows * blocks_per_row, &mut rng);
    let want = reference(ty, &src, num_rows * row_len);
    let mut order: Vec<i64> = (0..num_rows as i64).collect();
    rng.shuffle(&mut order);
    for dest_rows in [None, Some(order.as_slice())] {
        let want = permuted(&want, row_len, dest_rows);
        for isa in isas() {
            for parallel in [false, true] {
                let case = format!("{ty:?} {} parallel={parallel} permuted={}", isa.name(), dest_rows.is_some());
                let mut f32s = vec![f32::NAN; want.len()];
                dequantize_with(ty, &src, KvSliceMut::F32(&mut f32s), row_len, dest_rows, isa, parallel).unwrap();
                let mut f16s = vec![f16::NAN; want.len()];
                dequantize_with(ty, &src, KvSliceMut::F16(&mut f16s), row_len, dest_rows, isa, parallel).unwrap();
                let mut bf16s = vec![bf16::NAN; want.len()];
                dequantize_with(ty, &src, KvSliceMut::Bf16(&mut bf16s), row_len, dest_rows, isa, parallel).unwrap();
                for (i, &w) in want.iter().enumerate() {
                    assert_eq!(f32s[i].to_bits(), w.to_bits(), "{case} f32 [{i}]: {} vs {w}", f32s[i]);
                    assert_eq!(f16s[i].to_bits(), f16::from_f32(w).to_bits(), "{case} f16 [{i}]");
                    assert_eq!(bf16s[i].to_bits(), bf16::from_f32(w).to_bits(), "{case} bf16 [{i}]");
                }
            }
        }
    }
}

// Enough blocks that the parallel path splits tensors into several chunks (2^15 values each)
// and a chunk ends inside a row.
macro_rules! type_test {
    ($name:ident, $ty:expr, $rows:expr, $blocks_per_row:expr) => {
        #[test]
        fn $name() {
            check_type($ty, $rows, $blocks_per_row, $ty as u64 + 1);
        }
    };
}

type_test!(f32_matches_reference, GgmlType::F32, 48, 1000);
type_test!(f16_matches_reference, GgmlType::F16, 48, 1000);
type_test!(bf16_matches_reference, GgmlType::Bf16, 48, 1000);
type_test!(q4_0_matches_reference, GgmlType::Q4_0, 48, 30);
type_test!(q4_1_matches_reference, GgmlType::Q4_1, 48, 30);
type_test!(q5_0_matches_reference, GgmlType::Q5_0, 48, 30);
type_test!(q5_1_matches_reference, GgmlType::Q5_1, 48, 30);
type_test!(q8_0_matches_reference, GgmlType::Q8_0, 48, 30);
type_test!(q2_k_matches_reference, GgmlType::Q2K, 40, 5);
type_test!(q3_k_matches_reference, GgmlType::Q3K, 40, 5);
type_test!(q4_k_matches_reference, GgmlType::Q4K, 40, 5);
type_test!(q5_k_matches_reference, GgmlType::Q5K, 40, 5);
type_test!(q6_k_matches_reference, GgmlType::Q6K, 40, 5);

/// A few hand-computed values pin the reference itself to the format.
#[test]
fn reference_matches_hand_computed_blocks() {
    // Q4_0: d = 0.5; qs[0] = 0x1F: value 0 = (15 - 8) * 0.5, value 16 = (1 - 8) * 0.5.
    let mut b = vec![0u8; 18];
    b[..2].copy_from_slice(&f16::from_f32(0.5).to_le_bytes());
    b[2] = 0x1F;
    let y = reference(GgmlType::Q4_0, &b, 32);
    assert_eq!((y[0], y[16], y[1]), (3.5, -3.5, -4.0));
    // Q8_0: d = 2; qs[3] = -5.
    let mut b = vec![0u8; 34];
    b[..2].copy_from_slice(&f16::from_f32(2.0).to_le_bytes());
    b[2 + 3] = (-5i8) as u8;
    assert_eq!(reference(GgmlType::Q8_0, &b, 32)[3], -10.0);
    // Q6_K: d = 1, scales[0] = 3, ql[0] = 0x21, qh[0] = 0b10: value 0 = 3 * ((1 | 2 << 4) - 32),
    // value 64 = 3 * ((2 | 0 << 4) - 32).
    let mut b = vec![0u8; 210];
    b[208..210].copy_from_slice(&f16::from_f32(1.0).to_le_bytes());
    b[192] = 3;
    b[196] = 1; // the scale of value 64 (quarter 2)
    b[0] = 0x21;
    b[128] = 0b10;
    let y = reference(GgmlType::Q6K, &b, 256);
    assert_eq!((y[0], y[64]), (3.0 * (33 - 32) as f32, (2 - 32) as f32));
}

#[test]
fn bad_arguments_are_errors() {
    let src = vec![0u8; 4 * 18]; // 4 Q4_0 blocks = 128 values
    let mut out = vec![0f32; 128];
    let mut call = |src: &[u8], n: usize, row_len: usize, rows: Option<&[i64]>| {
        dequantize(GgmlType::Q4_0, src, KvSliceMut::F32(&mut out[..n]), row_len, rows).unwrap_err().to_string()
    };
    assert!(call(&src[..70], 128, 64, None).contains("does not fill"));
    assert!(call(&src, 96, 32, None).contains("does not fill"));
    assert!(call(&src, 128, 48, None).contains("multiple"));
    assert!(call(&src, 128, 0, None).contains("multiple"));
    assert!(call(&src, 96, 64, None).contains("whole number of rows"));
    assert!(call(&src, 128, 64, Some(&[0])).contains("entries"));
    assert!(call(&src, 128, 64, Some(&[1, 1])).contains("permutation"));
    assert!(call(&src, 128, 64, Some(&[0, 2])).contains("permutation"));
    assert!(call(&src, 128, 64, Some(&[0, -1])).contains("permutation"));
    assert!(GgmlType::from_id(9).unwrap_err().to_string().contains("no dequantisation kernel"));
    assert_eq!(GgmlType::from_id(12).unwrap(), GgmlType::Q4K);
    assert!(dequantize(GgmlType::Q4_0, &src, KvSliceMut::F32(&mut out), 64, Some(&[1, 0])).is_ok());
}
