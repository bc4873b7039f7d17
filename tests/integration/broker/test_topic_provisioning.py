"""``python -m flowscope topics create|check`` against the shared broker: every topic created
with its family's partitions and settings; a topic made otherwise is reported, not changed."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from confluent_kafka.cimpl import NewTopic

from flowscope import provisioning
from flowscope.kafka import admin_client
from flowscope.topics import Topics


def _run(bootstrap: str, topics: Topics, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "flowscope",
            "topics",
            *args,
            "--bootstrap-servers",
            bootstrap,
            "--topic-prefix",
            topics.prefix,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def cleanup(kafka_bootstrap: str, topics: Topics) -> Iterator[None]:
    yield
    names = [t for names in provisioning.family_topics(topics).values() for t in names]
    admin = admin_client(kafka_bootstrap)
    existing = set(admin.list_topics(timeout=10).topics)
    doomed = [n for n in names if n in existing]
    if doomed:
        for future in admin.delete_topics(doomed, operation_timeout=30).values():
            future.result(timeout=30)


def test_create_then_check_and_a_topic_made_otherwise(
    kafka_bootstrap: str, topics: Topics, cleanup: None
) -> None:
    admin = admin_client(kafka_bootstrap)
    # Made beforehand with one partition: the plan says 12 for raw topics.
    for future in admin.create_topics([NewTopic(topics.raw_tcp, 1, 1)]).values():
        future.result(timeout=30)

    before = _run(kafka_bootstrap, topics, "check")
    assert before.returncode == 1
    planned = [t for names in provisioning.family_topics(topics).values() for t in names]
    assert before.stdout.count(": missing") == len(planned) - 1, before.stdout

    created = _run(kafka_bootstrap, topics, "create", "--partitions", "metrics=3")
    assert created.returncode == 1, created.stdout + created.stderr  # raw.tcp differs
    assert created.stdout.count("created ") == len(planned) - 1, created.stdout
    assert f"differs: {topics.raw_tcp}: 1 partitions, planned 12" in created.stdout

    meta = admin.list_topics(timeout=10).topics
    assert len(meta[topics.raw_dns].partitions) == 12
    assert len(meta[topics.metrics_tcp_pairs].partitions) == 3
    assert len(meta[topics.metadata].partitions) == 1

    after = _run(kafka_bootstrap, topics, "check", "--partitions", "metrics=3")
    lines = [line for line in after.stdout.splitlines() if line.startswith("differs:")]
    # Only the topic made otherwise differs (its partitions, and its retention unset).
    assert lines and all(topics.raw_tcp in line for line in lines), after.stdout
    assert after.returncode == 1
