"""The joiner app: raw records + metadata topic -> enriched records.

At start the whole metadata topic is read to its end, so the first raw record is joined with
a complete picture; after that the metadata topic is followed between raw batches. Raw records
come through a consumer group: instances share the raw partitions, while each reads the whole
metadata topic (the follower assigns every partition itself, outside the group). A record that
cannot be decoded or enriched goes to the dead-letter topic with the reason; the stream never
stops.

A record whose pod or remote address is not known yet is held back (see holdback.py) and
retried when metadata for it arrives; when the hold time is up it is emitted as unresolved.
Offsets are committed no further than the oldest held record, so a crash re-reads it. A raw
message may carry many records (collector batches): its offset stays uncommitted while any
of them is held.

Exactly-once (``exactly_once``, the default): output, dead letters and input offsets are
committed in one Kafka transaction (transactions.py), so read_committed consumers see each
record once across kills and restarts. The records *after* a held one, emitted and committed
while it waited, are read again if the instance dies before the held record is released (the
committed offset stops at it): the commit's metadata says which of them were still held, and
only those are joined again (replay.py; the others are counted as skipped). Static group membership
(``instance``) lets a restarted instance take its partitions back without a rebalance.
Without ``exactly_once`` the offsets are auto-committed after the output (at-least-once).

Output: ``output_batch_records`` above 1 sends enriched records as JSON arrays grouped per
output partition (outbox.py), flushed after every consumed batch and before its offsets are
stored, so batching adds no wait of its own and a stored offset never runs ahead of output.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from confluent_kafka import KafkaException, Message, TopicPartition

from enricher import EnricherError
from enricher.join import replay
from enricher.join.classify import AddressClassifier
from enricher.join.dnsnames import DnsNames
from enricher.join.holdback import Held, Holdback, PartitionKey
from enricher.join.outbox import Outbox
from enricher.join.render import Rendered, Renderer, self_check
from enricher.join.replay import Replay
from enricher.join.state import WATERMARK, MetadataState
from enricher.join.transactions import TransactionalOffsets, final_commit, transactional_id
from enricher.join.view import MetadataView
from enricher.settings import Settings
from flowscope.codec import DecodeError, JsonCodec
from flowscope.deadletter import dead_letter_of
from flowscope.deadline import Deadline
from flowscope.kafka import (
    ConsumerCounters,
    RecordConsumer,
    RecordProducer,
    TopicSpec,
    ensure_topics,
    wait_for_broker,
)
from flowscope.probes import Probe
from flowscope.records import RawTcpConnection

log = logging.getLogger("enricher")

RAW_VERSION = 1
STAGE = "enricher"
_UNREAD = Replay(0, None)  # a partition whose committed metadata was not read yet


@dataclass
class JoinerCounters:
    records_in: int = 0
    enriched: int = 0
    remote_unresolved: int = 0  # remote end not named (private address or bare ClusterIP)
    remote_external: int = 0  # remote end on the internet
    local_unresolved: int = 0  # the collector's pod uid has no metadata (yet)
    remote_other_cluster: int = 0  # remote end in another cluster's CIDRs
    deadlettered: int = 0
    held: int = 0  # records put on hold (metadata missing), each counted once
    held_resolved: int = 0  # emitted named after metadata arrived
    held_expired: int = 0  # emitted unresolved after the hold time
    held_released_unresolved: int = 0  # emitted unresolved early: revoke or shutdown
    held_overflow: int = 0  # emitted unresolved at once: the hold buffer was full
    # Held because newer than the metadata's watermark (its publisher behind or down):
    held_watermark: int = 0
    held_watermark_caught_up: int = 0  # joined once the watermark passed them
    held_watermark_unresolved: int = 0  # emitted with no metadata: it never caught up
    # After a restart, records re-read behind a held one (replay.py):
    replay_skipped: int = 0  # emitted before the restart: not again
    replay_repeated: int = 0  # not known whether emitted (metadata past its bound): again
    # Records in the transaction the last commit at shutdown could not commit (broker away):
    # never read committed; their input offsets were not committed, so they are read again.
    shutdown_uncommitted: int = 0
    deadletter_reasons: Counter[str] = field(default_factory=Counter)


class Joiner:
    def __init__(
        self,
        settings: Settings,
        consumer_overrides: Mapping[str, Any] | None = None,
        producer_overrides: Mapping[str, Any] | None = None,
        names: DnsNames | None = None,
        view: MetadataView | None = None,
    ) -> None:
        self._settings = settings
        self.names = names
        self._topics = settings.topics
        self._consumer_overrides = dict(consumer_overrides or {})
        self._producer_overrides = dict(producer_overrides or {})
        # The process's one metadata index (shared with the datagram joiner), or its own.
        self.view = view or MetadataView(settings)
        self.state = self.view.state
        self.classifier = AddressClassifier(settings.cluster_cidrs, settings.other_cluster_cidrs)
        self.holdback: Holdback[RawTcpConnection] = Holdback(
            int(settings.holdback_s * 1e9), settings.holdback_max_records
        )
        self.renderer = Renderer(self.state, self.classifier, names=names)
        # Renders records the metadata's watermark never reached: every end unresolved.
        self._blind = Renderer(MetadataState(), self.classifier)
        self._render = self.renderer.render
        self._render_many = self.renderer.render_many
        if (problem := self_check()) is not None:
            log.warning("C join loop disabled, using the reference path: %s", problem)
            self.renderer.native = False
        self.counters = JoinerCounters()
        self._outbox = Outbox(
            self._produce_enriched, self._topics.enriched_tcp, settings.output_batch_records
        )
        # Per raw partition, the offset after the last record handled (held or not).
        self._next_offsets: dict[PartitionKey, int] = {}
        # Per raw partition owned: what its committed offset's metadata says was emitted
        # already (None once read past it, or when there was nothing).
        self._replays: dict[PartitionKey, Replay | None] = {}
        self._raw_codec = JsonCodec(RawTcpConnection)
        self._consumer: RecordConsumer | None = None
        self._consumer_counters = ConsumerCounters()  # the consumer's, once it exists
        self._producer: RecordProducer | None = None
        # Letters for refused metadata records: never transactional, because the metadata is
        # read outside any consume-transform-produce cycle (at start, and between batches).
        self._metadata_letters: RecordProducer | None = None
        self._txn: TransactionalOffsets | None = None  # exactly_once: offsets go here
        self.rewinds = 0  # aborted transactions whose input was read again
        self._revoking: set[PartitionKey] = set()
        self._closed = False
        # batch_size counts records; raw messages may hold one or hundreds (collector
        # batches), so the messages asked per consume() follow what the last batch held.
        self._messages_per_consume = settings.batch_size
        self.ready = threading.Event()  # set once metadata is loaded and raw is subscribed
        self.probe = Probe("join tcp")  # /readyz with ``ready``, /livez from the loop

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
        # Before the metadata is read: a refused metadata record is dead-lettered.
        self._metadata_letters = RecordProducer(s.bootstrap_servers, self._producer_overrides)
        loaded = self.view.start(self._metadata_rejected)
        with self.view.lock:
            self.state.track_changes()
        # The metadata loaded now lives as long as the process: out of the cyclic GC's sight,
        # full collections no longer walk a large cluster's objects (measured ~2% of the join).
        gc.freeze()
        log.info(
            "metadata loaded from %s: %d records, %d pods, %d nodes, %d services",
            t.metadata,
            loaded,
            len(self.state.pods),
            len(self.state.nodes),
            len(self.state.services),
        )
        required: dict[str, Any] = {}
        if s.instance:
            # Static membership: a restarted instance rejoins as the same member and gets
            # its partitions back at once, not after the dead member's session timeout.
            required["group.instance.id"] = f"{s.instance}.tcp"
        if s.exactly_once:
            # Offsets travel in the transaction, never by auto-commit; read_committed makes
            # the committed-offset fetch wait for a transaction still being resolved.
            required["enable.auto.commit"] = False
            required["isolation.level"] = "read_committed"
            # Created (and its transactions initialised) before the consumer joins: that
            # fences the zombie with the same id and aborts its open transaction first.
            tid = transactional_id(s.consumer_group, s.instance or uuid.uuid4().hex, "tcp")
            self._producer = RecordProducer(
                s.bootstrap_servers, self._producer_overrides, transactional_id=tid
            )
            log.info("exactly-once output: transactional.id %s", tid)
        else:
            self._producer = RecordProducer(s.bootstrap_servers, self._producer_overrides)
        self._consumer = RecordConsumer(
            s.bootstrap_servers, s.consumer_group, self._consumer_overrides, required=required
        )
        self._consumer_counters = self._consumer.counters
        if s.exactly_once:
            self._txn = TransactionalOffsets(
                self._consumer,
                self._producer,
                s.commit_interval_s,
                s.commit_max_records,
                self._rewind,
            )
        self._consumer.subscribe([t.raw_tcp], on_revoke=self._on_revoke)
        self._refresh_output_partitions()
        self.ready.set()
        self.probe.set_ready()
        # Orchestrators (demo, tests, readiness probes) wait for this exact line.
        log.info("enricher ready: consuming %s", t.raw_tcp)

    def run(self, stop: threading.Event) -> None:
        """Join until ``stop`` is set, then flush, commit and log the final counters."""
        if self._consumer is None:
            self.start()
        assert self._consumer is not None
        if self._txn is not None:
            self._txn.stop = stop
        next_stats = time.monotonic() + self._settings.stats_interval_s
        try:
            while not stop.is_set():
                self.probe.beat()
                batch = self._consumer.consume(
                    self._messages_per_consume, self._settings.poll_timeout_s
                )
                with self.view.lock:
                    # Whichever thread applied a change, the index tracked it for us.
                    self.view.poll()
                    self.retry_held()
                    if batch:
                        self.process_batch(batch)
                    if len(self.holdback):
                        self.expire_held()
                if self._txn is not None:
                    self._txn.maybe_commit()
                if time.monotonic() >= next_stats:
                    with self.view.lock:
                        self.state.purge(time.time_ns())
                    self._refresh_output_partitions()
                    self.log_stats()
                    next_stats = time.monotonic() + self._settings.stats_interval_s
        finally:
            self.close()

    def _refresh_output_partitions(self) -> None:
        """Batches are grouped by output partition (see outbox.py), so the count must follow
        the topic's (partitions can be added while we run)."""
        if self._consumer is None or self._outbox.max_records == 1:
            return
        topic = self._topics.enriched_tcp
        try:
            # Briefly: with the broker away this blocks the loop (and a SIGTERM) meanwhile.
            partitions = self._consumer.partitions(topic, timeout_s=2.0)
        except KafkaException as exc:
            log.warning("could not read the partition count of %s: %s", topic, exc)
            return
        if partitions:
            self._outbox.partitions = len(partitions)

    def _produce_enriched(self, topic: str, value: bytes, key: str, records: int) -> None:
        assert self._producer is not None
        # With ``records`` the producer counts deliveries in records (and marks the batch).
        self._producer.produce(topic, value, key=key, records=records)

    def assigned_partitions(self) -> list[int]:
        """Raw partitions this instance owns now (the group splits them among instances)."""
        consumer = self._consumer
        return [] if consumer is None else sorted(tp.partition for tp in consumer.assignment())

    def close(self) -> None:
        """Within ``shutdown_timeout_s`` of Kafka waits: emit what is held, commit, deliver;
        what the broker did not take by then is counted, never waited for."""
        if self._closed:
            return
        self._closed = True
        deadline = Deadline(self._settings.shutdown_timeout_s)
        if self._producer is not None and not self._producer.fenced and len(self.holdback):
            # Emitted as they are rather than kept: the next owner of the partitions would
            # re-read every record after them too. (A failed producer commits nothing: the
            # next owner reads them again anyway.)
            self._emit_released(self.holdback.release_all(), resolved_as="stopped")
            self._outbox.flush()
            self._store_offsets(set(self._next_offsets))
        if self._txn is not None and self._producer is not None:
            self.counters.shutdown_uncommitted += final_commit(self._txn, self._producer, deadline)
        undelivered = 0
        for producer in (self._producer, self._metadata_letters):
            if producer is not None:
                try:
                    undelivered += producer.close(deadline.left())
                except KafkaException as exc:  # a fenced producer: the cause is reported
                    log.warning("flush at shutdown failed: %s", exc)
        if self._consumer is not None:
            # Closing commits the offsets stored after each batch; a close the broker holds
            # up is left behind.
            self._consumer.close(deadline.left())
            self._consumer = None
        self.view.stop(self._metadata_rejected, deadline.left())
        self.log_stats(final=True)
        log.info(
            "shutdown took %.1fs: %d records uncommitted, %d undelivered",
            deadline.elapsed(),
            self.counters.shutdown_uncommitted,
            undelivered,
        )

    # -- the hot path -----------------------------------------------------------------------

    def process_batch(self, batch: list[Message]) -> None:
        """Join a batch of messages (RecordConsumer.consume hands on no error messages)."""
        assert self._consumer is not None and self._producer is not None
        touched: set[PartitionKey] = set()
        next_offsets = self._next_offsets
        handle = self.handle
        records_before = self.counters.records_in
        for msg in batch:
            part = (msg.topic() or "", msg.partition() or 0)
            offset = msg.offset() or 0
            handle(msg, part, offset)
            next_offsets[part] = offset + 1
            touched.add(part)
        records = self.counters.records_in - records_before
        per_message = max(1, records // len(batch))
        self._messages_per_consume = max(1, self._settings.batch_size // per_message)
        # Produced before the offsets are stored: a stored offset never runs ahead of output.
        self._outbox.flush()
        if touched:
            self._store_offsets(touched)
        if self._txn is not None:
            self._txn.took(records)

    def _store_offsets(self, partitions: set[PartitionKey]) -> None:
        """Store (for the next auto-commit) how far each partition is done: up to the oldest
        record still held, else past the last one handled."""
        if self._consumer is None:
            return
        offsets = []
        for part in partitions:
            done = self._next_offsets.get(part)
            if done is None:
                continue
            held = self.holdback.oldest_offset(part)
            rp = self._replays.get(part)
            # Still inside a stretch read again after a restart: what lies past here was
            # emitted before it, and must stay known as such.
            replaying = rp is not None and rp is not _UNREAD and rp.end > done
            if held is None and not replaying:
                offsets.append(TopicPartition(part[0], part[1], done))
                continue
            positions = self.holdback.positions(part)
            end, unknown = done, False
            if rp is not None and replaying:
                end, unknown = rp.end, rp.held is None
                positions += [q for q in rp.held or () if q[0] >= done]
            # Re-read from the held record on: the metadata says what not to emit again.
            metadata = replay.encode(end, positions, unknown)
            at = done if held is None else held
            offsets.append(TopicPartition(part[0], part[1], at, metadata=metadata))
        if not offsets:
            return
        if self._txn is not None:
            self._txn.store(offsets)  # committed with the output, in its transaction
        else:
            self._consumer.store_offsets(offsets)

    def _rewind(self) -> None:
        """The open transaction was aborted: its output will never be read and its offsets
        were not committed. Forget what was done since the last commit (held records too:
        their offsets are not committed either) and read it again from the committed offsets."""
        assert self._consumer is not None
        self.rewinds += 1
        self.holdback.release_all()  # dropped, not emitted: they are read again
        self._next_offsets.clear()
        self._replays.clear()  # the committed metadata says again what was emitted
        # Partitions being revoked are not sought: their next owner starts at the commit.
        kept = [
            tp
            for tp in self._consumer.assignment()
            if (tp.topic, tp.partition) not in self._revoking
        ]
        if not kept:
            return
        try:
            self._consumer.rewind(kept)
        except KafkaException as exc:
            # Going on from here would lose the aborted output: stop, a restart re-reads.
            raise EnricherError(f"could not rewind after an aborted transaction: {exc}") from exc

    def handle(self, msg: Message, part: PartitionKey = ("", 0), offset: int = 0) -> None:
        """Join one Kafka message: a single raw record or a batch (a JSON array; collectors
        batch because per-message costs dominate). A batch that does not decode goes to the
        dead-letter topic whole, with the reason naming the bad element (``$[i]``).

        The output is queued in the outbox; the caller flushes it (process_batch does)."""
        try:
            raws = self._raw_codec.decode_batch(msg.value())
        except DecodeError as exc:
            self.counters.records_in += 1
            self.dead_letter(msg, "decode", str(exc))
            return
        c = self.counters
        c.records_in += len(raws)
        positions: list[int] | None = None
        rp = self._replays.get(part, _UNREAD) if self._txn is not None else None
        if rp is _UNREAD:
            rp = self._replays[part] = self._committed_replay(part)
        if rp is not None:
            if offset >= rp.end:
                self._replays[part] = None
            elif rp.held is None:
                c.replay_repeated += len(raws)
            else:
                positions = [i for i in range(len(raws)) if rp.keep(offset, i)]
                c.replay_skipped += len(raws) - len(positions)
                raws = [raws[i] for i in positions]
                if not raws:
                    return
        if self.state.watermark_ns is not None and self.holdback.enabled:
            raws, positions = self._hold_past_watermark(raws, positions, part, offset)
            if not raws:
                return
        outs: list[Rendered] | list[Rendered | None]
        try:
            outs = self._render_many(raws)
        except Exception:  # a bug in the join: find the record(s) it was, one by one
            outs = [self._render_one(msg, raw) for raw in raws]
        # Into the outbox in order; _attend sees the records that are not the usual case.
        c.enriched += self._outbox.add_rendered(
            outs,
            raws,
            RAW_VERSION,
            partial(self._attend, msg, part, offset, raws, positions),
            self.renderer.native,
        )

    def _hold_past_watermark(
        self,
        raws: list[RawTcpConnection],
        positions: list[int] | None,
        part: PartitionKey,
        offset: int,
    ) -> tuple[list[RawTcpConnection], list[int] | None]:
        """Hold the records newer than the metadata's watermark: the metadata cannot say yet
        whether their peer's pod was deleted and its IP reused. The rest, with their places
        in the message (replay.py), are joined now."""
        past = self.state.past_watermark
        if not any(past(r.end_time_ns) for r in raws):
            return raws, positions
        c, now = self.counters, time.monotonic_ns()
        kept: list[RawTcpConnection] = []
        kept_at: list[int] = []
        for raw, index in zip(raws, positions or range(len(raws)), strict=True):
            if raw.v == RAW_VERSION and past(raw.end_time_ns):
                if self.holdback.add(raw, WATERMARK, part, offset, now, index=index):
                    c.held += 1
                    c.held_watermark += 1
                    continue
                c.held_overflow += 1
            kept.append(raw)
            kept_at.append(index)
        return kept, kept_at

    def _committed_replay(self, part: PartitionKey) -> Replay | None:
        """The replay stretch in ``part``'s committed offset, read once per ownership."""
        assert self._consumer is not None
        try:
            [tp] = self._consumer.committed([TopicPartition(part[0], part[1])])
        except KafkaException as exc:
            # Not knowing means emitting again: a duplicate, not a loss; counted as repeated.
            log.warning("committed offset of %s[%d] unreadable: %s", part[0], part[1], exc)
            return None
        return replay.decode(tp.metadata)

    def _attend(
        self,
        msg: Message,
        part: PartitionKey,
        offset: int,
        raws: list[RawTcpConnection],
        positions: list[int] | None,
        raw: RawTcpConnection,
        out: Rendered,
    ) -> bool:
        """A record that is not plain, waits for metadata or has another schema version:
        dead-letter it, hold it back, or count how it was named; True if it goes out now."""
        if raw.v != RAW_VERSION:
            self._unsupported(msg, raw)
            return False
        c = self.counters
        if out.missing is not None and self.holdback.enabled:
            # Its place in the message as the collector sent it (replay.py).
            index = next(i for i, r in enumerate(raws) if r is raw)
            if positions is not None:
                index = positions[index]
            if self.holdback.add(raw, out.missing, part, offset, time.monotonic_ns(), index=index):
                c.held += 1
                return False
            c.held_overflow += 1
        if not out.plain:
            self._count_unnamed(raw, out)
        return True

    def _render_one(self, msg: Message, raw: RawTcpConnection) -> Rendered | None:
        if raw.v != RAW_VERSION:
            self._unsupported(msg, raw)
            return None
        try:
            return self._render(raw)
        except Exception as exc:  # a bug in the join must cost one record, not the stream
            self.dead_letter(msg, "enrich_error", f"enrich failed: {type(exc).__name__}: {exc}")
            return None

    def _unsupported(self, msg: Message, raw: RawTcpConnection) -> None:
        self.dead_letter(
            msg,
            "unsupported_version",
            f"RawTcpConnection: unsupported schema version v={raw.v} (this enricher reads "
            f"v={RAW_VERSION})",
        )

    def _count_unnamed(self, raw: RawTcpConnection, out: Rendered) -> None:
        c = self.counters
        remote = out.remote_attribution
        if remote == "unresolved":
            c.remote_unresolved += 1
        elif remote == "external":
            if self.classifier.is_other_cluster(raw.remote_addr):
                c.remote_other_cluster += 1
            else:
                c.remote_external += 1
        if out.local_attribution == "unresolved":
            c.local_unresolved += 1

    def emit(self, raw: RawTcpConnection, out: Rendered) -> None:
        """Queue one enriched record (the caller flushes the outbox)."""
        if not out.plain:
            self._count_unnamed(raw, out)
        self._outbox.add(out.key, out.value)
        self.counters.enriched += 1

    # -- held-back records ------------------------------------------------------------------

    def retry_held(self) -> None:
        """Re-join the held records whose missing metadata just arrived."""
        changed = self.state.drain_changes()
        released = self.holdback.release_changed(changed)
        if not released:
            return
        now = time.monotonic_ns()
        for held in released:
            if held.key == WATERMARK:
                if self.state.past_watermark(held.item.end_time_ns) and now < held.deadline_ns:
                    if self.holdback.add(
                        held.item,
                        WATERMARK,
                        held.partition,
                        held.offset,
                        now,
                        held.deadline_ns,
                        index=held.index,
                    ):
                        continue
                    self.counters.held_overflow += 1
                    self._emit_unvouched(held)
                    continue
                self.counters.held_watermark_caught_up += 1
            out = self._render(held.item)
            key = out.missing
            # Still missing something (e.g. the pod is known now but not the peer): wait on,
            # but no longer than the record's first deadline.
            if key is not None and now < held.deadline_ns:
                if self.holdback.add(
                    held.item,
                    key,
                    held.partition,
                    held.offset,
                    now,
                    held.deadline_ns,
                    index=held.index,
                ):
                    continue
                self.counters.held_overflow += 1
            if key is None:
                self.counters.held_resolved += 1
            else:
                self.counters.held_expired += 1
            self.emit(held.item, out)
        self._outbox.flush()
        self._store_offsets({h.partition for h in released})

    def expire_held(self) -> None:
        expired = self.holdback.release_expired(time.monotonic_ns())
        if expired:
            self._emit_released(expired, resolved_as="expired")
            self._outbox.flush()
            self._store_offsets({h.partition for h in expired})

    def _emit_unvouched(self, held: Held[RawTcpConnection]) -> None:
        """A record the metadata never caught up with: emitted with no metadata at all
        rather than with a pod that may have been deleted (its IP reused) meanwhile."""
        self.counters.held_watermark_unresolved += 1
        self.emit(held.item, self._blind.render(held.item))

    def _emit_released(self, released: list[Held[RawTcpConnection]], resolved_as: str) -> None:
        for held in released:
            if held.key == WATERMARK and self.state.past_watermark(held.item.end_time_ns):
                self._emit_unvouched(held)
                continue
            out = self._render(held.item)
            if out.missing is None:
                self.counters.held_resolved += 1
            elif resolved_as == "expired":
                self.counters.held_expired += 1
            else:
                self.counters.held_released_unresolved += 1
            self.emit(held.item, out)

    def _on_revoke(self, _consumer: RecordConsumer, partitions: list[TopicPartition]) -> None:
        """Partitions move to another instance: emit what is held from them first, so the
        offsets committed at the revoke cover them (the new owner starts after them)."""
        if self._closed:
            return  # close() has emitted and committed (or counted) everything already
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        self._revoking = revoked
        released = self.holdback.release_partitions(revoked)
        if released:
            self._emit_released(released, resolved_as="revoked")
            self._outbox.flush()
        self._store_offsets(revoked & set(self._next_offsets))
        if self._txn is not None:
            # Now, while this member still owns them: the next owner starts at these offsets.
            # Aborted: the next owner re-reads from the last commit, which is as correct.
            self._txn.commit()
            self._txn.forget(revoked)
        self._revoking = set()
        for part in revoked:
            self._next_offsets.pop(part, None)
            self._replays.pop(part, None)

    def _metadata_rejected(self, msg: Message, outcome: str) -> None:
        # Every joiner instance reads the whole topic (and again after a restart): its letters
        # name (stage, topic, partition, offset), by which a reader drops repeats.
        self.dead_letter(
            msg, "metadata", self.state.last_rejection or outcome, via=self._metadata_letters
        )

    def dead_letter(
        self, msg: Message, category: str, reason: str, via: RecordProducer | None = None
    ) -> None:
        producer = via or self._producer
        assert producer is not None
        key = msg.key()
        letter = dead_letter_of(msg, stage=STAGE, reason=reason)
        producer.produce(self._topics.deadletter, letter, key=key)
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
            "enricher_remote_other_cluster_total": c.remote_other_cluster,
            "enricher_local_unresolved_total": c.local_unresolved,
            "enricher_deadletter_total": c.deadlettered,
            "enricher_consume_errors_total": self._consumer_counters.errors,
            "enricher_held_total": c.held,
            "enricher_held_resolved_total": c.held_resolved,
            "enricher_held_expired_unresolved_total": c.held_expired,
            "enricher_held_released_unresolved_total": c.held_released_unresolved,
            "enricher_held_overflow_total": c.held_overflow,
            "enricher_held_watermark_total": c.held_watermark,
            "enricher_held_watermark_caught_up_total": c.held_watermark_caught_up,
            "enricher_held_watermark_unresolved_total": c.held_watermark_unresolved,
            "enricher_held_now": len(self.holdback),
            "enricher_metadata_watermark_lag_seconds": self._watermark_lag_s(),
            "enricher_replay_skipped_total": c.replay_skipped,
            "enricher_replay_repeated_total": c.replay_repeated,
            "enricher_metadata_upserts_total": sc.upserts,
            "enricher_metadata_tombstones_total": sc.tombstones,
            "enricher_metadata_invalid_total": sc.invalid + sc.unsupported_version,
            "enricher_metadata_pods_purged_total": sc.pods_purged,
            "enricher_metadata_pods": len(self.state.pods),
            "enricher_metadata_nodes": len(self.state.nodes),
            "enricher_metadata_services": len(self.state.services),
        }
        # A copy first: /metrics reads this from its own thread while the loop adds reasons.
        for category, n in sorted(dict(c.deadletter_reasons).items()):
            out[f"enricher_deadletter_{category}_total"] = n
        if self.names is not None:
            out.update(self.names.counters.as_metrics())
            out["enricher_dns_names_addresses"] = len(self.names)
        out["enricher_metadata_read_errors_total"] = self.view.read_errors
        if self._producer is not None:
            p = self._producer.counters
            out["enricher_produce_queued_total"] = p.produced
            out["enricher_produce_delivered_total"] = p.delivered
            out["enricher_produce_delivery_failed_total"] = p.delivery_failed
            out["enricher_produce_dropped_buffer_full_total"] = p.dropped_buffer_full
            out["enricher_produce_messages_total"] = self._outbox.messages
            out["enricher_produce_records_total"] = self._outbox.records
            out["enricher_produce_records_delivered_total"] = p.records_delivered
            out["enricher_produce_records_delivery_failed_total"] = p.records_delivery_failed
            out["enricher_produce_records_dropped_buffer_full_total"] = (
                p.records_dropped_buffer_full
            )
            out["enricher_produce_records_undelivered_total"] = p.records_undelivered + (
                0
                if self._metadata_letters is None
                else self._metadata_letters.counters.records_undelivered
            )
            if self._txn is not None:
                out["enricher_transactions_committed_total"] = p.transactions_committed
                out["enricher_transactions_aborted_total"] = p.transactions_aborted
                out["enricher_transactions_records_aborted_total"] = p.records_aborted
                out["enricher_shutdown_uncommitted_records_total"] = c.shutdown_uncommitted
        return out

    def _watermark_lag_s(self) -> int:
        """How far the metadata's watermark is behind now (-1: no live publisher seen)."""
        w = self.state.watermark_ns
        return -1 if w is None else max(0, (time.time_ns() - w) // 1_000_000_000)

    def log_stats(self, final: bool = False) -> None:
        line = " ".join(f"{k}={v}" for k, v in self.metrics().items())
        log.info("%s %s", "final counters:" if final else "counters:", line)
