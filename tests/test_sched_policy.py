"""The load-aware policy on synthetic costs: mode choice, sub-batch split, deferral and its
bound, the latency target, cost-based admission to the host, and starvation freedom."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neo_async.config import SchedulerConfig
from neo_async.kv.block_pool import BlockPool
from neo_async.sampling_params import SamplingParams
from neo_async.sched.plan import ExecuteOutput, KVLocation, ScheduledChunk
from neo_async.sched.policy import Policy
from neo_async.sched.predict import Load, plan_time, sequential_time
from neo_async.sched.request import Request
from neo_async.sched.scheduler import Scheduler
from tests.synthetic_costs import SyntheticCosts

DEVICE, HOST = KVLocation.DEVICE, KVLocation.HOST


def chunk(rid: str, location: KVLocation, seq_len: int, num_tokens: int = 1) -> ScheduledChunk:
    return ScheduledChunk(rid, [5] * num_tokens, seq_len - num_tokens, [0], True, SamplingParams(), [], [], location)


def policy(costs: SyntheticCosts, **cfg) -> Policy:
    return Policy(costs, SchedulerConfig(**{"pipeline": "auto", **cfg}))


def workload(num_device: int = 4, num_host: int = 8, host_len: int = 1000) -> list[ScheduledChunk]:
    chunks = [chunk("p", DEVICE, 64, num_tokens=64)]
    chunks += [chunk(f"d{i}", DEVICE, 200) for i in range(num_device)]
    chunks += [chunk(f"h{i}", HOST, host_len + 10 * i) for i in range(num_host)]
    return chunks


def test_pipelined_when_the_host_lane_hides_behind_device_work():
    choice = policy(SyntheticCosts(host_per_kv=2e-8)).choose(workload(), 0, {})
    assert choice.is_pipelined and not choice.deferred_ids
    sequential = sequential_time(SyntheticCosts(host_per_kv=2e-8), Load.of(workload()))
    assert choice.predicted_s < sequential
    assert choice.predicted_s == plan_time(SyntheticCosts(host_per_kv=2e-8), choice.chunks, True)
    b1 = [c for c in choice.chunks if c.sub_batch == 1]
    assert b1 and all(c.is_host and c.is_decode for c in b1)


def test_sequential_when_pipelining_slows_the_device_more_than_it_hides():
    costs = SyntheticCosts(host_per_kv=1e-9, pipelined_slowdown=2.0)
    choice = policy(costs).choose(workload(), 0, {})
    assert not choice.is_pipelined and not choice.deferred_ids
    assert all(c.sub_batch == 0 for c in choice.chunks)


def test_pipeline_on_forces_a_pipelined_plan_and_off_forbids_it():
    costs = SyntheticCosts(host_per_kv=1e-9, pipelined_slowdown=2.0)
    assert policy(costs, pipeline="on").choose(workload(), 0, {}).is_pipelined
    assert not policy(SyntheticCosts(host_per_kv=2e-8), pipeline="off").choose(workload(), 0, {}).is_pipelined


def test_the_split_beats_or_equals_every_single_move():
    costs = SyntheticCosts(host_per_kv=5e-8)
    choice = policy(costs, pipeline="on").choose(workload(num_host=6), 0, {})
    best = plan_time(costs, choice.chunks, True)
    for i, c in enumerate(choice.chunks):
        if c.is_host and c.is_decode:
            moved = list(choice.chunks)
            moved[i] = ScheduledChunk(**{**c.__dict__, "sub_batch": 1 - c.sub_batch})
            if any(x.sub_batch == 1 for x in moved):
                assert plan_time(costs, moved, True) >= best * 0.999


def test_a_host_lane_far_slower_than_the_device_defers_long_host_decodes_within_the_bound():
    costs = SyntheticCosts(host_per_kv=2e-5)  # host attention dominates the step
    p = policy(costs, max_host_wait_iterations=2)
    chunks = workload(num_device=20, num_host=2, host_len=4000)
    first = p.choose(chunks, 0, {})
    assert first.deferred_ids  # leaving the host decodes out raises tokens per second
    assert {c.request_id for c in first.chunks} | set(first.deferred_ids) == {c.request_id for c in chunks}
    waited = {rid: 2 for rid in first.deferred_ids}  # at the bound: they must run
    assert not p.choose(chunks, 0, waited).deferred_ids


def test_host_decodes_ride_in_a_long_prefills_shadow():
    """A prefill's tokens are not output: host decodes whose attention hides behind it raise the
    output rate even though they lengthen the step (its b1 linear pass) more than they add tokens."""
    costs = SyntheticCosts(linear_base=2e-3, host_per_kv=1e-6)
    chunks = [chunk("p", DEVICE, 2000, num_tokens=2000)]
    chunks += [chunk(f"d{i}", DEVICE, 200) for i in range(4)]
    chunks += [chunk(f"h{i}", HOST, 1000) for i in range(8)]
    choice = policy(costs).choose(chunks, 0, {})
    assert choice.is_pipelined and not choice.deferred_ids
    assert choice.num_sampled == 13


def test_deferral_finds_a_gain_that_needs_several_deferrals():
    """Leaving out one of many slow host decodes gains under 2%, leaving out all of them gains
    several times: the policy prices every count, not only the next one."""
    costs = SyntheticCosts(host_per_kv=1e-6)
    chunks = [chunk(f"d{i}", DEVICE, 200) for i in range(4)] + [chunk(f"h{i}", HOST, 1000) for i in range(20)]
    p = policy(costs, pipeline="off")
    load = Load.of(chunks)
    one = load.copy()
    one.remove_decode(chunks[-1])
    assert 23 / sequential_time(costs, one) < 1.02 * 24 / sequential_time(costs, load)
    choice = p.choose(chunks, 0, {})
    assert set(choice.deferred_ids) == {f"h{i}" for i in range(20)}
    assert choice.num_sampled / choice.predicted_s > 3 * 24 / sequential_time(costs, load)


def test_the_latency_target_wins_over_the_rate():
    costs = SyntheticCosts(host_per_kv=2e-8, pipelined_slowdown=1.3)
    chunks = workload()
    free = policy(costs).choose(chunks, 0, {})
    times = {mode: plan_time(costs, policy(costs, pipeline=mode).choose(chunks, 0, {}).chunks, mode == "on") for mode in ("on", "off")}
    slo_ms = 1000 * min(times.values()) * 1.001
    bound = policy(costs, tpot_slo_ms=slo_ms).choose(chunks, 0, {})
    assert bound.predicted_s <= slo_ms / 1000
    if free.predicted_s > slo_ms / 1000:
        assert bound.is_pipelined != free.is_pipelined


def test_prefill_budget_shrinks_to_the_latency_target_but_keeps_one_block():
    costs = SyntheticCosts()
    decodes = Load()
    for _ in range(8):
        decodes.add_decode(500, is_host=False)
    p_free, p_slo = policy(costs), policy(costs, tpot_slo_ms=1000 * sequential_time(costs, decodes) * 2)
    assert p_free.prefill_budget(decodes, 512, 16) == 512
    budget = p_slo.prefill_budget(decodes, 512, 16)
    assert 16 <= budget < 512
    grown = decodes.copy()
    grown.num_tokens += budget
    grown.prefills.append((budget, budget))
    assert p_slo.best_time(grown) <= p_slo.slo_s
    assert policy(costs, tpot_slo_ms=1e-6).prefill_budget(decodes, 512, 16) == 16


def test_admission_to_the_host_follows_the_predicted_rate():
    steady = Load()
    for _ in range(4):
        steady.add_decode(200, is_host=False)
    cheap, dear = SyntheticCosts(host_per_kv=1e-9), SyntheticCosts(host_per_kv=1e-4)
    assert policy(cheap).admit_to_host(steady, 1000)
    assert not policy(dear).admit_to_host(steady, 1000)
    assert policy(dear).admit_to_host(Load(), 1000)  # nothing else runs: always
    assert policy(dear, host_admission="room").admit_to_host(steady, 1000)  # room is enough


def drive(s: Scheduler, max_steps: int) -> int:
    """Runs the scheduler with every sampled token accepted; returns the steps taken."""
    for step in range(max_steps):
        if not s.num_unfinished:
            return step
        plan = s.schedule()
        for rid in plan.deferred_ids:
            assert s.requests[rid].location is HOST
        out = ExecuteOutput({c.request_id: 7 for c in plan.chunks if c.is_sampling})
        for r in s.update(plan, out):
            if r.num_output_tokens >= r.params.max_tokens:
                s.finish(r.request_id)
        s.check()
        assert all(w <= s.config.max_host_wait_iterations for w in s.host_waits.values())
    raise AssertionError(f"{s.num_unfinished} requests unfinished after {max_steps} steps")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    lengths=st.lists(st.tuples(st.integers(1, 60), st.integers(1, 12)), min_size=1, max_size=12),
    host_per_kv=st.sampled_from([1e-9, 1e-7, 1e-5]),
    slowdown=st.sampled_from([1.0, 2.0]),
    slo_ms=st.sampled_from([None, 0.5, 50.0]),
    max_wait=st.integers(0, 3),
    admission=st.sampled_from(["rate", "room"]),
)
def test_every_request_finishes_within_a_bound(lengths, host_per_kv, slowdown, slo_ms, max_wait, admission):
    costs = SyntheticCosts(host_per_kv=host_per_kv, pipelined_slowdown=slowdown)
    config = SchedulerConfig(
        max_num_seqs=6, max_num_batched_tokens=48, pipeline="auto", tpot_slo_ms=slo_ms, max_host_wait_iterations=max_wait,
        host_admission=admission,
    )
    s = Scheduler(config, BlockPool(10, 4, "device"), BlockPool(60, 4, "host"), "neo", costs=costs)
    for i, (prompt, out) in enumerate(lengths):
        s.add(Request(f"r{i}", list(range(10, 10 + prompt)), SamplingParams(max_tokens=out), 0.0, prompt + out))
    # each request alone needs at most prompt/4 + out steps (chunks of 4 tokens at the least);
    # queued behind the others and deferred at most max_wait in a row: a linear bound
    bound = sum(p // 4 + 1 + o for p, o in lengths) * (max_wait + 1) + 10
    drive(s, bound)
    assert s.device_pool.num_used == 0 and s.host_pool.num_used == 0


def test_admissions_one_by_one_never_lower_the_predicted_rate():
    """Each admission is judged against the load before it: a tolerance would compound over a
    burst of admissions into a large loss."""
    costs = SyntheticCosts(host_per_kv=2e-8, linear_per_token=2e-6)
    p = policy(costs)
    steady = Load()
    for _ in range(16):
        steady.add_decode(500, is_host=False)
    start = steady.num_tokens / p.best_time(steady)
    admitted = 0
    while admitted < 200 and p.admit_to_host(steady, 1000):
        steady.add_decode(1000, is_host=True)
        admitted += 1
    assert 0 < admitted < 200
    assert steady.num_tokens / p.best_time(steady) >= start


def test_aborting_a_deferred_host_decode_frees_everything_it_held():
    costs = SyntheticCosts(host_per_kv=2e-5)  # host attention dominates: long host decodes sit out
    config = SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64, pipeline="auto", max_host_wait_iterations=3)
    s = Scheduler(config, BlockPool(8, 4, "device"), BlockPool(64, 4, "host"), "neo", costs=costs)
    for i, prompt in enumerate((12, 40, 40, 8)):
        s.add(Request(f"r{i}", list(range(10, 10 + prompt)), SamplingParams(max_tokens=20), 0.0, prompt + 20))
    deferred = None
    for _ in range(40):
        plan = s.schedule()
        out = ExecuteOutput({c.request_id: 7 for c in plan.chunks if c.is_sampling})
        s.update(plan, out)
        s.check()
        if plan.deferred_ids:
            deferred = plan.deferred_ids[0]
            break
    assert deferred is not None and s.host_waits[deferred] == 1
    held = len(s.host_pool.block_ids(deferred))
    used = s.host_pool.num_used
    s.finish(deferred)
    s.check()
    assert deferred not in s.host_waits and s.host_pool.num_used == used - held
    drive(s, 400)
    assert s.device_pool.num_used == 0 and s.host_pool.num_used == 0 and not s.host_waits
