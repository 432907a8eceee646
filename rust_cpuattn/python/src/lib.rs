//! Python module `rust_cpuattn`: converts torch CPU tensors / numpy arrays into slices
//! (zero-copy), validates, releases the GIL for the whole call and calls the core crate.
//! The row operations' bindings live in `rowops.rs`.
//!
//! Contract with callers (the GIL is released while a call runs): until a call returns, no
//! other thread resizes or frees any array passed to it, reads `out`, or writes any array
//! but the KV pools. Pools are shared per (layer, block) slab, the pool contract of
//! `rust_cpuattn::pool`: a call touches only the slabs listed below, nobody else writes a
//! slab it reads or reads or writes a slab it writes, and other threads may read and write
//! every other slab of the same pools meanwhile (pools are viewed through raw pointers here,
//! never as references to the whole array).
//! - decode: reads the slabs (layer, block_table[rows[b], j]) of k_cache and v_cache, for
//!   each request b and j < ceil(seq_lens[b] / block_size); with k_new/v_new it first writes
//!   row seq_lens[b] - 1 of each request, inside those slabs.
//! - copy_blocks: reads the slabs (l, src_block_ids[i]) of src_k and src_v and writes the
//!   slabs (l, dst_block_ids[i]) of dst_k and dst_v, for l in layers.

#[macro_use]
mod array;
mod decoder;
mod dequant;
mod lane;
mod linear;
mod pack;
mod rowops;

use array::{array, core_err, err, Array, Elem, KV};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use rust_cpuattn::{self as core, BlockTable, DecodeArgs, KvPool, KvPoolMut, KvSlice, Layout};

#[derive(Clone, Copy)]
pub(crate) enum Kernel {
    Fast,
    Reference,
}

/// The pools of a decode call: read only, or written first by a store of new rows.
pub(crate) enum Pools<'a> {
    Read(KvPool<'a>, KvPool<'a>),
    Store { k: KvPoolMut<'a>, v: KvPoolMut<'a>, k_new: KvSlice<'a>, v_new: KvSlice<'a> },
}

/// A validated decode call: the views of its arrays, checked once, kept alive (with the Python
/// objects behind them) for as long as the call's work may run.
pub(crate) struct DecodeCall {
    /// Keeps the arrays' owners alive (torch tensors hold no buffer export).
    _objects: Vec<Py<PyAny>>,
    qa: Array,
    ka: Array,
    va: Array,
    ta: Array,
    ra: Array,
    la: Array,
    new: Option<(Array, Array)>,
    oa: Array,
    layout: Layout,
    num_q_heads: usize,
    layer: usize,
    scale: f32,
}

/// The work of a decode call, owning nothing: views into a `DecodeCall`'s arrays.
pub(crate) struct DecodeWork<'a> {
    kernel: Kernel,
    layout: Layout,
    args: DecodeArgs<'a>,
    pools: Pools<'a>,
    out: &'a mut [f32],
}

impl DecodeWork<'_> {
    /// Runs the call (the store of new rows first, when asked). Needs no Python.
    pub(crate) fn run(self) -> core::Result<()> {
        let DecodeWork { kernel, layout, args, pools, out } = self;
        let mut attend = |k: KvPool<'_>, v: KvPool<'_>| match kernel {
            Kernel::Fast => core::paged_decode_attention(&args, &layout, k, v, out),
            Kernel::Reference => core::paged_decode_attention_reference(&args, &layout, k, v, out),
        };
        match pools {
            Pools::Read(k, v) => attend(k, v),
            Pools::Store { mut k, mut v, k_new, v_new } => {
                core::store_new_rows(&layout, &args.table, args.layer, &mut k, &mut v, k_new, v_new)?;
                attend(k.read_only(), v.read_only())
            }
        }
    }
}

impl DecodeCall {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new<'py>(
        py: Python<'py>,
        q: &Bound<'py, PyAny>,
        (k_cache, v_cache): (&Bound<'py, PyAny>, &Bound<'py, PyAny>),
        block_table: &Bound<'py, PyAny>,
        rows: &Bound<'py, PyAny>,
        seq_lens: &Bound<'py, PyAny>,
        layer: i64,
        scale: f64,
        out: Option<Bound<'py, PyAny>>,
        (k_new, v_new): (Option<&Bound<'py, PyAny>>, Option<&Bound<'py, PyAny>>),
    ) -> PyResult<(DecodeCall, Bound<'py, PyAny>)> {
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
            return Err(err(format!("q head_dim {head_dim} != cache head_dim {}", layout.head_dim)));
        }
        let ta = array(block_table, "block_table")?;
        ta.expect(2, &[Elem::I32])?;
        let ra = array(rows, "rows")?;
        let la = array(seq_lens, "seq_lens")?;
        for a in [&ra, &la] {
            a.expect(1, &[Elem::I32])?;
            if a.shape[0] != num_seqs {
                return Err(err(format!("{} has {} entries but q has batch {num_seqs}", a.name, a.shape[0])));
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
                let empty = EMPTY.get_or_try_init(py, || py.import("numpy")?.getattr("empty").map(Bound::unbind))?;
                empty.bind(py).call1(((num_seqs, num_q_heads, head_dim), "float32"))?
            }
        };
        let oa = array(&out, "out")?;
        oa.expect(3, &[Elem::F32])?;
        if oa.shape != qa.shape {
            return Err(err(format!("out has shape {:?}, expected {:?}", oa.shape, qa.shape)));
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
        let mut objects: Vec<Py<PyAny>> =
            [q, k_cache, v_cache, block_table, rows, seq_lens, &out].iter().map(|o| (*o).clone().unbind()).collect();
        objects.extend(k_new.into_iter().chain(v_new).map(|o| o.clone().unbind()));
        let call = DecodeCall {
            _objects: objects,
            qa,
            ka,
            va,
            ta,
            ra,
            la,
            new,
            oa,
            layout,
            num_q_heads,
            layer: layer as usize,
            scale: scale as f32,
        };
        Ok((call, out))
    }

    /// The call's work, viewing this call's arrays.
    ///
    /// SAFETY (callers): the work runs to its end before `self` is dropped (`self` keeps the
    /// Python objects alive), at most one work of a call exists, and until it ends nobody but
    /// the work reads `out` or writes any array of the call but the KV pools' other slabs (the
    /// module header's contract).
    pub(crate) unsafe fn work(&self, kernel: Kernel) -> PyResult<DecodeWork<'static>> {
        // SAFETY: the objects are alive while `self` is (it holds references to them), which
        // the caller extends over the work; the checks in `new` make the `&mut` view of `out`
        // disjoint from every other view; the pools are viewed writable only when a store is
        // requested, and the work touches only the slabs the module header lists.
        unsafe {
            let table = BlockTable {
                block_ids: self.ta.slice::<i32>(Elem::I32),
                width: self.ta.shape[1],
                rows: self.ra.slice::<i32>(Elem::I32),
                seq_lens: self.la.slice::<i32>(Elem::I32),
            };
            let args = DecodeArgs {
                q: self.qa.slice::<f32>(Elem::F32),
                num_q_heads: self.num_q_heads,
                table,
                layer: self.layer,
                scale: self.scale,
            };
            let pools = match &self.new {
                None => Pools::Read(self.ka.pool(), self.va.pool()),
                Some((kn, vn)) => {
                    Pools::Store { k: self.ka.pool_mut()?, v: self.va.pool_mut()?, k_new: kn.kv(), v_new: vn.kv() }
                }
            };
            let out = self.oa.slice_mut::<f32>(Elem::F32)?;
            Ok(DecodeWork { kernel, layout: self.layout, args, pools, out })
        }
    }
}

/// Defines a `#[pyfunction]` with the public decode signature running `$kernel`.
macro_rules! decode_function {
    ($name:ident, $kernel:expr, $doc:literal) => {
        #[doc = $doc]
        #[pyfunction]
        #[pyo3(signature = (q, k_cache, v_cache, block_table, rows, seq_lens, layer, scale, out=None, k_new=None, v_new=None))]
        #[allow(clippy::too_many_arguments)]
        fn $name<'py>(
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
            let caches = (k_cache, v_cache);
            let new = (k_new.as_ref(), v_new.as_ref());
            let (call, out) = DecodeCall::new(py, q, caches, block_table, rows, seq_lens, layer, scale, out, new)?;
            // SAFETY: the work runs to its end inside this function, while `call` lives.
            let work = unsafe { call.work($kernel)? };
            py.detach(move || work.run()).map_err(core_err)?;
            drop(call);
            Ok(out)
        }
    };
}

decode_function!(
    paged_decode_attention,
    Kernel::Fast,
    "Paged decode attention (the fast kernel); see rust_cpuattn.pyi."
);
decode_function!(
    reference_paged_decode_attention,
    Kernel::Reference,
    "The plain reference kernel, same signature (for tests)."
);

/// Sets the number of kernel threads (the team is rebuilt only when the number changes).
#[pyfunction]
fn set_num_threads(num_threads: i64) -> PyResult<()> {
    let n = usize::try_from(num_threads).map_err(|_| err(format!("num_threads must be >= 1, got {num_threads}")))?;
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
    core::Isa::supported().into_iter().map(core::Isa::name).collect()
}

/// Reads a whole array once with the kernel's threads; returns bytes per second. With
/// `slab_bytes`, reads it as slabs of that size in a scattered order (the kernel's pattern).
#[pyfunction]
#[pyo3(signature = (buffer, slab_bytes=None))]
fn read_bandwidth(py: Python<'_>, buffer: &Bound<'_, PyAny>, slab_bytes: Option<usize>) -> PyResult<f64> {
    let a = array(buffer, "buffer")?;
    let words = a.numel() * a.elem.size() / 8;
    if a.addr % 8 != 0 || words == 0 {
        return Err(err("buffer must be 8-byte aligned and hold at least 8 bytes"));
    }
    // SAFETY: `array` checked the object is a live, contiguous CPU buffer of at least
    // `words * 8` bytes (8-byte aligned, checked above); it is only read, and `buffer` is
    // borrowed until this function returns.
    let words: &[u64] = unsafe { std::slice::from_raw_parts(a.addr as *const u64, words) };
    let team = core::threads::team().map_err(core_err)?;
    match slab_bytes {
        None => Ok(py.detach(|| core::bandwidth::read_bandwidth(words, Some(&team)).0)),
        Some(b) if b >= 8 && b % 8 == 0 && b <= words.len() * 8 => {
            Ok(py.detach(|| core::bandwidth::read_bandwidth_scattered(words, b / 8, Some(&team)).0))
        }
        Some(b) => Err(err(format!("slab_bytes must be a multiple of 8 in [8, buffer size], got {b}"))),
    }
}

/// Block ids as i64: an int32/int64 array or tensor, or a sequence of ints.
fn block_ids(obj: &Bound<'_, PyAny>, name: &'static str) -> PyResult<Vec<i64>> {
    if let Ok(a) = array(obj, name) {
        a.expect(1, &[Elem::I32, Elem::I64])?;
        // SAFETY: a live, contiguous, aligned rank-1 array of the checked element type,
        // borrowed for this function; copied out at once.
        return Ok(unsafe {
            match a.elem {
                Elem::I32 => a.slice::<i32>(Elem::I32).iter().map(|&x| x as i64).collect(),
                _ => a.slice::<i64>(Elem::I64).to_vec(),
            }
        });
    }
    obj.extract::<Vec<i64>>().map_err(|_| err(format!("{name} must be an int32/int64 array or a sequence of ints")))
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
    if sk.shape != sv.shape || dk.shape != dv.shape || sk.elem != sv.elem || dk.elem != dv.elem || sk.elem != dk.elem {
        return Err(err(format!(
            "pools differ: src_k {:?} {:?}, src_v {:?} {:?}, dst_k {:?} {:?}, dst_v {:?} {:?}",
            sk.shape, sk.elem, sv.shape, sv.elem, dk.shape, dk.elem, dv.shape, dv.elem
        )));
    }
    let layout = |s: &[usize]| Layout::new(s[0], s[1], s[2], s[3], s[4]).map_err(core_err);
    let (src_layout, dst_layout) = (layout(&sk.shape)?, layout(&dk.shape)?);
    let (src_ids, dst_ids) = (block_ids(src_block_ids, "src_block_ids")?, block_ids(dst_block_ids, "dst_block_ids")?);
    let layers = match layers {
        None => 0..src_layout.num_layers,
        Some((a, b)) if 0 <= a && a <= b => a as usize..b as usize,
        Some(r) => return Err(err(format!("layers must be (start, stop) with 0 <= start <= stop, got {r:?}"))),
    };
    for (w, others) in [(&dk, [&dv, &sk, &sv]), (&dv, [&dk, &sk, &sv])] {
        if let Some(o) = others.iter().find(|o| w.overlaps(o)) {
            return Err(err(format!("{} overlaps {} in memory", w.name, o.name)));
        }
    }
    let plan = core::copy::BlockCopy { src_block_ids: &src_ids, dst_block_ids: &dst_ids, layers };
    core::copy::plan_runs(&src_layout, &dst_layout, &plan).map_err(core_err)?;
    // SAFETY: the four objects are borrowed until this function returns. The call reads only
    // the source slabs and writes only the destination slabs it names, which the caller keeps
    // from other threads (the pool contract); the destinations are disjoint from each other
    // and from the sources (checked above).
    let (sk_p, sv_p, dk_p, dv_p) = unsafe { (sk.pool(), sv.pool(), dk.pool_mut()?, dv.pool_mut()?) };
    let team = core::threads::team().map_err(core_err)?;
    py.detach(move || -> core::Result<usize> {
        core::copy::copy_blocks(&src_layout, &dst_layout, sk_p, dk_p, &plan, Some(&team))?;
        core::copy::copy_blocks(&src_layout, &dst_layout, sv_p, dv_p, &plan, Some(&team))
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
    m.add_class::<lane::HostLane>()?;
    m.add_class::<lane::DecodeTicket>()?;
    m.add_function(wrap_pyfunction!(rowops::rms_norm, m)?)?;
    m.add_function(wrap_pyfunction!(rowops::add_rms_norm, m)?)?;
    m.add_function(wrap_pyfunction!(rowops::rope, m)?)?;
    m.add_function(wrap_pyfunction!(rowops::silu_mul, m)?)?;
    m.add_function(wrap_pyfunction!(dequant::dequantize, m)?)?;
    m.add_function(wrap_pyfunction!(pack::pack_blocked, m)?)?;
    m.add_class::<linear::StoredWeight>()?;
    m.add_class::<decoder::DecoderLayer>()?;
    m.add_function(wrap_pyfunction!(linear::set_linear_threads, m)?)?;
    m.add_function(wrap_pyfunction!(linear::get_linear_threads, m)?)?;
    Ok(())
}
