"""`neo-async serve --data-parallel-size N`: N replica servers and the router, supervised.

Start-up: the replicas start at once (replica_plan.py gives each its port, CPUs, GPUs and host
pool share); once every one answers GET /health with 200, the router starts on the user's
--host/--port (`data_parallel_ready` once it answers too). A replica that fails to start stops
everything (exit 1).

Running: a replica that exits is logged (`replica_exited`) and the router stops sending it
requests after its failed health checks; the others serve on. When no replica is left, or the
router exits, everything stops (exit 1).

Stopping: the first SIGTERM/SIGINT goes to every child as SIGTERM (replicas drain within
--shutdown-grace-s, the router finishes its streams); a second one is passed on (replicas
abort what is in flight). Children still running after the grace period (plus a margin) are
killed. Exit 0 when a signal stopped a healthy set and every child exited cleanly, else 1.
Children run in their own session (a terminal's Ctrl-C reaches only this process, which
passes it on) and get SIGTERM if this process dies.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import structlog

from neo_async.config import Config
from neo_async.server.replica_plan import ReplicaSpec, plan_replicas, visible_gpu_ids
from neo_async.server.router import POLICIES, RouterSettings, check_installed, router_command

log = structlog.get_logger("neo_async.server.replicas")

POLL_S = 0.2
STARTUP_TIMEOUT_S = 1800.0  # a large model's load; a replica that exits fails start-up at once
STOP_MARGIN_S = 15.0  # beyond the drain grace period, before children are killed
_PR_SET_PDEATHSIG = 1


def add_data_parallel_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data parallel (replicas behind a router)")
    group.add_argument("--data-parallel-size", type=int, default=1,
                       help="replicas on this machine, each with its share of the CPUs, GPUs and host memory, "
                            "behind sglang-router on --host/--port (default: 1, no router)")
    group.add_argument("--router-policy", choices=POLICIES, default=RouterSettings.policy,
                       help="the router's policy (default: %(default)s, which reads each replica's /get_load)")
    group.add_argument("--router-args", default="", help="more sglang_router.launch_router flags, as one string")


def router_settings(args: argparse.Namespace) -> RouterSettings:
    return RouterSettings(policy=args.router_policy, extra_args=tuple(shlex.split(args.router_args)))


def serve_replicas(config: Config, num_replicas: int, router: RouterSettings) -> int:
    """Run until a signal or a fatal child exit; returns the exit code. Raises ValueError for a
    setting this machine cannot honour (before any process starts)."""
    check_installed()
    ports = free_ports(num_replicas + 2)
    specs = plan_replicas(config, num_replicas, ports[:num_replicas], sorted(os.sched_getaffinity(0)),
                          visible_gpu_ids(dict(os.environ), count_driver_gpus()))
    router_port = config.server.port or ports[num_replicas]
    command = router_command(router, config.server.host, router_port, [s.url for s in specs], ports[-1])
    return Supervisor(specs, command, config.server.host, router_port, config.server.shutdown_grace_s).run()


class Supervisor:
    def __init__(self, specs: list[ReplicaSpec], router_cmd: list[str], host: str, port: int, grace_s: float) -> None:
        self.specs = specs
        self.router_cmd = router_cmd
        self.router_url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
        self.host, self.port, self.grace_s = host, port, grace_s
        self.replicas: dict[int, subprocess.Popen] = {}
        self.router: subprocess.Popen | None = None
        self.num_signals = 0
        self.has_failed = False

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            if self._start():
                self._watch()
        finally:
            self._stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        code = 1 if self.has_failed or not self.num_signals else 0
        log.info("data_parallel_stopped", exit_code=code)
        return code

    # ---- phases ------------------------------------------------------------------------------

    def _start(self) -> bool:
        for spec in self.specs:
            self.replicas[spec.index] = spawn(
                [sys.executable, "-m", "neo_async", "serve", *spec.argv], spec.env(dict(os.environ)), spec.cpu_ids
            )
            log.info("replica_started", index=spec.index, pid=self.replicas[spec.index].pid, url=spec.url,
                     cpu_ids=list(spec.cpu_ids), gpu_ids=list(spec.gpu_ids))
        for spec in self.specs:
            if not self._wait_healthy(spec.url, lambda s=spec: self.replicas[s.index].poll() is None, f"replica {spec.index}"):
                return False
            log.info("replica_ready", index=spec.index, url=spec.url)
        self.router = spawn(self.router_cmd, dict(os.environ), None)
        log.info("router_started", pid=self.router.pid, host=self.host, port=self.port)
        if not self._wait_healthy(self.router_url, lambda: self.router is not None and self.router.poll() is None, "router"):
            return False
        log.info("data_parallel_ready", url=self.router_url, port=self.port, replica_urls=[s.url for s in self.specs])
        return True

    def _watch(self) -> None:
        reported: set[int] = set()
        while not self.num_signals:
            for index, proc in self.replicas.items():
                if index not in reported and proc.poll() is not None:
                    reported.add(index)
                    self.has_failed = True
                    log.warning("replica_exited", index=index, pid=proc.pid, exit_code=proc.returncode,
                                num_alive=len(self.replicas) - len(reported))
            if len(reported) == len(self.replicas):
                log.error("no_replica_left")
                return
            assert self.router is not None
            if self.router.poll() is not None:
                self.has_failed = True
                log.error("router_exited", pid=self.router.pid, exit_code=self.router.returncode)
                return
            time.sleep(POLL_S)

    def _stop(self) -> None:
        children = [p for p in [self.router, *self.replicas.values()] if p is not None and p.poll() is None]
        for proc in children:
            proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s + STOP_MARGIN_S
        for proc in children:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("child_killed", pid=proc.pid)
                proc.kill()
                proc.wait()
                self.has_failed = True
        for index, proc in self.replicas.items():
            if proc in children and proc.returncode != 0:
                log.warning("replica_stopped_uncleanly", index=index, exit_code=proc.returncode)
                self.has_failed = True

    # ---- helpers -----------------------------------------------------------------------------

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.num_signals += 1
        if self.num_signals == 1:
            log.info("shutdown_requested", signal=signal.Signals(signum).name)
            return
        log.warning("shutdown_forced", signal=signal.Signals(signum).name)
        for proc in self.replicas.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)

    def _wait_healthy(self, url: str, is_alive: Callable[[], bool], what: str) -> bool:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline and not self.num_signals:
            if not is_alive():
                self.has_failed = True
                log.error("startup_failed", child=what, url=url)
                return False
            if http_status(url + "/health") == 200:
                return True
            time.sleep(POLL_S)
        if not self.num_signals:
            self.has_failed = True
            log.error("startup_timed_out", child=what, url=url, timeout_s=STARTUP_TIMEOUT_S)
        return False


def spawn(cmd: list[str], env: dict[str, str], cpu_ids: tuple[int, ...] | None) -> subprocess.Popen:
    """A child in its own session that gets SIGTERM if this process dies, pinned to cpu_ids."""
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here: the child only calls into it

    def setup() -> None:  # runs in the child between fork and exec
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if cpu_ids:
            os.sched_setaffinity(0, cpu_ids)

    return subprocess.Popen(cmd, env=env, start_new_session=True, preexec_fn=setup)  # noqa: PLW1509


def http_status(url: str, timeout_s: float = 2.0) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status
    except urllib.error.HTTPError as err:
        return err.code
    except (OSError, ValueError):
        return None


def free_ports(count: int) -> list[int]:
    """Ports free on the loopback now (the OS may hand them out again before they are bound)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def count_driver_gpus() -> int:
    """NVIDIA GPUs the driver lists (without importing torch); 0 without nvidia-smi."""
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))
