"""The collector's loop: ring buffer -> decode -> attribute -> record -> Kafka.

Every event ends in exactly one counter: records_produced, records_dropped_buffer_full, or
decode_errors. The producer's own counters (produced, delivered, delivery_failed,
dropped_buffer_full) count Kafka *messages*: the same numbers with one record per message
(``batch_records`` 1), fewer with batches (a JSON array of up to ``batch_records`` records of
one pod per message). Failed connects (refused, timed
out...) and interim records of open connections are records like the others; they are also
counted by kind (failed_connects, interim_records). The kernel's own losses (ring buffer
full, untracked sockets, map full, recursion) are read from the program's counters map and
logged on the same stats line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from collector.kernel.ringbuf import RecordBatch
from collector.node.attribution import CgroupResolver
from collector.node.nat import NatResolver
from collector.tcp.events import DecodeStats, clock_offset_ns
from collector.tcp.messages import MessageEncoder, message_encoder
from flowscope.kafka import ProducerCounters
from flowscope.probes import Probe

log = logging.getLogger("collector")


class Source(Protocol):
    def wait(self, timeout_s: float) -> bool: ...
    def read(self, max_records: int = ...) -> RecordBatch: ...
    def kernel_counters(self) -> dict[str, int]: ...
    def detach(self) -> None: ...


class Sink(Protocol):
    counters: ProducerCounters

    def produce(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | str | None = None,
        headers: list[tuple[str, str | bytes | None]] | None = None,
        records: int = 1,
    ) -> bool: ...

    def poll(self, timeout_s: float = 0.0) -> None: ...
    def flush(self, timeout_s: float = 10.0) -> int: ...
    def in_flight(self) -> int: ...


@dataclass
class PipelineStats:
    batches: int = 0
    records_produced: int = 0  # records in messages the producer accepted
    messages: int = 0  # messages the producer accepted (one record each unless batching)
    produce_refused: int = 0  # records in messages produce() gave up on (buffer full)
    # The same records by message key (the pod's uid, or the node name for host sockets):
    # which pods' streams have a gap after an outage. At most one entry per pod on the node.
    refused_by_key: dict[str, int] = field(default_factory=dict)


class Collector:
    """Runs the pipeline until told to stop; owns neither the source nor the sink."""

    def __init__(
        self,
        source: Source,
        sink: Sink,
        resolver: CgroupResolver,
        node_name: str,
        topic: str,
        max_batch: int = 8192,
        poll_interval_s: float = 0.1,
        stats_interval_s: float = 10.0,
        nat: NatResolver | None = None,
        periodic: Sequence[Callable[[], None]] = (),
        batch_records: int = 1,
        batch_bytes: int = 256 << 10,
        encoder: MessageEncoder | None = None,
    ) -> None:
        """``periodic``: called once per loop turn (at least every ``poll_interval_s``);
        each decides itself whether its time has come (e.g. the health record).

        ``batch_records``: 1 produces one JSON object per message; more puts up to that
        many records of one key (pod) from one ring-buffer read in one message, a JSON
        array of at most ``batch_bytes`` (unless a single record is larger).

        ``encoder``: what turns a batch into messages; default: the native one if built
        (:func:`collector.tcp.messages.message_encoder`)."""
        self._source = source
        self._nat = nat
        self._periodic = tuple(periodic)
        self._sink = sink
        self._resolver = resolver
        self._node = node_name
        self._topic = topic
        self._max_batch = max_batch
        self._poll_interval_s = poll_interval_s
        self._stats_interval_s = stats_interval_s
        self._clock_offset = clock_offset_ns()
        self._encoder = encoder or message_encoder(
            resolver, node_name, nat, batch_records, batch_bytes
        )
        self.decode_stats = DecodeStats()
        self.stats = PipelineStats()
        # /livez and /readyz: each loop turn reads the ring buffer, then beats.
        self.probe = Probe("collector")

    def process(self, batch: RecordBatch) -> int:
        """Decode, attribute and produce one batch. Returns records the sink accepted."""
        self.stats.batches += 1
        before = self.stats.records_produced
        produce = self._sink.produce
        topic = self._topic
        stats = self.stats
        for key, value, records in self._encoder.encode(
            batch, self._clock_offset, self.decode_stats
        ):
            if produce(topic, value, key, records=records):
                stats.records_produced += records
                stats.messages += 1
            else:
                stats.produce_refused += records
                refused = stats.refused_by_key
                refused[key] = refused.get(key, 0) + records
        return self.stats.records_produced - before

    def drain(self) -> int:
        """Process everything the ring buffer holds now."""
        total = 0
        while True:
            batch = self._source.read(self._max_batch)
            if not batch.data:
                return total
            total += self.process(batch)

    def run(self, stop: threading.Event) -> None:
        next_stats = time.monotonic() + self._stats_interval_s
        full = False
        while not stop.is_set():
            if not full:
                self._source.wait(self._poll_interval_s)
            batch = self._source.read(self._max_batch)
            full = len(batch) >= self._max_batch
            if batch.data:
                self.process(batch)
            self._sink.poll(0)
            for task in self._periodic:
                task()
            self.probe.beat()
            now = time.monotonic()
            if now >= next_stats:
                log.info("%s", self.stats_line())
                self._clock_offset = clock_offset_ns()  # follow wall-clock steps
                next_stats = now + self._stats_interval_s

    def shutdown(self, flush_timeout_s: float) -> None:
        """Detach first so nothing new arrives, then empty the ring buffer and flush. The
        caller closes the producer (counting what stayed undelivered) and logs the final
        stats line."""
        self._source.detach()
        self.drain()
        remaining = self._sink.flush(flush_timeout_s)
        if remaining:
            log.warning("%d messages still undelivered after %.1fs", remaining, flush_timeout_s)
        if self.stats.refused_by_key:
            log.warning(
                "records dropped (buffer full) by pod uid or node: %s", self.dropped_by_key()
            )

    def dropped_by_key(self) -> dict[str, int]:
        """Records dropped on a full producer buffer, by message key (pod uid, or node)."""
        return dict(self.stats.refused_by_key)

    def counters(self) -> dict[str, int]:
        values: dict[str, int] = {
            "events": self.decode_stats.decoded,
            "decode_errors": self.decode_stats.decode_errors,
            "discarded": self.decode_stats.discarded,
            "failed_connects": self._encoder.stats.failed_connects,
            "interim_records": self._encoder.stats.interim_records,
            "records_produced": self.stats.records_produced,
            "records_dropped_buffer_full": self.stats.produce_refused,
            "cgroup_misses": self._resolver.stats.misses,
            "cgroup_walks": self._resolver.stats.walks,
        }
        try:
            kernel = self._source.kernel_counters()
        except Exception as exc:  # stats must not stop the pipeline
            log.warning("cannot read kernel counters: %s", exc)
            kernel = {}
        values.update({f"kernel_{k}": v for k, v in kernel.items()})
        if self._nat is not None:
            n = self._nat.stats
            values.update(
                nat_lookups=n.lookups,
                nat_translated=n.translated,
                nat_not_translated=n.not_translated,
                nat_no_entry=n.no_entry,
                nat_no_dnat=n.no_dnat,
                nat_translated_in_socket_netns=n.translated_in_socket_netns,
                nat_netns_unknown=n.netns_unknown,
                nat_netns_denied=n.netns_denied,
                nat_errors=n.errors,
            )
        c = self._sink.counters
        values.update(
            produced=c.produced,
            delivered=c.delivered,
            delivery_failed=c.delivery_failed,
            dropped_buffer_full=c.dropped_buffer_full,
            # Records, not messages: a batch message holds many.
            records_delivered=c.records_delivered,
            records_delivery_failed=c.records_delivery_failed,
            # Dropped from the producer's queue at shutdown: the broker was away too long.
            undelivered=c.undelivered,
            records_undelivered=c.records_undelivered,
            in_flight=self._sink.in_flight(),
        )
        return values

    def stats_line(self) -> str:
        return "stats " + " ".join(f"{k}={v}" for k, v in self.counters().items())
