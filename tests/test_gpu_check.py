"""scripts/gpu_check.sh in its dry mode, in an interpreter that sees only what the GPU machine
will have (tests/gpu_env: its image's packages plus the packed wheels' ones): every step that
needs no GPU passes, logs and summary.json land under --out, one JSON line per step, and the
budgets bound the run by 8 minutes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GPU_ENV = ROOT / "tests" / "gpu_env"


def _gpu_like_env() -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(GPU_ENV), os.environ.get("PYTHONPATH", "")) if p)
    return dict(os.environ, PYTHONPATH=path, CUDA_VISIBLE_DEVICES="")


def test_the_gpu_like_interpreter_hides_what_the_gpu_machine_lacks():
    probe = "import importlib.util as u; print(u.find_spec('openai') is None, u.find_spec('msgspec') is not None)"
    done = subprocess.run([sys.executable, "-c", probe], env=_gpu_like_env(), capture_output=True, text=True, timeout=60)
    assert done.stdout.split() == ["True", "True"], done.stderr


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_dry_run_passes_in_a_gpu_like_environment(tmp_path):
    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", "scripts/gpu_check.sh", "--cpu-only", "--out", str(out)],
        cwd=ROOT, env=_gpu_like_env(), capture_output=True, text=True, timeout=500,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines[0]["gpu_check"] == "cpu-only" and lines[0]["budget_s"] <= 8 * 60
    assert lines[-1] == {"gpu_check_summary": "cpu-only", "gpu": None, "failed": [], "error": None}
    summary = json.loads((out / "summary.json").read_text())
    steps = summary["steps"]
    assert "collected" in steps["cuda_tests"]["tail"][0] and "error" not in steps["cuda_tests"]["tail"][0]
    assert " passed" in steps["interpreter_tests"]["tail"][0]
    for name in ("equivalence_smollm2-135m", "equivalence_llama3-8b-4layers"):
        result = steps[name]["result"]
        assert result["ok"] and result["identical"] and result["pipelined_steps"] > 0 and result["swaps_out"] > 0, result
    lanes = steps["lanes_smollm2-135m"]["result"]
    assert lanes["thread"]["pipelined_steps"] > 0 and lanes["inline"]["host_run_ms_per_pipelined_step"] > 0
    throughput = steps["throughput_llama3-8b"]["result"]
    assert throughput["neo"]["pipelined_steps"] > 0 and throughput["off"]["tok_s"] > 0
    for name, step in steps.items():
        assert "skipped" in step or (out / f"{name}.log").exists()
