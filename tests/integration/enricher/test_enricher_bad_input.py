"""Bad input on every topic the enricher reads, through the real broker: raw.tcp, raw.dns and
the metadata topic. Each bad message goes to the dead-letter topic with the reason and is
counted; the message after it is still processed."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
from confluent_kafka import Producer

from enricher.join.dnsjoin import DnsJoiner
from enricher.join.joiner import Joiner
from enricher.join.view import MetadataView
from enricher.settings import Settings
from flowscope.codec import JsonCodec
from flowscope.kafka import RecordConsumer
from flowscope.records import (
    DeadLetter,
    EnrichedDnsQuery,
    EnrichedTcpConnection,
    RawDnsQuery,
    RawTcpConnection,
)
from flowscope.topics import Topics

NOW = 1_790_000_000_000_000_000
# Just under the broker's and librdkafka's 1,000,000-byte message limit: accepted on the way
# in, while its dead letter (payload escaped in JSON, plus the envelope) would not fit.
OVERSIZE = 990_000


def _tcp(**kw: Any) -> bytes:
    base: dict[str, Any] = dict(
        node="node-a",
        start_time_ns=NOW,
        end_time_ns=NOW + 1,
        role="client",
        family=4,
        local_addr="10.77.1.10",
        local_port=41000,
        remote_addr="1.1.1.1",
        remote_port=443,
        pid=1,
        comm="c",
        cgroup_id=9,
        cgroup_path=None,
        pod_uid=None,
        container_id=None,
        bytes_sent=1,
        bytes_received=2,
        srtt_us=3,
        retrans_segs=0,
        connect_latency_us=4,
    )
    base.update(kw)
    return msgspec.json.encode(RawTcpConnection(**base))


def _dns(**kw: Any) -> bytes:
    base: dict[str, Any] = dict(
        node="node-a",
        role="client",
        time_ns=NOW,
        response_time_ns=NOW + 1000,
        latency_us=1,
        family=4,
        transport="udp",
        local_addr="10.77.1.10",
        local_port=40000,
        remote_addr="10.77.2.53",
        remote_port=53,
        cgroup_id=9,
        cgroup_path=None,
        pod_uid=None,
        container_id=None,
        txid=7,
        query_name="ok.test",
        query_type="A",
        outcome="answered",
        rcode="NOERROR",
        answer_count=1,
    )
    base.update(kw)
    return msgspec.json.encode(RawDnsQuery(**base))


def _pod(name: str, uid: str, **kw: Any) -> bytes:
    base: dict[str, Any] = {
        "kind": "Pod",
        "v": 1,
        "uid": uid,
        "name": name,
        "namespace": "shop",
        "node": "node-a",
        "ips": ["10.77.1.10"],
        "start_time_ns": NOW - 10**12,
        "workload_kind": "Pod",
        "workload_name": name,
    }
    base.update(kw)
    return msgspec.json.encode(base)


# The four kinds of bad input, each a (label, value) whose reason the dead letter must give.
def _bad(valid: bytes, version_field: bytes = b'"v":1') -> list[tuple[str, bytes]]:
    return [
        ("not valid JSON", b"{this is not json"),
        ("invalid field", valid.replace(b'"node":"node-a"', b'"node":17', 1)),
        ("version", valid.replace(version_field, b'"v":99', 1)),
        ("oversize", b'["' + b'\\"' * (OVERSIZE // 2) + b'"]'),
    ]


def _produce(bootstrap: str, topic: str, values: list[tuple[bytes, bytes]]) -> None:
    producer = Producer({"bootstrap.servers": bootstrap})
    for key, value in values:
        producer.produce(topic, value=value, key=key)
    assert producer.flush(30) == 0


def _consume(bootstrap: str, topic: str, n: int, timeout_s: float = 30.0) -> list[bytes]:
    consumer = RecordConsumer(bootstrap, f"test-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topic])
    got: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(got) < n and time.monotonic() < deadline:
            for msg in consumer.consume(100, 0.5):
                value = msg.value()
                if isinstance(value, bytes):
                    got.append(value)
        # Nothing more than expected: a bad message must not turn into two letters.
        got += [m.value() or b"" for m in consumer.consume(100, 1.0)]
    finally:
        consumer.close()
    assert len(got) == n, f"expected {n} records on {topic}, got {len(got)}"
    return got


@contextmanager
def _running(stage: Joiner | DnsJoiner) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=stage.run, args=(stop,), daemon=True)
    thread.start()
    try:
        assert stage.ready.wait(60), "stage did not start within 60s"
        yield
    finally:
        stop.set()
        thread.join(60)
    assert not thread.is_alive(), "stage did not stop within 60s (or died)"


def _settings(bootstrap: str, topics: Topics) -> Settings:
    return Settings(
        bootstrap_servers=bootstrap,
        topic_prefix=topics.prefix,
        consumer_group=f"test-{uuid.uuid4().hex[:8]}",
        poll_timeout_s=0.1,
        output_batch_records=1,
        holdback_s=0.0,
    )


def _check_letters(letters: list[bytes], topic: str, stage: str, labels: list[str]) -> None:
    dead = sorted((JsonCodec(DeadLetter).decode(v) for v in letters), key=lambda d: d.offset)
    assert [d.source_topic for d in dead] == [topic] * len(labels)
    assert {d.stage for d in dead} == {stage}
    for d, label in zip(dead, labels, strict=True):
        assert d.key == label, d.reason
        if label == "not valid JSON":
            assert "JSON" in d.reason and "malformed" in d.reason, d.reason
            assert d.payload == "{this is not json"
        elif label == "invalid field":
            assert (
                "got `int` - at `$.node`" in d.reason or "got `int` - at `$[0].node`" in d.reason
            ), d.reason
        elif label == "version":
            assert "v=99" in d.reason, d.reason
        else:
            assert "payload cut" in d.reason and len(d.payload) < OVERSIZE, d.reason
    for v in letters:
        assert len(v) < 1_000_000


def test_raw_tcp_and_raw_dns_bad_input(kafka_bootstrap: str, topics: Topics) -> None:
    settings = _settings(kafka_bootstrap, topics)
    tcp, dns = Joiner(settings), DnsJoiner(settings)
    tcp_bad, dns_bad = _bad(_tcp()), _bad(_dns())
    with _running(tcp), _running(dns):
        _produce(
            kafka_bootstrap,
            topics.raw_tcp,
            [(k.encode(), v) for k, v in tcp_bad] + [(b"good", _tcp())],
        )
        _produce(
            kafka_bootstrap,
            topics.raw_dns,
            [(k.encode(), v) for k, v in dns_bad] + [(b"good", _dns())],
        )
        tcp_out = _consume(kafka_bootstrap, topics.enriched_tcp, 1)
        dns_out = _consume(kafka_bootstrap, topics.enriched_dns, 1)
        letters = _consume(kafka_bootstrap, topics.deadletter, 8)
    assert JsonCodec(EnrichedTcpConnection).decode(tcp_out[0]).server.port == 443
    assert JsonCodec(EnrichedDnsQuery).decode(dns_out[0]).query_name == "ok.test"
    by_topic: dict[str, list[bytes]] = {}
    for v in letters:
        by_topic.setdefault(JsonCodec(DeadLetter).decode(v).source_topic, []).append(v)
    labels = [k for k, _ in tcp_bad]
    _check_letters(by_topic[topics.raw_tcp], topics.raw_tcp, "enricher", labels)
    _check_letters(by_topic[topics.raw_dns], topics.raw_dns, "enricher-dns", labels)
    assert tcp.metrics()["enricher_deadletter_total"] == 4
    assert dns.counters.deadlettered == 4 and dns.counters.enriched == 1


def test_metadata_bad_input(kafka_bootstrap: str, topics: Topics) -> None:
    settings = _settings(kafka_bootstrap, topics)
    tcp, dns = Joiner(settings), DnsJoiner(settings)
    bad = _bad(_pod("fe", "uid-bad"), b'"v":1')
    after: Callable[[Joiner | DnsJoiner], bool] = lambda s: "uid-fe" in s.state.pods  # noqa: E731
    with _running(tcp), _running(dns):
        _produce(
            kafka_bootstrap,
            topics.metadata,
            [(k.encode(), v) for k, v in bad] + [(b"Pod/shop/fe", _pod("fe", "uid-fe"))],
        )
        deadline = time.monotonic() + 30
        while not (after(tcp) and after(dns)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert after(tcp) and after(dns), "the record after the bad ones was not applied"
        letters = _consume(kafka_bootstrap, topics.deadletter, 8)
    assert "uid-bad" not in tcp.state.pods and "uid-bad" not in dns.state.pods
    by_stage: dict[str, list[bytes]] = {}
    for v in letters:
        by_stage.setdefault(JsonCodec(DeadLetter).decode(v).stage, []).append(v)
    labels = [k for k, _ in bad]
    _check_letters(by_stage["enricher"], topics.metadata, "enricher", labels)
    _check_letters(by_stage["enricher-dns"], topics.metadata, "enricher-dns", labels)
    assert tcp.metrics()["enricher_deadletter_metadata_total"] == 4
    assert dns.counters.metadata_deadlettered == 4


def test_one_metadata_view_serves_both_joiners(kafka_bootstrap: str, topics: Topics) -> None:
    """As `enricher join` wires them: one index read once, each refused metadata record
    dead-lettered once, and a TCP end held for its pod released by the metadata whichever
    joiner's thread applied it."""
    settings = dataclasses.replace(_settings(kafka_bootstrap, topics), holdback_s=60.0)
    view = MetadataView(settings)
    tcp, dns = Joiner(settings, view=view), DnsJoiner(settings, view=view)
    bad = _bad(_pod("fe", "uid-bad"), b'"v":1')
    with _running(tcp), _running(dns):
        assert tcp.state is dns.state is view.state
        late = _tcp(local_addr="10.77.1.20", pod_uid="uid-late")
        _produce(kafka_bootstrap, topics.raw_tcp, [(b"late", late)])
        deadline = time.monotonic() + 30
        while len(tcp.holdback) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(tcp.holdback) == 1, "the record of an unknown pod was not held"
        pod = _pod("late", "uid-late", ips=["10.77.1.20"])
        _produce(
            kafka_bootstrap,
            topics.metadata,
            [(k.encode(), v) for k, v in bad] + [(b"Pod/shop/late", pod)],
        )
        out = _consume(kafka_bootstrap, topics.enriched_tcp, 1)
        letters = _consume(kafka_bootstrap, topics.deadletter, len(bad))
    assert JsonCodec(EnrichedTcpConnection).decode(out[0]).client.pod_name == "late"
    assert "uid-bad" not in view.state.pods and "uid-late" in view.state.pods
    refused = tcp.metrics()["enricher_deadletter_metadata_total"]
    assert refused + dns.counters.metadata_deadlettered == len(bad) == len(letters)
