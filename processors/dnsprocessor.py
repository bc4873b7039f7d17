"""The DNS processor without faust: enriched DNS messages in, DNS metrics and alerts out.

The twin of :class:`processors.processor.ConnectionProcessor` for the second input topic
(``enriched.dns``): same decoding (single records and JSON array batches), dead letters,
per-partition event-time watermark, window close and idempotent ``metric_id``. It has its own
watermark and its own alert evaluator (the ``dns.*`` rules), so neither stream's progress
holds back or closes the other's windows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from flowscope.codec import DecodeError, JsonCodec
from flowscope.records import AlertEvent, DeadLetter, DnsMetric, EnrichedDnsQuery
from processors.alerts import AlertEvaluator, AlertRule, rules_for
from processors.connections import PartitionWatermark
from processors.dns import ClosedDnsWindow, DnsAggregator, NameGroups, dns_metrics
from processors.pairs import InvalidRecord
from processors.processor import Output, OutputCounters, OutputKind, Source

log = logging.getLogger(__name__)

STAGE = "processors.dns"
DNS_SOURCES = frozenset({"dns"})


class DnsProcessor:
    def __init__(
        self,
        window_ns: int,
        grace_ns: int,
        idle_allowance_ns: int,
        rules: Iterable[AlertRule] = (),
        alpha: float = 0.01,
        names: NameGroups | None = None,
    ) -> None:
        self.aggregator = DnsAggregator(window_ns, grace_ns, alpha, names or NameGroups())
        self.watermark = PartitionWatermark(idle_allowance_ns)
        self.alerts = AlertEvaluator(rules_for(list(rules), DNS_SOURCES))
        self.outputs = OutputCounters()
        self._decoder = JsonCodec(EnrichedDnsQuery)
        self._metric_codec = JsonCodec(DnsMetric)
        self._alert_codec = JsonCodec(AlertEvent)
        self._dead_codec = JsonCodec(DeadLetter)
        self._late_seen = 0
        self._late_reported = 0

    def handle(
        self, value: bytes | None, source: Source, now_ns: int
    ) -> tuple[int | None, list[bytes]]:
        """Aggregate one message (a record or a batch). Returns the newest window start its
        records went into (None: none) and encoded dead letters."""
        self.outputs.messages += 1
        try:
            records = self._decoder.decode_batch(value)
        except DecodeError as exc:
            self.outputs.dead_lettered += 1
            return None, [self._dead_letter(str(exc), value, source, now_ns)]
        newest: int | None = None
        dead: list[bytes] = []
        partition = source.partition
        newest_event = -1
        counters = self.aggregator.counters
        late_before = counters.late_dropped
        for record in records:
            try:
                start = self.aggregator.add(partition, record)
            except InvalidRecord as exc:
                self.outputs.dead_lettered += 1
                one = self._decoder.encode(record)
                dead.append(self._dead_letter(str(exc), one, source, now_ns))
                continue
            if record.time_ns > newest_event:
                newest_event = record.time_ns
            if start is not None and (newest is None or start > newest):
                newest = start
        if newest_event >= 0:
            self.watermark.observe(partition, newest_event)
        if counters.late_dropped != late_before:
            if self._late_seen == self._late_reported:
                log.warning(
                    "late DNS record dropped (its window is already published): "
                    "time_ns=%d watermark_ns=%s from %s[%d]@%d",
                    records[-1].time_ns, self.aggregator.watermark_ns, source.topic,
                    source.partition, source.offset,
                )  # fmt: skip
            self._late_seen += 1
        return newest, dead

    def close_ready(self, now_ns: int) -> list[Output]:
        """Outputs of every window closed by now, oldest window first, its alerts last."""
        closed = self.aggregator.close_ready(self.watermark.current(now_ns))
        by_start: dict[int, list[ClosedDnsWindow]] = {}
        for window in closed:
            by_start.setdefault(window.start_ns, []).append(window)
        outputs: list[Output] = []
        window_ns = self.aggregator.window_ns
        for start in sorted(by_start):
            metrics = [m for w in by_start[start] for m in dns_metrics(w)]
            outputs += [
                self._out("dns", m.metric_id, self._metric_codec.encode(m)) for m in metrics
            ]
            # A window with no DNS traffic at all resolves what was firing before it.
            last = self.alerts.last_window_start_ns
            if last is not None and last + window_ns < start:
                outputs += self._alerts(last + window_ns, [], now_ns)
            outputs += self._alerts(start, metrics, now_ns)
        last = self.alerts.last_window_start_ns
        if last is not None and self.aggregator.is_closed(last + window_ns):
            outputs += self._alerts(last + window_ns, [], now_ns)
        self.aggregator.counters.metrics_published += len(outputs)
        return outputs

    def _alerts(self, start: int, metrics: list[DnsMetric], now_ns: int) -> list[Output]:
        if not self.alerts.rules:
            return []
        events = self.alerts.evaluate(
            start, start + self.aggregator.window_ns, [], [], now_ns, dns=metrics
        )
        self.outputs.alerts_fired = self.alerts.fired
        self.outputs.alerts_resolved = self.alerts.resolved
        return [self._out("alerts", e.alert_id, self._alert_codec.encode(e)) for e in events]

    @staticmethod
    def _out(kind: OutputKind, key: str, value: bytes) -> Output:
        return Output(kind, key.encode(), value)

    def assign(self, partitions: Iterable[int]) -> None:
        self.watermark.assign(partitions)

    def drop_partitions(self, partitions: Iterable[int]) -> int:
        parts = list(partitions)
        self.watermark.revoke(parts)
        return self.aggregator.drop_partitions(parts)

    def report(self) -> dict[str, int]:
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
