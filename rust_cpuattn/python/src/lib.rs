//! Python module `rust_cpuattn`: converts torch CPU tensors / numpy arrays into slices
//! (zero-copy), validates, releases the GIL for the whole call and calls the core crate.
//!
//! Contract with callers: the arrays must not be resized, freed or written by another thread
//! during a call (the GIL is released while the kernel runs).

use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyDict, PyType};
use rust_cpuattn::{self as core, bf16, f16, BlockTable, DecodeArgs, KvSlice, KvSliceMut, Layout};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Elem {
    F32,
    F16,
    Bf16,
    I32,
    I64,
}

impl Elem {
    fn size(self) -> usize {
        match self {
            Elem::I64 => 8,
            Elem::F32 | Elem::I32 => 4,
            Elem::F16 | Elem::Bf16 => 2,
        }
    }
}

/// A validated, C-contiguous, aligned CPU array borrowed from a Python object.
struct Array {
    name: &'static str,
    addr: usize,
    shape: Vec<usize>,
    elem: Elem,
    writable: bool,
    /// Keeps a numpy buffer export alive (released on drop, with the GIL held).
    _buffer: Option<PyUntypedBuffer>,
}

fn err(msg: impl Into<String>) -> PyErr {
    PyValueError::new_err(msg.into())
}

fn core_err(e: core::Error) -> PyErr {
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
        "<V2" | "|V2"
            if obj.getattr("dtype")?.getattr("name")?.extract::<String>()? == "bfloat16" =>
        {
            Some(Elem::Bf16)
        }
        _ => None,
    })
}

/// Torch dtypes we accept, looked up once (compared by identity afterwards).
fn torch_dtypes(py: Python<'_>) -> PyResult<&'static [(Py<PyAny>, Elem)]> {
    static DTYPES: PyOnceLock<Vec<(Py<PyAny>, Elem)>> = PyOnceLock::new();
    DTYPES
        .get_or_try_init(py, || {
            let torch = py.import("torch")?;
            [
                "float32", "float16", "bfloat16", "int16", "uint16", "int32", "strided", "int64",
            ]
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
fn array(obj: &Bound<'_, PyAny>, name: &'static str) -> PyResult<Array> {
    static NDARRAY: PyOnceLock<Py<PyType>> = PyOnceLock::new();
    let py = obj.py();
    let (addr, shape, strides, elem, writable, dtype_name);
    let mut buffer = None;
    let is_ndarray = obj.get_type().is(NDARRAY.import(py, "numpy", "ndarray")?);
    let buf = if is_ndarray {
        PyUntypedBuffer::get(obj).ok()
    } else {
        None
    };
    if let Some(buf) = buf {
        let format = buf
            .format()
            .to_string_lossy()
            .trim_start_matches(['<', '=', '@'])
            .to_string();
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
        strides = buf
            .strides()
            .iter()
            .map(|&s| if s % size == 0 { s / size } else { isize::MIN })
            .collect();
        addr = buf.buf_ptr() as usize;
        writable = !buf.readonly();
        buffer = Some(buf);
    } else if !is_ndarray && obj.hasattr(intern!(py, "data_ptr"))? {
        if !obj.getattr(intern!(py, "is_cpu"))?.extract::<bool>()? {
            let device = obj.getattr(intern!(py, "device"))?.str()?.to_string();
            return Err(err(format!(
                "{name} must be on the CPU, got device {device:?}"
            )));
        }
        let known = torch_dtypes(py)?;
        if !obj.getattr(intern!(py, "layout"))?.is(&known[6].0) {
            return Err(err(format!("{name} must be a dense (strided) tensor")));
        }
        if obj.call_method0(intern!(py, "is_neg"))?.extract::<bool>()? {
            return Err(err(format!(
                "{name} is a lazy negated view; call .resolve_neg() first"
            )));
        }
        let dtype = obj.getattr(intern!(py, "dtype"))?;
        elem = known[..6]
            .iter()
            .chain(&known[7..])
            .find(|(d, _)| dtype.is(d))
            .map(|(_, e)| *e);
        dtype_name = dtype.str()?.to_string();
        shape = obj.getattr(intern!(py, "shape"))?.extract::<Vec<usize>>()?;
        strides = obj
            .call_method0(intern!(py, "stride"))?
            .extract::<Vec<isize>>()?;
        addr = obj
            .call_method0(intern!(py, "data_ptr"))?
            .extract::<usize>()?;
        writable = true;
    } else if let Ok(iface) = obj.getattr(intern!(py, "__array_interface__")) {
        let iface = iface
            .cast_into::<PyDict>()
            .map_err(|_| err(format!("{name}: bad __array_interface__")))?;
        let get = |key: &str| -> PyResult<Bound<'_, PyAny>> {
            iface
                .get_item(key)?
                .ok_or_else(|| err(format!("{name}: __array_interface__ lacks {key:?}")))
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
            bytes
                .iter()
                .map(|&s| if s % size == 0 { s / size } else { isize::MIN })
                .collect()
        };
    } else {
        return Err(err(format!(
            "{name} must be a torch CPU tensor or a numpy array"
        )));
    }
    let elem = elem.ok_or_else(|| err(format!("{name} has unsupported dtype {dtype_name}")))?;
    let numel = shape
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .ok_or_else(|| err(format!("{name} is too large")))?;
    let expected = contiguous_strides(&shape);
    if numel > 0
        && shape
            .iter()
            .zip(strides.iter().zip(&expected))
            .any(|(&n, (s, e))| n > 1 && s != e)
    {
        return Err(err(format!(
            "{name} must be C-contiguous (shape {shape:?}, strides {strides:?})"
        )));
    }
    if numel > 0 && (addr == 0 || addr % elem.size() != 0) {
        return Err(err(format!(
            "{name} data pointer is null or misaligned for {dtype_name}"
        )));
    }
    Ok(Array {
        name,
        addr,
        shape,
        elem,
        writable,
        _buffer: buffer,
    })
}

fn contiguous_strides(shape: &[usize]) -> Vec<isize> {
    let mut strides = vec![1isize; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1].saturating_mul(shape[i + 1] as isize);
    }
    strides
}

impl Array {
    fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    fn byte_range(&self) -> (usize, usize) {
        (self.addr, self.addr + self.numel() * self.elem.size())
    }

    fn overlaps(&self, other: &Array) -> bool {
        let (a0, a1) = self.byte_range();
        let (b0, b1) = other.byte_range();
        a0 < a1 && b0 < b1 && a0 < b1 && b0 < a1
    }

    fn expect(&self, rank: usize, elems: &[Elem]) -> PyResult<&Self> {
        if self.shape.len() != rank {
            return Err(err(format!(
                "{} must have {rank} dimensions, got shape {:?}",
                self.name, self.shape
            )));
        }
        if !elems.contains(&self.elem) {
            return Err(err(format!(
                "{} must be one of {elems:?}, got {:?}",
                self.name, self.elem
            )));
        }
        Ok(self)
    }

    /// SAFETY (callers): the Python object behind `self` is alive for `'a`, and no `&mut`
    /// view of an overlapping range exists for `'a`.
    unsafe fn slice<'a, T>(&self, elem: Elem) -> &'a [T] {
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
    unsafe fn slice_mut<'a, T>(&self, elem: Elem) -> PyResult<&'a mut [T]> {
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
    unsafe fn kv<'a>(&self) -> KvSlice<'a> {
        // SAFETY: forwarded contract; the element type matches the variant.
        unsafe {
            match self.elem {
                Elem::F32 => KvSlice::F32(self.slice::<f32>(Elem::F32)),
                Elem::F16 => KvSlice::F16(self.slice::<f16>(Elem::F16)),
                _ => KvSlice::Bf16(self.slice::<bf16>(Elem::Bf16)),
            }
        }
    }

    /// SAFETY: as `slice_mut`.
    unsafe fn kv_mut<'a>(&self) -> PyResult<KvSliceMut<'a>> {
        // SAFETY: forwarded contract; the element type matches the variant.
        unsafe {
            Ok(match self.elem {
                Elem::F32 => KvSliceMut::F32(self.slice_mut::<f32>(Elem::F32)?),
                Elem::F16 => KvSliceMut::F16(self.slice_mut::<f16>(Elem::F16)?),
                _ => KvSliceMut::Bf16(self.slice_mut::<bf16>(Elem::Bf16)?),
            })
        }
    }
}

const KV: &[Elem] = &[Elem::F32, Elem::F16, Elem::Bf16];

#[derive(Clone, Copy)]
enum Kernel {
    Fast,
    Reference,
}

#[allow(clippy::too_many_arguments)]
fn decode<'py>(
    py: Python<'py>,
    kernel: Kernel,
    q: &Bound<'py, PyAny>,
    k_cache: &Bound<'py, PyAny>,
    v_cache: &Bound<'py, PyAny>,
    block_table: &Bound<'py, PyAny>,
    rows: &Bound<'py, PyAny>,
    seq_lens: &Bound<'py, PyAny>,
    layer: i64,
    scale: f64,
    out: Option<Bound<'py, PyAny>>,
    k_new: Option<&Bound<'py, PyAny>>,
    v_new: Option<&Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    let qa = array(q, "q")?;
    qa.expect(3, &[Elem::F32])?;
    let ka = array(k_cache, "k_cache")?;
    let va = array(v_cache, "v_cache")?;
    ka.expect(5, KV)?;
    va.expect(5, KV)?;
    if ka.shape != va.shape || ka.elem != va.elem {
        return Err(err(format!(
            "k_cache {:?} {:?} and v_cache {:?} {:?} differ",
            ka.shape, ka.elem, va.shape, va.elem
        )));
    }
    let s = &ka.shape;
    let layout = Layout::new(s[0], s[1], s[2], s[3], s[4]).map_err(core_err)?;
    let (num_seqs, num_q_heads, head_dim) = (qa.shape[0], qa.shape[1], qa.shape[2]);
    if head_dim != layout.head_dim {
        return Err(err(format!(
            "q head_dim {head_dim} != cache head_dim {}",
            layout.head_dim
        )));
    }
    let ta = array(block_table, "block_table")?;
    ta.expect(2, &[Elem::I32])?;
    let ra = array(rows, "rows")?;
    let la = array(seq_lens, "seq_lens")?;
    for a in [&ra, &la] {
        a.expect(1, &[Elem::I32])?;
        if a.shape[0] != num_seqs {
            return Err(err(format!(
                "{} has {} entries but q has batch {num_seqs}",
                a.name, a.shape[0]
            )));
        }
    }
    if layer < 0 {
        return Err(err(format!("layer must be non-negative, got {layer}")));
    }
    let new = match (k_new, v_new) {
        (None, None) => None,
        (Some(k), Some(v)) => {
            let (kn, vn) = (array(k, "k_new")?, array(v, "v_new")?);
            for a in [&kn, &vn] {
                a.expect(3, &[ka.elem, Elem::F32])?;
                if a.shape != [num_seqs, layout.num_kv_heads, head_dim] {
                    return Err(err(format!(
                        "{} has shape {:?}, expected [{num_seqs}, {}, {head_dim}]",
                        a.name, a.shape, layout.num_kv_heads
                    )));
                }
            }
            Some((kn, vn))
        }
        _ => return Err(err("k_new and v_new must be given together")),
    };
    let out = match out {
        Some(o) => o,
        None => {
            static EMPTY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
            let empty = EMPTY.get_or_try_init(py, || {
                py.import("numpy")?.getattr("empty").map(Bound::unbind)
            })?;
            empty
                .bind(py)
                .call1(((num_seqs, num_q_heads, head_dim), "float32"))?
        }
    };
    let oa = array(&out, "out")?;
    oa.expect(3, &[Elem::F32])?;
    if oa.shape != qa.shape {
        return Err(err(format!(
            "out has shape {:?}, expected {:?}",
            oa.shape, qa.shape
        )));
    }
    let mut inputs = vec![&qa, &ka, &va, &ta, &ra, &la];
    if let Some((kn, vn)) = &new {
        inputs.extend([kn, vn]);
    }
    // Written arrays must not overlap anything else of the call.
    let mut written = vec![&oa];
    if new.is_some() {
        written.extend([&ka, &va]);
    }
    for w in &written {
        for a in inputs.iter().chain(&[&oa]) {
            if !std::ptr::eq(*w, *a) && w.overlaps(a) {
                return Err(err(format!("{} overlaps {} in memory", w.name, a.name)));
            }
        }
    }
    // SAFETY: every object behind these arrays is borrowed by this function until it returns,
    // and the checks above make each `&mut` view disjoint from every other view.
    let (qs, table_ids, row_ids, lens, out_s) = unsafe {
        (
            qa.slice::<f32>(Elem::F32),
            ta.slice::<i32>(Elem::I32),
            ra.slice::<i32>(Elem::I32),
            la.slice::<i32>(Elem::I32),
            oa.slice_mut::<f32>(Elem::F32)?,
        )
    };
    // SAFETY: as above; the caches are viewed mutably only when a store is requested.
    let (kv, new_s) = unsafe {
        match &new {
            None => ((Err(ka.kv()), Err(va.kv())), None),
            Some((kn, vn)) => (
                (Ok(ka.kv_mut()?), Ok(va.kv_mut()?)),
                Some((kn.kv(), vn.kv())),
            ),
        }
    };
    let table = BlockTable {
        block_ids: table_ids,
        width: ta.shape[1],
        rows: row_ids,
        seq_lens: lens,
    };
    let args = DecodeArgs {
        q: qs,
        num_q_heads,
        table,
        layer: layer as usize,
        scale: scale as f32,
    };
    py.detach(move || -> core::Result<()> {
        let (k, v) = match (kv, new_s) {
            ((Ok(mut k), Ok(mut v)), Some((kn, vn))) => {
                core::store_new_rows(&layout, &table, args.layer, &mut k, &mut v, kn, vn)?;
                (k.into_slice(), v.into_slice())
            }
            ((Err(k), Err(v)), _) => (k, v),
            _ => unreachable!("caches are viewed mutably exactly when new rows are given"),
        };
        match kernel {
            Kernel::Fast => core::paged_decode_attention(&args, &layout, k, v, out_s),
            Kernel::Reference => {
                core::paged_decode_attention_reference(&args, &layout, k, v, out_s)
            }
        }
    })
    .map_err(core_err)?;
    Ok(out)
}

/// Paged decode attention (the fast kernel); see rust_cpuattn.pyi.
#[pyfunction]
#[pyo3(signature = (q, k_cache, v_cache, block_table, rows, seq_lens, layer, scale, out=None, k_new=None, v_new=None))]
#[allow(clippy::too_many_arguments)]
fn paged_decode_attention<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    k_cache: &Bound<'py, PyAny>,
    v_cache: &Bound<'py, PyAny>,
    block_table: &Bound<'py, PyAny>,
    rows: &Bound<'py, PyAny>,
    seq_lens: &Bound<'py, PyAny>,
    layer: i64,
    scale: f64,
    out: Option<Bound<'py, PyAny>>,
    k_new: Option<Bound<'py, PyAny>>,
    v_new: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    decode(
        py,
        Kernel::Fast,
        q,
        k_cache,
        v_cache,
        block_table,
        rows,
        seq_lens,
        layer,
        scale,
        out,
        k_new.as_ref(),
        v_new.as_ref(),
    )
}

/// The plain reference kernel, same signature (for tests).
#[pyfunction]
#[pyo3(signature = (q, k_cache, v_cache, block_table, rows, seq_lens, layer, scale, out=None, k_new=None, v_new=None))]
#[allow(clippy::too_many_arguments)]
fn reference_paged_decode_attention<'py>(
    py: Python<'py>,
    q: &Bound<'py, PyAny>,
    k_cache: &Bound<'py, PyAny>,
    v_cache: &Bound<'py, PyAny>,
    block_table: &Bound<'py, PyAny>,
    rows: &Bound<'py, PyAny>,
    seq_lens: &Bound<'py, PyAny>,
    layer: i64,
    scale: f64,
    out: Option<Bound<'py, PyAny>>,
    k_new: Option<Bound<'py, PyAny>>,
    v_new: Option<Bound<'py, PyAny>>,
) -> PyResult<Bound<'py, PyAny>> {
    decode(
        py,
        Kernel::Reference,
        q,
        k_cache,
        v_cache,
        block_table,
        rows,
        seq_lens,
        layer,
        scale,
        out,
        k_new.as_ref(),
        v_new.as_ref(),
    )
}

/// Sets the number of kernel threads (the pool is rebuilt only when the number changes).
#[pyfunction]
fn set_num_threads(num_threads: i64) -> PyResult<()> {
    let n = usize::try_from(num_threads)
        .map_err(|_| err(format!("num_threads must be >= 1, got {num_threads}")))?;
    core::threads::set_num_threads(n).map_err(core_err)
}

#[pyfunction]
fn get_num_threads() -> usize {
    core::threads::num_threads()
}

/// The SIMD path calls use (RUST_CPUATTN_ISA or the best the CPU has).
#[pyfunction]
fn isa() -> PyResult<&'static str> {
    core::Isa::selected().map(core::Isa::name).map_err(core_err)
}

/// Every SIMD path this CPU supports, best first.
#[pyfunction]
fn supported_isas() -> Vec<&'static str> {
    core::Isa::supported()
        .into_iter()
        .map(core::Isa::name)
        .collect()
}

/// Reads a whole array once with the kernel's threads; returns bytes per second.
#[pyfunction]
fn read_bandwidth(py: Python<'_>, buffer: &Bound<'_, PyAny>) -> PyResult<f64> {
    let a = array(buffer, "buffer")?;
    let words = a.numel() * a.elem.size() / 8;
    if a.addr % 8 != 0 || words == 0 {
        return Err(err(
            "buffer must be 8-byte aligned and hold at least 8 bytes",
        ));
    }
    // SAFETY: `array` checked the object is a live, contiguous CPU buffer of at least
    // `words * 8` bytes (8-byte aligned, checked above); it is only read, and `buffer` is
    // borrowed until this function returns.
    let words: &[u64] = unsafe { std::slice::from_raw_parts(a.addr as *const u64, words) };
    let pool = core::threads::pool().map_err(core_err)?;
    Ok(py.detach(|| core::bandwidth::read_bandwidth(words, pool.as_deref()).0))
}

/// Block ids as i64: an int32/int64 array or tensor, or a sequence of ints.
fn block_ids(obj: &Bound<'_, PyAny>, name: &'static str) -> PyResult<Vec<i64>> {
    if let Ok(a) = array(obj, name) {
        a.expect(1, &[Elem::I32, Elem::I64])?;
        // SAFETY: a live, contiguous, aligned rank-1 array of the checked element type,
        // borrowed for this function; copied out at once.
        return Ok(unsafe {
            match a.elem {
                Elem::I32 => a
                    .slice::<i32>(Elem::I32)
                    .iter()
                    .map(|&x| x as i64)
                    .collect(),
                _ => a.slice::<i64>(Elem::I64).to_vec(),
            }
        });
    }
    obj.extract::<Vec<i64>>().map_err(|_| {
        err(format!(
            "{name} must be an int32/int64 array or a sequence of ints"
        ))
    })
}

/// Copies (layer, block) slabs from the source pools to the destination pools.
#[pyfunction]
#[pyo3(signature = (src_k, src_v, dst_k, dst_v, src_block_ids, dst_block_ids, layers=None))]
#[allow(clippy::too_many_arguments)]
fn copy_blocks(
    py: Python<'_>,
    src_k: &Bound<'_, PyAny>,
    src_v: &Bound<'_, PyAny>,
    dst_k: &Bound<'_, PyAny>,
    dst_v: &Bound<'_, PyAny>,
    src_block_ids: &Bound<'_, PyAny>,
    dst_block_ids: &Bound<'_, PyAny>,
    layers: Option<(i64, i64)>,
) -> PyResult<usize> {
    let (sk, sv) = (array(src_k, "src_k")?, array(src_v, "src_v")?);
    let (dk, dv) = (array(dst_k, "dst_k")?, array(dst_v, "dst_v")?);
    for a in [&sk, &sv, &dk, &dv] {
        a.expect(5, KV)?;
    }
    if sk.shape != sv.shape
        || dk.shape != dv.shape
        || sk.elem != sv.elem
        || dk.elem != dv.elem
        || sk.elem != dk.elem
    {
        return Err(err(format!(
            "pools differ: src_k {:?} {:?}, src_v {:?} {:?}, dst_k {:?} {:?}, dst_v {:?} {:?}",
            sk.shape, sk.elem, sv.shape, sv.elem, dk.shape, dk.elem, dv.shape, dv.elem
        )));
    }
    let layout = |s: &[usize]| Layout::new(s[0], s[1], s[2], s[3], s[4]).map_err(core_err);
    let (src_layout, dst_layout) = (layout(&sk.shape)?, layout(&dk.shape)?);
    let (src_ids, dst_ids) = (
        block_ids(src_block_ids, "src_block_ids")?,
        block_ids(dst_block_ids, "dst_block_ids")?,
    );
    let layers = match layers {
        None => 0..src_layout.num_layers,
        Some((a, b)) if 0 <= a && a <= b => a as usize..b as usize,
        Some(r) => {
            return Err(err(format!(
                "layers must be (start, stop) with 0 <= start <= stop, got {r:?}"
            )))
        }
    };
    for (w, others) in [(&dk, [&dv, &sk, &sv]), (&dv, [&dk, &sk, &sv])] {
        if let Some(o) = others.iter().find(|o| w.overlaps(o)) {
            return Err(err(format!("{} overlaps {} in memory", w.name, o.name)));
        }
    }
    let plan = core::copy::BlockCopy {
        src_block_ids: &src_ids,
        dst_block_ids: &dst_ids,
        layers,
    };
    core::copy::plan_runs(&src_layout, &dst_layout, &plan).map_err(core_err)?;
    // SAFETY: the four objects are borrowed until this function returns; the destinations
    // are disjoint from each other and from the sources (checked above).
    let (sk_s, sv_s, mut dk_s, mut dv_s) =
        unsafe { (sk.kv(), sv.kv(), dk.kv_mut()?, dv.kv_mut()?) };
    let pool = core::threads::pool().map_err(core_err)?;
    py.detach(|| -> core::Result<usize> {
        core::copy::copy_blocks(
            &src_layout,
            &dst_layout,
            sk_s,
            &mut dk_s,
            &plan,
            pool.as_deref(),
        )?;
        core::copy::copy_blocks(
            &src_layout,
            &dst_layout,
            sv_s,
            &mut dv_s,
            &plan,
            pool.as_deref(),
        )
    })
    .map_err(core_err)
}

#[pymodule]
#[pyo3(name = "rust_cpuattn")]
fn rust_cpuattn_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(paged_decode_attention, m)?)?;
    m.add_function(wrap_pyfunction!(reference_paged_decode_attention, m)?)?;
    m.add_function(wrap_pyfunction!(set_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(get_num_threads, m)?)?;
    m.add_function(wrap_pyfunction!(isa, m)?)?;
    m.add_function(wrap_pyfunction!(supported_isas, m)?)?;
    m.add_function(wrap_pyfunction!(read_bandwidth, m)?)?;
    m.add_function(wrap_pyfunction!(copy_blocks, m)?)?;
    Ok(())
}
