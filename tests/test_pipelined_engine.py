"""The pipelined executor on the embedded model and the real kernel: float32 greedy tokens are
the same as sequential neo and as `off`, on workloads whose plans really are pipelined (both
sub-batches non-empty, b0 with prefills and device decodes), every pool consistent after
every step."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from neo_async.config import Config
from neo_async.engine import Engine
from neo_async.runner.host_lane import HostLane
from neo_async.sampling_params import SamplingParams
from neo_async.sched.plan import Plan
from neo_async.sched.policy import Policy
from tests.synthetic_costs import SyntheticCosts

PROMPT_LENGTHS = (20, 70, 35, 90, 50, 12, 40)
MAX_TOKENS = 20
LATE, LATE_STEP = 5, 6  # prompts from LATE on arrive after LATE_STEP steps


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(7)
    return [torch.randint(100, 40000, (n,), generator=gen).tolist() for n in PROMPT_LENGTHS]


def _engine(**overrides) -> Engine:
    base = dict(dtype="float32", block_size=16, max_num_batched_tokens=128, max_num_seqs=8)
    return Engine(Config().override(**{**base, **overrides}))


def _run(engine: Engine, prompts: list[list[int]]) -> tuple[dict[str, list[int]], list[Plan]]:
    plans: list[Plan] = []
    execute = engine.worker.executor.execute

    def recording(plan: Plan):
        plans.append(plan)
        return execute(plan)

    engine.worker.executor.execute = recording
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    requests = [engine.make_request(p, params, f"r{i}") for i, p in enumerate(prompts)]
    for request in requests[:LATE]:
        engine.add_request(request)
    step = 0
    while engine.has_unfinished:
        engine.step()
        engine.check()
        step += 1
        if step == LATE_STEP:  # prefills that join running decodes
            for request in requests[LATE:]:
                engine.add_request(request)
    assert engine.device_pool.num_used == 0 and engine.host_pool.num_used == 0
    return {r.request_id: r.output_token_ids for r in requests}, plans


@pytest.fixture(scope="module")
def reference(prompts) -> dict[str, list[int]]:
    return _run(_engine(offload="off", device_kv_tokens=8192), prompts)[0]


def _pipelined(plans: list[Plan]) -> list[Plan]:
    return [p for p in plans if p.is_pipelined]


@pytest.mark.slow
def test_neo_pipelined_gives_the_same_tokens_as_sequential_and_off(prompts, reference):
    sequential, seq_plans = _run(_engine(offload="neo", device_kv_tokens=192, host_kv_tokens=4096, pipeline="off"), prompts)
    assert not _pipelined(seq_plans)
    # the fixed split (no cost tables): every plan with host decodes pipelined, prefills in b0
    engine = _engine(offload="neo", device_kv_tokens=192, host_kv_tokens=4096, pipeline="on", cost_tables="none")
    tokens, plans = _run(engine, prompts)
    assert tokens == sequential == reference
    pipelined = _pipelined(plans)
    assert len(pipelined) >= 5
    for plan in pipelined:
        b0 = [c for c in plan.chunks if c.sub_batch == 0]
        b1 = [c for c in plan.chunks if c.sub_batch == 1]
        assert b0 and b1 and all(c.is_host and c.is_decode for c in b1)
    b0_kinds = {(c.is_decode, c.location.value) for p in pipelined for c in p.chunks if c.sub_batch == 0}
    assert {(True, "device"), (True, "host")} <= b0_kinds  # device decodes and host decodes in b0
    assert any(not c.is_decode for p in pipelined for c in p.chunks)  # a prefill ran pipelined
    assert any(p.swap_out or p.swap_in for p in pipelined)  # swaps under the pipeline's ordering
    stats = engine.stats()
    assert stats.num_swapped_out_total > 0 and stats.num_preemptions_total == 0


@pytest.mark.slow
@pytest.mark.parametrize("parts", [1, 2])
def test_sequential_host_attention_split_across_threads_gives_the_same_tokens(prompts, reference, parts):
    """A sequential step's host decodes split into two kernel calls run at once (this thread and
    the host lane), or one: the tokens are off's either way."""
    engine = _engine(offload="neo", device_kv_tokens=192, host_kv_tokens=4096, pipeline="off")
    ops = engine.worker.executor.ops
    ops.threads = dataclasses.replace(ops.threads, sequential_host_parts=parts)
    calls = []
    host_job = ops.host_job

    def counting(layer, group, part, *args):
        calls.append(part)
        return host_job(layer, group, part, *args)

    ops.host_job = counting
    tokens, plans = _run(engine, prompts)
    assert tokens == reference
    assert not _pipelined(plans) and calls
    assert any(first > 0 for first, _ in calls) == (parts == 2)
    assert (engine.worker.executor.host_lane is not None) == (parts == 2)


@pytest.mark.slow
def test_full_offload_pipelined_gives_the_same_tokens(prompts, reference):
    tokens, plans = _run(_engine(offload="full", device_kv_tokens=32, host_kv_tokens=4096, pipeline="on", cost_tables="none"), prompts)
    assert tokens == reference
    assert len(_pipelined(plans)) >= 5


@pytest.mark.slow
@pytest.mark.parametrize("pipeline", ["on", "auto"])
def test_the_cost_policy_defers_host_decodes_without_changing_tokens(prompts, reference, pipeline):
    """A host lane priced far slower than the device: host decodes are left out of some
    iterations (never more than the bound in a row), plans follow the policy, tokens are equal."""
    engine = _engine(offload="neo", device_kv_tokens=192, host_kv_tokens=4096, pipeline=pipeline, max_host_wait_iterations=2)
    config = engine.config.scheduler
    engine.scheduler.policy = Policy(SyntheticCosts(num_layers=engine.spec.num_layers, host_per_kv=1e-5), config)
    tokens, plans = _run(engine, prompts)
    assert tokens == reference
    assert sum(len(p.deferred_ids) for p in plans) > 0 and engine.stats().num_deferred_total > 0
    assert all(p.predicted_s is not None for p in plans if p.chunks)
    streak: dict[str, int] = {}
    for plan in plans:
        for rid in plan.deferred_ids:
            streak[rid] = streak.get(rid, 0) + 1
            assert streak[rid] <= 2
        for chunk in plan.chunks:
            streak.pop(chunk.request_id, None)
    assert len(engine.recorder.predictions) == sum(1 for p in plans if p.chunks)


def test_a_failing_host_job_reaches_the_waiting_thread():
    lane = HostLane()
    handle = lane.submit(lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        handle.wait()
    ran = []
    lane.submit(lambda: ran.append(1)).wait()
    assert ran == [1]
    lane.close()
