"""A joiner SIGKILLed while it holds a record back: after the restart, the records it had
emitted behind the held one are not emitted again, and the held one comes out once.

The raw partition's committed offset stops at the held record, so the restarted joiner
reads everything after it again; the commit's metadata (enricher/join/replay.py) says which of
those records were still held. Checked on the real broker with read_committed: every record
id once, and the restarted joiner's counters name the skipped records.
"""

from __future__ import annotations

import re
import time
import uuid
from collections import Counter
from pathlib import Path

from confluent_kafka import Producer, TopicPartition
from msgspec.structs import replace
from test_enricher_restart import (
    METADATA,
    PARTITIONS,
    JoinerProcess,
    _pod,
    _raw,
    drain_committed,
)

from enricher.publish.kubeobjects import ParsedObjects
from enricher.publish.publisher import MetadataPublisher
from flowscope.codec import JsonCodec
from flowscope.kafka import RecordConsumer, TopicSpec, ensure_topics
from flowscope.records import RawTcpConnection
from flowscope.topics import Topics

RAW = JsonCodec(RawTcpConnection)
# Message by message, the ids of its records; record 1 is from a pod whose metadata comes late.
MESSAGES = [[0, 1, 2], [3, 4], [5]]
LATE = 1


def _committed_to_end(bootstrap: str, group: str, topic: str) -> bool:
    """Has the group committed partition 0 (the only one written) to its end?"""
    consumer = RecordConsumer(bootstrap, group)
    try:
        [tp] = consumer.committed([TopicPartition(topic, 0)], timeout_s=10)
        return tp.offset == consumer.watermarks(TopicPartition(topic, 0), timeout_s=10)[1]
    finally:
        consumer.close()


def _send(producer: Producer, topic: str, ids: list[int]) -> None:
    records = [replace(_raw(i), pod_uid="late") if i == LATE else _raw(i) for i in ids]
    producer.produce(topic, RAW.encode_batch(records), key=b"node-a", partition=0)
    producer.flush(10)


def test_restart_with_a_held_record_emits_nothing_twice(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    topics = Topics(prefix=f"test-{uuid.uuid4().hex[:10]}")
    ensure_topics(
        kafka_bootstrap,
        [
            TopicSpec(topics.raw_tcp, partitions=PARTITIONS),
            TopicSpec(topics.enriched_tcp, partitions=PARTITIONS),
        ],
    )
    publisher = MetadataPublisher(kafka_bootstrap, topics)
    publisher.publish(ParsedObjects(metas=METADATA), prune=False)
    group, instance = f"test-replay-{uuid.uuid4().hex[:8]}", f"joiner-{uuid.uuid4().hex[:6]}"
    # Held far longer than the test: only the metadata can release it.
    env = {"FLOWSCOPE_ENRICHER_HOLDBACK_SECONDS": "600"}
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    first = JoinerProcess(kafka_bootstrap, topics, group, instance, tmp_path / "1.log", env)
    second: JoinerProcess | None = None
    try:
        first.wait_for_log(r"enricher ready", 90)
        for ids in MESSAGES:
            _send(producer, topics.raw_tcp, ids)
        emitted = [i for ids in MESSAGES for i in ids if i != LATE]
        deadline = time.monotonic() + 60
        while sorted(drain_committed(kafka_bootstrap, topics.enriched_tcp)) != emitted:
            assert time.monotonic() < deadline, first.log()[-3000:]
            time.sleep(0.5)
        first.kill()

        late = _pod("late", "10.79.1.11", "node-a")
        publisher.publish(ParsedObjects(metas=[*METADATA, late]), prune=False)
        second = JoinerProcess(kafka_bootstrap, topics, group, instance, tmp_path / "2.log", env)
        second.wait_for_log(r"enricher ready", 90)
        _send(producer, topics.raw_tcp, [6])  # the stream goes on past the re-read stretch
        deadline = time.monotonic() + 60
        while not _committed_to_end(kafka_bootstrap, group, topics.raw_tcp):
            assert time.monotonic() < deadline, second.log()[-3000:]
            time.sleep(0.5)
        ids = Counter(drain_committed(kafka_bootstrap, topics.enriched_tcp))
    finally:
        first.stop()
        if second is not None:
            second.stop()
    assert ids == Counter(range(7)), f"lost {set(range(7)) - set(ids)}, doubled " + str(
        sorted(i for i, n in ids.items() if n > 1)
    )
    log = second.log()
    skipped = [int(n) for n in re.findall(r"replay_skipped(?:_total)?=(\d+)", log)]
    # Message 0 read again: its records 0 and 2 skipped; messages 1 and 2 wholly (3 records).
    assert skipped and skipped[-1] == 5, log[-3000:]
