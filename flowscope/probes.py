"""Readiness and liveness as the kubelet asks for them: ``GET /readyz`` and ``/livez`` on a
service's metrics port, 200 with ``ok`` or 503 with the reason.

A service is live while its main loop turns: each turn calls :meth:`Probe.beat`, and a loop
that has not turned for ``stale_s`` (stuck in a call that never returns, a deadlock) fails,
so the kubelet restarts the container. It is ready when it is live and its own condition
holds: the collector's programs attached and its ring buffer read, the enricher's metadata
loaded and its consumer subscribed, the processors' stages running.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

# Well above any loop turn (the slowest waits 1 s for Kafka), well below what a person
# would tolerate from a node agent that stopped reporting.
STALE_S = 30.0


class Probe:
    """One main loop's state. Thread-safe by construction: each field is replaced whole."""

    def __init__(
        self, name: str, stale_s: float = STALE_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.name = name
        self._stale_s = stale_s
        self._clock = clock
        self._last: float | None = None
        self._not_ready: str | None = "starting"

    def beat(self) -> None:
        self._last = self._clock()

    def rest(self) -> None:
        """The loop stopped by design (a publisher standing by): no longer watched."""
        self._last = None

    def set_ready(self) -> None:
        self._not_ready = None

    def set_not_ready(self, reason: str) -> None:
        self._not_ready = reason

    def live(self) -> str | None:
        """None when live, else why not. A loop not started yet is live: the kubelet's
        startupProbe (or the readiness probe) covers the start."""
        if self._last is None:
            return None
        age = self._clock() - self._last
        if age > self._stale_s:
            return f"{self.name}: main loop has not turned for {age:.0f}s"
        return None

    def ready(self) -> str | None:
        """None when ready, else why not."""
        if self._not_ready is not None:
            return f"{self.name}: {self._not_ready}"
        if self._last is None:
            return f"{self.name}: main loop not running yet"
        return self.live()


def verdict(probes: Sequence[Probe], check: Callable[[Probe], str | None]) -> str | None:
    """The first failing probe's reason, None when all pass."""
    for probe in probes:
        reason = check(probe)
        if reason is not None:
            return reason
    return None
