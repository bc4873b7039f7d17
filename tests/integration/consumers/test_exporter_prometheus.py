"""``flowscope exporter`` scraped by a real Prometheus (built from its official source): the
series Prometheus stores equal the metric records of the same windows."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from promhelp_consumers import PrometheusProcess
from test_consumers_top import _latency

from flowscope.codec import JsonCodec
from flowscope.kafka import RecordProducer, TopicSpec, ensure_topics
from flowscope.records import TcpLatencyMetric
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
    finally:
        exporter.send_signal(signal.SIGTERM)
        exporter.wait(20)
