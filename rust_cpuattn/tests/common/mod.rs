//! Test fixtures: a seeded generator, random pools with poisoned unused rows, and a float64
//! oracle that gathers K/V through the block table first (independent of the kernels' code).
#![allow(dead_code)]

use rust_cpuattn::{bf16, f16, BlockTable, DecodeArgs, KvDtype, KvSlice, Layout};

/// SplitMix64: small, seeded, good enough for test data.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// Uniform in [-1, 1).
    pub fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
}

/// A pool in one of the three dtypes.
#[derive(Clone)]
pub enum Pool {
    F32(Vec<f32>),
    F16(Vec<f16>),
    Bf16(Vec<bf16>),
}

impl Pool {
    pub fn from_f32(dtype: KvDtype, values: &[f32]) -> Pool {
        match dtype {
            KvDtype::F32 => Pool::F32(values.to_vec()),
            KvDtype::F16 => Pool::F16(values.iter().map(|&x| f16::from_f32(x)).collect()),
            KvDtype::Bf16 => Pool::Bf16(values.iter().map(|&x| bf16::from_f32(x)).collect()),
        }
    }
    pub fn view(&self) -> KvSlice<'_> {
        match self {
            Pool::F32(v) => KvSlice::F32(v),
            Pool::F16(v) => KvSlice::F16(v),
            Pool::Bf16(v) => KvSlice::Bf16(v),
        }
    }
    pub fn view_mut(&mut self) -> rust_cpuattn::KvSliceMut<'_> {
        match self {
            Pool::F32(v) => rust_cpuattn::KvSliceMut::F32(v),
            Pool::F16(v) => rust_cpuattn::KvSliceMut::F16(v),
            Pool::Bf16(v) => rust_cpuattn::KvSliceMut::Bf16(v),
        }
    }
    pub fn get(&self, i: usize) -> f64 {
        self.view().get_f32(i) as f64
    }
    /// Bit pattern of element i (to compare stores exactly).
    pub fn bits(&self, i: usize) -> u32 {
        match self {
            Pool::F32(v) => v[i].to_bits(),
            Pool::F16(v) => v[i].to_bits() as u32,
            Pool::Bf16(v) => v[i].to_bits() as u32,
        }
    }
}

/// A decode problem: pools (unused blocks and rows past each length poisoned with NaN),
/// a shuffled block table with -1 padding, ragged lengths, queries.
pub struct Problem {
    pub layout: Layout,
    pub num_q_heads: usize,
    pub layer: usize,
    pub scale: f32,
    pub k: Pool,
    pub v: Pool,
    pub q: Vec<f32>,
    pub block_ids: Vec<i32>,
    pub width: usize,
    pub rows: Vec<i32>,
    pub seq_lens: Vec<i32>,
}

pub struct Spec {
    pub seq_lens: Vec<usize>,
    pub num_q_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub block_size: usize,
    pub dtype: KvDtype,
    pub num_layers: usize,
    pub extra_blocks: usize,
    /// Multiplies q (large values give extreme logits).
    pub q_scale: f32,
    /// Rounds q to bf16-representable values (as a bf16 model produces).
    pub q_bf16_exact: bool,
}

impl Spec {
    pub fn new(seq_lens: &[usize], hq: usize, hkv: usize, d: usize, bs: usize, dtype: KvDtype) -> Spec {
        Spec {
            seq_lens: seq_lens.to_vec(),
            num_q_heads: hq,
            num_kv_heads: hkv,
            head_dim: d,
            block_size: bs,
            dtype,
            num_layers: 2,
            extra_blocks: 3,
            q_scale: 1.0,
            q_bf16_exact: false,
        }
    }
}

impl Problem {
    pub fn new(spec: &Spec, seed: u64) -> Problem {
        let mut rng = Rng::new(seed);
        let bs = spec.block_size;
        let used: Vec<usize> = spec.seq_lens.iter().map(|&l| l.div_ceil(bs)).collect();
        let total: usize = used.iter().sum();
        let num_blocks = total + spec.extra_blocks;
        let layout = Layout::new(spec.num_layers, num_blocks, spec.num_kv_heads, bs, spec.head_dim).unwrap();
        let layer = spec.num_layers - 1;
        let width = used.iter().cloned().max().unwrap_or(1) + 1;
        let num_seqs = spec.seq_lens.len();
        // Rows are permuted too: request b uses row perm[b] of a table with one spare row.
        let mut row_perm: Vec<usize> = (0..num_seqs + 1).collect();
        rng.shuffle(&mut row_perm);
        let mut ids: Vec<usize> = (0..num_blocks).collect();
        rng.shuffle(&mut ids);
        let mut block_ids = vec![-1i32; (num_seqs + 1) * width];
        let mut next = 0;
        let mut poison = vec![true; spec.num_layers * num_blocks * layout.slab_len()];
        for b in 0..num_seqs {
            let row = row_perm[b];
            for j in 0..used[b] {
                let id = ids[next];
                next += 1;
                block_ids[row * width + j] = id as i32;
                let valid = (spec.seq_lens[b] - j * bs).min(bs);
                for h in 0..spec.num_kv_heads {
                    for slot in 0..valid {
                        let o = layout.row_offset(layer, id, h, slot);
                        poison[o..o + spec.head_dim].iter_mut().for_each(|p| *p = false);
                    }
                }
            }
        }
        let make =
            |rng: &mut Rng| -> Vec<f32> { poison.iter().map(|&p| if p { f32::NAN } else { rng.unit() }).collect() };
        let k = Pool::from_f32(spec.dtype, &make(&mut rng));
        let v = Pool::from_f32(spec.dtype, &make(&mut rng));
        let q = (0..num_seqs * spec.num_q_heads * spec.head_dim)
            .map(|_| rng.unit() * spec.q_scale)
            .map(|x| if spec.q_bf16_exact { bf16::from_f32(x).to_f32() } else { x })
            .collect();
        Problem {
            layout,
            num_q_heads: spec.num_q_heads,
            layer,
            scale: 1.0 / (spec.head_dim as f32).sqrt(),
            k,
            v,
            q,
            block_ids,
            width,
            rows: (0..num_seqs).map(|b| row_perm[b] as i32).collect(),
            seq_lens: spec.seq_lens.iter().map(|&l| l as i32).collect(),
        }
    }

    pub fn table(&self) -> BlockTable<'_> {
        BlockTable { block_ids: &self.block_ids, width: self.width, rows: &self.rows, seq_lens: &self.seq_lens }
    }

    pub fn args(&self) -> DecodeArgs<'_> {
        DecodeArgs {
            q: &self.q,
            num_q_heads: self.num_q_heads,
            table: self.table(),
            layer: self.layer,
            scale: self.scale,
        }
    }

    pub fn out_len(&self) -> usize {
        self.q.len()
    }

    /// Float64 oracle: gather the request's K/V rows, softmax, weighted sum.
    pub fn oracle(&self) -> Vec<f64> {
        self.oracle_on(&self.k, &self.v)
    }

    /// The oracle over other pools of the same layout.
    pub fn oracle_on(&self, k: &Pool, v: &Pool) -> Vec<f64> {
        let l = &self.layout;
        let d = l.head_dim;
        let g = self.num_q_heads / l.num_kv_heads;
        let mut out = vec![0.0f64; self.q.len()];
        for b in 0..self.rows.len() {
            let len = self.seq_lens[b] as usize;
            let row = self.rows[b] as usize;
            for h in 0..l.num_kv_heads {
                let mut keys = Vec::with_capacity(len);
                let mut values = Vec::with_capacity(len);
                for t in 0..len {
                    let id = self.block_ids[row * self.width + t / l.block_size] as usize;
                    let o = l.row_offset(self.layer, id, h, t % l.block_size);
                    keys.push((0..d).map(|i| k.get(o + i)).collect::<Vec<_>>());
                    values.push((0..d).map(|i| v.get(o + i)).collect::<Vec<_>>());
                }
                for j in 0..g {
                    let hq = h * g + j;
                    let q = &self.q[(b * self.num_q_heads + hq) * d..][..d];
                    let s: Vec<f64> = keys
                        .iter()
                        .map(|k| k.iter().zip(q).map(|(a, &b)| a * b as f64).sum::<f64>() * self.scale as f64)
                        .collect();
                    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let w: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                    let total: f64 = w.iter().sum();
                    for i in 0..d {
                        out[(b * self.num_q_heads + hq) * d + i] =
                            w.iter().zip(&values).map(|(w, v)| w * v[i]).sum::<f64>() / total;
                    }
                }
            }
        }
        out
    }
}

/// Largest absolute difference; panics on a non-finite output.
pub fn max_abs_diff(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(&g, &w)| {
            assert!(g.is_finite(), "non-finite output {g}");
            (g as f64 - w).abs()
        })
        .fold(0.0, f64::max)
}
