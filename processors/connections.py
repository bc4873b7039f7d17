"""One in-memory aggregation of enriched TCP records per (source partition, event-time window).

Pure logic, no I/O. Every published metric family (latency, cost, pair totals) is a roll-up of
the same fine-grained cells, so a record is touched once on the hot path (one dict lookup, a
few additions, two sketch inserts) and the roll-ups happen once per window close.

Rules (the window bookkeeping and watermark are processors/windows.py, shared with DNS):

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

from dataclasses import dataclass, field

from flowscope.records import EnrichedTcpConnection
from processors import windows
from processors.sketch import QuantileSketch
from processors.windows import PartitionWindows

# Outcomes counted as failed connections. reset_locally/abandoned/aborted are the
# application's or an operator's doing, not the network's: listed in outcomes, not failures.
FAILURE_OUTCOMES = frozenset({"refused", "timed_out", "reset_by_peer", "unreachable", "error"})
# Ends we run (and pay for): the others are outside the cluster.
IN_CLUSTER = frozenset({"pod", "host", "node"})


@dataclass(frozen=True, slots=True)
class CellKey:
    client_workload: str
    server_workload: str
    service: str | None
    client_zone: str | None
    server_zone: str | None
    peer_class: str
    client_in_cluster: bool
    server_in_cluster: bool


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


# One partition's cells of one window, handed out once when the window closes.
ClosedWindow = windows.ClosedWindow[CellKey, Cell]


class ConnectionAggregator(PartitionWindows[EnrichedTcpConnection, CellKey, Cell]):
    """Tumbling windows of ``window_ns`` per partition, closed ``grace_ns`` after their end."""

    def add(self, partition: int, record: EnrichedTcpConnection) -> int | None:
        """Aggregate one record. Returns the start of the window it went into, or None when it
        was skipped (duplicate end, or late). Raises InvalidRecord and changes nothing if the
        record is unusable."""
        latency = record.connect_latency_us
        if (
            record.bytes_client_to_server < 0
            or record.bytes_server_to_client < 0
            or record.srtt_us < 0
            or record.retrans_segs < 0
            or record.segs_out < 0
            or (latency is not None and latency < 0)
        ):
            raise self._reject(
                "negative volume or time: "
                f"c2s={record.bytes_client_to_server} s2c={record.bytes_server_to_client} "
                f"srtt_us={record.srtt_us} retrans_segs={record.retrans_segs} "
                f"segs_out={record.segs_out} connect_latency_us={latency}"
            )
        duplicate = record.observer_role != "client" and record.client_observed
        window = self._cells(partition, record.end_time_ns, duplicate)
        if window is None:
            return None
        start, cells = window
        client, server = record.client, record.server
        key = CellKey(
            client.workload_key(),
            server.workload_key(),
            server.service,
            client.zone,
            server.zone,
            record.peer_class,
            client.attribution in IN_CLUSTER,
            server.attribution in IN_CLUSTER,
        )
        cell = cells.get(key)
        if cell is None:
            cell = cells[key] = Cell(
                client.namespace,
                server.namespace,
                QuantileSketch(self.alpha),
                QuantileSketch(self.alpha),
            )
        cell.bytes_client_to_server += record.bytes_client_to_server
        cell.bytes_server_to_client += record.bytes_server_to_client
        cell.retrans_segs += record.retrans_segs
        cell.segs_out += record.segs_out
        # Only the client measures SYN -> established; it is reported on the first record.
        if latency is not None and record.sequence == 0 and record.observer_role == "client":
            cell.connect_sketch.add(latency)
        if not record.interim:
            cell.connections += 1
            outcomes = cell.outcomes
            outcomes[record.outcome] = outcomes.get(record.outcome, 0) + 1
            if record.srtt_us > 0:  # 0: never established, no RTT sample
                cell.rtt_sketch.add(record.srtt_us)
        return self._counted(partition, start)
