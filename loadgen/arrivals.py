"""Send offsets in seconds from the run's start, one per request, in request order.

Rate arrivals follow `vllm bench serve`: gaps are gamma-distributed with shape =
burstiness and mean 1 / rate (burstiness 1 is a Poisson process; below 1 is burstier,
above 1 more regular); the first request goes at 0; rate inf sends everything at once.
"""

from __future__ import annotations

import math

import numpy as np


def rate_offsets(num_requests: int, request_rate: float, burstiness: float, rng: np.random.Generator) -> np.ndarray:
    """[num_requests] nondecreasing offsets, s."""
    if request_rate <= 0 or burstiness <= 0:
        raise ValueError("request rate and burstiness must be > 0")
    if math.isinf(request_rate):
        return np.zeros(num_requests)
    theta = 1.0 / (request_rate * burstiness)  # gamma scale: mean gap = shape * theta = 1 / rate
    gaps = rng.gamma(shape=burstiness, scale=theta, size=max(0, num_requests - 1))
    return np.concatenate([[0.0], np.cumsum(gaps)])[:num_requests]


def trace_offsets(timestamps_s: list[float | None], time_scale: float = 1.0) -> np.ndarray:
    """[n] offsets from a trace's own times: (t - earliest) * time_scale.

    time_scale multiplies the trace's gaps: 0.5 replays twice as fast, 2 at half speed.
    """
    if any(t is None for t in timestamps_s):
        raise ValueError("this dataset has no timestamps to replay")
    if time_scale <= 0:
        raise ValueError("trace time scale must be > 0")
    times = np.asarray(timestamps_s, dtype=np.float64)
    if times.size == 0:
        return times
    return (times - times.min()) * time_scale
