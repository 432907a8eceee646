"""The virtual clock: seconds since the run's start, advanced only forward."""

from __future__ import annotations


class VirtualClock:
    """Invariant: now never decreases."""

    def __init__(self) -> None:
        self.now = 0.0

    def advance(self, seconds: float) -> float:
        if not seconds >= 0.0:  # also refuses NaN
            raise ValueError(f"time cannot go back or be NaN (advance by {seconds!r})")
        self.now += seconds
        return self.now

    def jump_to(self, t: float) -> float:
        if not t >= self.now:
            raise ValueError(f"time cannot go back ({t!r} < {self.now!r})")
        self.now = t
        return self.now
