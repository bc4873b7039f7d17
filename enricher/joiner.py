"""The joiner app: raw records + metadata topic -> enriched records.

At start the whole metadata topic is read to its end, so the first raw record is joined with
a complete picture; after that the metadata topic is followed between raw batches. Raw records
come through a consumer group (instances share the partitions). A record that cannot be
decoded or enriched goes to the dead-letter topic with the reason; the stream never stops.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from enricher.enrich import enrich
from enricher.follower import MetadataFollower
from enricher.settings import Settings
from enricher.state import MetadataState
from flowscope.codec import DecodeError, JsonCodec
from flowscope.kafka import (
    CONSUMER_DEFAULTS,
    RecordProducer,
    TopicSpec,
    ensure_topics,
    wait_for_broker,
)
from flowscope.records import DeadLetter, EnrichedTcpConnection, RawTcpConnection

log = logging.getLogger("enricher")

RAW_VERSION = 1
STAGE = "enricher"


@dataclass
class JoinerCounters:
    records_in: int = 0
    enriched: int = 0
    remote_unresolved: int = 0  # remote end not named (private address or bare ClusterIP)
    remote_external: int = 0  # remote end on the internet
    local_unresolved: int = 0  # the collector's pod uid has no metadata (yet)
    deadlettered: int = 0
    deadletter_reasons: Counter[str] = field(default_factory=Counter)
    consume_errors: int = 0


class Joiner:
    def __init__(
        self,
        settings: Settings,
        consumer_overrides: Mapping[str, Any] | None = None,
        producer_overrides: Mapping[str, Any] | None = None,
    ) -> None:
        self._settings = settings
        self._topics = settings.topics
        self._consumer_overrides = dict(consumer_overrides or {})
        self._producer_overrides = dict(producer_overrides or {})
        self.state = MetadataState(deleted_grace_ns=int(settings.deleted_pod_grace_s * 1e9))
        self.counters = JoinerCounters()
        self._raw_codec = JsonCodec(RawTcpConnection)
        self._out_codec = JsonCodec(EnrichedTcpConnection)
        self._dead_codec = JsonCodec(DeadLetter)
        self._follower: MetadataFollower | None = None
        self._consumer: Consumer | None = None
        self._producer: RecordProducer | None = None
        self._closed = False
        self.ready = threading.Event()  # set once metadata is loaded and raw is subscribed

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        s, t = self._settings, self._topics
        wait_for_broker(s.bootstrap_servers)
        ensure_topics(
            s.bootstrap_servers,
            [
                TopicSpec(t.metadata, compacted=True),
                TopicSpec(t.raw_tcp),
                TopicSpec(t.enriched_tcp),
                TopicSpec(t.deadletter),
            ],
        )
        self._follower = MetadataFollower(s.bootstrap_servers, t.metadata)
        loaded = self._follower.load(self.state.apply, timeout_s=s.metadata_load_timeout_s)
        log.info(
            "metadata loaded from %s: %d records, %d pods, %d nodes, %d services",
            t.metadata,
            loaded,
            len(self.state.pods),
            len(self.state.nodes),
            len(self.state.services),
        )
        self._producer = RecordProducer(s.bootstrap_servers, self._producer_overrides)
        config: dict[str, Any] = {
            **CONSUMER_DEFAULTS,
            **self._consumer_overrides,
            "bootstrap.servers": s.bootstrap_servers,
            "group.id": s.consumer_group,
        }
        self._consumer = Consumer(config)
        self._consumer.subscribe([t.raw_tcp])
        self.ready.set()
        # Orchestrators (demo, tests, readiness probes) wait for this exact line.
        log.info("enricher ready: consuming %s", t.raw_tcp)

    def run(self, stop: threading.Event) -> None:
        """Join until ``stop`` is set, then flush, commit and log the final counters."""
        if self._consumer is None:
            self.start()
        assert self._consumer is not None and self._follower is not None
        next_stats = time.monotonic() + self._settings.stats_interval_s
        try:
            while not stop.is_set():
                self._follower.poll(self.state.apply)
                batch = self._consumer.consume(
                    num_messages=self._settings.batch_size,
                    timeout=self._settings.poll_timeout_s,
                )
                if batch:
                    self.process_batch(batch)
                if time.monotonic() >= next_stats:
                    self.state.purge(time.time_ns())
                    self.log_stats()
                    next_stats = time.monotonic() + self._settings.stats_interval_s
        finally:
            self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._producer is not None:
            left = self._producer.flush(30.0)
            if left:
                log.warning("%d produced records still undelivered at shutdown", left)
        if self._consumer is not None:
            # Closing commits the offsets stored after each batch.
            self._consumer.close()
            self._consumer = None
        if self._follower is not None:
            self._follower.close()
        self.log_stats(final=True)

    # -- the hot path -----------------------------------------------------------------------

    def process_batch(self, batch: list[Message]) -> None:
        assert self._consumer is not None and self._producer is not None
        last: dict[tuple[str, int], int] = {}
        for msg in batch:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    self.counters.consume_errors += 1
                    log.warning("consume error: %s", err)
                continue
            self.handle(msg)
            offset = msg.offset()
            if offset is not None:
                last[(msg.topic() or "", msg.partition() or 0)] = offset
        if last:
            self._consumer.store_offsets(
                offsets=[TopicPartition(t, p, o + 1) for (t, p), o in last.items()]
            )

    def handle(self, msg: Message) -> None:
        assert self._producer is not None
        self.counters.records_in += 1
        value = msg.value()
        try:
            raw = self._raw_codec.decode(value)
        except DecodeError as exc:
            self.dead_letter(msg, "decode", str(exc))
            return
        if raw.v != RAW_VERSION:
            self.dead_letter(
                msg,
                "unsupported_version",
                f"RawTcpConnection: unsupported schema version v={raw.v} (this enricher reads "
                f"v={RAW_VERSION})",
            )
            return
        try:
            out = enrich(raw, self.state)
        except Exception as exc:  # a bug in the join must cost one record, not the stream
            self.dead_letter(msg, "enrich_error", f"enrich failed: {type(exc).__name__}: {exc}")
            return
        c = self.counters
        local, remote = (
            (out.server, out.client) if raw.role == "server" else (out.client, out.server)
        )
        if remote.attribution == "unresolved":
            c.remote_unresolved += 1
        elif remote.attribution == "external":
            c.remote_external += 1
        if local.attribution == "unresolved":
            c.local_unresolved += 1
        self._producer.produce(
            self._topics.enriched_tcp, self._out_codec.encode(out), key=out.client.workload_key()
        )
        c.enriched += 1

    def dead_letter(self, msg: Message, category: str, reason: str) -> None:
        assert self._producer is not None
        key = msg.key()
        value = msg.value()
        letter = DeadLetter(
            stage=STAGE,
            reason=reason,
            source_topic=msg.topic() or "",
            partition=msg.partition() or 0,
            offset=msg.offset() or 0,
            key=key.decode("utf-8", "replace") if isinstance(key, bytes) else key,
            payload=(
                value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value or "")
            ),
            time_ns=time.time_ns(),
        )
        self._producer.produce(self._topics.deadletter, self._dead_codec.encode(letter), key=key)
        self.counters.deadlettered += 1
        self.counters.deadletter_reasons[category] += 1

    # -- counters ---------------------------------------------------------------------------

    def metrics(self) -> dict[str, int]:
        c, sc = self.counters, self.state.counters
        out = {
            "enricher_records_in_total": c.records_in,
            "enricher_records_enriched_total": c.enriched,
            "enricher_remote_unresolved_total": c.remote_unresolved,
            "enricher_remote_external_total": c.remote_external,
            "enricher_local_unresolved_total": c.local_unresolved,
            "enricher_deadletter_total": c.deadlettered,
            "enricher_consume_errors_total": c.consume_errors,
            "enricher_metadata_upserts_total": sc.upserts,
            "enricher_metadata_tombstones_total": sc.tombstones,
            "enricher_metadata_invalid_total": sc.invalid + sc.unsupported_version,
            "enricher_metadata_pods_purged_total": sc.pods_purged,
            "enricher_metadata_pods": len(self.state.pods),
            "enricher_metadata_nodes": len(self.state.nodes),
            "enricher_metadata_services": len(self.state.services),
        }
        for category, n in sorted(c.deadletter_reasons.items()):
            out[f"enricher_deadletter_{category}_total"] = n
        if self._follower is not None:
            out["enricher_metadata_read_errors_total"] = self._follower.read_errors
        if self._producer is not None:
            p = self._producer.counters
            out["enricher_produce_queued_total"] = p.produced
            out["enricher_produce_delivered_total"] = p.delivered
            out["enricher_produce_delivery_failed_total"] = p.delivery_failed
            out["enricher_produce_dropped_buffer_full_total"] = p.dropped_buffer_full
        return out

    def log_stats(self, final: bool = False) -> None:
        line = " ".join(f"{k}={v}" for k, v in self.metrics().items())
        log.info("%s %s", "final counters:" if final else "counters:", line)
