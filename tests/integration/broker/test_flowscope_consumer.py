"""flowscope's one consumer against the real broker: reading to the end of every partition,
errors tolerated or counted, and rebalance callbacks that get the flowscope consumer."""

from __future__ import annotations

import time
import uuid

from confluent_kafka import KafkaError, TopicPartition

from flowscope.kafka import RecordConsumer, RecordProducer, TopicSpec, ensure_topics


def _group() -> str:
    return f"test-consumer-{uuid.uuid4().hex[:8]}"


def test_reads_every_partition_to_its_end(kafka_bootstrap: str) -> None:
    topic = f"test-consumer-{uuid.uuid4().hex[:10]}"
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, partitions=3)])
    producer = RecordProducer(kafka_bootstrap)
    for i in range(7):
        assert producer.produce(topic, f"m{i}".encode(), key=f"k{i}")
    assert producer.flush(30.0) == 0
    consumer = RecordConsumer(kafka_bootstrap, _group(), {"enable.partition.eof": True})
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(3)])
        got: list[bytes] = []
        deadline = time.monotonic() + 60
        while len(consumer.at_end) < 3:
            assert time.monotonic() < deadline, f"ends seen: {sorted(consumer.at_end)}"
            got += [m.value() or b"" for m in consumer.consume(100, 0.5)]
        assert consumer.at_end == {(topic, p) for p in range(3)}
        assert sorted(got) == sorted(f"m{i}".encode() for i in range(7))
        assert consumer.counters.messages == 7 and consumer.counters.errors == 0
        # A new record on a partition at its end: that partition is no longer at its end.
        assert producer.produce(topic, b"late", key="k0")
        assert producer.flush(30.0) == 0
        late: list[bytes] = []
        while not late:
            assert time.monotonic() < deadline, "the late record never came"
            late += [m.value() or b"" for m in consumer.consume(100, 0.5)]
        assert late == [b"late"]
    finally:
        consumer.close()


def test_missing_topic_is_counted_unless_tolerated(kafka_bootstrap: str) -> None:
    missing = f"test-consumer-missing-{uuid.uuid4().hex[:10]}"
    strict = RecordConsumer(kafka_bootstrap, _group(), log_errors=False)
    lenient = RecordConsumer(
        kafka_bootstrap, _group(), tolerated=(KafkaError.UNKNOWN_TOPIC_OR_PART,)
    )
    try:
        strict.subscribe([missing])
        lenient.subscribe([missing])
        deadline = time.monotonic() + 30
        while strict.counters.errors == 0 and time.monotonic() < deadline:
            assert strict.consume(10, 0.5) == []
            assert lenient.consume(10, 0.5) == []
        assert strict.counters.errors >= 1, "no error for a subscribed topic that is missing"
        assert "UNKNOWN_TOPIC_OR_PART" in (strict.counters.last_error or "")
        assert lenient.counters.errors == 0, lenient.counters.last_error
    finally:
        strict.close()
        lenient.close()


def test_rebalance_callbacks_get_the_flowscope_consumer(kafka_bootstrap: str) -> None:
    topic = f"test-consumer-{uuid.uuid4().hex[:10]}"
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, partitions=2)])
    assigned: list[tuple[RecordConsumer, list[int]]] = []
    revoked: list[list[int]] = []
    consumer = RecordConsumer(kafka_bootstrap, _group())
    consumer.subscribe(
        [topic],
        on_assign=lambda c, parts: assigned.append((c, sorted(p.partition for p in parts))),
        on_revoke=lambda _c, parts: revoked.append(sorted(p.partition for p in parts)),
    )
    try:
        deadline = time.monotonic() + 60
        while not assigned:
            assert time.monotonic() < deadline, "never assigned"
            consumer.consume(10, 0.5)
        assert assigned == [(consumer, [0, 1])]
        assert sorted(tp.partition for tp in consumer.assignment()) == [0, 1]
    finally:
        consumer.close()  # leaving the group revokes what it held
    assert revoked == [[0, 1]]
