"""Prefix caching end to end on a random-weight model: float32 greedy tokens are the same with
the cache on as with it off, in every offload mode, on prompts that share whole and partial
blocks, a prompt equal to a cached prefix, and a request aborted mid-prefill while it holds
cached blocks; every step leaves both pools consistent, and nothing is held at the end."""

from __future__ import annotations

import random

import pytest

from neo_async.config import Config
from neo_async.engine import Engine
from neo_async.sampling_params import SamplingParams
from neo_async.sched.plan import KVLocation
from tests.model_factory import write_random_checkpoint

MAX_TOKENS = 8
DEVICE, HOST = KVLocation.DEVICE, KVLocation.HOST


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("prefix")
    write_random_checkpoint(path, "llama_gqa", seed=5)
    return path


def _workload() -> tuple[list[tuple[int, str, list[int]]], dict[int, str]]:
    """(step at which it arrives, request id, prompt) and {step: request id aborted after it}."""
    rng = random.Random(26)
    tokens = lambda n: [rng.randrange(3, 320) for _ in range(n)]  # noqa: E731
    system = tokens(40)  # two blocks and a half
    tools = tokens(48)  # three blocks exactly
    arrivals = [
        (0, "a0", system + tokens(9)),
        (0, "t0", tools + tokens(5)),
        (3, "a1", system + tokens(20)),
        (3, "a2", system[:37] + tokens(4)),  # shares a partial block only up to its 2 full ones
        (4, "t1", list(tools)),  # equal to a cached prefix
        (4, "x0", tokens(30)),
        (9, "t2", tools + tokens(40)),  # aborted mid-prefill, holding tools' cached blocks
        (10, "t3", tools + tokens(3)),
        (12, "a3", system + tokens(2)),
        (16, "t4", tools[:32] + tokens(6)),
    ]
    return arrivals, {9: "t2"}


def _engine(path, caching: bool, **overrides) -> Engine:
    base = dict(
        model=str(path), dtype="float32", block_size=16, max_num_batched_tokens=24, max_num_seqs=8, cost_tables="none"
    )
    return Engine(Config().override(**{**base, **overrides, "enable_prefix_caching": caching}))


def _run(engine: Engine, workload=None) -> dict[str, list[int]]:
    arrivals, aborts = workload or _workload()
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    requests = {}
    step = 0
    while step <= max(at for at, _, _ in arrivals) or engine.has_unfinished:
        for at, rid, prompt in arrivals:
            if at == step:
                requests[rid] = engine.make_request(prompt, params, rid)
                engine.add_request(requests[rid])
        engine.step()
        engine.check()
        if step in aborts:
            rid = aborts[step]
            assert engine.scheduler.requests[rid].num_computed_tokens < requests[rid].num_prompt_tokens, "not mid-prefill"
            engine.abort(rid)
            engine.check()
        step += 1
        assert step < 500
    assert engine.device_pool.num_used == 0 and engine.host_pool.num_used == 0
    return {rid: r.output_token_ids for rid, r in requests.items() if rid not in aborts.values()}


@pytest.fixture(scope="module")
def reference(checkpoint) -> dict[str, list[int]]:
    engine = _engine(checkpoint, caching=False, offload="off", device_kv_tokens=4096)
    tokens = _run(engine)
    assert engine.stats().num_prefix_hits_total == 0
    return tokens


def test_off_with_caching_gives_the_same_tokens(checkpoint, reference):
    engine = _engine(checkpoint, caching=True, offload="off", device_kv_tokens=4096)
    assert _run(engine) == reference
    stats = engine.stats()
    assert stats.num_prefix_hit_tokens_total["device"] >= 4 * 16 and stats.num_prefix_hit_tokens_total["host"] == 0
    assert stats.num_prefix_query_tokens_total == sum(len(p) for _, _, p in _workload()[0])
    assert engine.device_pool.num_cached > 0


def test_neo_with_a_tiny_device_pool_and_the_pipeline_gives_the_same_tokens(checkpoint, reference):
    engine = _engine(checkpoint, caching=True, offload="neo", device_kv_tokens=128, host_kv_tokens=4096, pipeline="on")
    assert _run(engine) == reference
    stats = engine.stats()
    assert stats.num_prefix_hits_total > 0 and stats.num_prefix_hit_tokens_total["host"] > 0
    assert stats.num_prefix_hit_tokens_total["device"] > 0 and engine.recorder.num_pipelined_iterations_total > 0


def test_full_offload_hits_the_host_pool_in_place(checkpoint, reference):
    engine = _engine(checkpoint, caching=True, offload="full", device_kv_tokens=32, host_kv_tokens=4096)
    assert _run(engine) == reference
    stats = engine.stats()
    assert stats.num_prefix_hit_tokens_total["host"] >= 4 * 16 and stats.num_prefix_hit_tokens_total["device"] == 0
    assert stats.num_swap_out_bytes_total == 0 and stats.num_swap_in_bytes_total == 0  # read where they lie
    # the hits are prompt tokens the host did not prefill (the aborted request's tail neither)
    assert stats.num_host_prefill_tokens_total + stats.num_prefix_hits_total <= stats.num_prefix_query_tokens_total


def test_demoted_blocks_are_hit_on_the_host_after_their_device_copies_are_evicted(checkpoint):
    rng = random.Random(7)
    prefix = [rng.randrange(3, 320) for _ in range(40)]
    workload = (
        [
            (0, "a", prefix + [5]),  # on the device: two full blocks cached when it finishes
            (12, "b", [rng.randrange(3, 320) for _ in range(119)]),  # takes every device block
            (19, "c", prefix + [9, 9]),  # the device is busy with b: on the host, hits the demoted copies
        ],
        {},
    )
    reference = _run(_engine(checkpoint, caching=False, offload="off", device_kv_tokens=4096), workload)
    engine = _engine(checkpoint, caching=True, offload="neo", device_kv_tokens=128, host_kv_tokens=4096)
    assert _run(engine, workload) == reference
    stats = engine.stats()
    assert stats.num_demoted_blocks_total >= 2 and stats.num_prefix_hit_tokens_total == {"device": 0, "host": 32}


def test_a_host_hit_copied_in_for_a_device_placed_request_gives_the_same_tokens(checkpoint):
    """The demoted copies of a prefix come back to a device with room by the swap-in copy (the
    cost model prices the copy below recomputing it), and the tokens are those of a recompute."""
    from neo_async.sched.scheduler import Scheduler
    from tests.synthetic_costs import SyntheticCosts

    rng = random.Random(11)
    prefix = [rng.randrange(3, 320) for _ in range(40)]
    workload = (
        [
            (0, "a", prefix + [5]),  # on the device: two full blocks cached when it finishes
            (12, "b", [rng.randrange(3, 320) for _ in range(119)]),  # evicts them: demoted to the host
            (40, "c", prefix + [9, 9]),  # b is done: the device has room, the host has the prefix
            (41, "d", prefix + [7]),  # hits c's copies on the device
        ],
        {},
    )
    reference = _run(_engine(checkpoint, caching=False, offload="off", device_kv_tokens=4096), workload)
    engine = _engine(checkpoint, caching=True, offload="neo", device_kv_tokens=128, host_kv_tokens=4096)
    costs = SyntheticCosts(linear_per_token=1e-4, swap_per_block=1e-5)
    engine.scheduler = Scheduler(engine.config.scheduler, engine.device_pool, engine.host_pool, "neo", costs=costs)
    assert _run(engine, workload) == reference
    s = engine.scheduler
    assert s.num_demoted_blocks_total >= 2 and s.num_prefix_copied_tokens_total == 32
    assert s.num_prefix_hit_tokens_total[HOST] == 32 and s.num_prefix_hit_tokens_total[DEVICE] == 32
    assert engine.stats().num_prefix_copied_tokens_total == 32  # what /metrics reports
