//! DRAM-resident kernel speed: batch 16 x ctx 1024, random block table, 30 layers rotated.
//! `cargo run --release --example dram [isa]`.

use std::time::Instant;

use rust_cpuattn::{bf16, paged_decode_attention_with, BlockTable, DecodeArgs, Isa, KernelConfig, KvSlice, Layout};

fn main() {
    let isa = std::env::args().nth(1).map(|s| Isa::from_name(&s).unwrap()).unwrap_or_else(Isa::detect);
    for (hq, hkv, d) in [(9usize, 3usize, 64usize), (32, 8, 128)] {
        let (b, ctx, bs, layers) = (16usize, 1024usize, 16usize, 30usize);
        let nb = b * ctx / bs;
        let layout = Layout::new(layers, nb, hkv, bs, d).unwrap();
        let k: Vec<bf16> =
            (0..layout.numel()).map(|i| bf16::from_f32(((i * 2654435761usize) % 1000) as f32 / 500.0 - 1.0)).collect();
        let v = k.clone();
        let q: Vec<f32> =
            (0..b * hq * d).map(|i| bf16::from_f32(((i * 7919) % 100) as f32 / 50.0 - 1.0).to_f32()).collect();
        let mut ids: Vec<i32> = (0..nb as i32).collect();
        let mut x = 12345u64;
        for i in (1..nb).rev() {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ids.swap(i, (x >> 33) as usize % (i + 1));
        }
        let rows: Vec<i32> = (0..b as i32).collect();
        let lens = vec![ctx as i32; b];
        let mut out = vec![0.0f32; q.len()];
        let cfg = KernelConfig { isa: Some(isa), team: None, max_item_blocks: None };
        let mut times = vec![];
        for i in 0..60 {
            let table = BlockTable { block_ids: &ids, width: ctx / bs, rows: &rows, seq_lens: &lens };
            let args = DecodeArgs { q: &q, num_q_heads: hq, table, layer: i % layers, scale: 0.1 };
            let t = Instant::now();
            paged_decode_attention_with(&args, &layout, KvSlice::Bf16(&k), KvSlice::Bf16(&v), &mut out, &cfg).unwrap();
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let bytes = (2 * b * ctx * hkv * d * 2) as f64;
        println!(
            "{isa:?} {hq}/{hkv}/{d} bf16 DRAM: median {:.2} ms  {:.1} GB/s (best {:.1})",
            times[30] * 1e3,
            bytes / times[30] / 1e9,
            bytes / times[0] / 1e9
        );
    }
}
