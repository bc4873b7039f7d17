"""Windows read from two BPF maps that take turns (udpflow, drops).

The programs add to the current map while user space drains the other, so each window is
read whole and no count is lost to a reset racing the programs' adds.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Protocol

from collector.periodic import Periodic


class FlippedMaps(Protocol):
    def flip(self) -> None: ...

    def drain_inactive(self) -> list[tuple[bytes, bytes]]: ...


class WindowReporter(ABC):
    """Called from the collector's loop; every ``interval_s`` turns one window into records."""

    def __init__(
        self, source: FlippedMaps, interval_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._source = source
        self._every = Periodic(interval_s, clock)
        # Wall-clock bounds of the windows held by each map: (start of previous, last flip).
        self._flips: list[int] = [time.time_ns()]

    def tick(self) -> None:
        if not self._every.due():
            return
        if len(self._flips) >= 2:
            self._emit(self._source.drain_inactive(), self._flips[-2], self._flips[-1])
        self._source.flip()
        self._flips = [*self._flips[-1:], time.time_ns()]

    def finish(self) -> None:
        """At shutdown: both maps, the older window first (the collector is detaching)."""
        if len(self._flips) >= 2:
            self._emit(self._source.drain_inactive(), self._flips[-2], self._flips[-1])
        self._source.flip()
        time.sleep(0.01)  # let programs that read the old generation finish their add
        self._emit(self._source.drain_inactive(), self._flips[-1], time.time_ns())

    @abstractmethod
    def _emit(self, entries: list[tuple[bytes, bytes]], start_ns: int, end_ns: int) -> None:
        """One window's map entries -> records."""
