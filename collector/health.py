"""The collector's own health: a Prometheus endpoint and a periodic record on Kafka.

Both publish the same numbers, :meth:`collector.app.Collector.counters`: every loss the
collector can count (kernel ring buffer, decode errors, Kafka buffer full, delivery
failures) next to its throughput counters.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from collector.errors import CollectorError
from collector.metrics import VOCABULARY
from collector.periodic import Periodic
from flowscope import metrics
from flowscope.codec import JsonCodec
from flowscope.probes import Probe
from flowscope.records import CollectorHealth

Counters = Callable[[], dict[str, int]]


class MetricsServer(metrics.MetricsServer):
    """``GET /metrics`` with the collector's counters (:mod:`collector.metrics` names them),
    ``/livez`` and ``/readyz``."""

    def __init__(
        self, counters: Counters, port: int, host: str = "0.0.0.0", probes: Sequence[Probe] = ()
    ) -> None:
        try:
            super().__init__(VOCABULARY.registry(counters), port, host, probes)
        except metrics.MetricsPortError as exc:
            raise CollectorError(str(exc)) from exc


class HealthReporter:
    """Produces a :class:`CollectorHealth` record every ``interval_s`` (called from the loop)."""

    def __init__(
        self,
        counters: Counters,
        produce: Callable[[str, bytes, str], bool],
        topic: str,
        node: str,
        interval_s: float,
        clock: Callable[[], float] = time.monotonic,
        dropped_by_key: Callable[[], dict[str, int]] = dict,
    ) -> None:
        self._counters = counters
        self._dropped_by_key = dropped_by_key
        self._produce = produce
        self._topic = topic
        self._node = node
        self._every = Periodic(interval_s, clock)
        self._codec = JsonCodec(CollectorHealth)
        self.sent = 0

    def tick(self, force: bool = False) -> None:
        if not self._every.due(force):
            return
        record = CollectorHealth(
            node=self._node,
            time_ns=time.time_ns(),
            uptime_s=round(self._every.last_s - self._every.started_s, 3),
            counters=self._counters(),
            records_dropped_by_key=self._dropped_by_key(),
        )
        if self._produce(self._topic, self._codec.encode(record), self._node):
            self.sent += 1
