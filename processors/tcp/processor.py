"""The connection processor without faust: messages in, keyed outputs and dead letters out.

app.py only moves bytes between Kafka and this object, so decoding (single records and JSON
array batches), dead-lettering, window closing, the metric families, alerts and the counters
are all testable without a broker.
The mechanics shared with the DNS processor are :class:`processors.core.stage.WindowedStage`;
this module adds the TCP metric families (pairs, latency, cost) and the TCP alert rules.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from flowscope.codec import JsonCodec
from flowscope.records import (
    AlertEvent,
    CostPairMetric,
    CostRollupMetric,
    EnrichedTcpConnection,
    TcpLatencyMetric,
    TcpPairMetric,
)
from processors.core.alerts import AlertEvaluator, AlertRule, rules_for
from processors.core.stage import Output, WindowedStage
from processors.cost.prices import PriceTable
from processors.cost.records import cost_metrics
from processors.tcp.connections import Cell, CellKey, ClosedWindow, ConnectionAggregator
from processors.tcp.latency import latency_metrics, pair_metrics

log = logging.getLogger(__name__)

STAGE = "processors.tcp"
# The alert rule sources this processor evaluates; DNS rules go to processors.dns.processor.
TCP_SOURCES = frozenset({"latency", "cost"})
# What one window's TCP alerts read: its latency and cost pair metrics.
TcpAlertInput = tuple[list[TcpLatencyMetric], list[CostPairMetric]]


class ConnectionProcessor(WindowedStage[EnrichedTcpConnection, CellKey, Cell, TcpAlertInput]):
    STAGE = STAGE
    LATE_WHAT = "late record"
    EVENT_TIME_FIELD = "end_time_ns"

    def __init__(
        self,
        window_ns: int,
        grace_ns: int,
        idle_allowance_ns: int,
        prices: PriceTable,
        rules: Iterable[AlertRule] = (),
        alpha: float = 0.01,
    ) -> None:
        super().__init__(
            ConnectionAggregator(window_ns, grace_ns, alpha),
            idle_allowance_ns,
            AlertEvaluator(rules_for(list(rules), TCP_SOURCES)),
            JsonCodec(EnrichedTcpConnection),
            {
                "pairs": JsonCodec(TcpPairMetric),
                "latency": JsonCodec(TcpLatencyMetric),
                "cost_pairs": JsonCodec(CostPairMetric),
                "cost_rollups": JsonCodec(CostRollupMetric),
                "alerts": JsonCodec(AlertEvent),
            },
            log,
        )
        self.prices = prices

    def _event_time(self, record: EnrichedTcpConnection) -> int:
        return record.end_time_ns

    def _window_outputs(self, windows: list[ClosedWindow]) -> tuple[list[Output], TcpAlertInput]:
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
        return out, (latency_all, cost_all)

    def _evaluate(
        self, start: int, end: int, metrics: TcpAlertInput | None, now_ns: int
    ) -> list[AlertEvent]:
        latency, cost = metrics or ([], [])
        return self.alerts.evaluate(start, end, latency, cost, now_ns)

    def counters(self) -> dict[str, int]:
        return {**super().counters(), **self.handling_span()}

    def report(self) -> dict[str, int]:
        """All counters, for the periodic log line."""
        return {**super().report(), **self.handling_span()}
