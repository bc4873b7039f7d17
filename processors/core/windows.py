"""Window bookkeeping shared by the TCP and DNS aggregators (pure, no I/O).

Both aggregate records per (source partition, tumbling event-time window) into cells; only
what a cell holds differs. This module keeps the part that is the same: window assignment,
the per-partition open windows and their record counts, lateness against the watermark, the
close (``end + grace <= watermark``, each window handed out once), dropping a revoked
partition's windows exactly, the counters, and the per-partition event-time watermark.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from flowscope import SCHEMA_VERSION
from processors import ProcessorsError
from processors.core.sketch import DEFAULT_ALPHA

R = TypeVar("R")  # the record aggregated
K = TypeVar("K")  # a cell key
C = TypeVar("C")  # a cell


class InvalidRecord(ProcessorsError, ValueError):
    """A record that decoded but cannot be aggregated (e.g. negative bytes or latency)."""


def unsupported_version(record_type: str, version: int) -> str:
    """The dead-letter reason of a record of another schema version: its fields may mean
    something else, so it is not counted as if it were ours."""
    return (
        f"{record_type}: unsupported schema version schema_version={version} "
        f"(these processors read schema_version={SCHEMA_VERSION})"
    )


@dataclass
class WindowCounters:
    """Every record given to an aggregator's ``add`` ends in exactly one of ``counted``,
    ``duplicates_skipped``, ``late_dropped`` (these three sum to ``records``) or ``rejected``
    (invalid, raised to the caller for dead-lettering)."""

    records: int = 0
    rejected: int = 0
    counted: int = 0
    duplicates_skipped: int = 0
    late_dropped: int = 0
    windows_closed: int = 0
    metrics_published: int = 0
    dropped_on_revoke: int = 0  # counted records discarded because their partition moved

    def as_dict(self) -> dict[str, int]:
        return {
            "records": self.records,
            "rejected": self.rejected,
            "counted": self.counted,
            "duplicates_skipped": self.duplicates_skipped,
            "late_dropped": self.late_dropped,
            "windows_closed": self.windows_closed,
            "metrics_published": self.metrics_published,
            "dropped_on_revoke": self.dropped_on_revoke,
        }


@dataclass
class BatchResult(Generic[R]):
    """What :meth:`PartitionWindows.add_batch` did with one message's records."""

    newest_start_ns: int | None = None  # newest window a record was counted in
    newest_event_ns: int = -1  # newest event time among the usable records (-1: none)
    rejected: list[tuple[R, str]] = field(default_factory=list)  # (record, reason)


@dataclass(frozen=True)
class ClosedWindow(Generic[K, C]):
    """One partition's cells of one window, handed out once when the window closes."""

    partition: int
    start_ns: int
    end_ns: int
    cells: dict[K, C]


class PartitionWindows(Generic[R, K, C]):
    """Tumbling windows of ``window_ns`` per partition, closed ``grace_ns`` after their end.

    Subclasses implement :meth:`add`: validate (raise :meth:`_reject` on an unusable record),
    then :meth:`_cells` for the record's window, update a cell, return :meth:`_counted`.
    """

    def __init__(self, window_ns: int, grace_ns: int, alpha: float = DEFAULT_ALPHA) -> None:
        if window_ns <= 0:
            raise ValueError(f"window must be positive, got {window_ns} ns")
        if grace_ns < 0:
            raise ValueError(f"grace must be >= 0, got {grace_ns} ns")
        self.window_ns = window_ns
        self.grace_ns = grace_ns
        self.alpha = alpha
        self.counters = WindowCounters()
        # (partition, window start) -> cells; open windows only.
        self._open: dict[tuple[int, int], dict[K, C]] = {}
        self._records_in: dict[tuple[int, int], int] = {}
        # The highest watermark given to close_ready: every window with
        # end + grace <= it has been handed out (or had nothing to hand out).
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

    def add(self, partition: int, record: R) -> int | None:
        """Aggregate one record. Returns the start of the window it went into, or None when it
        was skipped (duplicate end, or late). Raises InvalidRecord and changes nothing if the
        record is unusable."""
        raise NotImplementedError

    def add_batch(
        self, partition: int, records: Sequence[R], event_time: Callable[[R], int]
    ) -> BatchResult[R]:
        """Aggregate one message's records, each exactly as :meth:`add` would. Unusable
        records are returned with the reason instead of raised. Subclasses on a hot path
        override it with the same semantics and fewer Python calls per record."""
        result: BatchResult[R] = BatchResult()
        newest = None
        newest_event = -1
        for record in records:
            try:
                start = self.add(partition, record)
            except InvalidRecord as exc:
                result.rejected.append((record, str(exc)))
                continue
            t = event_time(record)
            if t > newest_event:
                newest_event = t
            if start is not None and (newest is None or start > newest):
                newest = start
        result.newest_start_ns = newest
        result.newest_event_ns = newest_event
        return result

    def _reject(self, reason: str) -> InvalidRecord:
        self.counters.rejected += 1
        return InvalidRecord(reason)

    def _cells(
        self, partition: int, event_time_ns: int, duplicate: bool
    ) -> tuple[int, dict[K, C]] | None:
        """The window start and open cells a valid record goes into, or None when it is
        skipped: ``duplicate`` (the other end counts it) or late (its window was handed out)."""
        counters = self.counters
        counters.records += 1
        if duplicate:
            counters.duplicates_skipped += 1
            return None
        start = event_time_ns - event_time_ns % self.window_ns
        if self.is_closed(start):
            counters.late_dropped += 1
            return None
        return start, self._open_cells(partition, start)

    def _open_cells(self, partition: int, start: int) -> dict[K, C]:
        """The cells of an open window (opened here, with no records yet, if new)."""
        slot = (partition, start)
        cells = self._open.get(slot)
        if cells is None:
            cells = self._open[slot] = {}
            self._records_in[slot] = 0
        return cells

    def _counted(self, partition: int, start: int) -> int:
        self._records_in[(partition, start)] += 1
        self.counters.counted += 1
        return start

    def close_ready(self, watermark_ns: int) -> list[ClosedWindow[K, C]]:
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
    Why not wall-clock time alone: then any uniform delay in the pipeline beyond ``grace``
    would make every record late; the clamp to ``now`` keeps a node whose clock runs ahead
    from closing everyone else's windows early.

    The wall-clock term is for partitions with nothing left to read. A partition with a
    backlog (:meth:`backlogged`: a restarted worker before its first fetch, or one catching
    up after an outage) holds the watermark at its newest event time: its unread records
    are delayed, not late, however long the outage was.
    """

    def __init__(self, idle_allowance_ns: int) -> None:
        if idle_allowance_ns < 0:
            raise ValueError(f"idle allowance must be >= 0, got {idle_allowance_ns} ns")
        self.idle_allowance_ns = idle_allowance_ns
        self._newest: dict[int, int] = {}
        self._owned: set[int] | None = None
        self._backlogged: set[int] = set()

    def observe(self, partition: int, event_time_ns: int) -> None:
        if event_time_ns > self._newest.get(partition, -1):
            self._newest[partition] = event_time_ns

    def assign(self, partitions: Iterable[int]) -> None:
        self._owned = set(partitions)

    def owned(self) -> list[int]:
        """The partitions assigned here (or seen, without an assignment)."""
        return sorted(self._owned if self._owned is not None else self._newest)

    def backlogged(self, partitions: Iterable[int]) -> None:
        """The owned partitions that have records not read yet (replaces the last set)."""
        self._backlogged = set(partitions)

    def revoke(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self._newest.pop(p, None)
            self._backlogged.discard(p)
            if self._owned is not None:
                self._owned.discard(p)

    def current(self, now_ns: int) -> int:
        idle = now_ns - self.idle_allowance_ns
        owned = self._owned if self._owned is not None else set(self._newest)
        if not owned or any(p not in self._newest for p in owned):
            floor = idle
        else:
            slowest = min(self._newest[p] for p in owned)
            floor = max(min(slowest, now_ns), idle)
        held = [self._newest.get(p, -1) for p in self._backlogged if p in owned]
        # -1 (a backlog not read at all): no window closes; the watermark never goes back.
        return min(floor, *held) if held else floor
