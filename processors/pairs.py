"""Per (client workload, server workload) connection metrics over tumbling event-time windows.

Pure logic, no I/O: the faust app (app.py) feeds records in and publishes what comes out, so
every rule here (dedupe, window assignment, grace, lateness) is unit-tested without a broker.

Rules:

- **Count each connection once.** A connection between two observed pods is reported by both
  ends. Client-side records always count; a server-side (or unknown-side) record counts only
  when ``client_observed`` is False, i.e. no collector saw the client end. Skipped records are
  counted as ``duplicates_skipped``.
- **Event time.** A connection belongs to the window holding its ``end_time_ns`` (when it
  finished: that is when its bytes and latency are final).
- **Closing.** Window ``[start, end)`` is published once, by :meth:`close_ready`, when the
  watermark reaches ``end + grace``. A record whose window is already closed is counted as
  ``late_dropped`` (and reported by the caller), never silently lost or published twice.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from flowscope.records import EnrichedTcpConnection, TcpPairMetric
from processors.sketch import DEFAULT_ALPHA, QuantileSketch


class InvalidRecord(ValueError):
    """A record that decoded but cannot be aggregated (e.g. negative bytes or latency)."""


class AddOutcome(enum.Enum):
    COUNTED = "counted"
    DUPLICATE = "duplicate"  # the server side of a connection whose client side also reports
    LATE = "late"  # its window was already published


@dataclass
class AggregatorCounters:
    """Every record given to :meth:`WindowedPairAggregator.add` ends in exactly one of
    ``counted``, ``duplicates_skipped``, ``late_dropped`` (these three sum to ``records``) or
    ``rejected`` (invalid, raised to the caller for dead-lettering)."""

    records: int = 0
    rejected: int = 0
    counted: int = 0
    duplicates_skipped: int = 0
    late_dropped: int = 0
    windows_closed: int = 0
    metrics_published: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "records": self.records,
            "rejected": self.rejected,
            "counted": self.counted,
            "duplicates_skipped": self.duplicates_skipped,
            "late_dropped": self.late_dropped,
            "windows_closed": self.windows_closed,
            "metrics_published": self.metrics_published,
        }


@dataclass
class _PairState:
    client_namespace: str | None
    server_namespace: str | None
    sketch: QuantileSketch
    connections: int = 0
    bytes_client_to_server: int = 0
    bytes_server_to_client: int = 0
    client_zones: set[str] = field(default_factory=set)
    server_zones: set[str] = field(default_factory=set)
    peer_classes: set[str] = field(default_factory=set)


PairKey = tuple[str, str]


class WindowedPairAggregator:
    """Tumbling windows of ``window_ns``, closed ``grace_ns`` after their end (watermark time)."""

    def __init__(self, window_ns: int, grace_ns: int, alpha: float = DEFAULT_ALPHA) -> None:
        if window_ns <= 0:
            raise ValueError(f"window must be positive, got {window_ns} ns")
        if grace_ns < 0:
            raise ValueError(f"grace must be >= 0, got {grace_ns} ns")
        self.window_ns = window_ns
        self.grace_ns = grace_ns
        self.alpha = alpha
        self.counters = AggregatorCounters()
        # window start -> pair -> state. Open windows only; closed ones are gone.
        self._windows: dict[int, dict[PairKey, _PairState]] = {}
        # The highest watermark given to close_ready. Every window with
        # end + grace <= _watermark_ns has been published (or had nothing to publish).
        self._watermark_ns: int | None = None

    @property
    def watermark_ns(self) -> int | None:
        return self._watermark_ns

    def open_windows(self) -> list[int]:
        return sorted(self._windows)

    def pending_connections(self) -> int:
        """Connections counted in windows not published yet (lost if the worker stops now)."""
        return sum(st.connections for w in self._windows.values() for st in w.values())

    def window_start(self, event_time_ns: int) -> int:
        return event_time_ns - event_time_ns % self.window_ns

    def is_closed(self, window_start_ns: int) -> bool:
        return (
            self._watermark_ns is not None
            and window_start_ns + self.window_ns + self.grace_ns <= self._watermark_ns
        )

    def add(self, record: EnrichedTcpConnection) -> AddOutcome:
        """Aggregate one record; raises InvalidRecord (and changes nothing) if it is unusable."""
        counters = self.counters
        latency = record.connect_latency_us
        if (
            record.bytes_client_to_server < 0
            or record.bytes_server_to_client < 0
            or (latency is not None and latency < 0)
        ):
            counters.rejected += 1
            raise InvalidRecord(
                "negative bytes or connect latency: "
                f"c2s={record.bytes_client_to_server} s2c={record.bytes_server_to_client} "
                f"connect_latency_us={latency}"
            )
        counters.records += 1
        if record.observer_role != "client" and record.client_observed:
            counters.duplicates_skipped += 1
            return AddOutcome.DUPLICATE
        start = record.end_time_ns - record.end_time_ns % self.window_ns
        if self.is_closed(start):
            counters.late_dropped += 1
            return AddOutcome.LATE
        window = self._windows.get(start)
        if window is None:
            window = self._windows[start] = {}
        client, server = record.client, record.server
        key = (client.workload_key(), server.workload_key())
        state = window.get(key)
        if state is None:
            state = window[key] = _PairState(
                client_namespace=client.namespace,
                server_namespace=server.namespace,
                sketch=QuantileSketch(self.alpha),
            )
        state.connections += 1
        state.bytes_client_to_server += record.bytes_client_to_server
        state.bytes_server_to_client += record.bytes_server_to_client
        if client.zone is not None:
            state.client_zones.add(client.zone)
        if server.zone is not None:
            state.server_zones.add(server.zone)
        state.peer_classes.add(record.peer_class)
        # Only the client measures SYN -> established; a server-side record has no latency.
        if record.observer_role == "client" and latency is not None:
            state.sketch.add(latency)
        counters.counted += 1
        return AddOutcome.COUNTED

    def close_ready(self, watermark_ns: int) -> list[TcpPairMetric]:
        """Publish every open window with ``end + grace <= watermark``, oldest first.

        The watermark never goes backwards: a smaller value than one already seen is ignored,
        so a window is published at most once.
        """
        if self._watermark_ns is None or watermark_ns > self._watermark_ns:
            self._watermark_ns = watermark_ns
        ready = [s for s in self._windows if self.is_closed(s)]
        metrics: list[TcpPairMetric] = []
        for start in sorted(ready):
            pairs = self._windows.pop(start)
            self.counters.windows_closed += 1
            for key in sorted(pairs):
                metrics.append(self._metric(start, key, pairs[key]))
        self.counters.metrics_published += len(metrics)
        return metrics

    def _metric(self, start: int, key: PairKey, state: _PairState) -> TcpPairMetric:
        sketch = state.sketch
        has_latency = sketch.count > 0
        return TcpPairMetric(
            window_start_ns=start,
            window_end_ns=start + self.window_ns,
            client_workload=key[0],
            server_workload=key[1],
            client_namespace=state.client_namespace,
            server_namespace=state.server_namespace,
            client_zones=sorted(state.client_zones),
            server_zones=sorted(state.server_zones),
            peer_classes=sorted(state.peer_classes),
            connections=state.connections,
            bytes_client_to_server=state.bytes_client_to_server,
            bytes_server_to_client=state.bytes_server_to_client,
            connect_latency_p50_us=sketch.quantile(0.5) if has_latency else None,
            connect_latency_p99_us=sketch.quantile(0.99) if has_latency else None,
            connect_latency_sketch=sketch.to_dict() if has_latency else None,
        )


class Watermark:
    """Event-time progress of the stream, as ``max(max event time seen, now - idle_allowance)``.

    Why this and not plain wall-clock time: with wall clock, any uniform delay in the
    pipeline (the enricher holding back unresolved IPs, this worker catching up after a burst
    or a restart) beyond ``grace`` makes *every* record late. Driving the watermark by the
    newest event seen makes grace mean "how far a record may trail the rest of the stream",
    which is what it is for. The wall-clock term keeps windows closing when the stream goes
    quiet (no events, no progress otherwise); ``idle_allowance`` is therefore also the largest
    uniform lag tolerated before records count as late.

    Event times are clamped to ``now``: a node whose clock runs ahead must not close everyone
    else's windows early.
    """

    def __init__(self, idle_allowance_ns: int) -> None:
        if idle_allowance_ns < 0:
            raise ValueError(f"idle allowance must be >= 0, got {idle_allowance_ns} ns")
        self.idle_allowance_ns = idle_allowance_ns
        self._max_event_ns: int | None = None

    def observe(self, event_time_ns: int) -> None:
        if self._max_event_ns is None or event_time_ns > self._max_event_ns:
            self._max_event_ns = event_time_ns

    def current(self, now_ns: int) -> int:
        idle = now_ns - self.idle_allowance_ns
        if self._max_event_ns is None:
            return idle
        return max(min(self._max_event_ns, now_ns), idle)
