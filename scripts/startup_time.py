"""Time `neo-async serve` start-up: from Popen to the first answer on /health (any status)
and to the first 200, over a few runs.

    python scripts/startup_time.py [--repeats 5] [-- serve flags...]
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from neo_async.bench.processes import free_port, stop_process

REPO_ROOT = Path(__file__).resolve().parent.parent


def health_status(port: int) -> int | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        conn.request("GET", "/health")
        return conn.getresponse().status
    except OSError:
        return None
    finally:
        conn.close()


def one_run(serve_args: list[str], timeout_s: float) -> tuple[float | None, float | None]:
    """(seconds to the first /health answer, seconds to the first 200), None where never."""
    port = free_port()
    cmd = [sys.executable, "-m", "neo_async", "serve", "--port", str(port), *serve_args]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first_answer = first_ok = None
    try:
        while time.perf_counter() - started < timeout_s and proc.poll() is None:
            status = health_status(port)
            now = time.perf_counter() - started
            if status is not None and first_answer is None:
                first_answer = now
            if status == 200:
                first_ok = now
                break
            time.sleep(0.01)
    finally:
        stop_process(proc)
    return first_answer, first_ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--timeout-s", type=float, default=120.0)
    parser.add_argument("serve_args", nargs="*")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    rows = [one_run(args.serve_args, args.timeout_s) for _ in range(args.repeats)]
    fmt = lambda s: "never" if s is None else f"{s:.2f}"  # noqa: E731
    print(f"{'run':>6}  {'first answer s':>13}  {'first 200 s':>13}")
    for i, (answer, ok) in enumerate(rows, 1):
        print(f"{i:>6}  {fmt(answer):>13}  {fmt(ok):>13}")
    for name, pick in (("median", statistics.median), ("max", max)):
        cells = [[r[c] for r in rows if r[c] is not None] for c in (0, 1)]
        answer, ok = (fmt(pick(v)) if v else "never" for v in cells)
        print(f"{name:>6}  {answer:>13}  {ok:>13}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
