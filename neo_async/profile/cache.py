"""Cost tables cached on disk, keyed by everything that changes the numbers.

Directory: $NEO_ASYNC_CACHE_DIR, else $XDG_CACHE_HOME/neo-async/profiles, else
~/.cache/neo-async/profiles. File: `costs-<hash of the key>.json`. A file is reused only when
its stored key equals the wanted one (a hash collision, a hand-edited file or another
version's tables are never reused); an unreadable or malformed file is ignored with a warning.
A full profile may stand in for a quick one: the mode is not part of the key.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from neo_async.config import AUTO, Config
from neo_async.profile.key import profile_key
from neo_async.profile.measure import profile_worker
from neo_async.runner.worker import Worker
from neo_async.sched.cost_tables import MeasuredCosts
from neo_async.sched.costs import CostModel

Measure = Callable[[bool], MeasuredCosts]  # quick -> the tables, measured now

log = structlog.get_logger("neo_async.profile")

def cache_dir() -> Path:
    if os.environ.get("NEO_ASYNC_CACHE_DIR"):
        return Path(os.environ["NEO_ASYNC_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "neo-async" / "profiles"


def cache_path(key: dict[str, Any], directory: Path | None = None) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    return (directory or cache_dir()) / f"costs-{digest}.json"


def load_cached(key: dict[str, Any], directory: Path | None = None) -> MeasuredCosts | None:
    """The cached tables for exactly this key, or None (missing, foreign, stale or corrupt)."""
    path = cache_path(key, directory)
    if not path.exists():
        return None
    try:
        costs = MeasuredCosts.load(path)
    except (OSError, ValueError) as e:
        log.warning("profile_cache_unreadable", path=str(path), error=str(e))
        return None
    if costs.key != key:
        log.warning("profile_cache_foreign", path=str(path), differs=sorted(_differences(costs.key, key)))
        return None
    return costs


def store(costs: MeasuredCosts, directory: Path | None = None) -> Path:
    path = cache_path(costs.key, directory)
    costs.save(path)
    return path


def cost_tables_for(worker: Worker, config: Config, offload: str, measure: Measure | None = None) -> CostModel | None:
    """The policy's cost tables for an engine on this worker (rank 0's, with tensor-parallel
    ranks): none without a host pool (offload "off": nothing to decide) or when cost_tables is
    "none"; "auto": cached for this machine, else a quick profile now, by `measure` (default:
    `profile_worker` on this worker; a profile that fails is logged as a warning and the fixed
    rules serve); else the tables at that path, refused when measured for another machine or
    setup."""
    source = config.scheduler.cost_tables
    if offload == "off" or source == "none":
        return None
    if source == AUTO:
        try:
            return load_or_profile(worker, config, quick=True, measure=measure)
        except Exception as e:  # noqa: BLE001 - a failed profile must not stop serving
            log.warning("cost_tables_unavailable", error=repr(e), fallback="fixed rules, sequential steps")
            return None
    return load_for(worker, config, Path(source))


def load_or_profile(worker: Worker, config: Config, quick: bool = True, measure: Measure | None = None) -> MeasuredCosts:
    """The engine's start-up: its cached tables, else a profile (stored for the next start)."""
    key = profile_key(worker, config)
    costs = load_cached(key)
    if costs is not None:
        log.info("profile_cache_hit", path=str(cache_path(key)), mode=costs.meta.get("mode"))
        return costs
    costs = measure(quick) if measure is not None else profile_worker(worker, config, quick=quick)
    try:
        path = store(costs)
        log.info("profile_cached", path=str(path))
    except OSError as e:  # a read-only home must not stop the engine
        log.warning("profile_cache_unwritable", path=str(cache_path(key)), error=str(e))
    return costs


def load_for(worker: Worker, config: Config, path: Path) -> MeasuredCosts:
    """Tables written by `neo-async profile` for this setup; ValueError when they were measured
    for another machine, model, dtype, thread split or version (named), or cannot be read."""
    try:
        costs = MeasuredCosts.load(path)
    except OSError as e:
        raise ValueError(f"cost_tables: cannot read {path}: {e}") from None
    key = profile_key(worker, config)
    if costs.key != key:
        differs = ", ".join(sorted(_differences(costs.key, key)))
        raise ValueError(f"cost_tables: {path} was measured for another setup (differs in: {differs}); run `neo-async profile`")
    return costs


def _differences(a: dict[str, Any], b: dict[str, Any]) -> set[str]:
    return {k for k in set(a) | set(b) if a.get(k) != b.get(k)}
