//! `y = x @ W^T` with W kept as stored: GGUF quantised blocks (Q4_0, Q4_1, Q8_0, the K-quants,
//! ...), or f32 / f16 / bf16 rows. Built for the few-row (decode) shapes, where a projection
//! reads every weight byte once per call and is bound by read bandwidth.
//!
//! - [`linear`]: the fast kernel (SIMD path [`Isa::selected`], the linear thread team).
//! - [`linear_with`]: the same on an explicit ISA and team (tests, benchmarks).
//! - [`linear_reference`]: the plain oracle (per-element dequantisation, then f32 dots).
//!
//! Arithmetic: the activation rows are widened to f32 once per call; every product is f32,
//! and each weight value is exactly the f32 value ggml's dequantisation gives (the blocks are
//! decoded in registers, or into an L1-resident f32 row for the types without a direct
//! decoder). Block types with one scale per 32 values are factored as ggml writes them:
//! `sum_i (q_i d + m) x_i = d * sum_i q_i x_i + m * sum_i x_i`; the result differs from the
//! float64 product of the dequantised values only by f32 rounding of the sums (no integer
//! dot products, no quantisation of the activation).
//!
//! [`Arith::Int8`] selects the integer-dot path for Q4_0 / Q4_1 / Q8_0 weights instead: the
//! activation rows quantised once per call to 8-bit blocks of 32 values (ggml's Q8 scheme),
//! each weight block multiplied with exact integer dot products and one f32 scale per block;
//! its error is documented in [`q8`]. Other types run the f32 path whatever the choice.
//!
//! Work items are ranges of weight rows (output columns), each computing all activation rows,
//! so a weight byte is read once per call whatever the batch. Results do not depend on the
//! team size.

#[cfg(target_arch = "x86_64")]
mod avx2;
pub mod q8;
mod scalar;

use std::cell::RefCell;
use std::sync::{Arc, Mutex};

use crate::dequant::reference::dequantize_reference;
use crate::dequant::GgmlType;
use crate::dtype::{KvElem, KvSlice, KvSliceMut};
use crate::error::{bail, Result};
use crate::isa::Isa;
use crate::team::Team;

/// The arithmetic of a product.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arith {
    /// f32 products of ggml's dequantised weight values (exact up to f32 rounding).
    F32,
    /// Integer dots against the activation quantised to Q8 blocks (Q4_0, Q4_1, Q8_0 weights;
    /// the others run [`Arith::F32`]).
    Int8,
}

impl Arith {
    pub fn from_name(name: &str) -> Result<Arith> {
        match name {
            "f32" => Ok(Arith::F32),
            "int8" => Ok(Arith::Int8),
            _ => bail!("unknown arithmetic {name:?} (expected \"f32\" or \"int8\")"),
        }
    }
}

/// Environment variable giving the default size of the linear layers' team.
pub const LINEAR_THREADS_ENV: &str = "RUST_CPUATTN_LINEAR_THREADS";

/// A weight matrix `[rows, cols]` as stored: `rows` rows of `cols / block_values` blocks of
/// `ty` each, row-major (a GGUF tensor's bytes, or f32/f16/bf16 values as bytes).
#[derive(Clone, Copy, Debug)]
pub struct Weight<'a> {
    pub ty: GgmlType,
    pub data: &'a [u8],
    /// Output features (N).
    pub rows: usize,
    /// Input features (K).
    pub cols: usize,
}

impl<'a> Weight<'a> {
    /// A checked weight: `cols` a positive multiple of the type's block, `data` exactly `rows`
    /// rows of it.
    pub fn new(ty: GgmlType, data: &'a [u8], rows: usize, cols: usize) -> Result<Self> {
        let (block_values, _) = ty.block();
        if cols == 0 || !cols.is_multiple_of(block_values) {
            bail!("cols {cols} is not a positive multiple of {ty:?}'s block of {block_values} values");
        }
        let w = Weight { ty, data, rows, cols };
        if rows.checked_mul(w.row_bytes()) != Some(data.len()) {
            bail!("{ty:?} weight [{rows}, {cols}] needs {} bytes, got {}", rows.saturating_mul(w.row_bytes()), data.len());
        }
        Ok(w)
    }

    /// Bytes of one stored row.
    pub fn row_bytes(&self) -> usize {
        let (block_values, block_bytes) = self.ty.block();
        self.cols / block_values * block_bytes
    }
}

/// Where results go: row `m` of the output is `y[m * stride + offset ..][..weight.rows]`, in
/// y's element type (rounded once from f32).
pub struct Out<'a> {
    pub y: KvSliceMut<'a>,
    pub stride: usize,
    pub offset: usize,
}

/// Checks shapes; returns the number of activation rows.
fn check(w: &Weight<'_>, x: &KvSlice<'_>, out: &Out<'_>) -> Result<usize> {
    Weight::new(w.ty, w.data, w.rows, w.cols)?;
    if !x.len().is_multiple_of(w.cols) {
        bail!("x has {} values, not a whole number of rows of {}", x.len(), w.cols);
    }
    let m = x.len() / w.cols;
    if out.offset.checked_add(w.rows).is_none_or(|end| end > out.stride) {
        bail!("out columns [{}, {}) do not fit its row stride {}", out.offset, out.offset + w.rows, out.stride);
    }
    if m > 0 {
        let needed = (m - 1).checked_mul(out.stride).and_then(|v| v.checked_add(out.offset + w.rows));
        if needed.is_none_or(|n| n > out.y.len()) {
            bail!("out has {} values, too few for {m} rows of stride {}", out.y.len(), out.stride);
        }
    }
    Ok(m)
}

// ---- threads -------------------------------------------------------------------------------

struct TeamState {
    num_threads: usize,
    team: Option<Arc<Team>>,
}

static TEAM: Mutex<TeamState> = Mutex::new(TeamState { num_threads: 0, team: None });

fn default_num_threads() -> usize {
    std::env::var(LINEAR_THREADS_ENV)
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok())
        .filter(|&n| (1..=1024).contains(&n))
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// Sets the linear layers' team size (1 = the calling thread only). Separate from the
/// attention kernel's team: on the CPU device the projections own every core while attention
/// runs between torch's ops.
pub fn set_num_threads(num_threads: usize) -> Result<()> {
    if !(1..=1024).contains(&num_threads) {
        bail!("num_threads must be in [1, 1024], got {num_threads}");
    }
    let mut state = TEAM.lock().unwrap_or_else(|e| e.into_inner());
    if state.num_threads != num_threads {
        state.num_threads = num_threads;
        state.team = None;
    }
    Ok(())
}

/// The linear layers' team size.
pub fn num_threads() -> usize {
    let state = TEAM.lock().unwrap_or_else(|e| e.into_inner());
    if state.num_threads == 0 {
        default_num_threads()
    } else {
        state.num_threads
    }
}

/// The linear layers' team, built on first use.
pub fn team() -> Result<Arc<Team>> {
    let mut state = TEAM.lock().unwrap_or_else(|e| e.into_inner());
    if state.num_threads == 0 {
        state.num_threads = default_num_threads();
    }
    if state.team.is_none() {
        state.team = Some(Arc::new(Team::with_poll(state.num_threads, crate::team::DEFAULT_POLL)?));
    }
    Ok(Arc::clone(state.team.as_ref().expect("built above")))
}

// ---- the calls -----------------------------------------------------------------------------

/// `out[m, offset + n] = sum_k x[m, k] * W[n, k]` for every activation row m (x is
/// `[M, cols]`, f32, f16 or bf16) on the selected ISA and the linear team.
pub fn linear(w: &Weight<'_>, x: KvSlice<'_>, out: Out<'_>) -> Result<()> {
    let team = team()?;
    linear_with(w, x, out, Isa::selected()?, Some(&team))
}

/// Activation rows widened to f32, and for the min-carrying block types the 8-lane partial
/// sums of each 32-value block (`[M, cols / 32, 8]`: lane j sums x[32 b + j + 8 i], i < 4).
pub(crate) struct Activations<'a> {
    pub x: &'a [f32],
    pub sums: &'a [f32],
    pub m: usize,
    pub k: usize,
}

thread_local! {
    static SCRATCH: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
    static Q8_SCRATCH: RefCell<Option<q8::Q8Acts>> = const { RefCell::new(None) };
}

/// `x` widened to f32 into `buf` (reused).
fn widen<'b, T: KvElem>(x: &[T], buf: &'b mut Vec<f32>) -> &'b [f32] {
    buf.clear();
    buf.extend(x.iter().map(|v| v.to_f32()));
    buf
}

/// Whether the direct kernels need the blocks' partial sums of x.
fn needs_sums(ty: GgmlType) -> bool {
    matches!(ty, GgmlType::Q4_1)
}

/// [`linear`] on an explicit ISA (which the CPU must support) and team (`None`: the calling
/// thread only). The result does not depend on the team.
pub fn linear_with(w: &Weight<'_>, x: KvSlice<'_>, out: Out<'_>, isa: Isa, team: Option<&Team>) -> Result<()> {
    linear_arith_with(w, x, out, isa, team, Arith::F32)
}

/// [`linear_with`] in the given arithmetic.
pub fn linear_arith_with(
    w: &Weight<'_>,
    x: KvSlice<'_>,
    out: Out<'_>,
    isa: Isa,
    team: Option<&Team>,
    arith: Arith,
) -> Result<()> {
    if !isa.is_supported() {
        bail!("this CPU does not support {}", isa.name());
    }
    let m = check(w, &x, &out)?;
    if m == 0 || w.rows == 0 {
        return Ok(());
    }
    SCRATCH.with(|cell| {
        let mut guard = cell.borrow_mut();
        let (xbuf, sbuf) = &mut *guard;
        let xf: &[f32] = match x {
            KvSlice::F32(v) => v,
            KvSlice::F16(v) => widen(v, xbuf),
            KvSlice::Bf16(v) => widen(v, xbuf),
        };
        if arith == Arith::Int8 && q8::supports(w.ty) {
            return Q8_SCRATCH.with(|qcell| {
                let mut qguard = qcell.borrow_mut();
                let acts = qguard.get_or_insert_with(q8::Q8Acts::default);
                acts.quantize(xf, w.cols);
                let acts = &*acts;
                match out.y {
                    KvSliceMut::F32(y) => run_q8(w, acts, y, out.stride, out.offset, isa, team),
                    KvSliceMut::F16(y) => run_q8(w, acts, y, out.stride, out.offset, isa, team),
                    KvSliceMut::Bf16(y) => run_q8(w, acts, y, out.stride, out.offset, isa, team),
                }
            });
        }
        let sums: &[f32] = if needs_sums(w.ty) && isa != Isa::Scalar {
            let blocks = w.cols / 32;
            sbuf.clear();
            sbuf.resize(m * blocks * 8, 0.0);
            for (row, s) in xf.chunks_exact(w.cols).zip(sbuf.chunks_exact_mut(blocks * 8)) {
                for (xb, sb) in row.chunks_exact(32).zip(s.chunks_exact_mut(8)) {
                    for j in 0..8 {
                        sb[j] = ((xb[j] + xb[j + 8]) + xb[j + 16]) + xb[j + 24];
                    }
                }
            }
            sbuf
        } else {
            &[]
        };
        let acts = Activations { x: xf, sums, m, k: w.cols };
        match out.y {
            KvSliceMut::F32(y) => run(w, &acts, y, out.stride, out.offset, isa, team),
            KvSliceMut::F16(y) => run(w, &acts, y, out.stride, out.offset, isa, team),
            KvSliceMut::Bf16(y) => run(w, &acts, y, out.stride, out.offset, isa, team),
        }
    });
    Ok(())
}

/// `y`'s base pointer, shared by the work items.
struct OutPtr<T>(*mut T);
// SAFETY: work items write disjoint elements through it (see `run`).
unsafe impl<T: Send> Sync for OutPtr<T> {}

impl<T> OutPtr<T> {
    fn get(&self) -> *mut T {
        self.0
    }
}

/// Weight rows per work item: a multiple of 4 (the kernels' row tile), about four items per
/// thread, at least 16 KiB of weights each.
fn item_rows(w: &Weight<'_>, threads: usize) -> usize {
    let min_rows = (16 << 10) / w.row_bytes().max(1);
    let rows = w.rows.div_ceil(4 * threads).max(min_rows).max(4);
    rows.div_ceil(4) * 4
}

fn run<T: KvElem>(
    w: &Weight<'_>,
    acts: &Activations<'_>,
    y: &mut [T],
    stride: usize,
    offset: usize,
    isa: Isa,
    team: Option<&Team>,
) {
    let threads = team.map_or(1, Team::num_threads);
    let per_item = item_rows(w, threads);
    let num_items = w.rows.div_ceil(per_item);
    let base = OutPtr(y.as_mut_ptr());
    let task = |item: usize| {
        let (n0, n1) = (item * per_item, ((item + 1) * per_item).min(w.rows));
        let store = |m: usize, n: usize, v: f32| {
            debug_assert!(m < acts.m && n0 <= n && n < n1);
            // SAFETY: `check` sized y to hold element m * stride + offset + n for every
            // m < M and n < rows, with offset + rows <= stride, so (m, n) pairs map to distinct
            // in-bounds elements; items own disjoint n ranges and y is borrowed mutably for
            // the whole call.
            unsafe { *base.get().add(m * stride + offset + n) = T::from_f32(v) };
        };
        rows_range(w, acts, n0, n1, isa, &store);
    };
    match team {
        Some(team) if num_items > 1 => team.run(num_items, &task),
        _ => (0..num_items).for_each(task),
    }
}

fn run_q8<T: KvElem>(
    w: &Weight<'_>,
    acts: &q8::Q8Acts,
    y: &mut [T],
    stride: usize,
    offset: usize,
    isa: Isa,
    team: Option<&Team>,
) {
    let threads = team.map_or(1, Team::num_threads);
    let per_item = item_rows(w, threads);
    let num_items = w.rows.div_ceil(per_item);
    let base = OutPtr(y.as_mut_ptr());
    let task = |item: usize| {
        let (n0, n1) = (item * per_item, ((item + 1) * per_item).min(w.rows));
        let store = |m: usize, n: usize, v: f32| {
            debug_assert!(m < acts.m && n0 <= n && n < n1);
            // SAFETY: as in `run`: distinct in-bounds elements, disjoint n ranges per item.
            unsafe { *base.get().add(m * stride + offset + n) = T::from_f32(v) };
        };
        #[cfg(target_arch = "x86_64")]
        if isa != Isa::Scalar {
            // SAFETY: as in `rows_range`; `acts` was quantised from x of w.cols columns.
            return unsafe { avx2::rows_range_q8(w, acts, n0, n1, &store) };
        }
        let _ = isa;
        q8::rows_range(w, acts, n0, n1, &store)
    };
    match team {
        Some(team) if num_items > 1 => team.run(num_items, &task),
        _ => (0..num_items).for_each(task),
    }
}

/// Output columns [n0, n1) of every activation row, passed to `store(m, n, value)`.
fn rows_range(w: &Weight<'_>, acts: &Activations<'_>, n0: usize, n1: usize, isa: Isa, store: &dyn Fn(usize, usize, f32)) {
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // SAFETY: `linear_with` checked that the CPU supports `isa`, and every path above
        // scalar implies AVX2 + FMA + F16C (AVX-512 CPUs run the AVX2 kernels).
        return unsafe { avx2::rows_range(w, acts, n0, n1, store) };
    }
    let _ = isa;
    scalar::rows_range(w, acts, n0, n1, store)
}

/// Decodes rows [n0, n1) of `w` into `out` (f32, `(n1 - n0) * cols` values) with the
/// dequantiser (ggml's exact values) on `isa`, on the calling thread.
pub(crate) fn decode_rows(w: &Weight<'_>, n0: usize, n1: usize, out: &mut [f32], isa: Isa) {
    let rb = w.row_bytes();
    let src = &w.data[n0 * rb..n1 * rb];
    crate::dequant::dequantize_with(w.ty, src, KvSliceMut::F32(out), w.cols, None, isa, false)
        .expect("shapes checked by the caller");
}

/// The oracle: W dequantised element by element ([`dequantize_reference`]), then each output a
/// plain sequential f32 sum, rounded once to y's type.
pub fn linear_reference(w: &Weight<'_>, x: KvSlice<'_>, out: Out<'_>) -> Result<()> {
    let m = check(w, &x, &out)?;
    let mut values = vec![0f32; w.rows * w.cols];
    dequantize_reference(w.ty, w.data, &mut values)?;
    let dot = |mi: usize, n: usize| -> f32 {
        let row = &values[n * w.cols..(n + 1) * w.cols];
        let mut s = 0f32;
        for (k, &v) in row.iter().enumerate() {
            s += v * x.get_f32(mi * w.cols + k);
        }
        s
    };
    fn fill<T: KvElem>(y: &mut [T], m: usize, rows: usize, stride: usize, offset: usize, dot: &dyn Fn(usize, usize) -> f32) {
        for mi in 0..m {
            for n in 0..rows {
                y[mi * stride + offset + n] = T::from_f32(dot(mi, n));
            }
        }
    }
    match out.y {
        KvSliceMut::F32(y) => fill(y, m, w.rows, out.stride, out.offset, &dot),
        KvSliceMut::F16(y) => fill(y, m, w.rows, out.stride, out.offset, &dot),
        KvSliceMut::Bf16(y) => fill(y, m, w.rows, out.stride, out.offset, &dot),
    }
    Ok(())
}

/// Bytes of a `[rows, cols]` weight of `ty` as stored.
pub fn weight_bytes(ty: GgmlType, rows: usize, cols: usize) -> usize {
    let (bv, bb) = ty.block();
    rows * (cols / bv) * bb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_rows_are_whole_tiles() {
        let data = vec![0u8; 3072 * 360];
        let w = Weight::new(GgmlType::Q4_1, &data, 3072, 576).unwrap();
        for threads in [1, 2, 3, 16] {
            let r = item_rows(&w, threads);
            assert!(r % 4 == 0 && r >= 4);
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let data = vec![0u8; 20 * 4];
        assert!(Weight::new(GgmlType::Q4_1, &data, 4, 33).is_err());
        assert!(Weight::new(GgmlType::Q4_1, &data, 5, 32).is_err());
        let w = Weight::new(GgmlType::Q4_1, &data, 4, 32).unwrap();
        let x = vec![0f32; 31];
        let mut y = vec![0f32; 4];
        let out = Out { y: KvSliceMut::F32(&mut y), stride: 4, offset: 0 };
        assert!(linear_with(&w, KvSlice::F32(&x), out, Isa::Scalar, None).is_err());
        let x = vec![0f32; 64];
        let out = Out { y: KvSliceMut::F32(&mut y), stride: 4, offset: 0 };
        assert!(linear_with(&w, KvSlice::F32(&x), out, Isa::Scalar, None).is_err(), "y too small for 2 rows");
        let out = Out { y: KvSliceMut::F32(&mut y), stride: 4, offset: 1 };
        assert!(linear_with(&w, KvSlice::F32(&x[..32]), out, Isa::Scalar, None).is_err(), "offset past the stride");
    }
}
