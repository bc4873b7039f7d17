"""A time budget that several steps share: shutdown flushes, commits and joins take what is
left of one bound instead of each taking its own full timeout."""

from __future__ import annotations

import time


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._started = time.monotonic()
        self._end = self._started + seconds

    def left(self) -> float:
        """Seconds until the deadline, never below zero."""
        return max(0.0, self._end - time.monotonic())

    def elapsed(self) -> float:
        return time.monotonic() - self._started
