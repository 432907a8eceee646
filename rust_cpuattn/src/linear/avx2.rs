//! The AVX2 + FMA + F16C path.
//!
//! Direct kernels decode each 32-value block in registers (Q4_0, Q4_1, Q8_0; f32, f16 and
//! bf16 rows are widened in registers) and never write the weight anywhere. A register tile
//! covers R weight rows x MT activation rows (R * MT <= 8 accumulators): each block is decoded
//! once per tile and multiplied into MT activation rows, so the decode cost is shared by the
//! batch. For a block with scale d (and min m):
//!   acc += d * (q . x_block)  (+ m * (1 . x_block), from the precomputed 8-lane block sums),
//! which equals the f32 product of ggml's dequantised values up to f32 rounding.
//!
//! Other block types (the K-quants, Q5_*) decode R rows at a time into an L1-resident f32
//! buffer with the dequantiser (ggml's exact values), then run the f32 tile on it.

use std::arch::x86_64::*;
use std::cell::RefCell;

use super::{decode_rows, Activations, Weight};
use crate::dequant::GgmlType;
use crate::isa::Isa;

/// One 32-value block's decoder.
trait Block32 {
    /// Bytes per 32 values.
    const BYTES: usize;
    /// Whether the block carries a scale d (else d = 1 is not applied at all).
    const SCALED: bool;
    /// Whether the block carries a min m (needs the activation's block sums).
    const HAS_MIN: bool;
    /// The block's 32 quants (or values) as four f32 vectors in value order, d and m.
    unsafe fn decode(p: *const u8) -> ([__m256; 4], f32, f32);
    /// Value i of a row's trailing partial block (float types only: cols % 32 != 0).
    unsafe fn value(_row: *const u8, _i: usize) -> f32 {
        unreachable!("quantised rows are whole blocks")
    }
}

#[inline(always)]
unsafe fn half(p: *const u8) -> f32 {
    // SAFETY (callers): p points at 2 readable bytes. F16C converts every half exactly.
    unsafe { _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(p as *const u16) as i32))) }
}

/// The two halves at p and p + 2, converted together.
#[inline(always)]
unsafe fn half_pair(p: *const u8) -> (f32, f32) {
    // SAFETY (callers): p points at 4 readable bytes.
    unsafe {
        let both = _mm_cvtph_ps(_mm_cvtsi32_si128(std::ptr::read_unaligned(p as *const u32) as i32));
        (_mm_cvtss_f32(both), _mm_cvtss_f32(_mm_movehdup_ps(both)))
    }
}

/// Eight bytes at p, zero- or sign-extended, as f32.
#[inline(always)]
unsafe fn u8x8(v: __m128i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v))
}

#[inline(always)]
unsafe fn i8x8(v: __m128i) -> __m256 {
    _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v))
}

/// 16 bytes of nibbles -> (low nibbles, high nibbles) as bytes.
#[inline(always)]
unsafe fn nibbles(p: *const u8) -> (__m128i, __m128i) {
    // SAFETY (callers): p points at 16 readable bytes.
    let raw = unsafe { _mm_loadu_si128(p as *const __m128i) };
    let mask = _mm_set1_epi8(15);
    (_mm_and_si128(raw, mask), _mm_and_si128(_mm_srli_epi16(raw, 4), mask))
}

struct Q4_0;
impl Block32 for Q4_0 {
    const BYTES: usize = 18;
    const SCALED: bool = true;
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn decode(p: *const u8) -> ([__m256; 4], f32, f32) {
        // block_q4_0 { d: f16, qs: [u8; 16] }: value j < 16 = low nibble of qs[j] - 8, value
        // j + 16 = its high nibble - 8.
        unsafe {
            let (lo, hi) = nibbles(p.add(2));
            let eight = _mm_set1_epi8(8);
            let (lo, hi) = (_mm_sub_epi8(lo, eight), _mm_sub_epi8(hi, eight));
            let q = [i8x8(lo), i8x8(_mm_srli_si128(lo, 8)), i8x8(hi), i8x8(_mm_srli_si128(hi, 8))];
            (q, half(p), 0.0)
        }
    }
}

struct Q4_1;
impl Block32 for Q4_1 {
    const BYTES: usize = 20;
    const SCALED: bool = true;
    const HAS_MIN: bool = true;
    #[inline(always)]
    unsafe fn decode(p: *const u8) -> ([__m256; 4], f32, f32) {
        // block_q4_1 { d, m: f16, qs: [u8; 16] }: value = nibble * d + m.
        unsafe {
            let (lo, hi) = nibbles(p.add(4));
            let q = [u8x8(lo), u8x8(_mm_srli_si128(lo, 8)), u8x8(hi), u8x8(_mm_srli_si128(hi, 8))];
            (q, half(p), half(p.add(2)))
        }
    }
}

struct Q8_0;
impl Block32 for Q8_0 {
    const BYTES: usize = 34;
    const SCALED: bool = true;
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn decode(p: *const u8) -> ([__m256; 4], f32, f32) {
        // block_q8_0 { d: f16, qs: [i8; 32] }
        unsafe {
            let at = |i: usize| i8x8(_mm_loadl_epi64(p.add(2 + 8 * i) as *const __m128i));
            ([at(0), at(1), at(2), at(3)], half(p), 0.0)
        }
    }
}

struct F32Rows;
impl Block32 for F32Rows {
    const BYTES: usize = 128;
    const SCALED: bool = false;
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn decode(p: *const u8) -> ([__m256; 4], f32, f32) {
        unsafe {
            let f = p as *const f32;
            ([_mm256_loadu_ps(f), _mm256_loadu_ps(f.add(8)), _mm256_loadu_ps(f.add(16)), _mm256_loadu_ps(f.add(24))], 1.0, 0.0)
        }
    }
    #[inline(always)]
    unsafe fn value(row: *const u8, i: usize) -> f32 {
        unsafe { std::ptr::read_unaligned((row as *const f32).add(i)) }
    }
}

struct F16Rows;
impl Block32 for F16Rows {
    const BYTES: usize = 64;
    const SCALED: bool = false;
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn decode(p: *const u8) -> ([__m256; 4], f32, f32) {
        unsafe {
            let at = |i: usize| _mm256_cvtph_ps(_mm_loadu_si128(p.add(16 * i) as *const __m128i));
            ([at(0), at(1), at(2), at(3)], 1.0, 0.0)
        }
    }
    #[inline(always)]
    unsafe fn value(row: *const u8, i: usize) -> f32 {
        unsafe { half(row.add(2 * i)) }
    }
}

struct Bf16Rows;
impl Block32 for Bf16Rows {
    const BYTES: usize = 64;
    const SCALED: bool = false;
    const HAS_MIN: bool = false;
    #[inline(always)]
    unsafe fn decode(p: *const u8) -> ([__m256; 4], f32, f32) {
        // A bf16 is the upper half of an f32: widen by a 16-bit shift (exact).
        unsafe {
            let at = |i: usize| {
                let v = _mm256_cvtepu16_epi32(_mm_loadu_si128(p.add(16 * i) as *const __m128i));
                _mm256_castsi256_ps(_mm256_slli_epi32(v, 16))
            };
            ([at(0), at(1), at(2), at(3)], 1.0, 0.0)
        }
    }
    #[inline(always)]
    unsafe fn value(row: *const u8, i: usize) -> f32 {
        unsafe { f32::from_bits((std::ptr::read_unaligned((row as *const u16).add(i)) as u32) << 16) }
    }
}

/// The lines of the next row tile (rows are contiguous, so it starts where this one ends),
/// prefetched a share per block while this tile runs: a single thread's hardware prefetcher
/// alone leaves these loads waiting on memory. Prefetches are hints: lines past the weight's
/// end are never read.
struct Ahead {
    next: *const u8,
    lines_per_block: usize,
}

impl Ahead {
    #[inline(always)]
    fn new(tile: *const u8, tile_bytes: usize, num_blocks: usize) -> Self {
        Ahead { next: tile.wrapping_add(tile_bytes), lines_per_block: tile_bytes.div_ceil(64).div_ceil(num_blocks.max(1)) }
    }

    #[inline(always)]
    unsafe fn at(&self, b: usize) {
        for i in 0..self.lines_per_block {
            // SAFETY: a prefetch never faults, whatever the address.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(self.next.wrapping_add((b * self.lines_per_block + i) * 64) as *const i8) };
        }
    }
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// The dots of weight rows `w + r * row_bytes` (r < R) with activation rows `x[t]` (t < MT)
/// over `cols` values; `sums[t]` are x[t]'s block sums when B has a min.
///
/// # Safety
/// AVX2, FMA and F16C are available; each weight row holds `cols` values of B (whole blocks,
/// then for float types the tail), each x row `cols` f32, each sums row `cols / 32 * 8` f32.
#[inline(always)]
unsafe fn tile<B: Block32, const R: usize, const MT: usize>(
    w: *const u8,
    row_bytes: usize,
    cols: usize,
    x: [*const f32; MT],
    sums: [*const f32; MT],
) -> [[f32; MT]; R] {
    unsafe {
        let mut acc = [[_mm256_setzero_ps(); MT]; R];
        let num_blocks = cols / 32;
        let ahead = Ahead::new(w, R * row_bytes, num_blocks);
        for b in 0..num_blocks {
            ahead.at(b);
            for r in 0..R {
                let (q, d, m) = B::decode(w.add(r * row_bytes + b * B::BYTES));
                let (dv, mv) = (_mm256_set1_ps(d), _mm256_set1_ps(m));
                for t in 0..MT {
                    let xp = x[t].add(32 * b);
                    let mut s = _mm256_mul_ps(q[0], _mm256_loadu_ps(xp));
                    s = _mm256_fmadd_ps(q[1], _mm256_loadu_ps(xp.add(8)), s);
                    s = _mm256_fmadd_ps(q[2], _mm256_loadu_ps(xp.add(16)), s);
                    s = _mm256_fmadd_ps(q[3], _mm256_loadu_ps(xp.add(24)), s);
                    acc[r][t] = if B::SCALED { _mm256_fmadd_ps(s, dv, acc[r][t]) } else { _mm256_add_ps(s, acc[r][t]) };
                    if B::HAS_MIN {
                        acc[r][t] = _mm256_fmadd_ps(_mm256_loadu_ps(sums[t].add(8 * b)), mv, acc[r][t]);
                    }
                }
            }
        }
        let mut out = [[0f32; MT]; R];
        for r in 0..R {
            for t in 0..MT {
                let mut s = hsum(acc[r][t]);
                for i in 32 * num_blocks..cols {
                    s += B::value(w.add(r * row_bytes), i) * *x[t].add(i);
                }
                out[r][t] = s;
            }
        }
        out
    }
}

/// Weight rows [n, n + R) (at `w`, rows `row_bytes` apart) against every activation row,
/// results to `store(m, n + r, value)`.
#[inline(always)]
unsafe fn group<B: Block32, const R: usize>(
    w: *const u8,
    row_bytes: usize,
    n: usize,
    acts: &Activations<'_>,
    store: &dyn Fn(usize, usize, f32),
) {
    let (k, blocks) = (acts.k, acts.k / 32);
    let xrow = |t: usize| acts.x.as_ptr().wrapping_add(t * k);
    let srow = |t: usize| acts.sums.as_ptr().wrapping_add(t * blocks * 8);
    let mut t = 0;
    // SAFETY (all tiles): the caller's contract; rows t.. < M of x and sums exist.
    unsafe {
        while t < acts.m {
            let left = acts.m - t;
            if R <= 2 && left >= 4 {
                let v = tile::<B, R, 4>(w, row_bytes, k, [0, 1, 2, 3].map(|i| xrow(t + i)), [0, 1, 2, 3].map(|i| srow(t + i)));
                emit(&v, n, t, store);
                t += 4;
            } else if left >= 2 {
                let v = tile::<B, R, 2>(w, row_bytes, k, [xrow(t), xrow(t + 1)], [srow(t), srow(t + 1)]);
                emit(&v, n, t, store);
                t += 2;
            } else {
                let v = tile::<B, R, 1>(w, row_bytes, k, [xrow(t)], [srow(t)]);
                emit(&v, n, t, store);
                t += 1;
            }
        }
    }
}

#[inline(always)]
fn emit<const R: usize, const MT: usize>(v: &[[f32; MT]; R], n: usize, t: usize, store: &dyn Fn(usize, usize, f32)) {
    for (r, row) in v.iter().enumerate() {
        for (i, &value) in row.iter().enumerate() {
            store(t + i, n + r, value);
        }
    }
}

/// Rows [n0, n1) of a weight whose rows are `row_bytes` apart from `w`.
#[inline(always)]
unsafe fn direct<B: Block32>(
    w: *const u8,
    row_bytes: usize,
    n0: usize,
    n1: usize,
    acts: &Activations<'_>,
    store: &dyn Fn(usize, usize, f32),
) {
    let wide = acts.m >= 4; // wider batches: 2 weight rows x 4 activation rows per tile
    let mut n = n0;
    // SAFETY (all groups): rows n.. < n1 exist (the caller's contract).
    unsafe {
        while n < n1 {
            let row = w.add((n - n0) * row_bytes);
            let left = n1 - n;
            if !wide && left >= 4 {
                group::<B, 4>(row, row_bytes, n, acts, store);
                n += 4;
            } else if left >= 2 {
                group::<B, 2>(row, row_bytes, n, acts, store);
                n += 2;
            } else {
                group::<B, 1>(row, row_bytes, n, acts, store);
                n += 1;
            }
        }
    }
}

thread_local! {
    static ROWS_F32: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Weight rows decoded per pass by the generic path (4 rows of up to 16k values stay in L2).
const DECODED_ROWS: usize = 4;

/// Output columns [n0, n1) of every activation row.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C; `w` and `acts` are checked (`super::check`), and
/// `acts.sums` is filled whenever the type has a min.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn rows_range(
    w: &Weight<'_>,
    acts: &Activations<'_>,
    n0: usize,
    n1: usize,
    store: &dyn Fn(usize, usize, f32),
) {
    let rb = w.row_bytes();
    let base = w.data[n0 * rb..n1 * rb].as_ptr();
    // SAFETY: the slice above holds rows [n0, n1) of the checked weight; `acts` matches it.
    unsafe {
        match w.ty {
            GgmlType::Q4_0 => direct::<Q4_0>(base, rb, n0, n1, acts, store),
            GgmlType::Q4_1 => direct::<Q4_1>(base, rb, n0, n1, acts, store),
            GgmlType::Q8_0 => direct::<Q8_0>(base, rb, n0, n1, acts, store),
            GgmlType::F32 => direct::<F32Rows>(base, rb, n0, n1, acts, store),
            GgmlType::F16 => direct::<F16Rows>(base, rb, n0, n1, acts, store),
            GgmlType::Bf16 => direct::<Bf16Rows>(base, rb, n0, n1, acts, store),
            _ => ROWS_F32.with(|cell| {
                let mut buf = cell.borrow_mut();
                buf.resize(DECODED_ROWS * w.cols, 0.0);
                let mut n = n0;
                while n < n1 {
                    let end = (n + DECODED_ROWS).min(n1);
                    let values = &mut buf[..(end - n) * w.cols];
                    decode_rows(w, n, end, values, Isa::Avx2);
                    direct::<F32Rows>(values.as_ptr() as *const u8, 4 * w.cols, n, end, acts, store);
                    n = end;
                }
            }),
        }
    }
}

// ---- the integer-dot path (activations as Q8 blocks, see `q8.rs`) --------------------------

/// One weight block type of the integer-dot path.
trait IntBlock {
    const BYTES: usize;
    /// Q4_0: unsigned nibbles, the `- 8` applied through the activation's quant sum.
    const OFFSET8: bool;
    /// Q4_1: a min, times the activation block's f32 sum.
    const HAS_MIN: bool;
    /// Q8_0: signed quants (products through |w| and sign(x, w)).
    const SIGNED: bool;
    /// The 32 quants in value order (unsigned nibbles, or i8), d and min.
    unsafe fn load(p: *const u8) -> (__m256i, f32, f32);
}

#[inline(always)]
unsafe fn nibbles32(p: *const u8) -> __m256i {
    // SAFETY (callers): p points at 16 readable bytes. Low nibbles are values 0..16, high
    // nibbles values 16..32.
    unsafe {
        let raw = _mm_loadu_si128(p as *const __m128i);
        let both = _mm256_set_m128i(_mm_srli_epi16(raw, 4), raw);
        _mm256_and_si256(both, _mm256_set1_epi8(15))
    }
}

struct IQ4_0;
impl IntBlock for IQ4_0 {
    const BYTES: usize = 18;
    const OFFSET8: bool = true;
    const HAS_MIN: bool = false;
    const SIGNED: bool = false;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> (__m256i, f32, f32) {
        unsafe { (nibbles32(p.add(2)), half(p), 0.0) }
    }
}

struct IQ4_1;
impl IntBlock for IQ4_1 {
    const BYTES: usize = 20;
    const OFFSET8: bool = false;
    const HAS_MIN: bool = true;
    const SIGNED: bool = false;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> (__m256i, f32, f32) {
        unsafe {
            let (d, m) = half_pair(p);
            (nibbles32(p.add(4)), d, m)
        }
    }
}

struct IQ8_0;
impl IntBlock for IQ8_0 {
    const BYTES: usize = 34;
    const OFFSET8: bool = false;
    const HAS_MIN: bool = false;
    const SIGNED: bool = true;
    #[inline(always)]
    unsafe fn load(p: *const u8) -> (__m256i, f32, f32) {
        unsafe { (_mm256_loadu_si256(p.add(2) as *const __m256i), half(p), 0.0) }
    }
}

/// Pointers to activation row t's Q8 data: quants, and per block d, sumq, sum_x8.
#[derive(Clone, Copy)]
struct QRow {
    q: *const i8,
    d: *const f32,
    sumq: *const i32,
    sx8: *const f32,
}

/// The dots of weight rows `w + r * row_bytes` (r < R) with Q8 activation rows `x[t]`
/// (t < MT) over `num_blocks` blocks.
///
/// # Safety
/// AVX2, FMA and F16C; each weight row holds `num_blocks` blocks of B, each activation row
/// `32 * num_blocks` quants and `num_blocks` entries of d, sumq and sum_x8.
#[inline(always)]
unsafe fn qtile<B: IntBlock, const R: usize, const MT: usize>(
    w: *const u8,
    row_bytes: usize,
    num_blocks: usize,
    x: [QRow; MT],
) -> [[f32; MT]; R] {
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut acc = [[_mm256_setzero_ps(); MT]; R];
        let ahead = Ahead::new(w, R * row_bytes, num_blocks);
        for b in 0..num_blocks {
            ahead.at(b);
            for r in 0..R {
                let (q, dw, mw) = B::load(w.add(r * row_bytes + b * B::BYTES));
                // Q8_0: |w| (unsigned; |-128| = 128 fits) times sign(x, w): the same products.
                let qa = if B::SIGNED { _mm256_sign_epi8(q, q) } else { q };
                for t in 0..MT {
                    let xq = _mm256_loadu_si256(x[t].q.add(32 * b) as *const __m256i);
                    let xs = if B::SIGNED { _mm256_sign_epi8(xq, q) } else { xq };
                    // u8 x i8 pairs summed to i16 (|.| <= 2 * 128 * 127 < 2^15: no saturation),
                    // then pairs of those to i32: eight exact partial sums.
                    let mut dot = _mm256_madd_epi16(_mm256_maddubs_epi16(qa, xs), ones);
                    if B::OFFSET8 {
                        // Each of the 8 lanes takes sumq: 8 * sumq in all.
                        dot = _mm256_sub_epi32(dot, _mm256_set1_epi32(*x[t].sumq.add(b)));
                    }
                    let scale = _mm256_set1_ps(dw * *x[t].d.add(b));
                    acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), scale, acc[r][t]);
                    if B::HAS_MIN {
                        // Each of the 8 lanes takes mw * sum / 8: the min term cancels most of
                        // the block's dot term (mw is about -8 dw) in the same accumulator.
                        acc[r][t] = _mm256_fmadd_ps(_mm256_set1_ps(mw), _mm256_set1_ps(*x[t].sx8.add(b)), acc[r][t]);
                    }
                }
            }
        }
        let mut out = [[0f32; MT]; R];
        for r in 0..R {
            for t in 0..MT {
                out[r][t] = hsum(acc[r][t]);
            }
        }
        out
    }
}

/// Weight rows [n, n + R) against every Q8 activation row.
#[inline(always)]
unsafe fn qgroup<B: IntBlock, const R: usize>(
    w: *const u8,
    row_bytes: usize,
    n: usize,
    acts: &super::q8::Q8Acts,
    store: &dyn Fn(usize, usize, f32),
) {
    let nb = acts.k / 32;
    let row = |t: usize| QRow {
        q: acts.q.as_ptr().wrapping_add(t * acts.k),
        d: acts.d.as_ptr().wrapping_add(t * nb),
        sumq: acts.sumq.as_ptr().wrapping_add(t * nb),
        sx8: acts.sum_x8.as_ptr().wrapping_add(t * nb),
    };
    let mut t = 0;
    // SAFETY (all tiles): the caller's contract; rows t.. < M of the activations exist.
    unsafe {
        while t < acts.m {
            let left = acts.m - t;
            if R <= 2 && left >= 4 {
                let v = qtile::<B, R, 4>(w, row_bytes, nb, [0, 1, 2, 3].map(|i| row(t + i)));
                emit(&v, n, t, store);
                t += 4;
            } else if left >= 2 {
                let v = qtile::<B, R, 2>(w, row_bytes, nb, [row(t), row(t + 1)]);
                emit(&v, n, t, store);
                t += 2;
            } else {
                let v = qtile::<B, R, 1>(w, row_bytes, nb, [row(t)]);
                emit(&v, n, t, store);
                t += 1;
            }
        }
    }
}

#[inline(always)]
unsafe fn qdirect<B: IntBlock>(
    w: *const u8,
    row_bytes: usize,
    n0: usize,
    n1: usize,
    acts: &super::q8::Q8Acts,
    store: &dyn Fn(usize, usize, f32),
) {
    let wide = acts.m >= 4;
    let mut n = n0;
    // SAFETY (all groups): rows n.. < n1 exist (the caller's contract).
    unsafe {
        while n < n1 {
            let row = w.add((n - n0) * row_bytes);
            let left = n1 - n;
            if !wide && left >= 4 {
                qgroup::<B, 4>(row, row_bytes, n, acts, store);
                n += 4;
            } else if left >= 2 {
                qgroup::<B, 2>(row, row_bytes, n, acts, store);
                n += 2;
            } else {
                qgroup::<B, 1>(row, row_bytes, n, acts, store);
                n += 1;
            }
        }
    }
}

/// Output columns [n0, n1) of every activation row, on the integer-dot path.
///
/// # Safety
/// The CPU supports AVX2, FMA and F16C; `w` is checked, of a type `q8::supports`, and `acts`
/// was quantised from activations of `w.cols` columns.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn rows_range_q8(
    w: &Weight<'_>,
    acts: &super::q8::Q8Acts,
    n0: usize,
    n1: usize,
    store: &dyn Fn(usize, usize, f32),
) {
    let rb = w.row_bytes();
    let base = w.data[n0 * rb..n1 * rb].as_ptr();
    // SAFETY: the slice above holds rows [n0, n1) of the checked weight; `acts` matches it.
    unsafe {
        match w.ty {
            GgmlType::Q4_0 => qdirect::<IQ4_0>(base, rb, n0, n1, acts, store),
            GgmlType::Q4_1 => qdirect::<IQ4_1>(base, rb, n0, n1, acts, store),
            GgmlType::Q8_0 => qdirect::<IQ8_0>(base, rb, n0, n1, acts, store),
            _ => unreachable!("not an integer-dot type"),
        }
    }
}
