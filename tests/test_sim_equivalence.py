"""The scheduler under simulation plans exactly as it does driven the live way: with the same
arrivals (added before the same iterations) and the same cost model, every plan is equal, first
against the engine's step order replayed without a model, then against the real engine."""

from __future__ import annotations

import pytest

from loadgen.workload import RequestSpec
from neo_async.config import SchedulerConfig
from neo_async.sampling_params import SamplingParams
from neo_async.sched.plan import ExecuteOutput, Plan
from neo_async.sim.loop import new_request, prompt_builder, simulate
from neo_async.sim.system import PoolSizes, build_scheduler
from neo_async.sim.testing import mixed_specs, poisson_offsets, prefix_specs, t4_deployment


def signature(plan: Plan) -> tuple:
    chunks = tuple(
        (c.request_id, c.start_pos, c.num_tokens, c.location.value, c.sub_batch, c.is_sampling, tuple(c.block_ids))
        for c in plan.chunks
    )
    return (
        chunks, tuple(plan.swap_out), tuple(plan.swap_in), tuple(plan.preempted_ids),
        tuple(plan.swapped_out_ids), tuple(plan.swapped_in_ids), plan.is_pipelined,
        tuple(getattr(plan, "deferred_ids", ())), getattr(plan, "predicted_s", None),
    )


def simulated(specs, offsets, sizes: PoolSizes, config: SchedulerConfig, costs, caching: bool = False, prompts=None):
    scheduler = build_scheduler(config, sizes, "neo", costs, enable_prefix_caching=caching)
    return simulate(specs, offsets, scheduler, costs, keep_plans=True, check=True, prompts=prompts)


def prefix_workload(n: int, seed: int):
    """Mixed lengths, and groups sharing prefixes (whole and partial blocks)."""
    mixed = mixed_specs(n // 2, seed=seed)
    shared = prefix_specs(n - n // 2, num_prefixes=3, prefix_len=70, suffix_len=20, output_len=6, seed=seed)
    specs = [s for pair in zip(mixed, shared) for s in pair]
    return specs


@pytest.mark.parametrize("pipeline,caching", [("off", False), ("on", False), ("auto", False), ("auto", True), ("on", True)])
def test_simulated_plans_equal_the_engine_step_order_replayed(pipeline: str, caching: bool) -> None:
    config = SchedulerConfig(max_num_seqs=16, max_num_batched_tokens=256, pipeline=pipeline)
    sizes = PoolSizes(device_blocks=24, host_blocks=200, block_size=16)
    costs = t4_deployment().costs()
    specs = prefix_workload(30, seed=5) if caching else mixed_specs(30, seed=5)
    offsets = poisson_offsets(30, 4.0, seed=5)
    prompts = prompt_builder() if caching else None
    run = simulated(specs, offsets, sizes, config, costs, caching, prompts)
    if caching:
        assert run.num_prefix_hit_tokens["device"] > 0 and run.num_prefix_hit_tokens["host"] > 0
    # the live way: Engine.step = schedule, execute, update, finish what reached max_tokens
    live = build_scheduler(config, sizes, "neo", costs, enable_prefix_caching=caching)
    for admitted, expected in zip(run.admitted_before, run.plans, strict=True):
        for request_id in admitted:
            i = int(request_id)
            live.add(new_request(i, specs[i], float(offsets[i]), prompts))
        plan = live.schedule()
        assert signature(plan) == signature(expected)
        output = ExecuteOutput({c.request_id: 7 for c in plan.chunks if c.is_sampling})
        for request in live.update(plan, output):
            if request.num_output_tokens >= request.params.max_tokens:
                live.finish(request.request_id)
        live.check()
    assert live.num_unfinished == 0
    assert any(p.num_host_chunks for p in run.plans)


@pytest.mark.slow
@pytest.mark.parametrize("caching", [False, True])
def test_simulated_plans_equal_the_real_engine(caching: bool) -> None:
    """With caching on, both sides build the same prompt ids (shared prefixes included); the
    outputs differ (placeholders in the simulator, sampled in the engine) but no prompt reaches
    into another request's outputs, so the hits are the same."""
    from neo_async.config import Config
    from neo_async.engine import Engine
    from neo_async.sched.scheduler import Scheduler

    config = Config().override(
        skip_tokenizer_init=True, device_kv_tokens=384, host_kv_tokens=3200, offload="neo",
        pipeline="on", max_num_seqs=12, max_num_batched_tokens=192, cost_tables="none",
        calibrate_costs=False,  # the same cost model on both sides: no correction from measured steps
        enable_prefix_caching=caching,
    ).validate()
    engine = Engine(config)
    costs = t4_deployment().costs()  # any cost model: the point is the same one on both sides
    engine.scheduler = Scheduler(config.scheduler, engine.device_pool, engine.host_pool, "neo", costs=costs)
    base = prefix_workload(12, seed=9) if caching else mixed_specs(12, seed=9)
    specs = [RequestSpec(s.prompt_len % 150 + 8, s.output_len % 8 + 2, prefix_id=s.prefix_id,
                         prefix_len=min(s.prefix_len, s.prompt_len % 150 + 8)) for s in base]
    offsets = poisson_offsets(12, 40.0, seed=9)
    prompts = prompt_builder(vocab_size=engine.spec.vocab_size) if caching else None
    sizes = PoolSizes(engine.device_pool.num_blocks, engine.host_pool.num_blocks, engine.device_pool.block_size)
    run = simulated(specs, offsets, sizes, config.scheduler, costs, caching, prompts)
    if caching:
        assert sum(run.num_prefix_hit_tokens.values()) > 0

    plans: list[Plan] = []
    schedule = engine.scheduler.schedule

    def recording() -> Plan:
        plans.append(schedule())
        return plans[-1]

    engine.scheduler.schedule = recording  # type: ignore[method-assign]
    for admitted in run.admitted_before:
        for request_id in admitted:
            i = int(request_id)
            spec = specs[i]
            params = SamplingParams(max_tokens=spec.output_len, ignore_eos=True)
            ids = prompts.token_ids(spec, i) if prompts is not None else [5] * spec.prompt_len
            engine.add_request(engine.make_request(ids, params, request_id=request_id))
        engine.step()
        engine.check()
    assert not engine.has_unfinished
    assert [signature(p) for p in plans] == [signature(p) for p in run.plans]
    assert any(p.num_host_chunks for p in plans) and any(p.is_pipelined for p in plans)
