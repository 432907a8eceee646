"""neo-async: online LLM inference with CPU offloading of KV cache and decode attention."""

import os as _os

# torch's OpenMP workers (libgomp) spin-wait this many rounds after each parallel region before
# they sleep; at libgomp's default (300000) they go on spinning on the cores that a sequential
# step's host attention is split onto next. libgomp reads it once, when torch loads: it must be
# set before torch is imported.
_os.environ.setdefault("GOMP_SPINCOUNT", "3000")

from neo_async.logging_setup import use_library_default as _use_library_default
from neo_async.outputs import FinishReason, RequestDelta, RequestOutput, TokenLogprob
from neo_async.sampling_params import SamplingParams

__all__ = ["LLM", "AsyncEngine", "SamplingParams", "RequestOutput", "RequestDelta", "TokenLogprob", "FinishReason"]
__version__ = "0.1.0"

_use_library_default()


def __getattr__(name: str):
    # Heavy imports (torch) only when the engine is actually used.
    if name == "LLM":
        from neo_async.llm import LLM

        return LLM
    if name == "AsyncEngine":
        from neo_async.async_engine import AsyncEngine

        return AsyncEngine
    raise AttributeError(name)
