"""An optional decode backend's first call is checked against the Triton kernel (here in
Triton's interpreter): kept when it agrees, replaced for good when it raises (as a failing
JIT compile does) or differs (as a misread layout does), and that call's output is right
either way. FlashInfer itself never runs here; its stand-ins are plain functions of the
kernel's signature."""

from __future__ import annotations

import pytest
import torch

from tests import triton_mode  # first: it picks Triton's mode before triton is imported
from tests.test_triton_decode import make_case, reference

from neo_async.kernels.checked import CheckedDecode
from neo_async.kernels.decode import paged_decode

LENS = [1, 17, 40]


def _case(dtype=torch.float32):
    q, k, v, tables, table_t, lens_t = make_case(7, LENS, (8, 2), 64, dtype)
    return q, k, v, tables, table_t, lens_t, 64**-0.5


def _float64_kernel(tables, heads_flipped=False):
    """A correct decode (float64, through the block lists), or one that reads each group's
    K/V from the other KV head."""
    def run(q, k, v, _table_t, _lens_t, scale, out):
        if heads_flipped:
            k, v = k.flip(1), v.flip(1)
        out.copy_(reference(q, k, v, tables, LENS, scale))
        run.calls += 1

    run.calls = 0
    return run


def _failing_kernel(*_args):
    raise RuntimeError("ninja: build stopped: subcommand failed")


def _counting(kernel):
    def run(*args):
        run.calls += 1
        kernel(*args)

    run.calls = 0
    return run


@triton_mode.interpreted
def test_a_backend_that_agrees_is_kept_and_runs_alone_after_its_first_call():
    q, k, v, tables, table_t, lens_t, scale = _case()
    primary, fallback = _float64_kernel(tables), _counting(paged_decode)
    checked = CheckedDecode(primary, fallback, "flashinfer", "triton")
    for _ in range(3):
        out = torch.full(q.shape, float("nan"))
        checked(q, k, v, table_t, lens_t, scale, out)
        torch.testing.assert_close(out.double(), reference(q, k, v, tables, LENS, scale), rtol=0, atol=2e-5)
    assert checked.backend == "flashinfer" and primary.calls == 3 and fallback.calls == 1


@triton_mode.interpreted
@pytest.mark.parametrize("failure", ["raises", "differs"])
def test_a_backend_that_fails_its_first_call_is_replaced_for_good(failure):
    q, k, v, tables, table_t, lens_t, scale = _case(torch.bfloat16)
    primary = _counting(_failing_kernel if failure == "raises" else _float64_kernel(tables, heads_flipped=True))
    checked = CheckedDecode(primary, paged_decode, "flashinfer", "triton")
    expected = reference(q, k, v, tables, LENS, scale)
    for _ in range(2):
        out = torch.full(q.shape, float("nan"))
        checked(q, k, v, table_t, lens_t, scale, out)
        torch.testing.assert_close(out.double(), expected, rtol=0, atol=2e-5)
    assert checked.backend == "triton" and primary.calls == 1


def test_checked_decode_in_interpreter():
    """On a GPU machine (triton compiled here), the interpreter cases in a child process."""
    if triton_mode.IN_PROCESS:
        pytest.skip("the interpreter cases run in this process")
    triton_mode.run_in_interpreter(__file__)


def test_reports_name_the_backend_that_runs():
    from neo_async.kernels.checked import backend_name

    checked = CheckedDecode(_failing_kernel, paged_decode, "flashinfer", "triton")
    assert backend_name(None) == "torch" and backend_name(paged_decode) == "triton"
    assert backend_name(checked) == "flashinfer"
    checked._fall_back("test")
    assert backend_name(checked) == "triton"
