"""A run: arrivals honoured, concurrency capped, duration limit, every request accounted for."""

from __future__ import annotations

import numpy as np
import pytest

from loadgen import client, runner
from loadgen.client import ClientConfig
from loadgen.fake_server import FakeServer, Reply
from loadgen.metrics import summarize
from loadgen.progress import Progress
from loadgen.prompts import Prompt
from loadgen.runner import RunOptions
from loadgen.schema import check_result
from loadgen.workload import RequestSpec

# the runner's send times against the plan: wide enough for a loaded 2-core machine (a time slice
# lost to another process), far below the 0.2 s between planned offsets
TOL = 0.1


async def run_fake(aiohttp_server, plan, offsets, options=None, output_lens=None, progress=None):
    fake = FakeServer(plan)
    server = await aiohttp_server(fake.app())
    config = ClientConfig(base_url=str(server.make_url("")), model="fake-model")
    n = len(offsets)
    specs = [RequestSpec(3, (output_lens or [2] * n)[i]) for i in range(n)]
    prompts = [Prompt(f"p{i}", 3) for i in range(n)]
    async with client.new_session(config) as session:
        result = await runner.run(
            session, config, specs, prompts, np.asarray(offsets, dtype=float), options or RunOptions(), progress
        )
    return fake, result


async def test_requests_leave_at_their_offsets(aiohttp_server):
    offsets = [0.0, 0.2, 0.5, 0.5, 0.9]
    fake, result = await run_fake(aiohttp_server, lambda b: Reply(ttft_s=0.05, itl_s=0.05), offsets)
    assert [r.request_id for r in result.records] == [0, 1, 2, 3, 4]
    assert all(r.success for r in result.records)
    sent = [r.sent_s for r in result.records]
    assert sent == pytest.approx(offsets, abs=TOL)
    arrivals = np.asarray(fake.arrivals) - min(fake.arrivals)
    assert sorted(arrivals.tolist()) == pytest.approx(offsets, abs=TOL)
    # the last request leaves at 0.9 s and takes 0.1 s
    assert result.duration_s == pytest.approx(1.0, abs=2 * TOL)


async def test_out_of_order_offsets_are_sent_in_time_order(aiohttp_server):
    fake, result = await run_fake(aiohttp_server, lambda b: Reply(), [0.3, 0.0, 0.15])
    assert [b["prompt"] for b in fake.bodies] == ["p1", "p2", "p0"]
    assert [r.scheduled_s for r in result.records] == [0.3, 0.0, 0.15]


async def test_concurrency_cap(aiohttp_server):
    plan = lambda b: Reply(ttft_s=0.1, itl_s=0.0)  # noqa: E731
    fake, result = await run_fake(aiohttp_server, plan, [0.0] * 6, RunOptions(max_concurrency=2))
    assert fake.max_in_flight == 2
    assert all(r.success for r in result.records)
    # three waves of two requests, 0.1 s each
    assert result.duration_s == pytest.approx(0.3, abs=2 * TOL)
    assert sorted(r.sent_s for r in result.records) == pytest.approx([0.0, 0.0, 0.1, 0.1, 0.2, 0.2], abs=TOL)


async def test_no_cap_sends_everything_at_once(aiohttp_server):
    fake, result = await run_fake(aiohttp_server, lambda b: Reply(ttft_s=0.2), [0.0] * 5)
    assert fake.max_in_flight == 5


async def test_duration_limit_keeps_unsent_requests(aiohttp_server):
    offsets = [0.0, 0.1, 0.5, 0.6]
    fake, result = await run_fake(
        aiohttp_server, lambda b: Reply(ttft_s=0.3), offsets, RunOptions(duration_limit_s=0.35)
    )
    records = result.records
    assert [r.is_sent for r in records] == [True, True, False, False]
    assert [r.success for r in records] == [True, True, False, False]
    assert records[2].error == runner.NOT_SENT and len(fake.bodies) == 2
    summary = summarize(records, result.duration_s)
    assert (summary["completed"], summary["failed"], summary["num_unsent"]) == (2, 0, 2)


async def test_duration_limit_also_stops_requests_queued_behind_the_cap(aiohttp_server):
    options = RunOptions(max_concurrency=1, duration_limit_s=0.25)
    fake, result = await run_fake(aiohttp_server, lambda b: Reply(ttft_s=0.2), [0.0, 0.0, 0.0], options)
    assert [r.is_sent for r in result.records] == [True, True, False]


async def test_failures_are_counted_with_their_error(aiohttp_server):
    plan = lambda b: Reply(status=500) if b["max_tokens"] == 3 else Reply()  # noqa: E731
    progress_lines = []

    class Sink:
        def write(self, text):
            progress_lines.append(text)

        def flush(self):
            pass

    progress = Progress(4, stream=Sink())
    _, result = await run_fake(aiohttp_server, plan, [0.0] * 4, output_lens=[2, 3, 2, 3], progress=progress)
    summary = summarize(result.records, result.duration_s)
    assert (summary["completed"], summary["failed"]) == (2, 2)
    assert list(summary["errors"].values()) == [2] and next(iter(summary["errors"])).startswith("HTTP 500")
    assert progress.num_done == 4 and progress.num_failed == 2
    assert "4/4" in progress_lines[-1] and "2 failed" in progress_lines[-1]
    result_file = {
        "date": "d",
        "model_id": "m",
        "endpoint": "/v1/completions",
        "dataset_name": "x",
        "request_rate": "inf",
        **summary,
    }
    assert check_result(result_file) == []


def test_bad_options():
    with pytest.raises(ValueError):
        RunOptions(max_concurrency=0).validate()
    with pytest.raises(ValueError):
        RunOptions(duration_limit_s=0).validate()
