"""When a periodic job called from the collector's loop (health record, UDP window) is due."""

from __future__ import annotations

import time
from collections.abc import Callable


class Periodic:
    """Due once ``interval_s`` has passed since it was made or last found due.

    The loop calls :meth:`due` every turn; nothing runs on a timer thread, so a job never
    races the loop that produces its records.
    """

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval_s
        self._clock = clock
        self.started_s = clock()
        self.last_s = self.started_s  # the clock when last found due
        self._next = self.started_s + interval_s

    def due(self, force: bool = False) -> bool:
        """``force``: due now whatever the time (a last report at shutdown)."""
        now = self._clock()
        if not force and now < self._next:
            return False
        self.last_s = now
        self._next = now + self._interval
        return True
