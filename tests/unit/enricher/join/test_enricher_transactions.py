"""When the joiner's transactions commit and what they carry, with stand-ins for the clients."""

from __future__ import annotations

from typing import Any, cast

from confluent_kafka import TopicPartition

from enricher.join.transactions import TransactionalOffsets, transactional_id
from flowscope.kafka import RecordConsumer, RecordProducer, TransactionAborted


class FakeProducer:
    transactional = True

    def __init__(self, abort: bool = False) -> None:
        self.in_transaction = False
        self.commits: list[dict[tuple[str, int], int]] = []
        self._abort = abort

    def commit(
        self,
        offsets: list[TopicPartition],
        group_metadata: Any,
        timeout_s: float = 30.0,
        stop: Any = None,
        bounded: bool = False,
    ) -> None:
        assert group_metadata == "group-md"
        if self._abort:
            self.in_transaction = False
            raise TransactionAborted("injected")
        self.commits.append({(tp.topic, tp.partition): tp.offset for tp in offsets})
        self.in_transaction = False


class FakeConsumer:
    def consumer_group_metadata(self) -> str:
        return "group-md"


def _offsets(producer: FakeProducer, **kw: Any) -> tuple[TransactionalOffsets, list[int]]:
    rewinds: list[int] = []
    txn = TransactionalOffsets(
        cast(RecordConsumer, FakeConsumer()),
        cast(RecordProducer, producer),
        kw.get("interval_s", 3600.0),
        kw.get("max_records", 100),
        lambda: rewinds.append(1),
    )
    return txn, rewinds


def test_offsets_travel_with_the_commit_the_latest_per_partition() -> None:
    producer = FakeProducer()
    txn, _ = _offsets(producer)
    txn.store([TopicPartition("raw", 0, 5), TopicPartition("raw", 1, 3)])
    txn.store([TopicPartition("raw", 0, 9)])
    assert txn.commit() and producer.commits == [{("raw", 0): 9, ("raw", 1): 3}]
    # Nothing new: no transaction to commit, nothing sent again.
    assert txn.commit() and len(producer.commits) == 1


def test_commits_when_the_records_bound_is_reached_not_before() -> None:
    producer = FakeProducer()
    txn, _ = _offsets(producer, max_records=100)
    txn.store([TopicPartition("raw", 0, 60)])
    txn.took(60)
    txn.maybe_commit()
    assert producer.commits == []
    txn.store([TopicPartition("raw", 0, 120)])
    txn.took(60)
    txn.maybe_commit()
    assert producer.commits == [{("raw", 0): 120}]


def test_commits_when_the_interval_is_up() -> None:
    producer = FakeProducer()
    txn, _ = _offsets(producer, interval_s=0.0)
    txn.store([TopicPartition("raw", 2, 1)])
    txn.maybe_commit()
    assert producer.commits == [{("raw", 2): 1}]


def test_revoked_partitions_are_forgotten() -> None:
    producer = FakeProducer()
    txn, _ = _offsets(producer)
    txn.store([TopicPartition("raw", 0, 4), TopicPartition("raw", 1, 8)])
    txn.forget([("raw", 0)])
    txn.commit()
    assert producer.commits == [{("raw", 1): 8}]


def test_an_aborted_commit_rewinds_and_sends_nothing_twice() -> None:
    producer = FakeProducer(abort=True)
    txn, rewinds = _offsets(producer)
    txn.store([TopicPartition("raw", 0, 4)])
    assert txn.commit() is False
    assert rewinds == [1] and txn.aborts == 1
    # The pending offsets went with the aborted transaction: the rewind re-reads them.
    producer._abort = False
    assert txn.commit() and producer.commits == []


def test_transactional_ids_are_per_group_instance_and_joiner() -> None:
    assert transactional_id("g", "enricher-0", "tcp") == "g.enricher-0.tcp"
    assert transactional_id("g", "enricher-0", "tcp") != transactional_id("g", "enricher-0", "dns")
