"""Triton's interpreter for the kernel tests, whichever test module imports triton first.

Triton fixes interpreter or compiler mode when it is first imported (TRITON_INTERPRET). On a
machine without a GPU this module turns the interpreter on before that, so the whole suite
runs the kernels on CPU tensors in one process. On a GPU machine the process stays compiled
(the CUDA tests need it) and the interpreter cases run in a child process instead.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

if importlib.util.find_spec("triton") is None:
    pytest.skip("triton is not installed", allow_module_level=True)

if "triton" not in sys.modules and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

from neo_async.kernels.launch import interpreter_active  # noqa: E402

IN_PROCESS = interpreter_active()
CUDA = torch.cuda.is_available() and not IN_PROCESS

interpreted = pytest.mark.skipif(not IN_PROCESS, reason="triton is compiled in this process: run by test_*_in_interpreter")


def cuda(test):  # type: ignore[no-untyped-def]
    """Marks a test `cuda` (selected by -m cuda) and skips it without a GPU."""
    return pytest.mark.cuda(pytest.mark.skipif(not CUDA, reason="needs a GPU and compiled Triton")(test))


def run_in_interpreter(test_file: str) -> None:
    """Runs a test file's interpreter cases in a child process with TRITON_INTERPRET=1."""
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not cuda", test_file]
    result = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
