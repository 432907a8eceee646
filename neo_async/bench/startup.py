"""`neo-async serve` start-up, timed from outside: from process start to the first /health 200,
with each phase's end read from the server's own debug log (JSON lines, ISO timestamps).

Phases are logged where they happen (server/startup.py, model/loader.py, the engine); a row
holds, per event, seconds since the process was started, and `ready` the first 200 seen.
"""

from __future__ import annotations

import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from typing import Any

from neo_async.bench.processes import free_port, stop_process

# In the order they happen; the table shows these, when logged.
PHASE_EVENTS = (
    "server_listening",
    "engine_imported",
    "model_gguf_opened",
    "model_tokenizer_built",
    "model_weights_dequantized",
    "model_weights_prepared",
    "model_loaded",
    "engine_built",
    "server_ready",
)


def _health(port: int) -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def time_start(serve_args: list[str], timeout_s: float = 300.0) -> dict[str, Any]:
    """One start: {'ready': seconds to the first 200, event: seconds to its log line}."""
    port = free_port()
    cmd = [sys.executable, "-m", "neo_async", "serve", "--port", str(port), "--log-level", "debug", "--log-format", "json"]
    with tempfile.TemporaryFile("w+") as log:
        started_wall, started = time.time(), time.perf_counter()
        proc = subprocess.Popen([*cmd, *serve_args], stdout=log, stderr=log)
        ready = None
        try:
            while time.perf_counter() - started < timeout_s and proc.poll() is None:
                if _health(port) == 200:
                    ready = time.perf_counter() - started
                    break
                time.sleep(0.005)
        finally:
            stop_process(proc)
        log.seek(0)
        row: dict[str, Any] = {"ready": ready}
        for line in log:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            event = entry.get("event")
            if event in PHASE_EVENTS and event not in row and "timestamp" in entry:
                at = datetime.fromisoformat(entry["timestamp"].replace("Z", "+00:00")).timestamp()
                row[event] = at - started_wall
    if ready is None:
        raise RuntimeError(f"neo-async serve was not ready within {timeout_s} s (exit status {proc.returncode})")
    return row


def time_starts(repeats: int, serve_args: list[str]) -> list[dict[str, Any]]:
    """`repeats` starts, each row with its repeat number; a median row last."""
    rows = [{"repeat": i, **time_start(serve_args)} for i in range(repeats)]
    keys = ["ready", *(e for e in PHASE_EVENTS if all(e in r for r in rows))]
    rows.append({"repeat": "median", **{k: statistics.median(r[k] for r in rows) for k in keys}})
    return rows


def phase_columns(rows: list[dict[str, Any]]) -> list[str]:
    return ["repeat", *(e for e in PHASE_EVENTS if e in rows[-1]), "ready"]


def profile_cache_note() -> str:
    from neo_async.profile.cache import cache_dir

    cache = cache_dir()
    warm = cache.is_dir() and any(cache.glob("costs-*.json"))
    return f"profile cache {'warm' if warm else 'cold (the first start also profiles, ~30 s)'}: {cache}"
