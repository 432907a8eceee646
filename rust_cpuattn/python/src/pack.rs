//! Binding of the core crate's blocked-layout packing (`rust_cpuattn::pack`).

use crate::array::{array, core_err, err, Elem, KV};
use pyo3::prelude::*;
use rust_cpuattn::pack::{pack_blocked as core_pack, BlockedLayout};
use rust_cpuattn::{bf16, f16};

/// Writes the weight `src` ([n, k], C-contiguous, f32, f16 or bf16) into `out` (1-D, same
/// element type, exactly `packed_len` elements) in the blocked layout given by `n_block`,
/// `k_block`, `k_pair` and `k_blocks_inner` (see `rust_cpuattn::pack`), padding with zeros.
/// A ValueError for a bad layout, sizes that do not match, or arrays that overlap.
#[pyfunction]
#[pyo3(signature = (src, out, n_block, k_block, k_pair, k_blocks_inner=true))]
pub(crate) fn pack_blocked(
    py: Python<'_>,
    src: &Bound<'_, PyAny>,
    out: &Bound<'_, PyAny>,
    n_block: usize,
    k_block: usize,
    k_pair: usize,
    k_blocks_inner: bool,
) -> PyResult<()> {
    let (sa, oa) = (array(src, "src")?, array(out, "out")?);
    sa.expect(2, KV)?;
    oa.expect(1, &[sa.elem])?;
    if sa.overlaps(&oa) {
        return Err(err("out overlaps src in memory"));
    }
    let layout = BlockedLayout { n_block, k_block, k_pair, k_blocks_inner };
    let (n, k) = (sa.shape[0], sa.shape[1]);
    // SAFETY: both objects are borrowed until this function returns; `out` is disjoint from
    // `src` (checked above) and its length is checked by the core before any write.
    unsafe {
        match sa.elem {
            Elem::F32 => {
                let (s, o) = (sa.slice::<f32>(sa.elem), oa.slice_mut::<f32>(oa.elem)?);
                py.detach(|| core_pack(s, n, k, &layout, o, true))
            }
            Elem::F16 => {
                let (s, o) = (sa.slice::<f16>(sa.elem), oa.slice_mut::<f16>(oa.elem)?);
                py.detach(|| core_pack(s, n, k, &layout, o, true))
            }
            _ => {
                let (s, o) = (sa.slice::<bf16>(sa.elem), oa.slice_mut::<bf16>(oa.elem)?);
                py.detach(|| core_pack(s, n, k, &layout, o, true))
            }
        }
    }
    .map_err(core_err)
}
