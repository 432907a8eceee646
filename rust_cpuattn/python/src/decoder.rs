//! Binding of the decoder layer halves (`rust_cpuattn::decoder`): a layer's stored weights and
//! norms held once (`DecoderLayer`), then `pre` and `post` on torch CPU tensors / numpy
//! arrays, the GIL released.
//!
//! Contract with callers: until a call returns, no other thread frees, resizes, reads or
//! writes its arguments.

use crate::array::{array, core_err, disjoint, err, Array, Elem};
use crate::linear::StoredWeight;
use pyo3::prelude::*;
use rust_cpuattn::decoder::{self, Exec, LayerWeights, Projection};
use rust_cpuattn::linear::{self, Arith};
use rust_cpuattn::{bf16, f16, Isa};

/// Runs of one projection: (first output column, weight).
type Runs = Vec<(usize, Py<StoredWeight>)>;

/// One Llama-family decoder layer's projections (as stored) and norms. Immutable.
#[pyclass(module = "rust_cpuattn", frozen)]
pub(crate) struct DecoderLayer {
    attn_norm: Vec<f32>,
    qkv: Runs,
    qkv_bias: Option<Vec<f32>>,
    rotated_heads: usize,
    o: Runs,
    mlp_norm: Vec<f32>,
    gate_up: Runs,
    down: Runs,
    eps: f32,
    arith: Arith,
}

fn projection(runs: &Runs) -> PyResult<Projection<'_>> {
    Projection::new(runs.iter().map(|(start, w)| (*start, w.get().weight())).collect()).map_err(core_err)
}

fn vector(obj: &Bound<'_, PyAny>, name: &'static str) -> PyResult<Vec<f32>> {
    let a = array(obj, name)?;
    a.expect(1, &[Elem::F32])?;
    // SAFETY: the object is borrowed for this call; the values are copied out at once.
    Ok(unsafe { a.slice::<f32>(Elem::F32) }.to_vec())
}

fn rows(obj: &Bound<'_, PyAny>, name: &'static str, elems: &[Elem]) -> PyResult<Array> {
    let a = array(obj, name)?;
    a.expect(2, elems)?;
    Ok(a)
}

impl DecoderLayer {
    fn weights(&self) -> PyResult<LayerWeights<'_>> {
        let w = LayerWeights {
            attn_norm: &self.attn_norm,
            qkv: projection(&self.qkv)?,
            qkv_bias: self.qkv_bias.as_deref(),
            rotated_heads: self.rotated_heads,
            o: projection(&self.o)?,
            mlp_norm: &self.mlp_norm,
            gate_up: projection(&self.gate_up)?,
            down: projection(&self.down)?,
            eps: self.eps,
        };
        w.check().map_err(core_err)?;
        Ok(w)
    }
}

const ACTS: &[Elem] = &[Elem::F32, Elem::Bf16];

#[pymethods]
impl DecoderLayer {
    /// qkv, o, gate_up, down: lists of (first output column, StoredWeight) tiling each
    /// projection; attn_norm, mlp_norm [hidden] and qkv_bias [qkv rows] float32 (copied);
    /// rotated_heads: the heads RoPE rotates (query + KV heads); arith: "f32" or "int8".
    #[new]
    #[pyo3(signature = (attn_norm, qkv, o, mlp_norm, gate_up, down, eps, rotated_heads, qkv_bias=None, arith="f32"))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        attn_norm: &Bound<'_, PyAny>,
        qkv: Runs,
        o: Runs,
        mlp_norm: &Bound<'_, PyAny>,
        gate_up: Runs,
        down: Runs,
        eps: f64,
        rotated_heads: usize,
        qkv_bias: Option<&Bound<'_, PyAny>>,
        arith: &str,
    ) -> PyResult<Self> {
        let layer = DecoderLayer {
            attn_norm: vector(attn_norm, "attn_norm")?,
            qkv,
            qkv_bias: qkv_bias.map(|b| vector(b, "qkv_bias")).transpose()?,
            rotated_heads,
            o,
            mlp_norm: vector(mlp_norm, "mlp_norm")?,
            gate_up,
            down,
            eps: eps as f32,
            arith: Arith::from_name(arith).map_err(core_err)?,
        };
        layer.weights()?;
        Ok(layer)
    }

    /// qkv [T, qkv rows] = rope(rms_norm(hidden) @ W_qkv^T + bias): hidden [T, hidden] float32
    /// or bfloat16, qkv the same dtype, cos and sin [T, head_dim / 2] float32.
    fn pre(
        &self,
        py: Python<'_>,
        hidden: &Bound<'_, PyAny>,
        cos: &Bound<'_, PyAny>,
        sin: &Bound<'_, PyAny>,
        qkv: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let (ha, qa) = (rows(hidden, "hidden", ACTS)?, rows(qkv, "qkv", ACTS)?);
        let (ca, sa) = (rows(cos, "cos", &[Elem::F32])?, rows(sin, "sin", &[Elem::F32])?);
        if qa.elem != ha.elem {
            return Err(err(format!("qkv is {:?}, hidden {:?}", qa.elem, ha.elem)));
        }
        if ca.shape != sa.shape || ca.shape[0] != ha.shape[0] {
            return Err(err(format!(
                "cos {:?} and sin {:?} must both have hidden's {} rows",
                ca.shape, sa.shape, ha.shape[0]
            )));
        }
        disjoint(&qa, &[&ha, &ca, &sa])?;
        let w = self.weights()?;
        let team = linear::team().map_err(core_err)?;
        let exec = Exec { isa: Isa::selected().map_err(core_err)?, team: Some(&team), arith: self.arith };
        // SAFETY: the objects are borrowed until this function returns; qkv, the only array
        // written, is disjoint from the others (checked above).
        with_elem!(ha.elem, T => unsafe {
            let (hs, cs, ss, qs) = (ha.slice::<T>(ha.elem), ca.slice::<f32>(Elem::F32), sa.slice::<f32>(Elem::F32), qa.slice_mut::<T>(qa.elem)?);
            py.detach(|| decoder::pre(&w, hs, cs, ss, qs, &exec)).map_err(core_err)
        })
    }

    /// hidden [T, hidden] (float32 or bfloat16) += the layer's MLP of add_rms_norm(hidden,
    /// attn @ W_o^T), in place; attn [T, q rows] float32.
    fn post(&self, py: Python<'_>, hidden: &Bound<'_, PyAny>, attn: &Bound<'_, PyAny>) -> PyResult<()> {
        let (ha, aa) = (rows(hidden, "hidden", ACTS)?, rows(attn, "attn", &[Elem::F32])?);
        if aa.shape[0] != ha.shape[0] {
            return Err(err(format!("attn has {} rows, hidden {}", aa.shape[0], ha.shape[0])));
        }
        disjoint(&ha, &[&aa])?;
        let w = self.weights()?;
        let team = linear::team().map_err(core_err)?;
        let exec = Exec { isa: Isa::selected().map_err(core_err)?, team: Some(&team), arith: self.arith };
        // SAFETY: as in `pre`; hidden, the only array written, is disjoint from attn.
        with_elem!(ha.elem, T => unsafe {
            let (hs, at) = (ha.slice_mut::<T>(ha.elem)?, aa.slice::<f32>(Elem::F32));
            py.detach(|| decoder::post(&w, hs, at, &exec)).map_err(core_err)
        })
    }
}
