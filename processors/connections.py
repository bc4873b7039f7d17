"""One in-memory aggregation of enriched TCP records per (source partition, event-time window).

Pure logic, no I/O. Every published metric family (latency, cost, pair totals) is a roll-up of
the same fine-grained cells, so a record is touched once on the hot path (one dict lookup, a
few additions, two sketch inserts) and the roll-ups happen once per window close.

Rules (see also processors/pairs.py, whose watermark this reuses):

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

from collections.abc import Iterable
from dataclasses import dataclass, field

from flowscope.records import EnrichedTcpConnection
from processors.pairs import AggregatorCounters, InvalidRecord
from processors.sketch import DEFAULT_ALPHA, QuantileSketch

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


@dataclass(frozen=True)
class ClosedWindow:
    """One partition's cells of one window, handed out once when the window closes."""

    partition: int
    start_ns: int
    end_ns: int
    cells: dict[CellKey, Cell]


@dataclass
class ConnectionCounters(AggregatorCounters):
    dropped_on_revoke: int = 0  # counted records discarded because their partition moved

    def as_dict(self) -> dict[str, int]:
        return {**super().as_dict(), "dropped_on_revoke": self.dropped_on_revoke}


class ConnectionAggregator:
    """Tumbling windows of ``window_ns`` per partition, closed ``grace_ns`` after their end."""

    def __init__(self, window_ns: int, grace_ns: int, alpha: float = DEFAULT_ALPHA) -> None:
        if window_ns <= 0:
            raise ValueError(f"window must be positive, got {window_ns} ns")
        if grace_ns < 0:
            raise ValueError(f"grace must be >= 0, got {grace_ns} ns")
        self.window_ns = window_ns
        self.grace_ns = grace_ns
        self.alpha = alpha
        self.counters = ConnectionCounters()
        # (partition, window start) -> cells; open windows only.
        self._open: dict[tuple[int, int], dict[CellKey, Cell]] = {}
        self._records_in: dict[tuple[int, int], int] = {}
        self._watermark_ns: int | None = None

    @property
    def watermark_ns(self) -> int | None:
        return self._watermark_ns

    def open_windows(self) -> list[tuple[int, int]]:
        return sorted(self._open)

    def pending_records(self) -> int:
        """Counted records in windows not published yet."""
        return sum(self._records_in.values())

    def is_closed(self, window_start_ns: int) -> bool:
        return (
            self._watermark_ns is not None
            and window_start_ns + self.window_ns + self.grace_ns <= self._watermark_ns
        )

    def add(self, partition: int, record: EnrichedTcpConnection) -> int | None:
        """Aggregate one record. Returns the start of the window it went into, or None when it
        was skipped (duplicate end, or late). Raises InvalidRecord and changes nothing if the
        record is unusable."""
        counters = self.counters
        latency = record.connect_latency_us
        if (
            record.bytes_client_to_server < 0
            or record.bytes_server_to_client < 0
            or record.srtt_us < 0
            or record.retrans_segs < 0
            or record.segs_out < 0
            or (latency is not None and latency < 0)
        ):
            counters.rejected += 1
            raise InvalidRecord(
                "negative volume or time: "
                f"c2s={record.bytes_client_to_server} s2c={record.bytes_server_to_client} "
                f"srtt_us={record.srtt_us} retrans_segs={record.retrans_segs} "
                f"segs_out={record.segs_out} connect_latency_us={latency}"
            )
        counters.records += 1
        if record.observer_role != "client" and record.client_observed:
            counters.duplicates_skipped += 1
            return None
        end = record.end_time_ns
        start = end - end % self.window_ns
        if self.is_closed(start):
            counters.late_dropped += 1
            return None
        slot = (partition, start)
        cells = self._open.get(slot)
        if cells is None:
            cells = self._open[slot] = {}
            self._records_in[slot] = 0
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
        self._records_in[slot] += 1
        counters.counted += 1
        return start

    def close_ready(self, watermark_ns: int) -> list[ClosedWindow]:
        """Every open (partition, window) with ``end + grace <= watermark``, oldest first.
        The watermark never goes backwards, so a window is handed out at most once."""
        if self._watermark_ns is None or watermark_ns > self._watermark_ns:
            self._watermark_ns = watermark_ns
        ready = sorted(
            (slot for slot in self._open if self.is_closed(slot[1])), key=lambda s: (s[1], s[0])
        )
        closed = []
        for slot in ready:
            cells = self._open.pop(slot)
            del self._records_in[slot]
            self.counters.windows_closed += 1
            closed.append(ClosedWindow(slot[0], slot[1], slot[1] + self.window_ns, cells))
        return closed

    def drop_partitions(self, partitions: Iterable[int]) -> int:
        """Forget the open windows of partitions this worker no longer owns; returns how many
        counted records were discarded (the new owner re-reads them: they were not acked)."""
        gone = set(partitions)
        dropped = 0
        for slot in [s for s in self._open if s[0] in gone]:
            del self._open[slot]
            dropped += self._records_in.pop(slot)
        self.counters.dropped_on_revoke += dropped
        return dropped


class PartitionWatermark:
    """Event-time progress over the partitions this worker owns.

    ``max(min over owned partitions of the newest event time seen, now - idle_allowance)``,
    event times clamped to ``now``. Why the minimum: after a restart or a rebalance the
    partitions' backlogs are read in chunks, one partition ahead of another; a watermark
    driven by the fastest partition would make the slower ones' records late. Until every
    owned partition has delivered a record, only the wall-clock term moves it. The idle
    allowance is therefore also the longest lag (restart, quiet partition) tolerated before
    records count as late. Without an assignment (unit tests) the partitions seen are used.
    """

    def __init__(self, idle_allowance_ns: int) -> None:
        if idle_allowance_ns < 0:
            raise ValueError(f"idle allowance must be >= 0, got {idle_allowance_ns} ns")
        self.idle_allowance_ns = idle_allowance_ns
        self._newest: dict[int, int] = {}
        self._owned: set[int] | None = None

    def observe(self, partition: int, event_time_ns: int) -> None:
        if event_time_ns > self._newest.get(partition, -1):
            self._newest[partition] = event_time_ns

    def assign(self, partitions: Iterable[int]) -> None:
        self._owned = set(partitions)

    def revoke(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self._newest.pop(p, None)
            if self._owned is not None:
                self._owned.discard(p)

    def current(self, now_ns: int) -> int:
        idle = now_ns - self.idle_allowance_ns
        owned = self._owned if self._owned is not None else set(self._newest)
        if not owned or any(p not in self._newest for p in owned):
            return idle
        slowest = min(self._newest[p] for p in owned)
        return max(min(slowest, now_ns), idle)
