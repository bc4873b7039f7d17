"""The dev broker's SASL_SSL listener: every mechanism through flowscope's own clients, and
the refusals a service reports at start (wrong password, a CA that did not sign the broker)."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from devbroker import Broker
from devbroker.tls import make_ca
from flowscope import kafka_security
from flowscope.kafka import KafkaUnavailable, RecordConsumer, RecordProducer, wait_for_broker
from flowscope.kafka_security import KafkaSecurity, Secret


def _security(broker: Broker, mechanism: str, **changes: object) -> KafkaSecurity:
    client = broker.client_security()
    values: dict[str, object] = {
        "protocol": "SASL_SSL",
        "mechanism": mechanism,
        "username": client.username,
        "password": Secret(client.password()),
        "ca_file": client.ca_file,
        **changes,
    }
    return KafkaSecurity(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_round_trip_over_sasl_ssl(sasl_broker: Broker, mechanism: str) -> None:
    bootstrap = sasl_broker.sasl_bootstrap
    kafka_security.register(bootstrap, _security(sasl_broker, mechanism))
    topic = f"sasl-{uuid.uuid4().hex[:10]}"
    producer = RecordProducer(bootstrap)
    for i in range(20):
        assert producer.produce(topic, f"m{i}".encode(), key=f"k{i}")
    assert producer.flush(30.0) == 0
    assert producer.counters.delivered == 20, producer.counters.as_dict()

    consumer = RecordConsumer(bootstrap, f"sasl-{uuid.uuid4().hex[:8]}")
    try:
        consumer.subscribe([topic])
        got: list[bytes] = []
        for _ in range(60):
            for msg in consumer.consume(100, 0.5):
                value = msg.value()
                assert isinstance(value, bytes)
                got.append(value)
            if len(got) >= 20:
                break
        # consume() hands on no error message: it counts them.
        assert consumer.counters.errors == 0, consumer.counters.last_error
    finally:
        consumer.close()
    assert sorted(got) == sorted(f"m{i}".encode() for i in range(20))


def test_plaintext_client_on_the_sasl_port_gets_nothing(sasl_broker: Broker) -> None:
    # Nobody registered security for this bootstrap string: the client talks plaintext to
    # the TLS port and never gets metadata.
    unregistered = sasl_broker.sasl_bootstrap.replace("127.0.0.1", "localhost")
    with pytest.raises(KafkaUnavailable, match="no Kafka broker answered"):
        wait_for_broker(unregistered, timeout_s=4.0)


def test_wrong_password_is_named_at_once(sasl_broker: Broker) -> None:
    bootstrap = sasl_broker.sasl_bootstrap + ",127.0.0.1:1"  # its own registration
    kafka_security.register(
        bootstrap, _security(sasl_broker, "SCRAM-SHA-512", password=Secret("not-it"))
    )
    with pytest.raises(KafkaUnavailable) as caught:
        wait_for_broker(bootstrap, timeout_s=30.0)
    message = str(caught.value)
    assert "the credentials were refused" in message, message
    assert "SCRAM-SHA-512 as flowscope" in message, message
    assert "not-it" not in message
    assert "\n" not in message


def test_untrusted_broker_certificate_is_named_at_once(sasl_broker: Broker, tmp_path: Path) -> None:
    other_ca = make_ca(tmp_path / "other-ca", "some other CA")
    bootstrap = sasl_broker.sasl_bootstrap + ",127.0.0.1:2"
    kafka_security.register(
        bootstrap, _security(sasl_broker, "SCRAM-SHA-256", ca_file=other_ca.ca_cert)
    )
    with pytest.raises(KafkaUnavailable) as caught:
        wait_for_broker(bootstrap, timeout_s=30.0)
    message = str(caught.value)
    assert "the TLS handshake failed" in message, message
    assert "certificate verify failed" in message, message
    assert str(other_ca.ca_cert) in message, message
