//! Binding of the GGUF dequantiser (`rust_cpuattn::dequant`): reads the stored bytes in place
//! from any contiguous buffer (a numpy view into the memory-mapped file), writes the values
//! straight into a torch CPU tensor or numpy array, with the GIL released.
//!
//! Contract with callers: until the call returns, no other thread frees or writes `src`,
//! or frees, reads or writes `out` (the GIL is released while it runs).

use crate::array::{array, core_err, err, Elem, KV};
use pyo3::buffer::PyUntypedBuffer;
use pyo3::prelude::*;
use rust_cpuattn::dequant::GgmlType;
use rust_cpuattn::{bf16, f16, KvSliceMut};

/// `src` holds rows of blocks of ggml type `ggml_type` (stored order); `out` (f32, f16 or bf16,
/// C-contiguous, rows of `out.shape[-1]` values) receives them: stored row r becomes row
/// `dest_rows[r]` (an int64 permutation of the rows) or row r. A ValueError for sizes that
/// do not match, an unknown type, or arrays that overlap.
#[pyfunction]
#[pyo3(signature = (ggml_type, src, out, dest_rows=None))]
pub(crate) fn dequantize(
    py: Python<'_>,
    ggml_type: i64,
    src: &Bound<'_, PyAny>,
    out: &Bound<'_, PyAny>,
    dest_rows: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let ty = u32::try_from(ggml_type)
        .map_err(|_| err(format!("ggml type {ggml_type} is not a ggml type id")))
        .and_then(|id| GgmlType::from_id(id).map_err(core_err))?;
    let buf = PyUntypedBuffer::get(src).map_err(|e| err(format!("src must support the buffer protocol: {e}")))?;
    if !buf.is_c_contiguous() {
        return Err(err("src must be a contiguous buffer"));
    }
    let (src_addr, src_len) = (buf.buf_ptr() as usize, buf.len_bytes());
    let oa = array(out, "out")?;
    if oa.shape.is_empty() || !KV.contains(&oa.elem) {
        return Err(err(format!(
            "out must be a float32, float16 or bfloat16 array of rank >= 1, got {:?} {:?}",
            oa.elem, oa.shape
        )));
    }
    let row_len = *oa.shape.last().unwrap();
    let (out_start, out_end) = (oa.addr, oa.addr + oa.numel() * oa.elem.size());
    if src_len > 0 && out_start < out_end && out_start < src_addr + src_len && src_addr < out_end {
        return Err(err("out overlaps src in memory"));
    }
    let rows = match dest_rows {
        None => None,
        Some(d) => {
            let ra = array(d, "dest_rows")?;
            ra.expect(1, &[Elem::I64])?;
            if ra.overlaps(&oa) {
                return Err(err("out overlaps dest_rows in memory"));
            }
            Some(ra)
        }
    };
    // SAFETY: `buf` keeps the exported buffer alive and unmoved until it drops at the end of
    // this function; it is C-contiguous with `len_bytes` bytes, only read, and disjoint from
    // `out` (checked above). A zero-length buffer may have any pointer: use an empty slice.
    let src_bytes: &[u8] =
        if src_len == 0 { &[] } else { unsafe { std::slice::from_raw_parts(src_addr as *const u8, src_len) } };
    // SAFETY: the objects behind `oa` and `rows` are borrowed until this function returns, and
    // `out` is disjoint from `src` and `dest_rows` (checked above).
    let (out_s, rows_s) = unsafe {
        let out_s = match oa.elem {
            Elem::F32 => KvSliceMut::F32(oa.slice_mut::<f32>(Elem::F32)?),
            Elem::F16 => KvSliceMut::F16(oa.slice_mut::<f16>(Elem::F16)?),
            _ => KvSliceMut::Bf16(oa.slice_mut::<bf16>(Elem::Bf16)?),
        };
        (out_s, rows.as_ref().map(|r| r.slice::<i64>(Elem::I64)))
    };
    py.detach(move || rust_cpuattn::dequant::dequantize(ty, src_bytes, out_s, row_len, rows_s)).map_err(core_err)
}
