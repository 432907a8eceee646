"""The scheduler without a model: factories build requests, outputs are fed by hand."""

from __future__ import annotations

import pytest

from neo_async.config import SchedulerConfig
from neo_async.kv.block_pool import BlockPool
from neo_async.sampling_params import SamplingParams
from neo_async.sched.plan import ExecuteOutput
from neo_async.sched.request import Request
from neo_async.sched.scheduler import Scheduler


def make_scheduler(num_blocks=64, block_size=4, max_num_seqs=8, max_num_batched_tokens=32) -> Scheduler:
    cfg = SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens)
    return Scheduler(cfg, BlockPool(num_blocks, block_size))


def make_request(rid: str, num_prompt: int, max_tokens: int = 8, t: float = 0.0) -> Request:
    return Request(rid, list(range(10, 10 + num_prompt)), SamplingParams(max_tokens=max_tokens), t, num_prompt + max_tokens)


def run_step(s: Scheduler, token: int = 7):
    plan = s.schedule()
    out = ExecuteOutput({c.request_id: token for c in plan.chunks if c.is_sampling})
    advanced = s.update(plan, out)
    for r in advanced:
        if r.num_output_tokens >= r.params.max_tokens:
            s.finish(r.request_id)
    s.check()
    return plan


def test_chunked_prefill_under_the_token_budget_then_decode():
    s = make_scheduler(max_num_batched_tokens=10)
    s.add(make_request("a", 25, max_tokens=2))
    sizes = []
    while s.num_unfinished:
        plan = run_step(s)
        sizes.append([(c.request_id, c.num_tokens, c.is_sampling) for c in plan.chunks])
    assert sizes == [[("a", 10, False)], [("a", 10, False)], [("a", 5, True)], [("a", 1, True)]]
    assert s.device_pool.num_used == 0


def test_running_decodes_go_before_new_prefills_and_fcfs_is_kept():
    s = make_scheduler(max_num_batched_tokens=8)
    s.add(make_request("a", 4))
    run_step(s)  # a prefilled
    s.add(make_request("b", 20))
    s.add(make_request("c", 2))
    plan = run_step(s)
    assert [(c.request_id, c.num_tokens) for c in plan.chunks] == [("a", 1), ("b", 7)]
    plan = run_step(s)  # c must wait behind b's prefill: the queue head is never skipped
    assert [(c.request_id, c.num_tokens) for c in plan.chunks] == [("a", 1), ("b", 7)]


def test_preemption_takes_the_newest_and_everyone_finishes():
    s = make_scheduler(num_blocks=6, block_size=4, max_num_batched_tokens=64)
    for i in range(3):
        s.add(make_request(f"r{i}", 4, max_tokens=8))  # 1 block each at admission, 3 at the end; only 6 blocks
    finished_order = []
    preempted = []
    for _ in range(200):
        if not s.num_unfinished:
            break
        before = set(s.requests)
        plan = run_step(s)
        preempted += plan.preempted_ids
        finished_order += sorted(before - set(s.requests))
    assert s.num_unfinished == 0
    assert preempted and preempted[0] == "r2"  # the newest goes first
    assert sorted(finished_order) == ["r0", "r1", "r2"]
    assert s.num_preemptions_total == len(preempted)
    assert s.device_pool.num_used == 0


def test_max_num_seqs_caps_the_running_set():
    s = make_scheduler(max_num_seqs=2, max_num_batched_tokens=64)
    for i in range(4):
        s.add(make_request(f"r{i}", 3))
    plan = run_step(s)
    assert [c.request_id for c in plan.chunks] == ["r0", "r1"]


def test_finish_of_waiting_or_running_frees_blocks():
    s = make_scheduler()
    s.add(make_request("a", 5))
    s.add(make_request("b", 5))
    run_step(s)
    assert s.device_pool.num_used > 0
    assert s.finish("a") is not None and s.finish("b") is not None
    assert s.finish("nope") is None
    s.check()
    assert s.device_pool.num_used == 0 and s.num_unfinished == 0


def test_a_request_larger_than_the_pool_is_refused():
    s = make_scheduler(num_blocks=2, block_size=4)
    with pytest.raises(ValueError, match="more than any KV pool holds"):
        s.add(make_request("big", 6, max_tokens=4))
    with pytest.raises(ValueError, match="already in use"):
        s.add(make_request("x", 1, max_tokens=2))
        s.add(make_request("x", 1, max_tokens=2))


def test_off_mode_admits_a_prompt_only_when_all_of_it_fits():
    """A prompt whose first chunk fits but whole KV does not would be preempted by the next
    decode block and recomputed over and over: it waits instead."""
    s = make_scheduler(num_blocks=10, block_size=4, max_num_batched_tokens=8)
    s.add(make_request("a", 20, max_tokens=4))  # 5 blocks, grows to 6
    s.add(make_request("b", 20, max_tokens=4))
    while s.requests["a"].num_computed_tokens < 20:
        run_step(s)
    plan = run_step(s)
    assert [c.request_id for c in plan.chunks] == ["a"]  # b's 5 blocks + a's growth do not fit in 10
    while s.num_unfinished:
        run_step(s)
    assert s.num_preemptions_total == 0
