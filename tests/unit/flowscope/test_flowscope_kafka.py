"""The producer wrapper's loss accounting, with no broker: librdkafka's own queue bound is
what fills up, exactly as when the real broker is away."""

from __future__ import annotations

import time

from flowscope.kafka import RecordConsumer, RecordProducer


def test_full_buffer_is_counted_as_dropped_not_raised() -> None:
    producer = RecordProducer(
        "127.0.0.1:1",  # nothing listens: records stay queued
        {"queue.buffering.max.messages": 3, "message.timeout.ms": 60_000, "log_level": 0},
        buffer_full_wait_s=0.2,
    )
    results = [producer.produce("t", b"x") for _ in range(5)]
    assert results == [True, True, True, False, False]
    assert producer.counters.produced == 3
    assert producer.counters.dropped_buffer_full == 2
    assert producer.in_flight() == 3


def test_undeliverable_records_are_counted_as_failed() -> None:
    producer = RecordProducer("127.0.0.1:1", {"message.timeout.ms": 300, "log_level": 0})
    for _ in range(4):
        assert producer.produce("t", b"x")
    assert producer.flush(5.0) == 0
    assert producer.counters.delivery_failed == 4
    assert producer.counters.delivered == 0
    assert producer.counters.last_error is not None


def test_batch_messages_are_counted_in_records_too() -> None:
    producer = RecordProducer("127.0.0.1:1", {"message.timeout.ms": 300, "log_level": 0})
    assert producer.produce("t", b"[1,2,3]", records=3)
    assert producer.produce("t", b"4")
    assert producer.flush(5.0) == 0
    c = producer.counters
    assert (c.produced, c.records_produced) == (2, 4)
    assert (c.delivery_failed, c.records_delivery_failed) == (2, 4)


def test_delivery_reports_are_served_without_an_explicit_poll() -> None:
    """A slow producer (a few messages, no poll() by its caller) still sees its counters move."""
    producer = RecordProducer("127.0.0.1:1", {"message.timeout.ms": 200, "log_level": 0})
    producer.produce("t", b"x")
    time.sleep(1.5)  # past the message timeout (checked about every second) and the interval
    producer.produce("t", b"y")  # this call serves the first message's report
    assert producer.counters.delivery_failed >= 1


def test_consumer_config_layers_defaults_user_options_then_requirements() -> None:
    user = {"auto.offset.reset": "latest", "isolation.level": "read_uncommitted", "log_level": 0}
    before = dict(user)
    consumer = RecordConsumer(
        "127.0.0.1:1",
        "g",
        user,
        defaults={"auto.offset.reset": "earliest", "fetch.wait.max.ms": 7},
        required={"isolation.level": "read_committed"},
    )
    try:
        assert consumer.config["auto.offset.reset"] == "latest"  # the user's beats a default
        assert consumer.config["fetch.wait.max.ms"] == 7  # a default the user left alone
        assert consumer.config["isolation.level"] == "read_committed"  # required beats the user
        assert consumer.config["group.id"] == "g"
        assert user == before  # the caller's dict is never changed
    finally:
        consumer.close()


def test_consumer_counts_client_errors_and_calls_the_users_error_cb() -> None:
    seen: list[str] = []
    consumer = RecordConsumer(
        "127.0.0.1:1",  # nothing listens: librdkafka reports the broker down via error_cb
        "g",
        {"error_cb": lambda err: seen.append(err.name()), "log_level": 0},
    )
    try:
        consumer.subscribe(["t"])
        deadline = time.monotonic() + 30
        while not seen and time.monotonic() < deadline:
            assert consumer.consume(10, 0.2) == []
        assert seen, "no error_cb call within 30 s"
        assert consumer.counters.client_errors == len(seen)
        assert consumer.counters.last_error is not None
        assert consumer.counters.errors == 0  # client errors are not partition errors
    finally:
        consumer.close()
