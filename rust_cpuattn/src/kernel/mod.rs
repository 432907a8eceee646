//! The fast paged decode attention kernel.
//!
//! Work items (see [`crate::partition`]) cover all KV heads of a range of blocks of one
//! request; for each (block, KV head) tile the G query heads sharing that KV head are handled
//! together, so every K and V row is loaded from memory once. Softmax is online per chunk of
//! rows, in f32. A request split over several items gets partial (max, sum, accumulator)
//! triples merged with log-sum-exp weights in a second pass, in item order (deterministic).

use std::cell::RefCell;
use std::ops::Range;

use crate::dtype::KvElem;
use crate::error::{bail, Result};
use crate::isa::Isa;
use crate::layout::{DecodeArgs, Layout};
use crate::partition::{partition, Item};
use crate::pool::{KvPool, PoolRef};
use crate::team::{run_each, Team};

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod prefetch;
mod scalar;

pub(crate) use prefetch::{prefetch_page_starts, PREFETCH_BLOCKS};

/// How to run the kernel.
#[derive(Clone, Copy, Default)]
pub struct KernelConfig<'p> {
    /// SIMD path; `None` = [`Isa::selected`].
    pub isa: Option<Isa>,
    /// Threads to run items on; `None` = the calling thread only.
    pub team: Option<&'p Team>,
    /// Forces items of at most this many blocks (tests); `None` = the automatic partition.
    pub max_item_blocks: Option<usize>,
}

/// The pools and shapes shared by all items of a call.
///
/// Invariant: built only by `run` for a validated call; the call reads only the slabs of the
/// blocks in its `Seq`s (in `layer`), which the pool contract keeps unwritten until it returns.
pub(crate) struct Job<'a, T> {
    pub k: PoolRef<'a, T>,
    pub v: PoolRef<'a, T>,
    pub layout: Layout,
    pub layer: usize,
    pub num_q_heads: usize,
    /// Query heads per KV head.
    pub group: usize,
    /// Multiplies q.k.
    pub scale: f32,
}

impl<'a, T> Job<'a, T> {
    /// Rows `[0, n)` of the (block, kv head) tile of `pool` (`self.k` or `self.v`):
    /// `[n, head_dim]`, bounds-checked.
    ///
    /// # Safety
    /// `block` is one of the call's blocks (from a `Seq` of this job) and `n <= block_size`,
    /// so the rows lie in a slab the call reads.
    #[inline]
    pub unsafe fn tile<'s>(&'s self, pool: &'s PoolRef<'a, T>, block: usize, kv_head: usize, n: usize) -> &'s [T] {
        debug_assert!(n <= self.layout.block_size);
        let start = self.layout.row_offset(self.layer, block, kv_head, 0);
        // SAFETY: the rows lie in a slab the call reads (this function's contract), which
        // nobody writes until the call returns (the job's invariant).
        unsafe { pool.slice(start, n * self.layout.head_dim) }
    }
}

/// One request as an item sees it.
pub(crate) struct Seq<'a> {
    /// Used block ids of the request's table row (validated `< num_blocks`).
    pub block_ids: &'a [i32],
    pub len: usize,
    /// The first blocks of the item likely to run next on this thread (validated ids), to
    /// prefetch across the end of this item.
    pub after: &'a [i32],
}

/// Calls reading less K+V than this stay on the calling thread (two threads already won at
/// ~600 KiB, batch 16 x context 50: 81 vs 131 us).
const MIN_PARALLEL_BYTES: usize = 256 << 10;

/// Per-thread working memory of one item, reused across items.
#[derive(Default)]
pub(crate) struct State {
    /// `[num_q_heads, head_dim]`: the request's q (scores are multiplied by scale after the
    /// dot product, so a bf16-exact q stays exact).
    pub q: Vec<f32>,
    /// `q` with each 32-element chunk as its 16 even then 16 odd elements, the order bf16
    /// rows widen to in registers (AVX-512 path, bf16 pools).
    pub q_evenodd: Vec<f32>,
    /// bf16 bits of `q`, `[num_q_heads, head_dim]` (bf16 dot-product path only).
    pub q_bf16: Vec<u16>,
    /// Whether `q` is not exactly representable in bf16 (then the f32 path is used).
    pub q_has_lo: bool,
    /// Running max and sum of exp per query head `[num_q_heads]`.
    pub m: Vec<f32>,
    pub l: Vec<f32>,
    /// Per-lane running sums of exp `[num_q_heads, 16]` (SIMD paths; reduced into `l` at
    /// the end of an item, so no horizontal sum per chunk).
    pub l_lanes: Vec<f32>,
    /// Unnormalised output `[num_q_heads, head_dim]`.
    pub acc: Vec<f32>,
    /// Scratch: widened K / V rows of a chunk `[CHUNK_ROWS, head_dim]`, per-row partial dot
    /// vectors, probabilities `[group, CHUNK_ROWS]`.
    pub kf: Vec<f32>,
    pub vf: Vec<f32>,
    pub dots: Vec<f32>,
    pub p: Vec<f32>,
    /// Rescale factor of each head of the group for the current chunk (`[2, group]`: the
    /// AVX2 path keeps two chunks').
    pub alpha: Vec<f32>,
    /// Probabilities of two chunks `[2, group, CHUNK_ROWS]` (AVX2 path: the weights of the V
    /// rows of a chunk, used after the next chunk's softmax).
    pub pb: Vec<f32>,
}

/// The SIMD paths move a head's running max only when a chunk's max exceeds it by more than
/// this (natural log units); until then probabilities are taken against the old max, so they
/// stay below e^8 (~3000, no overflow in f32) and the rescale branch is rarely taken, which
/// keeps it predictable (a data-dependent branch taken on every new max costs a pipeline
/// flush, and new maxima are frequent in the first chunks of a request).
pub(crate) const MAX_SLACK: f32 = 8.0;

/// Rows processed together by the SIMD paths (one score per lane of a 512-bit vector).
pub(crate) const CHUNK_ROWS: usize = 16;

impl State {
    fn reset(&mut self, job_q: &[f32], num_q_heads: usize, d: usize, group: usize, want_bf16: bool) {
        self.q.clear();
        self.q.extend_from_slice(job_q);
        self.q_has_lo = true;
        if want_bf16 {
            // bf16 dot products are exact only for bf16-representable queries (the case of a
            // bf16 model); any other q takes the f32 path.
            // (a NaN with payload only in the low bits counts as not exact, which is fine).
            self.q_has_lo = self.q.iter().fold(0u32, |acc, &x| acc | (x.to_bits() & 0xFFFF)) != 0;
            if !self.q_has_lo {
                self.q_bf16.clear();
                self.q_bf16.extend(self.q.iter().map(|&x| (x.to_bits() >> 16) as u16));
            }
        }
        self.m.clear();
        self.m.resize(num_q_heads, f32::NEG_INFINITY);
        self.l.clear();
        self.l.resize(num_q_heads, 0.0);
        self.l_lanes.clear();
        self.l_lanes.resize(num_q_heads * 16, 0.0);
        self.acc.clear();
        self.acc.resize(num_q_heads * d, 0.0);
        let rows = CHUNK_ROWS.max(1);
        self.kf.resize(rows * d, 0.0);
        self.vf.resize(rows * d, 0.0);
        self.dots.resize(group * rows * 16, 0.0);
        self.p.resize(group * rows, 0.0);
        self.alpha.resize(2 * group, 0.0);
        self.pb.resize(2 * group * rows, 0.0);
    }
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

/// Where an item's result goes: the final output of a request processed whole, or a partial
/// `[num_q_heads, 2 + head_dim]` = (max, sum, accumulator) per head.
enum Dest<'o> {
    Out(&'o mut [f32]),
    Partial(&'o mut [f32]),
}

/// Which backend an ISA uses for a given dtype and head_dim.
fn effective_isa(isa: Isa, dtype: crate::KvDtype, head_dim: usize) -> Isa {
    match isa {
        Isa::Avx512Bf16 if dtype != crate::KvDtype::Bf16 || head_dim % 32 != 0 => {
            effective_isa(Isa::Avx512, dtype, head_dim)
        }
        Isa::Avx512 | Isa::Avx512Bf16 if head_dim % 16 != 0 => effective_isa(Isa::Avx2, dtype, head_dim),
        Isa::Avx2 if head_dim % 8 != 0 => Isa::Scalar,
        other => other,
    }
}

/// Paged decode attention with an explicit configuration (see [`crate::paged_decode_attention`]).
pub fn paged_decode_attention_with<'k>(
    args: &DecodeArgs<'_>,
    layout: &Layout,
    k_cache: impl Into<KvPool<'k>>,
    v_cache: impl Into<KvPool<'k>>,
    out: &mut [f32],
    config: &KernelConfig<'_>,
) -> Result<()> {
    let (k_cache, v_cache) = (k_cache.into(), v_cache.into());
    args.validate(layout, k_cache, v_cache, out.len())?;
    let isa = match config.isa {
        Some(isa) => isa,
        None => Isa::selected()?,
    };
    if !isa.is_supported() {
        bail!("ISA {} is not supported by this CPU", isa.name());
    }
    match (k_cache, v_cache) {
        (KvPool::F32(k), KvPool::F32(v)) => run(args, layout, k, v, out, isa, config),
        (KvPool::F16(k), KvPool::F16(v)) => run(args, layout, k, v, out, isa, config),
        (KvPool::Bf16(k), KvPool::Bf16(v)) => run(args, layout, k, v, out, isa, config),
        _ => unreachable!("validate checks that K and V share a dtype"),
    }
    Ok(())
}

fn run<T: Backend>(
    args: &DecodeArgs<'_>,
    layout: &Layout,
    k: PoolRef<'_, T>,
    v: PoolRef<'_, T>,
    out: &mut [f32],
    isa: Isa,
    config: &KernelConfig<'_>,
) {
    let num_seqs = args.num_seqs();
    if num_seqs == 0 {
        return;
    }
    let isa = effective_isa(isa, T::DTYPE, layout.head_dim);
    let d = layout.head_dim;
    let hq = args.num_q_heads;
    // Waking pool threads costs tens of microseconds: calls that read little K/V run on the
    // calling thread (unless splitting is forced). Depends on lengths only: deterministic.
    let tokens: usize = args.table.seq_lens.iter().map(|&n| n as usize).sum();
    let kv_bytes = 2 * tokens * layout.num_kv_heads * d * std::mem::size_of::<T>();
    let threads = match config.team {
        Some(_) if kv_bytes < MIN_PARALLEL_BYTES && config.max_item_blocks.is_none() => 1,
        team => team.map_or(1, Team::num_threads),
    };
    let items = partition(args.table.seq_lens, layout.block_size, threads, config.max_item_blocks);
    let job = Job {
        k,
        v,
        layout: *layout,
        layer: args.layer,
        num_q_heads: hq,
        group: args.group_size(layout),
        scale: args.scale,
    };

    // Items of requests split in several get partial slots; the others write `out` directly.
    let mut parts_of = vec![0usize; num_seqs];
    for item in &items {
        parts_of[item.seq] += 1;
    }
    let partial_len = hq * (2 + d);
    let num_partials: usize = parts_of.iter().filter(|&&n| n > 1).sum();
    let mut partials = vec![0.0f32; num_partials * partial_len];
    let mut outs: Vec<Option<&mut [f32]>> = out.chunks_mut(hq * d).map(Some).collect();
    let mut partial_slots = partials.chunks_mut(partial_len);
    let mut work: Vec<(Item, Dest<'_>)> = Vec::with_capacity(items.len());
    for &item in &items {
        let dest = if parts_of[item.seq] == 1 {
            Dest::Out(outs[item.seq].take().expect("one item per unsplit request"))
        } else {
            Dest::Partial(partial_slots.next().expect("a slot per partial"))
        };
        work.push((item, dest));
    }

    let row_ids = |b: usize| {
        let row = args.table.rows[b] as usize;
        let used = (args.table.seq_lens[b] as usize).div_ceil(layout.block_size);
        &args.table.block_ids[row * args.table.width..][..used]
    };
    let run_one = |i: usize, (item, dest): (Item, Dest<'_>)| {
        let b = item.seq;
        let len = args.table.seq_lens[b] as usize;
        // Items are claimed in order, so this thread's next one is about `threads` ahead.
        let after = match items.get(i + threads) {
            Some(n) => &row_ids(n.seq)[n.block_start..n.block_end.min(n.block_start + PREFETCH_BLOCKS)],
            None => &[],
        };
        let seq = Seq { block_ids: row_ids(b), len, after };
        let q = &args.q[b * hq * d..][..hq * d];
        STATE.with(|cell| {
            let mut st = cell.borrow_mut();
            st.reset(q, hq, d, job.group, isa == Isa::Avx512Bf16);
            T::attend(isa, &job, &seq, item.block_start..item.block_end, &mut st);
            match dest {
                Dest::Out(o) => {
                    for h in 0..hq {
                        let inv = 1.0 / st.l[h];
                        for (o, &a) in o[h * d..][..d].iter_mut().zip(&st.acc[h * d..][..d]) {
                            *o = a * inv;
                        }
                    }
                }
                Dest::Partial(p) => {
                    for h in 0..hq {
                        let slot = &mut p[h * (2 + d)..][..2 + d];
                        slot[0] = st.m[h];
                        slot[1] = st.l[h];
                        slot[2..].copy_from_slice(&st.acc[h * d..][..d]);
                    }
                }
            }
        });
    };
    run_each(config.team.filter(|_| threads > 1), work, &run_one);

    // Merge partials of split requests, in item order.
    let mut offset = 0;
    for (b, &n) in parts_of.iter().enumerate() {
        if n <= 1 {
            continue;
        }
        let parts = &partials[offset * partial_len..(offset + n) * partial_len];
        offset += n;
        let o = outs[b].take().expect("split request output untouched");
        for h in 0..hq {
            let slot = |i: usize| &parts[i * partial_len + h * (2 + d)..][..2 + d];
            let m = (0..n).map(|i| slot(i)[0]).fold(f32::NEG_INFINITY, f32::max);
            let o = &mut o[h * d..][..d];
            o.fill(0.0);
            let mut total = 0.0f32;
            for i in 0..n {
                let s = slot(i);
                let w = (s[0] - m).exp();
                total += w * s[1];
                for (o, &a) in o.iter_mut().zip(&s[2..]) {
                    *o += w * a;
                }
            }
            let inv = 1.0 / total;
            o.iter_mut().for_each(|x| *x *= inv);
        }
    }
}

/// Element types with a kernel for every ISA.
pub(crate) trait Backend: KvElem {
    fn attend(isa: Isa, job: &Job<'_, Self>, seq: &Seq<'_>, blocks: Range<usize>, st: &mut State);
}

macro_rules! backend {
    ($t:ty, $bf16:expr) => {
        impl Backend for $t {
            fn attend(isa: Isa, job: &Job<'_, Self>, seq: &Seq<'_>, blocks: Range<usize>, st: &mut State) {
                match isa {
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `effective_isa` only returns supported paths whose head_dim
                    // requirement holds, and the caller checked `is_supported`.
                    Isa::Avx512Bf16 if $bf16 => unsafe { avx512::attend_bf16dot(job, seq, blocks, st) },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: as above (AVX-512F present, head_dim % 16 == 0).
                    Isa::Avx512 | Isa::Avx512Bf16 => unsafe { avx512::attend(job, seq, blocks, st) },
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: as above (AVX2, FMA, F16C present, head_dim % 8 == 0).
                    Isa::Avx2 => unsafe { avx2::attend(job, seq, blocks, st) },
                    _ => scalar::attend(job, seq, blocks, st),
                }
            }
        }
    };
}
backend!(f32, false);
backend!(half::f16, false);
backend!(half::bf16, true);
