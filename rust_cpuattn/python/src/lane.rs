//! `HostLane`: the crate's job lane (`rust_cpuattn::lane`) for decode calls. `submit_decode`
//! validates a call like `paged_decode_attention`, queues it and returns a `DecodeTicket`
//! at once; the call runs on the lane's thread without the GIL, and `wait` returns when it has
//! run. The ticket keeps every array of the call alive until then; a ticket dropped early waits
//! for its call first, so no call outlives its arrays.

use std::sync::Arc;

use pyo3::prelude::*;
use rust_cpuattn::lane::{Lane, Ticket};

use crate::array::{core_err, err};
use crate::{DecodeCall, Kernel};

/// A worker thread running decode calls in submission order (the host lane of pipelining).
#[pyclass(module = "rust_cpuattn")]
pub(crate) struct HostLane {
    lane: Lane,
}

/// One queued decode call.
#[pyclass(module = "rust_cpuattn")]
pub(crate) struct DecodeTicket {
    ticket: Arc<Ticket>,
    call: Option<DecodeCall>,
}

#[pymethods]
impl HostLane {
    #[new]
    #[pyo3(signature = (name = "neo-host-lane"))]
    fn new(name: &str) -> PyResult<Self> {
        Ok(HostLane { lane: Lane::new(name).map_err(core_err)? })
    }

    /// `paged_decode_attention`'s arguments (`out` required: the caller reads it after `wait`).
    #[pyo3(signature = (q, k_cache, v_cache, block_table, rows, seq_lens, layer, scale, out, k_new=None, v_new=None))]
    #[allow(clippy::too_many_arguments)]
    fn submit_decode<'py>(
        &self,
        py: Python<'py>,
        q: &Bound<'py, PyAny>,
        k_cache: &Bound<'py, PyAny>,
        v_cache: &Bound<'py, PyAny>,
        block_table: &Bound<'py, PyAny>,
        rows: &Bound<'py, PyAny>,
        seq_lens: &Bound<'py, PyAny>,
        layer: i64,
        scale: f64,
        out: Bound<'py, PyAny>,
        k_new: Option<Bound<'py, PyAny>>,
        v_new: Option<Bound<'py, PyAny>>,
    ) -> PyResult<DecodeTicket> {
        let caches = (k_cache, v_cache);
        let new = (k_new.as_ref(), v_new.as_ref());
        let (call, _) = DecodeCall::new(py, q, caches, block_table, rows, seq_lens, layer, scale, Some(out), new)?;
        // SAFETY: the ticket holds `call` until the work has ended (`wait` and `Drop` below
        // wait for it before letting go), and this is the call's only work.
        let work = unsafe { call.work(Kernel::Fast)? };
        let ticket = self.lane.submit(move || work.run());
        Ok(DecodeTicket { ticket, call: Some(call) })
    }

    /// Returns once every call submitted so far has run (their errors are their tickets').
    fn drain(&self, py: Python<'_>) {
        let ticket = self.lane.submit(|| Ok(()));
        let _ = py.detach(|| ticket.wait());
    }
}

#[pymethods]
impl DecodeTicket {
    /// Blocks (without the GIL) until the call has run; raises ValueError if it failed.
    fn wait(&mut self, py: Python<'_>) -> PyResult<()> {
        let ticket = Arc::clone(&self.ticket);
        let outcome = py.detach(move || ticket.wait());
        self.call = None;
        outcome.map_err(|e| err(e.message().to_string()))
    }

    /// Whether the call has run.
    #[getter]
    fn done(&self) -> bool {
        self.ticket.is_done()
    }
}

impl Drop for DecodeTicket {
    fn drop(&mut self) {
        if self.call.is_some() {
            let _ = self.ticket.wait();
        }
    }
}
