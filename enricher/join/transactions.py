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
import threading
import time
from collections.abc import Callable, Iterable

from confluent_kafka import KafkaException, TopicPartition

from flowscope.deadline import Deadline
from flowscope.kafka import (
    CommitInterrupted,
    ProducerFenced,
    RecordConsumer,
    RecordProducer,
    TransactionAborted,
)

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
        stop: threading.Event | None = None,
    ) -> None:
        if not producer.transactional:
            raise ValueError("TransactionalOffsets needs a transactional producer")
        self._consumer = consumer
        self._producer = producer
        self._interval_s = interval_s
        self._max_records = max_records
        self._on_abort = on_abort
        self.stop = stop  # set: a commit still retrying gives up (the final one does not)
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

    @property
    def pending(self) -> bool:
        """Offsets stored since the last commit."""
        return bool(self._pending)

    def took(self, records: int) -> None:
        self._records += records

    def maybe_commit(self) -> None:
        if self._records >= self._max_records or (
            time.monotonic() - self._opened >= self._interval_s
        ):
            self.commit()

    def commit(self, timeout_s: float = 30.0, final: bool = False) -> bool:
        """Commit now. False if the transaction was aborted (and, unless ``final``: the
        last commit at shutdown, the input rewound)."""
        if not self._pending and not self._producer.in_transaction:
            self._records = 0
            return True
        offsets = [
            TopicPartition(t, p, o) if m is None else TopicPartition(t, p, o, metadata=m)
            for (t, p), (o, m) in self._pending.items()
        ]
        try:
            self._producer.commit(
                offsets,
                self._consumer.consumer_group_metadata(),
                timeout_s,
                stop=None if final else self.stop,
                bounded=final,
            )
        except CommitInterrupted as exc:
            log.warning("%s; committed at shutdown instead", exc)
            return False
        except TransactionAborted as exc:
            self.aborts += 1
            self._pending.clear()
            self._records = 0
            if final:
                log.warning("%s: the next owner reads the input again", exc)
                return False
            log.warning("%s: reading the input again from the committed offsets", exc)
            self._on_abort()
            return False
        self.commits += 1
        self._pending.clear()
        self._records = 0
        self._opened = time.monotonic()
        return True


def final_commit(txn: TransactionalOffsets, producer: RecordProducer, deadline: Deadline) -> int:
    """The last commit at shutdown, within ``deadline``. Returns the records it could not
    commit: never read committed, and their input offsets are not committed either, so the
    next owner reads that input again. With the broker away the transaction is left open
    for the broker to abort (transaction.timeout.ms) or the next instance to fence."""
    pending = producer.transaction_records
    if not txn.pending and not producer.in_transaction:
        return 0
    if not producer.reachable(min(1.0, deadline.left())):
        log.warning("broker unreachable at shutdown: %d records left uncommitted", pending)
        return pending
    try:
        committed = txn.commit(max(0.1, deadline.left()), final=True)
    except (ProducerFenced, KafkaException) as exc:
        log.warning("final commit failed: %s", exc)
        committed = False
    return 0 if committed else pending
