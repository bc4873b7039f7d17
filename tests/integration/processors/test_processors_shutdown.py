"""SIGTERM stops ``python -m processors worker`` within its shutdown bound even with the
broker away, and its final counters say how many records sat in windows it could not
publish (a restart re-reads them: they were never acknowledged).

The shared broker is used by others: this test starts its own (devbroker.Broker in a
temporary state dir on free ports) and stops only that one.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Producer
from processors_harness import (
    final_counters,
    free_port,
    new_app_id,
    start_worker,
    wait_for_metric,
)

from devbroker import Broker
from flowscope.codec import JsonCodec
from flowscope.kafka import TopicSpec, ensure_topics
from flowscope.records import Endpoint, EnrichedTcpConnection
from flowscope.topics import Topics

OPEN = 10  # records in windows still open at the stop
# Well above the measured stop (logged below) and the worker's shutdown bound.
EXIT_BOUND_S = 15.0

WEB = Endpoint(
    address="10.1.0.1",
    port=40000,
    attribution="pod",
    namespace="shop",
    workload_kind="Deployment",
    workload_name="web",
    zone="zone-a",
)
DB = Endpoint(
    address="10.1.0.2",
    port=5432,
    attribution="pod",
    namespace="shop",
    workload_kind="Deployment",
    workload_name="db",
    zone="zone-b",
)


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[Broker]:
    broker = Broker(
        state_dir=tmp_path / "kafka", port=free_port(), controller_port=free_port(), heap_mb=384
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


def test_worker_stops_within_its_bound_with_the_broker_down_and_counts_open_windows(
    own_broker: Broker, topics: Topics, tmp_path: Path
) -> None:
    bootstrap = own_broker.bootstrap
    ensure_topics(bootstrap, [TopicSpec(topics.enriched_tcp)])
    worker = start_worker(
        bootstrap, topics, tmp_path, new_app_id(), window_s=600, metrics_port=free_port()
    )
    try:
        worker.wait_for_log("processor ready", timeout_s=120)
        producer = Producer({"bootstrap.servers": bootstrap})
        codec = JsonCodec(EnrichedTcpConnection)
        now = time.time_ns()
        for i in range(OPEN):
            producer.produce(
                topics.enriched_tcp,
                codec.encode(
                    EnrichedTcpConnection(
                        start_time_ns=now - 1000,
                        end_time_ns=now + i,
                        observer_node="node-a",
                        observer_role="client",
                        client_observed=True,
                        network_type="ipv4",
                        client=WEB,
                        server=DB,
                        bytes_client_to_server=100,
                        bytes_server_to_client=200,
                        connect_latency_us=300,
                        srtt_us=120,
                        retrans_segs=0,
                        peer_class="cross_zone",
                    )
                ),
                key=b"k",
            )
        assert producer.flush(30) == 0
        del producer
        pending = "flowscope_processors_pending_records{signal=tcp}"
        assert wait_for_metric(worker, pending, OPEN, timeout_s=60)[pending] == OPEN

        own_broker.stop()
        started = time.monotonic()
        worker.proc.send_signal(signal.SIGTERM)
        rc = worker.proc.wait(timeout=EXIT_BOUND_S)
        took = time.monotonic() - started
    except subprocess.TimeoutExpired:
        worker.kill()
        raise
    finally:
        if worker.proc.poll() is None:
            worker.kill()
    print(f"processors worker: stopped {took:.1f}s after SIGTERM with the broker down (rc {rc})")
    counters = final_counters(worker)
    # Never published, never acknowledged: read again by the next worker, and said so.
    assert counters["unpublished_records"] == str(OPEN), worker.log()[-3000:]
    assert rc == 0, worker.log()[-3000:]
