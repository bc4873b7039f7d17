"""The joiner's hold-back, offsets and counters, with stand-ins for the consumer and producer."""

from __future__ import annotations

import time
from typing import Any, cast

import msgspec
from confluent_kafka import Message, TopicPartition
from enricher_records import IN_CLUSTER, raw_connection

from enricher.join.classify import parse_cidrs
from enricher.join.joiner import Joiner
from enricher.settings import Settings
from flowscope.codec import JsonCodec
from flowscope.kafka import ProducerCounters, RecordConsumer, RecordProducer
from flowscope.records import EnrichedTcpConnection, RawTcpConnection
from flowscope.records.metadata import MetaCodec, NodeMeta, PodMeta

S = 1_000_000_000
T0 = time.time_ns() - 60 * S
CODEC = MetaCodec()
ENRICHED = JsonCodec(EnrichedTcpConnection)


class FakeConsumer:
    def __init__(self) -> None:
        self.stored: dict[tuple[str, int], int] = {}

    def store_offsets(self, offsets: list[TopicPartition]) -> None:
        for tp in offsets:
            self.stored[(tp.topic, tp.partition)] = tp.offset


class FakeProducer:
    def __init__(self) -> None:
        self.out: list[tuple[str, bytes, Any]] = []
        self.records: list[int] = []
        self.counters = ProducerCounters()
        self.fenced = False

    def produce(
        self, topic: str, value: bytes, key: Any = None, headers: Any = None, records: int = 1
    ) -> bool:
        self.out.append((topic, value, key))
        self.records.append(records)
        return True

    def flush(self, timeout_s: float = 0) -> int:
        return 0

    def close(self, timeout_s: float = 0) -> int:
        return 0


def _raw(offset: int, partition: int = 0, **kw: Any) -> Message:
    times = {"start_time_ns": T0 + 10 * S, "end_time_ns": T0 + 11 * S}  # this test's T0
    record = raw_connection(**{**IN_CLUSTER, **times, "local_port": 40000 + offset, **kw})
    value = msgspec.json.encode(record)
    return Message(topic="raw", partition=partition, offset=offset, value=value, key=b"k")


def _pod(uid: str, ip: str) -> PodMeta:
    return PodMeta(
        uid=uid,
        name=f"pod-{uid}",
        namespace="ns",
        node="node-a",
        ips=[ip],
        start_time_ns=T0,
        workload_kind="Deployment",
        workload_name=f"wl-{uid}",
    )


def _joiner(**kw: Any) -> tuple[Joiner, FakeConsumer, FakeProducer]:
    settings = Settings(cluster_cidrs=parse_cidrs("10.244.0.0/16", "c"), **kw)
    j = Joiner(settings)
    j.state.upsert(NodeMeta(name="node-a", zone="z", region="r", addresses=[]), T0)
    j.state.upsert(_pod("c1", "10.244.1.1"), T0)
    j.state.track_changes()
    consumer, producer = FakeConsumer(), FakeProducer()
    j._consumer = cast(RecordConsumer, consumer)
    j._producer = cast(RecordProducer, producer)
    return j, consumer, producer


def _apply(j: Joiner, pod: PodMeta) -> None:
    assert j.state.apply(pod.key(), CODEC.encode(pod), time.time_ns()) == "upserted"


def _decoded(producer: FakeProducer) -> list[EnrichedTcpConnection]:
    """Every enriched record produced, whether one per message or batched."""
    return [e for _, v, _ in producer.out for e in ENRICHED.decode_batch(v)]


def test_unknown_remote_is_held_then_named_when_metadata_arrives() -> None:
    j, consumer, producer = _joiner()
    j.process_batch([_raw(0), _raw(1, remote_addr="8.8.8.8"), _raw(2)])
    # Only the internet record went out; the two to the unknown pod IP wait.
    assert [e.server.address for e in _decoded(producer)] == ["8.8.8.8"]
    assert j.counters.held == 2 and len(j.holdback) == 2
    assert consumer.stored == {("raw", 0): 0}  # nothing committed past the held offset 0
    _apply(j, _pod("s1", "10.244.2.1"))
    j.retry_held()
    out = _decoded(producer)
    assert [e.server.pod_uid for e in out[1:]] == ["s1", "s1"]
    assert [e.client.port for e in out[1:]] == [40000, 40002]
    assert j.counters.held_resolved == 2 and len(j.holdback) == 0
    assert consumer.stored == {("raw", 0): 3}
    m = j.metrics()
    assert m["enricher_held_total"] == 2 and m["enricher_remote_unresolved_total"] == 0


def test_held_record_expires_as_unresolved() -> None:
    j, consumer, producer = _joiner(holdback_s=0.05)
    j.process_batch([_raw(7, partition=3)])
    assert producer.out == [] and consumer.stored == {("raw", 3): 7}
    time.sleep(0.06)
    j.expire_held()
    (out,) = _decoded(producer)
    assert out.server.attribution == "unresolved" and out.peer_class == "private"
    assert j.counters.held_expired == 1 and j.counters.remote_unresolved == 1
    assert consumer.stored == {("raw", 3): 8}


def test_unknown_local_pod_waits_for_its_uid() -> None:
    j, _, producer = _joiner()
    j.process_batch([_raw(0, pod_uid="new-uid", remote_addr="8.8.4.4")])
    assert producer.out == []
    _apply(j, _pod("new-uid", "10.244.1.77"))
    j.retry_held()
    (out,) = _decoded(producer)
    assert out.client.pod_uid == "new-uid" and out.client.workload_name == "wl-new-uid"


def test_record_missing_both_ends_waits_for_both_within_one_deadline() -> None:
    j, _, producer = _joiner()
    j.process_batch([_raw(0, pod_uid="new-uid")])
    _apply(j, _pod("new-uid", "10.244.1.77"))
    j.retry_held()
    assert producer.out == [] and len(j.holdback) == 1  # now it waits for the peer
    _apply(j, _pod("s1", "10.244.2.1"))
    j.retry_held()
    (out,) = _decoded(producer)
    assert (out.client.pod_uid, out.server.pod_uid) == ("new-uid", "s1")
    assert j.counters.held == 1 and j.counters.held_resolved == 1


def test_full_buffer_and_disabled_hold_emit_at_once() -> None:
    j, _, producer = _joiner(holdback_max_records=1)
    j.process_batch([_raw(0), _raw(1)])
    assert len(producer.out) == 1 and j.counters.held_overflow == 1
    j2, _, producer2 = _joiner(holdback_s=0.0)
    j2.process_batch([_raw(0)])
    assert len(producer2.out) == 1 and j2.counters.held == 0


def test_revoke_and_close_release_what_is_held() -> None:
    j, consumer, producer = _joiner()
    j.process_batch([_raw(0, partition=0), _raw(5, partition=1)])
    j._on_revoke(cast(RecordConsumer, consumer), [TopicPartition("raw", 1)])
    assert len(producer.out) == 1 and consumer.stored[("raw", 1)] == 6
    assert j.counters.held_released_unresolved == 1
    j._consumer = None  # close() must not touch the stand-in's missing methods
    j.close()
    assert len(producer.out) == 2 and j.counters.held_released_unresolved == 2


def test_a_batch_message_is_joined_record_by_record() -> None:
    j, consumer, producer = _joiner()
    _apply(j, _pod("s1", "10.244.2.1"))
    singles = [
        msgspec.json.decode(_raw(0, local_port=p).value() or b"", type=RawTcpConnection)
        for p in (41000, 41001, 41002)
    ]
    batch = Message(topic="raw", partition=0, offset=5, value=msgspec.json.encode(singles))
    j.process_batch([batch])
    assert [e.client.port for e in _decoded(producer)] == [41000, 41001, 41002]
    assert j.counters.records_in == 3 and consumer.stored == {("raw", 0): 6}


def test_a_batch_with_one_bad_element_is_dead_lettered_whole_with_its_index() -> None:
    j, _, producer = _joiner()
    good = msgspec.json.decode(_raw(0).value() or b"", type=RawTcpConnection)
    bad = msgspec.json.encode([good, {"v": 1}])
    j.process_batch([Message(topic="raw", partition=0, offset=9, value=bad)])
    ((topic, value, _),) = producer.out
    assert topic.endswith("deadletter") and b"$[1]" in value


def _batch(offset: int, ports: list[int], partition: int = 0, **kw: Any) -> Message:
    records = [
        msgspec.json.decode(_raw(0, local_port=p, **kw).value() or b"", type=RawTcpConnection)
        for p in ports
    ]
    value = msgspec.json.encode(records)
    return Message(topic="raw", partition=partition, offset=offset, value=value, key=b"k")


def test_batched_output_is_one_array_per_consumed_batch_and_keeps_held_offsets() -> None:
    j, consumer, producer = _joiner(output_batch_records=256)
    _apply(j, _pod("s1", "10.244.2.1"))
    # Message 3: two named records; message 4: one named, one to an unknown pod IP (held).
    j.process_batch([_batch(3, [41000, 41001]), _batch(4, [41002])])
    j.process_batch([_raw(5, remote_addr="10.244.9.9")])
    ((topic, value, key),) = producer.out[:1]
    assert topic.endswith("enriched.tcp") and value.startswith(b"[")
    assert key == "ns/Deployment/wl-c1" and producer.records[0] == 3
    assert [e.client.port for e in _decoded(producer)] == [41000, 41001, 41002]
    # The held record's offset (5) is where the next start would read from.
    assert consumer.stored == {("raw", 0): 5} and len(j.holdback) == 1
    _apply(j, _pod("s9", "10.244.9.9"))
    j.retry_held()
    assert len(producer.out) == 2 and consumer.stored == {("raw", 0): 6}
    assert _decoded(producer)[-1].server.pod_uid == "s9"
    assert j.metrics()["enricher_produce_records_total"] == 4


def test_a_batched_message_with_a_held_record_stays_uncommitted() -> None:
    j, consumer, producer = _joiner(output_batch_records=16)
    _apply(j, _pod("s1", "10.244.2.1"))
    good = msgspec.json.decode(_raw(0).value() or b"", type=RawTcpConnection)
    held = msgspec.structs.replace(good, remote_addr="10.244.7.7")
    value = msgspec.json.encode([good, held, good])
    j.process_batch([Message(topic="raw", partition=0, offset=8, value=value, key=b"k")])
    assert len(_decoded(producer)) == 2 and len(j.holdback) == 1
    assert consumer.stored == {("raw", 0): 8}  # a restart re-reads the whole message
    j._consumer = None
    j.close()
    assert len(_decoded(producer)) == 3 and j.counters.held_released_unresolved == 1


def test_a_join_bug_or_a_future_version_costs_one_record_of_a_batch() -> None:
    j, _, producer = _joiner(output_batch_records=8)
    _apply(j, _pod("s1", "10.244.2.1"))
    render = j._render

    def failing_many(raws: Any) -> Any:
        raise RuntimeError("bug")

    def failing_one(raw: RawTcpConnection) -> Any:
        if raw.local_port == 41001:
            raise RuntimeError("bug")
        return render(raw)

    j._render_many = failing_many
    j._render = failing_one
    j.process_batch([_batch(1, [41000, 41001, 41002])])
    future = msgspec.structs.replace(
        msgspec.json.decode(_raw(0).value() or b"", type=RawTcpConnection), v=2
    )
    good = msgspec.json.decode(_raw(0, local_port=41003).value() or b"", type=RawTcpConnection)
    j._render_many = j.renderer.render_many
    value = msgspec.json.encode([future, good])
    j.process_batch([Message(topic="raw", partition=0, offset=2, value=value, key=b"k")])
    enriched = [e for t, v, _ in producer.out if "enriched" in t for e in ENRICHED.decode_batch(v)]
    assert [e.client.port for e in enriched] == [41000, 41002, 41003]
    assert dict(j.counters.deadletter_reasons) == {"enrich_error": 1, "unsupported_version": 1}


def test_internet_and_other_cluster_peers_are_counted_apart() -> None:
    peers = ["8.8.8.8", "10.200.0.1", "1.2.3.4", "10.200.9.9"]
    j, _, producer = _joiner(other_cluster_cidrs=parse_cidrs("10.200.0.0/16", "o"))
    j.process_batch([_raw(i, remote_addr=addr) for i, addr in enumerate(peers)])
    assert [e.peer_class for e in _decoded(producer)] == [
        "internet",
        "other_cluster",
        "internet",
        "other_cluster",
    ]
    m = j.metrics()
    assert (m["enricher_remote_external_total"], m["enricher_remote_other_cluster_total"]) == (2, 2)
    # Without other clusters configured, the same addresses are the internet and private
    # addresses outside this cluster's range (unresolved, not held back).
    j, _, producer = _joiner()
    j.process_batch([_raw(i, remote_addr=addr) for i, addr in enumerate(peers)])
    assert [e.peer_class for e in _decoded(producer)] == ["internet", "private"] * 2
    m = j.metrics()
    assert (m["enricher_remote_external_total"], m["enricher_remote_other_cluster_total"]) == (2, 0)
    assert m["enricher_remote_unresolved_total"] == 2
