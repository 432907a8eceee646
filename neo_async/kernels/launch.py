"""Triton kernels jitted on first launch, compiled for CUDA tensors or run by the interpreter.

NOTE: Triton reads TRITON_INTERPRET when it decorates a function, its own standard library
(`tl.sum`, `tl.max`, ...) included, i.e. when `triton` is first imported. So the mode is per
process: kernels over CPU tensors need TRITON_INTERPRET=1 set before anything imports
triton (tests/triton_mode.py does that), and then every launch, CUDA tensors included, runs
in the interpreter.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch

_LOCK = threading.Lock()


def interpreter_active() -> bool:
    """Whether triton (imported now if not yet) runs kernels in its interpreter."""
    import triton.language.standard as standard

    return type(standard.zeros).__name__ == "InterpretedFunction"


class Kernel:
    """A Triton kernel body (a plain function calling only triton.language), jitted once."""

    def __init__(self, fn: Callable[..., None]) -> None:
        self.fn = fn
        self._jitted: Any = None

    def on(self, x: torch.Tensor) -> Any:
        """The jitted kernel for launches over tensors on x's device (index it with the grid)."""
        if x.device.type != "cuda" and not interpreter_active():
            raise RuntimeError(
                "Triton kernels over CPU tensors run in the interpreter: set TRITON_INTERPRET=1 before triton is imported"
            )
        if self._jitted is None:
            import triton

            with _LOCK:
                if self._jitted is None:
                    self._jitted = triton.jit(self.fn)
        return self._jitted


def next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()
