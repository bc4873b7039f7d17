"""The datagram joiner: raw DNS queries and raw UDP flows + metadata -> enriched records.

DNS queries go to ``enriched.dns`` (the join is :func:`enricher.join.dns_enrich.enrich_dns`), UDP
flow windows to ``enriched.udp`` (:func:`enricher.join.udpflows.enrich_udp`): one consumer reads
both topics, so both joins share this thread's metadata index and one transaction.

It runs beside the TCP joiner (``python -m enricher join`` starts both) with its own
consumer group on the raw DNS topic and its own copy of the metadata, read to its end at
start and followed after. The join itself is the pure :func:`enricher.join.dns_enrich.enrich_dns`;
this module adapts the enricher's metadata index to it and owns the Kafka side.

No hold-back here: a DNS record leaves the collector only after its answer or its timeout
(seconds after the query), by which time the pod's metadata has almost always arrived; what
is still unknown is emitted unresolved and counted (``enricher_dns_*_unresolved_total``).

Exactly-once as the TCP joiner (transactions.py): output and input offsets in one transaction,
its own transactional.id and static member name (``<instance>.dns``).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException, Message, TopicPartition

from enricher.join.classify import AddressClassifier
from enricher.join.dns_enrich import DEFAULT_DNS_SERVERS, DnsServers, ServiceName, enrich_dns
from enricher.join.dnsnames import DnsNames
from enricher.join.enrich import node_template, pod_template, template_of
from enricher.join.outbox import Outbox
from enricher.join.state import MetadataState
from enricher.join.transactions import TransactionalOffsets, final_commit, transactional_id
from enricher.join.udpflows import enrich_udp
from enricher.join.view import MetadataView
from enricher.settings import Settings
from flowscope.codec import DecodeError, JsonCodec
from flowscope.deadletter import dead_letter_of
from flowscope.deadline import Deadline
from flowscope.kafka import (
    RecordConsumer,
    RecordProducer,
    TopicSpec,
    ensure_topics,
    wait_for_broker,
)
from flowscope.probes import Probe
from flowscope.records import (
    Endpoint,
    EnrichedDnsQuery,
    EnrichedUdpFlow,
    PeerClass,
    RawDnsQuery,
    RawUdpFlow,
)
from flowscope.records.metadata import ServiceMeta

log = logging.getLogger("enricher.dns")

RAW_DNS_VERSION = 1
RAW_UDP_VERSION = 1
STAGE = "enricher-dns"


class IndexDnsLookups:
    """:class:`enricher.join.dns_enrich.DnsLookups` over the enricher's metadata index.

    An address is named only at times the metadata vouches for (its watermark): past it, a
    deleted pod's IP may already be someone else's. Ends known by pod uid (the client's,
    from its cgroup) and by node name stay named: those cannot be reused."""

    def __init__(self, state: MetadataState, classifier: AddressClassifier) -> None:
        self._state = state
        self._classifier = classifier

    def pod_endpoint(self, uid: str) -> Endpoint | None:
        pod = self._state.pods.get(uid)
        return None if pod is None else pod_template(pod, self._state)

    def node_endpoint(self, name: str) -> Endpoint | None:
        node = self._state.node(name)
        return None if node is None else node_template(node, self._state)

    def endpoint_at(self, addr: str, t_ns: int) -> Endpoint | None:
        if self._state.past_watermark(t_ns):
            return None
        found = self._state.lookup(addr, t_ns)
        return None if found is None else template_of(found, addr, self._state, self._classifier)

    def service_at(self, addr: str, t_ns: int) -> ServiceName | None:
        if self._state.past_watermark(t_ns):
            return None
        found = self._state.lookup(addr, t_ns)
        return ServiceName(found.namespace, found.name) if isinstance(found, ServiceMeta) else None

    def peer_class(self, addr: str) -> PeerClass:
        return self._classifier.peer_class(self._classifier.classify(addr))


@dataclass
class DnsJoinerCounters:
    records_in: int = 0
    enriched: int = 0
    client_unresolved: int = 0
    server_unresolved: int = 0
    deadlettered: int = 0
    metadata_deadlettered: int = 0  # metadata records refused (also in deadlettered)
    consume_errors: int = 0  # the consumer's count, copied after each consume
    udp_records_in: int = 0
    udp_enriched: int = 0
    udp_client_unresolved: int = 0
    udp_server_unresolved: int = 0
    # Newer than the metadata's watermark: joined without naming any address.
    unvouched: int = 0
    udp_unvouched: int = 0

    def as_metrics(self) -> dict[str, int]:
        return {f"enricher_dns_{name}_total": value for name, value in vars(self).items()}


def join_dns(
    raw: RawDnsQuery, lookups: IndexDnsLookups, servers: DnsServers = DEFAULT_DNS_SERVERS
) -> EnrichedDnsQuery:
    """One record, no I/O (the unit tests' entry point)."""
    return enrich_dns(raw, lookups, servers, classify=lookups.peer_class)


class DnsJoiner:
    def __init__(
        self,
        settings: Settings,
        servers: DnsServers = DEFAULT_DNS_SERVERS,
        names: DnsNames | None = None,
        view: MetadataView | None = None,
    ) -> None:
        self._settings = settings
        self._names = names  # fed with every answer, for the TCP join
        self._topics = settings.topics
        self._servers = servers
        # The process's one metadata index (shared with the TCP joiner), or its own.
        self.view = view or MetadataView(settings)
        self.state = self.view.state
        classifier = AddressClassifier(settings.cluster_cidrs, settings.other_cluster_cidrs)
        self.lookups = IndexDnsLookups(self.state, classifier)
        self._blind = MetadataState()  # what a flow past the watermark is joined with
        self._classifier = classifier
        self.counters = DnsJoinerCounters()
        self._raw_codec = JsonCodec(RawDnsQuery)
        self._out_codec = JsonCodec(EnrichedDnsQuery)
        # Batched output, grouped by output partition, as the TCP joiner does.
        self._outbox = Outbox(
            self._produce, self._topics.enriched_dns, settings.output_batch_records
        )
        self._udp_codec = JsonCodec(RawUdpFlow)
        self._udp_out_codec = JsonCodec(EnrichedUdpFlow)
        self._udp_outbox = Outbox(
            self._produce, self._topics.enriched_udp, settings.output_batch_records
        )
        self._consumer: RecordConsumer | None = None
        self._producer: RecordProducer | None = None
        self._metadata_letters: RecordProducer | None = None
        self._txn: TransactionalOffsets | None = None
        self.ready = threading.Event()
        self.probe = Probe("join dns")

    def start(self) -> None:
        s, t = self._settings, self._topics
        wait_for_broker(s.bootstrap_servers)
        ensure_topics(
            s.bootstrap_servers,
            [
                TopicSpec(t.metadata, compacted=True),
                TopicSpec(t.raw_dns),
                TopicSpec(t.enriched_dns),
                TopicSpec(t.raw_udp),
                TopicSpec(t.enriched_udp),
                TopicSpec(t.deadletter),
            ],
        )
        # Before the metadata is read: a refused metadata record is dead-lettered, through a
        # producer of its own (never transactional: the metadata is read outside any cycle).
        self._metadata_letters = RecordProducer(s.bootstrap_servers)
        self.view.start(self._metadata_rejected)
        group = f"{s.consumer_group}-dns"
        required: dict[str, Any] = {}
        if s.instance:
            required["group.instance.id"] = f"{s.instance}.dns"
        if s.exactly_once:
            required["enable.auto.commit"] = False
            required["isolation.level"] = "read_committed"
            tid = transactional_id(group, s.instance or uuid.uuid4().hex, "dns")
            self._producer = RecordProducer(s.bootstrap_servers, transactional_id=tid)
        else:
            self._producer = RecordProducer(s.bootstrap_servers)
        self._consumer = RecordConsumer(s.bootstrap_servers, group, required=required)
        if s.exactly_once:
            self._txn = TransactionalOffsets(
                self._consumer,
                self._producer,
                s.commit_interval_s,
                s.commit_max_records,
                self._rewind,
            )
        for outbox, topic in ((self._outbox, t.enriched_dns), (self._udp_outbox, t.enriched_udp)):
            out_partitions = self._consumer.partitions(topic)
            if out_partitions:
                outbox.partitions = len(out_partitions)
        self._consumer.subscribe([t.raw_dns, t.raw_udp], on_revoke=self._on_revoke)
        self.ready.set()
        self.probe.set_ready()
        log.info("enricher dns ready: consuming %s and %s", t.raw_dns, t.raw_udp)

    def run(self, stop: threading.Event) -> None:
        if self._consumer is None:
            self.start()
        assert self._consumer is not None
        if self._txn is not None:
            self._txn.stop = stop
        s = self._settings
        next_stats = time.monotonic() + s.stats_interval_s
        try:
            while not stop.is_set():
                self.probe.beat()
                batch = self._consumer.consume(s.batch_size, 0.1)
                self.counters.consume_errors = self._consumer.counters.errors
                with self.view.lock:
                    self.view.poll()
                    self.process_batch(batch)
                if self._txn is not None:
                    self._txn.maybe_commit()
                if time.monotonic() >= next_stats:
                    next_stats = time.monotonic() + s.stats_interval_s
                    log.info("dns counters: %s", self.counters.as_metrics())
        finally:
            self.close()

    def process_batch(self, batch: list[Message]) -> None:
        """Join a batch of messages (RecordConsumer.consume hands on no error messages)."""
        assert self._consumer is not None
        udp_topic = self._topics.raw_udp
        for msg in batch:
            if msg.topic() == udp_topic:
                self.handle_udp(msg)
            else:
                self.handle(msg)
        # Output first, then offsets: a stored offset never runs ahead of what was produced.
        self._outbox.flush()
        self._udp_outbox.flush()
        if not batch:
            return
        offsets = [
            TopicPartition(m.topic() or "", m.partition() or 0, (m.offset() or 0) + 1)
            for m in batch
        ]
        if self._txn is not None:
            self._txn.store(offsets)  # later offsets of a partition replace earlier ones
            self._txn.took(len(batch))
        else:
            self._consumer.store_offsets(offsets)

    def _on_revoke(self, _consumer: RecordConsumer, partitions: list[TopicPartition]) -> None:
        """Commit while this member still owns the partitions (nothing is held here)."""
        if self._txn is not None:
            self._txn.commit()
            self._txn.forget((tp.topic, tp.partition) for tp in partitions)

    def _rewind(self) -> None:
        """An aborted transaction: read again from the committed offsets."""
        assert self._consumer is not None
        assignment = self._consumer.assignment()
        if assignment:
            self._consumer.rewind(assignment)

    def _produce(self, topic: str, value: bytes, key: str, records: int) -> None:
        assert self._producer is not None
        self._producer.produce(topic, value, key=key, records=records)

    def handle(self, msg: Message) -> None:
        assert self._producer is not None
        try:
            raws = self._raw_codec.decode_batch(msg.value())
        except DecodeError as exc:
            self.counters.records_in += 1
            self.dead_letter(msg, "decode", str(exc))
            return
        raw_key = msg.key()
        key = raw_key.decode("utf-8", "replace") if isinstance(raw_key, bytes) else raw_key or ""
        for raw in raws:
            self.counters.records_in += 1
            if raw.v != RAW_DNS_VERSION:
                self.dead_letter(msg, "unsupported_version", f"RawDnsQuery v={raw.v}")
                continue
            if self.state.past_watermark(raw.time_ns):
                self.counters.unvouched += 1
            try:
                out = join_dns(raw, self.lookups, self._servers)
            except Exception as exc:  # a bug in the join must cost one record, not the stream
                self.dead_letter(msg, "enrich_error", f"{type(exc).__name__}: {exc}")
                continue
            if out.client.attribution == "unresolved":
                self.counters.client_unresolved += 1
            if out.server.attribution == "unresolved":
                self.counters.server_unresolved += 1
            self._outbox.add(key, self._out_codec.encode(out))
            self.counters.enriched += 1
            if self._names is not None:
                self._names.add(raw)

    def handle_udp(self, msg: Message) -> None:
        try:
            raws = self._udp_codec.decode_batch(msg.value())
        except DecodeError as exc:
            self.counters.udp_records_in += 1
            self.dead_letter(msg, "decode", str(exc))
            return
        raw_key = msg.key()
        key = raw_key.decode("utf-8", "replace") if isinstance(raw_key, bytes) else raw_key or ""
        for raw in raws:
            self.counters.udp_records_in += 1
            if raw.v != RAW_UDP_VERSION:
                self.dead_letter(msg, "unsupported_version", f"RawUdpFlow v={raw.v}")
                continue
            # Past the watermark no address is named: the flow's ends are resolved by IP only.
            state = self.state
            if state.past_watermark(raw.window_start_ns):
                self.counters.udp_unvouched += 1
                state = self._blind
            try:
                out = enrich_udp(raw, state, self._classifier, self._names)
            except Exception as exc:  # a bug in the join must cost one record, not the stream
                self.dead_letter(msg, "enrich_error", f"{type(exc).__name__}: {exc}")
                continue
            if out.client.attribution == "unresolved":
                self.counters.udp_client_unresolved += 1
            if out.server.attribution == "unresolved":
                self.counters.udp_server_unresolved += 1
            self._udp_outbox.add(key, self._udp_out_codec.encode(out))
            self.counters.udp_enriched += 1

    def _metadata_rejected(self, msg: Message, outcome: str) -> None:
        self.counters.metadata_deadlettered += 1
        self.dead_letter(
            msg, "metadata", self.state.last_rejection or outcome, via=self._metadata_letters
        )

    def dead_letter(
        self, msg: Message, reason: str, detail: str, via: RecordProducer | None = None
    ) -> None:
        producer = via or self._producer
        assert producer is not None
        key = msg.key()
        letter = dead_letter_of(msg, stage=STAGE, reason=f"{reason}: {detail}")
        producer.produce(self._topics.deadletter, letter, key=key)
        self.counters.deadlettered += 1
        log.warning(
            "dead letter (%s) at %s[%s]@%s", reason, msg.topic(), msg.partition(), msg.offset()
        )

    def close(self) -> None:
        # The same bound as the TCP joiner's: a broker that is away cannot hold the stop up.
        deadline = Deadline(self._settings.shutdown_timeout_s)
        if self._txn is not None and self._producer is not None:
            uncommitted = final_commit(self._txn, self._producer, deadline)
            if uncommitted:
                log.warning("%d DNS join records uncommitted at shutdown", uncommitted)
            self._txn = None
        if self._consumer is not None:
            self._consumer.close(deadline.left())
            self._consumer = None
        for producer in (self._producer, self._metadata_letters):
            if producer is not None:
                try:
                    left = producer.close(deadline.left())
                except KafkaException as exc:  # a fenced producer: the cause is reported
                    log.warning("flush at shutdown failed: %s", exc)
                    continue
                if left:
                    log.warning("%d DNS join records undelivered at shutdown", left)
        self.view.stop(self._metadata_rejected, deadline.left())
        log.info("final dns counters: %s", self.counters.as_metrics())
