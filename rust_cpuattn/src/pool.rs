//! Views of whole KV pools that never borrow the whole pool: a call makes references
//! (`&[T]`, `&mut [T]`) only to the (layer, block) slabs, or rows, that it touches, so other
//! threads may read and write the other slabs of the same pools while it runs.
//!
//! The pool contract. A view covers `len` elements of `T` at `base` (a pool
//! `[num_layers, num_blocks, num_kv_heads, block_size, head_dim]`, see [`crate::Layout`]). Each
//! call that takes a view states which slabs it reads and which it writes. For the duration of
//! the call:
//! - the `len` elements stay allocated;
//! - nobody else (another thread, or another view given to the same call) writes an element
//!   the call reads;
//! - nobody else reads or writes an element the call writes.
//!
//! Elements outside those slabs are none of the call's business: other threads may read and
//! write them at any time. Views built from slices (`From<&[T]>`, `From<&mut [T]>`) meet the
//! contract by borrowing; [`PoolRef::from_raw_parts`] and [`PoolMut::from_raw_parts`] leave
//! it to their caller.

use std::marker::PhantomData;
use std::ptr::NonNull;

use half::{bf16, f16};

use crate::dtype::{KvDtype, KvSlice, KvSliceMut};

/// A read-only view of a pool (see the module's contract).
pub struct PoolRef<'a, T> {
    base: NonNull<T>,
    len: usize,
    _pool: PhantomData<&'a [T]>,
}

/// A writable view of a pool (see the module's contract).
pub struct PoolMut<'a, T> {
    base: NonNull<T>,
    len: usize,
    _pool: PhantomData<&'a mut [T]>,
}

// SAFETY: a `PoolRef` only reads `T`s, as a `&[T]` would.
unsafe impl<T: Sync> Send for PoolRef<'_, T> {}
// SAFETY: as above.
unsafe impl<T: Sync> Sync for PoolRef<'_, T> {}
// SAFETY: a `PoolMut` moves and accesses `T`s as a `&mut [T]` would; shared between threads it
// only hands out references through its unsafe methods, whose callers keep them disjoint.
unsafe impl<T: Send> Send for PoolMut<'_, T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync> Sync for PoolMut<'_, T> {}

impl<T> Clone for PoolRef<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for PoolRef<'_, T> {}

/// `base` as a `NonNull`, dangling (never dereferenced) for an empty pool.
fn non_null<T>(base: *mut T, len: usize) -> NonNull<T> {
    match NonNull::new(base) {
        Some(base) => base,
        None => {
            assert!(len == 0, "a pool of {len} elements at a null pointer");
            NonNull::dangling()
        }
    }
}

/// Checks that `start..start + len` lies inside a pool of `pool_len` elements.
#[inline(always)]
fn check_range(start: usize, len: usize, pool_len: usize) {
    assert!(start <= pool_len && len <= pool_len - start, "elements {start}..+{len} outside a pool of {pool_len}");
}

impl<'a, T> PoolRef<'a, T> {
    /// A view of the `len` elements at `base`.
    ///
    /// # Safety
    /// `base` is aligned for `T` and, unless `len` is 0, non-null; the `len` elements are
    /// initialised, and each call given the view (or a copy of it) meets the module's pool
    /// contract, within `'a`.
    pub unsafe fn from_raw_parts(base: *const T, len: usize) -> Self {
        PoolRef { base: non_null(base.cast_mut(), len), len, _pool: PhantomData }
    }

    /// Elements in the pool.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first element's address, for prefetch hints and offsets (not dereferenced here).
    #[inline(always)]
    pub fn as_ptr(&self) -> *const T {
        self.base.as_ptr()
    }

    /// Elements `start..start + len` (panics when they are not all in the pool).
    ///
    /// # Safety
    /// Nobody writes these elements while the returned slice lives (under the pool contract:
    /// they belong to slabs the current call reads).
    #[inline(always)]
    pub unsafe fn slice(&self, start: usize, len: usize) -> &[T] {
        check_range(start, len, self.len);
        // SAFETY: the range is inside the allocation (checked above, and `from_raw_parts`'s
        // contract); nobody writes it while the slice lives (this function's contract).
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(start), len) }
    }
}

impl<'a, T> PoolMut<'a, T> {
    /// A writable view of the `len` elements at `base`.
    ///
    /// # Safety
    /// As [`PoolRef::from_raw_parts`], and the elements are writable.
    pub unsafe fn from_raw_parts(base: *mut T, len: usize) -> Self {
        PoolMut { base: non_null(base, len), len, _pool: PhantomData }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The same pool, read-only, for as long as `self` is borrowed.
    pub fn read_only(&self) -> PoolRef<'_, T> {
        PoolRef { base: self.base, len: self.len, _pool: PhantomData }
    }

    /// The same pool, writable, for as long as `self` is borrowed mutably.
    pub fn reborrow(&mut self) -> PoolMut<'_, T> {
        PoolMut { base: self.base, len: self.len, _pool: PhantomData }
    }

    /// Elements `start..start + len`, writable (panics when they are not all in the pool).
    ///
    /// # Safety
    /// Nobody else reads or writes these elements while the returned slice lives: no other
    /// thread (under the pool contract: they belong to slabs the current call writes) and no
    /// other reference made from this view.
    #[allow(clippy::mut_from_ref)]
    #[inline(always)]
    pub unsafe fn slice_mut(&self, start: usize, len: usize) -> &mut [T] {
        check_range(start, len, self.len);
        // SAFETY: in bounds as in `PoolRef::slice`; exclusive by this function's contract.
        unsafe { std::slice::from_raw_parts_mut(self.base.as_ptr().add(start), len) }
    }
}

impl<'a, T> From<&'a [T]> for PoolRef<'a, T> {
    fn from(s: &'a [T]) -> Self {
        // SAFETY: a shared borrow keeps the elements allocated and unwritten for `'a`.
        unsafe { PoolRef::from_raw_parts(s.as_ptr(), s.len()) }
    }
}

impl<'a, T> From<&'a mut [T]> for PoolMut<'a, T> {
    fn from(s: &'a mut [T]) -> Self {
        // SAFETY: an exclusive borrow gives this view sole access to the elements for `'a`.
        unsafe { PoolMut::from_raw_parts(s.as_mut_ptr(), s.len()) }
    }
}

/// A read-only pool view tagged with its element type.
#[derive(Clone, Copy)]
pub enum KvPool<'a> {
    F32(PoolRef<'a, f32>),
    F16(PoolRef<'a, f16>),
    Bf16(PoolRef<'a, bf16>),
}

/// A writable pool view tagged with its element type.
pub enum KvPoolMut<'a> {
    F32(PoolMut<'a, f32>),
    F16(PoolMut<'a, f16>),
    Bf16(PoolMut<'a, bf16>),
}

impl<'a> KvPool<'a> {
    pub fn dtype(&self) -> KvDtype {
        match self {
            KvPool::F32(_) => KvDtype::F32,
            KvPool::F16(_) => KvDtype::F16,
            KvPool::Bf16(_) => KvDtype::Bf16,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            KvPool::F32(p) => p.len(),
            KvPool::F16(p) => p.len(),
            KvPool::Bf16(p) => p.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Elements `start..start + len` (panics when they are not all in the pool).
    ///
    /// # Safety
    /// As [`PoolRef::slice`].
    pub unsafe fn slice(&self, start: usize, len: usize) -> KvSlice<'_> {
        // SAFETY: forwarded contract.
        unsafe {
            match self {
                KvPool::F32(p) => KvSlice::F32(p.slice(start, len)),
                KvPool::F16(p) => KvSlice::F16(p.slice(start, len)),
                KvPool::Bf16(p) => KvSlice::Bf16(p.slice(start, len)),
            }
        }
    }
}

impl<'a> KvPoolMut<'a> {
    pub fn dtype(&self) -> KvDtype {
        self.read_only().dtype()
    }

    pub fn len(&self) -> usize {
        self.read_only().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The same pool, read-only, for as long as `self` is borrowed.
    pub fn read_only(&self) -> KvPool<'_> {
        match self {
            KvPoolMut::F32(p) => KvPool::F32(p.read_only()),
            KvPoolMut::F16(p) => KvPool::F16(p.read_only()),
            KvPoolMut::Bf16(p) => KvPool::Bf16(p.read_only()),
        }
    }

    /// The same pool, writable, for as long as `self` is borrowed mutably.
    pub fn reborrow(&mut self) -> KvPoolMut<'_> {
        match self {
            KvPoolMut::F32(p) => KvPoolMut::F32(p.reborrow()),
            KvPoolMut::F16(p) => KvPoolMut::F16(p.reborrow()),
            KvPoolMut::Bf16(p) => KvPoolMut::Bf16(p.reborrow()),
        }
    }
}

impl<'a> From<KvSlice<'a>> for KvPool<'a> {
    fn from(s: KvSlice<'a>) -> Self {
        match s {
            KvSlice::F32(s) => KvPool::F32(s.into()),
            KvSlice::F16(s) => KvPool::F16(s.into()),
            KvSlice::Bf16(s) => KvPool::Bf16(s.into()),
        }
    }
}

impl<'a> From<KvSliceMut<'a>> for KvPoolMut<'a> {
    fn from(s: KvSliceMut<'a>) -> Self {
        match s {
            KvSliceMut::F32(s) => KvPoolMut::F32(s.into()),
            KvSliceMut::F16(s) => KvPoolMut::F16(s.into()),
            KvSliceMut::Bf16(s) => KvPoolMut::Bf16(s.into()),
        }
    }
}

impl<'a> From<&'a mut KvSliceMut<'_>> for KvPoolMut<'a> {
    fn from(s: &'a mut KvSliceMut<'_>) -> Self {
        match s {
            KvSliceMut::F32(s) => KvPoolMut::F32((&mut **s).into()),
            KvSliceMut::F16(s) => KvPoolMut::F16((&mut **s).into()),
            KvSliceMut::Bf16(s) => KvPoolMut::Bf16((&mut **s).into()),
        }
    }
}

impl<'a> From<&'a mut KvPoolMut<'_>> for KvPoolMut<'a> {
    fn from(p: &'a mut KvPoolMut<'_>) -> Self {
        p.reborrow()
    }
}
