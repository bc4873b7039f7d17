"""Windows read from two BPF maps that take turns (udpflow, drops).

The programs add to the current map while user space drains the other, so each window is
read whole and no count is lost to a reset racing the programs' adds.
"""

from __future__ import annotations

import struct
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Protocol

from collector.kernel.libbpf import BpfObject
from collector.periodic import Periodic

_U32 = struct.Struct("<I")


class MapPair:
    """The kernel side: which of an object's two maps its programs add to (its one-entry
    ``gen`` map says), and the draining of the other."""

    def __init__(self, maps: tuple[str, str], key_size: int, value_size: int) -> None:
        self.maps = maps
        self._key_size = key_size
        self._value_size = value_size
        self.gen = 0

    def reset(self, obj: BpfObject) -> None:
        self.gen = 0
        obj.map_update("gen", _U32.pack(0), _U32.pack(0))

    def flip(self, obj: BpfObject) -> None:
        """Make the other map current."""
        self.gen ^= 1
        obj.map_update("gen", _U32.pack(0), _U32.pack(self.gen))

    def drain(self, obj: BpfObject, current: bool = False) -> list[tuple[bytes, bytes]]:
        """The inactive map's entries (or the current one's), removed."""
        name = self.maps[self.gen if current else self.gen ^ 1]
        return obj.map_drain(name, self._key_size, self._value_size)


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
