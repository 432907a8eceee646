//! The reference kernel and the store against the float64 gather oracle; argument validation.

mod common;

use common::{max_abs_diff, Problem, Spec};
use rust_cpuattn::{paged_decode_attention_reference, store_new_rows, KvDtype, KvSlice};

const DTYPES: [KvDtype; 3] = [KvDtype::F32, KvDtype::F16, KvDtype::Bf16];

#[test]
fn reference_matches_oracle() {
    let mut seed = 1;
    for dtype in DTYPES {
        for (hq, hkv) in [(4, 4), (4, 2), (9, 3), (8, 2), (16, 2)] {
            for (d, bs) in [(64, 16), (128, 32), (80, 8)] {
                seed += 1;
                let p = Problem::new(&Spec::new(&[1, 15, 16, 17, 40], hq, hkv, d, bs, dtype), seed);
                let mut out = vec![f32::NAN; p.out_len()];
                paged_decode_attention_reference(&p.args(), &p.layout, p.k.view(), p.v.view(), &mut out).unwrap();
                let err = max_abs_diff(&out, &p.oracle());
                assert!(err < 1e-6, "{dtype:?} hq={hq} hkv={hkv} d={d} bs={bs}: err {err}");
            }
        }
    }
}

#[test]
fn store_writes_exactly_one_row_per_head() {
    for dtype in DTYPES {
        for new_dtype in [dtype, KvDtype::F32] {
            let spec = Spec::new(&[3, 16, 17, 33], 8, 2, 64, 16, dtype);
            let mut p = Problem::new(&spec, 7);
            let (k0, v0) = (p.k.clone(), p.v.clone());
            let n = p.rows.len() * 2 * 64;
            let k_new = common::Pool::from_f32(new_dtype, &(0..n).map(|i| i as f32 * 0.01).collect::<Vec<_>>());
            let v_new = common::Pool::from_f32(new_dtype, &(0..n).map(|i| -(i as f32) * 0.02).collect::<Vec<_>>());
            let table_ids = p.block_ids.clone();
            let table = rust_cpuattn::BlockTable {
                block_ids: &table_ids,
                width: p.width,
                rows: &p.rows.clone(),
                seq_lens: &p.seq_lens.clone(),
            };
            let (layout, layer) = (p.layout, p.layer);
            let (mut kv, mut vv) = (p.k.clone(), p.v.clone());
            store_new_rows(&layout, &table, layer, kv.view_mut(), vv.view_mut(), k_new.view(), v_new.view()).unwrap();
            p.k = kv;
            p.v = vv;
            let mut expected = std::collections::HashMap::new();
            for b in 0..p.rows.len() {
                let (block, slot) = table.locate(&layout, b, p.seq_lens[b] as usize - 1);
                for h in 0..2 {
                    for i in 0..64 {
                        expected.insert(layout.row_offset(layer, block, h, slot) + i, (b * 2 + h) * 64 + i);
                    }
                }
            }
            for idx in 0..layout.numel() {
                match expected.get(&idx) {
                    Some(&src) => {
                        let want_k = common::Pool::from_f32(dtype, &[k_new.get(src) as f32]).bits(0);
                        let want_v = common::Pool::from_f32(dtype, &[v_new.get(src) as f32]).bits(0);
                        assert_eq!(p.k.bits(idx), want_k, "k at {idx}");
                        assert_eq!(p.v.bits(idx), want_v, "v at {idx}");
                    }
                    None => {
                        assert_eq!(p.k.bits(idx), k0.bits(idx), "k changed at {idx}");
                        assert_eq!(p.v.bits(idx), v0.bits(idx), "v changed at {idx}");
                    }
                }
            }
        }
    }
}

#[test]
fn store_rejects_other_dtype() {
    let p = Problem::new(&Spec::new(&[5], 2, 1, 64, 16, KvDtype::Bf16), 3);
    let (mut k, mut v) = (p.k.clone(), p.v.clone());
    let rows = common::Pool::from_f32(KvDtype::F16, &[0.0; 64]);
    let e = store_new_rows(&p.layout, &p.table(), p.layer, k.view_mut(), v.view_mut(), rows.view(), rows.view());
    assert!(e.unwrap_err().message().contains("k_new"));
}

type Mutation<'p> = dyn Fn(&mut rust_cpuattn::DecodeArgs<'p>, &mut rust_cpuattn::Layout, &mut usize) + 'p;

/// Runs the reference kernel on `p` after `f` changed its arguments, layout or output length.
fn run_mutated<'p>(p: &'p Problem, f: &Mutation<'p>) -> rust_cpuattn::Result<()> {
    let mut args = p.args();
    let mut layout = p.layout;
    let mut out_len = p.out_len();
    f(&mut args, &mut layout, &mut out_len);
    let mut out = vec![0.0; out_len];
    paged_decode_attention_reference(&args, &layout, p.k.view(), p.v.view(), &mut out)
}

/// Each mutation of a valid call must be rejected with an error, never a panic.
#[test]
fn bad_arguments_are_errors() {
    let p = Problem::new(&Spec::new(&[5, 20], 4, 2, 64, 16, KvDtype::F32), 5);
    let bad_ids: Vec<i32> = p.block_ids.iter().map(|&x| if x >= 0 { p.layout.num_blocks as i32 } else { x }).collect();
    let neg_ids: Vec<i32> = p.block_ids.iter().map(|&x| if x >= 0 { -5 } else { x }).collect();
    let long_lens = vec![5, (p.width * 16 + 1) as i32];
    assert!(run_mutated(&p, &|_, _, _| {}).is_ok());
    let cases: Vec<(&str, Box<Mutation<'_>>)> = vec![
        ("layer", Box::new(|a, _, _| a.layer = 2)),
        ("row", Box::new(|a, _, _| a.table.rows = &[0, 9])),
        ("negative row", Box::new(|a, _, _| a.table.rows = &[-1, 0])),
        ("zero len", Box::new(|a, _, _| a.table.seq_lens = &[0, 20])),
        ("negative len", Box::new(|a, _, _| a.table.seq_lens = &[-3, 20])),
        ("long len", Box::new(|a, _, _| a.table.seq_lens = &long_lens)),
        ("short lens", Box::new(|a, _, _| a.table.seq_lens = &[5])),
        ("block id", Box::new(|a, _, _| a.table.block_ids = &bad_ids)),
        ("negative block id", Box::new(|a, _, _| a.table.block_ids = &neg_ids)),
        ("width", Box::new(|a, _, _| a.table.width += 1)),
        ("zero width", Box::new(|a, _, _| a.table.width = 0)),
        ("q heads", Box::new(|a, _, _| a.num_q_heads = 3)),
        ("zero q heads", Box::new(|a, _, _| a.num_q_heads = 0)),
        ("q len", Box::new(|a, _, _| a.q = &a.q[1..])),
        ("out len", Box::new(|_, _, o| *o += 1)),
        ("nan scale", Box::new(|a, _, _| a.scale = f32::NAN)),
        ("layout", Box::new(|_, l, _| l.num_blocks += 1)),
        ("zero dim", Box::new(|_, l, _| l.head_dim = 0)),
        ("huge layout", Box::new(|_, l, _| l.num_blocks = usize::MAX / 2)),
    ];
    for (name, f) in cases {
        assert!(run_mutated(&p, f.as_ref()).is_err(), "{name} was accepted");
    }
    // Mismatched dtypes of K and V.
    let v16 = common::Pool::from_f32(KvDtype::F16, &vec![0.0; p.layout.numel()]);
    let mut out = vec![0.0; p.out_len()];
    assert!(paged_decode_attention_reference(&p.args(), &p.layout, p.k.view(), v16.view(), &mut out).is_err());
    let short: Vec<f32> = vec![0.0; p.layout.numel() - 1];
    assert!(paged_decode_attention_reference(&p.args(), &p.layout, KvSlice::F32(&short), p.v.view(), &mut out).is_err());
}

#[test]
fn empty_batch_is_fine() {
    let p = Problem::new(&Spec::new(&[], 4, 2, 64, 16, KvDtype::F32), 5);
    let mut out = vec![];
    paged_decode_attention_reference(&p.args(), &p.layout, p.k.view(), p.v.view(), &mut out).unwrap();
}
