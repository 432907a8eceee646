"""The async engine on the embedded model: concurrency, aborts, overload, errors."""

from __future__ import annotations

import asyncio

import pytest
import pytest_asyncio

from neo_async.async_engine import AsyncEngine
from neo_async.config import Config
from neo_async.errors import EngineOverloadedError
from neo_async.outputs import FinishReason
from neo_async.sampling_params import SamplingParams


pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine():
    eng = AsyncEngine.from_config(Config().override(device_kv_tokens=2048, host_kv_tokens=4096, max_num_seqs=16, max_waiting=24))
    await eng.start()
    yield eng
    eng.engine.check()
    await eng.stop()
    eng.engine.check()
    assert eng.engine.device_pool.num_used == 0 and eng.engine.host_pool.num_used == 0


async def collect(stream):
    deltas = [d async for d in stream]
    return "".join(d.text for d in deltas), sum(len(d.token_ids) for d in deltas), deltas[-1]


async def test_concurrent_seeded_requests_are_reproducible(engine):
    params = [SamplingParams(max_tokens=12, temperature=0.8, seed=i, ignore_eos=True) for i in range(10)]
    runs = []
    for attempt in range(2):
        streams = [engine.generate("Story:", p, f"c{attempt}-{i}") for i, p in enumerate(params)]
        runs.append(await asyncio.gather(*[collect(s) for s in streams]))
    assert [text for text, _, _ in runs[0]] == [text for text, _, _ in runs[1]]
    assert len({text for text, _, _ in runs[0]}) > 5  # different seeds, different samples
    assert all(n == 12 and last.finish_reason is FinishReason.LENGTH for _, n, last in runs[0])


async def test_abort_mid_stream_frees_blocks_and_ends_the_stream(engine):
    stream = engine.generate("Write a very long essay about the sea.", SamplingParams(max_tokens=400, ignore_eos=True), "long")
    seen = 0
    async for delta in stream:
        seen += 1
        if seen == 3:
            await engine.abort("long")
    assert delta.finish_reason is FinishReason.ABORT
    assert engine.num_unfinished == 0
    for _ in range(50):
        if engine.stats().num_running == 0:
            break
        await asyncio.sleep(0.01)
    assert engine.stats().num_running == 0 and engine.stats().num_device_blocks_used == 0


async def test_bad_input_raises_at_once(engine):
    with pytest.raises(ValueError, match="max_tokens"):
        engine.generate("hi", SamplingParams(max_tokens=0), "a")
    with pytest.raises(ValueError, match="token ids"):
        engine.generate([1, 10**9], SamplingParams(), "b")
    with pytest.raises(ValueError, match="context"):
        engine.generate([5] * engine.max_model_len, SamplingParams(), "c")
    with pytest.raises(ValueError, match="empty"):
        engine.generate("", SamplingParams(), "d")


async def test_queue_full_is_refused_with_overload(engine):
    streams = [engine.generate("x", SamplingParams(max_tokens=4), f"q{i}") for i in range(24)]
    with pytest.raises(EngineOverloadedError):
        engine.generate("x", SamplingParams(max_tokens=4), "one-too-many")
    results = await asyncio.gather(*[collect(s) for s in streams])
    assert len(results) == 24


async def test_async_and_sync_paths_refuse_with_the_same_checks_and_messages(engine):
    """One capacity check and one overload check serve both the async engine and Engine.add_request."""
    sync = engine.engine
    capacity = sync.scheduler.placement.capacity_tokens()
    too_long = SamplingParams(max_tokens=capacity)  # prompt + max_tokens > every pool
    with pytest.raises(ValueError) as async_error:
        engine.generate("Story:", too_long, "too-long-async")
    with pytest.raises(ValueError) as sync_error:
        sync.add_request(sync.make_request("Story:", too_long, "too-long-sync"))
    assert str(async_error.value) == str(sync_error.value)
    assert "more than any KV pool holds" in str(sync_error.value)
    streams = [engine.generate("x", SamplingParams(max_tokens=2), f"o{i}") for i in range(24)]
    with pytest.raises(EngineOverloadedError) as async_overload:
        engine.generate("x", SamplingParams(max_tokens=2), "over-async")
    with pytest.raises(EngineOverloadedError) as sync_overload:  # Engine.add_request's own check, read-only
        sync.check_admission(sync.make_request("x", SamplingParams(max_tokens=2), "over-sync"), num_pending=24)
    assert str(async_overload.value).endswith("requests are waiting; try again later")
    assert str(sync_overload.value).endswith("requests are waiting; try again later")
    await asyncio.gather(*[collect(s) for s in streams])
