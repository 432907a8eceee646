//! GGUF tensor data (rows of quantised blocks, as stored in the file) -> f32, f16 or bf16
//! values, written straight into the destination.
//!
//! - [`dequantize`]: the fast path (vectorised block loops compiled for the best ISA the CPU
//!   has, chunks of blocks spread over rayon's global pool).
//! - [`reference::dequantize_reference`]: the plain per-element formulas of the GGUF format
//!   (the oracle).
//!
//! Every type computes each value in f32 with the format's own operations in its own order
//! (ggml's `dequantize_row_*`, which the `gguf` package mirrors), so f32 results are
//! bit-identical to theirs and f16/bf16 results are those values rounded once (to nearest,
//! ties to even).

mod blocks;
pub mod reference;

use rayon::prelude::*;

use crate::dtype::{KvElem, KvSliceMut};
use crate::error::{bail, Error, Result};
use crate::isa::Isa;
use crate::{bf16, f16};

/// The block types with a kernel here; discriminants are ggml's type ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q2K = 10,
    Q3K = 11,
    Q4K = 12,
    Q5K = 13,
    Q6K = 14,
    Bf16 = 30,
}

impl GgmlType {
    pub const ALL: [GgmlType; 13] = [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Bf16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q5_0,
        GgmlType::Q5_1,
        GgmlType::Q8_0,
        GgmlType::Q2K,
        GgmlType::Q3K,
        GgmlType::Q4K,
        GgmlType::Q5K,
        GgmlType::Q6K,
    ];

    /// The type with ggml's id `id`; an error for ids without a kernel here.
    pub fn from_id(id: u32) -> Result<GgmlType> {
        GgmlType::ALL
            .into_iter()
            .find(|t| *t as u32 == id)
            .ok_or_else(|| Error::new(format!("ggml type {id} has no dequantisation kernel")))
    }

    /// (values per block, bytes per block).
    pub fn block(self) -> (usize, usize) {
        match self {
            GgmlType::F32 => (1, 4),
            GgmlType::F16 | GgmlType::Bf16 => (1, 2),
            GgmlType::Q4_0 => (32, 18),
            GgmlType::Q4_1 => (32, 20),
            GgmlType::Q5_0 => (32, 22),
            GgmlType::Q5_1 => (32, 24),
            GgmlType::Q8_0 => (32, 34),
            GgmlType::Q2K => (256, 84),
            GgmlType::Q3K => (256, 110),
            GgmlType::Q4K => (256, 144),
            GgmlType::Q5K => (256, 176),
            GgmlType::Q6K => (256, 210),
        }
    }
}

/// Values per work item of the parallel loop: large enough that scheduling costs nothing,
/// small enough that every thread gets many.
const CHUNK_VALUES: usize = 1 << 15;

/// The checked shape of one call.
#[derive(Debug, Clone, Copy)]
pub struct Rows {
    pub num_rows: usize,
    pub row_len: usize,
}

/// Checks that `src` holds exactly `out_len / row_len` rows of `row_len` values of `ty`, and
/// that `dest_rows` (if given) is a permutation of the rows.
pub fn check(ty: GgmlType, src_len: usize, out_len: usize, row_len: usize, dest_rows: Option<&[i64]>) -> Result<Rows> {
    let (block_values, block_bytes) = ty.block();
    if row_len == 0 || !row_len.is_multiple_of(block_values) {
        bail!("row length {row_len} is not a positive multiple of {ty:?}'s block of {block_values} values");
    }
    if !out_len.is_multiple_of(row_len) {
        bail!("out has {out_len} values, not a whole number of rows of {row_len}");
    }
    let num_rows = out_len / row_len;
    let expected = num_rows.checked_mul(row_len / block_values * block_bytes);
    if expected != Some(src_len) {
        bail!("{ty:?} data of {src_len} bytes does not fill {num_rows} rows of {row_len} values");
    }
    if let Some(rows) = dest_rows {
        if rows.len() != num_rows {
            bail!("dest_rows has {} entries for {num_rows} rows", rows.len());
        }
        let mut seen = vec![false; num_rows];
        for &r in rows {
            match usize::try_from(r).ok().filter(|&r| r < num_rows) {
                Some(r) if !seen[r] => seen[r] = true,
                _ => bail!("dest_rows is not a permutation of 0..{num_rows} (entry {r})"),
            }
        }
    }
    Ok(Rows { num_rows, row_len })
}

/// Writes the tensor stored in `src` (rows of blocks, row-major) into `out`: stored row r
/// becomes row `dest_rows[r]` of `out` (row r without `dest_rows`). Fast path on the
/// selected ISA and rayon's global pool.
pub fn dequantize(
    ty: GgmlType,
    src: &[u8],
    out: KvSliceMut<'_>,
    row_len: usize,
    dest_rows: Option<&[i64]>,
) -> Result<()> {
    dequantize_with(ty, src, out, row_len, dest_rows, Isa::selected()?, true)
}

/// [`dequantize`] on an explicit ISA (which the CPU must support), in parallel or on the
/// calling thread only. The result does not depend on either.
pub fn dequantize_with(
    ty: GgmlType,
    src: &[u8],
    out: KvSliceMut<'_>,
    row_len: usize,
    dest_rows: Option<&[i64]>,
    isa: Isa,
    parallel: bool,
) -> Result<()> {
    if !isa.is_supported() {
        bail!("this CPU does not support {}", isa.name());
    }
    match out {
        KvSliceMut::F32(o) => run(ty, src, o, row_len, dest_rows, isa, parallel),
        KvSliceMut::F16(o) => run(ty, src, o, row_len, dest_rows, isa, parallel),
        KvSliceMut::Bf16(o) => run(ty, src, o, row_len, dest_rows, isa, parallel),
    }
}

/// `out`'s base pointer, shared by the work items.
struct OutPtr<T>(*mut T);
// SAFETY: work items write disjoint ranges through it (see `run`).
unsafe impl<T: Send> Sync for OutPtr<T> {}

impl<T> OutPtr<T> {
    /// (A method, so closures capture the whole `Sync` wrapper, not its raw field.)
    fn get(&self) -> *mut T {
        self.0
    }
}

fn run<T: KvElem>(
    ty: GgmlType,
    src: &[u8],
    out: &mut [T],
    row_len: usize,
    dest_rows: Option<&[i64]>,
    isa: Isa,
    parallel: bool,
) -> Result<()> {
    let rows = check(ty, src.len(), out.len(), row_len, dest_rows)?;
    let (block_values, block_bytes) = ty.block();
    let blocks_per_row = row_len / block_values;
    let num_blocks = rows.num_rows * blocks_per_row;
    let chunk_blocks = (CHUNK_VALUES / block_values).max(1);
    let base = OutPtr(out.as_mut_ptr());
    let item = |chunk: usize| {
        let (first, last) = (chunk * chunk_blocks, ((chunk + 1) * chunk_blocks).min(num_blocks));
        let mut k = first;
        while k < last {
            // One contiguous run: the blocks of this chunk within one row.
            let (row, col) = (k / blocks_per_row, k % blocks_per_row);
            let end = last.min((row + 1) * blocks_per_row);
            let dest_row = dest_rows.map_or(row, |d| d[row] as usize);
            let start = dest_row * row_len + col * block_values;
            // SAFETY: `check` made `dest_rows` a permutation of the rows and sized `out` to
            // num_rows * row_len, so each block k maps to its own in-bounds range of `out`;
            // chunks hold disjoint blocks, so no two runs overlap, and `out` is borrowed
            // mutably for this whole call.
            let dst = unsafe { std::slice::from_raw_parts_mut(base.get().add(start), (end - k) * block_values) };
            segment(isa, ty, &src[k * block_bytes..end * block_bytes], dst);
            k = end;
        }
    };
    let num_chunks = num_blocks.div_ceil(chunk_blocks);
    if parallel && num_chunks > 1 {
        (0..num_chunks).into_par_iter().for_each(item);
    } else {
        (0..num_chunks).for_each(item);
    }
    Ok(())
}

/// Whole blocks `src` -> `dst`, on the widest path `isa` allows.
fn segment<T: KvElem>(isa: Isa, ty: GgmlType, src: &[u8], dst: &mut [T]) {
    if same_encoding::<T>(ty) {
        // SAFETY: the stored values are already T's encoding (little-endian, as T is here), and
        // `dst` holds exactly src.len() bytes (checked by `check`); the ranges are distinct
        // allocations or disjoint (`src` is only read, `dst` is exclusive).
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr() as *mut u8, src.len()) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    match isa {
        // SAFETY: `dequantize_with` checked that the CPU supports `isa`.
        Isa::Avx512Bf16 | Isa::Avx512 => return unsafe { segment_avx512(ty, src, dst) },
        Isa::Avx2 => return unsafe { segment_avx2(ty, src, dst) },
        Isa::Scalar => {}
    }
    let _ = isa;
    blocks::run(ty, src, dst);
}

fn same_encoding<T: KvElem>(ty: GgmlType) -> bool {
    let t = std::any::TypeId::of::<T>();
    cfg!(target_endian = "little")
        && match ty {
            GgmlType::F32 => t == std::any::TypeId::of::<f32>(),
            GgmlType::F16 => t == std::any::TypeId::of::<f16>(),
            GgmlType::Bf16 => t == std::any::TypeId::of::<bf16>(),
            _ => false,
        }
}

// NOTE: the same loops compiled for wider vectors. Rust never contracts a * b + c into an
// FMA, so every path computes the same values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c,bmi2")]
unsafe fn segment_avx512<T: KvElem>(ty: GgmlType, src: &[u8], dst: &mut [T]) {
    blocks::run(ty, src, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,bmi2")]
unsafe fn segment_avx2<T: KvElem>(ty: GgmlType, src: &[u8], dst: &mut [T]) {
    blocks::run(ty, src, dst)
}
