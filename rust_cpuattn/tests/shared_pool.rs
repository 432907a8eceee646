//! The pool contract under concurrency. While a writer thread keeps rewriting slabs that no
//! other call touches (every layer of the unused blocks, and the other layer of the used
//! ones), the kernel with its store and a copy out of the used slabs run on other threads
//! over the same pools: the kernel's results are bitwise those of a quiet run, the copy gets
//! the exact bits, and every slab the writer wrote holds what it wrote.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::{max_abs_diff, Pool, Problem, Spec};
use rust_cpuattn::copy::{copy_blocks, BlockCopy};
use rust_cpuattn::team::Team;
use rust_cpuattn::{
    paged_decode_attention_with, store_new_rows, KernelConfig, KvDtype, KvPool, KvPoolMut, KvSlice, Layout, PoolMut,
    PoolRef,
};

/// Bound on |out - oracle| (as in tests/kernel.rs).
const TOL: f64 = 2e-5;
/// Kernel calls, and writer rounds, made while the other threads run (per dtype).
const MIN_CALLS: usize = 300;
const MIN_WRITES: usize = 50;
const DEADLINE: Duration = Duration::from_secs(120);

/// A pool's address, shared by threads that each use some of its slabs.
#[derive(Clone, Copy)]
struct SharedPool {
    dtype: KvDtype,
    base: *mut u8,
    len: usize,
}

// SAFETY: only an address; every view made from it is used under the pool contract.
unsafe impl Send for SharedPool {}
// SAFETY: as above.
unsafe impl Sync for SharedPool {}

impl SharedPool {
    /// Its views are valid until `pool` is next used or dropped.
    fn new(pool: &mut Pool) -> Self {
        match pool {
            Pool::F32(v) => SharedPool { dtype: KvDtype::F32, base: v.as_mut_ptr().cast(), len: v.len() },
            Pool::F16(v) => SharedPool { dtype: KvDtype::F16, base: v.as_mut_ptr().cast(), len: v.len() },
            Pool::Bf16(v) => SharedPool { dtype: KvDtype::Bf16, base: v.as_mut_ptr().cast(), len: v.len() },
        }
    }

    /// # Safety
    /// The pool is neither used directly nor dropped while the view lives, and the calls
    /// given the view keep to the pool contract.
    unsafe fn read<'a>(self) -> KvPool<'a> {
        let (base, len) = (self.base, self.len);
        // SAFETY: `base` and `len` come from a `Vec` of the dtype; the rest is the caller's
        // contract.
        unsafe {
            match self.dtype {
                KvDtype::F32 => KvPool::F32(PoolRef::from_raw_parts(base.cast(), len)),
                KvDtype::F16 => KvPool::F16(PoolRef::from_raw_parts(base.cast(), len)),
                KvDtype::Bf16 => KvPool::Bf16(PoolRef::from_raw_parts(base.cast(), len)),
            }
        }
    }

    /// # Safety
    /// As `read`.
    unsafe fn write<'a>(self) -> KvPoolMut<'a> {
        let (base, len) = (self.base, self.len);
        // SAFETY: as in `read`.
        unsafe {
            match self.dtype {
                KvDtype::F32 => KvPoolMut::F32(PoolMut::from_raw_parts(base.cast(), len)),
                KvDtype::F16 => KvPoolMut::F16(PoolMut::from_raw_parts(base.cast(), len)),
                KvDtype::Bf16 => KvPoolMut::Bf16(PoolMut::from_raw_parts(base.cast(), len)),
            }
        }
    }
}

/// Sets its flag when dropped, so that the threads of a test stop when any of them panics.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Bit pattern of element `i`.
fn bits(s: KvSlice<'_>, i: usize) -> u32 {
    match s {
        KvSlice::F32(v) => v[i].to_bits(),
        KvSlice::F16(v) => v[i].to_bits() as u32,
        KvSlice::Bf16(v) => v[i].to_bits() as u32,
    }
}

/// Whether `slab`, slab (layer, block) of some pool, holds the bits of that slab of `want`.
fn slab_equals(layout: &Layout, slab: KvSlice<'_>, want: &Pool, layer: usize, block: usize) -> bool {
    let start = layout.slab_offset(layer, block);
    (0..layout.slab_len()).all(|i| bits(slab, i) == want.bits(start + i))
}

/// Whether slab (layer, block) of `got` and of `want` hold the same bits.
fn pools_slab_equal(layout: &Layout, got: &Pool, want: &Pool, layer: usize, block: usize) -> bool {
    let start = layout.slab_offset(layer, block);
    (start..start + layout.slab_len()).all(|i| got.bits(i) == want.bits(i))
}

/// The blocks the problem's requests use, those holding a request's last token (where a
/// store writes), and the unused ones.
fn block_sets(p: &Problem) -> (Vec<i64>, Vec<i64>, Vec<i64>) {
    let bs = p.layout.block_size;
    let mut used = vec![false; p.layout.num_blocks];
    let mut last = Vec::new();
    for (b, &len) in p.seq_lens.iter().enumerate() {
        let row = p.rows[b] as usize;
        for j in 0..(len as usize).div_ceil(bs) {
            used[p.block_ids[row * p.width + j] as usize] = true;
        }
        last.push(p.block_ids[row * p.width + (len as usize - 1) / bs] as i64);
    }
    let pick = |want: bool| (0..used.len()).filter(|&i| used[i] == want).map(|i| i as i64).collect::<Vec<_>>();
    (pick(true), last, pick(false))
}

/// The rows a store writes (position seq_lens[b] - 1 of each request) as `pool` holds them:
/// `[num_seqs, num_kv_heads, head_dim]`.
fn last_rows(p: &Problem, pool: &Pool) -> Pool {
    let l = &p.layout;
    let mut values = Vec::new();
    for b in 0..p.rows.len() {
        let (block, slot) = p.table().locate(l, b, p.seq_lens[b] as usize - 1);
        for h in 0..l.num_kv_heads {
            let o = l.row_offset(p.layer, block, h, slot);
            values.extend((0..l.head_dim).map(|i| pool.get(o + i) as f32));
        }
    }
    Pool::from_f32(p.k.view().dtype(), &values)
}

/// What alternate kernel calls store and must return: (k_new, v_new, pools after the store,
/// the kernel's result on them). The first stores the rows the pools hold already.
type Stored = (Pool, Pool, (Pool, Pool), Vec<f32>);

fn stored_cases(p: &Problem, config: &KernelConfig<'_>) -> [Stored; 2] {
    let dtype = p.k.view().dtype();
    let n = p.rows.len() * p.layout.num_kv_heads * p.layout.head_dim;
    let other = |sign: f32| Pool::from_f32(dtype, &(0..n).map(|i| sign * (i % 37) as f32 / 40.0).collect::<Vec<_>>());
    [(last_rows(p, &p.k), last_rows(p, &p.v)), (other(1.0), other(-1.0))].map(|(k_new, v_new)| {
        let (mut k, mut v) = (p.k.clone(), p.v.clone());
        store_new_rows(&p.layout, &p.table(), p.layer, k.view_mut(), v.view_mut(), k_new.view(), v_new.view()).unwrap();
        let mut out = vec![f32::NAN; p.out_len()];
        paged_decode_attention_with(&p.args(), &p.layout, k.view(), v.view(), &mut out, config).unwrap();
        let err = max_abs_diff(&out, &p.oracle_on(&k, &v));
        assert!(err < TOL, "{dtype:?}: max error {err} in a quiet run");
        (k_new, v_new, (k, v), out)
    })
}

#[test]
fn calls_touch_only_their_slabs_while_a_writer_rewrites_the_others() {
    let team = Team::new(2).unwrap();
    for (seed, dtype) in [KvDtype::F32, KvDtype::F16, KvDtype::Bf16].into_iter().enumerate() {
        let mut spec = Spec::new(&[1, 15, 16, 17, 70, 300], 8, 2, 64, 16, dtype);
        spec.extra_blocks = 9;
        let p = Problem::new(&spec, 40 + seed as u64);
        let (layout, layer) = (p.layout, p.layer);
        assert_eq!((layout.num_layers, layer), (2, 1));
        let (used, last, free) = block_sets(&p);
        // Read by the kernel and the copy thread, written by nobody.
        let read_only: Vec<i64> = used.iter().copied().filter(|b| !last.contains(b)).collect();
        assert!(!read_only.is_empty() && !free.is_empty());
        let config = KernelConfig { isa: None, team: Some(&team), max_item_blocks: Some(3) };
        let cases = stored_cases(&p, &config);

        // The writer writes values, then NaN, in turn (a call that read them would change its
        // result or lose finiteness): every layer of the free blocks, and the layer of the
        // used blocks that no call reads.
        let numel = layout.numel();
        let values: Vec<f32> = (0..numel).map(|i| ((i % 1000) as f32 - 500.0) / 256.0).collect();
        let sources = [Pool::from_f32(dtype, &values), Pool::from_f32(dtype, &vec![f32::NAN; numel])];
        let writes = [
            BlockCopy { src_block_ids: &free, dst_block_ids: &free, layers: 0..2 },
            BlockCopy { src_block_ids: &used, dst_block_ids: &used, layers: 0..1 },
        ];

        let (mut k, mut v) = (p.k.clone(), p.v.clone());
        let (k_shared, v_shared) = (SharedPool::new(&mut k), SharedPool::new(&mut v));
        let (done, num_writes, num_copies) = (AtomicBool::new(false), AtomicUsize::new(0), AtomicUsize::new(0));
        let start = Instant::now();
        let mut calls = 0;
        std::thread::scope(|s| {
            s.spawn(|| {
                let _stop = StopOnDrop(&done);
                let mut round = 0;
                while !done.load(Ordering::Acquire) {
                    let src = &sources[round % 2];
                    for shared in [k_shared, v_shared] {
                        for copy in &writes {
                            // SAFETY: only this thread touches these slabs.
                            copy_blocks(&layout, &layout, src.view(), unsafe { shared.write() }, copy, None).unwrap();
                            // SAFETY: as above.
                            let pool = unsafe { shared.read() };
                            for l in copy.layers.clone() {
                                for &block in copy.dst_block_ids {
                                    let start = layout.slab_offset(l, block as usize);
                                    // SAFETY: as above.
                                    let got = unsafe { pool.slice(start, layout.slab_len()) };
                                    let ok = slab_equals(&layout, got, src, l, block as usize);
                                    assert!(ok, "{dtype:?}: slab ({l}, {block}) lost what the writer wrote");
                                }
                            }
                        }
                    }
                    round += 1;
                    num_writes.store(round, Ordering::Release);
                }
            });
            s.spawn(|| {
                let _stop = StopOnDrop(&done);
                let mut out = Pool::from_f32(dtype, &vec![0.0; numel]);
                let copy = BlockCopy { src_block_ids: &read_only, dst_block_ids: &read_only, layers: layer..layer + 1 };
                while !done.load(Ordering::Acquire) {
                    for (shared, want) in [(k_shared, &p.k), (v_shared, &p.v)] {
                        // SAFETY: the slabs read here are written by nobody.
                        copy_blocks(&layout, &layout, unsafe { shared.read() }, out.view_mut(), &copy, None).unwrap();
                        for &block in &read_only {
                            let ok = pools_slab_equal(&layout, &out, want, layer, block as usize);
                            assert!(ok, "{dtype:?}: copied slab ({layer}, {block}) differs");
                        }
                    }
                    num_copies.fetch_add(1, Ordering::Relaxed);
                }
            });
            // The kernel, storing alternately the rows the pools hold and other rows, on a
            // team of 2; stops early only if another thread fails or stalls (checked below).
            let _stop = StopOnDrop(&done);
            let enough = |calls: usize| calls >= MIN_CALLS && num_writes.load(Ordering::Acquire) >= MIN_WRITES;
            while !enough(calls) && !done.load(Ordering::Acquire) && start.elapsed() < DEADLINE {
                let (k_new, v_new, _, want) = &cases[calls % 2];
                // SAFETY: the store and the kernel touch only the used slabs of `layer`: the
                // writer never does, and the copy thread reads none of the slabs written.
                let (kw, vw) = unsafe { (k_shared.write(), v_shared.write()) };
                store_new_rows(&layout, &p.table(), layer, kw, vw, k_new.view(), v_new.view()).unwrap();
                let mut out = vec![f32::NAN; p.out_len()];
                // SAFETY: as above.
                let (kr, vr) = unsafe { (k_shared.read(), v_shared.read()) };
                paged_decode_attention_with(&p.args(), &layout, kr, vr, &mut out, &config).unwrap();
                assert!(out.iter().zip(want).all(|(a, b)| a.to_bits() == b.to_bits()), "{dtype:?} call {calls}");
                calls += 1;
            }
        });
        let (writes, copies) = (num_writes.into_inner(), num_copies.into_inner());
        assert!(calls >= MIN_CALLS && writes >= MIN_WRITES, "{dtype:?}: {calls} calls, {writes} writer rounds");
        assert!(copies > 0, "{dtype:?}: the copy thread never ran");

        // The used slabs of `layer` hold the last call's state; the writer's its last round.
        let (_, _, (k_end, v_end), _) = &cases[(calls - 1) % 2];
        let last_written = &sources[(writes - 1) % 2];
        for l in 0..layout.num_layers {
            for block in 0..layout.num_blocks {
                let calls_slab = l == layer && used.contains(&(block as i64));
                for (got, call_state) in [(&k, k_end), (&v, v_end)] {
                    let want = if calls_slab { call_state } else { last_written };
                    assert!(
                        pools_slab_equal(&layout, got, want, l, block),
                        "{dtype:?}: slab ({l}, {block}) at the end"
                    );
                }
            }
        }
    }
}
