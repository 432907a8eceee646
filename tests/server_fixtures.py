"""A real `neo-async serve` process on a free loopback port, and small HTTP helpers for tests.

The server runs the embedded model with one torch thread; it binds port 0 and the test
reads the chosen port from its JSON `server_listening` line, and waits for `server_ready`
(the engine loaded) unless told not to.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 180.0


class ServerProcess:
    """`python -m neo_async serve` in a child process, logs (JSON lines) to a file."""

    def __init__(
        self, log_path: Path, *args: str, wait_ready: bool = True, program: list[str] | None = None, cwd: Path = REPO_ROOT
    ) -> None:
        """program: the command that runs `neo-async` (default: this interpreter on the checkout)."""
        program = program or [sys.executable, "-m", "neo_async"]
        self.spawn(log_path, [*program, "serve", "--port", "0", "--log-format", "json", "--device-threads", "1", *args], cwd)
        self.base_url = f"http://127.0.0.1:{self.wait_event('server_listening')['port']}"
        if wait_ready:
            self.wait_event("server_ready")

    def spawn(self, log_path: Path, cmd: list[str], cwd: Path) -> None:
        self.log_path = log_path
        self._log = open(log_path, "w")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(cmd, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def wait_event(self, name: str, timeout_s: float = START_TIMEOUT_S) -> dict[str, Any]:
        """The first log event called `name`; raises if the process exits or times out first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for event in self.events():
                if event.get("event") == name:
                    return event
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.log_text()}")
            time.sleep(0.2)
        self.proc.kill()
        raise RuntimeError(f"no {name} within {timeout_s}s:\n{self.log_text()}")

    def log_text(self) -> str:
        return self.log_path.read_text()

    def events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_text().splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            if isinstance(item, dict):
                events.append(item)
        return events

    def send_signal(self, sig: int = signal.SIGTERM) -> None:
        self.proc.send_signal(sig)

    def wait(self, timeout_s: float = 120.0) -> int:
        try:
            return self.proc.wait(timeout_s)
        finally:
            self._log.close()

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


def http(method: str, url: str, body: bytes | dict[str, Any] | None = None, timeout_s: float = 120.0) -> tuple[int, dict[str, str], bytes]:
    """One blocking HTTP request; returns (status, headers, body) for every status."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def metrics(base_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by (sample name, sorted labels without model_name)."""
    status, _, body = http("GET", base_url + "/metrics")
    assert status == 200
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "model_name"))
            out[(sample.name, labels)] = sample.value
    return out


def metric(base_url: str, name: str, **labels: str) -> float:
    return metrics(base_url)[(name, tuple(sorted(labels.items())))]


def wait_until(predicate: Any, timeout_s: float, interval_s: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    return bool(predicate())


async def sse_events(response: aiohttp.ClientResponse) -> AsyncIterator[Any]:
    """The `data:` payloads of an SSE response: parsed JSON, or the string "[DONE]"."""
    async for raw in response.content:
        line = raw.decode().rstrip("\r\n")
        if not line.startswith("data: "):
            assert line == "", f"unexpected SSE line {line!r}"
            continue
        data = line[len("data: ") :]
        yield data if data == "[DONE]" else json.loads(data)
