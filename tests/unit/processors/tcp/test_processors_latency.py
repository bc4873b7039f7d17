"""Latency per (client, server, service): outcomes, percentiles, retransmissions, interims."""

from __future__ import annotations

import math
import random

import msgspec
from processors_records import T0, S, conn, pod

from processors.core.sketch import QuantileSketch
from processors.tcp.connections import ConnectionAggregator
from processors.tcp.latency import latency_metrics

W = 10 * S
ALPHA = 0.01


def exact(values: list[int], q: float) -> int:
    return sorted(values)[math.floor(q * (len(values) - 1))]


def test_percentiles_outcomes_and_retransmissions_per_service() -> None:
    rng = random.Random(3)
    agg = ConnectionAggregator(W, 0, ALPHA)
    web, api = pod("web", "z-a"), pod("api", "z-b", service="api")
    latencies, rtts = [], []
    outcomes = {"closed": 0, "refused": 0, "timed_out": 0, "reset_by_peer": 0, "reset_locally": 0}
    retrans = segs = 0
    for _ in range(2000):
        outcome = rng.choice(list(outcomes))
        established = outcome not in ("refused", "timed_out")
        lat = rng.randrange(50, 90_000) if established else None
        rtt = rng.randrange(20, 5_000) if established else 0
        r, s_ = rng.randrange(0, 3), rng.randrange(3, 40)
        outcomes[outcome] += 1
        retrans, segs = retrans + r, segs + s_
        if lat is not None:
            latencies.append(lat)
            rtts.append(rtt)
        for role in ("client", "server"):  # the server copy must not count
            agg.add(
                0,
                conn(
                    T0 + rng.randrange(W),
                    web,
                    api,
                    role=role,
                    latency_us=lat,
                    srtt_us=rtt,
                    outcome=outcome,
                    retrans_segs=r,
                    segs_out=s_,
                ),
            )
    [window] = agg.close_ready(T0 + 100 * S)
    [m] = latency_metrics(window)
    assert (m.client_workload, m.server_workload, m.service) == (
        "shop/Deployment/web",
        "shop/Deployment/api",
        "api",
    )
    assert m.connections == 2000
    assert m.outcomes == {k: v for k, v in sorted(outcomes.items()) if v}
    failed = outcomes["refused"] + outcomes["timed_out"] + outcomes["reset_by_peer"]
    assert m.failed_connections == failed  # reset_locally is the application's choice
    assert m.failure_rate == failed / 2000
    assert (m.retrans_segs, m.segs_out, m.retransmission_rate) == (retrans, segs, retrans / segs)
    for q, got, values in (
        (0.5, m.connect_latency_p50_us, latencies),
        (0.9, m.connect_latency_p90_us, latencies),
        (0.99, m.connect_latency_p99_us, latencies),
        (0.5, m.rtt_p50_us, rtts),
        (0.9, m.rtt_p90_us, rtts),
        (0.99, m.rtt_p99_us, rtts),
    ):
        want = exact(values, q)
        assert got is not None and abs(got - want) <= ALPHA * want * (1 + 1e-9), (q, got, want)
    assert m.connect_latency_sketch is not None and m.rtt_sketch is not None
    assert QuantileSketch.from_dict(m.connect_latency_sketch).count == len(latencies)
    assert QuantileSketch.from_dict(m.rtt_sketch).count == len(rtts)
    assert m.metric_id == f"tcp.latency|{T0}|0|shop/Deployment/web|shop/Deployment/api|api"


def test_interim_records_add_volumes_but_count_the_connection_once() -> None:
    agg = ConnectionAggregator(W, 0)
    web, api = pod("web", "z-a"), pod("api", "z-a")
    agg.add(
        0,
        conn(
            T0 + 1,
            web,
            api,
            interim=True,
            sequence=0,
            outcome="open",
            latency_us=300,
            c2s=10,
            retrans_segs=1,
            segs_out=5,
        ),
    )
    agg.add(
        0,
        conn(
            T0 + 2,
            web,
            api,
            interim=True,
            sequence=1,
            outcome="open",
            latency_us=300,
            c2s=20,
            segs_out=5,
        ),
    )
    agg.add(
        0,
        conn(
            T0 + 3,
            web,
            api,
            sequence=2,
            outcome="closed",
            latency_us=300,
            c2s=30,
            srtt_us=150,
            segs_out=10,
        ),
    )
    [window] = agg.close_ready(T0 + 100 * S)
    [m] = latency_metrics(window)
    assert (m.connections, m.outcomes, m.retrans_segs, m.segs_out) == (1, {"closed": 1}, 1, 20)
    assert m.connect_latency_sketch is not None and m.connect_latency_sketch["count"] == 1
    assert m.rtt_sketch is not None and m.rtt_sketch["count"] == 1
    assert m.retransmission_rate == 1 / 20


def test_partitions_are_published_apart_with_distinct_ids() -> None:
    agg = ConnectionAggregator(W, 0)
    web, api = pod("web", "z-a"), pod("api", "z-a")
    agg.add(0, conn(T0, web, api))
    agg.add(3, conn(T0, web, api))
    ids = [m.metric_id for w in agg.close_ready(T0 + 100 * S) for m in latency_metrics(w)]
    assert len(ids) == len(set(ids)) == 2


def test_connect_timeouts_are_failures_and_cancelled_connects_are_not() -> None:
    agg = ConnectionAggregator(W, 0)
    web, api = pod("web", "z-a"), pod("api", "z-b", service="api")
    ends = ["connect_timeout"] * 3 + ["cancelled"] * 2 + ["timed_out"] + ["closed"] * 4
    for i, outcome in enumerate(ends):
        established = outcome == "closed"
        agg.add(
            0,
            conn(
                T0 + i,
                web,
                api,
                outcome=outcome,
                latency_us=400 if established else None,
                srtt_us=100 if established else 0,
            ),
        )
    [window] = agg.close_ready(T0 + 100 * S)
    [m] = latency_metrics(window)
    assert m.outcomes == {"cancelled": 2, "closed": 4, "connect_timeout": 3, "timed_out": 1}
    # The application's connect timeouts fail like the kernel's; cancelled connects do not.
    assert (m.connections, m.failed_connections, m.failure_rate) == (10, 4, 0.4)


def test_a_record_of_another_schema_version_is_rejected_not_counted() -> None:
    agg = ConnectionAggregator(W, 0)
    good = conn(T0 + 1, pod("web", "zone-a"), pod("db", "zone-b"), c2s=10)
    other = msgspec.structs.replace(good, schema_version=2)
    result = agg.add_batch(0, [other, good])
    assert [reason for _, reason in result.rejected] == [
        "EnrichedTcpConnection: unsupported schema version schema_version=2 "
        "(these processors read schema_version=1)"
    ]
    assert (agg.counters.rejected, agg.counters.counted) == (1, 1)
