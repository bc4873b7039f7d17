"""Publishes slim metadata to the compacted metadata topic.

A file of objects is a snapshot of the cluster: every object in it is written under its key,
and every key already in the topic that the file no longer has gets a tombstone (the object
was deleted), unless pruning is switched off.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from enricher import EnricherError
from enricher.join.follower import MetadataFollower
from enricher.publish.kubeobjects import ParsedObjects
from flowscope.kafka import ProducerCounters, RecordProducer, TopicSpec, ensure_topics
from flowscope.records.metadata import MetaCodec
from flowscope.topics import Topics


class PublishError(EnricherError):
    """Some metadata records were not delivered."""


@dataclass
class PublishReport:
    published: Counter[str] = field(default_factory=Counter)  # by kind
    tombstones: int = 0
    producer: ProducerCounters | None = None

    def summary(self) -> str:
        kinds = ", ".join(f"{k}={n}" for k, n in sorted(self.published.items())) or "nothing"
        return f"published {kinds}; tombstones={self.tombstones}"


class MetadataPublisher:
    def __init__(
        self,
        bootstrap_servers: str,
        topics: Topics,
        producer_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self._bootstrap = bootstrap_servers
        self._topics = topics
        self._producer_overrides = producer_overrides
        self._codec = MetaCodec()

    def ensure_topic(self) -> None:
        ensure_topics(self._bootstrap, [TopicSpec(self._topics.metadata, compacted=True)])

    def existing_keys(self) -> set[str]:
        """Keys whose latest record in the topic is a live object (not a tombstone)."""
        keys: set[str] = set()

        def track(key: str | None, value: bytes | None, _t: int) -> None:
            if key is None:
                return
            if value is None:
                keys.discard(key)
            else:
                keys.add(key)

        follower = MetadataFollower(self._bootstrap, self._topics.metadata)
        try:
            follower.load(track)
        finally:
            follower.close()
        return keys

    def publish(
        self, parsed: ParsedObjects, prune: bool = True, timeout_s: float = 30.0
    ) -> PublishReport:
        self.ensure_topic()
        stale = self.existing_keys() if prune else set()
        producer = RecordProducer(self._bootstrap, self._producer_overrides)
        report = PublishReport(producer=producer.counters)
        topic = self._topics.metadata
        for meta in parsed.metas:
            key = meta.key()
            stale.discard(key)
            if producer.produce(topic, self._codec.encode(meta), key=key):
                report.published[key.split("/", 1)[0]] += 1
        for key in sorted(stale):
            if producer.produce(topic, None, key=key):
                report.tombstones += 1
        left = producer.flush(timeout_s)
        counters = producer.counters
        if left or counters.delivery_failed or counters.dropped_buffer_full:
            raise PublishError(
                f"metadata not fully delivered to {topic}: in flight={left}, "
                f"failed={counters.delivery_failed}, dropped={counters.dropped_buffer_full}, "
                f"last error={counters.last_error}"
            )
        return report
