"""Random test cases can be replayed: their seeds do not depend on the process's hash salt."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from tests.seeds import stable_seed

TESTS = Path(__file__).resolve().parent


def _seed_in_fresh_process(hash_seed: str) -> int:
    code = "from tests.seeds import stable_seed; print(stable_seed('llama_gqa', (9, 3), 64))"
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    out = subprocess.run([sys.executable, "-c", code], cwd=TESTS.parent, env=env, capture_output=True, text=True, check=True)
    return int(out.stdout)


def test_stable_seed_is_the_same_in_every_process():
    expected = stable_seed("llama_gqa", (9, 3), 64)
    assert [_seed_in_fresh_process(s) for s in ("1", "2")] == [expected, expected]
    assert 0 <= stable_seed("x", modulo=7) < 7


def test_no_test_takes_a_seed_from_builtin_hash():
    """hash() of a str is salted per process: a case seeded with it cannot be replayed."""
    offenders = []
    for path in sorted(TESTS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "hash":
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == [], f"seed from hash(): {offenders}; use tests.seeds.stable_seed"
