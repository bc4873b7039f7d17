"""The dev broker is a real Kafka: it starts (or is already up), serves clients, stops cleanly."""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

# ConfigResource is only implicitly re-exported by confluent_kafka.admin (mypy --strict).
from confluent_kafka.admin._config import ConfigResource

from devbroker import Broker, DevBrokerError
from devbroker.layout import REPO_ROOT
from flowscope.kafka import RecordConsumer, RecordProducer, TopicSpec, admin_client, ensure_topics


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    broker = Broker()  # the default: 127.0.0.1:9092, state under <repo>/.state/kafka
    was_running = broker.is_running()
    started = broker.start()
    # Starting an already running broker is a no-op, and says so by returning False.
    assert started is (not was_running)
    yield broker
    # Other tests share a broker that was already up: only stop the one this module started.
    if not was_running:
        broker.stop()


def _name(kind: str) -> str:
    return f"devbroker-test-{kind}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def topic(broker: Broker) -> Iterator[str]:
    """A random topic name, deleted afterwards so the shared broker does not pile them up."""
    name = _name("topic")
    yield name
    admin = admin_client(broker.bootstrap)
    for future in admin.delete_topics([name], operation_timeout=10.0).values():
        future.result(timeout=15.0)


def test_second_start_is_a_noop(broker: Broker) -> None:
    pid = broker.status().pid
    assert broker.start() is False
    assert broker.status().pid == pid
    assert broker.bootstrap == "127.0.0.1:9092"


def test_produce_and_consume_round_trip(broker: Broker, topic: str) -> None:
    producer = RecordProducer(broker.bootstrap)
    payloads = [f"message {i}".encode() for i in range(5)]
    for i, payload in enumerate(payloads):
        assert producer.produce(topic, payload, key=f"k{i}")
    assert producer.flush(30.0) == 0
    assert producer.counters.delivered == len(payloads), producer.counters.as_dict()

    consumer = RecordConsumer(broker.bootstrap, _name("group"))
    try:
        consumer.subscribe([topic])
        received: list[bytes] = []
        for _ in range(60):
            for msg in consumer.consume(100, 0.5):
                value = msg.value()
                assert isinstance(value, bytes)
                received.append(value)
            if len(received) >= len(payloads):
                break
        # consume() hands on no error message: it counts them.
        assert consumer.counters.errors == 0, consumer.counters.last_error
    finally:
        consumer.close()
    assert received == payloads


def test_compacted_topic_can_be_created(broker: Broker, topic: str) -> None:
    ensure_topics(broker.bootstrap, [TopicSpec(topic, partitions=2, compacted=True)])
    admin = admin_client(broker.bootstrap)
    metadata = admin.list_topics(topic=topic, timeout=10.0)
    assert len(metadata.topics[topic].partitions) == 2
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    configs = admin.describe_configs([resource])[resource].result(timeout=10.0)
    assert configs["cleanup.policy"].value == "compact"


def test_status_cli_reports_running(broker: Broker) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "devbroker", "status"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert f"running: Kafka {broker.jars.version} at 127.0.0.1:9092" in result.stdout
    status = broker.status()
    # A 512 MiB-heap broker that grew past ~1 GiB would starve the shared machine.
    assert status.rss_bytes is not None and 50 * 2**20 < status.rss_bytes < 1024 * 2**20


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def test_occupied_port_fails_with_a_clear_error(broker: Broker, tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        other = Broker(tmp_path / "state", port, _free_port(), progress=lambda _m: None)
        with pytest.raises(DevBrokerError, match=f"127.0.0.1:{port} is already in use"):
            other.start()
    assert not other.is_running()


def test_failed_start_reports_the_broker_log(broker: Broker, tmp_path: Path) -> None:
    other = Broker(
        tmp_path / "state",
        _free_port(),
        _free_port(),
        start_timeout_s=60.0,
        progress=lambda _m: None,
    )
    # A meta.properties for another node id: formatting is skipped and the broker refuses it.
    other.state.data_dir.mkdir(parents=True)
    other.state.meta_properties.write_text(
        "version=1\nnode.id=7\ncluster.id=AAAAAAAAAAAAAAAAAAAAAA\n"
        f"directory.id={uuid.uuid4().hex[:22]}\n"
    )
    with pytest.raises(DevBrokerError) as caught:
        other.start()
    message = str(caught.value)
    assert "exited during start-up" in message
    assert "last lines of" in message and "server.log" in message
    # The broker's own explanation, not only its stack trace.
    assert "errors in server.log" in message
    assert "Stored node id 7 doesn't match" in message
    assert not other.is_running()
    assert not other.state.pid_file.exists()
