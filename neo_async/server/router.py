"""The router in front of the replicas: sglang-router (a Rust binary in a PyPI wheel, the
`router` extra), started as `python -m sglang_router.launch_router`.

Policies (`--router-policy`):
- power_of_two: of two workers, the one with the lower load; the router polls each replica's
  GET /get_load (routes_load.py) every `load_poll_interval_s` and falls back to its own
  in-flight request counts when a replica does not answer. Our default: it sees the replica's
  queue and both KV pools, requests sent to a replica directly included.
  NOTE: in 0.3.2 that poll runs every --worker-startup-check-interval seconds (default 30;
  `with_load_monitor` in sgl-model-gateway/src/app_context.rs), not the policy's own 5 s.
- cache_aware: sends a request to the replica whose past requests share the longest prefix
  with it (a radix tree of request text in the router), unless the replicas' in-flight counts
  are out of balance; it pays off with our prefix cache (kv/block_pool.py), which keeps those
  prefixes' KV blocks on the replica that computed them.
- round_robin, random: no load signal.

Health: the router probes GET /health (ours answers 503 while loading, draining, or once the
engine died) every `health_check_interval_s`; a replica failing `health_failure_threshold`
probes in a row gets no new requests until it answers again.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass

POLICIES = ("power_of_two", "cache_aware", "round_robin", "random")
INSTALL_HINT = "the router needs sglang-router: pip install 'neo-async[router]'"


@dataclass(frozen=True)
class RouterSettings:
    policy: str = "power_of_two"
    load_poll_interval_s: int = 1
    health_check_interval_s: int = 2
    health_failure_threshold: int = 2
    log_level: str = "warn"
    extra_args: tuple[str, ...] = ()  # passed through to launch_router as they are

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"router policy must be one of {POLICIES}, got {self.policy!r}")
        if min(self.load_poll_interval_s, self.health_check_interval_s, self.health_failure_threshold) < 1:
            raise ValueError("the router's poll and health check intervals and failure threshold must be >= 1")


def check_installed() -> None:
    """Raise ValueError with the install command when sglang-router is missing."""
    if importlib.util.find_spec("sglang_router") is None:
        raise ValueError(INSTALL_HINT)


def router_command(settings: RouterSettings, host: str, port: int, worker_urls: list[str], prometheus_port: int) -> list[str]:
    return [
        sys.executable, "-m", "sglang_router.launch_router",
        "--host", host,
        "--port", str(port),
        "--worker-urls", *worker_urls,
        "--policy", settings.policy,
        "--worker-startup-check-interval", str(settings.load_poll_interval_s),
        "--health-check-interval-secs", str(settings.health_check_interval_s),
        "--health-failure-threshold", str(settings.health_failure_threshold),
        "--health-success-threshold", "1",
        "--log-level", settings.log_level,
        "--prometheus-host", "127.0.0.1",
        "--prometheus-port", str(prometheus_port),
        *settings.extra_args,
    ]
