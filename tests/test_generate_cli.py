"""`neo-async generate` in each offload mode, as a user runs it: the same greedy text whether the
request's KV lives on the device (`off`), lands on the host because the device pool is too small
(`neo`), or always lives on the host (`full`)."""

import subprocess
import sys

import pytest

from tests.server_fixtures import REPO_ROOT

PROMPT = ["--prompt", "The capital of France is", "--max-tokens", "12", "--dtype", "float32", "--device-threads", "1"]


def _generate(*flags: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "neo_async", "generate", *PROMPT, *flags]
    return subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_three_offload_modes_print_the_same_text():
    off = _generate("--offload", "off", "--device-kv-tokens", "1024")
    neo = _generate("--offload", "neo", "--device-kv-tokens", "16", "--host-kv-tokens", "1024")
    full = _generate("--offload", "full", "--host-kv-tokens", "1024")
    for result in (off, neo, full):
        assert result.returncode == 0, result.stderr
    assert off.stdout.strip() and off.stdout == neo.stdout == full.stdout


def test_a_bad_offload_mode_is_a_usage_error():
    result = _generate("--offload", "sideways")
    assert result.returncode == 2 and "offload must be one of" in result.stderr
