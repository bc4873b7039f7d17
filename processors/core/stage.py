"""What the TCP and DNS processors share, without faust: messages in, keyed outputs out.

A stage decodes a message (one record or a JSON array batch), dead-letters what it cannot
use, feeds the rest to its windowed aggregator and its partition watermark, and on close
turns each closed window into metric outputs followed by that window's alert events. The
subclasses say only what differs: the record type, its event time, the metric families and
the alert evaluation.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, TypeVar

from flowscope.codec import DecodeError, JsonCodec
from flowscope.deadletter import encode_dead_letter
from flowscope.records import AlertEvent
from processors.core.alerts import AlertEvaluator
from processors.core.windows import ClosedWindow, PartitionWatermark, PartitionWindows

OutputKind = Literal[
    "pairs", "latency", "cost_pairs", "cost_rollups", "alerts", "dns", "path_health"
]

R = TypeVar("R")  # the input record
K = TypeVar("K")  # a cell key
C = TypeVar("C")  # a cell
A = TypeVar("A")  # one window's metrics, as the alert evaluation takes them


@dataclass(frozen=True)
class Source:
    """Where a message came from, for dead letters and late-record reports."""

    topic: str
    partition: int
    offset: int
    key: bytes | None


@dataclass(frozen=True)
class Output:
    kind: OutputKind
    key: bytes
    value: bytes


@dataclass
class OutputCounters:
    messages: int = 0
    dead_lettered: int = 0
    dead_letters_delivered: int = 0
    metrics_sent: int = 0
    metrics_delivered: int = 0
    metrics_failed: int = 0
    alerts_fired: int = 0
    alerts_resolved: int = 0


class WindowedStage(Generic[R, K, C, A]):
    """One input topic's processor: aggregator, watermark, alerts, dead letters, counters."""

    STAGE: ClassVar[str]  # DeadLetter.stage
    LATE_WHAT: ClassVar[str]  # how the late-record warning names a record
    EVENT_TIME_FIELD: ClassVar[str]  # the record field holding its event time

    def __init__(
        self,
        aggregator: PartitionWindows[R, K, C],
        idle_allowance_ns: int,
        alerts: AlertEvaluator,
        decoder: JsonCodec[R],
        codecs: Mapping[OutputKind, JsonCodec[Any]],
        log: logging.Logger,
    ) -> None:
        self.aggregator = aggregator
        self.watermark = PartitionWatermark(idle_allowance_ns)
        self.alerts = alerts
        self.outputs = OutputCounters()
        self._decoder = decoder
        self._codecs = codecs
        self._log = log
        self._late_seen = 0
        self._late_reported = 0
        # Wall time of the first and latest message handled: records / span is the rate.
        self._first_message_ns: int | None = None
        self._last_message_ns = 0
        # CPU time (whole process, and this thread) over the same span: the bench's CPU per
        # record, the figure that noise from other processes on the machine moves least.
        self._first_cpu_ns = (0, 0)
        self._last_cpu_ns = (0, 0)
        self._handle_cpu_ns = 0  # this thread's CPU inside handle(): our part of the span

    def _event_time(self, record: R) -> int:
        raise NotImplementedError

    def _window_outputs(self, windows: list[ClosedWindow[K, C]]) -> tuple[list[Output], A]:
        """One window's metric outputs (all its partitions) and what its alerts read."""
        raise NotImplementedError

    def _evaluate(self, start: int, end: int, metrics: A | None, now_ns: int) -> list[AlertEvent]:
        """The alert events of window [start, end); ``metrics`` None: it had no traffic."""
        raise NotImplementedError

    def handle(
        self, value: bytes | None, source: Source, now_ns: int
    ) -> tuple[int | None, list[bytes]]:
        """Aggregate one message (a record or a batch). Returns the newest window start its
        records went into (None: none, e.g. all duplicates) and encoded dead letters."""
        self.outputs.messages += 1
        cpu = (time.process_time_ns(), time.thread_time_ns())
        if self._first_message_ns is None:
            self._first_message_ns = now_ns
            self._first_cpu_ns = cpu
        self._last_message_ns = now_ns
        self._last_cpu_ns = cpu
        try:
            return self._handle(value, source, now_ns)
        finally:
            self._handle_cpu_ns += time.thread_time_ns() - cpu[1]

    def _handle(
        self, value: bytes | None, source: Source, now_ns: int
    ) -> tuple[int | None, list[bytes]]:
        try:
            records = self._decoder.decode_batch(value)
        except DecodeError as exc:
            self.outputs.dead_lettered += 1
            return None, [self._dead_letter(str(exc), value, source, now_ns)]
        partition = source.partition
        counters = self.aggregator.counters
        late_before = counters.late_dropped
        batch = self.aggregator.add_batch(partition, records, self._event_time)
        dead: list[bytes] = []
        for record, reason in batch.rejected:
            self.outputs.dead_lettered += 1
            one = self._decoder.encode(record)
            dead.append(self._dead_letter(reason, one, source, now_ns))
        if batch.newest_event_ns >= 0:
            self.watermark.observe(partition, batch.newest_event_ns)
        if counters.late_dropped != late_before:
            self._report_late(records[-1], source)
        return batch.newest_start_ns, dead

    def handling_span(self) -> dict[str, int]:
        """Wall, process CPU and handling-thread CPU (ms) from the first message handled to
        the latest (records over these spans are the rates the bench reports), and the CPU
        spent inside :meth:`handle` (decode and aggregation; the rest is the framework's)."""
        if self._first_message_ns is None:
            return dict.fromkeys(
                ("handling_span_ms", "handling_cpu_ms", "handling_thread_cpu_ms", "handle_cpu_ms"),
                0,
            )
        return {
            "handling_span_ms": (self._last_message_ns - self._first_message_ns) // 1_000_000,
            "handling_cpu_ms": (self._last_cpu_ns[0] - self._first_cpu_ns[0]) // 1_000_000,
            "handling_thread_cpu_ms": (self._last_cpu_ns[1] - self._first_cpu_ns[1]) // 1_000_000,
            "handle_cpu_ms": self._handle_cpu_ns // 1_000_000,
        }

    def _report_late(self, record: R, source: Source) -> None:
        # Once per report interval with an example; the counters have the rest.
        if self._late_seen == self._late_reported:
            self._log.warning(
                "%s dropped (its window is already published): %s=%d watermark_ns=%s "
                "from %s[%d]@%d",
                self.LATE_WHAT,
                self.EVENT_TIME_FIELD,
                self._event_time(record),
                self.aggregator.watermark_ns,
                source.topic,
                source.partition,
                source.offset,
            )
        self._late_seen += 1

    def close_ready(self, now_ns: int) -> list[Output]:
        """Outputs of every window closed by now, oldest window first, its alerts last."""
        closed = self.aggregator.close_ready(self.watermark.current(now_ns))
        by_start: dict[int, list[ClosedWindow[K, C]]] = {}
        for window in closed:
            by_start.setdefault(window.start_ns, []).append(window)
        outputs: list[Output] = []
        window_ns = self.aggregator.window_ns
        for start in sorted(by_start):
            metrics, alert_input = self._window_outputs(by_start[start])
            outputs += metrics
            # A window with no traffic at all first: it resolves what was firing before it.
            last = self.alerts.last_window_start_ns
            if last is not None and last + window_ns < start:
                outputs += self._alerts(last + window_ns, None, now_ns)
            outputs += self._alerts(start, alert_input, now_ns)
        # No traffic at all: one empty window resolves whatever fires, then skip ahead.
        last = self.alerts.last_window_start_ns
        if last is not None and self.aggregator.is_closed(last + window_ns):
            outputs += self._alerts(last + window_ns, None, now_ns)
        self.aggregator.counters.metrics_published += len(outputs)
        return outputs

    def _alerts(self, start: int, metrics: A | None, now_ns: int) -> list[Output]:
        events = self._evaluate(start, start + self.aggregator.window_ns, metrics, now_ns)
        self.outputs.alerts_fired = self.alerts.fired
        self.outputs.alerts_resolved = self.alerts.resolved
        return [self._out("alerts", e.alert_id, e) for e in events]

    def _out(self, kind: OutputKind, key: str, record: object) -> Output:
        return Output(kind, key.encode(), self._codecs[kind].encode(record))

    def assign(self, partitions: Iterable[int]) -> None:
        """The partitions this worker owns now (the watermark waits for each of them)."""
        self.watermark.assign(partitions)

    def drop_partitions(self, partitions: Iterable[int]) -> int:
        """Partitions taken away: forget their open windows and their event-time progress."""
        parts = list(partitions)
        self.watermark.revoke(parts)
        return self.aggregator.drop_partitions(parts)

    def counters(self) -> dict[str, int]:
        """All running counters and levels; reading them changes nothing (``/metrics``)."""
        o = self.outputs
        return {
            **self.aggregator.counters.as_dict(),
            "messages": o.messages,
            "dead_lettered": o.dead_lettered,
            "dead_letters_delivered": o.dead_letters_delivered,
            "metrics_sent": o.metrics_sent,
            "metrics_delivered": o.metrics_delivered,
            "metrics_failed": o.metrics_failed,
            "alerts_fired": o.alerts_fired,
            "alerts_resolved": o.alerts_resolved,
            "open_windows": len(self.aggregator.open_windows()),
            "pending_records": self.aggregator.pending_records(),
        }

    def report(self) -> dict[str, int]:
        """All counters, for the periodic log line, and the late records since the last."""
        late_recent = self._late_seen - self._late_reported
        self._late_reported = self._late_seen
        return {**self.counters(), "late_since_last_report": late_recent}

    def _dead_letter(self, reason: str, value: bytes | None, source: Source, now_ns: int) -> bytes:
        return encode_dead_letter(
            stage=self.STAGE,
            reason=reason,
            source_topic=source.topic,
            partition=source.partition,
            offset=source.offset,
            key=source.key,
            value=value,
            time_ns=now_ns,
        )
