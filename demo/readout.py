"""Read records back from topics and print the service-pair table a person can read."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import TypeVar

from confluent_kafka import Consumer, KafkaError

from flowscope.codec import JsonCodec
from flowscope.kafka_security import secured

T = TypeVar("T")


class TopicReader:
    """A consumer reading one topic from the beginning, with its own throwaway group."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._consumer = Consumer(
            secured(
                {
                    "bootstrap.servers": bootstrap,
                    "group.id": f"flowscope-reader-{uuid.uuid4().hex[:8]}",
                    "auto.offset.reset": "earliest",
                    "enable.auto.commit": False,
                    # Topics may not exist yet when the reader starts; they will.
                    "topic.metadata.refresh.interval.ms": 1000,
                }
            )
        )
        self._consumer.subscribe([topic])
        self.topic = topic

    def read(self, timeout_s: float) -> list[bytes]:
        """Everything that arrives within ``timeout_s`` (values only)."""
        return [value for _, value in self.read_timestamped(timeout_s)]

    def read_timestamped(self, timeout_s: float) -> list[tuple[int, bytes]]:
        """Everything that arrives within ``timeout_s``, with each message's Kafka timestamp
        (ms; the producer's create time) for latency measurements."""
        values: list[tuple[int, bytes]] = []
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            for msg in self._consumer.consume(num_messages=1000, timeout=min(left, 0.5)):
                err = msg.error()
                if err is not None:
                    if err.code() in (KafkaError._PARTITION_EOF, KafkaError.UNKNOWN_TOPIC_OR_PART):
                        continue
                    raise RuntimeError(f"reading {self.topic}: {err}")
                value = msg.value()
                if value is not None:
                    values.append((msg.timestamp()[1], value))
        return values

    def read_until(
        self,
        codec: JsonCodec[T],
        done: Callable[[list[T]], bool],
        timeout_s: float,
    ) -> list[T]:
        """Decode records until ``done(records)`` holds; returns what was read either way."""
        records: list[T] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            records.extend(r for v in self.read(0.5) for r in codec.decode_batch(v))
            if done(records):
                break
        return records

    def close(self) -> None:
        self._consumer.close()
