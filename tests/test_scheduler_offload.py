"""The scheduler with two pools, without a model: placement, swaps, the watermark, recompute
as the last resort, and a property test over random arrivals, lengths, aborts and pools."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neo_async.config import SchedulerConfig
from neo_async.kv.block_pool import BlockPool
from neo_async.sampling_params import SamplingParams
from neo_async.sched.plan import CopyRun, ExecuteOutput, KVLocation, coalesce
from neo_async.sched.request import Request
from neo_async.sched.scheduler import Scheduler

DEVICE, HOST = KVLocation.DEVICE, KVLocation.HOST


def make_scheduler(device_blocks=8, host_blocks=32, block_size=4, offload="neo", **cfg) -> Scheduler:
    config = SchedulerConfig(**{"max_num_seqs": 8, "max_num_batched_tokens": 64, **cfg})
    return Scheduler(config, BlockPool(device_blocks, block_size, "device"), BlockPool(host_blocks, block_size, "host"), offload)


def make_request(rid: str, num_prompt: int, max_tokens: int = 8) -> Request:
    return Request(rid, list(range(10, 10 + num_prompt)), SamplingParams(max_tokens=max_tokens), 0.0, num_prompt + max_tokens)


def run_step(s: Scheduler):
    plan = s.schedule()
    out = ExecuteOutput({c.request_id: 7 for c in plan.chunks if c.is_sampling})
    for r in s.update(plan, out):
        if r.num_output_tokens >= r.params.max_tokens:
            s.finish(r.request_id)
    s.check()
    return plan


def test_coalesce_merges_runs_consecutive_on_both_sides():
    assert coalesce([5, 3, 4, 9], [12, 10, 11, 2]) == [CopyRun(3, 10, 3), CopyRun(9, 2, 1)]
    assert coalesce([1, 2], [5, 7]) == [CopyRun(1, 5, 1), CopyRun(2, 7, 1)]
    assert coalesce([], []) == []


def test_a_prompt_that_does_not_fit_the_device_goes_to_the_host_and_later_ones_follow():
    s = make_scheduler(device_blocks=8)
    s.add(make_request("a", 20))  # 5 blocks: device
    s.add(make_request("b", 20))  # would leave no room for a's growth: host
    s.add(make_request("c", 2))  # fits the device, but follows b to the host (FCFS round)
    plan = run_step(s)
    assert [(c.request_id, c.location) for c in plan.chunks] == [("a", DEVICE), ("b", HOST), ("c", HOST)]
    assert s.host_pool.num_used == 5 + 1 and s.device_pool.num_used == 5


def test_device_shortage_swaps_out_the_newest_device_request():
    s = make_scheduler(device_blocks=8)
    s.add(make_request("a", 12, max_tokens=16))  # 3 blocks, grows to 7
    s.add(make_request("b", 12, max_tokens=16))  # 3 blocks, grows to 7
    run_step(s)
    assert s.requests["a"].location is DEVICE and s.requests["b"].location is DEVICE
    swapped_out, moved = [], 0
    while s.num_unfinished:
        plan = run_step(s)
        swapped_out += plan.swapped_out_ids
        moved += sum(r.num_blocks for r in plan.swap_out)
        if plan.swapped_out_ids:
            assert [c.location for c in plan.chunks] == [DEVICE, HOST]  # b runs on the host at once
    assert swapped_out == ["b"] and moved == 4  # the newest device request, copied (not recomputed)
    assert s.num_preemptions_total == 0
    assert s.device_pool.num_used == 0 and s.host_pool.num_used == 0


@pytest.mark.parametrize("watermark, comes_back", [(0.5, False), (0.95, True)])
def test_swap_in_waits_for_room_under_the_watermark(watermark, comes_back):
    s = make_scheduler(device_blocks=8, swap_in_watermark=watermark)
    s.add(make_request("a", 16, max_tokens=8))  # 4 device blocks, grows to 6
    s.add(make_request("b", 16, max_tokens=12))  # host: the device keeps room for a's growth
    run_step(s)
    assert s.requests["b"].location is HOST
    while "a" in s.requests:
        assert not run_step(s).swapped_in_ids  # a's blocks + b's 4-6 + 1 never fit under 7.6
    plan = run_step(s)  # b holds 6 blocks: 6 + 1 <= 0.95 * 8, but not <= 0.5 * 8
    assert plan.swapped_in_ids == (["b"] if comes_back else [])
    assert plan.chunks[0].location is (DEVICE if comes_back else HOST)


def test_swap_in_moves_the_oldest_host_request_when_room_comes_back():
    s = make_scheduler(device_blocks=16)
    s.add(make_request("a", 40, max_tokens=4))  # 10 blocks on the device
    s.add(make_request("b", 24, max_tokens=20))  # 6 blocks + a's growth do not fit: host
    run_step(s)
    assert s.requests["b"].location is HOST
    seen_in = []
    while s.num_unfinished:
        plan = run_step(s)
        seen_in += plan.swapped_in_ids
        if plan.swapped_in_ids:
            assert [c.location for c in plan.chunks if c.request_id == "b"] == [DEVICE]  # runs on the device at once
    assert seen_in == ["b"]


def test_recompute_only_when_the_host_cannot_take_the_victim():
    s = make_scheduler(device_blocks=6, host_blocks=6)
    seen = []  # (location, blocks the victim held, free host blocks) at each recompute preemption
    preempt = s._preempt

    def recording_preempt(request, plan):
        held = len(s.pools[request.location].block_ids(request.request_id))
        seen.append((request.location, held, s.host_pool.num_free))
        preempt(request, plan)

    s._preempt = recording_preempt
    for rid in "abcd":
        s.add(make_request(rid, 8, max_tokens=16))
    while s.num_unfinished:
        run_step(s)
    assert seen, "both pools fill up in this scenario"
    for location, held, host_free in seen:
        assert location is HOST or held > host_free


def test_full_mode_puts_everything_on_the_host():
    s = make_scheduler(offload="full", device_blocks=4)
    for rid in "ab":
        s.add(make_request(rid, 10))
    plan = run_step(s)
    assert {c.location for c in plan.chunks} == {HOST} and s.device_pool.num_used == 0


def test_capacity_is_the_larger_pool_in_use():
    s = make_scheduler(device_blocks=4, host_blocks=32, block_size=4)
    s.add(make_request("long", 100, max_tokens=20))  # 120 tokens: only the host holds it
    plan = run_step(s)
    assert plan.chunks[0].location is HOST
    with pytest.raises(ValueError, match=r"more than any KV pool holds \(device pool 16 tokens, host pool 128 tokens\)"):
        s.add(make_request("huge", 120, max_tokens=20))
    off = make_scheduler(offload="off", device_blocks=4, host_blocks=32)
    with pytest.raises(ValueError, match=r"\(device pool 16 tokens\)"):
        off.add(make_request("long", 100, max_tokens=20))


def test_aborting_a_swapped_or_host_request_frees_its_blocks():
    s = make_scheduler(device_blocks=8, max_num_batched_tokens=16)
    s.add(make_request("a", 20))
    s.add(make_request("b", 30))  # chunked host prefill
    run_step(s)
    run_step(s)
    b = s.requests["b"]
    assert b.location is HOST and 0 < b.num_computed_tokens < 30 and s.host_pool.num_used > 0
    s.finish("b")
    s.check()
    assert s.host_pool.num_used == 0


@st.composite
def scenarios(draw):
    offload = draw(st.sampled_from(["off", "neo", "full"]))
    block_size = draw(st.sampled_from([4, 8]))
    device_blocks = draw(st.integers(2, 24))
    host_blocks = draw(st.integers(1 if offload == "full" else 0, 40))
    budget = draw(st.integers(4, 48))
    arrivals = draw(
        st.lists(
            st.tuples(st.integers(0, 30), st.integers(1, 60), st.integers(1, 24), st.one_of(st.none(), st.integers(0, 40))),
            min_size=1,
            max_size=14,
        )
    )
    return offload, block_size, device_blocks, host_blocks, budget, draw(st.integers(1, 8)), arrivals


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_property_every_request_finishes_or_is_refused_and_no_block_leaks(scenario):
    offload, block_size, device_blocks, host_blocks, budget, max_seqs, arrivals = scenario
    config = SchedulerConfig(max_num_seqs=max_seqs, max_num_batched_tokens=max(budget, max_seqs))
    s = Scheduler(config, BlockPool(device_blocks, block_size, "device"), BlockPool(host_blocks, block_size, "host"), offload)
    pending = sorted(((at, i, n, m, abort) for i, (at, n, m, abort) in enumerate(arrivals)), key=lambda a: a[0])
    total_work = sum(n + m + 1 for _, n, m, _ in arrivals)
    last_progress: dict[str, int] = {}
    aborts: dict[int, list[str]] = {}
    outcome: dict[str, str] = {}
    step = 0
    while pending or s.num_unfinished:
        while pending and pending[0][0] <= step:
            _, i, n, m, abort_after = pending.pop(0)
            rid = f"r{i}"
            try:
                s.add(make_request(rid, n, m))
            except ValueError as exc:
                assert "more than any KV pool holds" in str(exc)
                outcome[rid] = "refused"
                continue
            last_progress[rid] = step
            if abort_after is not None:
                aborts.setdefault(step + abort_after, []).append(rid)
        plan = run_step(s)
        for chunk in plan.chunks:
            last_progress[chunk.request_id] = step
        for rid in aborts.pop(step, []):
            if s.finish(rid) is not None:
                outcome[rid] = "aborted"
                s.check()
        for rid in list(last_progress):
            if rid not in s.requests:
                outcome.setdefault(rid, "finished")
                del last_progress[rid]
            else:
                assert step - last_progress[rid] <= total_work, f"{rid} starved"
        step += 1
        assert step <= 50 * total_work + 100, "no progress"
    assert len(outcome) == len(arrivals)
    assert s.device_pool.num_used == 0 and s.host_pool.num_used == 0
