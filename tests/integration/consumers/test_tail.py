"""``flowscope tail`` against the real broker: batch messages unrolled, the filter applied,
every record shown exactly once, an undecodable message counted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import msgspec
from consumers_records import conn, pod

from flowscope.codec import JsonCodec
from flowscope.kafka import RecordProducer, TopicSpec, ensure_topics
from flowscope.records import EnrichedTcpConnection
from flowscope.topics import Topics

FLOWSCOPE = Path(sys.executable).parent / "flowscope"


def test_tail_shows_the_filtered_records_of_batches_once(
    kafka_bootstrap: str, topics: Topics
) -> None:
    fe, cat, pay = pod("frontend", "shop"), pod("catalog", "shop"), pod("payments", "billing")
    records = [
        conn(fe, cat, port=p, outcome="refused" if p % 3 == 0 else "closed") for p in range(30)
    ] + [conn(pod("ledger", "billing"), pay, port=100 + p, outcome="refused") for p in range(5)]
    ensure_topics(kafka_bootstrap, [TopicSpec(topics.enriched_tcp, partitions=2)])
    codec = JsonCodec(EnrichedTcpConnection)
    producer = RecordProducer(kafka_bootstrap)
    for i in range(0, len(records), 8):  # batch messages of up to 8 records, as the enricher
        batch = records[i : i + 8]
        producer.produce(
            topics.enriched_tcp, codec.encode_batch(batch), key=str(i), records=len(batch)
        )
    producer.produce(topics.enriched_tcp, b'{"not": "a connection"}', key="x")
    assert producer.flush(30) == 0

    done = subprocess.run(
        [
            str(FLOWSCOPE),
            "tail",
            "enriched.tcp",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--topic-prefix",
            topics.prefix,
            "--start",
            "earliest",
            "--filter",
            "namespace=shop outcome!=closed",
            "--idle-exit-seconds",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr  # the bad message is reported in the exit code
    assert "1 messages did not decode" in done.stderr
    shown = [codec.decode(line.encode()) for line in done.stdout.splitlines()]
    expected = [r for r in records if r.client.namespace == "shop" and r.outcome != "closed"]
    assert len(expected) == 10
    assert sorted(r.client.port for r in shown) == sorted(r.client.port for r in expected)
    # Wire names, as on the topic: a consumer of tail's output reads what it would read there.
    first = json.loads(done.stdout.splitlines()[0])
    assert (
        "end_time_unix_nano" in first
        and msgspec.json.decode(done.stdout.splitlines()[0].encode(), type=EnrichedTcpConnection)
        in expected
    )

    table = subprocess.run(
        [
            str(FLOWSCOPE),
            "tail",
            f"{topics.prefix}.enriched.tcp",
            "--format",
            "table",
            "--bootstrap-servers",
            kafka_bootstrap,
            "--topic-prefix",
            topics.prefix,
            "--start",
            "earliest",
            "--filter",
            "workload~ledger",
            "--max-records",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    rows = table.stdout.splitlines()
    assert len(rows) == 5, table
    assert all("billing/Deployment/ledger" in row and "refused" in row for row in rows), rows
