//! Zero-copy views of torch CPU tensors and numpy arrays: element type, shape, contiguity,
//! alignment and writability are checked here; slices are made only from checked views.

use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyType};
use rust_cpuattn::{self as core, bf16, f16, KvPool, KvPoolMut, KvSlice, PoolMut, PoolRef};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Elem {
    F32,
    F16,
    Bf16,
    I32,
    I64,
}

impl Elem {
    pub(crate) fn size(self) -> usize {
        match self {
            Elem::I64 => 8,
            Elem::F32 | Elem::I32 => 4,
            Elem::F16 | Elem::Bf16 => 2,
        }
    }
}

/// A validated, C-contiguous, aligned CPU array borrowed from a Python object.
pub(crate) struct Array {
    pub(crate) name: &'static str,
    pub(crate) addr: usize,
    pub(crate) shape: Vec<usize>,
    pub(crate) elem: Elem,
    pub(crate) writable: bool,
    /// Keeps a numpy buffer export alive (released on drop, with the GIL held).
    _buffer: Option<PyUntypedBuffer>,
}

pub(crate) fn err(msg: impl Into<String>) -> PyErr {
    PyValueError::new_err(msg.into())
}

pub(crate) fn core_err(e: core::Error) -> PyErr {
    PyValueError::new_err(e.to_string())
}

fn torch_elem(dtype: &str) -> Option<Elem> {
    match dtype {
        "torch.float32" => Some(Elem::F32),
        "torch.float16" => Some(Elem::F16),
        // bf16 may travel as 16-bit integers.
        "torch.bfloat16" | "torch.int16" | "torch.uint16" => Some(Elem::Bf16),
        "torch.int32" => Some(Elem::I32),
        "torch.int64" => Some(Elem::I64),
        _ => None,
    }
}

fn numpy_elem(typestr: &str, obj: &Bound<'_, PyAny>) -> PyResult<Option<Elem>> {
    Ok(match typestr {
        "<f4" => Some(Elem::F32),
        "<f2" => Some(Elem::F16),
        "<u2" | "<i2" => Some(Elem::Bf16),
        "<i4" => Some(Elem::I32),
        "<i8" => Some(Elem::I64),
        // ml_dtypes' bfloat16 shows up as raw 2-byte void.
        "<V2" | "|V2" if obj.getattr("dtype")?.getattr("name")?.extract::<String>()? == "bfloat16" => Some(Elem::Bf16),
        _ => None,
    })
}

/// Torch dtypes we accept, looked up once (compared by identity afterwards).
fn torch_dtypes(py: Python<'_>) -> PyResult<&'static [(Py<PyAny>, Elem)]> {
    static DTYPES: PyOnceLock<Vec<(Py<PyAny>, Elem)>> = PyOnceLock::new();
    DTYPES
        .get_or_try_init(py, || {
            let torch = py.import("torch")?;
            ["float32", "float16", "bfloat16", "int16", "uint16", "int32", "strided", "int64"]
                .iter()
                .map(|name| {
                    let elem = torch_elem(&format!("torch.{name}")).unwrap_or(Elem::I32);
                    Ok((torch.getattr(*name)?.unbind(), elem))
                })
                .collect()
        })
        .map(|v| v.as_slice())
}

/// Reads a numpy array (buffer protocol, else `__array_interface__`) or a torch CPU tensor
/// (data_ptr/shape/stride) without copying.
pub(crate) fn array(obj: &Bound<'_, PyAny>, name: &'static str) -> PyResult<Array> {
    static NDARRAY: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    static TENSOR: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    let py = obj.py();
    let (addr, shape, strides, elem, writable, dtype_name);
    let mut buffer = None;
    let is_ndarray = obj.get_type().is(NDARRAY.import(py, "numpy", "ndarray")?);
    let buf = if is_ndarray { PyUntypedBuffer::get(obj).ok() } else { None };
    if let Some(buf) = buf {
        let format = buf.format().to_string_lossy().trim_start_matches(['<', '=', '@']).to_string();
        elem = match (format.as_str(), buf.item_size()) {
            ("f", 4) => Some(Elem::F32),
            ("e", 2) => Some(Elem::F16),
            ("H" | "h", 2) => Some(Elem::Bf16),
            ("i" | "l", 4) => Some(Elem::I32),
            ("q" | "l", 8) => Some(Elem::I64),
            _ => None,
        };
        dtype_name = format!("buffer format {format:?}");
        shape = buf.shape().to_vec();
        let size = buf.item_size() as isize;
        strides = buf.strides().iter().map(|&s| if s % size == 0 { s / size } else { isize::MIN }).collect();
        addr = buf.buf_ptr() as usize;
        writable = !buf.readonly();
        buffer = Some(buf);
    } else if !is_ndarray && obj.is_instance(TENSOR.import(py, "torch", "Tensor")?)? {
        if !obj.getattr(intern!(py, "is_cpu"))?.extract::<bool>()? {
            let device = obj.getattr(intern!(py, "device"))?.str()?.to_string();
            return Err(err(format!("{name} must be on the CPU, got device {device:?}")));
        }
        let known = torch_dtypes(py)?;
        if !obj.getattr(intern!(py, "layout"))?.is(&known[6].0) {
            return Err(err(format!("{name} must be a dense (strided) tensor")));
        }
        if obj.call_method0(intern!(py, "is_neg"))?.extract::<bool>()? {
            return Err(err(format!("{name} is a lazy negated view; call .resolve_neg() first")));
        }
        let dtype = obj.getattr(intern!(py, "dtype"))?;
        elem = known[..6].iter().chain(&known[7..]).find(|(d, _)| dtype.is(d)).map(|(_, e)| *e);
        // Named only for the error below (formatting it costs as much as a check).
        dtype_name = if elem.is_none() { dtype.str()?.to_string() } else { String::new() };
        shape = obj.getattr(intern!(py, "shape"))?.extract::<Vec<usize>>()?;
        strides = obj.call_method0(intern!(py, "stride"))?.extract::<Vec<isize>>()?;
        addr = obj.call_method0(intern!(py, "data_ptr"))?.extract::<usize>()?;
        writable = true;
    } else if let Ok(iface) = obj.getattr(intern!(py, "__array_interface__")) {
        let iface = iface.cast_into::<PyDict>().map_err(|_| err(format!("{name}: bad __array_interface__")))?;
        let get = |key: &str| -> PyResult<Bound<'_, PyAny>> {
            iface.get_item(key)?.ok_or_else(|| err(format!("{name}: __array_interface__ lacks {key:?}")))
        };
        dtype_name = get("typestr")?.extract::<String>()?;
        elem = numpy_elem(&dtype_name, obj)?;
        shape = get("shape")?.extract::<Vec<usize>>()?;
        let (ptr, readonly): (usize, bool) = get("data")?.extract()?;
        addr = ptr;
        writable = !readonly;
        let byte_strides = get("strides")?;
        strides = if byte_strides.is_none() {
            contiguous_strides(&shape)
        } else {
            let size = elem.map_or(1, Elem::size) as isize;
            let bytes: Vec<isize> = byte_strides.extract()?;
            // A stride that is not a whole number of elements can never be contiguous.
            bytes.iter().map(|&s| if s % size == 0 { s / size } else { isize::MIN }).collect()
        };
    } else {
        return Err(err(format!("{name} must be a torch CPU tensor or a numpy array")));
    }
    let elem = elem.ok_or_else(|| err(format!("{name} has unsupported dtype {dtype_name}")))?;
    let numel =
        shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| err(format!("{name} is too large")))?;
    let expected = contiguous_strides(&shape);
    if numel > 0 && shape.iter().zip(strides.iter().zip(&expected)).any(|(&n, (s, e))| n > 1 && s != e) {
        return Err(err(format!("{name} must be C-contiguous (shape {shape:?}, strides {strides:?})")));
    }
    if numel > 0 && (addr == 0 || addr % elem.size() != 0) {
        return Err(err(format!("{name} data pointer is null or misaligned for {elem:?}")));
    }
    Ok(Array { name, addr, shape, elem, writable, _buffer: buffer })
}

fn contiguous_strides(shape: &[usize]) -> Vec<isize> {
    let mut strides = vec![1isize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1].saturating_mul(shape[i + 1] as isize);
    }
    strides
}

impl Array {
    pub(crate) fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    fn byte_range(&self) -> (usize, usize) {
        (self.addr, self.addr + self.numel() * self.elem.size())
    }

    pub(crate) fn overlaps(&self, other: &Array) -> bool {
        let (a0, a1) = self.byte_range();
        let (b0, b1) = other.byte_range();
        a0 < a1 && b0 < b1 && a0 < b1 && b0 < a1
    }

    pub(crate) fn expect(&self, rank: usize, elems: &[Elem]) -> PyResult<&Self> {
        if self.shape.len() != rank {
            return Err(err(format!("{} must have {rank} dimensions, got shape {:?}", self.name, self.shape)));
        }
        if !elems.contains(&self.elem) {
            return Err(err(format!("{} must be one of {elems:?}, got {:?}", self.name, self.elem)));
        }
        Ok(self)
    }

    /// SAFETY (callers): the Python object behind `self` is alive for `'a`, and no `&mut`
    /// view of an overlapping range exists for `'a`.
    pub(crate) unsafe fn slice<'a, T>(&self, elem: Elem) -> &'a [T] {
        assert!(self.elem == elem && std::mem::size_of::<T>() == elem.size());
        if self.numel() == 0 {
            return &[];
        }
        // SAFETY: `array` checked non-null, alignment and contiguity; the buffer holds
        // `numel` elements of `elem` (its shape came from the same object); lifetime and
        // aliasing are the caller's contract above.
        unsafe { std::slice::from_raw_parts(self.addr as *const T, self.numel()) }
    }

    /// SAFETY (callers): as `slice`, and no other view of an overlapping range exists for `'a`.
    pub(crate) unsafe fn slice_mut<'a, T>(&self, elem: Elem) -> PyResult<&'a mut [T]> {
        if !self.writable {
            return Err(err(format!("{} is read-only", self.name)));
        }
        assert!(self.elem == elem && std::mem::size_of::<T>() == elem.size());
        if self.numel() == 0 {
            return Ok(&mut []);
        }
        // SAFETY: as in `slice`; exclusivity is the caller's contract above.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.addr as *mut T, self.numel()) })
    }

    /// SAFETY: as `slice`.
    pub(crate) unsafe fn kv<'a>(&self) -> KvSlice<'a> {
        // SAFETY: forwarded contract; the element type matches the variant.
        unsafe {
            match self.elem {
                Elem::F32 => KvSlice::F32(self.slice::<f32>(Elem::F32)),
                Elem::F16 => KvSlice::F16(self.slice::<f16>(Elem::F16)),
                _ => KvSlice::Bf16(self.slice::<bf16>(Elem::Bf16)),
            }
        }
    }

    /// A KV pool view that never references the whole array (see `rust_cpuattn::pool`).
    ///
    /// SAFETY (callers): the Python object behind `self` is alive for `'a`, and each core call
    /// given the view meets the pool contract of `rust_cpuattn::pool` within `'a`.
    pub(crate) unsafe fn pool<'a>(&self) -> KvPool<'a> {
        let n = self.numel();
        // SAFETY: `array` checked alignment and contiguity and that the pointer is non-null
        // unless the array is empty; the buffer holds `n` elements of `elem` (the variant's
        // type); lifetime and the pool contract are the caller's contract above.
        unsafe {
            match self.elem {
                Elem::F32 => KvPool::F32(PoolRef::from_raw_parts(self.addr as *const f32, n)),
                Elem::F16 => KvPool::F16(PoolRef::from_raw_parts(self.addr as *const f16, n)),
                _ => KvPool::Bf16(PoolRef::from_raw_parts(self.addr as *const bf16, n)),
            }
        }
    }

    /// A writable KV pool view (as `pool`); an error for a read-only array.
    ///
    /// SAFETY (callers): as `pool`.
    pub(crate) unsafe fn pool_mut<'a>(&self) -> PyResult<KvPoolMut<'a>> {
        if !self.writable {
            return Err(err(format!("{} is read-only", self.name)));
        }
        let n = self.numel();
        // SAFETY: as in `pool`, and the buffer is writable (checked above).
        unsafe {
            Ok(match self.elem {
                Elem::F32 => KvPoolMut::F32(PoolMut::from_raw_parts(self.addr as *mut f32, n)),
                Elem::F16 => KvPoolMut::F16(PoolMut::from_raw_parts(self.addr as *mut f16, n)),
                _ => KvPoolMut::Bf16(PoolMut::from_raw_parts(self.addr as *mut bf16, n)),
            })
        }
    }
}

pub(crate) const KV: &[Elem] = &[Elem::F32, Elem::F16, Elem::Bf16];

/// An error naming the first of `others` that `written` overlaps in memory.
pub(crate) fn disjoint(written: &Array, others: &[&Array]) -> PyResult<()> {
    match others.iter().find(|o| written.overlaps(o)) {
        Some(o) => Err(err(format!("{} overlaps {} in memory", written.name, o.name))),
        None => Ok(()),
    }
}

/// Runs `$body` with `$T` bound to the Rust element type of `$elem` (one of KV).
macro_rules! with_elem {
    ($elem:expr, $T:ident => $body:expr) => {
        match $elem {
            Elem::F32 => {
                type $T = f32;
                $body
            }
            Elem::F16 => {
                type $T = f16;
                $body
            }
            _ => {
                type $T = bf16;
                $body
            }
        }
    };
}
