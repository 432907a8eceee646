"""A live progress line on stderr: requests done, failed, elapsed time, rate.

On a terminal it redraws in place; elsewhere (logs, CI) it writes a line every few seconds.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

BAR_WIDTH = 24


class Progress:
    def __init__(
        self, total: int, stream: TextIO | None = None, is_enabled: bool = True, label: str = "neo-loadgen"
    ) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.is_enabled = is_enabled
        self.label = label
        self.is_tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.min_interval_s = 0.1 if self.is_tty else 5.0
        self.num_done = 0
        self.num_failed = 0
        self.start = time.monotonic()
        self.last_draw = float("-inf")

    def update(self, success: bool) -> None:
        self.num_done += 1
        self.num_failed += not success
        now = time.monotonic()
        if now - self.last_draw >= self.min_interval_s or self.num_done == self.total:
            self.draw(now)

    def line(self, now: float) -> str:
        elapsed = now - self.start
        filled = BAR_WIDTH * self.num_done // max(self.total, 1)
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        rate = self.num_done / elapsed if elapsed > 0 else 0.0
        return (
            f"{self.label} {self.num_done}/{self.total} [{bar}] "
            f"{self.num_done - self.num_failed} ok {self.num_failed} failed {elapsed:.1f}s {rate:.2f} req/s"
        )

    def draw(self, now: float) -> None:
        self.last_draw = now
        if not self.is_enabled:
            return
        end = "" if self.is_tty else "\n"
        prefix = "\r" if self.is_tty else ""
        self.stream.write(prefix + self.line(now) + end)
        self.stream.flush()

    def close(self) -> None:
        if self.is_enabled and self.is_tty:
            self.stream.write("\n")
            self.stream.flush()
