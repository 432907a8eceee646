"""Staging of host decode jobs (runner/staging.py) on the CPU lanes: values and dtypes, slot
reuse only after release, buffer growth, and the event ordering of an asynchronous lane
(`ThreadLane`, copies on a worker thread like a CUDA copy stream) driven as a pipelined step
drives it: two sub-batches per layer, host jobs on the host lane."""

from __future__ import annotations

import threading

import pytest
import torch

from neo_async.runner.host_lane import HostLane
from neo_async.runner.staging import MAX_SLOTS, CpuLane, Staging, ThreadLane
from tests.seeds import stable_seed


@pytest.fixture
def thread_lane():
    lane = ThreadLane()
    yield lane
    lane.close()


def _inputs(seed: int, rows: int, heads=(6, 2), head_dim=8):
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(rows, heads[0], head_dim, generator=gen).bfloat16()
    k = torch.randn(rows, heads[1], head_dim, generator=gen)
    v = torch.randn(rows, heads[1], head_dim, generator=gen)
    return q, k, v


def _host_kernel(slot) -> None:
    """Stands in for the host attention call: reads the slot's inputs, writes its output."""
    slot.wait_for_host()
    group = slot.q.shape[1] // slot.k.shape[1]
    kv = (slot.k.float() + slot.v.float()).repeat_interleave(group, 1)
    slot.out.copy_(slot.q * 2 + kv)


def _expected(q, k, v):
    group = q.shape[1] // k.shape[1]
    kv = (k.bfloat16().float() + v.bfloat16().float()).repeat_interleave(group, 1)
    return q.float() * 2 + kv


@pytest.mark.parametrize("lane_cls", [CpuLane, ThreadLane])
def test_inputs_arrive_in_float32_and_the_pool_dtype(lane_cls):
    lane = lane_cls()
    staging = Staging(lane, torch.bfloat16)
    q, k, v = _inputs(1, 3)
    slot = staging.stage_in(q, k, v)
    slot.wait_for_host()
    assert slot.q.dtype == torch.float32 and slot.k.dtype == torch.bfloat16
    assert torch.equal(slot.q, q.float()) and torch.equal(slot.k, k.bfloat16()) and torch.equal(slot.v, v.bfloat16())
    _host_kernel(slot)
    out = torch.full((3, 6, 8), float("nan"))
    staging.stage_out(slot, out)
    assert torch.equal(out, _expected(q, k, v))
    if isinstance(lane, ThreadLane):
        lane.close()


def test_slots_are_reused_only_after_release():
    staging = Staging(CpuLane(), torch.float32)
    held = [staging.stage_in(*_inputs(i, 2)) for i in range(MAX_SLOTS)]
    assert len({id(s) for s in held}) == MAX_SLOTS
    with pytest.raises(RuntimeError, match="not finished"):
        staging.stage_in(*_inputs(9, 2))
    staging.stage_out(held[1], torch.empty(2, 6, 8))
    assert staging.stage_in(*_inputs(10, 2)) is held[1]


def test_buffers_grow_to_the_batch_and_keep_their_capacity():
    staging = Staging(CpuLane(), torch.float32)
    slot = staging.stage_in(*_inputs(1, 3))
    assert slot.capacity == 4 and slot.q.shape[0] == 3
    staging.stage_out(slot, torch.empty(3, 6, 8))
    q, k, v = _inputs(2, 9)
    assert staging.stage_in(q, k, v) is slot and slot.capacity == 16 and torch.equal(slot.q, q.float())
    staging.stage_out(slot, torch.empty(9, 6, 8))
    buffer = slot.buffers["q"]
    staging.stage_in(*_inputs(3, 5))
    assert slot.buffers["q"] is buffer  # smaller batch: same buffers


def test_the_host_waits_for_copies_still_queued_on_the_lane(thread_lane):
    gate = threading.Event()
    thread_lane.submit(gate.wait)  # the copy lane is busy with earlier work
    staging = Staging(thread_lane, torch.bfloat16)
    q, k, v = _inputs(4, 2)
    slot = staging.stage_in(q, k, v)
    assert not slot.inputs_ready.reached.is_set()
    host = HostLane()
    handle = host.submit(lambda: _host_kernel(slot))
    assert not handle.done.wait(0.05)  # held at inputs_ready
    gate.set()
    handle.wait()
    out = torch.empty(2, 6, 8)
    staging.stage_out(slot, out)  # returns once the copy-out is ordered before later work
    assert torch.equal(out, _expected(q, k, v))
    host.close()


def test_pipelined_step_order_with_two_sub_batches(thread_lane):
    """The pipelined executor's order: b1 one layer ahead; each layer stages b0 while b1's job
    is in flight. Two slots carry it, every output is exact."""
    staging = Staging(thread_lane, torch.bfloat16)
    host = HostLane()
    num_layers = 6
    seed = stable_seed("pipelined-staging")
    inputs = {(sub, layer): _inputs(seed + 10 * layer + sub, 2 + sub * 3) for layer in range(num_layers) for sub in (0, 1)}
    outs = {key: torch.full((q.shape[0], 6, 8), float("nan")) for key, (q, _, _) in inputs.items()}

    def submit(sub: int, layer: int):
        slot = staging.stage_in(*inputs[(sub, layer)])
        return slot, host.submit(lambda: _host_kernel(slot))

    pending1 = submit(1, 0)
    for layer in range(num_layers):
        pending0 = submit(0, layer)
        slot1, handle1 = pending1
        handle1.wait()
        staging.stage_out(slot1, outs[(1, layer)])
        if layer + 1 < num_layers:
            pending1 = submit(1, layer + 1)
        slot0, handle0 = pending0
        handle0.wait()
        staging.stage_out(slot0, outs[(0, layer)])
    assert staging.num_slots == 2
    for key, (q, k, v) in inputs.items():
        assert torch.equal(outs[key], _expected(q, k, v)), key
    host.close()
