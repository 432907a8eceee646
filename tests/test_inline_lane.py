"""The inline host lane (NEO's own order next to a GPU: host jobs run on the launching thread when
waited for, no second thread), its choice by NEO_ASYNC_HOST_LANE, and an engine whose pipelined
steps run on it producing the thread lane's tokens."""

from __future__ import annotations

import pytest
import torch

from neo_async.config import Config
from neo_async.engine import Engine
from neo_async.runner.host_lane import LANE_ENV, HostLane, InlineLane, host_lane_for
from neo_async.sampling_params import SamplingParams
from tests.model_factory import VOCAB_SIZE, write_random_checkpoint


def test_jobs_run_in_order_when_waited_for():
    lane, ran = InlineLane(), []
    handles = [lane.submit(lambda i=i: ran.append(i)) for i in range(4)]
    assert ran == []  # nothing runs at submission
    handles[2].wait()
    assert ran == [0, 1, 2]
    handles[0].wait()  # already done: runs nothing more
    assert ran == [0, 1, 2]
    lane.drain()
    assert ran == [0, 1, 2, 3] and lane.run_s_total > 0


def test_a_failed_job_raises_at_its_own_wait_only():
    lane, ran = InlineLane(), []

    def boom() -> None:
        raise RuntimeError("boom")

    first, failing, last = lane.submit(boom), lane.submit(lambda: ran.append(1)), lane.submit(lambda: ran.append(2))
    last.wait()
    assert ran == [1, 2]
    with pytest.raises(RuntimeError, match="boom"):
        first.wait()
    failing.wait()


def test_the_lane_follows_the_device_and_the_environment(monkeypatch):
    monkeypatch.delenv(LANE_ENV, raising=False)
    assert isinstance(host_lane_for(torch.device("cuda", 0)), InlineLane)
    thread_lane = host_lane_for(torch.device("cpu"))
    assert isinstance(thread_lane, HostLane)
    thread_lane.close()
    monkeypatch.setenv(LANE_ENV, "inline")
    assert isinstance(host_lane_for(torch.device("cpu")), InlineLane)
    monkeypatch.setenv(LANE_ENV, "fast")
    with pytest.raises(ValueError, match=LANE_ENV):
        host_lane_for(torch.device("cpu"))


def _tokens(path, lane) -> tuple[dict[str, list[int]], int]:
    config = Config().override(
        model=str(path), dtype="float32", block_size=16, offload="neo", device_kv_tokens=96, host_kv_tokens=4096,
        pipeline="on", cost_tables="none",
    )
    engine = Engine(config)
    engine.worker.executor.host_lane = lane
    gen = torch.Generator().manual_seed(8)
    requests = []
    for i in range(6):
        prompt = torch.randint(3, VOCAB_SIZE, (40,), generator=gen).tolist()
        request = engine.make_request(prompt, SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True), f"r{i}")
        engine.add_request(request)
        requests.append(request)
    while engine.has_unfinished:
        engine.step()
        engine.check()
    return {r.request_id: r.output_token_ids for r in requests}, engine.recorder.num_pipelined_iterations_total


def test_pipelined_steps_on_the_inline_lane_give_the_thread_lanes_tokens(tmp_path):
    write_random_checkpoint(tmp_path, "mistral_g4", seed=17)
    thread_lane = HostLane()
    try:
        reference, _ = _tokens(tmp_path, thread_lane)
    finally:
        thread_lane.close()
    inline = InlineLane()
    tokens, num_pipelined = _tokens(tmp_path, inline)
    assert num_pipelined > 0 and tokens == reference
