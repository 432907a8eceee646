//! DRAM-resident kernel speed against the read probes, interleaved as in `neo-async bench
//! kernel` (that benchmark is the reference; this one is for quick comparisons without Python):
//! random block table, layers rotated over a pool of at least 4x the LLC.
//! `cargo run --release --example dram [isa [Hq/Hkv/D [dtype [threads [batch [ctx]]]]]]`.

use std::time::Instant;

use rust_cpuattn::bandwidth::{read_bandwidth, read_bandwidth_scattered};
use rust_cpuattn::team::Team;
use rust_cpuattn::{
    bf16, f16, paged_decode_attention_with, BlockTable, DecodeArgs, Isa, KernelConfig, KvSlice, Layout,
};

const POOL_BYTES: usize = 192 << 20;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let arg = |i: usize| std::env::args().nth(i);
    let isa = arg(1).map(|s| Isa::from_name(&s).unwrap()).unwrap_or_else(Isa::detect);
    let heads = arg(2).unwrap_or_else(|| "32/8/128".into());
    let dtype = arg(3).unwrap_or_else(|| "bf16".into());
    let threads: usize = arg(4).map_or(1, |s| s.parse().unwrap());
    let b: usize = arg(5).map_or(16, |s| s.parse().unwrap());
    let ctx: usize = arg(6).map_or(1024, |s| s.parse().unwrap());
    let h: Vec<usize> = heads.split('/').map(|x| x.parse().unwrap()).collect();
    let (hq, hkv, d) = (h[0], h[1], h[2]);
    let bs = 16;
    let elem = if dtype == "f32" { 4 } else { 2 };
    let nb = b * ctx / bs;
    let layer_bytes = 2 * nb * hkv * bs * d * elem;
    let layers = (POOL_BYTES / layer_bytes).max(2);
    let layout = Layout::new(layers, nb, hkv, bs, d).unwrap();
    let vals: Vec<f32> = (0..1 << 16).map(|i| ((i * 2654435761usize) % 1000) as f32 / 500.0 - 1.0).collect();
    let n = layout.numel();
    let (kb, vb): (Vec<bf16>, Vec<bf16>);
    let (kh, vh): (Vec<f16>, Vec<f16>);
    let (kf, vf): (Vec<f32>, Vec<f32>);
    let (k, v) = match dtype.as_str() {
        "bf16" => {
            kb = (0..n).map(|i| bf16::from_f32(vals[i & 0xFFFF])).collect();
            vb = (0..n).map(|i| bf16::from_f32(vals[(i * 7) & 0xFFFF])).collect();
            (KvSlice::Bf16(&kb), KvSlice::Bf16(&vb))
        }
        "f16" => {
            kh = (0..n).map(|i| f16::from_f32(vals[i & 0xFFFF])).collect();
            vh = (0..n).map(|i| f16::from_f32(vals[(i * 7) & 0xFFFF])).collect();
            (KvSlice::F16(&kh), KvSlice::F16(&vh))
        }
        _ => {
            kf = (0..n).map(|i| vals[i & 0xFFFF]).collect();
            vf = (0..n).map(|i| vals[(i * 7) & 0xFFFF]).collect();
            (KvSlice::F32(&kf), KvSlice::F32(&vf))
        }
    };
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
    let team = Team::new(threads).unwrap();
    let cfg = KernelConfig { isa: Some(isa), team: Some(&team), max_item_blocks: None };
    let buf = vec![1u64; POOL_BYTES / 8];
    let slab_words = hkv * bs * d * elem / 8;
    let (mut times, mut seq, mut scat) = (vec![], vec![], vec![]);
    let mut layer = 0;
    let call = |layer: usize, out: &mut [f32]| {
        let table = BlockTable { block_ids: &ids, width: ctx / bs, rows: &rows, seq_lens: &lens };
        let args = DecodeArgs { q: &q, num_q_heads: hq, table, layer, scale: 0.1 };
        let t = Instant::now();
        paged_decode_attention_with(&args, &layout, k, v, out, &cfg).unwrap();
        t.elapsed().as_secs_f64()
    };
    for i in 0..48 {
        seq.push(read_bandwidth(&buf, Some(&team)).0);
        scat.push(read_bandwidth_scattered(&buf, slab_words, Some(&team)).0);
        for c in 0..5 {
            layer = (layer + 1) % layers;
            let t = call(layer, &mut out);
            if i >= 2 && c > 0 {
                times.push(t);
            }
        }
    }
    let bytes = (2 * b * ctx * hkv * d * elem) as f64;
    let (kt, sq, sc) = (bytes / median(times), median(seq), median(scat));
    println!(
        "{isa:?} {heads} {dtype} t{threads} b{b} ctx{ctx}: kernel {:.2} GB/s  seq {:.2}  scat {:.2}  ratio_seq {:.3}  ratio_scat {:.3}",
        kt / 1e9,
        sq / 1e9,
        sc / 1e9,
        kt / sq,
        kt / sc
    );
}
