"""Network health per path: per (source node, destination node) and (source zone,
destination zone) and window, from the enriched TCP stream (pure, no I/O).

A path is where the client end runs -> where the server end runs. The cells are finer, per
(path, client workload, server workload), because the network-at-fault verdict
(processors/path/verdict.py) asks whether *several* service pairs on one path degraded at once;
the published metric is the path's sum. Counting follows processors/tcp/connections.py: each
connection once (client side, or the server side when no client collector saw it), volumes
from every record, the connection, its outcome and RTT from its final record.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from flowscope import SCHEMA_VERSION
from flowscope.codec import JsonCodec
from flowscope.records import FAILURE_OUTCOMES, AlertEvent, EnrichedTcpConnection, PathHealthMetric
from processors.core.sketch import DEFAULT_ALPHA, QuantileSketch
from processors.core.stage import Output, Source, WindowedStage
from processors.core.windows import ClosedWindow, PartitionWindows, unsupported_version
from processors.path.verdict import UNKNOWN, PathVerdict, VerdictConfig

log = logging.getLogger(__name__)

STAGE = "processors.path_health"
Scope = Literal["node", "zone"]
SCOPES: tuple[Scope, ...] = ("node", "zone")
RESET_OUTCOMES = frozenset({"reset_by_peer", "reset_locally"})


class PathKey(NamedTuple):
    scope: Scope
    source: str
    destination: str
    client_workload: str
    server_workload: str


@dataclass(slots=True)
class PathCell:
    rtt: QuantileSketch
    connections: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    resets: int = 0
    connect_timeouts: int = 0
    syn_retransmits: int = 0
    connections_with_syn_retransmits: int = 0
    retrans_segs: int = 0
    segs_out: int = 0

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def merge(self, other: PathCell) -> None:
        self.rtt.merge(other.rtt)
        self.connections += other.connections
        for outcome, n in other.failures.items():
            self.failures[outcome] = self.failures.get(outcome, 0) + n
        self.resets += other.resets
        self.connect_timeouts += other.connect_timeouts
        self.syn_retransmits += other.syn_retransmits
        self.connections_with_syn_retransmits += other.connections_with_syn_retransmits
        self.retrans_segs += other.retrans_segs
        self.segs_out += other.segs_out


def paths_of(record: EnrichedTcpConnection) -> list[tuple[Scope, str, str]]:
    client, server = record.client, record.server
    return [
        ("node", client.node or UNKNOWN, server.node or UNKNOWN),
        ("zone", client.zone or UNKNOWN, server.zone or UNKNOWN),
    ]


class PathAggregator(PartitionWindows[EnrichedTcpConnection, PathKey, PathCell]):
    """Tumbling event-time windows (``end_time_ns``) of path cells per partition."""

    def add(self, partition: int, record: EnrichedTcpConnection) -> int | None:
        if record.schema_version != SCHEMA_VERSION:
            raise self._reject(unsupported_version(type(record).__name__, record.schema_version))
        if record.retrans_segs < 0 or record.segs_out < 0 or record.srtt_us < 0:
            raise self._reject(
                f"negative counts: retrans_segs={record.retrans_segs} "
                f"segs_out={record.segs_out} srtt_us={record.srtt_us}"
            )
        duplicate = record.observer_role != "client" and record.client_observed
        found = self._cells(partition, record.end_time_ns, duplicate)
        if found is None:
            return None
        start, cells = found
        client_w, server_w = record.client.workload_key(), record.server.workload_key()
        for scope, source, destination in paths_of(record):
            key = PathKey(scope, source, destination, client_w, server_w)
            cell = cells.get(key)
            if cell is None:
                cell = cells[key] = PathCell(QuantileSketch(self.alpha))
            cell.retrans_segs += record.retrans_segs
            cell.segs_out += record.segs_out
            if record.interim:
                continue
            cell.connections += 1
            outcome = record.outcome
            if outcome in FAILURE_OUTCOMES:
                cell.failures[outcome] = cell.failures.get(outcome, 0) + 1
            if outcome in RESET_OUTCOMES:
                cell.resets += 1
            if outcome == "connect_timeout":
                cell.connect_timeouts += 1
            if record.syn_retries:
                cell.syn_retransmits += record.syn_retries
                cell.connections_with_syn_retransmits += 1
            if record.srtt_us > 0:
                cell.rtt.add(record.srtt_us)
        return self._counted(partition, start)


def _q(sketch: QuantileSketch, q: float) -> float | None:
    return sketch.quantile(q) if sketch.count else None


def path_metrics(window: ClosedWindow[PathKey, PathCell]) -> list[PathHealthMetric]:
    """One metric per (scope, source, destination) of one partition's window."""
    paths: dict[tuple[Scope, str, str], tuple[PathCell, set[str]]] = {}
    for key, cell in window.cells.items():
        pkey = (key.scope, key.source, key.destination)
        found = paths.get(pkey)
        if found is None:
            found = paths[pkey] = (PathCell(QuantileSketch(cell.rtt.alpha)), set())
        found[0].merge(cell)
        found[1].add(f"{key.client_workload} -> {key.server_workload}")
    out = []
    for (scope, source, destination), (c, services) in sorted(paths.items()):
        out.append(
            PathHealthMetric(
                metric_id=f"path.health|{window.start_ns}|{window.partition}|{scope}|"
                f"{source}|{destination}",
                window_start_ns=window.start_ns,
                window_end_ns=window.end_ns,
                source_partition=window.partition,
                scope=scope,
                source=source,
                destination=destination,
                connections=c.connections,
                failed_connections=c.failed,
                failures=dict(sorted(c.failures.items())),
                resets=c.resets,
                connect_timeouts=c.connect_timeouts,
                syn_retransmits=c.syn_retransmits,
                connections_with_syn_retransmits=c.connections_with_syn_retransmits,
                retrans_segs=c.retrans_segs,
                segs_out=c.segs_out,
                retransmission_rate=c.retrans_segs / c.segs_out if c.segs_out else None,
                rtt_p50_us=_q(c.rtt, 0.5),
                rtt_p90_us=_q(c.rtt, 0.9),
                rtt_p99_us=_q(c.rtt, 0.99),
                rtt_sketch=c.rtt.to_dict() if c.rtt.count else None,
                services=sorted(services),
            )
        )
    return out


# What one window's verdict reads: its cells, every partition merged.
PathCells = dict[PathKey, PathCell]


def merged_cells(windows: Iterable[ClosedWindow[PathKey, PathCell]]) -> PathCells:
    cells: PathCells = {}
    for w in windows:
        for key, cell in w.cells.items():
            into = cells.get(key)
            if into is None:
                into = cells[key] = PathCell(QuantileSketch(cell.rtt.alpha))
            into.merge(cell)
    return cells


class PathHealthProcessor(WindowedStage[EnrichedTcpConnection, PathKey, PathCell, PathCells]):
    """enriched.tcp -> metrics.path.health and the network-at-fault verdict's alerts."""

    STAGE = STAGE
    LATE_WHAT = "late record (path health)"
    EVENT_TIME_FIELD = "end_time_ns"

    def __init__(
        self,
        window_ns: int,
        grace_ns: int,
        idle_allowance_ns: int,
        verdict: VerdictConfig | None = None,
        alpha: float = DEFAULT_ALPHA,
    ) -> None:
        super().__init__(
            PathAggregator(window_ns, grace_ns, alpha),
            idle_allowance_ns,
            PathVerdict(verdict or VerdictConfig()),
            JsonCodec(EnrichedTcpConnection),
            {"path_health": JsonCodec(PathHealthMetric), "alerts": JsonCodec(AlertEvent)},
            log,
        )
        self.unusable = 0  # messages or records the TCP stage dead-letters

    def _event_time(self, record: EnrichedTcpConnection) -> int:
        return record.end_time_ns

    def handle(
        self, value: bytes | None, source: Source, now_ns: int
    ) -> tuple[int | None, list[bytes]]:
        """As every stage's, without dead letters: the TCP stage reads the same messages and
        dead-letters what neither can use, once. Counted here as ``unusable``."""
        newest, dead = super().handle(value, source, now_ns)
        self.outputs.dead_lettered -= len(dead)
        self.unusable += len(dead)
        return newest, []

    def counters(self) -> dict[str, int]:
        return {**super().counters(), "unusable": self.unusable}

    def _window_outputs(
        self, windows: list[ClosedWindow[PathKey, PathCell]]
    ) -> tuple[list[Output], PathCells]:
        out: list[Output] = []
        for w in windows:
            for m in path_metrics(w):
                out.append(self._out("path_health", f"{m.scope}|{m.source}|{m.destination}", m))
        return out, merged_cells(windows)

    def _evaluate(
        self, start: int, end: int, metrics: PathCells | None, now_ns: int
    ) -> list[AlertEvent]:
        assert isinstance(self.alerts, PathVerdict)
        return self.alerts.judge(start, end, metrics or {}, now_ns)
