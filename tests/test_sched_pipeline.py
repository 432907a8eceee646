"""The split of a plan into two sub-batches (sched/pipeline.py), alone and from the scheduler."""

from __future__ import annotations

from neo_async.config import SchedulerConfig
from neo_async.kv.block_pool import BlockPool
from neo_async.sampling_params import SamplingParams
from neo_async.sched.pipeline import split_sub_batches
from neo_async.sched.plan import ExecuteOutput, KVLocation, ScheduledChunk
from neo_async.sched.request import Request
from neo_async.sched.scheduler import Scheduler

DEVICE, HOST = KVLocation.DEVICE, KVLocation.HOST


def chunk(rid: str, location: KVLocation, seq_len: int, num_tokens: int = 1) -> ScheduledChunk:
    start = seq_len - num_tokens
    return ScheduledChunk(rid, [5] * num_tokens, start, [0], True, SamplingParams(), [], [], location)


def sides(chunks: list[ScheduledChunk] | None) -> dict[str, int]:
    assert chunks is not None
    return {c.request_id: c.sub_batch for c in chunks}


def test_b1_holds_host_decodes_only_and_b0_everything_else():
    chunks = [chunk("p", DEVICE, 40, num_tokens=40), chunk("hp", HOST, 30, num_tokens=30), chunk("d", DEVICE, 50),
              chunk("h1", HOST, 100), chunk("h2", HOST, 90), chunk("h3", HOST, 20)]
    split = split_sub_batches(chunks, 2)
    got = sides(split)
    assert got["p"] == got["hp"] == got["d"] == 0
    assert {r for r, j in got.items() if j == 1} <= {"h1", "h2", "h3"}
    assert [c.request_id for c in split] == [c.request_id for c in chunks]  # order kept


def test_host_decodes_are_balanced_longest_first():
    # no device work: 100 -> b1, 90 -> b0, 60 -> b0 (90 < 100), 50 -> b1 (150 < 150 is false: ties go to b1)
    got = sides(split_sub_batches([chunk(f"h{n}", HOST, n) for n in (50, 100, 60, 90)], 2))
    assert got == {"h100": 1, "h90": 0, "h60": 0, "h50": 1}


def test_device_work_of_b0_pushes_host_decodes_to_b1():
    chunks = [chunk("d", DEVICE, 1000), chunk("h1", HOST, 100), chunk("h2", HOST, 100)]
    assert sides(split_sub_batches(chunks, 2)) == {"d": 0, "h1": 1, "h2": 1}


def test_too_few_host_decodes_or_an_empty_b0_runs_sequentially():
    assert split_sub_batches([chunk("d", DEVICE, 10), chunk("h", HOST, 10)], 2) is None
    assert split_sub_batches([chunk("h", HOST, 10)], 1) is None  # b0 would be empty
    assert split_sub_batches([chunk("hp", HOST, 10, num_tokens=10), chunk("h", HOST, 10)], 2) is None  # a prefill is no decode
    assert sides(split_sub_batches([chunk("d", DEVICE, 10), chunk("h", HOST, 10)], 1)) == {"d": 0, "h": 1}


def _scheduler(pipeline: str) -> Scheduler:
    config = SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64, pipeline=pipeline)
    return Scheduler(config, BlockPool(4, 4, "device"), BlockPool(64, 4, "host"), "full")


def _decode_plan(s: Scheduler):
    for i in range(3):
        s.add(Request(f"r{i}", list(range(10, 18)), SamplingParams(max_tokens=4), 0.0, 12))
    plan = s.schedule()  # the prefills
    s.update(plan, ExecuteOutput({c.request_id: 7 for c in plan.chunks}))
    s.check()
    return s.schedule()


def test_the_scheduler_pipelines_host_decodes_only_when_on():
    plan = _decode_plan(_scheduler("on"))
    assert plan.is_pipelined
    assert {c.sub_batch for c in plan.chunks} == {0, 1}
    assert all(c.is_host and c.is_decode for c in plan.chunks)
    plan = _decode_plan(_scheduler("off"))
    assert not plan.is_pipelined and {c.sub_batch for c in plan.chunks} == {0}
