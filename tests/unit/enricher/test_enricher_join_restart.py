"""The join starts again in-process when its producer failed on its own, and only then: a
producer fenced by a newer instance, a stop, or a failure that keeps coming back end it.
The join itself is replaced by a script (its Kafka side is proven by the broker drills)."""

from __future__ import annotations

import threading

import pytest
from confluent_kafka import KafkaError

import enricher.__main__ as cli
from enricher.settings import Settings
from flowscope.kafka import ProducerFenced


def _scripted_join(monkeypatch: pytest.MonkeyPatch, failures: list[ProducerFenced]) -> list[int]:
    starts: list[int] = []

    def join_once(_settings: Settings, _stop: threading.Event, restarts: int) -> int:
        starts.append(restarts)
        if failures:
            raise failures.pop(0)
        return 0

    monkeypatch.setattr(cli, "_join_once", join_once)
    monkeypatch.setattr(cli, "JOIN_RESTART_BACKOFF_S", 0.0)
    return starts


def test_a_producer_failure_starts_the_join_again(monkeypatch: pytest.MonkeyPatch) -> None:
    failed = ProducerFenced("commit refused", KafkaError.INVALID_TXN_STATE)
    starts = _scripted_join(monkeypatch, [failed, failed])
    assert cli.join(Settings()) == 0
    assert starts == [0, 1, 2]  # each start knows how many came before (its metric)


def test_a_newer_instance_ends_the_join(monkeypatch: pytest.MonkeyPatch) -> None:
    starts = _scripted_join(monkeypatch, [ProducerFenced("fenced", KafkaError._FENCED)])
    with pytest.raises(ProducerFenced):
        cli.join(Settings())
    assert starts == [0]


def test_a_failure_that_keeps_coming_back_ends_the_join(monkeypatch: pytest.MonkeyPatch) -> None:
    failed = ProducerFenced("commit refused", KafkaError.INVALID_TXN_STATE)
    starts = _scripted_join(monkeypatch, [failed] * (cli.MAX_JOIN_RESTARTS + 1))
    with pytest.raises(ProducerFenced):
        cli.join(Settings())
    assert len(starts) == cli.MAX_JOIN_RESTARTS + 1
