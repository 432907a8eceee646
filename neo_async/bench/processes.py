"""Servers run as child processes by benchmarks, scripts and tests: a free port, and a stop that
asks first (SIGTERM: drain) and kills only after a grace period."""

from __future__ import annotations

import os
import signal
import socket
import subprocess


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(process: subprocess.Popen, grace_s: float = 30.0, group: bool = False) -> None:
    """SIGTERM, then SIGKILL after grace_s; group: the whole process group it leads
    (started with start_new_session=True)."""
    if process.poll() is not None:
        return

    def send(sig: int) -> None:
        if group:
            os.killpg(process.pid, sig)
        else:
            process.send_signal(sig)

    send(signal.SIGTERM)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        send(signal.SIGKILL)
        process.wait()
