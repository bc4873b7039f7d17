"""The exporter's exposition, read back with Prometheus' own text parser
(prometheus_client.parser): series equal the records, cardinality is bounded."""

from __future__ import annotations

from consumers_records import T0, S, health
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from test_consumers_top import _latency

from consumers.exporter import MetricState, StateCollector
from flowscope.records import AlertEvent, CostPairMetric
from processors.core.sketch import Sketch


def _scrape(state: MetricState) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    registry = CollectorRegistry()
    registry.register(StateCollector(state))
    text = generate_latest(registry).decode()
    out: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return out


def _cost(mid: str, src: str, usd: float, nbytes: int) -> CostPairMetric:
    return CostPairMetric(
        metric_id=mid,
        window_start_ns=T0,
        window_end_ns=T0 + 10 * S,
        source_partition=0,
        source_workload=f"shop/Deployment/{src}",
        destination_workload="shop/Deployment/db",
        source_namespace="shop",
        destination_namespace="shop",
        source_zone="a",
        destination_zone="b",
        cost_class="cross_zone",
        priced=True,
        cloud="aws",
        connections=1,
        bytes_source_to_destination=nbytes,
        bytes_destination_to_source=0,
        cost_usd=usd,
        cost_usd_source=usd / 2,
        cost_usd_destination=usd / 2,
    )


def test_series_equal_the_records_and_other_takes_the_rest() -> None:
    state = MetricState(top_n=2)
    records = [
        _latency("1", "fe", "cat", 10, 1, [1000.0] * 10, partition=0),
        _latency("2", "fe", "cat", 6, 0, [3000.0] * 6, partition=1),  # same window, merged
        _latency("1", "fe", "cat", 10, 1, [1000.0] * 10, partition=0),  # republished: dropped
        _latency("3", "fe", "pay", 4, 4, [500.0] * 4),
        _latency("4", "fe", "ledger", 7, 2, [100.0] * 7),  # third pair: into other
        _latency("5", "fe", "audit", 3, 0, [100.0] * 3),  # fourth: into other
    ]
    for r in records:
        state.add("t.metrics.tcp.latency", r)
    for i in range(3):
        state.add("t.metrics.cost.pairs", _cost(f"c{i}", f"src{i}", 0.01 * (i + 1), 1000 * i))
    state.add(
        "t.alerts",
        AlertEvent(
            alert_id="e1",
            status="firing",
            rule="connect-failure-rate",
            severity="warning",
            metric="m",
            group={},
            affected_workloads=[],
            threshold=0.05,
            evidence=[],
            window_start_ns=T0,
            window_end_ns=T0,
            time_ns=T0,
        ),
    )
    got = _scrape(state)

    def pair(server: str) -> tuple[tuple[str, str], ...]:
        return (
            ("client_workload", "shop/Deployment/fe"),
            ("server_workload", f"shop/Deployment/{server}"),
            ("service", ""),
        )

    other = (("client_workload", "other"), ("server_workload", "other"), ("service", "other"))
    conns = got["flowscope_tcp_connections_total"]
    assert conns == {pair("cat"): 16.0, pair("pay"): 4.0, other: 10.0}
    assert got["flowscope_tcp_failed_connections_total"] == {
        pair("cat"): 1.0,
        pair("pay"): 4.0,
        other: 2.0,
    }
    merged = Sketch.from_dict(records[0].connect_latency_sketch or {})
    merged.merge(Sketch.from_dict(records[1].connect_latency_sketch or {}))
    p99 = got["flowscope_tcp_connect_latency_p99_seconds"]
    assert p99[pair("cat")] == (merged.quantile(0.99) or 0) / 1e6
    assert other not in p99
    usd = got["flowscope_transfer_cost_usd_total"]
    assert len(usd) == 3 and abs(sum(usd.values()) - 0.06) < 1e-12
    assert got["flowscope_exporter_folded_keys"][(("family", "tcp"),)] == 2.0
    assert got["flowscope_exporter_duplicates_total"][()] == 1.0
    assert got["flowscope_alerts_firing"] == {
        (("rule", "connect-failure-rate"), ("severity", "warning")): 1.0
    }


def test_the_grafana_dashboard_queries_only_series_the_exporter_has() -> None:
    import json
    import re
    from pathlib import Path

    dashboard = json.loads(
        (Path(__file__).resolve().parents[3] / "grafana" / "flowscope.json").read_text()
    )
    state = MetricState(top_n=5)
    state.add("t.metrics.tcp.latency", _latency("1", "fe", "cat", 1, 0, [1.0]))
    state.add("t.metrics.cost.pairs", _cost("c", "fe", 0.5, 10))
    state.add("t.metrics.path.health", health("p", "zone", "a", "b", rtts_us=[100.0]))
    names = set(_scrape(state)) | {  # families without a record here (no samples)
        "flowscope_dns_failed_total",
        "flowscope_dns_judged_queries_total",
        "flowscope_alerts_firing",
    }
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"flowscope_[a-z0-9_]+", target["expr"])
    }
    assert used and used <= names, used - names


def test_path_series_equal_the_records_top_n_per_scope() -> None:
    state = MetricState(top_n=2)
    zone = [
        health(
            "z1",
            "zone",
            "a",
            "b",
            conns=10,
            failures={"refused": 2},
            resets=1,
            syn=3,
            retrans=5,
            segs=100,
            rtts_us=[1000.0] * 10,
        ),
        health(
            "z2",
            "zone",
            "a",
            "b",
            conns=6,
            syn=1,
            retrans=2,
            segs=50,
            dropped=3,
            rtts_us=[4000.0] * 6,
            partition=1,
        ),  # same window, other partition: merged
        health("z3", "zone", "a", "b", conns=1, rtts_us=[9.0], start_ns=T0 - 10 * S),  # older
    ]
    nodes = [
        health(
            f"n{i}",
            "node",
            f"n{i}",
            "n9",
            conns=i + 1,
            failures={"reset": 1},
            rtts_us=[10.0 * (i + 1)],
        )
        for i in range(5)
    ]
    for r in [*nodes, *zone, zone[0]]:  # zone paths after many node paths; one republished
        state.add("t.metrics.path.health", r)
    got = _scrape(state)

    def path(scope: str, src: str, dst: str) -> tuple[tuple[str, str], ...]:
        return (("destination", dst), ("scope", scope), ("source", src))

    conns = got["flowscope_path_connections_total"]
    assert conns == {
        path("zone", "a", "b"): 17.0,
        path("node", "n0", "n9"): 1.0,
        path("node", "n1", "n9"): 2.0,
        path("node", "other", "other"): 3.0 + 4.0 + 5.0,
    }
    ab = path("zone", "a", "b")
    assert got["flowscope_path_failed_connections_total"][ab] == 2.0
    assert got["flowscope_path_failed_connections_total"][path("node", "other", "other")] == 3.0
    assert got["flowscope_path_resets_total"][ab] == 1.0
    assert got["flowscope_path_syn_retransmits_total"][ab] == 4.0
    assert got["flowscope_path_retransmitted_segments_total"][ab] == 7.0
    assert got["flowscope_path_segments_sent_total"][ab] == 100.0 + 50.0 + 100.0
    assert got["flowscope_path_dropped_packets_total"][ab] == 3.0
    newest = Sketch.from_dict(zone[0].rtt_sketch or {})
    newest.merge(Sketch.from_dict(zone[1].rtt_sketch or {}))
    assert got["flowscope_path_rtt_p99_seconds"][ab] == (newest.quantile(0.99) or 0) / 1e6
    assert got["flowscope_path_rtt_p50_seconds"][ab] == (newest.quantile(0.5) or 0) / 1e6
    assert path("node", "other", "other") not in got["flowscope_path_rtt_p99_seconds"]
    folded = got["flowscope_exporter_folded_keys"]
    assert folded[(("family", "path_node"),)] == 3.0
    assert folded[(("family", "path_zone"),)] == 0.0
