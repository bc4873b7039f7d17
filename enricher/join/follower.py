"""Reads the compacted metadata topic: all of it up to its end at start, then whatever follows.

Partitions are assigned directly (no consumer group): every joiner instance needs the whole
topic, never a share of it, and never commits offsets for it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_NOT_AVAILABLE,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from enricher import EnricherError
from flowscope.kafka import RecordConsumer

# (key, value or None for a tombstone, time the record was written in ns) -> outcome
ApplyFn = Callable[[str | None, bytes | None, int], object]
# A record the apply function refused ("invalid", "unsupported_version"), for a dead letter.
RejectFn = Callable[[Message, str], None]
REFUSED = ("invalid", "unsupported_version")
# _UNKNOWN_PARTITION: measured when an enricher restarted while the cluster was still
# loading after an outage (the client had no metadata for the topic yet).
_NO_LEADER_YET = frozenset(
    {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError._TIMED_OUT,
        KafkaError._UNKNOWN_PARTITION,
    }
)


class MetadataReadError(EnricherError):
    """The metadata topic could not be read to its end."""


def record_time_ns(msg: Message) -> int:
    kind, ms = msg.timestamp()
    return time.time_ns() if kind == TIMESTAMP_NOT_AVAILABLE else int(ms) * 1_000_000


def _key(msg: Message) -> str | None:
    key = msg.key()
    if key is None:
        return None
    return key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)


class MetadataFollower:
    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        overrides: Mapping[str, Any] | None = None,
        on_rejected: RejectFn | None = None,
    ) -> None:
        self._topic = topic
        self._on_rejected = on_rejected
        self._consumer = RecordConsumer(
            bootstrap_servers,
            # librdkafka wants a group id even for assign(); nothing is ever committed to it.
            f"flowscope-enricher-metadata-{uuid.uuid4().hex[:8]}",
            overrides,
            defaults={
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
            },
            log_errors=False,
        )
        self.records_read = 0

    @property
    def read_errors(self) -> int:
        """Errors reading the topic (its end is not one)."""
        return self._consumer.counters.errors

    def load(self, apply: ApplyFn, timeout_s: float = 60.0) -> int:
        """Assign every partition from the beginning and apply records up to the high
        watermarks taken now. Returns how many records were applied."""
        deadline = time.monotonic() + timeout_s
        while True:
            metadata = self._consumer.list_topics(self._topic, timeout_s)
            topic_md = metadata.topics.get(self._topic)
            if topic_md is not None and topic_md.error is None and topic_md.partitions:
                break
            # A topic created a moment ago (ensure_topics) is not in every broker's metadata
            # yet: ask again until it is, or give up with the broker's answer.
            if time.monotonic() > deadline:
                err = topic_md.error if topic_md is not None else "absent"
                raise MetadataReadError(f"metadata topic {self._topic} unavailable: {err}")
            time.sleep(0.2)
        highs: dict[int, int] = {}
        for p in topic_md.partitions:
            low, high = self._watermarks(p, deadline)
            if high > low:
                highs[p] = high
        self._consumer.assign(
            [TopicPartition(self._topic, p, OFFSET_BEGINNING) for p in topic_md.partitions]
        )
        applied = 0
        deadline = time.monotonic() + timeout_s
        while highs:
            if time.monotonic() > deadline:
                raise MetadataReadError(
                    f"metadata topic {self._topic} not read to its end within {timeout_s:.0f}s "
                    f"(partitions still behind: {sorted(highs)})"
                )
            for msg in self._consumer.consume(1000, 0.5):
                self._apply_one(msg, apply)
                applied += 1
                part, offset = msg.partition(), msg.offset()
                if part in highs and offset is not None and offset >= highs[part] - 1:
                    del highs[part]
            # Compaction can leave gaps: the position is the authority once past the end.
            for tp in self._consumer.position(
                [TopicPartition(self._topic, p) for p in list(highs)]
            ):
                if tp.offset >= 0 and tp.offset >= highs[tp.partition]:
                    del highs[tp.partition]
        return applied

    def _watermarks(self, partition: int, deadline: float) -> tuple[int, int]:
        """A new topic's partitions may have no leader yet for a moment (NOT_LEADER,
        LEADER_NOT_AVAILABLE): retriable, so ask again until the deadline."""
        while True:
            try:
                return self._consumer.watermarks(
                    TopicPartition(self._topic, partition),
                    timeout_s=max(0.1, deadline - time.monotonic()),
                )
            except KafkaException as exc:
                err = exc.args[0] if exc.args else None
                retriable = isinstance(err, KafkaError) and err.code() in _NO_LEADER_YET
                if not retriable or time.monotonic() > deadline:
                    raise MetadataReadError(
                        f"metadata topic {self._topic}[{partition}] offsets unavailable: {exc}"
                    ) from None
                time.sleep(0.2)

    def poll(self, apply: ApplyFn, max_records: int = 1000) -> int:
        """Apply whatever arrived since the last call, without waiting."""
        batch = self._consumer.consume(max_records, 0)
        for msg in batch:
            self._apply_one(msg, apply)
        return len(batch)

    def _apply_one(self, msg: Message, apply: ApplyFn) -> None:
        self.records_read += 1
        outcome = apply(_key(msg), msg.value(), record_time_ns(msg))
        if self._on_rejected is not None and outcome in REFUSED:
            self._on_rejected(msg, str(outcome))

    def close(self, timeout_s: float | None = None) -> None:
        self._consumer.close(timeout_s)
