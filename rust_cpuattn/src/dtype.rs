//! Element types of the KV pools (f32, f16, bf16) and typed views of whole pools.

use half::{bf16, f16};

/// Element type of a KV pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvDtype {
    F32,
    F16,
    Bf16,
}

impl KvDtype {
    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F32 => "float32",
            KvDtype::F16 => "float16",
            KvDtype::Bf16 => "bfloat16",
        }
    }

    pub fn size_bytes(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::F16 | KvDtype::Bf16 => 2,
        }
    }
}

/// A scalar stored in a KV pool. Conversions round to nearest even (f32 -> 16 bit).
pub trait KvElem: Copy + Send + Sync + 'static {
    const DTYPE: KvDtype;
    fn to_f32(self) -> f32;
    fn from_f32(x: f32) -> Self;
    /// The typed slice inside `s` when it holds this element type.
    fn view(s: KvSlice<'_>) -> Option<&[Self]>;
    /// `s` tagged with this element type.
    fn tag(s: &[Self]) -> KvSlice<'_>;
    /// `s` tagged with this element type, writable.
    fn tag_mut(s: &mut [Self]) -> KvSliceMut<'_>;
}

impl KvElem for f32 {
    const DTYPE: KvDtype = KvDtype::F32;
    fn tag(s: &[Self]) -> KvSlice<'_> {
        KvSlice::F32(s)
    }
    fn tag_mut(s: &mut [Self]) -> KvSliceMut<'_> {
        KvSliceMut::F32(s)
    }
    fn view(s: KvSlice<'_>) -> Option<&[Self]> {
        match s {
            KvSlice::F32(x) => Some(x),
            _ => None,
        }
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
}

impl KvElem for f16 {
    const DTYPE: KvDtype = KvDtype::F16;
    fn tag(s: &[Self]) -> KvSlice<'_> {
        KvSlice::F16(s)
    }
    fn tag_mut(s: &mut [Self]) -> KvSliceMut<'_> {
        KvSliceMut::F16(s)
    }
    fn view(s: KvSlice<'_>) -> Option<&[Self]> {
        match s {
            KvSlice::F16(x) => Some(x),
            _ => None,
        }
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
}

impl KvElem for bf16 {
    const DTYPE: KvDtype = KvDtype::Bf16;
    fn tag(s: &[Self]) -> KvSlice<'_> {
        KvSlice::Bf16(s)
    }
    fn tag_mut(s: &mut [Self]) -> KvSliceMut<'_> {
        KvSliceMut::Bf16(s)
    }
    fn view(s: KvSlice<'_>) -> Option<&[Self]> {
        match s {
            KvSlice::Bf16(x) => Some(x),
            _ => None,
        }
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        // Exact: a bf16 is the upper half of an f32.
        f32::from_bits((self.to_bits() as u32) << 16)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        // Round to nearest even, as `bf16::from_f32`, but branch-free so loops vectorize:
        // adding 0x7FFF plus the kept lowest bit carries into the kept bits exactly when
        // rounding up. NaN keeps its sign and payload top, made quiet.
        let bits = x.to_bits();
        let rounded = (bits.wrapping_add(0x7FFF + ((bits >> 16) & 1)) >> 16) as u16;
        let is_nan = bits & 0x7FFF_FFFF > 0x7F80_0000;
        bf16::from_bits(if is_nan { (bits >> 16) as u16 | 0x0040 } else { rounded })
    }
}

/// A read-only view of a whole pool (or of new K/V rows), tagged with its element type.
#[derive(Debug, Clone, Copy)]
pub enum KvSlice<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
    Bf16(&'a [bf16]),
}

/// A writable view of a whole pool.
#[derive(Debug)]
pub enum KvSliceMut<'a> {
    F32(&'a mut [f32]),
    F16(&'a mut [f16]),
    Bf16(&'a mut [bf16]),
}

impl<'a> KvSlice<'a> {
    pub fn dtype(&self) -> KvDtype {
        match self {
            KvSlice::F32(_) => KvDtype::F32,
            KvSlice::F16(_) => KvDtype::F16,
            KvSlice::Bf16(_) => KvDtype::Bf16,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            KvSlice::F32(s) => s.len(),
            KvSlice::F16(s) => s.len(),
            KvSlice::Bf16(s) => s.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` widened to f32 (panics when out of range, like slice indexing).
    #[inline]
    pub fn get_f32(&self, i: usize) -> f32 {
        match self {
            KvSlice::F32(s) => s[i],
            KvSlice::F16(s) => s[i].to_f32(),
            KvSlice::Bf16(s) => KvElem::to_f32(s[i]),
        }
    }
}

impl<'a> KvSliceMut<'a> {
    pub fn dtype(&self) -> KvDtype {
        self.as_slice().dtype()
    }

    pub fn len(&self) -> usize {
        self.as_slice().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reborrows as a read-only view.
    pub fn as_slice(&self) -> KvSlice<'_> {
        match self {
            KvSliceMut::F32(s) => KvSlice::F32(s),
            KvSliceMut::F16(s) => KvSlice::F16(s),
            KvSliceMut::Bf16(s) => KvSlice::Bf16(s),
        }
    }

    /// Turns into a read-only view of the same lifetime.
    pub fn into_slice(self) -> KvSlice<'a> {
        match self {
            KvSliceMut::F32(s) => KvSlice::F32(s),
            KvSliceMut::F16(s) => KvSlice::F16(s),
            KvSliceMut::Bf16(s) => KvSlice::Bf16(s),
        }
    }
}
