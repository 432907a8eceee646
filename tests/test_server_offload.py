"""The real server in `neo` mode with a device pool of a few blocks: requests land on the host,
swap between the pools, and a disconnect storm still ends with every block of both pools free.
Bad offload settings stop the server at start-up with an error naming the field."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import aiohttp
import pytest

from tests.server_fixtures import REPO_ROOT, ServerProcess, metrics, sse_events, wait_until

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("offload") / "server.log"
    proc = ServerProcess(log, "--offload", "neo", "--device-kv-tokens", "256", "--host-kv-tokens", "65536", "--max-num-seqs", "32",
                        "--cost-tables", "none")
    yield proc
    proc.stop()


def _host_activity(base_url: str) -> tuple[float, float, float]:
    m = metrics(base_url)
    return (
        m[("neo:host_prefill_tokens_total", ())],
        m[("neo:swaps_total", (("direction", "out"),))] + m[("neo:swaps_total", (("direction", "in"),))],
        m[("neo:num_requests_on_host", ())],
    )


def _is_idle(base_url: str) -> bool:
    m = metrics(base_url)
    return (
        m[("vllm:num_requests_running", ())] == 0
        and m[("neo:kv_blocks_used", (("location", "device"),))] == 0
        and m[("neo:kv_blocks_used", (("location", "host"),))] == 0
        and m[("neo:num_requests_on_host", ())] == 0
    )


async def test_disconnect_storm_in_neo_mode_frees_both_pools(server):
    base = server.base_url
    assert metrics(base)[("neo:kv_blocks_total", (("location", "host"),))] == 65536 // 16
    # at most ~240 tokens in all: a request may live in either pool (256 device tokens)
    body = {"max_tokens": 150, "ignore_eos": True, "stream": True, "temperature": 1.0}
    on_host_seen = []

    async def cut_stream(session: aiohttp.ClientSession, i: int) -> None:
        messages = [{"role": "user", "content": f"Tell a long story about the number {i}. " * (1 + i % 4)}]
        response = await session.post(base + "/v1/chat/completions", json={**body, "messages": messages})
        assert response.status == 200
        seen = 0
        async for _ in sse_events(response):
            seen += 1
            if seen == 4:
                on_host_seen.append(metrics(base)[("neo:num_requests_on_host", ())])
            if seen >= 8 + 7 * i:  # the first requests (on the device) leave early: host ones swap in
                break
        response.close()

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(cut_stream(session, i) for i in range(20)))
    assert await asyncio.to_thread(wait_until, lambda: _is_idle(base), 60.0), metrics(base)
    host_prefill_tokens, num_swaps, _ = _host_activity(base)
    assert host_prefill_tokens > 0 and num_swaps > 0
    assert max(on_host_seen) > 0
    m = metrics(base)
    assert m[("neo:swap_bytes_total", (("direction", "out"),))] + m[("neo:swap_bytes_total", (("direction", "in"),))] > 0


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--offload", "sometimes"], "offload must be one of"),
        (["--host-kv-tokens", "lots"], "--host-kv-tokens: expected a number of tokens or 'auto'"),
        (["--host-kv-tokens", "-16"], "host_kv_tokens must be >= 0"),
        (["--offload", "full", "--host-kv-tokens", "0"], "offload='full' needs a host KV pool"),
    ],
)
def test_bad_offload_settings_fail_at_start_up_naming_the_field(flags, message):
    cmd = [sys.executable, "-m", "neo_async", "serve", "--port", "0", *flags]
    result = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
