"""The UDP processor without faust: enriched UDP flows in, cost metrics out.

UDP has no connections to time, so this stage computes only what UDP costs: the same cells
as the TCP processor's (processors/tcp/connections.py ``cell_key``: workload, zone, class,
domain, labels of both ends), filled with each flow window's bytes, and turned into cost
pairs and roll-ups by the same :func:`processors.cost.records.cost_metrics`, marked
``transport="udp"`` (their ``metric_id`` too, so the TCP and UDP records of one pair never
collide). Each flow counts once: client-side records, server-side ones only when no
collector saw the client, as for TCP. The event time is the end of the collector's window
(``end_time_unix_nano``): a flow window belongs to the processor window holding its end.
No alert rules read UDP (the cost rules read the TCP stream's cost pairs).
"""

from __future__ import annotations

import logging

from flowscope import SCHEMA_VERSION
from flowscope.codec import JsonCodec
from flowscope.records import AlertEvent, CostPairMetric, CostRollupMetric, EnrichedUdpFlow
from processors.core.alerts import AlertEvaluator
from processors.core.sketch import QuantileSketch
from processors.core.stage import Output, WindowedStage
from processors.core.windows import PartitionWindows, unsupported_version
from processors.cost.prices import PriceTable
from processors.cost.records import cost_metrics
from processors.tcp.connections import IN_CLUSTER, Cell, CellKey, ClosedWindow, cell_key

log = logging.getLogger(__name__)

STAGE = "processors.udp.processor"


class UdpAggregator(PartitionWindows[EnrichedUdpFlow, CellKey, Cell]):
    """Tumbling windows of ``window_ns`` per partition; a cell's ``connections`` counts flow
    windows."""

    def add(self, partition: int, record: EnrichedUdpFlow) -> int | None:
        if record.schema_version != SCHEMA_VERSION:
            raise self._reject(unsupported_version("EnrichedUdpFlow", record.schema_version))
        volumes = (
            record.bytes_client_to_server,
            record.bytes_server_to_client,
            record.packets_client_to_server,
            record.packets_server_to_client,
        )
        if min(volumes) < 0:
            raise self._reject(f"negative volume: {volumes}")
        duplicate = record.observer_role != "client" and record.client_observed
        found = self._cells(partition, record.end_time_ns, duplicate)
        if found is None:
            return None
        start, cells = found
        key = cell_key(record, IN_CLUSTER)
        cell = cells.get(key)  # type: ignore[call-overload]  # a tuple equal to a CellKey
        if cell is None:
            cell = cells[CellKey._make(key)] = Cell(
                record.client.namespace,
                record.server.namespace,
                QuantileSketch(self.alpha),
                QuantileSketch(self.alpha),
            )
        cell.connections += 1
        cell.bytes_client_to_server += record.bytes_client_to_server
        cell.bytes_server_to_client += record.bytes_server_to_client
        return self._counted(partition, start)


class UdpProcessor(WindowedStage[EnrichedUdpFlow, CellKey, Cell, None]):
    STAGE = STAGE
    LATE_WHAT = "late UDP flow"
    EVENT_TIME_FIELD = "end_time_ns"

    def __init__(
        self, window_ns: int, grace_ns: int, idle_allowance_ns: int, prices: PriceTable
    ) -> None:
        super().__init__(
            UdpAggregator(window_ns, grace_ns),
            idle_allowance_ns,
            AlertEvaluator([]),
            JsonCodec(EnrichedUdpFlow),
            {
                "cost_pairs": JsonCodec(CostPairMetric),
                "cost_rollups": JsonCodec(CostRollupMetric),
                "alerts": JsonCodec(AlertEvent),
            },
            log,
        )
        self.prices = prices

    def _event_time(self, record: EnrichedUdpFlow) -> int:
        return record.end_time_ns

    def _window_outputs(self, windows: list[ClosedWindow]) -> tuple[list[Output], None]:
        out: list[Output] = []
        for w in windows:
            pairs, rollups = cost_metrics(w, self.prices, transport="udp")
            for c in pairs:
                key = f"{c.source_workload}|{c.destination_workload}"
                out.append(self._out("cost_pairs", key, c))
            for r in rollups:
                out.append(self._out("cost_rollups", f"{r.scope}|{r.name}", r))
        return out, None

    def _evaluate(self, start: int, end: int, metrics: None, now_ns: int) -> list[AlertEvent]:
        return []
