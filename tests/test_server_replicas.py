"""`neo-async serve --data-parallel-size 2`: two real replicas behind the real sglang-router
(power_of_two, which reads each replica's /get_load), driven by the openai client.

The tests run in file order on one deployment: streams through the router reach both replicas;
a replica kept busy by direct requests gets fewer of the router's new ones; a killed replica is
logged and the requests after it still succeed; SIGTERM then stops every process (exit 1: a
replica was lost)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import openai
import pytest
import sglang_router  # noqa: F401 - the router extra, which setup.sh installs: missing, the tests fail

from neo_async.server.router import RouterSettings
from tests.server_fixtures import REPO_ROOT, ServerProcess, http, metrics, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

MODEL = "SmolLM2-135M-Instruct"
LOAD_POLL_S = 1.0  # the router polls /get_load this often (router.RouterSettings.load_poll_interval_s)


class Deployment(ServerProcess):
    """The supervisor of two replicas and the router, with ServerProcess's log reading and stop."""

    def __init__(self, log_path: Path) -> None:
        cmd = [sys.executable, "-m", "neo_async", "serve", "--data-parallel-size", "2", "--router-policy", "power_of_two",
               "--port", "0", "--log-format", "json", "--cost-tables", "none", "--max-num-seqs", "16",
               "--shutdown-grace-s", "5"]
        self.spawn(log_path, cmd, REPO_ROOT)
        ready = self.wait_event("data_parallel_ready", 240)
        self.url = ready["url"]
        self.replica_urls: list[str] = ready["replica_urls"]
        self.replica_pids = {e["index"]: e["pid"] for e in self.events() if e.get("event") == "replica_started"}


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    dep = Deployment(tmp_path_factory.mktemp("replicas") / "serve.log")
    yield dep
    dep.stop()


def served(url: str) -> float:
    """Requests this replica finished by length (every test request ends so)."""
    return metrics(url)[("vllm:request_success_total", (("finished_reason", "length"),))]


def load(url: str) -> dict[str, int]:
    status, _, body = http("GET", url + "/get_load")
    assert status == 200
    (entry,) = json.loads(body)
    return entry


async def stream_chat(client: openai.AsyncOpenAI, i: int, max_tokens: int = 8) -> str:
    stream = await client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": f"Count to {i}."}], max_tokens=max_tokens,
        stream=True, extra_body={"ignore_eos": True},
    )
    parts = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    return "".join(parts)


async def through_router(url: str, num_requests: int) -> list[str]:
    async with openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120) as client:
        return await asyncio.gather(*(stream_chat(client, i) for i in range(num_requests)))


async def test_streams_through_the_router_reach_both_replicas(deployment):
    before = [served(u) for u in deployment.replica_urls]
    texts = await through_router(deployment.url, 16)
    assert all(texts)
    gained = [served(u) - b for u, b in zip(deployment.replica_urls, before)]
    assert sum(gained) == 16
    assert min(gained) >= 1, gained


async def test_the_busier_replica_gets_fewer_new_requests(deployment):
    busy, idle = deployment.replica_urls
    body = {"model": MODEL, "prompt": "Once upon a time", "max_tokens": 1000, "ignore_eos": True, "stream": True}
    async with aiohttp.ClientSession() as session:
        responses = [await session.post(busy + "/v1/completions", json=body) for _ in range(4)]
        assert all(r.status == 200 for r in responses)
        assert wait_until(lambda: load(busy)["num_tokens"] > 0, 30)
        assert load(busy)["num_running_reqs"] + load(busy)["num_waiting_reqs"] == 4
        await asyncio.sleep(LOAD_POLL_S + 1)  # the router's cached loads now see the busy replica
        before = [served(busy), served(idle)]
        await through_router(deployment.url, 8)
        gained_busy, gained_idle = served(busy) - before[0], served(idle) - before[1]
        for r in responses:  # disconnect: the server aborts the long requests
            r.close()
    assert gained_busy + gained_idle == 8
    assert gained_busy < gained_idle and gained_busy <= 2, (gained_busy, gained_idle)
    assert wait_until(lambda: load(busy)["num_reqs"] == 0, 30)


async def test_a_killed_replica_is_logged_and_later_requests_succeed(deployment):
    victim, survivor = deployment.replica_pids[0], deployment.replica_urls[1]
    os.kill(victim, signal.SIGKILL)
    exited = deployment.wait_event("replica_exited", 10)
    assert exited["index"] == 0 and exited["num_alive"] == 1
    # the router drops a replica after its failed health checks; until then a request it sends
    # there fails on the refused connection (sglang-router 0.3.2 does not retry those)
    settings = RouterSettings()
    await asyncio.sleep(settings.health_check_interval_s * (settings.health_failure_threshold + 1))
    before = served(survivor)
    texts = await through_router(deployment.url, 8)
    assert all(texts)
    assert served(survivor) - before == 8

    def is_idle() -> bool:
        entry = load(survivor)
        return entry["num_reqs"] == 0 and entry["num_device_kv_tokens_used"] == 0 and entry["num_host_kv_tokens_used"] == 0

    assert wait_until(is_idle, 30), load(survivor)


def test_sigterm_stops_every_process(deployment):
    children = [e["pid"] for e in deployment.events() if e.get("event") in ("replica_started", "router_started")]
    code = deployment.stop()
    assert code == 1  # a replica was lost before the stop
    assert deployment.events()[-1]["event"] == "data_parallel_stopped"
    for pid in children:
        assert not _is_running(pid), pid


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}/stat").exists() else "X"
    return status != "Z"
