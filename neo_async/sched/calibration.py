"""Online correction of predicted iteration times (pure: measured times come in as data).

Tables measured in isolation miss what only whole iterations show (two lanes sharing memory
bandwidth and caches, interpreter glue that grows with the batch, a machine busier than when
it was profiled). For each kind of iteration (sequential or pipelined, with or without a
prefill chunk) a factor scales the tables' prediction; after each iteration it moves a step
towards measured / predicted, in log space, each step bounded (one outlier moves it little):

    log f <- log f + weight * clamp(log(measured / (f * raw)), -max_step, max_step)

Factors start at 1 and stay within [low, high]. Kinds never measured keep 1.
"""

from __future__ import annotations

import math

Kind = tuple[bool, bool]  # (pipelined, has a prefill chunk)


class Calibration:
    def __init__(self, weight: float = 0.2, max_step: float = math.log(2.0), low: float = 0.5, high: float = 4.0) -> None:
        if not 0.0 < weight <= 1.0:
            raise ValueError(f"weight must be in (0, 1], got {weight}")
        if not 0.0 < low <= 1.0 <= high:
            raise ValueError(f"need 0 < low <= 1 <= high, got {low}, {high}")
        self.weight, self.max_step = weight, max_step
        self.log_low, self.log_high = math.log(low), math.log(high)
        self._log_factor: dict[Kind, float] = {}

    def factor(self, pipelined: bool, has_prefill: bool) -> float:
        return math.exp(self._log_factor.get((pipelined, has_prefill), 0.0))

    def observe(self, pipelined: bool, has_prefill: bool, predicted_s: float, measured_s: float) -> None:
        """predicted_s: the calibrated prediction the iteration ran with; measured_s: its time."""
        if predicted_s <= 0 or measured_s <= 0 or not math.isfinite(predicted_s) or not math.isfinite(measured_s):
            return
        kind = (pipelined, has_prefill)
        step = max(-self.max_step, min(self.max_step, math.log(measured_s / predicted_s)))
        value = self._log_factor.get(kind, 0.0) + self.weight * step
        self._log_factor[kind] = max(self.log_low, min(self.log_high, value))
