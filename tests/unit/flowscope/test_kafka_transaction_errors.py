"""Which librdkafka calls the transactional producer makes for which error: resumed, aborted,
interrupted or given up. librdkafka's own producer is replaced by a script of errors (the
calls themselves are proven against real brokers by the coordinator-kill drill)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from flowscope import kafka
from flowscope.kafka import (
    CommitInterrupted,
    ProducerFenced,
    RecordProducer,
    TransactionAborted,
)


def _error(code: int, **kinds: bool) -> KafkaException:
    return KafkaException(KafkaError(code, "injected", **kinds))


TIMED_OUT = {"retriable": True}


class Scripted:
    """commit_transaction answers from ``script`` (an exception, or None: success)."""

    def __init__(self, script: list[KafkaException | None]) -> None:
        self._script: Iterator[KafkaException | None] = iter(script)
        self.calls: list[str] = []

    def commit_transaction(self, _timeout: float) -> None:
        self.calls.append("commit")
        answer = next(self._script)
        if answer is not None:
            raise answer

    def abort_transaction(self, _timeout: float) -> None:
        self.calls.append("abort")

    def send_offsets_to_transaction(self, *_args: Any) -> None:
        self.calls.append("offsets")


@pytest.fixture
def producer() -> RecordProducer:
    return RecordProducer("127.0.0.1:1", {"log_level": 0})


def _open(producer: RecordProducer, script: list[KafkaException | None]) -> Scripted:
    scripted = Scripted(script)
    producer._producer = scripted  # type: ignore[assignment]
    producer._in_transaction = True
    return scripted


def test_a_retriable_commit_is_resumed_past_its_timeout_never_aborted(
    producer: RecordProducer,
) -> None:
    # The coordinator may have begun the commit: an abort now would be refused as fatal.
    timed_out = _error(KafkaError._TIMED_OUT, **TIMED_OUT)
    scripted = _open(producer, [timed_out, timed_out, timed_out, None])
    producer.commit([], None, timeout_s=0.01)
    assert scripted.calls == ["commit"] * 4
    assert producer.counters.transactions_committed == 1
    assert producer.counters.transactions_aborted == 0
    assert not producer.in_transaction


def test_a_bounded_commit_leaves_the_transaction_open_at_its_timeout(
    producer: RecordProducer,
) -> None:
    timed_out = _error(KafkaError._TIMED_OUT, **TIMED_OUT)
    scripted = _open(producer, [timed_out] * 100)
    with pytest.raises(CommitInterrupted):
        producer.commit([], None, timeout_s=0.01, bounded=True)
    assert "abort" not in scripted.calls
    assert producer.in_transaction  # for the broker's timeout or the next instance


def test_an_abortable_commit_is_aborted(producer: RecordProducer) -> None:
    scripted = _open(producer, [_error(KafkaError._STATE, txn_requires_abort=True)])
    with pytest.raises(TransactionAborted):
        producer.commit([], None, timeout_s=1.0)
    assert scripted.calls == ["commit", "abort"]
    assert producer.counters.transactions_aborted == 1


def test_a_commit_the_cluster_never_answers_ends_the_producer(
    producer: RecordProducer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kafka, "ABORT_PATIENCE_S", 0.05)
    monkeypatch.setattr(kafka, "STOP_CHECK_S", 0.01)
    _open(producer, [_error(KafkaError._TIMED_OUT, **TIMED_OUT)] * 10_000)
    with pytest.raises(ProducerFenced) as caught:
        producer.commit([], None, timeout_s=0.01)
    assert not caught.value.by_newer_instance  # a new producer may take over
    assert producer.fenced


@pytest.mark.parametrize(
    ("code", "by_newer"),
    [
        (KafkaError._FENCED, True),
        (KafkaError.PRODUCER_FENCED, True),
        (KafkaError.INVALID_PRODUCER_EPOCH, True),
        (KafkaError.INVALID_TXN_STATE, False),
    ],
)
def test_fatal_errors_say_whether_a_newer_instance_took_over(
    producer: RecordProducer, code: int, by_newer: bool
) -> None:
    _open(producer, [_error(code, fatal=True)])
    with pytest.raises(ProducerFenced) as caught:
        producer.commit([], None, timeout_s=1.0)
    assert caught.value.by_newer_instance is by_newer
    assert producer.fenced and not producer.in_transaction
