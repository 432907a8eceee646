"""The scheduler with prefix caching, without a model: hits in either pool, a host hit read in
place, demotion of evicted device blocks, and a property test in which a stand-in executor
writes token ids into blocks, so that a cached block read with content that is not its
tokens' (a corrupted or stale block) fails."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neo_async.config import SchedulerConfig
from neo_async.kv.block_pool import BlockPool
from neo_async.sampling_params import SamplingParams
from neo_async.sched.plan import ExecuteOutput, KVLocation, Plan, coalesce
from neo_async.sched.policy import HitPlacement, Policy
from neo_async.sched.request import Request
from neo_async.sched.scheduler import Scheduler
from tests.synthetic_costs import SyntheticCosts

DEVICE, HOST = KVLocation.DEVICE, KVLocation.HOST
BS = 4


def make_scheduler(device_blocks=16, host_blocks=32, offload="neo", caching=True, costs=None, **cfg) -> Scheduler:
    config = SchedulerConfig(**{"max_num_seqs": 8, "max_num_batched_tokens": 64, **cfg})
    device = BlockPool(device_blocks, BS, "device", enable_caching=caching)
    host = BlockPool(host_blocks, BS, "host", enable_caching=caching)
    return Scheduler(config, device, host, offload, costs=costs)


def make_request(rid: str, token_ids: list[int], max_tokens: int = 4, **params) -> Request:
    return Request(rid, list(token_ids), SamplingParams(max_tokens=max_tokens, **params), 0.0, len(token_ids) + max_tokens)


class FakeKV:
    """Each pool's blocks as lists of the token ids whose K/V they hold: what the executor would
    write, copy and read."""

    def __init__(self, s: Scheduler) -> None:
        self.s = s
        self.slots = {loc: [[None] * BS for _ in range(pool.num_blocks)] for loc, pool in s.pools.items()}

    def execute(self, plan: Plan) -> ExecuteOutput:
        for runs, src, dst in ((plan.swap_in, HOST, DEVICE), (plan.swap_out, DEVICE, HOST)):
            for run in runs:
                for i in range(run.num_blocks):
                    self.slots[dst][run.dst_start + i] = list(self.slots[src][run.src_start + i])
        for chunk in plan.chunks:
            request = self.s.requests[chunk.request_id]
            slots = self.slots[chunk.location]
            for pos in range(chunk.start_pos):  # what attention reads
                got = slots[chunk.block_ids[pos // BS]][pos % BS]
                assert got == request.token_ids[pos], f"{chunk.request_id} reads a wrong K/V at {pos}"
            for pos, token in enumerate(chunk.token_ids, start=chunk.start_pos):
                block = chunk.block_ids[pos // BS]
                assert self.s.pools[chunk.location].is_private(block), f"{chunk.request_id} writes a shared block"
                slots[block][pos % BS] = token
        return ExecuteOutput({c.request_id: 7 for c in plan.chunks if c.is_sampling})


def step(s: Scheduler, kv: FakeKV) -> Plan:
    plan = s.schedule()
    for r in s.update(plan, kv.execute(plan)):
        if r.num_output_tokens >= r.params.max_tokens:
            s.finish(r.request_id)
    s.check()
    assert s.device_pool.take_evictions() == s.host_pool.take_evictions() == []  # nothing piles up
    return plan


PREFIX = list(range(100, 110))  # two full blocks and two tokens


def test_a_second_request_with_the_same_prefix_starts_its_prefill_after_the_cached_blocks():
    s = make_scheduler(offload="off")
    kv = FakeKV(s)
    s.add(make_request("a", PREFIX + [1, 2]))
    while s.requests:
        step(s, kv)
    assert s.device_pool.num_used == 0 and s.device_pool.num_cached == 3  # 12 prompt + 3 outputs computed: 15 tokens
    s.add(make_request("b", PREFIX + [5]))
    plan = step(s, kv)
    assert [(c.start_pos, c.num_tokens) for c in plan.chunks] == [(8, 3)]
    assert s.num_prefix_query_tokens_total == 12 + 11 and s.num_prefix_hit_tokens_total[DEVICE] == 8


def test_a_prompt_equal_to_a_cached_prefix_still_computes_its_last_token():
    s = make_scheduler(offload="off")
    kv = FakeKV(s)
    s.add(make_request("a", PREFIX[:8] + [1]))
    step(s, kv)
    s.add(make_request("b", PREFIX[:8]))  # both blocks cached: the last one is recomputed
    plan = step(s, kv)
    assert [(c.request_id, c.start_pos, c.num_tokens) for c in plan.chunks][-1] == ("b", 4, 4)


def test_prompt_logprobs_turn_the_cache_off_for_that_request():
    s = make_scheduler(offload="off")
    kv = FakeKV(s)
    s.add(make_request("a", PREFIX))
    step(s, kv)
    s.add(make_request("b", PREFIX, prompt_logprobs=0))
    assert step(s, kv).chunks[-1].start_pos == 0


def test_a_host_placed_request_reads_host_cached_blocks_in_place():
    s = make_scheduler(offload="full")
    kv = FakeKV(s)
    s.add(make_request("a", PREFIX + [1]))
    step(s, kv)
    s.add(make_request("b", PREFIX + [2, 3]))
    plan = step(s, kv)
    chunk = plan.chunks[-1]
    assert chunk.location is HOST and chunk.start_pos == 8
    assert chunk.block_ids[:2] == s.host_pool.block_ids("a")[:2]  # shared, not copied
    assert not plan.swap_in and not plan.swap_out
    assert s.num_prefix_hit_tokens_total == {DEVICE: 0, HOST: 8}


def test_hits_make_a_prompt_fit_the_device():
    s = make_scheduler(device_blocks=8, offload="neo")
    kv = FakeKV(s)
    s.add(make_request("a", PREFIX * 2, max_tokens=4))  # 20 tokens: 5 blocks, on the device
    step(s, kv)
    # a's decode takes a 6th block; b needs 6 blocks, 5 of them a's: with a's growth it fits in 2
    s.add(make_request("b", PREFIX * 2 + [9], max_tokens=1))
    plan = step(s, kv)
    assert plan.chunks[-1].location is DEVICE and plan.chunks[-1].start_pos == 20
    uncached = make_scheduler(device_blocks=8, offload="neo", caching=False)
    kv = FakeKV(uncached)
    uncached.add(make_request("a", PREFIX * 2, max_tokens=4))
    step(uncached, kv)
    uncached.add(make_request("b", PREFIX * 2 + [9], max_tokens=1))
    assert step(uncached, kv).chunks[-1].location is HOST


def test_an_evicted_device_block_is_demoted_and_then_hit_on_the_host():
    s = make_scheduler(device_blocks=4, host_blocks=16, offload="neo")
    kv = FakeKV(s)
    s.add(make_request("a", PREFIX[:8] + [1], max_tokens=1))  # 3 blocks on the device, 2 cached
    step(s, kv)
    assert s.device_pool.num_cached == 2 and not s.requests
    s.add(make_request("b", [50 + i for i in range(13)], max_tokens=3))  # 4 blocks: evicts both
    plan = step(s, kv)
    assert plan.num_demoted_blocks == 2 and Plan.num_run_blocks(plan.swap_out) == 2
    assert s.host_pool.num_cached == 2 and s.host_pool.num_used == 0
    s.add(make_request("c", PREFIX[:8] + [2, 3], max_tokens=1))  # device busy with b: host, hit in place
    plan = step(s, kv)
    chunk = plan.chunks[-1]
    assert chunk.location is HOST and chunk.start_pos == 8
    assert s.num_demoted_blocks_total == 2 and s.num_prefix_hit_tokens_total[HOST] == 8


def test_a_swap_out_shares_the_blocks_the_host_has_cached():
    s = make_scheduler(device_blocks=8, host_blocks=16, offload="full")
    kv = FakeKV(s)
    s.add(make_request("a", PREFIX[:8] + [1], max_tokens=1))
    step(s, kv)  # a's two full blocks are cached on the host
    s = Scheduler(s.config, BlockPool(8, BS, "device", enable_caching=True), s.host_pool, "neo")
    kv.s = s
    s.add(make_request("c", [60 + i for i in range(9)], max_tokens=12))
    s.add(make_request("b", PREFIX[:8] + [4, 5], max_tokens=12))  # the newest: swapped out first
    plans = [step(s, kv) for _ in range(8)]
    out = [p for p in plans if "b" in p.swapped_out_ids]
    assert len(out) == 1
    shared = s.host_pool.block_ids("b")[:2]
    assert shared == s.host_pool.match(PREFIX[:8], 2)  # a's host blocks, not copies
    chunk = next(c for c in out[0].chunks if c.request_id == "b")
    copied = {run.dst_start + i for run in out[0].swap_out for i in range(run.num_blocks)}
    assert chunk.block_ids[:2] == shared and not copied & set(shared)
    assert copied == set(chunk.block_ids[2 : -(-chunk.start_pos // BS)])  # its other blocks were copied


def test_neo_places_a_prompt_on_the_host_when_the_host_holds_more_of_it():
    warm = make_scheduler(offload="full")
    kv = FakeKV(warm)
    warm.add(make_request("a", PREFIX[:8] + [1], max_tokens=1))
    step(warm, kv)  # PREFIX[:8] cached on the host
    s = Scheduler(warm.config, BlockPool(16, BS, "device", enable_caching=True), warm.host_pool, "neo")
    kv.s = s
    s.add(make_request("b", PREFIX[:8] + [2, 3]))  # the device has room, the host has its prefix
    s.add(make_request("c", [70, 71, 72]))  # no hit anywhere: the device, as before
    plan = step(s, kv)
    assert [(c.request_id, c.location, c.start_pos) for c in plan.chunks] == [("b", HOST, 8), ("c", DEVICE, 0)]


def _warm_host(prompt: list[int]) -> tuple[BlockPool, FakeKV]:
    """A host pool with prompt's full blocks cached (run through a full-offload scheduler)."""
    warm = make_scheduler(offload="full")
    kv = FakeKV(warm)
    warm.add(make_request("warm", prompt, max_tokens=1))
    step(warm, kv)
    return warm.host_pool, kv


# a prefill token costs 1e-4 s per layer: a block of 4 costs 4e-4 s to recompute
CHEAP_COPY = SyntheticCosts(linear_per_token=1e-4, swap_per_block=1e-5)
DEAR_COPY = SyntheticCosts(linear_per_token=1e-4, swap_per_block=1e-2)


def _with_host_cache(costs, device_blocks=16, **cfg) -> tuple[Scheduler, FakeKV]:
    host, kv = _warm_host(PREFIX[:8] + [1])  # PREFIX[:8]: two blocks cached on the host
    config = SchedulerConfig(**{"max_num_seqs": 8, "max_num_batched_tokens": 64, **cfg})
    s = Scheduler(config, BlockPool(device_blocks, BS, "device", enable_caching=True), host, "neo", costs=costs)
    kv.s = s
    return s, kv


def test_a_device_placed_request_copies_a_host_hit_in_when_the_tables_say_it_beats_recompute():
    s, kv = _with_host_cache(CHEAP_COPY)
    s.add(make_request("b", PREFIX[:8] + [2, 3]))
    plan = step(s, kv)  # FakeKV checks that the copied blocks hold b's tokens when read
    chunk = plan.chunks[-1]
    assert (chunk.location, chunk.start_pos, chunk.num_tokens) == (DEVICE, 8, 2)
    assert plan.num_copied_in_blocks == 2 and plan.swap_in == coalesce(s.host_pool.match(PREFIX, 2), chunk.block_ids[:2])
    assert s.num_prefix_hit_tokens_total == {DEVICE: 0, HOST: 8} and s.num_prefix_copied_tokens_total == 8
    # the copies are cached on the device: the next request of the group hits them there
    s.add(make_request("c", PREFIX[:8] + [4]))
    plan = step(s, kv)
    chunk = plan.chunks[-1]
    assert (chunk.request_id, chunk.location, chunk.start_pos) == ("c", DEVICE, 8) and not plan.swap_in
    assert chunk.block_ids[:2] == s.device_pool.block_ids("b")[:2]
    assert s.num_prefix_hit_tokens_total == {DEVICE: 8, HOST: 8}


def test_a_device_placed_request_recomputes_a_host_hit_when_copying_costs_more():
    s, kv = _with_host_cache(DEAR_COPY)
    s.add(make_request("b", PREFIX[:8] + [2, 3]))
    plan = step(s, kv)
    assert [(c.location, c.start_pos) for c in plan.chunks] == [(DEVICE, 0)]
    assert not plan.swap_in and plan.num_copied_in_blocks == 0 and s.num_prefix_copied_tokens_total == 0


def test_the_policy_prices_the_three_placements_of_a_host_hit():
    cheap, dear = Policy(CHEAP_COPY, SchedulerConfig()), Policy(DEAR_COPY, SchedulerConfig())
    args = dict(num_tokens=1100, block_size=16, device_hit=4, host_hit=64, num_blocks=69)
    choice = cheap.place_host_hit(**args, fits_host=True, can_copy=True)
    assert (choice.location, choice.num_copy_blocks) == (DEVICE, 60)
    # no copy-in this plan: the host reads the hit in place (the swap-in copies 65 blocks later)
    assert cheap.place_host_hit(**args, fits_host=True, can_copy=False).location is HOST
    assert cheap.place_host_hit(**args, fits_host=False, can_copy=False) == HitPlacement(
        DEVICE, 0, cheap.prefill_time(1100 - 4 * 16, 1100)
    )
    choice = dear.place_host_hit(**args, fits_host=True, can_copy=True)
    assert (choice.location, choice.num_copy_blocks) == (DEVICE, 0)
    assert choice.predicted_s == dear.prefill_time(1100 - 4 * 16, 1100)
    with pytest.raises(ValueError, match="longer than the device hit"):
        cheap.place_host_hit(1100, 16, 4, 4, 69, True, True)


def test_no_copy_in_when_the_plan_swaps_a_request_out():
    """A copy-in is written before the swap-outs read their blocks: one freed by a swap-out could
    be its destination, so such a plan copies nothing in (here: the host reads the hit in place)."""
    s, kv = _with_host_cache(CHEAP_COPY, device_blocks=7)
    s.add(make_request("x", [90, 91, 92, 93], max_tokens=12))  # 1 block, grows at its first decode
    s.add(make_request("y", [80 + i % 7 for i in range(20)], max_tokens=4))  # 5 blocks (and x's reserve)
    step(s, kv)
    s.add(make_request("b", PREFIX[:8] + [2]))
    plan = step(s, kv)  # y is swapped out for x's growth; b finds the device with room
    assert plan.swapped_out_ids == ["y"] and plan.num_copied_in_blocks == 0
    chunk = plan.chunks[-1]
    assert (chunk.request_id, chunk.location, chunk.start_pos) == ("b", HOST, 8)


def test_caching_off_keeps_the_old_accounting():
    s = make_scheduler(offload="off", caching=False)
    kv = FakeKV(s)
    for i in range(3):
        s.add(make_request(f"r{i}", PREFIX + [i]))
    while s.requests:
        plan = step(s, kv)
        assert all(c.start_pos == 0 for c in plan.chunks if not c.is_decode and c.num_tokens > 1)
    assert s.device_pool.num_cached == 0 and s.num_prefix_query_tokens_total == 0


@st.composite
def scenarios(draw, copy_ins=False):
    """Random arrivals sharing prefixes; with copy_ins, neo with small device pools and cheap
    copies: demoted prefixes come back to a device with room by copy-in."""
    prefixes = [draw(st.lists(st.integers(0, 30), min_size=1, max_size=14)) for _ in range(3)]
    arrivals = []
    for i in range(draw(st.integers(1, 10))):
        prefix = draw(st.sampled_from(prefixes))
        cut = draw(st.integers(0, len(prefix)))
        suffix = draw(st.lists(st.integers(0, 30), min_size=0 if cut else 1, max_size=6))
        arrivals.append((draw(st.integers(0, 30 if copy_ins else 6)), prefix[:cut] + suffix, draw(st.integers(1, 6))))
    return dict(
        arrivals=arrivals,
        device_blocks=draw(st.integers(6, 9) if copy_ins else st.integers(6, 16)),
        host_blocks=40 if copy_ins else draw(st.sampled_from([0, 8, 40])),
        offload="neo" if copy_ins else draw(st.sampled_from(["off", "neo", "full"])),
        budget=draw(st.sampled_from([3, 8, 64])),
        aborts=draw(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 9)), max_size=4)),
        costs=CHEAP_COPY if copy_ins else draw(st.sampled_from([None, CHEAP_COPY, DEAR_COPY])),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_property_shared_prefixes_never_leak_a_block_or_read_a_stale_one(scenario):
    run_scenario(scenario)


COPY_INS = []  # copied-in blocks per example of the copy-in property test


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True, database=None)
@given(scenarios(copy_ins=True))
def test_property_copy_ins_never_leak_a_block_or_read_a_stale_one(scenario):
    s = run_scenario(scenario)
    COPY_INS.append(s.num_prefix_copied_tokens_total)


def test_the_copy_in_property_test_copies():
    COPY_INS.clear()
    test_property_copy_ins_never_leak_a_block_or_read_a_stale_one()
    assert sum(n > 0 for n in COPY_INS) >= 5, COPY_INS


def run_scenario(scenario) -> Scheduler:
    offload = scenario["offload"]
    host_blocks = scenario["host_blocks"] or (8 if offload == "full" else 0)
    s = make_scheduler(
        scenario["device_blocks"], host_blocks, offload, costs=scenario["costs"], max_num_batched_tokens=scenario["budget"]
    )
    kv = FakeKV(s)
    pending = sorted(enumerate(scenario["arrivals"]), key=lambda item: item[1][0])
    aborts = dict(scenario["aborts"])
    for t in range(400):
        for i, (at, tokens, max_tokens) in pending:
            if at == t:
                request = make_request(f"r{i}", tokens, max_tokens)
                if s.capacity_error(request.max_total_tokens) is None:
                    s.add(request)
        if t in aborts:
            s.finish(f"r{aborts[t]}")
            s.check()
        if not s.requests and t > max(at for at, _, _ in scenario["arrivals"]):
            break
        step(s, kv)
    assert not s.requests, "a request never finished"
    assert s.device_pool.num_used == 0 and s.host_pool.num_used == 0
    return s
