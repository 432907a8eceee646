//! Compute cost of the kernel on cache-resident data (no DRAM): ns per (block, KV head) tile,
//! best of several batches. `cargo run --release --example micro [isa [Hq/Hkv/D [dtype]]]`.

use std::time::Instant;

use rust_cpuattn::{
    bf16, f16, paged_decode_attention_with, BlockTable, DecodeArgs, Isa, KernelConfig, KvSlice, Layout,
};

fn main() {
    let isa = std::env::args().nth(1).map(|s| Isa::from_name(&s).unwrap()).unwrap_or_else(Isa::detect);
    let only_heads = std::env::args().nth(2);
    let only_dtype = std::env::args().nth(3);
    for (hq, hkv, d) in [(9usize, 3usize, 64usize), (32, 8, 128), (32, 32, 128)] {
        if only_heads.as_ref().is_some_and(|h| *h != format!("{hq}/{hkv}/{d}")) {
            continue;
        }
        for dtype in ["bf16", "f16", "f32"] {
            if only_dtype.as_ref().is_some_and(|t| t != dtype) {
                continue;
            }
            let (b, ctx, bs) = (4usize, 256usize, 16usize);
            let nb = b * ctx / bs;
            let layout = Layout::new(1, nb, hkv, bs, d).unwrap();
            let vals: Vec<f32> =
                (0..layout.numel()).map(|i| ((i * 2654435761usize) % 1000) as f32 / 500.0 - 1.0).collect();
            let q: Vec<f32> =
                (0..b * hq * d).map(|i| bf16::from_f32(((i * 7919) % 100) as f32 / 50.0 - 1.0).to_f32()).collect();
            let ids: Vec<i32> = (0..nb as i32).map(|i| (i * 7) % nb as i32).collect();
            let rows: Vec<i32> = (0..b as i32).collect();
            let lens = vec![ctx as i32; b];
            let table = BlockTable { block_ids: &ids, width: ctx / bs, rows: &rows, seq_lens: &lens };
            let args = DecodeArgs { q: &q, num_q_heads: hq, table, layer: 0, scale: 0.1 };
            let kb: Vec<bf16> = vals.iter().map(|&x| bf16::from_f32(x)).collect();
            let kh: Vec<f16> = vals.iter().map(|&x| f16::from_f32(x)).collect();
            let (k, v) = match dtype {
                "bf16" => (KvSlice::Bf16(&kb), KvSlice::Bf16(&kb)),
                "f16" => (KvSlice::F16(&kh), KvSlice::F16(&kh)),
                _ => (KvSlice::F32(&vals), KvSlice::F32(&vals)),
            };
            let mut out = vec![0.0f32; q.len()];
            let cfg = KernelConfig { isa: Some(isa), team: None, max_item_blocks: None };
            let mut best = f64::MAX;
            for _ in 0..30 {
                let t = Instant::now();
                for _ in 0..20 {
                    paged_decode_attention_with(&args, &layout, k, v, &mut out, &cfg).unwrap();
                }
                best = best.min(t.elapsed().as_secs_f64() / 20.0);
            }
            let tiles = (nb * hkv) as f64;
            let bytes = (2 * b * ctx * hkv * d * if dtype == "f32" { 4 } else { 2 }) as f64;
            println!(
                "{isa:?} {hq}/{hkv}/{d} {dtype}: {:.0} ns/tile  {:.1} GB/s",
                best / tiles * 1e9,
                bytes / best / 1e9
            );
        }
    }
}
