"""``flowscope exporter`` scraped by a real Prometheus (built from its official source): the
series Prometheus stores equal the metric records of the same windows (service pairs and
network paths)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from consumers_records import health
from promhelp_consumers import PrometheusProcess
from test_consumers_top import _latency

from flowscope.codec import JsonCodec
from flowscope.kafka import RecordProducer, TopicSpec, ensure_topics
from flowscope.records import PathHealthMetric, TcpLatencyMetric
from flowscope.topics import Topics
from processors.core.sketch import Sketch

FLOWSCOPE = Path(sys.executable).parent / "flowscope"


def test_prometheus_scrapes_the_records_sums_and_quantiles(
    kafka_bootstrap: str, topics: Topics, prometheus: PrometheusProcess
) -> None:
    records = [
        _latency(str(i), "fe", f"srv{i % 3}", 5 + i, i % 2, [100.0 * (i + 1)] * 4, partition=i % 2)
        for i in range(9)
    ]
    ensure_topics(kafka_bootstrap, [TopicSpec(topics.metrics_tcp_latency, partitions=2)])
    producer = RecordProducer(kafka_bootstrap)
    codec = JsonCodec(TcpLatencyMetric)
    for r in [*records, records[0]]:  # the last one a republished window: counted once
        producer.produce(topics.metrics_tcp_latency, codec.encode(r), key=r.metric_id)
    # Paths: 4 node and 4 zone pairs, each in two partitions of one window.
    paths = [
        health(
            f"{scope}{i}",
            scope,
            f"{scope}-{i % 2}",
            f"{scope}-{i // 2 % 2}",
            conns=3 + i,
            failures={"refused": i % 2, "connect_timeout": i % 3},
            resets=i % 4,
            syn=i,
            retrans=2 * i,
            segs=50 + 10 * i,
            rtts_us=[200.0 * (i + 1)] * 3,
            partition=i // 4,
        )
        for scope in ("node", "zone")
        for i in range(8)
    ]
    ensure_topics(kafka_bootstrap, [TopicSpec(topics.metrics_path_health, partitions=2)])
    path_codec = JsonCodec(PathHealthMetric)
    for p in [*paths, paths[0]]:
        producer.produce(topics.metrics_path_health, path_codec.encode(p), key=p.metric_id)
    assert producer.flush(30) == 0
    exporter = subprocess.Popen(
        [
            str(FLOWSCOPE),
            "exporter",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--topic-prefix",
            topics.prefix,
            "--port",
            "0",
            "--host",
            "127.0.0.1",
            "--start",
            "earliest",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert exporter.stdout is not None
        match = re.search(r"http://127.0.0.1:(\d+)/metrics", exporter.stdout.readline())
        assert match
        prometheus.start(f"127.0.0.1:{match.group(1)}")

        want_conns: dict[str, float] = {}
        want_failed: dict[str, float] = {}
        merged: dict[str, Sketch] = {}
        for r in records:
            s = r.server_workload
            want_conns[s] = want_conns.get(s, 0) + r.connections
            want_failed[s] = want_failed.get(s, 0) + r.failed_connections
            assert r.connect_latency_sketch is not None
            sketch = Sketch.from_dict(r.connect_latency_sketch)
            if s in merged:
                merged[s].merge(sketch)
            else:
                merged[s] = sketch

        def by_server(expr: str) -> dict[str, float]:
            return {
                v["metric"]["server_workload"]: float(v["value"][1]) for v in prometheus.query(expr)
            }

        deadline = time.monotonic() + 90
        got: dict[str, float] = {}
        while time.monotonic() < deadline:
            got = by_server("flowscope_tcp_connections_total")
            if got == want_conns:
                break
            time.sleep(0.5)  # Prometheus scrapes each second: awaited by the values
        assert got == want_conns
        assert by_server("flowscope_tcp_failed_connections_total") == want_failed
        p99 = by_server("flowscope_tcp_connect_latency_p99_seconds")
        assert p99.keys() == merged.keys()
        for server, sketch in merged.items():  # one window: the newest is all of it
            q = sketch.quantile(0.99)
            assert q is not None
            assert p99[server] == pytest.approx(q / 1e6, rel=1e-12)
        (up,) = prometheus.query('up{job="flowscope"}')
        assert up["value"][1] == "1"
        _assert_paths_stored(prometheus, paths)
    finally:
        exporter.send_signal(signal.SIGTERM)
        exporter.wait(20)


PATH_SERIES = {  # stored counter -> the record field it sums
    "flowscope_path_connections_total": "connections",
    "flowscope_path_failed_connections_total": "failed_connections",
    "flowscope_path_resets_total": "resets",
    "flowscope_path_connect_timeouts_total": "connect_timeouts",
    "flowscope_path_syn_retransmits_total": "syn_retransmits",
    "flowscope_path_retransmitted_segments_total": "retrans_segs",
    "flowscope_path_segments_sent_total": "segs_out",
    "flowscope_path_dropped_packets_total": "dropped_packets",
}


def _assert_paths_stored(prometheus: PrometheusProcess, paths: list[PathHealthMetric]) -> None:
    """Every path counter Prometheus stored equals the records' sum; the RTT gauges equal
    the quantiles of the window's sketches merged."""
    Key = tuple[str, str, str]

    def by_path(expr: str) -> dict[Key, float]:
        return {
            (v["metric"]["scope"], v["metric"]["source"], v["metric"]["destination"]): float(
                v["value"][1]
            )
            for v in prometheus.query(expr)
        }

    want: dict[str, dict[Key, float]] = {name: {} for name in PATH_SERIES}
    merged: dict[Key, Sketch] = {}
    for p in paths:
        key = (p.scope, p.source, p.destination)
        for name, attr in PATH_SERIES.items():
            want[name][key] = want[name].get(key, 0) + getattr(p, attr)
        assert p.rtt_sketch is not None
        sketch = Sketch.from_dict(p.rtt_sketch)
        if key in merged:
            merged[key].merge(sketch)
        else:
            merged[key] = sketch
    deadline = time.monotonic() + 60
    got: dict[Key, float] = {}
    while time.monotonic() < deadline:
        got = by_path("flowscope_path_connections_total")
        if got == want["flowscope_path_connections_total"]:
            break
        time.sleep(0.5)  # awaited by the values, as above
    for name in PATH_SERIES:
        assert by_path(name) == want[name], name
    assert len(got) == 8  # 4 node pairs, 4 zone pairs
    for q in (0.5, 0.99):
        name = f"flowscope_path_rtt_p{int(q * 100)}_seconds"
        stored = by_path(name)
        assert stored.keys() == merged.keys()
        for key, sketch in merged.items():
            value = sketch.quantile(q)
            assert value is not None
            assert stored[key] == pytest.approx(value / 1e6, rel=1e-12), (name, key)
