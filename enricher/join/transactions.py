"""Exactly-once output for a joiner: its output and its input offsets in one Kafka transaction.

Consume-transform-produce: the joiner produces enriched records (and dead letters) through a
transactional producer; the input offsets that output came from are not stored for the
consumer's auto-commit but handed here, and sent to the same transaction
(``send_offsets_to_transaction`` with the consumer's group metadata) when it commits. Output
and offsets become visible together or not at all, so a joiner killed at any point restarts
from offsets that match exactly what read_committed consumers have seen.

A transaction is committed when it has taken ``max_records`` input records or is
``interval_s`` old, checked after each consumed batch (so one transaction spans several
batches at high rates, and a commit's round trips are paid per tens of thousands of records).
An aborted commit (an abortable error) loses nothing: the records produced in it are never
read committed, the offsets were not committed, and ``on_abort`` rewinds the consumer to the
committed offsets to read that input again. A fenced producer (a newer instance with the same
transactional.id, or a fatal error) raises ProducerFenced: this instance must stop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from confluent_kafka import TopicPartition

from flowscope.kafka import RecordConsumer, RecordProducer, TransactionAborted

log = logging.getLogger("enricher")

PartitionKey = tuple[str, int]


def transactional_id(group: str, instance: str, role: str) -> str:
    """One id per (group, instance, joiner): stable across restarts of that instance."""
    return f"{group}.{instance}.{role}"


class TransactionalOffsets:
    def __init__(
        self,
        consumer: RecordConsumer,
        producer: RecordProducer,
        interval_s: float,
        max_records: int,
        on_abort: Callable[[], None],
    ) -> None:
        if not producer.transactional:
            raise ValueError("TransactionalOffsets needs a transactional producer")
        self._consumer = consumer
        self._producer = producer
        self._interval_s = interval_s
        self._max_records = max_records
        self._on_abort = on_abort
        # Per input partition: the next offset to read, and its commit metadata (replay.py).
        self._pending: dict[PartitionKey, tuple[int, str | None]] = {}
        self._records = 0  # input records taken since the last commit
        self._opened = time.monotonic()  # of the last commit: the interval runs from there
        self.commits = 0
        self.aborts = 0

    def store(self, offsets: Iterable[TopicPartition]) -> None:
        """How far each partition is done; sent with the next commit."""
        for tp in offsets:
            self._pending[(tp.topic, tp.partition)] = (tp.offset, tp.metadata)

    def forget(self, partitions: Iterable[PartitionKey]) -> None:
        for part in partitions:
            self._pending.pop(part, None)

    def took(self, records: int) -> None:
        self._records += records

    def maybe_commit(self) -> None:
        if self._records >= self._max_records or (
            time.monotonic() - self._opened >= self._interval_s
        ):
            self.commit()

    def commit(self) -> bool:
        """Commit now. False if the transaction was aborted (and the input rewound)."""
        if not self._pending and not self._producer.in_transaction:
            self._records = 0
            return True
        offsets = [
            TopicPartition(t, p, o) if m is None else TopicPartition(t, p, o, metadata=m)
            for (t, p), (o, m) in self._pending.items()
        ]
        try:
            self._producer.commit(offsets, self._consumer.consumer_group_metadata())
        except TransactionAborted as exc:
            self.aborts += 1
            log.warning("%s: reading the input again from the committed offsets", exc)
            self._pending.clear()
            self._records = 0
            self._on_abort()
            return False
        self.commits += 1
        self._pending.clear()
        self._records = 0
        self._opened = time.monotonic()
        return True
