"""Makes this interpreter see only what the GPU machine will have: its image's distributions
(gpu_image_packages.txt) and those scripts/gpu_pack.sh carries. Any other installed distribution
is hidden: its top-level modules cannot be imported (nor found) and its entry points (pytest plugins) are
not listed. Loaded at start-up when this directory is on PYTHONPATH (tests/test_gpu_check.py)."""

from __future__ import annotations

import importlib.metadata
import re
import sys
from pathlib import Path

CARRIED = {"msgspec", "structlog", "gguf", "pytest-asyncio", "neo-async"}  # scripts/gpu_pack.sh


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


_LISTED = Path(__file__).with_name("gpu_image_packages.txt").read_text().splitlines()
ALLOWED = {_normal(n) for n in _LISTED if n and not n.startswith("#")} | CARRIED
_DISTRIBUTIONS = importlib.metadata.packages_distributions()  # top-level module -> distributions
BLOCKED = {
    module for module, dists in _DISTRIBUTIONS.items() if not any(_normal(d) in ALLOWED for d in dists)
}


for _module in BLOCKED:  # None in sys.modules: `import` raises ModuleNotFoundError, find_spec answers None
    sys.modules.setdefault(_module, None)
_all_distributions = importlib.metadata.distributions


def _visible_distributions(**kwargs):  # noqa: ANN202
    return (d for d in _all_distributions(**kwargs) if _normal(d.metadata["Name"] or "") in ALLOWED)


importlib.metadata.distributions = _visible_distributions
