"""The one place that knows confluent-kafka's details.

Callers pass their own librdkafka settings as a dict; it is copied, never mutated. The
producer counts every outcome so that a loss is a number, not a log line.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from types import MappingProxyType
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from flowscope.kafka_security import Refusal, secured

log = logging.getLogger("flowscope.kafka")

# Throughput-oriented defaults (see DESIGN.md): idempotence keeps retries from duplicating,
# lz4 is cheap on CPU, and murmur2_random puts keys where Java/aiokafka clients would.
PRODUCER_DEFAULTS: Mapping[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    "compression.type": "lz4",
    "linger.ms": 20,
    "partitioner": "murmur2_random",
    # Bounded buffering while the broker is away: beyond this, produce() raises BufferError
    # and the record is counted as dropped rather than growing memory without limit.
    "queue.buffering.max.kbytes": 65536,
    "queue.buffering.max.messages": 200_000,
}

CONSUMER_DEFAULTS: Mapping[str, Any] = {
    "auto.offset.reset": "earliest",
    "enable.auto.commit": True,
    "enable.auto.offset.store": False,
}


# A transactional producer's transactions are committed every fraction of a second: a zombie's
# open one (an instance killed mid-transaction and not restarted under the same id) blocks
# read_committed readers of its partitions until the broker aborts it after this long.
TRANSACTION_TIMEOUT_MS = 10_000

# Delivery errors of messages that close() dropped from the local queue or the wire.
_PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})

# How long a commit or an abort is resumed while the cluster does not answer (an outage)
# before the producer gives up and its owner starts again, naming the cause.
ABORT_PATIENCE_S = 300.0

# Fatal errors that mean a newer producer took this transactional.id: starting again would
# fence that one in turn. Any other fatal error kills only this producer instance.
_FENCED_CODES = frozenset(
    {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH}
)

# librdkafka's send_offsets_to_transaction can block past its timeout, for ever, once the
# group coordinator went away (confluentinc/librdkafka#5456, #5511; seen here when the whole
# cluster was down for a minute): a transactional call that overruns its timeout by this
# much ends the process with one line naming the cause, and its restart (the orchestrator's)
# resumes from the last commit instead of hanging in silence.
HANG_GRACE_S = 60.0
EXIT_HUNG = 75  # EX_TEMPFAIL: try again (a restart)


@contextlib.contextmanager
def exit_if_hung(what: str, timeout_s: float) -> Iterator[None]:
    """Run the block; if it has not returned ``HANG_GRACE_S`` after ``timeout_s``, exit."""

    def hung() -> None:
        print(
            f"{what} did not return {timeout_s + HANG_GRACE_S:.0f}s after it was called "
            f"(timeout {timeout_s:.0f}s; librdkafka loses track of a group coordinator that "
            "went away): exiting so that a restart resumes from the last commit",
            file=sys.stderr,
            flush=True,
        )
        os._exit(EXIT_HUNG)

    timer = threading.Timer(timeout_s + HANG_GRACE_S, hung)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


# Header on batch messages: how many records the message holds (a JSON array of them).
RECORDS_HEADER = "flowscope-records"


class KafkaUnavailable(RuntimeError):
    """The broker could not be reached within the time allowed."""


class TransactionAborted(RuntimeError):
    """The open transaction was aborted: nothing produced in it will be read (read_committed)
    and its input offsets were not committed; the caller reads that input again."""


class CommitInterrupted(RuntimeError):
    """A commit still being retried (broker away) was given up because the process is
    stopping; the transaction is still open."""


# How often a commit being retried looks at its stop event.
STOP_CHECK_S = 1.0


class ProducerFenced(RuntimeError):
    """A fatal transactional error: this producer can never produce again. Either another
    producer with the same transactional.id started (this one is the zombie:
    ``by_newer_instance``), or the producer failed on its own (a broker answer librdkafka
    cannot go on from, or the cluster away past the patience): a new producer with the same
    id takes over cleanly, its start aborting or finishing what this one left open."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code

    @property
    def by_newer_instance(self) -> bool:
        return self.code in _FENCED_CODES


@dataclass
class ProducerCounters:
    """Every record handed to :class:`RecordProducer` ends in exactly one of these."""

    produced: int = 0  # accepted into librdkafka's queue
    delivered: int = 0
    delivery_failed: int = 0
    dropped_buffer_full: int = 0
    # The same outcomes counted in records: a batch message (the ``flowscope-records``
    # header says how many records it holds) counts once above and n times here.
    records_produced: int = 0
    records_delivered: int = 0
    records_delivery_failed: int = 0
    records_dropped_buffer_full: int = 0
    # Transactional producers only: commits, aborts, and the records whose transaction was
    # aborted (delivered to the log but never visible to read_committed consumers).
    transactions_committed: int = 0
    transactions_aborted: int = 0
    records_aborted: int = 0
    # Still queued when the producer was closed (shutdown with the broker away): never
    # delivered by this process. A message and its records, as above.
    undelivered: int = 0
    records_undelivered: int = 0
    last_error: str | None = None
    errors_by_code: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "produced": self.produced,
            "delivered": self.delivered,
            "delivery_failed": self.delivery_failed,
            "dropped_buffer_full": self.dropped_buffer_full,
            "records_produced": self.records_produced,
            "records_delivered": self.records_delivered,
            "records_delivery_failed": self.records_delivery_failed,
            "records_dropped_buffer_full": self.records_dropped_buffer_full,
            "transactions_committed": self.transactions_committed,
            "transactions_aborted": self.transactions_aborted,
            "records_aborted": self.records_aborted,
            "undelivered": self.undelivered,
            "records_undelivered": self.records_undelivered,
            "last_error": self.last_error,
        }


class RecordProducer:
    """A confluent-kafka producer that never blocks forever and never loses a record silently.

    With ``transactional_id`` it is a transactional producer (consume-transform-produce): a
    transaction begins with the first message after a commit, and :meth:`commit` ends it
    together with the consumer offsets of the input it came from, atomically. Creating it
    fences any earlier producer with the same id (a zombie) and aborts its open transaction.
    """

    POLL_EVERY = 256  # messages between two polls for delivery reports
    POLL_INTERVAL_S = 0.5  # ... or this long, whichever comes first

    def __init__(
        self,
        bootstrap_servers: str,
        overrides: Mapping[str, Any] | None = None,
        buffer_full_wait_s: float = 1.0,
        transactional_id: str | None = None,
        init_timeout_s: float = 30.0,
    ) -> None:
        config = {**PRODUCER_DEFAULTS, **dict(overrides or {})}
        config["bootstrap.servers"] = bootstrap_servers
        config["on_delivery"] = self._on_delivery
        if transactional_id:
            config["transactional.id"] = transactional_id
            config.setdefault("transaction.timeout.ms", TRANSACTION_TIMEOUT_MS)
        self._producer = Producer(secured(config))
        self._buffer_full_wait_s = buffer_full_wait_s
        self._since_poll = 0
        self._last_poll = time.monotonic()
        self.counters = ProducerCounters()
        self.transactional = bool(transactional_id)
        self._in_transaction = False
        self._transaction_records = 0  # records produced in the open transaction
        self.fenced = False  # a fatal transactional error: this producer can never produce
        if self.transactional:
            try:
                self._producer.init_transactions(init_timeout_s)
            except KafkaException as exc:
                raise KafkaUnavailable(
                    f"could not initialise transactions as {transactional_id}: {exc}"
                ) from exc

    def _on_delivery(self, err: KafkaError | None, msg: Message, records: int = 1) -> None:
        if err is None:
            self.counters.delivered += 1
            self.counters.records_delivered += records
            return
        if err.code() in _PURGED:  # close() gave up on it: undelivered, not failed
            self.counters.undelivered += 1
            self.counters.records_undelivered += records
            return
        self.counters.delivery_failed += 1
        self.counters.records_delivery_failed += records
        self.counters.last_error = str(err)
        name = err.name()
        self.counters.errors_by_code[name] = self.counters.errors_by_code.get(name, 0) + 1

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | str | None = None,
        headers: list[tuple[str, str | bytes | None]] | None = None,
        records: int = 1,
    ) -> bool:
        """Queue one message holding ``records`` records (a batch when more than one).
        Returns False (and counts it) if the bounded buffer stayed full."""
        if records != 1:
            # Consumers can see the batch size; the delivery report of a failed message may
            # come back without headers, so its record count travels in the callback instead.
            headers = [*(headers or ()), (RECORDS_HEADER, str(records).encode())]
        if self.transactional and not self._in_transaction:
            self._begin()
        try:
            self._send(topic, value, key, headers, records)
        except BufferError:
            return self._produce_when_full(topic, value, key, headers, records)
        self.counters.produced += 1
        self.counters.records_produced += records
        self._transaction_records += records
        # Delivery reports pile up (and counters lag) until poll() serves them: serve them
        # every few hundred messages, or when the last poll is older than POLL_INTERVAL_S so
        # a slow producer's counters stay current, without a poll call (~1 µs) per message.
        self._since_poll += 1
        now = time.monotonic()
        if self._since_poll >= self.POLL_EVERY or now - self._last_poll >= self.POLL_INTERVAL_S:
            self._since_poll = 0
            self._last_poll = now
            self._producer.poll(0)
        return True

    def _produce_when_full(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | str | None,
        headers: list[tuple[str, str | bytes | None]] | None,
        records: int,
    ) -> bool:
        # The local queue is full (broker slow or away): serve callbacks to make room, then
        # give up after a bounded wait so the caller's loop keeps running.
        deadline = time.monotonic() + self._buffer_full_wait_s
        while time.monotonic() < deadline:
            self._producer.poll(0.05)
            try:
                self._send(topic, value, key, headers, records)
            except BufferError:
                continue
            self.counters.produced += 1
            self.counters.records_produced += records
            self._transaction_records += records
            return True
        self.counters.dropped_buffer_full += 1
        self.counters.records_dropped_buffer_full += records
        return False

    def _send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | str | None,
        headers: list[tuple[str, str | bytes | None]] | None,
        records: int,
    ) -> None:
        if records == 1:  # the common case: the producer-wide callback, no closure
            self._producer.produce(topic, value=value, key=key, headers=headers)
        else:
            on_delivery = partial(self._on_delivery, records=records)
            self._producer.produce(
                topic, value=value, key=key, headers=headers, on_delivery=on_delivery
            )

    # -- transactions (transactional producers only) ---------------------------------------

    @property
    def in_transaction(self) -> bool:
        return self._in_transaction

    @property
    def transaction_records(self) -> int:
        """Records produced in the open transaction (0 when none is open)."""
        return self._transaction_records

    def _begin(self) -> None:
        try:
            self._producer.begin_transaction()
        except KafkaException as exc:
            self.fenced = True
            code = exc.args[0].code() if exc.args else None
            raise ProducerFenced(f"could not begin a transaction: {exc}", code) from exc
        self._in_transaction = True
        self._transaction_records = 0

    def commit(
        self,
        offsets: list[TopicPartition],
        group_metadata: Any,
        timeout_s: float = 30.0,
        stop: threading.Event | None = None,
        bounded: bool = False,
    ) -> None:
        """Commit what was produced since the last commit together with ``offsets`` (the
        next offset to read per input partition) for the consumer group ``group_metadata``
        (``Consumer.consumer_group_metadata()``: a consumer fenced by a rebalance cannot
        commit). Opens a transaction if none is open so that offsets alone can be committed.

        Raises TransactionAborted (after aborting: an abortable error) or ProducerFenced.
        Retriable errors are resumed, past ``timeout_s`` too (with a warning) until
        ABORT_PATIENCE_S, or raise CommitInterrupted once ``stop`` is set or, ``bounded``,
        at ``timeout_s`` (the transaction stays open: commit again to finish it, or leave it
        to the broker's transaction timeout and the next instance)."""
        if not self._in_transaction:
            if not offsets:
                return
            self._begin()
        deadline = time.monotonic() + timeout_s
        if offsets:
            self._retrying(
                "send_offsets_to_transaction",
                lambda left: self._producer.send_offsets_to_transaction(
                    offsets, group_metadata, left
                ),
                deadline,
                stop,
                bounded,
            )
        self._retrying(
            "commit_transaction", self._producer.commit_transaction, deadline, stop, bounded
        )
        self._in_transaction = False
        self._transaction_records = 0
        self.counters.transactions_committed += 1

    def abort(self, timeout_s: float = 30.0) -> None:
        """Abort the open transaction (if any): its messages are never read committed.

        While the cluster is away the abort times out; it is resumed (librdkafka's contract
        for a retriable abort: call it again, a new transaction conflicts with it) until
        ABORT_PATIENCE_S have passed, then ProducerFenced says the cluster stayed away."""
        if not self._in_transaction:
            return
        give_up = time.monotonic() + max(timeout_s, ABORT_PATIENCE_S)
        try:
            while True:
                try:
                    with exit_if_hung("Kafka abort_transaction", timeout_s):
                        self._producer.abort_transaction(timeout_s)
                    return
                except KafkaException as exc:
                    err: KafkaError = exc.args[0]
                    self.counters.last_error = str(err)
                    if err.fatal() or not err.retriable() or time.monotonic() >= give_up:
                        self.fenced = True
                        raise ProducerFenced(
                            f"could not abort the transaction: {err}", err.code()
                        ) from exc
                    log.warning("aborting the transaction: %s; trying again", err)
        finally:
            self._in_transaction = False
            self.counters.transactions_aborted += 1
            self.counters.records_aborted += self._transaction_records
            self._transaction_records = 0

    def _retrying(
        self,
        what: str,
        call: Any,
        deadline: float,
        stop: threading.Event | None = None,
        bounded: bool = False,
    ) -> None:
        """Resume ``call`` while its errors are retriable: librdkafka's contract for a commit
        that timed out or lost its coordinator. Never abort then: the coordinator may have
        begun the commit already, and an abort after that is refused as a fatal error (seen
        here when the transaction coordinator was killed mid-commit)."""
        give_up = max(deadline, time.monotonic() + ABORT_PATIENCE_S)
        warned = False
        while True:
            left = deadline - time.monotonic()
            left = left if left > 0.1 else STOP_CHECK_S  # resumed past the deadline
            try:
                # In slices when a stop may come: a SIGTERM is not held up by a broker away.
                with exit_if_hung(f"Kafka {what}", left):
                    call(left if stop is None else min(left, STOP_CHECK_S))
                return
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                self.counters.last_error = str(err)
                if err.fatal():
                    self._in_transaction = False
                    self.fenced = True
                    raise ProducerFenced(
                        f"transactional producer fenced or failed: {err}", err.code()
                    ) from exc
                if err.txn_requires_abort():
                    self.abort(max(5.0, deadline - time.monotonic()))
                    raise TransactionAborted(f"transaction aborted: {err}") from exc
                if not err.retriable():
                    raise
                if stop is not None and stop.is_set():
                    raise CommitInterrupted(f"commit interrupted by the stop: {err}") from exc
                now = time.monotonic()
                if bounded and now >= deadline:
                    raise CommitInterrupted(f"{what} not done within its bound: {err}") from exc
                if now >= give_up:
                    self._in_transaction = False
                    self.fenced = True
                    raise ProducerFenced(
                        f"{what} still failing after {ABORT_PATIENCE_S:.0f}s: {err}", err.code()
                    ) from exc
                if now >= deadline and not warned:
                    warned = True
                    log.warning("%s: %s; resuming it until the cluster answers", what, err)

    def poll(self, timeout_s: float = 0.0) -> None:
        self._producer.poll(timeout_s)

    def reachable(self, timeout_s: float = 1.0) -> bool:
        """Whether the cluster answers a metadata request within ``timeout_s``. Measured:
        with the broker away, a transactional commit blocks for the coordinator request's
        own timeout (10 s) whatever timeout it is given; a shutdown asks this first."""
        try:
            self._producer.list_topics(timeout=timeout_s)
        except KafkaException:
            return False
        return True

    def flush(self, timeout_s: float = 10.0) -> int:
        """Wait for outstanding deliveries. Returns how many are still in flight."""
        return int(self._producer.flush(timeout_s))

    def close(self, timeout_s: float) -> int:
        """Deliver what can be delivered within ``timeout_s``, then drop the rest and count
        it (counters.undelivered, records_undelivered): a shutdown with the broker away ends
        on time. Returns the records dropped. A transactional producer's open transaction is
        the caller's to commit first: what it holds is never read committed once dropped."""
        before = self.counters.records_undelivered
        if self.fenced:
            # Measured: flushing a fenced producer fails inside its delivery callbacks. What
            # it holds can never be committed: all of it is undelivered.
            self._count_unreported(len(self._producer))
            return self.counters.records_undelivered - before
        if self._producer.flush(max(0.0, timeout_s)):
            try:
                self._producer.purge(in_queue=True, in_flight=True)
            except KafkaException as exc:  # e.g. a transactional producer in a bad state
                log.warning("could not drop the undelivered messages: %s", exc)
            # Purged messages come back through the delivery callback, with a purge error.
            stuck = self._producer.flush(0.5)
            if stuck:  # not purged: counted here, from what never got a report
                self._count_unreported(stuck)
        self._in_transaction = False
        return self.counters.records_undelivered - before

    def _count_unreported(self, messages: int) -> None:
        """Count as undelivered what never got a delivery report."""
        c = self.counters
        c.undelivered += messages
        c.records_undelivered += (
            c.records_produced
            - c.records_delivered
            - c.records_delivery_failed
            - c.records_undelivered
        )

    def in_flight(self) -> int:
        """Messages librdkafka holds against ``queue.buffering.max.messages``: accepted and
        not yet reported. Not ``len(producer)``: that also counts queued events (an error
        event while the cluster is away), so it can read one above the bound."""
        c = self.counters
        return c.produced - c.delivered - c.delivery_failed - c.undelivered


# -- admin ----------------------------------------------------------------------------------


def admin_client(bootstrap_servers: str, overrides: Mapping[str, Any] | None = None) -> AdminClient:
    """An admin client for the cluster, with its registered security."""
    return AdminClient(secured({**dict(overrides or {}), "bootstrap.servers": bootstrap_servers}))


def wait_for_broker(
    bootstrap_servers: str, timeout_s: float = 30.0, *, require: bool = True
) -> None:
    """Block until the cluster answers a metadata request, or raise KafkaUnavailable.

    Refused credentials or an untrusted certificate raise at once, naming the cause.
    require=False: an unreachable cluster is not an error (only a refusal is)."""
    refusal = Refusal(bootstrap_servers)
    # Refusals come through error_cb; librdkafka's own log lines would only repeat them.
    admin = admin_client(bootstrap_servers, {"error_cb": refusal.on_error, "log_level": 2})
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=1.0)
            return
        except KafkaException as exc:
            last = exc
        admin.poll(0)  # error_cb is served here
        if refusal.reason is not None:
            raise KafkaUnavailable(refusal.reason)
        time.sleep(0.2)
    if refusal.reason is not None:
        raise KafkaUnavailable(refusal.reason)
    if not require:
        return
    raise KafkaUnavailable(
        f"no Kafka broker answered at {bootstrap_servers} within {timeout_s:.0f}s "
        f"(start one with `python -m devbroker start`): {last}"
    )


def create_topics(
    admin: AdminClient, new: Iterable[NewTopic], timeout_s: float = 30.0
) -> list[str]:
    """Create ``new``; returns the names created. A topic that appeared meanwhile (another
    instance created it) is not an error; any other refusal raises RuntimeError."""
    topics = list(new)
    if not topics:
        return []
    created = []
    for name, future in admin.create_topics(topics, operation_timeout=timeout_s).items():
        try:
            future.result(timeout=timeout_s)
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise RuntimeError(f"could not create topic {name}: {exc}") from exc
    return created


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int = 1
    compacted: bool = False


def ensure_topics(
    bootstrap_servers: str, specs: Iterable[TopicSpec], timeout_s: float = 30.0
) -> None:
    """Create the topics that do not exist yet; existing ones are left as they are."""
    admin = admin_client(bootstrap_servers)
    metadata = admin.list_topics(timeout=timeout_s)
    existing = set(metadata.topics)
    # Three replicas where the cluster has three brokers (a cluster with
    # min.insync.replicas=2 refuses acks=all writes to one replica); one on a single broker.
    # Partitions and retention per family: flowscope.provisioning (`python -m flowscope topics`).
    replication = max(1, min(3, len(metadata.brokers)))
    new = [
        NewTopic(
            s.name,
            num_partitions=s.partitions,
            replication_factor=replication,
            config={"cleanup.policy": "compact"} if s.compacted else {},
        )
        for s in specs
        if s.name not in existing
    ]
    create_topics(admin, new, timeout_s)


# -- consumers ------------------------------------------------------------------------------

# A rebalance callback: the consumer (this module's) and the partitions assigned or revoked.
RebalanceFn = Callable[["RecordConsumer", list[TopicPartition]], None]


@dataclass
class ConsumerCounters:
    messages: int = 0  # messages handed to the caller
    errors: int = 0  # consume errors other than the tolerated ones (end of partition, ...)
    client_errors: int = 0  # errors librdkafka reported through error_cb (broker down, ...)
    last_error: str | None = None


class RecordConsumer:
    """The one confluent-kafka consumer every flowscope client reads with.

    The config is, in this order: ``defaults`` (the role's, CONSUMER_DEFAULTS unless given),
    the user's librdkafka ``overrides`` (copied, never mutated), then ``required`` (what the
    role cannot work without, e.g. read_committed for exactly-once) and the bootstrap
    servers and group id; security comes from the cluster's registration (``secured``).

    :meth:`consume` hands on only messages: the end of a partition (noted in :attr:`at_end`
    when ``enable.partition.eof`` is on) and the codes in ``tolerated`` are skipped
    silently; other errors are counted (and logged unless ``log_errors`` is off: a
    follower's caller reports them its own way). Errors that concern the client rather
    than a partition come through ``error_cb``: counted too, and a refusal (bad
    credentials, untrusted certificate) is kept in :attr:`refusal`.
    Rebalance callbacks are called with this object, not the confluent consumer inside.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        group_id: str,
        overrides: Mapping[str, Any] | None = None,
        *,
        defaults: Mapping[str, Any] = CONSUMER_DEFAULTS,
        required: Mapping[str, Any] | None = None,
        tolerated: Iterable[int] = (),
        log_errors: bool = True,
    ) -> None:
        config: dict[str, Any] = {**defaults, **dict(overrides or {}), **dict(required or {})}
        config["bootstrap.servers"] = bootstrap_servers
        config["group.id"] = group_id
        self._user_error_cb: Callable[[KafkaError], None] | None = config.get("error_cb")
        config["error_cb"] = self._on_client_error
        self._refusal = Refusal(bootstrap_servers)
        self._tolerated = frozenset({KafkaError._PARTITION_EOF, *tolerated})
        self._log_errors = log_errors
        # With enable.partition.eof, which partitions have been read to their end (a reader
        # catching up stops when all have); only then is each message looked at.
        self._track_ends = str(config.get("enable.partition.eof", "")).lower() == "true"
        self.at_end: set[tuple[str, int]] = set()
        self.counters = ConsumerCounters()
        # What librdkafka was given, before security is added (so no secret is in it).
        self.config: Mapping[str, Any] = MappingProxyType(config)
        self._consumer = Consumer(secured(config))

    @property
    def refusal(self) -> str | None:
        """Why the cluster refused this client (credentials, certificate), if it did."""
        return self._refusal.reason

    def _on_client_error(self, err: KafkaError) -> None:
        self.counters.client_errors += 1
        self.counters.last_error = str(err)
        self._refusal.on_error(err)
        if self._user_error_cb is not None:
            self._user_error_cb(err)

    # -- reading ----------------------------------------------------------------------------

    def subscribe(
        self,
        topics: Iterable[str],
        on_assign: RebalanceFn | None = None,
        on_revoke: RebalanceFn | None = None,
    ) -> None:
        """Join the group for ``topics``; the callbacks run inside :meth:`consume`."""
        kwargs: dict[str, Any] = {}
        if on_assign is not None:
            kwargs["on_assign"] = lambda _c, parts: on_assign(self, parts)
        if on_revoke is not None:
            kwargs["on_revoke"] = lambda _c, parts: on_revoke(self, parts)
        self._consumer.subscribe(list(topics), **kwargs)

    def assign(self, partitions: list[TopicPartition]) -> None:
        """Read these partitions directly, outside any group's assignment."""
        self._consumer.assign(partitions)

    def consume(self, max_messages: int, timeout_s: float) -> list[Message]:
        """The messages that arrive within ``timeout_s`` (at most ``max_messages``), without
        error messages: those are counted (and logged) or, if tolerated, dropped."""
        batch = self._consumer.consume(num_messages=max_messages, timeout=timeout_s)
        if self._track_ends:
            batch = self._without_errors(batch)
        else:
            for msg in batch:
                if msg.error() is not None:  # rare: only then is the batch copied
                    batch = self._without_errors(batch)
                    break
        self.counters.messages += len(batch)
        return batch

    def _without_errors(self, batch: list[Message]) -> list[Message]:
        kept = []
        for msg in batch:
            err = msg.error()
            if err is None:
                kept.append(msg)
                if self._track_ends:
                    self.at_end.discard((msg.topic() or "", msg.partition() or 0))
            elif err.code() == KafkaError._PARTITION_EOF:
                self.at_end.add((msg.topic() or "", msg.partition() or 0))
            elif err.code() not in self._tolerated:
                self.counters.errors += 1
                self.counters.last_error = str(err)
                if self._log_errors:
                    log.warning("consume error: %s", err)
        return kept

    # -- offsets ----------------------------------------------------------------------------

    def store_offsets(self, offsets: list[TopicPartition]) -> None:
        """Store the next offsets to read, for the next auto-commit (and the one at close)."""
        self._consumer.store_offsets(offsets=offsets)

    def commit(self, offsets: list[TopicPartition]) -> None:
        """Commit ``offsets`` now, synchronously. Raises KafkaException on failure."""
        self._consumer.commit(offsets=offsets, asynchronous=False)

    def committed(
        self, partitions: list[TopicPartition], timeout_s: float = 30.0
    ) -> list[TopicPartition]:
        return list(self._consumer.committed(partitions, timeout=timeout_s))

    def rewind(self, partitions: list[TopicPartition], timeout_s: float = 30.0) -> None:
        """Read ``partitions`` again from the group's committed offsets (from the beginning
        where nothing is committed). Raises KafkaException if those cannot be read."""
        for tp in self.committed(partitions, timeout_s):
            offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
            self._consumer.seek(TopicPartition(tp.topic, tp.partition, offset))

    def consumer_group_metadata(self) -> Any:
        """For a transactional producer's commit: offsets go in the transaction, and a
        member fenced by a rebalance cannot commit them."""
        return self._consumer.consumer_group_metadata()

    def assignment(self) -> list[TopicPartition]:
        return list(self._consumer.assignment())

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return list(self._consumer.position(partitions))

    def offsets_for_times(
        self, partitions: list[TopicPartition], timeout_s: float = 10.0
    ) -> list[TopicPartition]:
        return list(self._consumer.offsets_for_times(partitions, timeout=timeout_s))

    def watermarks(self, partition: TopicPartition, timeout_s: float = 10.0) -> tuple[int, int]:
        """(low, high): the oldest offset still kept and the one the next record will get."""
        low, high = self._consumer.get_watermark_offsets(partition, timeout=timeout_s)
        return int(low), int(high)

    # -- metadata ---------------------------------------------------------------------------

    def list_topics(self, topic: str | None = None, timeout_s: float = 10.0) -> Any:
        return self._consumer.list_topics(topic, timeout=timeout_s)

    def partitions(self, topic: str, timeout_s: float = 10.0) -> list[int]:
        """The topic's partition ids ([] if it does not exist or is not known yet)."""
        meta = self.list_topics(topic, timeout_s).topics.get(topic)
        if meta is None or meta.error is not None:
            return []
        return sorted(meta.partitions)

    def close(self, timeout_s: float | None = None) -> bool:
        """Leave the group; with auto-commit on, the stored offsets are committed first.
        With ``timeout_s``, True if that finished in time (see close_within)."""
        return close_within(self._consumer, timeout_s)


# Where a follower starts on each partition: the oldest record, the next new one, or the
# first record produced at or after a time (Unix ms; Kafka's own offsets-for-times lookup).
Start = str | int  # "earliest", "latest" or a Unix time in ms


@dataclass(frozen=True)
class Received:
    """One message as a follower hands it on: where it came from and its bytes."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    value: bytes | None
    key: bytes | None


class TopicFollower:
    """Reads topics for a person or a bridge: its own throwaway consumer group (no commits,
    so it never moves another reader's offsets), topics that do not exist yet are waited for
    rather than fatal, and errors are counted instead of raised.

    With ``group_id`` it reads as that durable group instead: it resumes at the group's
    committed offsets (``start`` applies only where the group has none, and must then be
    "earliest" or "latest"), and :meth:`commit` records what the caller has finished with,
    so a bridge commits only after it has delivered."""

    def __init__(
        self,
        bootstrap_servers: str,
        topics: Iterable[str],
        start: Start = "earliest",
        overrides: Mapping[str, Any] | None = None,
        group_id: str | None = None,
        resume: Mapping[tuple[str, int], int] | None = None,
    ) -> None:
        if (group_id is not None or resume) and isinstance(start, int):
            raise ValueError("resuming at stored offsets: start by time does not apply")
        defaults: dict[str, Any] = {
            "enable.auto.commit": False,
            "auto.offset.reset": "latest" if start == "latest" else "earliest",
            # enriched.* is written in transactions: an aborted one is never shown.
            "isolation.level": "read_committed",
            # Topics may appear after the follower starts (a stage not started yet).
            "topic.metadata.refresh.interval.ms": 1000,
        }
        self._consumer = RecordConsumer(
            bootstrap_servers,
            group_id or f"flowscope-follower-{uuid.uuid4().hex[:10]}",
            overrides,
            defaults=defaults,
            tolerated=(KafkaError.UNKNOWN_TOPIC_OR_PART,),
            log_errors=False,
        )
        self._start = start
        # (topic, partition) -> next offset, where the caller keeps its own offsets (a sink
        # that stores them with its data); other partitions begin at ``start``.
        self._resume = dict(resume or {})
        self.topics = list(topics)
        self.counters = self._consumer.counters
        self._consumer.subscribe(self.topics, on_assign=self._on_assign)

    def _on_assign(self, consumer: RecordConsumer, partitions: list[TopicPartition]) -> None:
        if self._resume:
            consumer.assign(
                [
                    TopicPartition(p.topic, p.partition, self._resume[(p.topic, p.partition)])
                    if (p.topic, p.partition) in self._resume
                    else p  # auto.offset.reset
                    for p in partitions
                ]
            )
            return
        if not isinstance(self._start, int):
            return  # auto.offset.reset does it
        wanted = [TopicPartition(p.topic, p.partition, self._start) for p in partitions]
        found = consumer.offsets_for_times(wanted, timeout_s=10.0)
        # -1: nothing at or after that time yet; start at the end (what comes next).
        consumer.assign(
            [
                TopicPartition(p.topic, p.partition, p.offset if p.offset >= 0 else OFFSET_END)
                for p in found
            ]
        )

    def poll(self, timeout_s: float, max_messages: int = 1000) -> list[Received]:
        """What arrives within ``timeout_s`` (at most ``max_messages``)."""
        # Topic, partition and offset are None only on error messages, which consume() drops.
        return [
            Received(
                msg.topic() or "",
                msg.partition() or 0,
                msg.offset() or 0,
                msg.timestamp()[1],
                msg.value(),
                msg.key(),
            )
            for msg in self._consumer.consume(max_messages, timeout_s)
        ]

    def commit(self, done: Iterable[Received]) -> None:
        """Commit, synchronously, the offsets after ``done`` (per partition, the highest):
        a restart of the same group resumes after them. Raises KafkaException on failure."""
        after: dict[tuple[str, int], int] = {}
        for r in done:
            key = (r.topic, r.partition)
            after[key] = max(after.get(key, 0), r.offset + 1)
        if after:
            self._consumer.commit([TopicPartition(t, p, o) for (t, p), o in after.items()])

    def positions(self) -> dict[tuple[str, int], int]:
        """The next offset to read per assigned partition (past transaction markers too);
        partitions not fetched from yet are left out."""
        assigned = self._consumer.assignment()
        if not assigned:
            return {}
        return {
            (tp.topic, tp.partition): tp.offset
            for tp in self._consumer.position(assigned)
            if tp.offset >= 0
        }

    def close(self, timeout_s: float | None = None) -> bool:
        return self._consumer.close(timeout_s)


# A close is given this long at least, whatever a shutdown deadline has left: a reachable
# broker answers in that.
CLOSE_FLOOR_S = 1.0


def close_within(consumer: Consumer, timeout_s: float | None) -> bool:
    """Close ``consumer``, waiting ``timeout_s`` (at least CLOSE_FLOOR_S; None: as long as
    it takes).

    librdkafka's close has no bound of its own: with the group coordinator unreachable its
    final commit and leave-group can wait far past a shutdown bound. The close then goes on
    in a daemon thread (the GIL is released inside it) and False tells the caller that the
    offsets it stored may not be committed: the next owner reads that input again."""
    if timeout_s is None:
        consumer.close()
        return True
    done = threading.Event()

    def close() -> None:
        with contextlib.suppress(KafkaException, RuntimeError):
            consumer.close()
        done.set()

    threading.Thread(target=close, name="consumer-close", daemon=True).start()
    timeout_s = max(CLOSE_FLOOR_S, timeout_s)
    if done.wait(timeout_s):
        return True
    log.warning("consumer close did not finish within %.1fs: the broker is unreachable", timeout_s)
    return False


def committed_offsets(
    bootstrap_servers: str, group_id: str, topics: Iterable[str], timeout_s: float = 30.0
) -> dict[tuple[str, int], int]:
    """The group's committed offset per partition of ``topics`` (partitions without a commit
    are left out). Read by a consumer that does not subscribe, so it neither joins the group
    nor waits for a rebalance (one pending after a member was killed lasts its session)."""
    consumer = RecordConsumer(bootstrap_servers, group_id, required={"enable.auto.commit": False})
    try:
        metadata = consumer.list_topics(timeout_s=timeout_s)
        wanted = [
            TopicPartition(t, p)
            for t in topics
            if t in metadata.topics
            for p in metadata.topics[t].partitions
        ]
        if not wanted:
            return {}
        found = consumer.committed(wanted, timeout_s)
        return {(tp.topic, tp.partition): tp.offset for tp in found if tp.offset >= 0}
    finally:
        consumer.close()
