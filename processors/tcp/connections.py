"""One in-memory aggregation of enriched TCP records per (source partition, event-time window).

Pure logic, no I/O. Every published metric family (latency, cost, pair totals) is a roll-up of
the same fine-grained cells, so a record is touched once on the hot path (one dict lookup, a
few additions, two sketch inserts) and the roll-ups happen once per window close.

Rules (the window bookkeeping and watermark are processors/core/windows.py, shared with DNS):

- **Each connection once.** Client-side records count; a server-side (or unknown-side) record
  counts only when ``client_observed`` is False. Skipped records are ``duplicates_skipped``.
- **Interim records** (long connections reported every interval) carry volume *deltas*:
  bytes and segments are added from every record; the connection itself, its outcome and its
  RTT are counted from the final record; its connect latency from the first (sequence 0).
- **Per source partition.** State is kept apart per Kafka partition so that a partition taken
  away by a rebalance can be dropped exactly (its unacknowledged records are re-read by the
  new owner), and every published record names the partition it summarises.
- **Event time.** A record belongs to the window holding ``end_time_ns``; a window closes
  when the watermark passes ``end + grace``; later records for it are ``late_dropped``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import msgspec

from flowscope import SCHEMA_VERSION
from flowscope.records import Endpoint, EnrichedTcpConnection
from processors.core import windows
from processors.core.sketch import QuantileSketch
from processors.core.windows import (
    BatchResult,
    InvalidRecord,
    PartitionWindows,
    unsupported_version,
)

# Ends we run (and pay for): the others are outside the cluster.
IN_CLUSTER = frozenset({"pod", "host", "node"})


class CellKey(NamedTuple):
    """A cell's grouping. A tuple so that the hot path looks cells up with a plain tuple of
    the same fields (equal hash and equality, both in C) and builds a CellKey once per cell."""

    client_workload: str
    server_workload: str
    service: str | None
    client_zone: str | None
    server_zone: str | None
    peer_class: str
    client_in_cluster: bool
    server_in_cluster: bool
    # The server's DNS name (server.address) when the enricher named one; None otherwise.
    server_domain: str | None = None
    # The pod and node labels each end carried (as the enricher selected them), as sorted
    # (key, value) pairs: the cost roll-ups by label read them.
    client_labels: tuple[tuple[str, str], ...] = ()
    server_labels: tuple[tuple[str, str], ...] = ()
    client_node_labels: tuple[tuple[str, str], ...] = ()
    server_node_labels: tuple[tuple[str, str], ...] = ()
    client_region: str | None = None
    server_region: str | None = None


@dataclass(slots=True)
class Cell:
    client_namespace: str | None
    server_namespace: str | None
    connect_sketch: QuantileSketch
    rtt_sketch: QuantileSketch
    connections: int = 0
    bytes_client_to_server: int = 0
    bytes_server_to_client: int = 0
    retrans_segs: int = 0
    segs_out: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)


def _pairs(labels: dict[str, str] | None) -> tuple[tuple[str, str], ...]:
    # The enricher writes them sorted by key: equal selections give equal tuples.
    return tuple(labels.items()) if labels else ()


class PairRecord(Protocol):
    """What a cell is keyed by: enriched TCP connections and UDP flows both carry it."""

    @property
    def client(self) -> Endpoint: ...
    @property
    def server(self) -> Endpoint: ...
    @property
    def peer_class(self) -> str: ...
    @property
    def server_domain(self) -> str | msgspec.UnsetType: ...


def cell_key(record: PairRecord, in_cluster: frozenset[str] = IN_CLUSTER) -> tuple[Any, ...]:
    """A record's cell, as a plain tuple equal to its CellKey (built once per new cell)."""
    client, server = record.client, record.server
    return (
        client.workload_key(),
        server.workload_key(),
        server.service,
        client.zone,
        server.zone,
        record.peer_class,
        client.attribution in in_cluster,
        server.attribution in in_cluster,
        record.server_domain or None,  # UNSET is falsy
        _pairs(client.pod_labels),
        _pairs(server.pod_labels),
        _pairs(client.node_labels),
        _pairs(server.node_labels),
        client.region,
        server.region,
    )


# One partition's cells of one window, handed out once when the window closes.
ClosedWindow = windows.ClosedWindow[CellKey, Cell]


def _rejection(record: EnrichedTcpConnection) -> str:
    """The dead-letter reason of a record add_batch found unusable (its check is inline:
    it runs for every record)."""
    if record.schema_version != SCHEMA_VERSION:
        return unsupported_version(type(record).__name__, record.schema_version)
    return (
        "negative volume or time: "
        f"c2s={record.bytes_client_to_server} s2c={record.bytes_server_to_client} "
        f"srtt_us={record.srtt_us} retrans_segs={record.retrans_segs} "
        f"segs_out={record.segs_out} connect_latency_us={record.connect_latency_us}"
    )


class _BatchWindow:
    """One window as a batch sees it: its open cells and the records the batch counted."""

    __slots__ = ("cells", "counted")

    def __init__(self, cells: dict[CellKey, Cell]) -> None:
        self.cells = cells
        self.counted = 0


# The batch's stand-in for a window already handed out: its records are late.
_LATE = _BatchWindow({})


class ConnectionAggregator(PartitionWindows[EnrichedTcpConnection, CellKey, Cell]):
    """Tumbling windows of ``window_ns`` per partition, closed ``grace_ns`` after their end."""

    def add(self, partition: int, record: EnrichedTcpConnection) -> int | None:
        """Aggregate one record. Returns the start of the window it went into, or None when it
        was skipped (duplicate end, or late). Raises InvalidRecord and changes nothing if the
        record is unusable."""
        result = self.add_batch(partition, (record,))
        if result.rejected:
            raise InvalidRecord(result.rejected[0][1])
        return result.newest_start_ns

    def add_batch(
        self,
        partition: int,
        records: Sequence[EnrichedTcpConnection],
        event_time: Callable[[EnrichedTcpConnection], int] | None = None,
    ) -> BatchResult[EnrichedTcpConnection]:
        """One message's records, each exactly as the rules above say (and as the generic
        per-record path in processors/core/windows.py would count it), in one loop: the per-record
        cost is what bounds a worker's rate. The event time is ``end_time_ns``."""
        result: BatchResult[EnrichedTcpConnection] = BatchResult()
        counters = self.counters
        window_ns = self.window_ns
        alpha = self.alpha
        in_cluster = IN_CLUSTER
        version = SCHEMA_VERSION
        batch_windows: dict[int, _BatchWindow] = {}  # window start -> cells, or _LATE
        newest_event = -1
        seen = duplicates = late = 0
        try:
            for record in records:
                latency = record.connect_latency_us
                c2s = record.bytes_client_to_server
                s2c = record.bytes_server_to_client
                srtt = record.srtt_us
                retrans = record.retrans_segs
                segs = record.segs_out
                if (
                    record.schema_version != version
                    or c2s < 0
                    or s2c < 0
                    or srtt < 0
                    or retrans < 0
                    or segs < 0
                    or (latency is not None and latency < 0)
                ):
                    counters.rejected += 1
                    result.rejected.append((record, _rejection(record)))
                    continue
                seen += 1
                t = record.end_time_ns
                if t > newest_event:
                    newest_event = t
                role = record.observer_role
                if role != "client" and record.client_observed:
                    duplicates += 1
                    continue
                start = t - t % window_ns
                window = batch_windows.get(start)
                if window is None:
                    window = batch_windows[start] = self._batch_window(partition, start)
                if window is _LATE:
                    late += 1
                    continue
                client, server = record.client, record.server
                key = cell_key(record, in_cluster)
                cells = window.cells
                cell = cells.get(key)  # type: ignore[call-overload]  # a tuple equal to a CellKey
                if cell is None:
                    cell = cells[CellKey._make(key)] = Cell(
                        client.namespace,
                        server.namespace,
                        QuantileSketch(alpha),
                        QuantileSketch(alpha),
                    )
                cell.bytes_client_to_server += c2s
                cell.bytes_server_to_client += s2c
                cell.retrans_segs += retrans
                cell.segs_out += segs
                # Only the client measures SYN -> established; reported on the first record.
                if latency is not None and role == "client" and record.sequence == 0:
                    cell.connect_sketch.add(latency)
                if not record.interim:
                    cell.connections += 1
                    outcomes = cell.outcomes
                    outcome = record.outcome
                    outcomes[outcome] = outcomes.get(outcome, 0) + 1
                    if srtt > 0:  # 0: never established, no RTT sample
                        cell.rtt_sketch.add(srtt)
                window.counted += 1
        finally:
            # Applied even if a record broke the loop, so the counters match the cells.
            newest = None
            counted = 0
            for start, window in batch_windows.items():
                n = window.counted
                if not n:  # _LATE counts nothing
                    continue
                self._records_in[(partition, start)] += n
                counted += n
                if newest is None or start > newest:
                    newest = start
            counters.records += seen
            counters.duplicates_skipped += duplicates
            counters.late_dropped += late
            counters.counted += counted
        result.newest_start_ns = newest
        result.newest_event_ns = newest_event
        return result

    def _batch_window(self, partition: int, start: int) -> _BatchWindow:
        """A batch's handle on window ``start``: its open cells (opened here if new) and a
        count of the records the batch adds to it; ``_LATE`` if it was handed out."""
        if self.is_closed(start):
            return _LATE
        return _BatchWindow(self._open_cells(partition, start))
