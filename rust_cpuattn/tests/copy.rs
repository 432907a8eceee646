//! copy_blocks: exactly the requested (layer, block) slabs change, to the source's bits.

mod common;

use common::{Pool, Rng};
use rust_cpuattn::copy::{copy_blocks, BlockCopy};
use rust_cpuattn::{KvDtype, Layout};

#[test]
fn copies_exactly_the_requested_slabs() {
    let team3 = rust_cpuattn::team::Team::new(3).unwrap();
    let mut rng = Rng::new(3);
    for dtype in [KvDtype::F32, KvDtype::F16, KvDtype::Bf16] {
        for (layers, threads) in [(0..4, None), (1..3, Some(&team3)), (2..2, Some(&team3)), (0..4, Some(&team3))] {
            let (src_l, dst_l) = (Layout::new(4, 40, 2, 16, 64).unwrap(), Layout::new(4, 25, 2, 16, 64).unwrap());
            let src_vals: Vec<f32> = (0..src_l.numel()).map(|_| rng.unit()).collect();
            let dst_vals: Vec<f32> = (0..dst_l.numel()).map(|_| rng.unit() + 5.0).collect();
            let src = Pool::from_f32(dtype, &src_vals);
            let mut dst = Pool::from_f32(dtype, &dst_vals);
            let before = dst.clone();
            // Runs of consecutive blocks plus scattered ones, in shuffled order.
            let mut pairs: Vec<(i64, i64)> = (0..6).map(|i| (10 + i, 3 + i)).collect();
            pairs.extend([(0, 20), (39, 0), (17, 24), (5, 12)]);
            rng.shuffle(&mut pairs);
            let (s_ids, d_ids): (Vec<i64>, Vec<i64>) = pairs.iter().cloned().unzip();
            let copy = BlockCopy { src_block_ids: &s_ids, dst_block_ids: &d_ids, layers: layers.clone() };
            let runs = copy_blocks(&src_l, &dst_l, src.view(), dst.view_mut(), &copy, threads).unwrap();
            assert_eq!(runs, 5, "the six consecutive pairs coalesce into one run");
            let slab = src_l.slab_len();
            for layer in 0..4 {
                for block in 0..25 {
                    let from = pairs.iter().find(|p| p.1 == block as i64).map(|p| p.0 as usize);
                    for i in 0..slab {
                        let d = dst_l.slab_offset(layer, block) + i;
                        let want = match from {
                            Some(s) if layers.contains(&layer) => src.bits(src_l.slab_offset(layer, s) + i),
                            _ => before.bits(d),
                        };
                        assert_eq!(dst.bits(d), want, "{dtype:?} layer {layer} block {block}");
                    }
                }
            }
        }
    }
}

#[test]
fn dtype_mismatch_is_an_error() {
    let l = Layout::new(1, 2, 1, 8, 8).unwrap();
    let src = Pool::from_f32(KvDtype::F16, &vec![0.0; l.numel()]);
    let mut dst = Pool::from_f32(KvDtype::Bf16, &vec![0.0; l.numel()]);
    let copy = BlockCopy { src_block_ids: &[0], dst_block_ids: &[1], layers: 0..1 };
    assert!(copy_blocks(&l, &l, src.view(), dst.view_mut(), &copy, None).is_err());
}
