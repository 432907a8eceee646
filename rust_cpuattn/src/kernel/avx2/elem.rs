//! KV elements as f32 vectors of 8 lanes, and the element order they widen to.
//!
//! "Native order" of a row (or of q and of the accumulators, which follow it): each full
//! 16-element chunk as [`Wide8::load16`] returns it, then a last 8-element chunk (if any) in
//! natural order. bf16 widens fastest as the 8 even then the 8 odd elements of each 16-element
//! chunk (one shift and one mask per 16 elements); f16 and f32 stay in natural order.

use std::arch::x86_64::*;

use half::{bf16, f16};

use crate::dtype::KvElem;

/// KV elements loadable as f32 lanes.
pub(crate) trait Wide8: KvElem {
    /// Whether [`Wide8::load16`] returns the (even, odd) elements instead of (0..8, 8..16).
    const EVENODD: bool;

    /// Loads `p[0..16]` widened to f32, in native order.
    ///
    /// # Safety
    /// `p[0..16]` must be readable and the CPU must have AVX2 and F16C.
    unsafe fn load16(p: *const Self) -> [__m256; 2];

    /// Loads `p[0..8]` widened to f32, in natural order.
    ///
    /// # Safety
    /// `p[0..8]` must be readable and the CPU must have AVX2 and F16C.
    unsafe fn load8(p: *const Self) -> __m256;
}

impl Wide8 for f32 {
    const EVENODD: bool = false;

    #[inline(always)]
    unsafe fn load16(p: *const Self) -> [__m256; 2] {
        [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))]
    }

    #[inline(always)]
    unsafe fn load8(p: *const Self) -> __m256 {
        _mm256_loadu_ps(p)
    }
}

impl Wide8 for f16 {
    const EVENODD: bool = false;

    #[inline(always)]
    unsafe fn load16(p: *const Self) -> [__m256; 2] {
        [_mm256_cvtph_ps(_mm_loadu_si128(p.cast())), _mm256_cvtph_ps(_mm_loadu_si128(p.add(8).cast()))]
    }

    #[inline(always)]
    unsafe fn load8(p: *const Self) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p.cast()))
    }
}

impl Wide8 for bf16 {
    const EVENODD: bool = true;

    #[inline(always)]
    unsafe fn load16(p: *const Self) -> [__m256; 2] {
        // 32-bit lane i holds elements 2i (low half) and 2i + 1 (high half).
        let x = _mm256_loadu_si256(p.cast());
        let even = _mm256_slli_epi32::<16>(x);
        let odd = _mm256_and_si256(x, _mm256_set1_epi32(0xFFFF_0000u32 as i32));
        [_mm256_castsi256_ps(even), _mm256_castsi256_ps(odd)]
    }

    #[inline(always)]
    unsafe fn load8(p: *const Self) -> __m256 {
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(_mm_loadu_si128(p.cast()))))
    }
}

/// Writes `src` (rows of `d` elements) to `dst` in the native order of an (even, odd) type.
pub(crate) fn to_evenodd(src: &[f32], dst: &mut [f32], d: usize) {
    debug_assert!(src.len() == dst.len() && src.len() % d == 0);
    for (s, o) in src.chunks_exact(d).zip(dst.chunks_exact_mut(d)) {
        let full = d / 16 * 16;
        for (s, o) in s[..full].chunks_exact(16).zip(o[..full].chunks_exact_mut(16)) {
            for i in 0..8 {
                o[i] = s[2 * i];
                o[8 + i] = s[2 * i + 1];
            }
        }
        o[full..].copy_from_slice(&s[full..]);
    }
}

/// Puts rows of `d` elements in the native order of an (even, odd) type back in natural
/// order, in place.
pub(crate) fn from_evenodd(x: &mut [f32], d: usize) {
    debug_assert!(x.len() % d == 0);
    for row in x.chunks_exact_mut(d) {
        for c in row[..d / 16 * 16].chunks_exact_mut(16) {
            let mut nat = [0.0f32; 16];
            for i in 0..8 {
                nat[2 * i] = c[i];
                nat[2 * i + 1] = c[8 + i];
            }
            c.copy_from_slice(&nat);
        }
    }
}
