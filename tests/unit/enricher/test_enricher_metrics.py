"""Every counter the enricher keeps has a /metrics name (enricher/metrics.py)."""

from __future__ import annotations

import socket
from types import SimpleNamespace
from typing import Any, cast

import pytest
from prometheus_client import generate_latest

from enricher import EnricherError
from enricher.join.dnsjoin import DnsJoinerCounters
from enricher.join.dnsnames import DnsNames
from enricher.join.joiner import Joiner
from enricher.metrics import VOCABULARY, serve
from enricher.publish.cluster import WATCHED_KINDS, ClusterModel
from enricher.publish.kubewatch import ResourceWatch, WatchCounters
from enricher.publish.lease import LeaseCounters, LeaseElector
from enricher.publish.live import WatchOptions, WatchPublisher
from enricher.settings import Settings
from flowscope.kafka import ProducerCounters, RecordProducer
from flowscope.topics import Topics


def _joiner_keys() -> dict[str, int]:
    j = Joiner(Settings(), names=DnsNames())
    j._producer = cast(RecordProducer, SimpleNamespace(counters=ProducerCounters()))
    j._txn = cast(Any, object())  # the transaction counters are listed when one is set
    j.counters.deadletter_reasons["decode"] += 2
    return j.metrics()


def _publisher_keys() -> dict[str, int]:
    pub = WatchPublisher(None, "127.0.0.1:1", Topics(), WatchOptions(lease=None))
    pub.model = ClusterModel()
    pub.watches = {
        kind: cast(ResourceWatch, SimpleNamespace(counters=WatchCounters()))
        for kind in WATCHED_KINDS
    }
    pub.elector = cast(LeaseElector, SimpleNamespace(counters=LeaseCounters()))
    producer = cast(RecordProducer, SimpleNamespace(counters=ProducerCounters()))
    return pub.metrics(producer)


def test_every_joiner_and_publisher_counter_is_routed() -> None:
    keys = {**_joiner_keys(), **DnsJoinerCounters().as_metrics(), **_publisher_keys()}
    assert len(keys) > 60
    assert VOCABULARY.unrouted(keys) == []


def test_joiners_share_names_and_differ_by_signal() -> None:
    counters = DnsJoinerCounters(records_in=3, metadata_deadlettered=1)
    snapshot = {**_joiner_keys(), **counters.as_metrics()}
    registry = VOCABULARY.registry(lambda: snapshot)
    value = registry.get_sample_value
    assert value("flowscope_enricher_records_in_total", {"signal": "dns"}) == 3
    assert value("flowscope_enricher_records_in_total", {"signal": "tcp"}) == 0
    assert (
        value("flowscope_enricher_deadletter_reasons_total", {"signal": "tcp", "reason": "decode"})
        == 2
    )
    assert (
        value(
            "flowscope_enricher_deadletter_reasons_total", {"signal": "dns", "reason": "metadata"}
        )
        == 1
    )
    text = generate_latest(registry).decode()
    assert "flowscope_enricher_publisher_watch_events_total" in text  # declared, no samples
    assert "# TYPE flowscope_enricher_metadata_objects gauge" in text


def test_publisher_watch_counters_are_labelled_by_kind() -> None:
    snapshot = _publisher_keys() | {"publisher_endpointslice_relists_gone_total": 4}
    registry = VOCABULARY.registry(lambda: snapshot)
    labels = {"kind": "endpointslice", "counter": "relists_gone"}
    assert registry.get_sample_value("flowscope_enricher_publisher_watch_events_total", labels) == 4
    lease = {"outcome": "errors"}
    assert registry.get_sample_value("flowscope_enricher_publisher_lease_events_total", lease) == 0


def test_a_taken_metrics_port_is_an_enricher_error() -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        with pytest.raises(EnricherError, match=r"metrics port .*--metrics-port"):
            serve(taken.getsockname()[1], dict)
    assert serve(0, dict) is None
