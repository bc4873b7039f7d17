"""The connection processor without faust: messages in, keyed outputs and dead letters out.

app.py only moves bytes between Kafka and this object, so decoding (single records and JSON
array batches), dead-lettering, window closing, the metric families, alerts and the counters
are all testable without a broker.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from flowscope.codec import DecodeError, JsonCodec
from flowscope.records import (
    AlertEvent,
    CostPairMetric,
    CostRollupMetric,
    DeadLetter,
    EnrichedTcpConnection,
    TcpLatencyMetric,
    TcpPairMetric,
)
from processors.alerts import AlertEvaluator, AlertRule, rules_for
from processors.connections import ClosedWindow, ConnectionAggregator, PartitionWatermark
from processors.cost import cost_metrics
from processors.latency import latency_metrics, pair_metrics
from processors.pairs import InvalidRecord
from processors.prices import PriceTable

log = logging.getLogger(__name__)

STAGE = "processors.tcp"
OutputKind = Literal["pairs", "latency", "cost_pairs", "cost_rollups", "alerts", "dns"]
# The alert rule sources this processor evaluates; DNS rules go to processors.dnsprocessor.
TCP_SOURCES = frozenset({"latency", "cost"})


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


class ConnectionProcessor:
    def __init__(
        self,
        window_ns: int,
        grace_ns: int,
        idle_allowance_ns: int,
        prices: PriceTable,
        rules: Iterable[AlertRule] = (),
        alpha: float = 0.01,
    ) -> None:
        self.aggregator = ConnectionAggregator(window_ns, grace_ns, alpha)
        self.watermark = PartitionWatermark(idle_allowance_ns)
        self.prices = prices
        self.alerts = AlertEvaluator(rules_for(list(rules), TCP_SOURCES))
        self.outputs = OutputCounters()
        self._decoder = JsonCodec(EnrichedTcpConnection)
        self._codecs = {
            "pairs": JsonCodec(TcpPairMetric),
            "latency": JsonCodec(TcpLatencyMetric),
            "cost_pairs": JsonCodec(CostPairMetric),
            "cost_rollups": JsonCodec(CostRollupMetric),
            "alerts": JsonCodec(AlertEvent),
        }
        self._dead_codec = JsonCodec(DeadLetter)
        self._late_seen = 0
        # Wall time of the first and latest message handled: records / span is the rate.
        self._first_message_ns: int | None = None
        self._last_message_ns = 0
        self._late_reported = 0

    def handle(
        self, value: bytes | None, source: Source, now_ns: int
    ) -> tuple[int | None, list[bytes]]:
        """Aggregate one message (a record or a batch). Returns the newest window start its
        records went into (None: none, e.g. all duplicates) and encoded dead letters."""
        self.outputs.messages += 1
        if self._first_message_ns is None:
            self._first_message_ns = now_ns
        self._last_message_ns = now_ns
        try:
            records = self._decoder.decode_batch(value)
        except DecodeError as exc:
            self.outputs.dead_lettered += 1
            return None, [self._dead_letter(str(exc), value, source, now_ns)]
        newest: int | None = None
        dead: list[bytes] = []
        add = self.aggregator.add
        partition = source.partition
        newest_event = -1
        counters = self.aggregator.counters
        late_before = counters.late_dropped
        for record in records:
            try:
                start = add(partition, record)
            except InvalidRecord as exc:
                self.outputs.dead_lettered += 1
                one = self._decoder.encode(record)
                dead.append(self._dead_letter(str(exc), one, source, now_ns))
                continue
            if record.end_time_ns > newest_event:
                newest_event = record.end_time_ns
            if start is not None and (newest is None or start > newest):
                newest = start
        if newest_event >= 0:
            self.watermark.observe(partition, newest_event)
        if counters.late_dropped != late_before:
            self._report_late(records[-1], source)
        return newest, dead

    def _report_late(self, record: EnrichedTcpConnection, source: Source) -> None:
        # Once per report interval with an example; the counters have the rest.
        if self._late_seen == self._late_reported:
            log.warning(
                "late record dropped (its window is already published): end_time_ns=%d "
                "watermark_ns=%s from %s[%d]@%d",
                record.end_time_ns,
                self.aggregator.watermark_ns,
                source.topic,
                source.partition,
                source.offset,
            )
        self._late_seen += 1

    def close_ready(self, now_ns: int) -> list[Output]:
        """Outputs of every window closed by now, oldest window first, alerts last."""
        closed = self.aggregator.close_ready(self.watermark.current(now_ns))
        by_start: dict[int, list[ClosedWindow]] = defaultdict(list)
        for window in closed:
            by_start[window.start_ns].append(window)
        outputs: list[Output] = []
        for start in sorted(by_start):
            outputs += self._window_outputs(start, by_start[start], now_ns)
        self._resolve_idle(now_ns, outputs)
        self.aggregator.counters.metrics_published += len(outputs)
        return outputs

    def _window_outputs(self, start: int, windows: list[ClosedWindow], now_ns: int) -> list[Output]:
        out: list[Output] = []
        latency_all: list[TcpLatencyMetric] = []
        cost_all: list[CostPairMetric] = []
        for w in windows:
            for p in pair_metrics(w):
                out.append(self._out("pairs", f"{p.client_workload}|{p.server_workload}", p))
            for m in latency_metrics(w):
                latency_all.append(m)
                key = f"{m.client_workload}|{m.server_workload}|{m.service or ''}"
                out.append(self._out("latency", key, m))
            pairs, rollups = cost_metrics(w, self.prices)
            for c in pairs:
                cost_all.append(c)
                out.append(
                    self._out("cost_pairs", f"{c.source_workload}|{c.destination_workload}", c)
                )
            for r in rollups:
                out.append(self._out("cost_rollups", f"{r.scope}|{r.name}", r))
        # An empty window first when the previous one had no data at all: it resolves.
        if self.alerts.last_window_start_ns is not None:
            gap = self.alerts.last_window_start_ns + self.aggregator.window_ns
            if gap < start:
                out += self._alerts(gap, [], [], now_ns)
        out += self._alerts(start, latency_all, cost_all, now_ns)
        return out

    def _resolve_idle(self, now_ns: int, outputs: list[Output]) -> None:
        """No traffic at all: one empty window resolves whatever fires, then skip ahead."""
        last = self.alerts.last_window_start_ns
        if last is None:
            return
        window = self.aggregator.window_ns
        if self.aggregator.is_closed(last + window):
            outputs += self._alerts(last + window, [], [], now_ns)

    def _alerts(
        self,
        start: int,
        latency: list[TcpLatencyMetric],
        cost: list[CostPairMetric],
        now_ns: int,
    ) -> list[Output]:
        events = self.alerts.evaluate(
            start, start + self.aggregator.window_ns, latency, cost, now_ns
        )
        self.outputs.alerts_fired = self.alerts.fired
        self.outputs.alerts_resolved = self.alerts.resolved
        return [self._out("alerts", e.alert_id, e) for e in events]

    def _out(self, kind: OutputKind, key: str, record: object) -> Output:
        return Output(kind, key.encode(), self._codecs[kind].encode(record))  # type: ignore[attr-defined]

    def assign(self, partitions: Iterable[int]) -> None:
        """The partitions this worker owns now (the watermark waits for each of them)."""
        self.watermark.assign(partitions)

    def drop_partitions(self, partitions: Iterable[int]) -> int:
        """Partitions taken away: forget their open windows and their event-time progress."""
        parts = list(partitions)
        self.watermark.revoke(parts)
        return self.aggregator.drop_partitions(parts)

    def report(self) -> dict[str, int]:
        """All counters, for the periodic log line."""
        late_recent = self._late_seen - self._late_reported
        self._late_reported = self._late_seen
        o = self.outputs
        return {
            **self.aggregator.counters.as_dict(),
            "messages": o.messages,
            "late_since_last_report": late_recent,
            "dead_lettered": o.dead_lettered,
            "dead_letters_delivered": o.dead_letters_delivered,
            "metrics_sent": o.metrics_sent,
            "metrics_delivered": o.metrics_delivered,
            "metrics_failed": o.metrics_failed,
            "alerts_fired": o.alerts_fired,
            "alerts_resolved": o.alerts_resolved,
            "open_windows": len(self.aggregator.open_windows()),
            "pending_records": self.aggregator.pending_records(),
            "handling_span_ms": 0
            if self._first_message_ns is None
            else (self._last_message_ns - self._first_message_ns) // 1_000_000,
        }

    def _dead_letter(self, reason: str, value: bytes | None, source: Source, now_ns: int) -> bytes:
        return self._dead_codec.encode(
            DeadLetter(
                stage=STAGE,
                reason=reason,
                source_topic=source.topic,
                partition=source.partition,
                offset=source.offset,
                key=None if source.key is None else source.key.decode("utf-8", "replace"),
                payload="" if value is None else value.decode("utf-8", "replace"),
                time_ns=now_ns,
            )
        )
