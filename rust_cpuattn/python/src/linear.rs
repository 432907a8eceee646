//! Binding of the linear kernels (`rust_cpuattn::linear`): a weight copied once into memory the
//! extension owns (`StoredWeight`), then products with torch CPU tensors / numpy arrays, the
//! GIL released.
//!
//! Contract with callers: until a product returns, no other thread frees or resizes `x` or
//! `out`, reads `out`, or writes `x`.

use crate::array::{array, core_err, err, Elem, KV};
use pyo3::buffer::PyUntypedBuffer;
use pyo3::prelude::*;
use rust_cpuattn::dequant::GgmlType;
use rust_cpuattn::linear::{self, Arith, Out, Weight};
use rust_cpuattn::{bf16, f16, Isa, KvSlice, KvSliceMut};

/// A weight `[rows, cols]` in its stored format (a ggml type id: GGUF blocks, or F32/F16/BF16
/// values), in memory owned here (64-byte aligned). Immutable.
#[pyclass(module = "rust_cpuattn", frozen)]
pub(crate) struct StoredWeight {
    /// The bytes, in u64 words for alignment; `len` bytes are the weight.
    words: Vec<u64>,
    len: usize,
    ty: GgmlType,
    #[pyo3(get)]
    rows: usize,
    #[pyo3(get)]
    cols: usize,
}

impl StoredWeight {
    pub(crate) fn weight(&self) -> Weight<'_> {
        // SAFETY: `words` holds at least `len` initialised bytes and is never written after
        // construction (the class is frozen and the field private).
        let bytes = unsafe { std::slice::from_raw_parts(self.words.as_ptr() as *const u8, self.len) };
        Weight { ty: self.ty, data: bytes, rows: self.rows, cols: self.cols }
    }
}

fn isa_arg(isa: Option<&str>) -> PyResult<Isa> {
    match isa {
        None => Isa::selected().map_err(core_err),
        Some(name) => {
            let isa = Isa::from_name(name).map_err(core_err)?;
            if !isa.is_supported() {
                return Err(err(format!("this CPU does not support {name}")));
            }
            Ok(isa)
        }
    }
}

#[pymethods]
impl StoredWeight {
    /// Copies `src` (any C-contiguous buffer: the stored bytes of `rows` rows of `cols` values
    /// of `ggml_type`, row-major) into memory owned by the weight.
    #[new]
    fn new(py: Python<'_>, ggml_type: i64, src: &Bound<'_, PyAny>, rows: usize, cols: usize) -> PyResult<Self> {
        let ty = u32::try_from(ggml_type)
            .map_err(|_| err(format!("ggml type {ggml_type} is not a ggml type id")))
            .and_then(|id| GgmlType::from_id(id).map_err(core_err))?;
        let buf = PyUntypedBuffer::get(src).map_err(|e| err(format!("src must support the buffer protocol: {e}")))?;
        if !buf.is_c_contiguous() {
            return Err(err("src must be a contiguous buffer"));
        }
        let len = buf.len_bytes();
        let mut words = vec![0u64; len.div_ceil(8)];
        if len > 0 {
            // SAFETY: `buf` keeps the exported buffer alive and unmoved until it drops at the end
            // of this function; it holds `len` contiguous bytes; `words` is a fresh allocation
            // of at least `len` bytes.
            let addr = buf.buf_ptr() as usize;
            let dst = words.as_mut_ptr() as usize;
            py.detach(|| unsafe { std::ptr::copy_nonoverlapping(addr as *const u8, dst as *mut u8, len) });
        }
        drop(buf);
        let weight = StoredWeight { words, len, ty, rows, cols };
        let w = weight.weight();
        Weight::new(w.ty, w.data, rows, cols).map_err(core_err)?;
        Ok(weight)
    }

    /// The ggml type id.
    #[getter]
    fn ggml_type(&self) -> u32 {
        self.ty as u32
    }

    /// Bytes of the stored weight.
    #[getter]
    fn nbytes(&self) -> usize {
        self.len
    }

    /// `out[m, offset + n] = sum_k x[m, k] * W[n, k]`: x [M, cols] and out [M, stride]
    /// (float32, float16 or bfloat16, C-contiguous, disjoint), offset + rows <= stride.
    /// `isa` forces a SIMD path (the CPU must have it); `reference` runs the plain oracle;
    /// `arith`: "f32" (exact up to f32 rounding) or "int8" (Q4_0/Q4_1/Q8_0 weights times the
    /// activation quantised to Q8 blocks, integer dots; other types run f32).
    #[pyo3(signature = (x, out, offset=0, isa=None, reference=false, arith="f32"))]
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        out: &Bound<'_, PyAny>,
        offset: usize,
        isa: Option<&str>,
        reference: bool,
        arith: &str,
    ) -> PyResult<()> {
        let arith = Arith::from_name(arith).map_err(core_err)?;
        let (xa, oa) = (array(x, "x")?, array(out, "out")?);
        xa.expect(2, KV)?;
        oa.expect(2, KV)?;
        if xa.shape[1] != self.cols {
            return Err(err(format!("x has {} columns, the weight {}", xa.shape[1], self.cols)));
        }
        if oa.shape[0] != xa.shape[0] {
            return Err(err(format!("out has {} rows, x has {}", oa.shape[0], xa.shape[0])));
        }
        if oa.overlaps(&xa) {
            return Err(err("out overlaps x in memory"));
        }
        let stride = oa.shape[1];
        let isa = isa_arg(isa)?;
        let w = self.weight();
        // SAFETY: both objects are borrowed until this function returns; `out` is disjoint
        // from `x` (checked above) and from the weight (memory owned here).
        unsafe {
            let xs = match xa.elem {
                Elem::F32 => KvSlice::F32(xa.slice::<f32>(Elem::F32)),
                Elem::F16 => KvSlice::F16(xa.slice::<f16>(Elem::F16)),
                _ => KvSlice::Bf16(xa.slice::<bf16>(Elem::Bf16)),
            };
            let ys = match oa.elem {
                Elem::F32 => KvSliceMut::F32(oa.slice_mut::<f32>(Elem::F32)?),
                Elem::F16 => KvSliceMut::F16(oa.slice_mut::<f16>(Elem::F16)?),
                _ => KvSliceMut::Bf16(oa.slice_mut::<bf16>(Elem::Bf16)?),
            };
            let out = Out { y: ys, stride, offset };
            if reference {
                return py.detach(|| linear::linear_reference(&w, xs, out)).map_err(core_err);
            }
            let team = linear::team().map_err(core_err)?;
            py.detach(|| linear::linear_arith_with(&w, xs, out, isa, Some(&team), arith)).map_err(core_err)
        }
    }
}

/// Sets the linear kernels' team size (rebuilt only when it changes).
#[pyfunction]
pub(crate) fn set_linear_threads(num_threads: i64) -> PyResult<()> {
    let n = usize::try_from(num_threads).map_err(|_| err(format!("num_threads must be >= 1, got {num_threads}")))?;
    linear::set_num_threads(n).map_err(core_err)
}

#[pyfunction]
pub(crate) fn get_linear_threads() -> usize {
    linear::num_threads()
}
