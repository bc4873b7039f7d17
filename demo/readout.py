"""Read records back from topics and print the service-pair table a person can read."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from flowscope.codec import JsonCodec
from flowscope.kafka import TopicFollower

T = TypeVar("T")


class TopicReader:
    """A consumer reading one topic from the beginning, with its own throwaway group."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self._follower = TopicFollower(bootstrap, [topic], start="earliest")
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
            for msg in self._follower.poll(min(left, 0.5)):
                if msg.value is not None:
                    values.append((msg.timestamp_ms, msg.value))
            if self._follower.counters.errors:
                raise RuntimeError(f"reading {self.topic}: {self._follower.counters.last_error}")
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
        self._follower.close()
