"""scripts/gpu_check.sh without a GPU: it says so, runs the interpreter and lane tests, prints
its JSON summary last and exits 0."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_check_runs_the_cpu_parts_without_a_gpu():
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--cpu-only", "--quick"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "no GPU here" in result.stdout
    assert " passed" in result.stdout and " failed" not in result.stdout
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {"gpu": None, "interpreter_tests_rc": 0}
