//! The fast kernel against the float64 oracle on every ISA this CPU has, thread counts,
//! forced splitting, repeatability, extreme logits.

mod common;

use common::{max_abs_diff, Problem, Spec};
use rust_cpuattn::team::Team;
use rust_cpuattn::{paged_decode_attention_with, Isa, KernelConfig, KvDtype};

const DTYPES: [KvDtype; 3] = [KvDtype::F32, KvDtype::F16, KvDtype::Bf16];
/// Bound on |out - oracle| for inputs in [-1, 1] (f32 arithmetic over up to ~4k tokens).
const TOL: f64 = 2e-5;

fn team(n: usize) -> Team {
    Team::new(n).unwrap()
}

fn run(p: &Problem, config: &KernelConfig<'_>) -> Vec<f32> {
    let mut out = vec![f32::NAN; p.out_len()];
    paged_decode_attention_with(&p.args(), &p.layout, p.k.view(), p.v.view(), &mut out, config).unwrap();
    out
}

fn check(p: &Problem, config: &KernelConfig<'_>, what: &str) {
    let err = max_abs_diff(&run(p, config), &p.oracle());
    assert!(err < TOL, "{what}: max error {err}");
}

#[test]
fn every_isa_dtype_group_and_head_dim() {
    let team2 = team(2);
    let mut seed = 100;
    for isa in Isa::supported() {
        for dtype in DTYPES {
            for (hq, hkv) in [(4, 4), (8, 4), (9, 3), (8, 2), (16, 2), (5, 1), (7, 1), (6, 1)] {
                for (d, bs) in [(64, 16), (128, 32), (80, 16), (96, 8), (256, 16), (72, 8)] {
                    for q_bf16_exact in [false, true] {
                        seed += 1;
                        let mut spec = Spec::new(&[1, 15, 16, 17, 70, 300], hq, hkv, d, bs, dtype);
                        spec.q_bf16_exact = q_bf16_exact;
                        let p = Problem::new(&spec, seed);
                        let what = format!("{isa:?} {dtype:?} hq={hq} hkv={hkv} d={d} bs={bs} bf16q={q_bf16_exact}");
                        check(&p, &KernelConfig { isa: Some(isa), team: None, max_item_blocks: None }, &what);
                        check(
                            &p,
                            &KernelConfig { isa: Some(isa), team: Some(&team2), max_item_blocks: Some(2) },
                            &what,
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn ragged_lengths_batches_and_threads() {
    let lens = [1, 15, 16, 17, 255, 256, 257, 1000, 4097];
    let teams: Vec<_> = [2, 3, 7].into_iter().map(team).collect();
    for isa in Isa::supported() {
        for (i, dtype) in DTYPES.into_iter().enumerate() {
            let bs = [16, 32][i % 2];
            for batch in [1, 3, 17, 64] {
                let seq_lens: Vec<usize> = (0..batch).map(|b| lens[(b * 7 + i) % lens.len()]).collect();
                let mut spec = Spec::new(&seq_lens, 8, 2, 64, bs, dtype);
                spec.q_bf16_exact = batch % 2 == 1;
                let p = Problem::new(&spec, batch as u64 * 31 + i as u64);
                let oracle = p.oracle();
                for team in [None].into_iter().chain(teams.iter().map(Some)) {
                    let out = run(&p, &KernelConfig { isa: Some(isa), team, max_item_blocks: None });
                    let err = max_abs_diff(&out, &oracle);
                    let threads = team.map_or(1, Team::num_threads);
                    assert!(err < TOL, "{isa:?} {dtype:?} batch {batch} threads {threads}: {err}");
                }
            }
        }
    }
}

#[test]
fn forced_split_equals_unsplit_and_runs_repeat_bitwise() {
    let team3 = team(3);
    for isa in Isa::supported() {
        for dtype in DTYPES {
            let mut spec = Spec::new(&[4097, 1000, 33, 1, 600], 32, 8, 128, 16, dtype);
            spec.q_bf16_exact = true;
            let p = Problem::new(&spec, 9);
            let whole = run(&p, &KernelConfig { isa: Some(isa), team: None, max_item_blocks: None });
            for blocks in [1, 3, 16] {
                let cfg = KernelConfig { isa: Some(isa), team: Some(&team3), max_item_blocks: Some(blocks) };
                let split = run(&p, &cfg);
                let diff = split.iter().zip(&whole).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
                assert!(diff < 1e-6, "{isa:?} {dtype:?} split {blocks}: {diff}");
                let again = run(&p, &cfg);
                assert!(
                    split.iter().zip(&again).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{isa:?} {dtype:?} not repeatable"
                );
            }
            let auto = KernelConfig { isa: Some(isa), team: Some(&team3), max_item_blocks: None };
            let (a, b) = (run(&p, &auto), run(&p, &auto));
            assert!(a.iter().zip(&b).all(|(a, b)| a.to_bits() == b.to_bits()));
        }
    }
}

/// One long request on two threads: the automatic partition splits it over several items
/// (split-KV), for every group size the AVX2 path handles apart (1, 3, 4 and 4 + 3 heads),
/// both head dims, lengths ending inside a block and on its boundary.
#[test]
fn batch_one_split_over_threads_every_group_size() {
    let team2 = team(2);
    for isa in Isa::supported() {
        for (i, dtype) in DTYPES.into_iter().enumerate() {
            for (hq, hkv) in [(8, 8), (9, 3), (8, 2), (7, 1)] {
                for d in [64, 128] {
                    for len in [4097, 4096, 1000] {
                        let mut spec = Spec::new(&[len], hq, hkv, d, 16, dtype);
                        spec.q_bf16_exact = i % 2 == 0;
                        let p = Problem::new(&spec, (len + hq * 13 + d) as u64);
                        let what = format!("{isa:?} {dtype:?} hq={hq} hkv={hkv} d={d} len={len}");
                        check(&p, &KernelConfig { isa: Some(isa), team: Some(&team2), max_item_blocks: None }, &what);
                    }
                }
            }
        }
    }
}

#[test]
fn extreme_logits_stay_finite_and_accurate() {
    for isa in Isa::supported() {
        for dtype in DTYPES {
            for q_scale in [30.0, 1e3, 1e5] {
                let mut spec = Spec::new(&[1, 17, 300, 1200], 8, 2, 64, 16, dtype);
                spec.q_scale = q_scale;
                spec.q_bf16_exact = true;
                let p = Problem::new(&spec, 77);
                let out = run(&p, &KernelConfig { isa: Some(isa), team: None, max_item_blocks: Some(4) });
                // Logits up to ~1e5: f32 score rounding alone moves weights, so the bound is
                // loose; what matters is no inf/NaN and no blow-up.
                let err = max_abs_diff(&out, &p.oracle());
                let tol = if q_scale > 1e4 { 0.5 } else { 1e-2 };
                assert!(err < tol, "{isa:?} {dtype:?} q_scale {q_scale}: {err}");
            }
        }
    }
}

#[test]
fn unsupported_or_invalid_calls_are_errors() {
    let p = Problem::new(&Spec::new(&[5, 20], 4, 2, 64, 16, KvDtype::Bf16), 5);
    let mut out = vec![0.0; p.out_len() + 1];
    let cfg = KernelConfig::default();
    assert!(paged_decode_attention_with(&p.args(), &p.layout, p.k.view(), p.v.view(), &mut out, &cfg).is_err());
    for isa in Isa::ALL {
        if !isa.is_supported() {
            let mut out = vec![0.0; p.out_len()];
            let cfg = KernelConfig { isa: Some(isa), ..KernelConfig::default() };
            assert!(paged_decode_attention_with(&p.args(), &p.layout, p.k.view(), p.v.view(), &mut out, &cfg).is_err());
        }
    }
    assert!(Isa::from_name("sse9").is_err());
    assert_eq!(Isa::from_name("AVX2").unwrap(), Isa::Avx2);
}

#[test]
fn global_team_entry_point() {
    let p = Problem::new(&Spec::new(&[100, 3000], 8, 2, 128, 16, KvDtype::F16), 12);
    let mut out = vec![0.0; p.out_len()];
    rust_cpuattn::paged_decode_attention(&p.args(), &p.layout, p.k.view(), p.v.view(), &mut out).unwrap();
    assert!(max_abs_diff(&out, &p.oracle()) < TOL);
    assert!(rust_cpuattn::threads::set_num_threads(0).is_err());
}

/// Random, often invalid, tables and lengths: every call either fails with an error or
/// returns exactly what the oracle says (never a panic, never an out-of-bounds read: tiles
/// are bounds-checked slices).
#[test]
fn random_tables_never_panic() {
    let mut rng = common::Rng::new(2024);
    let team2 = team(2);
    for case in 0..300 {
        let dtype = DTYPES[case % 3];
        let lens: Vec<usize> = (0..1 + rng.below(5)).map(|_| 1 + rng.below(200)).collect();
        let mut p = Problem::new(&Spec::new(&lens, 4, 2, 64, 16, dtype), case as u64);
        let valid = rng.below(2) == 0;
        if !valid {
            match rng.below(4) {
                0 => {
                    let i = rng.below(p.block_ids.len());
                    p.block_ids[i] = rng.below(3 * p.layout.num_blocks) as i32 - p.layout.num_blocks as i32;
                }
                1 => {
                    let b = rng.below(p.rows.len());
                    p.rows[b] = rng.below(2 * (p.rows.len() + 1)) as i32 - 2;
                }
                2 => {
                    let b = rng.below(p.seq_lens.len());
                    p.seq_lens[b] = rng.below(3 * p.width * 16) as i32 - p.width as i32;
                }
                _ => {
                    let b = rng.below(p.seq_lens.len());
                    p.seq_lens[b] = (p.width * 16) as i32 + rng.below(3) as i32;
                }
            }
        }
        for isa in Isa::supported() {
            let cfg = KernelConfig { isa: Some(isa), team: Some(&team2), max_item_blocks: Some(1 + rng.below(4)) };
            let mut out = vec![0.0; p.out_len()];
            match paged_decode_attention_with(&p.args(), &p.layout, p.k.view(), p.v.view(), &mut out, &cfg) {
                // A mutation may keep the call valid (a changed id in an unused column, or one
                // now pointing at poisoned rows: then both sides hold NaN).
                Ok(()) => {
                    let want = p.oracle();
                    if want.iter().all(|w| w.is_finite()) {
                        assert!(max_abs_diff(&out, &want) < TOL, "case {case} {isa:?}");
                    }
                }
                Err(e) => assert!(!valid, "case {case}: valid call rejected: {e}"),
            }
        }
    }
}
