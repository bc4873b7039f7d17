"""``flowscope exporter`` against the real broker, scraped over HTTP and read with
Prometheus' text parser: the series equal the metric records on the topic."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families
from test_consumers_top import _latency

from flowscope.codec import JsonCodec
from flowscope.kafka import RecordProducer, TopicSpec, ensure_topics
from flowscope.records import TcpLatencyMetric
from flowscope.topics import Topics

FLOWSCOPE = Path(sys.executable).parent / "flowscope"


def test_scraped_series_equal_the_records(kafka_bootstrap: str, topics: Topics) -> None:
    records = [
        _latency(str(i), "fe", f"srv{i % 3}", 5 + i, i % 2, [100.0 * (i + 1)], partition=i % 2)
        for i in range(9)
    ]
    ensure_topics(kafka_bootstrap, [TopicSpec(topics.metrics_tcp_latency, partitions=2)])
    producer = RecordProducer(kafka_bootstrap)
    codec = JsonCodec(TcpLatencyMetric)
    for r in [*records, records[0]]:  # the last one a republished window
        producer.produce(topics.metrics_tcp_latency, codec.encode(r), key=r.metric_id)
    assert producer.flush(30) == 0
    proc = subprocess.Popen(
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
            "--top-n",
            "2",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = proc.stdout.readline()
        match = re.search(r"http://127.0.0.1:(\d+)/metrics", ready)
        assert match, ready
        url = f"http://127.0.0.1:{match.group(1)}/metrics"
        want = sum(r.connections for r in records)
        deadline = time.monotonic() + 60
        series: dict[str, float] = {}
        while time.monotonic() < deadline:
            text = urllib.request.urlopen(url, timeout=5).read().decode()
            series = {
                str(sorted(s.labels.items())): s.value
                for f in text_string_to_metric_families(text)
                for s in f.samples
                if s.name == "flowscope_tcp_connections_total"
            }
            if sum(series.values()) == want:
                break
            time.sleep(0.5)  # the exporter catches up with the topic: awaited by the sum
        assert sum(series.values()) == want, series
        assert len(series) == 3  # two admitted pairs and "other"
        by_server: dict[str, int] = {}
        for r in records:
            by_server[r.server_workload] = by_server.get(r.server_workload, 0) + r.connections
        admitted = [v for k, v in series.items() if "'other'" not in k]
        assert sorted(admitted) == sorted(
            v for k, v in by_server.items() if any(k in key for key in series)
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
