from __future__ import annotations

import math
import random

import pytest

from flowscope.records import Endpoint, EnrichedTcpConnection, Role, TcpPairMetric
from processors.pairs import AddOutcome, InvalidRecord, Watermark, WindowedPairAggregator
from processors.sketch import QuantileSketch

S = 1_000_000_000
WINDOW = 10 * S
GRACE = 5 * S
T0 = 1_700_000_000 * S  # a multiple of the window


def endpoint(workload: str, zone: str | None, namespace: str = "shop") -> Endpoint:
    return Endpoint(
        address="10.0.0.1",
        port=8080,
        attribution="pod",
        namespace=namespace,
        workload_kind="Deployment",
        workload_name=workload,
        zone=zone,
    )


def record(
    end_ns: int,
    *,
    role: Role = "client",
    client_observed: bool = True,
    client: str = "web",
    server: str = "db",
    c2s: int = 100,
    s2c: int = 1000,
    latency_us: int | None = 250,
    client_zone: str | None = "zone-a",
    server_zone: str | None = "zone-b",
) -> EnrichedTcpConnection:
    return EnrichedTcpConnection(
        start_time_ns=end_ns - 1000,
        end_time_ns=end_ns,
        observer_node="node-1",
        observer_role=role,
        client_observed=client_observed,
        network_type="ipv4",
        client=endpoint(client, client_zone),
        server=endpoint(server, server_zone),
        bytes_client_to_server=c2s,
        bytes_server_to_client=s2c,
        connect_latency_us=latency_us,
        srtt_us=100,
        retrans_segs=0,
        peer_class="cross_zone" if client_zone != server_zone else "same_zone",
    )


def agg() -> WindowedPairAggregator:
    return WindowedPairAggregator(WINDOW, GRACE)


def only(metrics: list[TcpPairMetric]) -> TcpPairMetric:
    assert len(metrics) == 1, metrics
    return metrics[0]


def test_client_side_counts_and_server_side_duplicate_is_skipped() -> None:
    a = agg()
    assert a.add(record(T0 + 1, role="client", c2s=10, s2c=20)) is AddOutcome.COUNTED
    # The server's view of the same connection: same bytes, no latency.
    assert (
        a.add(record(T0 + 2, role="server", c2s=10, s2c=20, latency_us=None))
        is AddOutcome.DUPLICATE
    )
    m = only(a.close_ready(T0 + WINDOW + GRACE))
    assert (m.connections, m.bytes_client_to_server, m.bytes_server_to_client) == (1, 10, 20)
    assert a.counters.as_dict() == {
        "records": 2,
        "rejected": 0,
        "counted": 1,
        "duplicates_skipped": 1,
        "late_dropped": 0,
        "windows_closed": 1,
        "metrics_published": 1,
    }


def test_server_side_counts_when_client_is_not_observed() -> None:
    a = agg()
    out = a.add(record(T0 + 1, role="server", client_observed=False, latency_us=None))
    assert out is AddOutcome.COUNTED
    # Unknown observer side follows the same rule as the server side.
    assert a.add(record(T0 + 2, role="unknown", client_observed=False)) is AddOutcome.COUNTED
    assert a.add(record(T0 + 3, role="unknown", client_observed=True)) is AddOutcome.DUPLICATE
    m = only(a.close_ready(T0 + WINDOW + GRACE))
    assert m.connections == 2
    # Latency comes only from client-side records: none here.
    assert m.connect_latency_p50_us is None
    assert m.connect_latency_p99_us is None
    assert m.connect_latency_sketch is None


def test_latency_only_from_client_records_with_a_value() -> None:
    a = agg()
    a.add(record(T0 + 1, latency_us=100))
    a.add(record(T0 + 2, latency_us=None))
    a.add(record(T0 + 3, role="server", client_observed=False, latency_us=99_999))
    m = only(a.close_ready(T0 + WINDOW + GRACE))
    assert m.connections == 3
    assert m.connect_latency_sketch is not None
    sketch = QuantileSketch.from_dict(m.connect_latency_sketch)
    assert sketch.count == 1
    assert m.connect_latency_p50_us == pytest.approx(100, rel=0.01)
    assert m.connect_latency_p99_us == pytest.approx(100, rel=0.01)


def test_window_assignment_at_boundaries() -> None:
    a = agg()
    a.add(record(T0, c2s=1))  # first ns of window 0
    a.add(record(T0 + WINDOW - 1, c2s=2))  # last ns of window 0
    a.add(record(T0 + WINDOW, c2s=4))  # first ns of window 1
    assert a.open_windows() == [T0, T0 + WINDOW]
    metrics = a.close_ready(T0 + 2 * WINDOW + GRACE)
    assert [(m.window_start_ns, m.window_end_ns, m.bytes_client_to_server) for m in metrics] == [
        (T0, T0 + WINDOW, 3),
        (T0 + WINDOW, T0 + 2 * WINDOW, 4),
    ]


def test_window_closes_exactly_at_end_plus_grace() -> None:
    a = agg()
    a.add(record(T0 + 5))
    assert a.close_ready(T0 + WINDOW) == []
    assert a.close_ready(T0 + WINDOW + GRACE - 1) == []
    # Within grace a record for the still-open window counts.
    assert a.add(record(T0 + 6)) is AddOutcome.COUNTED
    m = only(a.close_ready(T0 + WINDOW + GRACE))
    assert m.connections == 2
    assert a.open_windows() == []
    # Published once: closing again yields nothing.
    assert a.close_ready(T0 + WINDOW + GRACE + 1) == []


def test_late_record_is_counted_as_dropped_and_never_republished() -> None:
    a = agg()
    a.add(record(T0 + 1))
    assert len(a.close_ready(T0 + WINDOW + GRACE)) == 1
    assert a.add(record(T0 + 2)) is AddOutcome.LATE
    # Lateness does not need the window to have had data.
    assert a.add(record(T0 - WINDOW)) is AddOutcome.LATE
    # The next window is still open and counts.
    assert a.add(record(T0 + WINDOW)) is AddOutcome.COUNTED
    assert a.close_ready(T0 + WINDOW + GRACE + 1) == []
    assert a.counters.late_dropped == 2
    assert a.open_windows() == [T0 + WINDOW]


def test_watermark_never_goes_backwards() -> None:
    a = agg()
    a.add(record(T0 + 1))
    a.close_ready(T0 + WINDOW + GRACE)
    assert a.close_ready(T0) == []
    assert a.watermark_ns == T0 + WINDOW + GRACE
    assert a.add(record(T0 + 3)) is AddOutcome.LATE


def test_one_metric_per_pair_with_zones_and_classes() -> None:
    a = agg()
    a.add(record(T0 + 1, client="web", server="db", client_zone="a", server_zone="b"))
    a.add(record(T0 + 2, client="web", server="db", client_zone="c", server_zone="b"))
    a.add(record(T0 + 3, client="web", server="cache", client_zone="a", server_zone="a"))
    a.add(record(T0 + 4, client="web", server="cache", client_zone=None, server_zone=None))
    metrics = a.close_ready(T0 + WINDOW + GRACE)
    by_server = {m.server_workload: m for m in metrics}
    assert len(metrics) == 2
    db = by_server["shop/Deployment/db"]
    assert db.client_workload == "shop/Deployment/web"
    assert (db.client_namespace, db.server_namespace) == ("shop", "shop")
    assert db.client_zones == ["a", "c"] and db.server_zones == ["b"]
    assert db.peer_classes == ["cross_zone"]
    cache = by_server["shop/Deployment/cache"]
    assert cache.connections == 2
    assert cache.client_zones == ["a"] and cache.server_zones == ["a"]
    assert cache.peer_classes == ["same_zone"]


def test_random_stream_matches_exact_truth() -> None:
    """Totals per (pair, window) from a shuffled stream equal a direct computation."""
    rng = random.Random(11)
    a = agg()
    truth: dict[tuple[int, str, str], list[int]] = {}
    latencies: dict[tuple[int, str, str], list[int]] = {}
    records = []
    for _ in range(3000):
        end = T0 + rng.randrange(0, 5 * WINDOW)
        client, server = rng.choice(["web", "api"]), rng.choice(["db", "cache", "api"])
        c2s, s2c, lat = rng.randrange(0, 10_000), rng.randrange(0, 10_000), rng.randrange(1, 9000)
        key = (end - end % WINDOW, f"shop/Deployment/{client}", f"shop/Deployment/{server}")
        t = truth.setdefault(key, [0, 0, 0])
        t[0] += 1
        t[1] += c2s
        t[2] += s2c
        latencies.setdefault(key, []).append(lat)
        kw = {"client": client, "server": server, "c2s": c2s, "s2c": s2c}
        records.append(record(end, latency_us=lat, **kw))  # type: ignore[arg-type]
        records.append(record(end, role="server", latency_us=None, **kw))  # type: ignore[arg-type]
    rng.shuffle(records)
    for r in records:
        assert a.add(r) is not AddOutcome.LATE
    metrics = a.close_ready(T0 + 5 * WINDOW + GRACE)
    got = {(m.window_start_ns, m.client_workload, m.server_workload): m for m in metrics}
    assert len(got) == len(metrics) == len(truth)
    for key, (n, c2s, s2c) in truth.items():
        m = got[key]
        assert (m.connections, m.bytes_client_to_server, m.bytes_server_to_client) == (n, c2s, s2c)
        ordered = sorted(latencies[key])
        for q, value in ((0.5, m.connect_latency_p50_us), (0.99, m.connect_latency_p99_us)):
            want = ordered[math.floor(q * (len(ordered) - 1))]
            assert value is not None and abs(value - want) <= 0.01 * want * (1 + 1e-9)
    assert a.counters.duplicates_skipped == 3000
    assert a.counters.counted == 3000


@pytest.mark.parametrize(
    "bad",
    [{"c2s": -1}, {"s2c": -5}, {"latency_us": -3}],
)
def test_invalid_record_is_rejected_without_changing_state(bad: dict[str, int]) -> None:
    a = agg()
    a.add(record(T0 + 1))
    with pytest.raises(InvalidRecord, match="negative"):
        a.add(record(T0 + 2, **bad))  # type: ignore[arg-type]
    m = only(a.close_ready(T0 + WINDOW + GRACE))
    assert m.connections == 1
    assert (a.counters.records, a.counters.rejected) == (1, 1)


def test_invalid_configuration() -> None:
    with pytest.raises(ValueError, match="window"):
        WindowedPairAggregator(0, GRACE)
    with pytest.raises(ValueError, match="grace"):
        WindowedPairAggregator(WINDOW, -1)


def test_watermark_follows_newest_event_and_wall_clock_when_idle() -> None:
    w = Watermark(idle_allowance_ns=30 * S)
    now = T0 + 100 * S
    assert w.current(now) == now - 30 * S  # nothing seen: wall clock minus allowance
    w.observe(now - 2 * S)
    w.observe(now - 50 * S)  # older events do not move it back
    assert w.current(now) == now - 2 * S
    # Quiet stream: the wall-clock term takes over.
    assert w.current(now + 60 * S) == now + 30 * S


def test_watermark_ignores_future_clock_skew() -> None:
    w = Watermark(idle_allowance_ns=10 * S)
    now = T0
    w.observe(now + 3600 * S)  # a node whose clock is an hour ahead
    assert w.current(now) == now
