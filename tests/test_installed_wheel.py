"""What a user gets from the wheel: built from this checkout, installed into a fresh virtual
environment (its dependencies seen from this interpreter's site-packages, the checkout never on
the path), every console command runs once from another directory."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from neo_async.cli import BENCHES

from tests.server_fixtures import REPO_ROOT, ServerProcess, http

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

BENCH_KINDS = tuple(BENCHES)  # every kind `neo-async bench` offers


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The bin directory of a virtual environment holding the freshly built wheel."""
    root = tmp_path_factory.mktemp("wheel")
    wheels = root / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "maturin", "build", "--release", "--out", str(wheels)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=800,
    )
    assert built.returncode == 0, built.stderr[-4000:]
    (wheel,) = wheels.glob("neo_async-*.whl")
    env_dir = root / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "--force-reinstall", str(wheel)],
        capture_output=True, text=True, timeout=300,
    )
    assert installed.returncode == 0, installed.stderr[-4000:]
    return env_dir / "bin"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def _run(bin_dir: Path, *args: str, cwd: Path, expect_rc: int = 0) -> subprocess.CompletedProcess:
    done = subprocess.run([str(bin_dir / args[0]), *args[1:]], cwd=cwd, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == expect_rc, f"{args}: rc {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_the_package_comes_from_the_wheel(installed, tmp_path):
    done = _run(installed, "python", "-c", "import neo_async, rust_cpuattn; print(neo_async.__file__)", cwd=tmp_path)
    assert done.stdout.startswith(str(installed.parent)), done.stdout


def test_serve_answers_health(installed, tmp_path):
    server = ServerProcess(tmp_path / "server.log", program=[str(installed / "neo-async")], cwd=tmp_path)
    try:
        status, _, body = http("GET", server.base_url + "/health")
        assert status == 200, body
    finally:
        assert server.stop() == 0, server.log_text()


def test_generate(installed, tmp_path):
    done = _run(installed, "neo-async", "generate", "--prompt", "The capital of France is", "--max-tokens", "4", cwd=tmp_path)
    assert done.stdout.strip()


def test_simulate_and_plan_read_the_shipped_hardware_profiles(installed, tmp_path):
    done = _run(
        installed, "neo-async", "simulate", "--gpu", "A10G", "--host", "g5.2xlarge", "--model", "llama-3-8b",
        "--num-prompts", "20", "--request-rates", "2", cwd=tmp_path,
    )
    assert "E2EL" in done.stdout
    done = _run(installed, "neo-async", "plan", "--gpu", "A10G", "--host", "g5.8xlarge", "--model", "llama-3-8b", "--output-len", "100", cwd=tmp_path)
    assert "best:" in done.stdout
    done = _run(installed, "neo-async", "simulate", "--reproduce", "--quick", cwd=tmp_path, expect_rc=2)
    assert "installed package has no traces" in done.stderr  # a clear refusal, not a traceback


@pytest.mark.parametrize(
    "args",
    [("neo-async", "--help"), ("neo-async", "profile", "--help"), ("neo-loadgen", "--help")]
    + [("neo-async", "bench", kind, "--help") for kind in BENCH_KINDS],
)
def test_help_of_every_command(installed, tmp_path, args):
    done = _run(installed, *args, cwd=tmp_path)
    assert "usage" in (done.stdout + done.stderr).lower()
