"""Network health per path: per (source node, destination node) and (source zone,
destination zone) and window, from the enriched TCP stream (pure, no I/O).

A path is where the client end runs -> where the server end runs. The cells are finer, per
(path, client workload, server workload), because the network-at-fault verdict
(processors/path/verdict.py) asks whether *several* service pairs on one path degraded at once;
the published metric is the path's sum. Counting follows processors/tcp/connections.py: each
connection once (client side, or the server side when no client collector saw it), volumes
from every record, the connection, its outcome and RTT from its final record.

Kernel drops (raw.drops, per dropping node, reason and addresses, without ports) join a path
when the window closes: a drop between two addresses counts on the cells whose connections
ran between those addresses in that window, either direction (a drop names no client or
server). A drop record's event time is the end of its collector window; drops no connection
explains (other protocols, hosts without connections in the window) are counted unjoined.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, NamedTuple

from flowscope import SCHEMA_VERSION
from flowscope.codec import DecodeError, JsonCodec
from flowscope.records import (
    FAILURE_OUTCOMES,
    AlertEvent,
    EnrichedTcpConnection,
    PathHealthMetric,
    RawPacketDrops,
)
from processors.core.sketch import DEFAULT_ALPHA, QuantileSketch
from processors.core.stage import Output, Source, WindowedStage
from processors.core.windows import ClosedWindow, PartitionWindows, unsupported_version
from processors.path.verdict import UNKNOWN, PathVerdict, VerdictConfig

log = logging.getLogger(__name__)

STAGE = "processors.path_health"
Scope = Literal["node", "zone"]
SCOPES: tuple[Scope, ...] = ("node", "zone")
RESET_OUTCOMES = frozenset({"reset_by_peer", "reset_locally"})
# Window partitions of raw.drops: apart from enriched.tcp's, whose partitions share numbers.
DROPS_PARTITION_BASE = 1 << 20
IPPROTO_TCP = 6


class PathKey(NamedTuple):
    scope: Scope
    source: str
    destination: str
    client_workload: str
    server_workload: str


class DropKey(NamedTuple):
    """Drops waiting for their window to close, to be joined to its paths."""

    node: str  # where the kernel dropped them
    src_addr: str
    dst_addr: str
    reason: str


CellKey = PathKey | DropKey


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
    drops: dict[str, int] = field(default_factory=dict)  # reason -> packets (joined)
    # (client, server) addresses of the connections: what a drop is joined by.
    addresses: set[tuple[str, str]] = field(default_factory=set)

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())

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
        for reason, n in other.drops.items():
            self.drops[reason] = self.drops.get(reason, 0) + n
        self.addresses |= other.addresses


def paths_of(record: EnrichedTcpConnection) -> list[tuple[Scope, str, str]]:
    client, server = record.client, record.server
    return [
        ("node", client.node or UNKNOWN, server.node or UNKNOWN),
        ("zone", client.zone or UNKNOWN, server.zone or UNKNOWN),
    ]


@dataclass
class DropCounters:
    records: int = 0  # raw.drops records read
    late: int = 0  # records whose window was already published (packets not joined)
    joined_packets: int = 0  # packets counted on a path
    unjoined_packets: int = 0  # packets no connection of their window explains


class PathAggregator(PartitionWindows[EnrichedTcpConnection, CellKey, PathCell]):
    """Tumbling event-time windows (``end_time_ns``) of path cells per partition, and of the
    kernel's drops (``window_end_ns``) waiting to be joined."""

    def __init__(self, window_ns: int, grace_ns: int, alpha: float = DEFAULT_ALPHA) -> None:
        super().__init__(window_ns, grace_ns, alpha)
        self.drop_counters = DropCounters()

    def add_drops(self, partition: int, record: RawPacketDrops) -> int | None:
        """Keep one drop record for the join (see the module doc); None when it cannot be
        joined: late, or not TCP over IP (counted unjoined)."""
        c = self.drop_counters
        c.records += 1
        if record.ip_proto != IPPROTO_TCP or record.src_addr is None or record.dst_addr is None:
            c.unjoined_packets += record.packets
            return None
        found = self._cells(DROPS_PARTITION_BASE + partition, record.window_end_ns - 1, False)
        if found is None:
            c.late += 1
            c.unjoined_packets += record.packets
            return None
        start, cells = found
        key = DropKey(record.node, record.src_addr, record.dst_addr, record.reason)
        cell = cells.get(key)
        if cell is None:
            cell = cells[key] = PathCell(QuantileSketch(self.alpha))
        cell.drops[record.reason] = cell.drops.get(record.reason, 0) + record.packets
        return self._counted(DROPS_PARTITION_BASE + partition, start)

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
            cell.addresses.add((record.client.address, record.server.address))
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


def join_drops(windows: list[ClosedWindow[CellKey, PathCell]], counters: DropCounters) -> None:
    """Count one window's drops (every partition) on the cells of the connections between
    their addresses: once per scope, on the first such cell (partition, then key order)."""
    by_addresses: dict[tuple[str, str], dict[Scope, PathCell]] = {}
    for w in sorted(windows, key=lambda w: w.partition):
        if w.partition >= DROPS_PARTITION_BASE:
            continue
        for key, cell in sorted(w.cells.items()):
            if isinstance(key, PathKey):
                for client, server in cell.addresses:
                    for pair in ((client, server), (server, client)):
                        by_addresses.setdefault(pair, {}).setdefault(key.scope, cell)
    for w in windows:
        if w.partition < DROPS_PARTITION_BASE:
            continue
        for key, cell in w.cells.items():
            assert isinstance(key, DropKey)
            packets = cell.dropped
            targets = by_addresses.get((key.src_addr, key.dst_addr))
            if not targets:
                counters.unjoined_packets += packets
                continue
            counters.joined_packets += packets
            for target in targets.values():
                target.drops[key.reason] = target.drops.get(key.reason, 0) + packets


def path_metrics(window: ClosedWindow[CellKey, PathCell]) -> list[PathHealthMetric]:
    """One metric per (scope, source, destination) of one partition's window."""
    paths: dict[tuple[Scope, str, str], tuple[PathCell, set[str]]] = {}
    for key, cell in window.cells.items():
        if not isinstance(key, PathKey):
            continue
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
                dropped_packets=c.dropped,
                drops=dict(sorted(c.drops.items())),
                drop_rate=c.dropped / c.segs_out if c.segs_out else None,
            )
        )
    return out


# What one window's verdict reads: its cells, every partition merged.
PathCells = dict[PathKey, PathCell]


def merged_cells(windows: Iterable[ClosedWindow[CellKey, PathCell]]) -> PathCells:
    cells: PathCells = {}
    for w in windows:
        for key, cell in w.cells.items():
            if not isinstance(key, PathKey):
                continue
            into = cells.get(key)
            if into is None:
                into = cells[key] = PathCell(QuantileSketch(cell.rtt.alpha))
            into.merge(cell)
    return cells


class PathHealthProcessor(WindowedStage[EnrichedTcpConnection, CellKey, PathCell, PathCells]):
    """enriched.tcp (and raw.drops, through :class:`PathDropsInput`) -> metrics.path.health
    and the network-at-fault verdict's alerts."""

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
        self._drops_decoder = JsonCodec(RawPacketDrops)

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

    def handle_drops(
        self, value: bytes | None, source: Source, now_ns: int
    ) -> tuple[int | None, list[bytes]]:
        """One raw.drops message. Drops do not move the watermark: windows close on the TCP
        records' event time, and drops arriving after that are counted late."""
        self.outputs.messages += 1
        try:
            records = self._drops_decoder.decode_batch(value)
        except DecodeError as exc:
            self.outputs.dead_lettered += 1
            return None, [self._dead_letter(str(exc), value, source, now_ns)]
        newest: int | None = None
        aggregator = self.aggregator
        assert isinstance(aggregator, PathAggregator)
        for record in records:
            start = aggregator.add_drops(source.partition, record)
            if start is not None and (newest is None or start > newest):
                newest = start
        return newest, []

    def counters(self) -> dict[str, int]:
        assert isinstance(self.aggregator, PathAggregator)
        drops = {f"drop_{k}": v for k, v in vars(self.aggregator.drop_counters).items()}
        return {**super().counters(), "unusable": self.unusable, **drops}

    def _window_outputs(
        self, windows: list[ClosedWindow[CellKey, PathCell]]
    ) -> tuple[list[Output], PathCells]:
        assert isinstance(self.aggregator, PathAggregator)
        join_drops(windows, self.aggregator.drop_counters)
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


class PathDropsInput:
    """raw.drops as a second input of the path stage, bound to its own topic: its partitions
    are not the watermark's (see :meth:`PathHealthProcessor.handle_drops`), and it publishes
    nothing itself (the path stage's windows do)."""

    def __init__(self, path: PathHealthProcessor) -> None:
        self.path = path
        self.aggregator = path.aggregator
        self.outputs = path.outputs

    def handle(
        self, value: bytes | None, source: Source, now_ns: int
    ) -> tuple[int | None, list[bytes]]:
        return self.path.handle_drops(value, source, now_ns)

    def close_ready(self, now_ns: int) -> list[Output]:
        return []

    def assign(self, partitions: Iterable[int]) -> None:
        pass  # the watermark waits for enriched.tcp's partitions only

    def drop_partitions(self, partitions: Iterable[int]) -> int:
        return self.aggregator.drop_partitions([DROPS_PARTITION_BASE + p for p in partitions])
