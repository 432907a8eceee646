"""The library is quiet unless asked: `LLM().generate` in a fresh process prints nothing below
WARNING; a caller's `logging.basicConfig(level=INFO)` brings the info events back; the progress
bar shows only on a terminal and not with use_tqdm=False."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SCRIPT = """
import logging, sys
{setup}
from neo_async import LLM, SamplingParams
llm = LLM({llm_args})
outs = llm.generate(["The sky is", "Once upon a time"], SamplingParams(max_tokens=4, temperature=0){generate_args})
assert len(outs) == 2 and all(o.token_ids for o in outs)
"""


def _run(setup: str = "", llm_args: str = "", generate_args: str = "", tty_stderr: bool = False) -> tuple[str, str]:
    code = SCRIPT.format(setup=setup, llm_args=llm_args, generate_args=generate_args)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if not tty_stderr:
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=500)
        assert done.returncode == 0, done.stderr
        return done.stdout, done.stderr
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # a terminal's size
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, stderr=follower)
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 4096)
        except OSError:  # the follower side closed: the process is gone
            break
        if not data:
            break
        chunks.append(data)
    stdout = proc.communicate(timeout=500)[0].decode()
    os.close(leader)
    assert proc.returncode == 0, b"".join(chunks).decode(errors="replace")
    return stdout, b"".join(chunks).decode(errors="replace")


def test_llm_generate_prints_nothing_by_default():
    stdout, stderr = _run()  # LLM() as a user writes it: the embedded model, the quick profile
    assert stdout == "" and stderr == "", (stdout, stderr)


def test_callers_logging_config_shows_info_events():
    _, stderr = _run(setup="logging.basicConfig(level=logging.INFO)", llm_args="cost_tables='none'")
    assert "event='engine_ready'" in stderr
    assert "event='iteration'" not in stderr  # a debug event


def test_progress_bar_only_on_a_terminal_and_when_asked():
    _, stderr = _run(llm_args="cost_tables='none'", tty_stderr=True)
    assert "Generating" in stderr and "2/2" in stderr
    _, stderr = _run(llm_args="cost_tables='none'", generate_args=", use_tqdm=False", tty_stderr=True)
    assert "Generating" not in stderr
