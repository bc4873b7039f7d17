"""Batched enriched output against the real broker: each record lands on the partition its
own key would have given it (the outbox mirrors librdkafka's murmur2_random partitioner)."""

from __future__ import annotations

import threading
import time
import uuid

import msgspec
from confluent_kafka import Producer

from enricher.join.joiner import Joiner
from enricher.join.outbox import partition_of
from enricher.publish.kubeobjects import ParsedObjects
from enricher.publish.publisher import MetadataPublisher
from enricher.settings import Settings
from flowscope.codec import JsonCodec
from flowscope.kafka import PRODUCER_DEFAULTS, RecordConsumer, TopicSpec, ensure_topics
from flowscope.records import EnrichedTcpConnection, RawTcpConnection
from flowscope.records.metadata import Meta, NodeMeta, PodMeta
from flowscope.topics import Topics

S = 1_000_000_000
NOW = time.time_ns()
PARTITIONS = 5
PODS = 40


def _read(
    bootstrap: str, topic: str, want: int, timeout_s: float = 60.0
) -> list[tuple[int, bytes, bytes]]:
    """(partition, key, value) of messages until ``want`` records were read."""
    consumer = RecordConsumer(bootstrap, f"t-{uuid.uuid4().hex[:8]}")
    consumer.subscribe([topic])
    out: list[tuple[int, bytes, bytes]] = []
    records = 0
    deadline = time.monotonic() + timeout_s
    try:
        while records < want and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.5):
                value, key = msg.value(), msg.key()
                if value is not None and key is not None:
                    out.append((msg.partition() or 0, key, value))
                    records += value.count(b'"schema_version"') if value[:1] == b"[" else 1
    finally:
        consumer.close()
    return out


def test_partition_of_agrees_with_the_producer(kafka_bootstrap: str, topics: Topics) -> None:
    topic = f"{topics.prefix}.keys"
    ensure_topics(kafka_bootstrap, [TopicSpec(topic, partitions=PARTITIONS)])
    producer = Producer({**PRODUCER_DEFAULTS, "bootstrap.servers": kafka_bootstrap})
    keys = [f"ns-{i % 7}/Deployment/wl-{i}" for i in range(300)] + ["node/n1", "héllo/ü"]
    for key in keys:
        producer.produce(topic, value=b"x", key=key)
    assert producer.flush(30) == 0
    got = {key.decode(): part for part, key, _ in _read(kafka_bootstrap, topic, len(keys))}
    assert len(got) == len(keys)
    wrong = {
        k: (p, partition_of(k, PARTITIONS))
        for k, p in got.items()
        if partition_of(k, PARTITIONS) != p
    }
    assert wrong == {}
    assert len(set(got.values())) == PARTITIONS  # the keys really were spread


def _metas() -> list[Meta]:
    metas: list[Meta] = [NodeMeta(name="n1", zone="z1", region="r1", addresses=["192.168.9.1"])]
    metas += [
        PodMeta(
            uid=f"u{i}",
            name=f"p{i}",
            namespace="shop",
            node="n1",
            ips=[f"10.79.0.{i + 1}"],
            start_time_ns=NOW - 600 * S,
            workload_kind="Deployment",
            workload_name=f"wl-{i}",
        )
        for i in range(PODS)
    ]
    return metas


def _raw(i: int, k: int) -> RawTcpConnection:
    return RawTcpConnection(
        node="n1",
        start_time_ns=NOW - 60 * S + k,
        end_time_ns=NOW - 59 * S,
        role="client",
        family=4,
        local_addr=f"10.79.0.{i + 1}",
        local_port=40000 + k,
        remote_addr=f"10.79.0.{(i + 7) % PODS + 1}",
        remote_port=80,
        pid=1,
        comm="c",
        cgroup_id=1,
        cgroup_path=None,
        pod_uid=f"u{i}",
        container_id="c",
        bytes_sent=k,
        bytes_received=1,
        srtt_us=1,
        retrans_segs=0,
        connect_latency_us=1,
    )


def test_batched_output_lands_where_each_records_key_would(
    kafka_bootstrap: str, topics: Topics
) -> None:
    ensure_topics(kafka_bootstrap, [TopicSpec(topics.enriched_tcp, partitions=PARTITIONS)])
    MetadataPublisher(kafka_bootstrap, topics).publish(ParsedObjects(metas=_metas()), prune=False)
    n = 1000
    raws = [_raw(k % PODS, k) for k in range(n)]
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    enc = msgspec.json.Encoder()
    for start in range(0, n, 100):  # batched raw messages, as collectors send them
        producer.produce(topics.raw_tcp, enc.encode(raws[start : start + 100]))
    producer.produce(topics.raw_tcp, enc.encode(raws[0]))  # and one single record
    assert producer.flush(30) == 0
    joiner = Joiner(
        Settings(
            bootstrap_servers=kafka_bootstrap,
            topic_prefix=topics.prefix,
            consumer_group=f"t-{uuid.uuid4().hex[:8]}",
            output_batch_records=64,
        )
    )
    stop = threading.Event()
    runner = threading.Thread(target=joiner.run, args=(stop,), daemon=True)
    runner.start()
    try:
        messages = _read(kafka_bootstrap, topics.enriched_tcp, n + 1)
    finally:
        stop.set()
        runner.join(30)
    codec = JsonCodec(EnrichedTcpConnection)
    records = 0
    for part, key, value in messages:
        batch = codec.decode_batch(value)
        assert value[:1] == b"[" and 1 <= len(batch) <= 64
        for e in batch:
            assert partition_of(e.client.workload_key(), PARTITIONS) == part
        assert partition_of(key.decode(), PARTITIONS) == part
        records += len(batch)
    assert records == n + 1 and len(messages) < records // 4  # really batched
    m = joiner.metrics()
    assert m["enricher_produce_records_total"] == n + 1
    assert m["enricher_records_enriched_total"] == n + 1 and m["enricher_deadletter_total"] == 0
