"""The shared window bookkeeping (processors/core/windows.py), through the TCP aggregator."""

from __future__ import annotations

import pytest
from processors_records import T0, S, conn, pod

from processors.core.windows import InvalidRecord, PartitionWatermark
from processors.tcp.connections import ConnectionAggregator
from processors.tcp.latency import pair_metrics

WINDOW = 10 * S
GRACE = 5 * S
WEB, DB = pod("web", "zone-a"), pod("db", "zone-b")


def agg() -> ConnectionAggregator:
    return ConnectionAggregator(WINDOW, GRACE)


def test_window_assignment_at_boundaries() -> None:
    a = agg()
    a.add(0, conn(T0, WEB, DB, c2s=1))  # first ns of window 0
    a.add(0, conn(T0 + WINDOW - 1, WEB, DB, c2s=2))  # last ns of window 0
    a.add(0, conn(T0 + WINDOW, WEB, DB, c2s=4))  # first ns of window 1
    assert a.open_windows() == [(0, T0), (0, T0 + WINDOW)]
    closed = a.close_ready(T0 + 2 * WINDOW + GRACE)
    got = [
        (w.start_ns, w.end_ns, p.bytes_client_to_server) for w in closed for p in pair_metrics(w)
    ]
    assert got == [(T0, T0 + WINDOW, 3), (T0 + WINDOW, T0 + 2 * WINDOW, 4)]


def test_window_closes_exactly_at_end_plus_grace_and_once() -> None:
    a = agg()
    a.add(0, conn(T0 + 5, WEB, DB))
    assert a.close_ready(T0 + WINDOW + GRACE - 1) == []
    # Within grace a record for the still-open window counts.
    assert a.add(0, conn(T0 + 6, WEB, DB)) == T0
    assert a.pending_records() == 2
    [window] = a.close_ready(T0 + WINDOW + GRACE)
    assert [p.connections for p in pair_metrics(window)] == [2]
    assert a.open_windows() == [] and a.pending_records() == 0
    assert a.close_ready(T0 + WINDOW + GRACE + 1) == []
    assert a.counters.windows_closed == 1


def test_late_records_are_counted_and_the_watermark_never_goes_backwards() -> None:
    a = agg()
    a.add(0, conn(T0 + 1, WEB, DB))
    a.close_ready(T0 + WINDOW + GRACE)
    assert a.close_ready(T0) == []
    assert a.watermark_ns == T0 + WINDOW + GRACE
    assert a.add(0, conn(T0 + 2, WEB, DB)) is None
    assert a.add(0, conn(T0 - WINDOW, WEB, DB)) is None  # its window never had data
    assert a.add(0, conn(T0 + WINDOW, WEB, DB)) == T0 + WINDOW
    c = a.counters
    assert (c.records, c.counted, c.late_dropped) == (4, 2, 2)


def test_revoked_partitions_are_dropped_exactly() -> None:
    a = agg()
    a.add(0, conn(T0 + 1, WEB, DB))
    a.add(1, conn(T0 + 2, WEB, DB))
    a.add(1, conn(T0 + WINDOW, WEB, DB))
    assert a.drop_partitions([1]) == 2
    assert a.open_windows() == [(0, T0)]
    assert a.counters.dropped_on_revoke == 2
    assert list(a.counters.as_dict())[-1] == "dropped_on_revoke"


def test_invalid_record_is_rejected_without_changing_state() -> None:
    a = agg()
    with pytest.raises(InvalidRecord, match="negative"):
        a.add(0, conn(T0 + 2, WEB, DB, c2s=-1))
    assert (a.counters.records, a.counters.rejected, a.open_windows()) == (0, 1, [])


def test_invalid_configuration() -> None:
    with pytest.raises(ValueError, match="window"):
        ConnectionAggregator(0, GRACE)
    with pytest.raises(ValueError, match="grace"):
        ConnectionAggregator(WINDOW, -1)
    with pytest.raises(ValueError, match="idle allowance"):
        PartitionWatermark(-1)


def test_watermark_follows_the_slowest_partition_and_wall_clock_when_idle() -> None:
    w = PartitionWatermark(idle_allowance_ns=30 * S)
    now = T0 + 100 * S
    assert w.current(now) == now - 30 * S  # nothing seen: wall clock minus allowance
    w.assign([0, 1])
    w.observe(0, now - 2 * S)
    assert w.current(now) == now - 30 * S  # partition 1 has delivered nothing yet
    w.observe(1, now - 20 * S)
    w.observe(1, now - 50 * S)  # older events do not move it back
    assert w.current(now) == now - 20 * S
    assert w.current(now + 60 * S) == now + 30 * S  # quiet stream: the wall clock takes over
    w.revoke([1])
    assert w.current(now) == now - 2 * S


def test_a_backlogged_partition_holds_the_watermark_past_the_idle_allowance() -> None:
    w = PartitionWatermark(idle_allowance_ns=30 * S)
    now = T0 + 100 * S
    w.assign([0, 1])
    w.backlogged([0, 1])  # a restarted worker before its first fetch
    assert w.current(now + 600 * S) == -1  # however long it waits: nothing closes
    w.observe(0, now - 300 * S)  # the backlog of an outage five minutes old
    w.observe(1, now - 2 * S)
    w.backlogged([0])
    assert w.current(now) == now - 300 * S  # held at the backlog's newest record
    w.backlogged([])  # read up to the end: the wall clock may close what is quiet
    assert w.current(now) == now - 30 * S
    w.backlogged([0])
    w.revoke([0])  # a revoked partition holds nothing
    assert w.current(now) == now - 2 * S


def test_watermark_ignores_future_clock_skew() -> None:
    w = PartitionWatermark(idle_allowance_ns=10 * S)
    w.observe(0, T0 + 3600 * S)  # a node whose clock is an hour ahead
    assert w.current(T0) == T0
