"""The CUDA attention wiring, exercised on the CPU: KVCache with the Triton kernels (in the
interpreter) for decode and cached prefill, the staged host decode job through an
asynchronous CPU lane, and scaled_dot_product_attention for fresh prompts; each against the
torch reference. The same checks on a real GPU are marked `cuda`."""

from __future__ import annotations

import pytest
import torch

from tests import triton_mode  # first: it picks Triton's mode before triton is imported
from tests.seeds import stable_seed

from neo_async.kernels.decode import paged_decode
from neo_async.kernels.prefill import paged_prefill
from neo_async.runner import cuda_lane
from neo_async.runner.attention import KVCache, pad_block_tables, prefill_attention, reference_prefill_attention
from neo_async.runner.staging import Staging, ThreadLane

HEADS, HEAD_DIM, BLOCK_SIZE = (6, 2), 64, 16
TABLES, LENS = [[7, 2], [5], [0, 9, 3]], [20, 1, 40]


def _cache(seed: str, device: str = "cpu") -> KVCache:
    gen = torch.Generator().manual_seed(stable_seed(seed))
    cache = KVCache(2, 12, HEADS[1], BLOCK_SIZE, HEAD_DIM, torch.float32, torch.device(device))
    cache.k.copy_(torch.randn(cache.k.shape, generator=gen))
    cache.v.copy_(torch.randn(cache.v.shape, generator=gen))
    return cache


def _decode_inputs(device: str = "cpu"):
    gen = torch.Generator().manual_seed(stable_seed("decode-inputs"))
    q = torch.randn(3, HEADS[0], HEAD_DIM, generator=gen)
    k_new = torch.randn(3, HEADS[1], HEAD_DIM, generator=gen)
    v_new = torch.randn(3, HEADS[1], HEAD_DIM, generator=gen)
    return q.to(device), k_new.to(device), v_new.to(device)


def _decode(cache: KVCache, q, k_new, v_new, job=None) -> torch.Tensor:
    tables = pad_block_tables(TABLES, cache.device)
    lens = torch.tensor(LENS, dtype=torch.int32, device=cache.device)
    out = torch.full(q.shape, float("nan"), device=q.device)
    make = job or cache.decode_job
    decode = make(1, q, tables, lens, HEAD_DIM**-0.5, k_new, v_new, out)
    decode.run()
    decode.finish()
    return out


@triton_mode.interpreted
def test_decode_through_the_kernels_equals_the_reference():
    fast, slow = _cache("decode"), _cache("decode")
    fast.use_rust_decode = slow.use_rust_decode = False
    fast.kernels = (paged_decode, paged_prefill)
    q, k_new, v_new = _decode_inputs()
    out_fast, out_slow = _decode(fast, q, k_new, v_new), _decode(slow, q, k_new, v_new)
    assert torch.equal(fast.k, slow.k) and torch.equal(fast.v, slow.v)  # new rows stored the same
    torch.testing.assert_close(out_fast, out_slow, rtol=0, atol=2e-5)


@triton_mode.interpreted
@pytest.mark.parametrize("start_pos,num_tokens", [(0, 20), (17, 23)])
def test_cached_prefill_through_the_kernel_equals_the_gather_path(start_pos, num_tokens):
    fast, slow = _cache("prefill"), _cache("prefill")
    fast.kernels = (paged_decode, paged_prefill)
    gen = torch.Generator().manual_seed(stable_seed("prefill-q", start_pos))
    q = torch.randn(num_tokens, HEADS[0], HEAD_DIM, generator=gen)
    blocks = torch.tensor(TABLES[2])
    args = (1, q, blocks, start_pos, start_pos + num_tokens, HEAD_DIM**-0.5)
    torch.testing.assert_close(fast.prefill(*args), slow.prefill(*args), rtol=0, atol=2e-5)


def test_staged_host_decode_job_equals_the_in_place_one():
    """The GPU-input host job (copy lane, slots, events) on an asynchronous CPU lane."""
    staged, plain = _cache("host"), _cache("host")
    lane = ThreadLane()
    staged.host_staging = Staging(lane, staged.k.dtype)
    q, k_new, v_new = _decode_inputs()
    for _ in range(3):  # slots reused across layers
        out_staged = _decode(staged, q, k_new, v_new, job=staged._staged_decode_job)
        out_plain = _decode(plain, q, k_new, v_new)
        assert torch.equal(out_staged, out_plain)
    assert torch.equal(staged.k, plain.k) and staged.host_staging.num_slots == 1
    lane.close()


@pytest.mark.parametrize("heads", [(4, 4), (6, 2)])
def test_fresh_prefill_through_sdpa_equals_the_reference(heads):
    gen = torch.Generator().manual_seed(stable_seed("sdpa", heads))
    q = torch.randn(19, heads[0], HEAD_DIM, generator=gen)
    k = torch.randn(heads[1], 19, HEAD_DIM, generator=gen)
    v = torch.randn(heads[1], 19, HEAD_DIM, generator=gen)
    got = cuda_lane.fresh_prefill(q, k, v, 0.125)
    torch.testing.assert_close(got, reference_prefill_attention(q, k, v, 0, 0.125), rtol=0, atol=1e-5)


def test_cpu_pools_keep_the_torch_and_rust_paths():
    assert cuda_lane.attention_kernels(torch.device("cpu")) is None
    assert _cache("cpu").kernels is None


@triton_mode.cuda
def test_cuda_pool_attention_equals_the_reference():
    fast, slow = _cache("gpu", "cuda"), _cache("gpu", "cuda")
    slow.kernels = None
    assert fast.kernels is not None
    q, k_new, v_new = _decode_inputs("cuda")
    torch.testing.assert_close(_decode(fast, q, k_new, v_new), _decode(slow, q, k_new, v_new), rtol=0, atol=5e-5)
    q = torch.randn(23, HEADS[0], HEAD_DIM, device="cuda")
    args = (1, q, torch.tensor(TABLES[2], device="cuda"), 17, 40, HEAD_DIM**-0.5)
    torch.testing.assert_close(fast.prefill(*args), slow.prefill(*args), rtol=0, atol=5e-5)
    k, v = torch.randn(2, HEADS[1], 23, HEAD_DIM, device="cuda").bfloat16()
    got = prefill_attention(q.bfloat16(), k, v, 0, 0.125)
    torch.testing.assert_close(got, reference_prefill_attention(q.bfloat16(), k, v, 0, 0.125), rtol=0, atol=2e-2)


@triton_mode.cuda
def test_host_decode_from_gpu_inputs_goes_through_pinned_staging():
    host, plain = _cache("host-gpu"), _cache("host-gpu")
    q, k_new, v_new = _decode_inputs()
    for _ in range(3):
        got = _decode(host, q.cuda(), k_new.cuda(), v_new.cuda())
        assert got.is_cuda and torch.equal(got.cpu(), _decode(plain, q, k_new, v_new))
    assert host.host_staging is not None and host.host_staging.free[0].q.is_pinned()


def test_device_attention_in_interpreter():
    """On a GPU machine (triton compiled here), the interpreter cases in a child process."""
    if triton_mode.IN_PROCESS:
        pytest.skip("the interpreter cases run in this process")
    triton_mode.run_in_interpreter(__file__)
