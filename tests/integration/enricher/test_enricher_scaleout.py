"""Several joiners in one consumer group, and held-back records, against the real broker.

Uses the shared fixtures ``kafka_bootstrap`` and ``topics`` from tests/conftest.py.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import msgspec
from confluent_kafka import Producer

from enricher.join.classify import parse_cidrs
from enricher.join.joiner import Joiner
from enricher.publish.kubeobjects import ParsedObjects
from enricher.publish.publisher import MetadataPublisher
from enricher.settings import Settings
from flowscope.codec import JsonCodec
from flowscope.kafka import RecordConsumer, TopicSpec, ensure_topics
from flowscope.records import EnrichedTcpConnection, RawTcpConnection
from flowscope.records.metadata import Meta, NodeMeta, PodMeta
from flowscope.topics import Topics

S = 1_000_000_000
ENRICHED = JsonCodec(EnrichedTcpConnection)
NOW = time.time_ns()


def _pod(uid: str, ip: str, node: str, start: int = NOW - 600 * S) -> PodMeta:
    return PodMeta(
        uid=uid,
        name=f"pod-{uid}",
        namespace="shop",
        node=node,
        ips=[ip],
        start_time_ns=start,
        workload_kind="Deployment",
        workload_name=f"wl-{uid}",
    )


BASE: list[Meta] = [
    NodeMeta(name="node-a", zone="zone-a", region="r1", addresses=["192.168.78.1"]),
    NodeMeta(name="node-b", zone="zone-b", region="r1", addresses=["192.168.78.2"]),
    _pod("client", "10.78.1.10", "node-a"),
    _pod("server", "10.78.2.20", "node-b"),
]


def _raw(local_port: int, remote_addr: str = "10.78.2.20", **kw: Any) -> bytes:
    base: dict[str, Any] = {
        "node": "node-a",
        "start_time_ns": NOW,
        "end_time_ns": NOW + S,
        "role": "client",
        "family": 4,
        "local_addr": "10.78.1.10",
        "local_port": local_port,
        "remote_addr": remote_addr,
        "remote_port": 80,
        "pid": 1,
        "comm": "curl",
        "cgroup_id": 1,
        "cgroup_path": None,
        "pod_uid": "client",
        "container_id": None,
        "bytes_sent": local_port,
        "bytes_received": 1,
        "srtt_us": 1,
        "retrans_segs": 0,
        "connect_latency_us": 1,
    }
    base.update(kw)
    return msgspec.json.encode(RawTcpConnection(**base))


def _publish(bootstrap: str, topics: Topics, metas: list[Meta]) -> None:
    MetadataPublisher(bootstrap, topics).publish(ParsedObjects(metas=metas), prune=False)


def _settings(bootstrap: str, topics: Topics, group: str, **kw: Any) -> Settings:
    return Settings(
        bootstrap_servers=bootstrap,
        topic_prefix=topics.prefix,
        consumer_group=group,
        stats_interval_s=1.0,
        poll_timeout_s=0.05,
        **kw,
    )


@contextmanager
def _running(joiners: list[Joiner]) -> Iterator[None]:
    stop = threading.Event()
    threads = [threading.Thread(target=j.run, args=(stop,), daemon=True) for j in joiners]
    for t in threads:
        t.start()
    try:
        for j in joiners:
            assert j.ready.wait(60), "a joiner did not load metadata and subscribe within 60s"
        yield
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not any(t.is_alive() for t in threads), "a joiner did not stop within 60s"


def _consume_enriched(
    bootstrap: str, topic: str, n: int, timeout_s: float = 30.0
) -> list[EnrichedTcpConnection]:
    consumer = RecordConsumer(bootstrap, f"test-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topic])
    out: list[EnrichedTcpConnection] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < n and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.3):
                value = msg.value()
                if isinstance(value, bytes):
                    out.extend(ENRICHED.decode_batch(value))  # batched or not
        # Anything beyond n (a duplicate) must show up too.
        for msg in consumer.consume(500, 1.0):
            value = msg.value()
            if isinstance(value, bytes):
                out.extend(ENRICHED.decode_batch(value))
    finally:
        consumer.close()
    return out


def _wait(cond: Any, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_instances_in_one_group_share_raw_partitions_and_each_hold_all_metadata(
    kafka_bootstrap: str, topics: Topics
) -> None:
    ensure_topics(kafka_bootstrap, [TopicSpec(topics.raw_tcp, partitions=4)])
    _publish(kafka_bootstrap, topics, BASE)
    group = f"test-enricher-{uuid.uuid4().hex[:8]}"
    joiners = [Joiner(_settings(kafka_bootstrap, topics, group)) for _ in range(2)]
    with _running(joiners):
        _wait(
            lambda: all(len(j.assigned_partitions()) == 2 for j in joiners),
            "the group to give each joiner two of the four raw partitions",
        )
        parts = [set(j.assigned_partitions()) for j in joiners]
        assert parts[0].isdisjoint(parts[1]) and parts[0] | parts[1] == {0, 1, 2, 3}
        for j in joiners:
            assert set(j.state.pods) == {"client", "server"} and len(j.state.nodes) == 2

        # Metadata written now reaches every instance, whatever raw partitions it owns.
        _publish(kafka_bootstrap, topics, [_pod("late", "10.78.2.99", "node-b")])
        _wait(lambda: all("late" in j.state.pods for j in joiners), "the late pod everywhere")

        n = 400
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        for i in range(n):
            remote = "10.78.2.99" if i % 2 else "10.78.2.20"
            producer.produce(topics.raw_tcp, _raw(20000 + i, remote), partition=i % 4)
        assert producer.flush(30) == 0
        out = _consume_enriched(kafka_bootstrap, topics.enriched_tcp, n)

    assert sorted(e.client.port for e in out) == list(range(20000, 20000 + n)), "lost/duplicated"
    for e in out:
        want = "late" if e.client.port % 2 else "server"
        assert e.server.pod_uid == want and e.server.zone == "zone-b", e
    counts = [j.counters.enriched for j in joiners]
    assert sum(counts) == n and all(c == n // 2 for c in counts), counts


def test_records_wait_for_late_metadata_then_resolve_or_expire(
    kafka_bootstrap: str, topics: Topics
) -> None:
    _publish(kafka_bootstrap, topics, BASE)
    settings = _settings(
        kafka_bootstrap,
        topics,
        f"test-enricher-{uuid.uuid4().hex[:8]}",
        holdback_s=3.0,
        cluster_cidrs=parse_cidrs("10.78.0.0/16", "c"),
    )
    j = Joiner(settings)
    with _running([j]):
        producer = Producer({"bootstrap.servers": kafka_bootstrap})
        for value in (
            _raw(30001, "10.78.3.33"),  # a pod the publisher has not written yet
            _raw(30002, "10.78.3.44"),  # never written: emitted unresolved after 3s
            _raw(30003, "10.79.0.1"),  # private, outside the cluster CIDRs: no wait
            _raw(30004, "8.8.8.8", pod_uid="young"),  # its own pod is not written yet
        ):
            producer.produce(topics.raw_tcp, value)
        assert producer.flush(30) == 0
        _wait(lambda: j.counters.held == 3, "three records on hold", 30)
        started = time.monotonic()
        _publish(
            kafka_bootstrap,
            topics,
            [_pod("newcomer", "10.78.3.33", "node-a"), _pod("young", "10.78.1.11", "node-a")],
        )
        out = _consume_enriched(kafka_bootstrap, topics.enriched_tcp, 4)
        waited = time.monotonic() - started
    by_port = {e.client.port: e for e in out}
    assert sorted(by_port) == [30001, 30002, 30003, 30004] and len(out) == 4
    assert by_port[30001].server.pod_uid == "newcomer"
    assert by_port[30001].peer_class == "same_zone"
    assert by_port[30004].client.pod_uid == "young"
    assert by_port[30004].client.workload_name == "wl-young"
    assert by_port[30002].server.attribution == "unresolved"
    assert by_port[30003].server.attribution == "unresolved"
    assert waited >= 2.0, f"the unknown peer was emitted after {waited:.1f}s, not after ~3s"
    m = j.metrics()
    assert m["enricher_held_total"] == 3
    assert m["enricher_held_resolved_total"] == 2
    assert m["enricher_held_expired_unresolved_total"] == 1
    assert m["enricher_remote_unresolved_total"] == 2
    assert m["enricher_held_now"] == 0
