"""The three offload modes on the embedded model and the real kernel: with a device pool of a
few blocks, `neo` (host prefills, swap-outs, swap-ins) and `full` (every request on the host)
produce the same float32 greedy tokens as `off` with a roomy pool, and every step leaves both
pools and every request's location consistent."""

from __future__ import annotations

import pytest
import torch

from neo_async.config import Config
from neo_async.engine import Engine
from neo_async.sampling_params import SamplingParams

PROMPT_LENGTHS = (20, 70, 35, 90, 50, 12)
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(2024)
    return [torch.randint(100, 40000, (n,), generator=gen).tolist() for n in PROMPT_LENGTHS]


def _engine(**overrides) -> Engine:
    # the fixed placement rules: these tests check the mechanics (swaps, host prefills, aborts);
    # the measured policy's choices are tested on synthetic costs (test_sched_policy, test_pipelined_engine)
    base = dict(dtype="float32", block_size=16, max_num_batched_tokens=128, max_num_seqs=8, cost_tables="none")
    return Engine(Config().override(**{**base, **overrides}))


def _run(engine: Engine, prompts: list[list[int]], abort_at: dict[int, str] | None = None) -> dict[str, list[int]]:
    """Greedy generation, checking every invariant after every step; `abort_at` maps a step
    index to a request id aborted right after that step."""
    params = SamplingParams(temperature=0.0, max_tokens=MAX_TOKENS, ignore_eos=True)
    requests = [engine.make_request(p, params, f"r{i}") for i, p in enumerate(prompts)]
    for request in requests:
        engine.add_request(request)
    step = 0
    while engine.has_unfinished:
        engine.step()
        engine.check()
        if abort_at and step in abort_at:
            engine.abort(abort_at[step])
            engine.check()
        step += 1
    assert engine.device_pool.num_used == 0 and engine.host_pool.num_used == 0
    return {r.request_id: r.output_token_ids for r in requests}


@pytest.fixture(scope="module")
def reference(prompts) -> dict[str, list[int]]:
    return _run(_engine(offload="off", device_kv_tokens=8192), prompts)


def test_neo_with_a_tiny_device_pool_gives_the_same_tokens(prompts, reference):
    engine = _engine(offload="neo", device_kv_tokens=128, host_kv_tokens=4096)  # 8 device blocks
    tokens = _run(engine, prompts)
    assert tokens == reference
    stats = engine.stats()
    assert stats.num_host_prefill_tokens_total > 0
    assert stats.num_swapped_out_total > 0 and stats.num_swapped_in_total > 0
    assert stats.num_swap_out_bytes_total > 0 and stats.num_swap_in_bytes_total > 0
    assert stats.num_preemptions_total == 0  # the host pool is roomy: no recompute


def test_full_offload_gives_the_same_tokens(prompts, reference):
    engine = _engine(offload="full", device_kv_tokens=32, host_kv_tokens=4096)
    tokens = _run(engine, prompts)
    assert tokens == reference
    stats = engine.stats()
    assert stats.num_host_prefill_tokens_total == sum(PROMPT_LENGTHS)
    assert engine.device_pool.num_used == 0 and stats.num_swapped_out_total == 0


def test_both_pools_full_falls_back_to_recompute(prompts, reference):
    engine = _engine(offload="neo", device_kv_tokens=128, host_kv_tokens=160)
    tokens = _run(engine, prompts)
    assert tokens == reference
    assert engine.stats().num_preemptions_total > 0


def test_aborts_after_swaps_and_during_host_prefill_free_everything(prompts):
    engine = _engine(offload="neo", device_kv_tokens=128, host_kv_tokens=4096, max_num_batched_tokens=32)
    # a 32-token budget chunks the long prompts, so host prefills span several steps
    _run(engine, prompts, abort_at={2: "r1", 5: "r3", 9: "r0", 14: "r4"})
    assert engine.stats().num_host_prefill_tokens_total > 0
