"""Seeds for random test cases, derived from the case's parameters the same way in every run.

Built-in hash() of a str (or of a tuple holding one) is salted per process (PYTHONHASHSEED), so
a seed taken from it changes every run and a failing case could not be replayed.
"""

from __future__ import annotations

import zlib


def stable_seed(*parts: object, modulo: int = 10_000) -> int:
    """The same seed for the same parts in every process; parts must have a stable repr."""
    return zlib.crc32(repr(parts).encode()) % modulo
