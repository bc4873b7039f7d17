"""Three dev broker nodes as one KRaft cluster: replication factor 3, min.insync.replicas 2.
With one node SIGKILLed, acks=all writes still succeed; with two down they are refused (and
counted as delivery failures); the killed nodes come back on their data."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import ConfigResource

from devbroker import Cluster
from devbroker.ports import free_port_block
from flowscope.kafka import RecordProducer, admin_client


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = free_port_block(6)
    c = Cluster(Path(tmp_path_factory.mktemp("cluster")), base)
    c.start()
    try:
        yield c
    finally:
        c.stop()


def _produce(bootstrap: str, topic: str, n: int, timeout_s: float) -> RecordProducer:
    producer = RecordProducer(bootstrap, {"message.timeout.ms": int(timeout_s * 1000)})
    for i in range(n):
        assert producer.produce(topic, f"v{i}".encode(), key=f"k{i}")
    producer.flush(timeout_s + 10)
    return producer


def test_three_replicas_and_two_in_sync_required(cluster: Cluster) -> None:
    admin = admin_client(cluster.bootstrap)
    metadata = admin.list_topics(timeout=10)
    assert sorted(metadata.brokers) == [1, 2, 3]
    topic = f"cluster-{uuid.uuid4().hex[:10]}"
    producer = _produce(cluster.bootstrap, topic, 50, 30)  # auto-created with the defaults
    assert producer.counters.delivered == 50, producer.counters.as_dict()
    partitions = admin.list_topics(topic, timeout=10).topics[topic].partitions
    assert all(sorted(p.replicas) == [1, 2, 3] for p in partitions.values())
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = admin.describe_configs([resource])[resource].result(timeout=10)
    assert configs["min.insync.replicas"].value == "2"

    cluster.node(2).kill()
    try:
        one_down = _produce(cluster.bootstrap, topic, 50, 30)
        assert one_down.counters.delivered == 50, one_down.counters.as_dict()
        cluster.node(3).kill()
        try:
            # Two of three away: no quorum and too few in-sync replicas; every record is
            # counted as failed, none as delivered.
            two_down = _produce(cluster.bootstrap, topic, 10, 5)
            assert two_down.counters.delivered == 0, two_down.counters.as_dict()
            assert two_down.counters.delivery_failed == 10, two_down.counters.as_dict()
        finally:
            cluster.node(3).restart()
    finally:
        cluster.node(2).restart()
    assert cluster.is_running()
    back = _produce(cluster.bootstrap, topic, 50, 60)
    assert back.counters.delivered == 50, back.counters.as_dict()
