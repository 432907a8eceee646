//! Bindings of the core crate's row operations: 2-D row arrays (f32, f16 or bf16) and f32
//! parameter vectors, checked here; results are written into caller-provided arrays.

use crate::array::{array, core_err, disjoint, err, Array, Elem, KV};
use pyo3::prelude::*;
use rust_cpuattn::{self as core, bf16, f16};

fn rows<'py>(obj: &Bound<'py, PyAny>, name: &'static str) -> PyResult<Array> {
    let a = array(obj, name)?;
    a.expect(2, KV)?;
    Ok(a)
}

fn params<'py>(obj: &Bound<'py, PyAny>, name: &'static str, len: usize) -> PyResult<Array> {
    let a = array(obj, name)?;
    a.expect(1, &[Elem::F32])?;
    if a.shape[0] != len {
        return Err(err(format!("{name} has {} entries, expected {len}", a.shape[0])));
    }
    Ok(a)
}

fn same(a: &Array, b: &Array) -> PyResult<()> {
    if a.shape != b.shape || a.elem != b.elem {
        return Err(err(format!(
            "{} {:?} {:?} and {} {:?} {:?} differ",
            a.name, a.shape, a.elem, b.name, b.shape, b.elem
        )));
    }
    Ok(())
}


/// `out = x * rsqrt(mean(x^2, -1) + eps) * weight`; x, out [T, H]; weight [H] float32.
#[pyfunction]
pub(crate) fn rms_norm(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    weight: &Bound<'_, PyAny>,
    eps: f64,
    out: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let (xa, oa) = (rows(x, "x")?, rows(out, "out")?);
    same(&xa, &oa)?;
    let wa = params(weight, "weight", xa.shape[1])?;
    disjoint(&oa, &[&xa, &wa])?;
    // SAFETY: the objects are borrowed until this function returns; `out` is disjoint from
    // the inputs (checked above).
    with_elem!(xa.elem, T => unsafe {
        let (xs, ws, os) = (xa.slice::<T>(xa.elem), wa.slice::<f32>(Elem::F32), oa.slice_mut::<T>(oa.elem)?);
        py.detach(|| core::rowops::rms_norm(xs, ws, eps as f32, os)).map_err(core_err)
    })
}

/// `residual += x` in place, then `out = rms_norm(residual)`; residual, x, out [T, H].
#[pyfunction]
pub(crate) fn add_rms_norm(
    py: Python<'_>,
    residual: &Bound<'_, PyAny>,
    x: &Bound<'_, PyAny>,
    weight: &Bound<'_, PyAny>,
    eps: f64,
    out: &Bound<'_, PyAny>,
) -> PyResult<()> {
    let (ra, xa, oa) = (rows(residual, "residual")?, rows(x, "x")?, rows(out, "out")?);
    same(&ra, &xa)?;
    same(&ra, &oa)?;
    let wa = params(weight, "weight", xa.shape[1])?;
    disjoint(&oa, &[&ra, &xa, &wa])?;
    disjoint(&ra, &[&xa, &wa])?;
    // SAFETY: as in `rms_norm`; `residual` and `out` are each disjoint from everything else.
    with_elem!(xa.elem, T => unsafe {
        let (rs, xs, ws, os) =
            (ra.slice_mut::<T>(ra.elem)?, xa.slice::<T>(xa.elem), wa.slice::<f32>(Elem::F32), oa.slice_mut::<T>(oa.elem)?);
        py.detach(|| core::rowops::add_rms_norm(rs, xs, ws, eps as f32, os)).map_err(core_err)
    })
}

/// Rotates in place the first `num_heads` heads of each row of x [T, W] (head_dim =
/// 2 * cos.shape[1]) by cos, sin [T, head_dim / 2] float32 ("rotate half" convention).
#[pyfunction]
pub(crate) fn rope(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    cos: &Bound<'_, PyAny>,
    sin: &Bound<'_, PyAny>,
    num_heads: usize,
) -> PyResult<()> {
    let xa = rows(x, "x")?;
    let (ca, sa) = (array(cos, "cos")?, array(sin, "sin")?);
    for a in [&ca, &sa] {
        a.expect(2, &[Elem::F32])?;
        if a.shape[0] != xa.shape[0] {
            return Err(err(format!("{} has {} rows, x has {}", a.name, a.shape[0], xa.shape[0])));
        }
    }
    same(&ca, &sa)?;
    disjoint(&xa, &[&ca, &sa])?;
    // SAFETY: as in `rms_norm`; `x` is disjoint from `cos` and `sin`.
    with_elem!(xa.elem, T => unsafe {
        let (xs, cs, ss) = (xa.slice_mut::<T>(xa.elem)?, ca.slice::<f32>(Elem::F32), sa.slice::<f32>(Elem::F32));
        let width = xa.shape[1];
        py.detach(|| core::rowops::rope(xs, width, num_heads, cs, ss)).map_err(core_err)
    })
}

/// `out = silu(gate) * up` where gate_up [T, 2I] holds `[gate | up]` per row; out [T, I].
#[pyfunction]
pub(crate) fn silu_mul(py: Python<'_>, gate_up: &Bound<'_, PyAny>, out: &Bound<'_, PyAny>) -> PyResult<()> {
    let (ga, oa) = (rows(gate_up, "gate_up")?, rows(out, "out")?);
    if ga.elem != oa.elem || ga.shape[0] != oa.shape[0] || ga.shape[1] != 2 * oa.shape[1] {
        return Err(err(format!(
            "gate_up {:?} {:?} must be [T, 2I] for out {:?} {:?}",
            ga.shape, ga.elem, oa.shape, oa.elem
        )));
    }
    disjoint(&oa, &[&ga])?;
    // SAFETY: as in `rms_norm`.
    with_elem!(oa.elem, T => unsafe {
        let (gs, os) = (ga.slice::<T>(ga.elem), oa.slice_mut::<T>(oa.elem)?);
        let width = oa.shape[1];
        py.detach(|| core::rowops::silu_mul(gs, width, os)).map_err(core_err)
    })
}
