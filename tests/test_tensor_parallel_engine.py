"""Tensor parallelism end to end on the CPU: the engine with 2 ranks (rank 1 a spawned process,
gloo) gives the same float32 greedy tokens as with 1, in `off`, `neo` (tiny device pool,
pipelining forced: the ranks run both sub-batches and the swaps in lockstep) and `full`, with
aborts; a degree that does not split the model is refused; a rank killed mid-run fails the
engine within seconds."""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from neo_async.config import Config
from neo_async.engine import Engine
from neo_async.parallel.rank_group import RankFailedError, RankGroup, core_shares
from neo_async.sampling_params import SamplingParams
from tests.model_factory import VOCAB_SIZE, write_random_checkpoint

MODES = {
    "off": dict(offload="off"),
    "neo": dict(offload="neo", device_kv_tokens=64, host_kv_tokens=2048, pipeline="on"),
    "full": dict(offload="full", device_kv_tokens=32, host_kv_tokens=2048),
}


@pytest.fixture(scope="module", params=["llama_gqa", "qwen2_bias", "llama31_rope_scaling"])
def checkpoint(request, tmp_path_factory):
    """GQA Llama (2 KV heads: one per rank), Qwen2 with q/k/v biases, and a single KV head
    (replicated on both ranks)."""
    path = tmp_path_factory.mktemp(request.param)
    write_random_checkpoint(path, request.param, seed=41)
    return path


def _engine(checkpoint, tp: int, **overrides) -> Engine:
    settings = dict(model=str(checkpoint), dtype="float32", block_size=16, cost_tables="none", max_num_seqs=8,
                    tensor_parallel_size=tp, device_threads=1, host_threads=1)
    config = Config().override(**(settings | overrides))
    return Engine(config)


def _prompts() -> list[list[int]]:
    gen = torch.Generator().manual_seed(5)
    return [torch.randint(3, VOCAB_SIZE, (n,), generator=gen).tolist() for n in (40, 23, 61, 9, 35)]


def _run(engine: Engine, abort_at: int | None = None) -> dict[str, list[int]]:
    """Greedy tokens of every prompt; with abort_at, request r1 is aborted after that many steps.
    Both pools are checked after every step."""
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    requests = [engine.make_request(p, params, f"r{i}") for i, p in enumerate(_prompts())]
    for r in requests:
        engine.add_request(r)
    steps = 0
    while engine.has_unfinished:
        engine.step()
        engine.check()
        steps += 1
        if steps == abort_at:
            engine.abort("r1")
    assert engine.device_pool.num_used == 0 and engine.host_pool.num_used == 0
    return {r.request_id: r.output_token_ids for r in requests}


@pytest.mark.slow
@pytest.mark.parametrize("mode", sorted(MODES))
def test_two_ranks_give_the_tokens_of_one(checkpoint, mode):
    reference = _run(_engine(checkpoint, 1, **MODES[mode]), abort_at=3)
    engine = _engine(checkpoint, 2, **MODES[mode])
    try:
        assert isinstance(engine.worker, RankGroup) and engine.worker.spec.tp_size == 2
        tokens = _run(engine, abort_at=3)
        if mode == "neo":
            assert engine.recorder.num_pipelined_iterations_total > 0
            assert engine.stats().num_swapped_out_total + engine.recorder.num_host_prefill_tokens_total > 0
    finally:
        engine.close()
    assert tokens == reference
    assert len(tokens["r1"]) < 12 and all(len(t) == 12 for k, t in tokens.items() if k != "r1")


def test_a_degree_that_does_not_split_the_heads_is_refused(tmp_path):
    write_random_checkpoint(tmp_path, "qwen2_bias", seed=3)  # 6 query heads, 2 KV heads
    started = time.monotonic()
    with pytest.raises(ValueError, match="num_heads 6 is not a multiple of 4"):
        _engine(tmp_path, 4)
    assert time.monotonic() - started < 60


def test_a_killed_rank_fails_the_engine_within_seconds(tmp_path):
    write_random_checkpoint(tmp_path, "llama_gqa", seed=4)
    engine = _engine(tmp_path, 2, offload="off")
    try:
        params = SamplingParams(temperature=0.0, max_tokens=200, ignore_eos=True)
        engine.add_request(engine.make_request(list(range(3, 40)), params, "long"))
        engine.step()
        os.kill(engine.worker._procs[0].pid, signal.SIGKILL)
        killed = time.monotonic()
        with pytest.raises(RankFailedError, match="rank"):
            while engine.has_unfinished:
                engine.step()
        assert time.monotonic() - killed < 15
        assert engine.failure is not None
    finally:
        engine.close()


def test_each_rank_gets_its_own_cores():
    assert core_shares([0, 1, 2, 3], 2) == [[0, 1], [2, 3]]
    assert core_shares([0, 1, 2], 2) == [[0], [1]]
    assert core_shares([4], 2) == [[4], [4]]


@pytest.mark.slow
def test_two_ranks_profile_in_lockstep_and_the_policy_uses_their_tables(tmp_path, monkeypatch):
    monkeypatch.setenv("NEO_ASYNC_CACHE_DIR", str(tmp_path / "profiles"))
    write_random_checkpoint(tmp_path / "model", "llama_gqa", seed=8)
    neo = dict(offload="neo", device_kv_tokens=64, host_kv_tokens=2048)
    reference = _run(_engine(tmp_path / "model", 1, **neo))
    engine = _engine(tmp_path / "model", 2, **(neo | {"cost_tables": "auto"}))
    try:
        assert engine.costs is not None and engine.scheduler.policy is not None
        assert engine.costs.key["model"]["tensor_parallel_size"] == 2 and engine.costs.key["model"]["num_heads"] == 2
        assert _run(engine) == reference
    finally:
        engine.close()


def test_a_timer_with_an_agreement_makes_the_calls_it_is_told():
    """Rank 0 decides; here the agreement says "no further pass" whatever this rank measured,
    so each point is called exactly twice (warm-up, one timed call)."""
    from neo_async.profile.timing import Bench, Timer

    calls = [0, 0]
    decisions = []

    def agree(decision):
        decisions.append(decision)
        return decision if isinstance(decision, bool) else []

    benches = [Bench(lambda i, j=j: calls.__setitem__(j, calls[j] + 1)) for j in range(2)]
    Timer(torch.device("cpu"), repeats=5, agree=agree).measure(benches)
    assert calls == [2, 2] and decisions[0] is True and decisions[1] == [0, 1]
