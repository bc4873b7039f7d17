"""The DNS processor without faust: enriched DNS messages in, DNS metrics and alerts out.

The twin of :class:`processors.tcp.processor.ConnectionProcessor` for the second input topic
(``enriched.dns``): the same decoding (single records and JSON array batches), dead letters,
per-partition event-time watermark and window close (both are
:class:`processors.core.stage.WindowedStage`), and idempotent ``metric_id``. It has its own
watermark and its own alert evaluator (the ``dns.*`` rules), so neither stream's progress
holds back or closes the other's windows.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from flowscope.codec import JsonCodec
from flowscope.records import AlertEvent, DnsMetric, EnrichedDnsQuery
from processors.core.alerts import AlertEvaluator, AlertRule, rules_for
from processors.core.stage import Output, WindowedStage
from processors.dns.aggregate import (
    ClosedDnsWindow,
    DnsAggregator,
    DnsCell,
    DnsCellKey,
    NameGroups,
    dns_metrics,
)

log = logging.getLogger(__name__)

STAGE = "processors.dns.aggregate"
DNS_SOURCES = frozenset({"dns"})


class DnsProcessor(WindowedStage[EnrichedDnsQuery, DnsCellKey, DnsCell, list[DnsMetric]]):
    STAGE = STAGE
    LATE_WHAT = "late DNS record"
    EVENT_TIME_FIELD = "time_ns"

    def __init__(
        self,
        window_ns: int,
        grace_ns: int,
        idle_allowance_ns: int,
        rules: Iterable[AlertRule] = (),
        alpha: float = 0.01,
        names: NameGroups | None = None,
    ) -> None:
        super().__init__(
            DnsAggregator(window_ns, grace_ns, alpha, names or NameGroups()),
            idle_allowance_ns,
            AlertEvaluator(rules_for(list(rules), DNS_SOURCES)),
            JsonCodec(EnrichedDnsQuery),
            {"dns": JsonCodec(DnsMetric), "alerts": JsonCodec(AlertEvent)},
            log,
        )

    def _event_time(self, record: EnrichedDnsQuery) -> int:
        return record.time_ns

    def _window_outputs(
        self, windows: list[ClosedDnsWindow]
    ) -> tuple[list[Output], list[DnsMetric]]:
        metrics = [m for w in windows for m in dns_metrics(w)]
        return [self._out("dns", m.metric_id, m) for m in metrics], metrics

    def _evaluate(
        self, start: int, end: int, metrics: list[DnsMetric] | None, now_ns: int
    ) -> list[AlertEvent]:
        # Without DNS rules the evaluator is never fed (nothing can fire or resolve).
        if not self.alerts.rules:
            return []
        return self.alerts.evaluate(start, end, [], [], now_ns, dns=metrics or [])
